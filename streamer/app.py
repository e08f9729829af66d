"""The app: ``create_app()`` and the routes that make up the HTTP layer.

``create_app()`` wires a :class:`~streamer.manager.JobManager`, a
:class:`~streamer.documents.DocumentStore` and a :class:`~streamer.hub.Hub`
and returns a Starlette app. Everything is wired when the app is built, and
nothing touches the disk until it starts: at its lifespan's startup, or at
its first request when it is mounted in another Starlette or FastAPI app,
whose lifespan does not reach it. Starting reads the store back and resumes
the jobs a restart cut short. A host that mounts it calls
``await app.state.streamer.aclose()`` on shutdown.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from .api import (
    cancel_job,
    create_job,
    create_session,
    delete_job,
    get_job,
    get_result,
    healthz,
    list_documents,
    list_jobs,
    upload_documents,
)
from .converters import (
    DEFAULT_MEMORY_REQUIRED,
    document_memory_for,
    load_converter,
    memory_declaration,
    parse_size,
)
from .documents import DocumentStore
from .errors import StoreError
from .hub import Hub
from .journal import Journal
from .manager import DEFAULT_MAX_CONCURRENT, Converter, JobManager
from .memory import GIB
from .pdf import PdfTextConverter
from .redaction import install_redaction
from .server import ApiError, Server, ServerSettings, error_response, server_of
from .sessions import SessionRegistry
from .sqlite import SqliteStore
from .store import Store
from .tokens import TokenSigner
from .viewer import static_dir, viewer_routes

__all__ = [
    "ApiError",
    "Server",
    "ServerSettings",
    "create_app",
    "server_of",
    "static_dir",
]

logger = logging.getLogger("streamer.server")


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


class _StartFirst:
    """Starts the server before the first request, where no lifespan did."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not self.server.started and scope["type"] in ("http", "websocket"):
            try:
                await self.server.start()
            except StoreError as exc:
                logger.error("cannot start: %s", exc)
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1011})
                    return
                answer = error_response(
                    503, "storage_failed", f"the server cannot start: {exc}"
                )
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    manager: JobManager | None = None,
    *,
    converter: Converter | str | None = None,
    data_dir: Path | str | None = None,
    memory_required: int | str | None = None,
    max_concurrent: int | None = None,
    settings: ServerSettings | None = None,
    store: Store | None = None,
    **overrides: Any,
) -> Starlette:
    """A Starlette app that runs jobs on ``manager`` and streams their events.

    ``converter`` converts each document: a callable, or a spec for
    :func:`~streamer.converters.load_converter` (``"package.module:function"``
    or ``"demo"``); by default the manager's own, else the PDF text converter
    over the uploads under ``data_dir``. Without a manager one is built, whose
    documents reserve what the converter declares, else ``memory_required``
    (bytes or a size such as ``"10GB"``; 10 GiB by default), with at most
    ``max_concurrent`` converting at once (4 by default); a manager passed in
    is used as it is. Settings are a :class:`ServerSettings`, or its fields as
    keyword arguments. Sessions, documents and jobs are kept in ``store``, by
    default a :class:`~streamer.sqlite.SqliteStore` in ``data_dir``, which
    also keeps the token secret when the settings give none.
    """
    from .metrics import metrics_endpoint
    from .openapi import openapi_endpoint
    from .sse import events_endpoint
    from .ws import websocket_endpoint

    settings = dataclasses.replace(settings or ServerSettings(), **overrides)
    if manager is not None and (memory_required, max_concurrent) != (None, None):
        raise TypeError(
            "memory_required and max_concurrent configure the manager that"
            " create_app builds; set them on the manager passed in instead"
        )
    documents = DocumentStore(
        data_dir, clock=manager.clock if manager is not None else None
    )
    if isinstance(converter, str):
        converter = load_converter(converter, documents=documents)
    if converter is None and (manager is None or manager._converter is None):
        converter = PdfTextConverter(documents.resolve, documents.results_dir)
    owns = manager is None
    if manager is None:
        assert converter is not None
        default = (
            DEFAULT_MEMORY_REQUIRED
            if memory_required is None
            else parse_size(memory_required)
        )

        # A job shows the converter's fixed figure if it has one; documents
        # of a converter that computes its own show the default.
        declared = memory_declaration(converter)
        job_bytes = declared if isinstance(declared, int) else default
        manager = JobManager(
            memory_required_gb=job_bytes / GIB,
            max_concurrent=(
                DEFAULT_MAX_CONCURRENT if max_concurrent is None else max_concurrent
            ),
            document_memory=document_memory_for(converter, documents, default),
        )
    if store is None:
        store = SqliteStore(documents.data_dir / "streamer.db")
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
        settings=settings,
        converter=converter,
        documents=documents,
        owns_manager=owns,
        journal=Journal(store, manager),
        _signer=None if settings.secret is None else TokenSigner(settings.secret),
    )
    manager.subscribe(hub.publish)
    install_redaction()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.start()
        yield
        await server.aclose()

    session = "/api/sessions/{session_id}"
    job = session + "/jobs/{job_id}"
    app = Starlette(
        routes=[
            Route("/api/sessions", create_session, methods=["POST"]),
            Route(
                session + "/documents",
                by_method({"POST": upload_documents, "GET": list_documents}),
                methods=["POST", "GET"],
            ),
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
            Route(job + "/documents/{document_id}/result", get_result, methods=["GET"]),
            Route(session + "/events", events_endpoint, methods=["GET"]),
            WebSocketRoute(session + "/ws", websocket_endpoint),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/openapi.json", openapi_endpoint, methods=["GET"]),
            *viewer_routes(),
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        middleware=[Middleware(_StartFirst, server=server)],
        lifespan=lifespan,
    )
    app.state.streamer = server
    return app
