"""Token redaction: no session token reaches a log line, access logs included."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping

import pytest
from uvicorn.logging import AccessFormatter
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from streamer import JobManager
from streamer.app import create_app
from streamer.redaction import TokenRedactor, install_redaction, redact
from streamer.tokens import mint_token

from .live import serve

Build = Callable[..., JobManager]

SERVER_LOGGERS = ("uvicorn.access", "uvicorn.error", "websockets.server")


class Capture(logging.Handler):
    """Keeps every record that reaches it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, name: str) -> list[str]:
        return [r.getMessage() for r in self.records if r.name == name]


@contextlib.contextmanager
def capture(*names: str) -> Iterator[Capture]:
    handler = Capture()
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def record(
    msg: str, args: tuple[object, ...] | Mapping[str, object] = ()
) -> logging.LogRecord:
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        msg,
        args,
        None,
    )


# -- redact() -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/ws?token=st1.a.b", "/ws?token=[redacted]"),
        ("/ws?cursor=c-1&token=st1.a.b", "/ws?cursor=c-1&token=[redacted]"),
        ("/ws?token=st1.a.b&cursor=c-1", "/ws?token=[redacted]&cursor=c-1"),
        ("token=st1.a.b", "token=[redacted]"),
        ("/ws?TOKEN=st1.a.b", "/ws?TOKEN=[redacted]"),
        ("/ws?%74oken=st1.a.b", "/ws?%74oken=[redacted]"),
        ("/ws?tok%65n=st1.a.b", "/ws?tok%65n=[redacted]"),
        ("/ws?token=a&token=b", "/ws?token=[redacted]&token=[redacted]"),
        (
            '"GET /x?token=st1.a.b HTTP/1.1" 200',
            '"GET /x?token=[redacted] HTTP/1.1" 200',
        ),
    ],
)
def test_redaction_redact_hides_query_tokens(text: str, expected: str) -> None:
    """A token query parameter loses its value, however its name is spelled."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "/ws?cursor=abc",
        "/ws?mytoken=abc",
        "/ws?token_type=abc",
        "/api/sessions/ses-1/jobs",
        "tokens are never logged",
    ],
)
def test_redaction_redact_leaves_other_text(text: str) -> None:
    """Parameters that only look like the token, and plain text, are kept."""
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer st1.a.b", "Authorization: Bearer [redacted]"),
        ("authorization: bearer   st1.a-b_c", "authorization: bearer   [redacted]"),
        ("Bearer abc+/=~", "Bearer [redacted]"),
    ],
)
def test_redaction_redact_hides_bearer_values(text: str, expected: str) -> None:
    """What follows 'Bearer' is replaced, whatever the case and spacing."""
    assert redact(text) == expected


# -- TokenRedactor ------------------------------------------------------------------


def test_redaction_filter_rewrites_tuple_args() -> None:
    """String arguments are redacted; other arguments pass untouched."""
    entry = record('%s - "%s %s" %d', ("1.2.3.4", "GET", "/x?token=secret", 200))

    assert TokenRedactor().filter(entry) is True
    assert entry.getMessage() == '1.2.3.4 - "GET /x?token=[redacted]" 200'


def test_redaction_filter_rewrites_mapping_args() -> None:
    """A record formatted from a mapping has its string values redacted."""
    entry = record("%(path)s %(status)d", {"path": "/x?token=secret", "status": 401})

    TokenRedactor().filter(entry)

    assert entry.getMessage() == "/x?token=[redacted] 401"


@pytest.mark.parametrize(
    "message",
    [
        "authorization: Bearer secret",
        "GET /x?token=secret",
        "GET /x?%74oken=secret",
    ],
)
def test_redaction_filter_rewrites_message(message: str) -> None:
    """A token written into the message itself is redacted too."""
    entry = record(message)

    TokenRedactor().filter(entry)

    assert "secret" not in entry.getMessage()


def test_redaction_install_is_idempotent() -> None:
    """Installing again leaves one redactor on each server logger."""
    install_redaction()
    install_redaction()

    for name in SERVER_LOGGERS:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, TokenRedactor) for f in filters) == 1


# -- a real server ------------------------------------------------------------------


@pytest.mark.parametrize("ws", ["websockets-sansio", "wsproto"])
async def test_redaction_access_log_never_shows_tokens(
    make_manager: Build, capsys: pytest.CaptureFixture[str], ws: str
) -> None:
    """Uvicorn's HTTP and WebSocket logs show [redacted] where each token was."""
    app = create_app(make_manager(), secret=b"live secret")
    forged = mint_token(b"not the secret", "ses-forged")
    async with serve(app, access_log=True, log_level="info", ws=ws) as live:
        session_id, token = await live.session()
        jobs = f"/api/sessions/{session_id}/jobs"
        url = f"{live.ws_url}/api/sessions/{session_id}/ws"

        # Uvicorn configures its loggers when it starts; only then can a
        # handler be added that it will not remove.
        with capture(*SERVER_LOGGERS) as logs:
            answers = [
                await live.http.get(f"{jobs}?token={token}"),
                await live.http.get(f"{jobs}?cursor=x&token={token}"),
                await live.http.get(f"{jobs}?%74oken={token}"),
                await live.http.get(jobs, headers={"Authorization": f"Bearer {token}"}),
            ]
            refused = await live.http.get(f"{jobs}?token={forged}")
            async with connect(f"{url}?token={token}") as websocket:
                assert '"snapshot"' in await websocket.recv()
            with pytest.raises(InvalidStatus) as denied:
                async with connect(f"{url}?token={forged}"):
                    pass
            header = "authorization: Bearer " + token
            logging.getLogger("uvicorn.error").warning(header)
            logging.getLogger("uvicorn.error").warning("header %s", header)

    assert [answer.status_code for answer in answers] == [200] * 4
    assert refused.status_code == 401
    assert denied.value.response.status_code == 401

    # The records are there, with the token's place marked...
    access = logs.messages("uvicorn.access")
    assert sum(f"{jobs}?token=[redacted]" in line for line in access) == 2
    assert sum(f"{jobs}?%74oken=[redacted]" in line for line in access) == 1
    handshakes = [m for m in logs.messages("uvicorn.error") if "WebSocket" in m]
    assert any("?token=[redacted]" in m and "[accepted]" in m for m in handshakes)
    assert any("?token=[redacted]" in m and m.endswith(" 401") for m in handshakes)

    # ...and neither token is in any of them, however they are formatted.
    access_format = AccessFormatter(
        '%(client_addr)s - "%(request_line)s" %(status_code)s'
    )
    plain_format = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for entry in logs.records:
        formatted = (
            entry.getMessage(),
            plain_format.format(entry),
            access_format.format(entry) if entry.name == "uvicorn.access" else "",
        )
        for text in formatted:
            assert token not in text
            assert forged not in text

    # Uvicorn's own handlers wrote the same lines, redacted.
    written = capsys.readouterr()
    assert "[redacted]" in written.out + written.err
    assert token not in written.out + written.err
    assert forged not in written.out + written.err
