"""Tests of signed session tokens: minting, verification and every refusal."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re

import pytest

from streamer.errors import InvalidToken, StreamerError
from streamer.tokens import (
    DEFAULT_TTL,
    MAX_TOKEN_LENGTH,
    TokenClaims,
    TokenSigner,
    mint_token,
    verify_token,
)

SECRET = b"a shared secret of reasonable length"
NOW = 1_767_225_600.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_minted(secret: bytes, body: bytes) -> str:
    """Sign an arbitrary payload the way the format describes."""
    signed = "st1." + b64(body)
    mac = hmac.new(secret, signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{b64(mac)}"


def refusal(token: str, *, session_id: str = "s1", now: float = NOW) -> str:
    with pytest.raises(InvalidToken) as caught:
        verify_token(SECRET, token, session_id=session_id, now=now)

    return caught.value.reason


def test_token_roundtrip() -> None:
    """A minted token verifies and carries its session and times."""
    token = mint_token(SECRET, "s1", ttl=60, now=NOW)

    claims = verify_token(SECRET, token, session_id="s1", now=NOW + 1)
    assert claims == TokenClaims(session_id="s1", expires_at=NOW + 60, issued_at=NOW)


def test_token_default_ttl_is_one_day() -> None:
    """Without a ttl a token lives for 24 hours."""
    token = mint_token(SECRET, "s1", now=NOW)

    claims = verify_token(SECRET, token, session_id="s1", now=NOW)
    assert claims.expires_at - claims.issued_at == DEFAULT_TTL == 86_400


def test_token_uses_current_time_by_default() -> None:
    """Minting and verifying without now use the real clock."""
    token = mint_token(SECRET, "s1")

    assert verify_token(SECRET, token, session_id="s1").session_id == "s1"


def test_token_format_is_url_safe_without_padding() -> None:
    """A token is "st1." and two unpadded URL-safe base64 parts."""
    token = mint_token(SECRET, "session/with+odd=chars", now=NOW)

    assert re.fullmatch(r"st1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)
    body = token.split(".")[1]
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert payload == {
        "sid": "session/with+odd=chars",
        "iat": int(NOW),
        "exp": int(NOW) + int(DEFAULT_TTL),
    }


def test_token_matches_hand_minted_token() -> None:
    """A host that follows the documented format mints the same token."""
    body = json.dumps(
        {"sid": "s1", "iat": int(NOW), "exp": int(NOW) + 60}, separators=(",", ":")
    ).encode()

    assert mint_token(SECRET, "s1", ttl=60, now=NOW) == hand_minted(SECRET, body)


def test_token_secret_as_str_or_bytes() -> None:
    """A str secret is its UTF-8 bytes; either form verifies the other's token."""
    secret = "sécret partagé"
    token = mint_token(secret, "s1", now=NOW)

    assert token == mint_token(secret.encode(), "s1", now=NOW)
    verify_token(secret.encode(), token, session_id="s1", now=NOW)


def test_token_signer_matches_functions() -> None:
    """TokenSigner mints and verifies exactly like the module functions."""
    signer = TokenSigner(SECRET)
    token = signer.mint("s1", ttl=10, now=NOW)

    assert token == mint_token(SECRET, "s1", ttl=10, now=NOW)
    assert signer.verify(token, session_id="s1", now=NOW) == verify_token(
        SECRET, token, session_id="s1", now=NOW
    )


def test_token_times_round_outwards() -> None:
    """Fractional times round so the token lives at least ttl seconds."""
    token = mint_token(SECRET, "s1", ttl=0.5, now=NOW + 0.7)

    claims = verify_token(SECRET, token, session_id="s1", now=NOW + 1.1)
    assert (claims.issued_at, claims.expires_at) == (NOW, NOW + 2)


def test_token_expires_at_expiry_time() -> None:
    """A token is valid until just before expires_at and refused from then on."""
    token = mint_token(SECRET, "s1", ttl=60, now=NOW)

    verify_token(SECRET, token, session_id="s1", now=NOW + 59.999)
    assert refusal(token, now=NOW + 60) == "expired"
    assert refusal(token, now=NOW + 10_000) == "expired"


def test_token_wrong_session() -> None:
    """A token for one session is refused for another."""
    token = mint_token(SECRET, "s1", now=NOW)

    assert refusal(token, session_id="s2") == "wrong session"
    assert refusal(token, session_id="s1 ") == "wrong session"


def test_token_other_secret_is_bad_signature() -> None:
    """A token minted with another secret has a bad signature."""
    token = mint_token(b"some other secret", "s1", now=NOW)

    assert refusal(token) == "bad signature"


def test_token_forged_signature() -> None:
    """Changing any character of the signature is detected."""
    token = mint_token(SECRET, "s1", now=NOW)
    head, signature = token.rsplit(".", 1)
    for index in (0, len(signature) // 2, len(signature) - 1):
        swapped = "A" if signature[index] != "A" else "B"
        forged = head + "." + signature[:index] + swapped + signature[index + 1 :]
        assert refusal(forged) == "bad signature"


def test_token_tampered_payload() -> None:
    """A payload changed to another session or a later expiry is detected."""
    token = mint_token(SECRET, "s1", ttl=60, now=NOW)
    signature = token.rsplit(".", 1)[1]
    for session_id, expires_at in (("s2", int(NOW) + 60), ("s1", int(NOW) + 10**9)):
        claims = {"sid": session_id, "iat": int(NOW), "exp": expires_at}
        body = b64(json.dumps(claims, separators=(",", ":")).encode())
        forged = f"st1.{body}.{signature}"
        assert refusal(forged, session_id=session_id) == "bad signature"


def test_token_other_version_refused() -> None:
    """A genuine token relabelled with another version prefix is malformed."""
    token = mint_token(SECRET, "s1", now=NOW)

    assert refusal("st2." + token[len("st1.") :]) == "malformed"


def test_token_padded_signature_refused() -> None:
    """A second spelling of a genuine signature, with padding, is refused."""
    token = mint_token(SECRET, "s1", now=NOW)

    assert refusal(token + "=") == "malformed"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "st1",
        "st1.",
        "st1..",
        "st1.abc",
        "st1.abc.",
        "st1..abc",
        "st1.a.b.c",
        "st1.ab c.def",
        "st1.ab+c.def",
        "st1.ab/c.def",
        "ST1.abc.def",
        "st2.abc.def",
        "abc.def",
        "st1.é.abc",
        "st1.abc.dé",
        "\x00st1.abc.def",
    ],
)
def test_token_malformed(token: str) -> None:
    """Tokens not shaped like "st1.<base64>.<base64>" are malformed."""
    assert refusal(token) == "malformed"


def test_token_truncated() -> None:
    """Every truncation of a genuine token is refused."""
    token = mint_token(SECRET, "s1", now=NOW)

    for length in range(len(token)):
        assert refusal(token[:length]) in {"malformed", "bad signature"}


def test_token_oversized_refused_before_signature_check() -> None:
    """A token over the size limit is malformed before its signature counts."""
    token = mint_token(SECRET, "s1", now=NOW)
    at_limit = token + "A" * (MAX_TOKEN_LENGTH - len(token))
    over_limit = at_limit + "A"

    assert refusal(at_limit) == "bad signature"
    assert refusal(over_limit) == "malformed"
    assert refusal("x" * 1_000_000) == "malformed"


def test_token_signed_garbage_is_malformed() -> None:
    """A correctly signed payload that is not valid claims is malformed."""
    bodies = [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"s1"',
        b'{"sid":"s1","iat":1}',
        b'{"sid":"","iat":1,"exp":2}',
        b'{"sid":7,"iat":1,"exp":2}',
        b'{"sid":"s1","iat":"1","exp":2}',
        b'{"sid":"s1","iat":true,"exp":2}',
        b'{"sid":"s1","iat":1,"exp":NaN}',
        b'{"sid":"s1","iat":1,"exp":Infinity}',
    ]
    for body in bodies:
        assert refusal(hand_minted(SECRET, body)) == "malformed", body


def test_token_signed_by_host_with_float_times() -> None:
    """A host may write fractional times; they verify as floats."""
    body = b'{"sid":"s1","iat":1.5,"exp":9999999999.25}'

    claims = verify_token(SECRET, hand_minted(SECRET, body), session_id="s1", now=NOW)
    assert (claims.issued_at, claims.expires_at) == (1.5, 9999999999.25)


def test_token_error_never_echoes_token() -> None:
    """Neither the message nor the arguments of an error contain the token."""
    token = mint_token(SECRET, "s1", now=NOW)
    for candidate, session_id, now in (
        (token, "s2", NOW),
        (token, "s1", NOW + DEFAULT_TTL),
        (token[:-3] + "AAA", "s1", NOW),
        ("st1.secretlooking.value", "s1", NOW),
    ):
        with pytest.raises(InvalidToken) as caught:
            verify_token(SECRET, candidate, session_id=session_id, now=now)

        error = caught.value
        assert isinstance(error, StreamerError)
        assert candidate not in str(error)
        assert candidate not in repr(error.args)
        assert candidate.split(".")[-1] not in str(error)


def test_token_non_ascii_session_id() -> None:
    """Session ids outside ASCII survive the round trip."""
    token = mint_token(SECRET, "sitzung-ü-東京", now=NOW)

    assert token.isascii()
    claims = verify_token(SECRET, token, session_id="sitzung-ü-東京", now=NOW)
    assert claims.session_id == "sitzung-ü-東京"


@pytest.mark.parametrize(
    ("session_id", "ttl"),
    [("", 60.0), ("s1", 0.0), ("s1", -1.0), ("s1", float("inf")), ("s" * 2000, 60.0)],
)
def test_token_mint_refuses_bad_arguments(session_id: str, ttl: float) -> None:
    """Empty sessions, non-positive ttls and oversized tokens are not minted."""
    with pytest.raises(ValueError):
        mint_token(SECRET, session_id, ttl=ttl, now=NOW)


@pytest.mark.parametrize("secret", [b"", ""])
def test_token_empty_secret_refused(secret: bytes | str) -> None:
    """An empty secret cannot sign anything."""
    with pytest.raises(ValueError):
        TokenSigner(secret)
