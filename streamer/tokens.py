"""Signed, expiring session tokens that a host application can mint itself.

A token grants access to one session until it expires. A host needs only the
shared secret to mint one, in any language::

    body  = base64url(json({"sid": <session id>, "iat": <issued>, "exp": <expiry>}))
    token = "st1." + body + "." + base64url(HMAC-SHA256(secret, "st1." + body))

``base64url`` is the URL-safe alphabet without ``=`` padding, the JSON is
UTF-8, and ``iat`` and ``exp`` are Unix times in whole seconds. The signature
covers the version prefix, so a token cannot be replayed as another version.

Verification refuses with :class:`InvalidToken`, whose reason is one of
"malformed", "bad signature", "expired" and "wrong session". The token itself
never appears in an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, TypeGuard

from .errors import InvalidToken

__all__ = [
    "DEFAULT_TTL",
    "MAX_TOKEN_LENGTH",
    "TokenClaims",
    "TokenSigner",
    "mint_token",
    "verify_token",
]

#: How long a token lives unless the minting call says otherwise: one day.
DEFAULT_TTL = 24 * 60 * 60.0

#: Tokens longer than this are refused before any decoding or hashing.
MAX_TOKEN_LENGTH = 1024

_PREFIX = "st1."
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_encode = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a valid token says: whose it is and for how long."""

    session_id: str
    expires_at: float
    issued_at: float


class TokenSigner:
    """Mints and verifies tokens with one shared secret."""

    __slots__ = ("_mac",)

    def __init__(self, secret: bytes | str) -> None:
        key = secret.encode() if isinstance(secret, str) else bytes(secret)
        if not key:
            raise ValueError("token secret must not be empty")

        # Keyed once; every signature starts from a copy of this state.
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def mint(
        self,
        session_id: str,
        *,
        ttl: float = DEFAULT_TTL,
        now: float | None = None,
    ) -> str:
        """Return a token for ``session_id`` valid for at least ``ttl`` seconds."""
        if not session_id:
            raise ValueError("session id must not be empty")

        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"ttl must be a positive number of seconds, not {ttl}")

        # Rounding outwards keeps the promise of at least ``ttl`` seconds.
        issued = time.time() if now is None else now
        claims = {
            "sid": session_id,
            "iat": math.floor(issued),
            "exp": math.ceil(issued + ttl),
        }
        signed = _PREFIX + _b64encode(_encode(claims).encode())
        token = f"{signed}.{self._sign(signed)}"
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError(
                f"a session id of {len(session_id)} characters makes a token "
                f"longer than {MAX_TOKEN_LENGTH}"
            )

        return token

    def verify(
        self,
        token: str,
        *,
        session_id: str,
        now: float | None = None,
    ) -> TokenClaims:
        """Return the claims of a genuine, current token for ``session_id``.

        Raises :class:`InvalidToken` for any other token.
        """
        # Size first: an oversized token costs a length check, nothing more.
        if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise InvalidToken("malformed")

        if not token.startswith(_PREFIX):
            raise InvalidToken("malformed")

        body, dot, signature = token[len(_PREFIX) :].partition(".")
        if not (dot and _BASE64URL.fullmatch(body) and _BASE64URL.fullmatch(signature)):
            raise InvalidToken("malformed")

        # The signature is checked before the body is decoded, so nothing an
        # attacker wrote is parsed. Comparing the encoded forms also refuses
        # a second spelling of a genuine signature.
        if not hmac.compare_digest(self._sign(_PREFIX + body), signature):
            raise InvalidToken("bad signature")

        claims = _read_claims(body)
        if claims.session_id != session_id:
            raise InvalidToken("wrong session")

        if (time.time() if now is None else now) >= claims.expires_at:
            raise InvalidToken("expired")

        return claims

    def _sign(self, signed: str) -> str:
        mac = self._mac.copy()
        mac.update(signed.encode("ascii"))
        return _b64encode(mac.digest())


def mint_token(
    secret: bytes | str,
    session_id: str,
    *,
    ttl: float = DEFAULT_TTL,
    now: float | None = None,
) -> str:
    """Return a token for ``session_id``; see :meth:`TokenSigner.mint`."""
    return TokenSigner(secret).mint(session_id, ttl=ttl, now=now)


def verify_token(
    secret: bytes | str,
    token: str,
    *,
    session_id: str,
    now: float | None = None,
) -> TokenClaims:
    """Check ``token`` for ``session_id``; see :meth:`TokenSigner.verify`."""
    return TokenSigner(secret).verify(token, session_id=session_id, now=now)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _read_claims(body: str) -> TokenClaims:
    # Only a holder of the secret gets here, but a host in another language
    # may still have signed something that is not a valid payload.
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        payload: Any = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed") from None

    if not isinstance(payload, dict):
        raise InvalidToken("malformed")

    session_id = payload.get("sid")
    issued_at = payload.get("iat")
    expires_at = payload.get("exp")
    if not (isinstance(session_id, str) and session_id):
        raise InvalidToken("malformed")

    if _is_time(issued_at) and _is_time(expires_at):
        return TokenClaims(session_id, float(expires_at), float(issued_at))

    raise InvalidToken("malformed")


def _is_time(value: object) -> TypeGuard[float]:
    # bool is an int subclass; True is no timestamp.
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )
