"""Tests of the OpenAPI document: valid, complete, and true to what is sent.

Every answer these tests provoke is checked against the document: its status
must be listed for the operation, and its body must validate against the
schema of that status, which for errors also names the codes it may carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from streamer import (
    JobManager,
    JobStatus,
    ManualClock,
    StaticMemoryProbe,
    SystemClock,
)
from streamer.app import create_app
from streamer.memory import GIB
from streamer.openapi import OPENAPI
from streamer.server import Server, job_detail
from streamer.tokens import mint_token

from .conftest import TIMEOUT, Recorder
from .helpers import Controlled
from .live import serve

SOURCE = Path(__file__).resolve().parent.parent / "streamer"
SECRET = "test secret of the openapi tests"
SESSION = "/api/sessions"
JOBS = "/api/sessions/{session_id}/jobs"
JOB = "/api/sessions/{session_id}/jobs/{job_id}"
CANCEL = JOB + "/cancel"
EVENTS = "/api/sessions/{session_id}/events"
WS = "/api/sessions/{session_id}/ws"

_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
_URI = "urn:streamer:openapi"
_REGISTRY = Registry().with_resource(
    _URI, Resource.from_contents(OPENAPI, default_specification=DRAFT202012)
)

# The error codes of the API, as the handlers raise them and as the
# WebSocket's replies and the framework's error handler spell them.
_RAISED = re.compile(r'ApiError\(\s*\d{3},\s*"([a-z_]+)"')
_SENT = re.compile(r'"code":\s*"([a-z_]+)"')
_MAPPED = re.compile(r'\b[1-5]\d\d:\s*"([a-z_]+)"|codes\.get\([^,]+,\s*"([a-z_]+)"')


def validator(*parts: str) -> Draft202012Validator:
    """A validator for the schema at ``parts`` of the OpenAPI document."""
    pointer = "".join(
        "/" + part.replace("~", "~0").replace("/", "~1") for part in parts
    )
    return Draft202012Validator(
        {"$ref": f"{_URI}#{pointer}"},
        registry=_REGISTRY,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def raised_codes() -> set[str]:
    """The codes of every ApiError raised in the HTTP layer."""
    return {
        code
        for name in ("app.py", "api.py", "server.py", "ws.py", "sse.py")
        for code in _RAISED.findall((SOURCE / name).read_text())
    }


def error_codes_in_source() -> set[str]:
    """Every error code the server can send, over HTTP or a WebSocket."""
    found = raised_codes()
    for name in ("app.py", "api.py", "server.py", "ws.py", "sse.py"):
        text = (SOURCE / name).read_text()
        found.update(_SENT.findall(text))
        found.update(code for pair in _MAPPED.findall(text) for code in pair if code)
    return found


def check_documented(template: str, method: str, response: httpx.Response) -> None:
    """Fail unless the document lists this answer and its body fits the schema."""
    responses = OPENAPI["paths"][template][method]["responses"]
    status = str(response.status_code)
    assert status in responses, f"{method} {template} answered undocumented {status}"

    content = responses[status].get("content")
    if content is None:
        assert response.content == b""
        return

    media = response.headers["content-type"].partition(";")[0]
    assert media in content, f"{method} {template} {status} answered {media}"
    if media == "application/json":
        schema = validator(
            "paths", template, method, "responses", status, "content", media, "schema"
        )
        schema.validate(response.json())


@dataclass
class Api:
    """An app behind httpx's ASGI transport, with one session's credentials."""

    http: httpx.AsyncClient
    server: Server
    converter: Controlled
    session_id: str = ""
    token: str = ""

    async def call(
        self,
        method: str,
        template: str,
        expect: int,
        *,
        job_id: str = "",
        session_id: str | None = None,
        token: str | None = None,
        **options: Any,
    ) -> httpx.Response:
        """Send a request, check its answer against the document, return it."""
        path = template.format(
            session_id=self.session_id if session_id is None else session_id,
            job_id=job_id,
        )
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # An SSE request that is not refused would stream until the server
        # closes, so a test that expected a refusal fails instead of hanging.
        async with asyncio.timeout(TIMEOUT):
            response = await self.http.request(method, path, headers=headers, **options)
        assert response.status_code == expect, response.text
        check_documented(template, method.lower(), response)
        return response

    async def login(self) -> None:
        body = (await self.call("POST", SESSION, 201)).json()
        self.session_id, self.token = body["session_id"], body["token"]


@pytest.fixture
async def make_api(
    make_manager: Callable[..., JobManager],
) -> AsyncIterator[Callable[..., Awaitable[Api]]]:
    async with contextlib.AsyncExitStack() as stack:

        async def build(**settings: Any) -> Api:
            converter = Controlled()
            app = create_app(
                make_manager(), converter=converter, secret=SECRET, **settings
            )
            transport = httpx.ASGITransport(app=app)
            http = httpx.AsyncClient(transport=transport, base_url="http://streamer")
            await stack.enter_async_context(http)
            server: Server = app.state.streamer
            stack.push_async_callback(server.aclose)
            return Api(http, server, converter)

        yield build


def codes_of(response: dict[str, Any]) -> list[str]:
    """The codes a documented response may carry; none unless it is an error."""
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    if "allOf" not in schema:
        return []

    error = schema["allOf"][1]["properties"]["error"]
    codes: list[str] = error["properties"]["code"]["enum"]
    return codes


def routes_of(app: Starlette) -> set[tuple[str, str]]:
    pairs = set()
    for route in app.routes:
        # The viewer's files are pages, not the API.
        if isinstance(route, Route) and route.name.startswith("viewer:"):
            continue
        if isinstance(route, WebSocketRoute):
            pairs.add((route.path, "get"))
        else:
            assert isinstance(route, Route), route
            # Starlette adds HEAD to every GET route on its own.
            methods = (route.methods or set()) - {"HEAD"}
            pairs.update((route.path, method.lower()) for method in methods)
    return pairs


def test_openapi_document_is_valid() -> None:
    """The document passes the OpenAPI 3.1 validator."""
    validate(OPENAPI)


def test_openapi_documents_every_route() -> None:
    """Each route of the app, the WebSocket included, is an operation, and back."""
    documented = {
        (path, method)
        for path, item in OPENAPI["paths"].items()
        for method in item
        if method in _METHODS
    }
    assert documented == routes_of(create_app(JobManager()))


def test_openapi_lists_every_error_code() -> None:
    """The codes the handlers raise are exactly the codes the operations list."""
    listed = {
        code
        for item in OPENAPI["paths"].values()
        for method, operation in item.items()
        if method in _METHODS
        for response in operation["responses"].values()
        for code in codes_of(response)
    }
    raised = raised_codes()
    assert len(raised) > 15, "the pattern no longer finds the handlers' codes"
    assert listed == raised


async def test_openapi_served_at_openapi_json(
    make_api: Callable[..., Awaitable[Api]],
) -> None:
    """GET /openapi.json answers the document itself, without a token."""
    api = await make_api()
    response = await api.call("GET", "/openapi.json", 200)
    assert response.json() == json.loads(json.dumps(OPENAPI))


async def test_openapi_job_schema_fits_every_state_of_a_real_job(
    make_manager: Callable[..., JobManager],
    clock: ManualClock,
    probe: StaticMemoryProbe,
    recorder: Recorder,
) -> None:
    """Jobs, details and event payloads of every status validate as documented."""
    converter = Controlled()
    manager = make_manager()
    job_schema = validator("components", "schemas", "Job")
    detail_schema = validator("components", "schemas", "JobDetail")
    statuses = set()

    def check(job_id: str) -> None:
        job = manager.get_job(job_id)
        assert job is not None
        job_schema.validate(job.to_dict())
        detail_schema.validate(job_detail(job))
        statuses.add(job.status)

    # A job that waits for memory, then converts one document and fails one.
    probe.available_bytes = 4 * GIB
    mixed = manager.create_job("s", ["a.pdf", "b.pdf"])
    check(mixed)
    await manager.start_job(mixed, converter)
    await recorder.wait_type("job.memory_wait", mixed)
    check(mixed)
    probe.available_bytes = 24 * GIB
    await clock.advance(60)
    await converter.wait_started("a.pdf")
    converter.callbacks["a.pdf"](0.5)
    check(mixed)
    converter.fail["b.pdf"] = "unreadable"
    converter.finish("a.pdf")
    converter.finish("b.pdf")
    await manager.wait_job(mixed)
    check(mixed)

    failed = manager.create_job("s", ["c.pdf"])
    converter.fail["c.pdf"] = "broken"
    converter.finish("c.pdf")
    await manager.start_job(failed, converter)
    await manager.wait_job(failed)
    check(failed)

    cancelled = manager.create_job("s", ["d.pdf"])
    await manager.start_job(cancelled, converter)
    await converter.wait_started("d.pdf")
    await manager.cancel_job(cancelled)
    check(cancelled)

    assert statuses == set(JobStatus)
    memory_schema = validator("components", "schemas", "MemoryStatus")
    document_schema = validator("components", "schemas", "DocumentOutcome")
    for event in recorder.events:
        data = event.to_dict()
        job_schema.validate(data["job"])
        if "document" in data:
            document_schema.validate(data["document"])
        if data["type"] == "job.memory_wait":
            memory_schema.validate(data["memory"])


async def test_openapi_job_routes_answer_as_documented(
    make_api: Callable[..., Awaitable[Api]],
) -> None:
    """A job's life through the HTTP routes gets the documented answers."""
    api = await make_api()
    await api.login()
    body = {"document_ids": ["a.pdf", "b.pdf"]}
    job_id = (await api.call("POST", JOBS, 201, json=body)).json()["job_id"]
    await api.converter.wait_started("a.pdf")

    await api.call("GET", JOBS, 200)
    await api.call("GET", JOB, 200, job_id=job_id)
    await api.call("DELETE", JOB, 409, job_id=job_id)
    await api.call("POST", CANCEL, 200, job_id=job_id)
    await api.call("POST", CANCEL, 409, job_id=job_id)
    await api.call("DELETE", JOB, 204, job_id=job_id)
    for method, template in (("GET", JOB), ("DELETE", JOB), ("POST", CANCEL)):
        await api.call(method, template, 404, job_id=job_id)

    await api.call("GET", "/healthz", 200, token="")
    await api.call("GET", "/metrics", 200, token="")
    await api.server.aclose()
    await api.call("GET", "/healthz", 503, token="")


async def test_openapi_token_refusals_answer_as_documented(
    make_api: Callable[..., Awaitable[Api]],
) -> None:
    """Missing, invalid and foreign tokens and bad session ids are as listed."""
    api = await make_api()
    await api.login()
    other = mint_token(SECRET, "another-session")
    for template in (JOBS, EVENTS, JOB, CANCEL):
        method = "POST" if template == CANCEL else "GET"
        await api.call(method, template, 401, job_id="j", token="")
        await api.call(method, template, 401, job_id="j", token="st1.e30.bad")
        await api.call(method, template, 403, job_id="j", token=other)
        await api.call(method, template, 404, job_id="j", session_id="not valid")


async def test_openapi_body_refusals_answer_as_documented(
    make_api: Callable[..., Awaitable[Api]],
) -> None:
    """Every way a job's body can be wrong is answered as listed."""
    api = await make_api()
    await api.login()
    many = [f"doc-{number}" for number in range(1001)]
    await api.call("POST", JOBS, 400, content=b"")
    await api.call("POST", JOBS, 400, content=b"{")
    await api.call("POST", JOBS, 413, content=b" " * ((1 << 20) + 1))
    bodies: list[Any] = [
        {"documents": []},
        {"document_ids": []},
        {"document_ids": many},
    ]
    for body in bodies:
        await api.call("POST", JOBS, 422, json=body)
    for ids in ([""], ["a\nb"], [7], ["a", "a"]):
        await api.call("POST", JOBS, 422, json={"document_ids": ids})


async def test_openapi_limits_answer_as_documented(
    make_api: Callable[..., Awaitable[Api]],
) -> None:
    """Admin key, session, subscriber and stream limits are answered as listed."""
    guarded = await make_api(admin_key="admin", max_sessions=1)
    await guarded.call("POST", SESSION, 401, token="")
    await guarded.call("POST", SESSION, 201, token="admin")
    await guarded.call("POST", SESSION, 503, token="admin")
    guarded.token = mint_token(SECRET, "another-session")
    await guarded.call("GET", JOBS, 503, session_id="another-session")

    api = await make_api(max_subscribers_per_session=1)
    await api.login()
    await api.call("GET", EVENTS, 400, params={"jobs": ""})
    with api.server.hub.subscribe(api.session_id, snapshot=list):
        await api.call("GET", EVENTS, 429)
    await api.server.aclose()
    await api.call("GET", EVENTS, 503)


async def test_openapi_streams_answer_as_documented(
    make_manager: Callable[..., JobManager],
) -> None:
    """A real server's stream answers and handshake refusals are as listed."""
    async with serve(create_app(make_manager(clock=SystemClock()))) as live:
        session_id, token = await live.session()
        path = WS.format(session_id=session_id)
        async with live.http.stream(
            "GET", EVENTS.format(session_id=session_id), params={"token": token}
        ) as response:
            check_documented(EVENTS, "get", response)
            assert response.status_code == 200

        refusals = [
            (f"{path}?token={token}", Origin("http://elsewhere.example"), 403),
            (path, None, 401),
            (f"{path}?token={token}&jobs=", None, 400),
        ]
        for url, origin, status in refusals:
            with pytest.raises(InvalidStatus) as refused:
                await connect(
                    live.ws_url + url, origin=origin, open_timeout=TIMEOUT, proxy=None
                )
            answer = refused.value.response
            assert answer.status_code == status
            denial = httpx.Response(
                answer.status_code,
                headers=list(answer.headers.raw_items()),
                content=bytes(answer.body),
            )
            check_documented(WS, "get", denial)

        async with connect(
            f"{live.ws_url}{path}?token={token}", open_timeout=TIMEOUT, proxy=None
        ) as client:
            assert "101" in OPENAPI["paths"][WS]["get"]["responses"]
            assert json.loads(await client.recv())["type"] == "snapshot"
