"""What the endpoints share: settings, the server's state, errors and requests.

A :class:`Server` holds the engine, the hub, the sessions and the document
store of one app; :class:`ApiError` is how a handler refuses, and leaves the
app as ``{"error": {"code", "message"}}`` with the matching status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from .documents import (
    DocumentStore,
)
from .errors import InvalidToken
from .hub import Hub
from .job import ConversionJob
from .manager import Converter, JobManager
from .pdf import PdfTextConverter
from .sessions import SESSION_ID, SessionLimitReached, SessionRegistry
from .tokens import TokenSigner

__all__ = [
    "ApiError",
    "Server",
    "ServerSettings",
    "bearer",
    "check_length",
    "error_response",
    "job_detail",
    "job_or_404",
    "read_json",
    "server_of",
]

logger = logging.getLogger("streamer.server")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The limits and policies of a server; every one may be changed."""

    #: Signs session tokens; a random one (tokens die with the process) if None.
    secret: bytes | str | None = None
    #: When set, creating a session needs ``Authorization: Bearer <admin_key>``.
    admin_key: str | None = None
    #: Origins allowed to open the WebSocket; None allows only the server's own.
    origins: tuple[str, ...] | None = None
    token_ttl: float = 24 * 3600.0
    max_sessions: int = 10_000
    max_subscribers_per_session: int = 1_100
    max_documents_per_job: int = 1_000
    max_document_id_length: int = 256
    #: Request bodies larger than this are refused with 413; for an upload,
    #: what it carries besides its files' contents.
    max_body_bytes: int = 1 << 20
    #: Uploaded files larger than this are refused with 413.
    max_file_bytes: int = 512 << 20
    max_files_per_upload: int = 100
    #: Seconds PDFium may take to open one uploaded file.
    pdf_inspect_timeout: float = 10.0
    #: Client WebSocket messages larger than this close the socket with 1009.
    max_message_bytes: int = 4096
    #: Client WebSocket messages per second, with a burst of twice as many.
    client_messages_per_second: float = 10.0
    replay_size: int = 1_000
    queue_size: int = 256
    hard_limit: int = 2_048
    #: Seconds between SSE comment lines that keep proxies and peers honest.
    sse_heartbeat: float = 15.0


_TOKEN_PROBLEMS = {
    "malformed": "the token is malformed",
    "bad signature": "the token's signature does not match",
    "expired": "the token is expired",
}


class ApiError(Exception):
    """An error that leaves the API as ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message)


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers=headers,
    )


@dataclass
class Server:
    """What the endpoints share: the engine, documents, hub, sessions, settings."""

    manager: JobManager
    hub: Hub
    sessions: SessionRegistry
    signer: TokenSigner
    settings: ServerSettings
    converter: Converter | None
    documents: DocumentStore
    owns_manager: bool
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    closed: bool = False

    def snapshot(self, session_id: str) -> Callable[[], list[dict[str, Any]]]:
        return lambda: [j.to_dict() for j in self.manager.list_jobs(session_id)]

    @property
    def uploads_only(self) -> bool:
        """Whether jobs may name only uploaded documents: the PDF converter's."""
        converter = self.converter
        if converter is None:
            converter = self.manager._converter
        return isinstance(converter, PdfTextConverter)

    def authorize(self, connection: HTTPConnection, session_id: str) -> None:
        """Check the token of a request or handshake against ``session_id``."""
        if SESSION_ID.fullmatch(session_id) is None:
            raise ApiError(404, "session_not_found", "no such session")
        token = bearer(connection) or connection.query_params.get("token")
        if not token:
            raise ApiError(
                401,
                "token_missing",
                "a session token is required, as 'Authorization: Bearer'"
                " or the 'token' query parameter",
            )
        try:
            claims = self.signer.verify(token, session_id=session_id)
        except InvalidToken as exc:
            if exc.reason == "wrong session":
                raise ApiError(
                    403, "token_wrong_session", "the token is for another session"
                ) from None
            raise ApiError(401, "token_invalid", _TOKEN_PROBLEMS[exc.reason]) from None
        try:
            self.sessions.learn(
                session_id, datetime.fromtimestamp(claims.expires_at, UTC)
            )
        except SessionLimitReached as exc:
            raise ApiError(503, "too_many_sessions", str(exc)) from None

    async def aclose(self) -> None:
        """Close every stream (WebSockets with 1012) and, if owned, the engine."""
        if self.closed:
            return
        self.closed = True
        self.hub.close("shutdown")
        if self.owns_manager:
            await self.manager.aclose()


def bearer(connection: HTTPConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def server_of(connection: HTTPConnection) -> Server:
    server: Server = connection.app.state.streamer
    return server


def check_length(request: Request, limit: int) -> None:
    """Refuse a body whose declared length is invalid or more than ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        # isdigit() alone lets "²" through, which int() then refuses.
        if not (declared.isascii() and declared.isdigit()):
            raise ApiError(400, "bad_request", "invalid Content-Length")

        # int() refuses thousands of digits; so many exceed any limit anyway.
        digits = declared.lstrip("0") or "0"
        if len(digits) > 18 or int(digits) > limit:
            raise ApiError(413, "body_too_large", f"the body exceeds {limit} bytes")


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body, refusing what is too large before reading it all."""
    check_length(request, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "body_too_large", f"the body exceeds {limit} bytes")
    if not body:
        raise ApiError(400, "bad_request", "a JSON body is required")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    except RecursionError:
        # A small body of nested brackets is enough to exhaust the stack.
        raise ApiError(400, "invalid_json", "the body nests too deeply") from None


def job_or_404(server: Server, session_id: str, job_id: str) -> ConversionJob:
    job = server.manager.get_job(job_id)

    # Another session's job is as absent as one that never existed.
    if job is None or job.session_id != session_id:
        raise ApiError(404, "job_not_found", f"no job {job_id[:64]} in this session")
    return job


def job_detail(job: ConversionJob) -> dict[str, Any]:
    data = job.to_dict()
    data["documents"] = [outcome.to_dict() for outcome in job.documents]
    return data
