"""The HTTP layer: sessions, jobs, health, and the routes of the live streams.

``create_app()`` wires a :class:`~streamer.manager.JobManager` to a
:class:`~streamer.hub.Hub` and returns a Starlette app. Everything is wired
when the app is built, not in its lifespan, so the app also works mounted in
another Starlette or FastAPI app, whose lifespan does not reach it; a host
that mounts it calls ``await app.state.streamer.aclose()`` on shutdown.

Handlers only translate between JSON and the engine; errors leave as
``{"error": {"code", "message"}}`` with the matching status.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from .demo import DemoConverter
from .errors import InvalidToken, InvalidTransition
from .hub import Hub
from .job import ConversionJob
from .manager import Converter, JobManager
from .redaction import install_redaction
from .sessions import SESSION_ID, SessionLimitReached, SessionRegistry
from .tokens import TokenSigner

__all__ = ["ApiError", "Server", "ServerSettings", "create_app"]

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
    #: Request bodies larger than this are refused with 413.
    max_body_bytes: int = 1 << 20
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
    """What the endpoints share: the engine, the hub, sessions and settings."""

    manager: JobManager
    hub: Hub
    sessions: SessionRegistry
    signer: TokenSigner
    settings: ServerSettings
    converter: Converter | None
    owns_manager: bool
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    closed: bool = False

    def snapshot(self, session_id: str) -> Callable[[], list[dict[str, Any]]]:
        return lambda: [j.to_dict() for j in self.manager.list_jobs(session_id)]

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


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body, refusing what is too large before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        # isdigit() alone lets "²" through, which int() then refuses.
        if not (declared.isascii() and declared.isdigit()):
            raise ApiError(400, "bad_request", "invalid Content-Length")

        # int() refuses thousands of digits; so many exceed any limit anyway.
        digits = declared.lstrip("0") or "0"
        if len(digits) > 18 or int(digits) > limit:
            raise ApiError(413, "body_too_large", f"the body exceeds {limit} bytes")
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


# -- handlers ---------------------------------------------------------------------


async def create_session(request: Request) -> Response:
    server = server_of(request)
    admin_key = server.settings.admin_key
    if admin_key is not None:
        given = bearer(request) or ""
        if not secrets.compare_digest(given.encode(), admin_key.encode()):
            raise ApiError(
                401, "admin_key_required", "creating sessions needs the admin key"
            )
    try:
        session = server.sessions.create()
    except SessionLimitReached as exc:
        raise ApiError(503, "too_many_sessions", str(exc)) from None
    token = server.signer.mint(session.session_id, ttl=server.settings.token_ttl)
    logger.info("created session %s", session.session_id)
    return JSONResponse(
        {
            "session_id": session.session_id,
            "token": token,
            "expires_at": session.expires_at.isoformat(),
        },
        status_code=201,
    )


async def create_job(request: Request) -> Response:
    server = server_of(request)
    session_id = request.path_params["session_id"]
    server.authorize(request, session_id)
    body = await read_json(request, server.settings.max_body_bytes)
    document_ids = _document_ids(body, server.settings)
    job_id = server.manager.create_job(session_id, document_ids)
    await server.manager.start_job(job_id, server.converter)
    job = server.manager.get_job(job_id)
    assert job is not None
    return JSONResponse(job_detail(job), status_code=201)


def _document_ids(body: Any, settings: ServerSettings) -> list[str]:
    if not isinstance(body, dict) or "document_ids" not in body:
        raise ApiError(
            422, "invalid_job", "the body must be an object with 'document_ids'"
        )
    ids = body["document_ids"]
    if not isinstance(ids, list) or not ids:
        raise ApiError(
            422, "invalid_job", "'document_ids' must be a non-empty list of strings"
        )
    if len(ids) > settings.max_documents_per_job:
        raise ApiError(
            422,
            "too_many_documents",
            f"a job takes at most {settings.max_documents_per_job} documents,"
            f" not {len(ids)}",
        )
    longest = settings.max_document_id_length
    for index, value in enumerate(ids):
        # Ids go back out in JSON and in log lines: a lone surrogate cannot
        # be encoded as UTF-8, and a control character could forge a line.
        if (
            not isinstance(value, str)
            or not value.strip()
            or len(value) > longest
            or not value.isprintable()
        ):
            raise ApiError(
                422,
                "invalid_document_id",
                f"document_ids[{index}] must be a non-empty printable string of"
                f" at most {longest} characters",
            )
    if len(set(ids)) != len(ids):
        raise ApiError(422, "duplicate_document_id", "document_ids must be unique")
    return ids


async def list_jobs(request: Request) -> Response:
    server = server_of(request)
    session_id = request.path_params["session_id"]
    server.authorize(request, session_id)
    jobs = server.manager.list_jobs(session_id)
    return JSONResponse({"jobs": [job.to_dict() for job in jobs]})


async def get_job(request: Request) -> Response:
    server = server_of(request)
    session_id = request.path_params["session_id"]
    server.authorize(request, session_id)
    job = job_or_404(server, session_id, request.path_params["job_id"])
    return JSONResponse(job_detail(job))


async def cancel_job(request: Request) -> Response:
    server = server_of(request)
    session_id = request.path_params["session_id"]
    server.authorize(request, session_id)
    job = job_or_404(server, session_id, request.path_params["job_id"])
    if job.status.is_final:
        raise ApiError(
            409, "job_finished", f"job {job.job_id} already ended {job.status.value}"
        )
    # The job may end while this request waits its turn; then it was not
    # cancelled, and the answer says so.
    if not await server.manager.cancel_job(job.job_id):
        raise ApiError(
            409, "job_finished", f"job {job.job_id} already ended {job.status.value}"
        )
    return JSONResponse(job_detail(job))


async def delete_job(request: Request) -> Response:
    server = server_of(request)
    session_id = request.path_params["session_id"]
    server.authorize(request, session_id)
    job = job_or_404(server, session_id, request.path_params["job_id"])
    try:
        server.manager.remove_job(job.job_id)
    except InvalidTransition:
        raise ApiError(
            409,
            "job_active",
            f"job {job.job_id} is {job.status.value}; cancel it before removing it",
        ) from None
    return Response(status_code=204)


async def healthz(request: Request) -> Response:
    server = server_of(request)
    stats = server.hub.statistics()
    return JSONResponse(
        {
            "status": "closing" if server.closed else "ok",
            "jobs": len(server.manager.list_jobs()),
            "sessions": len(server.sessions),
            "connections": stats.connections,
        },
        status_code=503 if server.closed else 200,
    )


# -- the app ------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def by_method(handlers: Mapping[str, Handler]) -> Handler:
    """One endpoint for a path's handlers, so its 405 names every method.

    Starlette's router answers 405 with the methods of the first route whose
    path matched, so two routes on one path would each hide the other's.
    """

    async def endpoint(request: Request) -> Response:
        # Starlette lets HEAD into every route that takes GET.
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return endpoint


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}

    # A 405 must say what is allowed; Starlette puts that in the headers.
    return error_response(
        exc.status_code,
        codes.get(exc.status_code, "http_error"),
        str(exc.detail),
        exc.headers,
    )


def create_app(
    manager: JobManager | None = None,
    *,
    converter: Converter | None = None,
    settings: ServerSettings | None = None,
    **overrides: Any,
) -> Starlette:
    """A Starlette app that runs jobs on ``manager`` and streams their events.

    ``converter`` converts each document (by default the manager's own, else
    the demo converter). Settings are a :class:`ServerSettings`, or its fields
    as keyword arguments.
    """
    from .metrics import metrics_endpoint
    from .openapi import openapi_endpoint
    from .sse import events_endpoint
    from .ws import websocket_endpoint

    settings = settings or ServerSettings()
    if overrides:
        settings = ServerSettings(
            **{
                **{f: getattr(settings, f) for f in settings.__dataclass_fields__},
                **overrides,
            }
        )
    owns = manager is None
    if manager is None:
        manager = JobManager()
    if converter is None and manager._converter is None:
        converter = DemoConverter()
    secret = settings.secret if settings.secret is not None else secrets.token_bytes(32)
    hub = Hub(
        replay_size=settings.replay_size,
        queue_size=settings.queue_size,
        hard_limit=settings.hard_limit,
        max_subscribers_per_session=settings.max_subscribers_per_session,
        max_sessions=settings.max_sessions,
        clock=manager.clock,
    )
    server = Server(
        manager=manager,
        hub=hub,
        sessions=SessionRegistry(
            manager.clock, ttl=settings.token_ttl, max_sessions=settings.max_sessions
        ),
        signer=TokenSigner(secret),
        settings=settings,
        converter=converter,
        owns_manager=owns,
    )
    manager.subscribe(hub.publish)
    install_redaction()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await server.aclose()

    session = "/api/sessions/{session_id}"
    job = session + "/jobs/{job_id}"
    app = Starlette(
        routes=[
            Route("/api/sessions", create_session, methods=["POST"]),
            Route(
                session + "/jobs",
                by_method({"POST": create_job, "GET": list_jobs}),
                methods=["POST", "GET"],
            ),
            Route(
                job,
                by_method({"GET": get_job, "DELETE": delete_job}),
                methods=["GET", "DELETE"],
            ),
            Route(job + "/cancel", cancel_job, methods=["POST"]),
            Route(session + "/events", events_endpoint, methods=["GET"]),
            WebSocketRoute(session + "/ws", websocket_endpoint),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.streamer = server
    return app
