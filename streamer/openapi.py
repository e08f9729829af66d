"""``GET /openapi.json``: the HTTP API as an OpenAPI 3.1 document.

The document is assembled once, at import, by one helper per kind of part
(schema, parameter, response, operation), so each route below reads as a few
lines. Enumerations come from the engine's own enums, so a new status cannot
be left out. The WebSocket route has no OpenAPI form: it is described as the
``GET`` that upgrades, with the refusals its handshake may answer instead.
The messages of both live streams are described in ``docs/protocol.md``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import __version__
from .documents import DOCUMENT_ID, FILE_FIELD
from .job import DocumentStatus, JobStatus
from .sessions import SESSION_ID

__all__ = ["OPENAPI", "openapi_endpoint"]

Schema = dict[str, Any]

_SESSION = "/api/sessions/{session_id}"
_JOB = _SESSION + "/jobs/{job_id}"
_RESULT = _JOB + "/documents/{document_id}/result"

# -- schemas ------------------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, description: str = "", **extra: Any) -> Schema:
    schema: Schema = {"type": [kind, "null"], **extra}
    return {**schema, "description": description} if description else schema


def _object(properties: dict[str, Schema], *optional: str, **extra: Any) -> Schema:
    # Every key the server writes is required, so clients may rely on it, and
    # unknown keys are refused, so a key added without its schema fails tests.
    required = [key for key in properties if key not in optional]
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
        **extra,
    }


_STRING: Schema = {"type": "string"}
_COUNT: Schema = {"type": "integer", "minimum": 0}
_TIME: Schema = {"type": "string", "format": "date-time"}
_MAYBE_TIME = _nullable("string", format="date-time")


def _memory_status() -> Schema:
    properties = {
        "available_gb": _nullable("number", "Free memory in GiB, one decimal."),
        "required_gb": {"type": "number"},
        "waiting_since": _MAYBE_TIME,
        "message": _STRING,
        "available_bytes": _COUNT,
        "required_bytes": _COUNT,
        "source": {**_STRING, "description": "psutil, cgroup-v2 or cgroup-v1."},
        "next_check_at": _TIME,
        "next_check_in_seconds": {"type": "number", "minimum": 0},
        "queue_position": {"type": "integer", "minimum": 1},
    }
    # The engine sends every key; a job built by hand has only the first four.
    return _object(properties, *list(properties)[4:])


def _job(**extra: Schema) -> Schema:
    """A job's state; ``extra`` adds keys, such as the detail's documents."""
    properties: dict[str, Schema] = {
        "job_id": _STRING,
        "session_id": _STRING,
        "status": {"enum": [status.value for status in JobStatus]},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "current_file": _nullable("string", "The document converting or waiting."),
        "files_completed": {**_COUNT, "description": "Converted plus failed."},
        "files_total": _COUNT,
        "files_converted": _COUNT,
        "files_failed": _COUNT,
        "created_at": _MAYBE_TIME,
        "started_at": _MAYBE_TIME,
        "completed_at": _MAYBE_TIME,
        "error": _nullable("string", "Why it failed, or which documents did."),
        "eta_seconds": _nullable("integer", "Null without a basis.", minimum=0),
        "eta_human": _nullable("string"),
        "memory_required_gb": {"type": "number", "minimum": 0},
        "memory_status": {
            **_ref("MemoryStatus"),
            "description": "Present exactly while status is waiting_for_memory.",
        },
        **extra,
    }
    waiting = {"properties": {"status": {"const": JobStatus.WAITING_FOR_MEMORY.value}}}
    only_then = {
        "if": waiting,
        "then": {"required": ["memory_status"]},
        "else": {"not": {"required": ["memory_status"]}},
    }
    return _object(properties, "memory_status", **only_then)


def _schemas() -> dict[str, Schema]:
    document_ids = {
        "type": "array",
        "items": {**_STRING, "minLength": 1},
        "minItems": 1,
        "uniqueItems": True,
        "description": "Printable, not blank; by default at most 1000 ids of at"
        " most 256 characters.",
    }
    documents = {"type": "array", "items": _ref("DocumentOutcome")}
    return {
        "Error": _object(
            {"error": _object({"code": _STRING, "message": _STRING})},
            description="Every refusal: code is stable, message is for people.",
        ),
        "Session": _object(
            {
                "session_id": {**_STRING, "pattern": f"^{SESSION_ID.pattern}$"},
                "token": {**_STRING, "description": "st1.<claims>.<signature>"},
                "expires_at": _TIME,
            }
        ),
        "CreateJob": {
            "type": "object",
            "properties": {"document_ids": document_ids},
            "required": ["document_ids"],
        },
        "MemoryStatus": _memory_status(),
        "Job": _job(),
        "JobDetail": _job(documents=documents),
        "JobList": _object({"jobs": {"type": "array", "items": _ref("Job")}}),
        "DocumentOutcome": _object(
            {
                "document_id": _STRING,
                "status": {"enum": [status.value for status in DocumentStatus]},
                "error": _nullable("string"),
                "duration_seconds": _nullable("number", minimum=0),
                "result": _nullable("object", "What the converter returned."),
            }
        ),
        "Document": _object(
            {
                "document_id": {**_STRING, "pattern": f"^{DOCUMENT_ID.pattern}$"},
                "filename": {
                    **_STRING,
                    "description": "The client's name for it, sanitized; metadata.",
                },
                "size_bytes": _COUNT,
                "pages": {"type": "integer", "minimum": 1},
            }
        ),
        "DocumentList": _object(
            {"documents": {"type": "array", "items": _ref("Document")}}
        ),
        "Upload": {
            "type": "object",
            "properties": {
                FILE_FIELD: {
                    "type": "array",
                    "items": {"type": "string", "contentMediaType": "application/pdf"},
                    "description": "One or more PDF files, each its own field.",
                }
            },
            "required": [FILE_FIELD],
        },
        "Health": _object(
            {
                "status": {"enum": ["ok", "degraded", "closing"]},
                "jobs": _COUNT,
                "sessions": _COUNT,
                "connections": _COUNT,
                "store": _object({"ok": {"type": "boolean"}, "pending": _COUNT}),
            }
        ),
    }


# -- parameters and responses -------------------------------------------------------


def _parameter(name: str, where: str, description: str, **schema: Any) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": {"type": "string", **schema},
    }


_PATH_PARAMETERS = {
    "session_id": _parameter(
        "session_id", "path", "The session.", pattern=f"^{SESSION_ID.pattern}$"
    ),
    "job_id": _parameter("job_id", "path", "A job of the session."),
    "document_id": _parameter("document_id", "path", "A document of the job."),
}
_STREAM = [
    _parameter("cursor", "query", "Resume after this cursor; any other resets."),
    _parameter("jobs", "query", "Only these job ids, comma separated (1 to 100)."),
]

# The status of every error code; an operation lists the codes it may answer.
_STATUS_OF = {
    code: status
    for status, codes in {
        400: "bad_request invalid_json invalid_jobs invalid_multipart",
        401: "token_missing token_invalid admin_key_required",
        403: "token_wrong_session origin_refused",
        404: "session_not_found job_not_found document_not_found result_not_found",
        409: "job_active job_finished document_not_converted",
        413: "body_too_large file_too_large",
        415: "unsupported_media_type",
        422: "invalid_job too_many_documents invalid_document_id duplicate_document_id"
        " unknown_document no_files too_many_files not_a_pdf encrypted_pdf"
        " unreadable_pdf empty_pdf",
        429: "too_many_subscribers",
        503: "too_many_sessions shutting_down",
        507: "storage_failed",
    }.items()
    for code in codes.split()
}

# Refusals shared by routes: the session token, a JSON body, a stream's limits.
_AUTH = (
    "token_missing token_invalid token_wrong_session session_not_found"
    " too_many_sessions"
)
_BODY = "bad_request invalid_json body_too_large"
_LIMITS = "invalid_jobs too_many_subscribers shutting_down"


def _content(schema: Schema, media: str = "application/json") -> Schema:
    return {media: {"schema": schema}}


def _ok(text: str, schema: str | Schema, media: str = "application/json") -> Schema:
    body = _ref(schema) if isinstance(schema, str) else schema
    return {"description": text, "content": _content(body, media)}


def _errors(codes: str) -> dict[str, Schema]:
    """One response per status, its body's code limited to the codes listed."""
    by_status: dict[int, list[str]] = {}
    for code in codes.split():
        by_status.setdefault(_STATUS_OF[code], []).append(code)

    responses = {}
    for status, listed in sorted(by_status.items()):
        only = {"properties": {"error": {"properties": {"code": {"enum": listed}}}}}
        responses[str(status)] = {
            "description": f"{HTTPStatus(status).phrase}: {', '.join(listed)}.",
            "content": _content({"allOf": [_ref("Error"), only]}),
        }
    return responses


def _operation(
    operation_id: str, summary: str, ok: Schema, codes: str = "", **extra: Any
) -> Schema:
    return {
        "operationId": operation_id,
        "summary": summary,
        **extra,
        "responses": {**ok, **_errors(codes)},
    }


# -- paths --------------------------------------------------------------------------

_TEXT: Schema = {"type": "string"}
_FORM = "multipart/form-data"
_INVALID = (
    "invalid_job too_many_documents invalid_document_id duplicate_document_id"
    " unknown_document"
)
_UPLOAD = (
    "bad_request body_too_large file_too_large unsupported_media_type"
    " invalid_multipart no_files too_many_files not_a_pdf encrypted_pdf"
    " unreadable_pdf empty_pdf"
)
_UPLOADS = (
    "Streams every 'file' field to disk and checks that PDFium can open each;"
    " if one file is refused, none is kept, and the error names the file."
    " By default a file may have 512 MiB and an upload 100 files."
)
_RESULTS = (
    "The text the converter wrote for the document, as an attachment named"
    " after the uploaded file, with .txt for its extension."
)
_CANCEL = (
    "Answers once the job has ended, or once the manager's cancel grace (5 s by"
    " default) is over if the converter is still cleaning up."
)
_UPGRADE = (
    "A WebSocket upgrade, not a plain GET: a refused handshake is answered with"
    " one of the HTTP errors listed here instead of 101."
)


def _paths() -> dict[str, Schema]:
    job = {"200": _ok("The job with its documents.", "JobDetail")}
    body = {"required": True, "content": _content(_ref("CreateJob"))}
    events = {"200": _ok("See docs/protocol.md.", _TEXT, "text/event-stream")}
    upgrade = {"101": {"description": "Switching Protocols; see docs/protocol.md."}}
    health = {
        "200": _ok("Serving.", "Health"),
        "503": _ok("Closing, or the store is failing.", "Health"),
    }
    upload = {"required": True, "content": _content(_ref("Upload"), _FORM)}
    text = {"200": _ok("The document's text.", _TEXT, "text/plain")}
    metrics = {"200": _ok("Prometheus text format 0.0.4.", _TEXT, "text/plain")}
    itself = {"200": _ok("OpenAPI 3.1.", {"type": "object"})}
    last_id = _parameter("Last-Event-ID", "header", "A cursor; wins over ?cursor.")
    paths: dict[str, Schema] = {
        "/api/sessions": {
            "post": _operation(
                "createSession",
                "Create a session and mint its token",
                {"201": _ok("The new session.", "Session")},
                "admin_key_required too_many_sessions storage_failed",
                security=[{}, {"adminKey": []}],
            )
        },
        _SESSION + "/documents": {
            "post": _operation(
                "uploadDocuments",
                "Upload PDF documents",
                {"201": _ok("The documents stored, in upload order.", "DocumentList")},
                f"{_AUTH} {_UPLOAD} storage_failed",
                requestBody=upload,
                description=_UPLOADS,
            ),
            "get": _operation(
                "listDocuments",
                "The session's documents",
                {"200": _ok("Every document of the session.", "DocumentList")},
                _AUTH,
            ),
        },
        _SESSION + "/jobs": {
            "post": _operation(
                "createJob",
                "Create a job and start it",
                {"201": _ok("The job, already started.", "JobDetail")},
                f"{_AUTH} {_BODY} {_INVALID} shutting_down storage_failed",
                requestBody=body,
            ),
            "get": _operation(
                "listJobs",
                "The session's jobs",
                {"200": _ok("Every job of the session.", "JobList")},
                _AUTH,
            ),
        },
        _JOB: {
            "get": _operation("getJob", "One job", job, f"{_AUTH} job_not_found"),
            "delete": _operation(
                "removeJob",
                "Forget a job that has ended; job.removed follows",
                {"204": {"description": "Removed."}},
                f"{_AUTH} job_not_found job_active",
            ),
        },
        _JOB + "/cancel": {
            "post": _operation(
                "cancelJob",
                "Cancel a job that has not ended",
                job,
                f"{_AUTH} job_not_found job_finished",
                description=_CANCEL,
            )
        },
        _RESULT: {
            "get": _operation(
                "getResult",
                "A converted document's text",
                text,
                f"{_AUTH} job_not_found document_not_found document_not_converted"
                " result_not_found",
                description=_RESULTS,
            )
        },
        _SESSION + "/events": {
            "get": _operation(
                "streamEvents",
                "The session's events as Server-Sent Events",
                events,
                f"{_AUTH} {_LIMITS}",
                parameters=[*_STREAM, last_id],
            )
        },
        _SESSION + "/ws": {
            "get": _operation(
                "openWebSocket",
                "The session's events over a WebSocket",
                upgrade,
                f"{_AUTH} {_LIMITS} origin_refused",
                parameters=_STREAM,
                description=_UPGRADE,
            )
        },
        "/healthz": {"get": _operation("health", "Liveness", health, security=[])},
        "/metrics": {"get": _operation("metrics", "Metrics", metrics, security=[])},
        "/openapi.json": {
            "get": _operation("openapi", "This document", itself, security=[])
        },
    }

    # Path parameters follow from each template, so no route can miss one.
    for path, item in paths.items():
        names = [name for name in _PATH_PARAMETERS if f"{{{name}}}" in path]
        if names:
            item["parameters"] = [_PATH_PARAMETERS[name] for name in names]
    return paths


def _bearer(description: str) -> Schema:
    return {"type": "http", "scheme": "bearer", "description": description}


_SECURITY = {
    "bearer": _bearer(
        "A session token, from POST /api/sessions or minted by the host with"
        " streamer.tokens.mint_token."
    ),
    "token": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "The session token as ?token=, for browsers: EventSource"
        " and the WebSocket API cannot set headers.",
    },
    "adminKey": _bearer("The server's admin key; needed only when one is set."),
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "streamer",
        "version": __version__,
        "description": "Background document conversions and their live events."
        " An unknown path answers 404 not_found and an unknown method 405"
        " method_not_allowed, both with the Error body.",
    },
    "paths": _paths(),
    "components": {"schemas": _schemas(), "securitySchemes": _SECURITY},
    "security": [{"bearer": []}, {"token": []}],
}


async def openapi_endpoint(request: Request) -> Response:
    return JSONResponse(OPENAPI)
