"""The REST handlers: sessions, jobs, documents, results and health.

Handlers only translate between JSON and the engine or the document store;
every refusal is an :class:`~streamer.server.ApiError`.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any
from urllib.parse import quote

from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response

from .documents import (
    DOCUMENT_ID,
    DocumentRefused,
    FileTooLarge,
    MalformedUpload,
    NoFiles,
    NotMultipart,
    TooManyFiles,
    UploadError,
    UploadLimits,
    UploadNotStored,
    UploadTooLarge,
    receive_upload,
)
from .errors import InvalidTransition, ShuttingDown
from .job import DocumentStatus
from .server import (
    ApiError,
    Server,
    ServerSettings,
    bearer,
    check_length,
    job_detail,
    job_or_404,
    read_json,
    server_of,
)
from .sessions import SessionLimitReached

__all__ = [
    "cancel_job",
    "create_job",
    "create_session",
    "delete_job",
    "get_job",
    "get_result",
    "healthz",
    "list_documents",
    "list_jobs",
    "upload_documents",
]

logger = logging.getLogger("streamer.server")


def authorized(request: Request) -> tuple[Server, str]:
    """The server and the session of a request whose token opens that session."""
    server = server_of(request)
    session_id: str = request.path_params["session_id"]
    server.authorize(request, session_id)
    return server, session_id


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
    server.journal.session_changed(session)
    try:
        await server.save()
    except ApiError:
        server.sessions.remove(session.session_id)
        raise
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
    server, session_id = authorized(request)
    body = await read_json(request, server.settings.max_body_bytes)
    document_ids = _document_ids(body, server.settings)
    _check_documents(server, session_id, document_ids)
    if server.closing:
        raise _shutting_down()
    job_id = server.manager.create_job(session_id, document_ids)

    # Kept before it starts, so a job that runs is a job a restart resumes.
    try:
        await server.save()
    except ApiError:
        await server.manager.cancel_job(job_id)
        server.manager.remove_job(job_id)
        raise
    try:
        await server.manager.start_job(job_id, server.converter)
    except ShuttingDown:
        # Stored and pending: the next start runs it.
        raise _shutting_down() from None
    job = server.manager.get_job(job_id)
    assert job is not None
    return JSONResponse(job_detail(job), status_code=201)


def _shutting_down() -> ApiError:
    return ApiError(
        503, "shutting_down", "the server is shutting down; try again once it is back"
    )


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


def _check_documents(server: Server, session_id: str, ids: list[str]) -> None:
    """Refuse ids of uploads that are not the session's, and of none at all.

    An upload of another session is as unknown as an id never issued, and
    every id of the uploads' form is checked, so no answer tells whether an
    id exists elsewhere. Other ids go to a converter that takes any id.
    """
    for index, document_id in enumerate(ids):
        document = server.documents.get(document_id)
        if document is not None and document.session_id == session_id:
            continue
        if server.uploads_only or DOCUMENT_ID.fullmatch(document_id):
            raise ApiError(
                422,
                "unknown_document",
                f"document_ids[{index}]: no uploaded document {document_id[:64]}"
                " in this session",
            )


async def list_jobs(request: Request) -> Response:
    server, session_id = authorized(request)
    jobs = server.manager.list_jobs(session_id)
    return JSONResponse({"jobs": [job.to_dict() for job in jobs]})


async def get_job(request: Request) -> Response:
    server, session_id = authorized(request)
    job = job_or_404(server, session_id, request.path_params["job_id"])
    return JSONResponse(job_detail(job))


async def cancel_job(request: Request) -> Response:
    server, session_id = authorized(request)
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
    server, session_id = authorized(request)
    job = job_or_404(server, session_id, request.path_params["job_id"])
    try:
        server.manager.remove_job(job.job_id)
    except InvalidTransition:
        raise ApiError(
            409,
            "job_active",
            f"job {job.job_id} is {job.status.value}; cancel it before removing it",
        ) from None
    await server.remove_results(job)
    return Response(status_code=204)


async def upload_documents(request: Request) -> Response:
    server, session_id = authorized(request)
    settings = server.settings
    limits = UploadLimits(
        max_file_bytes=settings.max_file_bytes,
        max_files=settings.max_files_per_upload,
        max_other_bytes=settings.max_body_bytes,
        inspect_timeout=settings.pdf_inspect_timeout,
    )
    check_length(
        request,
        limits.max_files * limits.max_file_bytes + limits.max_other_bytes,
    )
    try:
        documents = await receive_upload(
            server.documents,
            session_id,
            request.headers.get("content-type"),
            request.stream(),
            limits,
        )
    except UploadError as exc:
        raise _refusal(exc) from None
    except ClientDisconnect:
        # Nobody reads this answer; it is sent so the request ends as refused.
        logger.info("session %s left during an upload", session_id)
        raise ApiError(
            400, "invalid_multipart", "the client left before the upload ended"
        ) from None
    await server.save_documents(documents)
    return JSONResponse(
        {"documents": [document.to_dict() for document in documents]},
        status_code=201,
    )


def _refusal(exc: UploadError) -> ApiError:
    message = str(exc)
    match exc:
        case NotMultipart():
            return ApiError(415, "unsupported_media_type", message)
        case MalformedUpload():
            return ApiError(400, "invalid_multipart", message)
        case NoFiles():
            return ApiError(422, "no_files", message)
        case TooManyFiles():
            return ApiError(422, "too_many_files", message)
        case UploadTooLarge():
            return ApiError(413, "body_too_large", message)
        case FileTooLarge():
            return ApiError(413, "file_too_large", message)
        case UploadNotStored():
            # The disk refused a file (full, read-only): nothing of it was kept.
            logger.error("upload not stored: %s", exc.strerror)
            return ApiError(507, "storage_failed", f"nothing was changed: {message}")
        case DocumentRefused(kind="encrypted"):
            return ApiError(422, "encrypted_pdf", message)
        case DocumentRefused(kind="empty"):
            return ApiError(422, "empty_pdf", message)
        case DocumentRefused(kind="unreadable"):
            return ApiError(422, "unreadable_pdf", message)
        case DocumentRefused(kind="not_a_pdf"):
            return ApiError(422, "not_a_pdf", message)
    raise AssertionError(f"no answer for the upload refusal {exc!r}")


async def list_documents(request: Request) -> Response:
    server, session_id = authorized(request)
    documents = server.documents.list_for_session(session_id)
    return JSONResponse({"documents": [d.to_dict() for d in documents]})


async def get_result(request: Request) -> Response:
    server, session_id = authorized(request)
    job = job_or_404(server, session_id, request.path_params["job_id"])
    document_id = request.path_params["document_id"]
    outcome = next((o for o in job.documents if o.document_id == document_id), None)
    if outcome is None:
        raise ApiError(
            404,
            "document_not_found",
            f"job {job.job_id} has no document {document_id[:64]}",
        )
    if outcome.status is not DocumentStatus.CONVERTED:
        why = f": {outcome.error}" if outcome.error else ""
        raise ApiError(
            409,
            "document_not_converted",
            f"document {document_id} of job {job.job_id} is"
            f" {outcome.status.value}{why}",
        )

    # What the converter returned names the text, relative to the results.
    text_file = (outcome.result or {}).get("text_file")
    path = (
        server.documents.result_path(text_file) if isinstance(text_file, str) else None
    )
    if path is None:
        raise ApiError(
            404,
            "result_not_found",
            f"document {document_id} of job {job.job_id} has no text result",
        )
    document = server.documents.get(document_id)
    name = document.filename if document is not None else document_id
    return FileResponse(
        path,
        media_type="text/plain; charset=utf-8",
        headers={"Content-Disposition": attachment(name)},
    )


def attachment(filename: str) -> str:
    """Content-Disposition offering a document's text as ``<name>.txt``.

    A name that is not plain ASCII goes as RFC 5987 ``filename*``, after an
    ASCII ``filename`` for clients that know only that (RFC 6266).
    """
    stem = filename[:-4] if filename.lower().endswith(".pdf") else filename
    name = f"{stem or 'document'}.txt"
    plain = "".join(
        ch if ch.isascii() and ch.isprintable() and ch not in '"\\' else "_"
        for ch in name
    )
    if plain == name:
        return f'attachment; filename="{name}"'
    encoded = quote(name, safe="")
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{encoded}"


async def healthz(request: Request) -> Response:
    server = server_of(request)
    stats = server.hub.statistics()
    saving = server.journal.statistics()
    if server.closed or server.closing:
        status = "closing"
    elif saving.error is not None:
        status = "degraded"
    else:
        status = "ok"
    return JSONResponse(
        {
            "status": status,
            "jobs": len(server.manager.list_jobs()),
            "sessions": len(server.sessions),
            "connections": stats.connections,
            # The error itself names a path, which is not for anonymous eyes.
            "store": {"ok": saving.error is None, "pending": saving.pending},
        },
        status_code=200 if status == "ok" else 503,
    )
