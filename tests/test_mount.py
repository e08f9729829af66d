"""The app mounted inside a host application, as a user would embed it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import websockets
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from streamer import JobManager, StaticMemoryProbe
from streamer.app import create_app
from streamer.memory import GIB
from streamer.tokens import mint_token

from .conftest import TIMEOUT
from .helpers import Controlled
from .live import serve

SECRET = "host and streamer share this"


async def test_mount_under_prefix_serves_api_and_stream() -> None:
    """Mounted under a prefix, the API and the WebSocket work with host tokens."""
    converter = Controlled()
    manager = JobManager(memory_probe=StaticMemoryProbe(64 * GIB))
    inner = create_app(manager, converter=converter, secret=SECRET)
    closed: list[bool] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # A mounted app's own lifespan never runs; the host closes it.
        await inner.state.streamer.aclose()
        closed.append(True)

    async def home(request: object) -> PlainTextResponse:
        return PlainTextResponse("host")

    host = Starlette(
        routes=[Route("/", home), Mount("/convert", app=inner)], lifespan=lifespan
    )
    token = mint_token(SECRET, "user-7")
    async with serve(host) as live:
        assert (await live.http.get("/")).text == "host"
        url = f"{live.ws_url}/convert/api/sessions/user-7/ws?token={token}"
        async with websockets.connect(url, proxy=None, open_timeout=TIMEOUT) as ws:
            first = json.loads(await ws.recv())
            assert first["type"] == "snapshot"
            response = await live.http.post(
                "/convert/api/sessions/user-7/jobs",
                json={"document_ids": ["a"]},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 201
            job_id = response.json()["job_id"]
            await converter.wait_started("a")
            converter.finish("a")
            types = []
            while "job.completed" not in types:
                message = json.loads(await ws.recv())
                assert message["job_id"] == job_id
                types.append(message["type"])
    assert types[:2] == ["job.created", "job.started"]
    assert closed == [True]
