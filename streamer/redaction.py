"""Keeps session tokens out of log lines, the servers' access logs included."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

__all__ = ["TokenRedactor", "install_redaction", "redact"]

# A query parameter, or what follows "Bearer" in a header someone logged.
# Parameter names are matched in their escaped form too: the server decodes
# "%74oken" to "token" and accepts the token it carries.
_QUERY = re.compile(r"(?i)((?:^|[?&;])((?:[a-z0-9_.~-]|%[0-9a-f]{2})+)=)[^&\s\"']*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")

# A cheap test that spares most messages the two substitutions.
_MENTIONS = re.compile(r"(?i)token|bearer|%[0-9a-f]{2}")

# The loggers of the servers streamer runs under, which log request paths.
_SERVER_LOGGERS = ("uvicorn.access", "uvicorn.error", "websockets.server")


def redact(text: str) -> str:
    """``text`` with every token value replaced by ``[redacted]``."""
    return _BEARER.sub(r"\1[redacted]", _QUERY.sub(_redact_parameter, text))


def _redact_parameter(match: re.Match[str]) -> str:
    if unquote(match[2]).lower() != "token":
        return match[0]
    return match[1] + "[redacted]"


class TokenRedactor(logging.Filter):
    """Rewrites a record's message arguments so no token reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        # A logged header holds a token after "Bearer", with no "token" in sight.
        if isinstance(record.msg, str) and _MENTIONS.search(record.msg):
            record.msg = redact(record.msg)
        if record.args:
            if isinstance(record.args, tuple):
                record.args = tuple(
                    redact(a) if isinstance(a, str) else a for a in record.args
                )
            elif isinstance(record.args, dict):
                record.args = {
                    k: redact(v) if isinstance(v, str) else v
                    for k, v in record.args.items()
                }
        return True


_installed = TokenRedactor()


def install_redaction() -> None:
    """Attach the redactor to the server loggers (once; calling again is harmless)."""
    for name in _SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if _installed not in logger.filters:
            logger.addFilter(_installed)
