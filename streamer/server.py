"""What the endpoints share: settings, the server's state, errors and requests.

A :class:`Server` holds the engine, the hub, the sessions and the document
store of one app; :class:`ApiError` is how a handler refuses, and leaves the
app as ``{"error": {"code", "message"}}`` with the matching status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from .documents import Document, DocumentStore
from .errors import InvalidToken, StoreError
from .hub import Hub
from .job import ConversionJob, JobStatus
from .journal import Journal
from .manager import Converter, JobManager
from .pdf import PdfTextConverter
from .sessions import SESSION_ID, SessionLimitReached, SessionRegistry
from .store import Store
from .tokens import TokenSigner

__all__ = [
    "DEFAULT_SHUTDOWN_GRACE",
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
retention_logger = logging.getLogger("streamer.retention")

#: Seconds converting documents get to finish when the server stops, unless
#: the settings say otherwise.
DEFAULT_SHUTDOWN_GRACE = 10.0


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
    #: Seconds converting documents get to finish on shutdown before they are
    #: stopped, to start over when the server is back; None: the default.
    shutdown_grace: float | None = None
    #: Seconds after their end that finished jobs, their results and unused
    #: uploads are removed; None keeps everything.
    retention: float | None = 24 * 3600.0
    #: Seconds between two retention sweeps.
    retention_interval: float = 600.0


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


@dataclass(frozen=True, slots=True)
class Sweep:
    """What one retention sweep removed."""

    jobs: int
    result_files: int
    documents: int
    sessions: int


@dataclass
class Server:
    """What the endpoints share: the engine, documents, hub, sessions, settings.

    :meth:`start` reads the store back and resumes the jobs a restart cut
    short; it runs at the app's startup, or at its first request when the
    app is mounted where no lifespan reaches it. :meth:`shutdown` stops the
    jobs for a restart and :meth:`aclose` ends everything.
    """

    manager: JobManager
    hub: Hub
    sessions: SessionRegistry
    settings: ServerSettings
    converter: Converter | None
    documents: DocumentStore
    owns_manager: bool
    journal: Journal
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    closed: bool = False
    #: Set once shutdown began: no new job is accepted.
    closing: bool = False
    started: bool = False
    _signer: TokenSigner | None = None
    _start_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def store(self) -> Store:
        return self.journal.store

    @property
    def signer(self) -> TokenSigner:
        if self._signer is None:
            raise RuntimeError(
                "the server has not started: its signing secret is in the store"
            )
        return self._signer

    async def start(self) -> None:
        """Read the store, resume unfinished jobs, start the retention sweeps."""
        if self.started:
            return
        async with self._start_lock:
            if not self.started:
                await self._start()
                self.started = True

    async def _start(self) -> None:
        state = await self.store.open()

        # A process that died mid-write left its partial files behind.
        swept = await asyncio.to_thread(self.documents.remove_partial_files)
        if swept:
            logger.info("removed %d partial files of an earlier run", swept)
        if self._signer is None:
            self._signer = TokenSigner(await self.store.signing_secret())
        self.sessions.load(state.sessions)
        self.documents.load(
            Document.from_record(record, self.documents.path_for(record.document_id))
            for record in state.documents
        )
        self.manager.history.load(state.history)

        resumable: list[tuple[ConversionJob, str]] = []
        for record in state.jobs:
            try:
                job = ConversionJob.from_record(record)
            except (KeyError, TypeError, ValueError) as exc:
                logger.error("skipped stored job %s: %s", record.get("job_id"), exc)
                continue
            self.manager.restore(job)
            self.journal.job_stored(job)
            if not job.status.is_final:
                resumable.append((job, _resume_reason(record)))
        if state.jobs:
            logger.info(
                "restored %d jobs from %s, %d to resume",
                len(state.jobs),
                self.store.location,
                len(resumable),
            )
        for job, reason in resumable:
            await self.manager.resume_job(job.job_id, self.converter, reason=reason)

        if self.settings.retention is not None:
            self._spawn(self._sweep_now_and_then(), "streamer-retention")

    # -- writes the user waits for ---------------------------------------------------

    async def save(self) -> None:
        """Write what was noted; a failure is an :class:`ApiError` to answer with."""
        try:
            await self.journal.flush()
        except StoreError as exc:
            raise storage_error(exc) from None

    async def save_documents(self, documents: list[Document]) -> None:
        """Keep a new upload, or remove it again and refuse the request."""
        self.journal.documents_added([d.record() for d in documents])
        try:
            await self.save()
        except ApiError:
            ids = [d.document_id for d in documents]
            self.journal.withdraw_documents(ids)
            for document_id in ids:
                self.documents.remove(document_id)
            raise

    # -- retention ---------------------------------------------------------------

    async def sweep(self) -> Sweep:
        """Remove what outlived the retention age: jobs, results, uploads, sessions."""
        age = self.settings.retention
        if age is None:
            return Sweep(0, 0, 0, 0)
        jobs = self.manager.remove_finished(age)
        files = 0
        for job in jobs:
            files += await self.remove_results(job)

        # An upload goes once it is old and no job left names it.
        now = self.manager.clock.now()
        cutoff = now - timedelta(seconds=age)
        named = {d for job in self.manager.list_jobs() for d in job.document_ids}
        old = [
            d.document_id
            for d in self.documents.all()
            if d.created_at < cutoff and d.document_id not in named
        ]
        for document_id in old:
            await asyncio.to_thread(self.documents.remove, document_id)
        self.journal.documents_removed(old)

        # A session goes once its tokens expired and nothing of it is left.
        owners = {job.session_id for job in self.manager.list_jobs()}
        owners.update(d.session_id for d in self.documents.all())
        gone = self.sessions.remove_expired(keep=owners)
        self.journal.sessions_removed(gone)

        sweep = Sweep(len(jobs), files, len(old), len(gone))
        if any((sweep.jobs, sweep.documents, sweep.sessions)):
            retention_logger.info(
                "removed %d finished jobs, %d result files, %d documents and"
                " %d sessions older than %s",
                sweep.jobs,
                sweep.result_files,
                sweep.documents,
                sweep.sessions,
                _age(age),
            )
        return sweep

    async def remove_results(self, job: ConversionJob) -> int:
        """Delete the result files of a removed job; how many there were."""
        paths = []
        for outcome in job.documents:
            text_file = (outcome.result or {}).get("text_file")
            if isinstance(text_file, str):
                path = self.documents.result_path(text_file)
                if path is not None:
                    paths.append(path)
        return await asyncio.to_thread(_remove_files, paths)

    async def _sweep_now_and_then(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                retention_logger.error("retention sweep failed", exc_info=True)
            await self.manager.clock.sleep(self.settings.retention_interval)

    # -- the end ---------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop for a restart: no new jobs, converting documents get the grace.

        Jobs are not ended but suspended, to be resumed when the server is
        back; everything they did is written before this returns.
        """
        if self.closing:
            return
        self.closing = True
        grace = self.settings.shutdown_grace
        if grace is None:
            grace = DEFAULT_SHUTDOWN_GRACE
        if self.owns_manager:
            stopped = await self.manager.suspend(grace)
            if stopped:
                logger.info("suspended %d jobs, to resume at the next start", stopped)
        try:
            await self.journal.flush()
        except StoreError as exc:
            logger.error("shutting down with unsaved changes: %s", exc)

    def _spawn(self, work: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        known = self.sessions.get(session_id)
        try:
            session = self.sessions.learn(
                session_id, datetime.fromtimestamp(claims.expires_at, UTC)
            )
        except SessionLimitReached as exc:
            raise ApiError(503, "too_many_sessions", str(exc)) from None
        if session is not known:
            self.journal.session_changed(session)

    async def aclose(self) -> None:
        """Close every stream (WebSockets with 1012), the engine and the store."""
        if self.closed:
            return
        await self.shutdown()
        self.closed = True
        self.hub.close("shutdown")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.owns_manager:
            await self.manager.aclose()
        await self.journal.close()


def storage_error(exc: StoreError) -> ApiError:
    """The answer to a request whose change could not be kept."""
    return ApiError(507, "storage_failed", f"nothing was changed: {exc}")


def _resume_reason(record: dict[str, Any]) -> str:
    if record.get("interrupted"):
        return str(record["interrupted"])
    if record.get("status") == JobStatus.PENDING.value:
        return "the server restarted before the job started"
    return "the server stopped unexpectedly"


def _remove_files(paths: list[Any]) -> int:
    removed = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
        # The folder of a document's results goes with its last file.
        with contextlib.suppress(OSError):
            path.parent.rmdir()
    return removed


def _age(seconds: float) -> str:
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds / 86400:g} d"
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds:g} s"


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
