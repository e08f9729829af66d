"""A real uvicorn server on a free port, in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from streamer.runner import StreamerServer, server_config
from streamer.server import Server

from .conftest import TIMEOUT


@dataclass
class Live:
    """A running server: its address, its app and an HTTP client bound to it."""

    app: Starlette
    server: uvicorn.Server
    port: int
    http: httpx.AsyncClient

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def streamer(self) -> Server:
        state: Server = self.app.state.streamer
        return state

    async def session(self) -> tuple[str, str]:
        """A new session's id and token."""
        response = await self.http.post("/api/sessions")
        response.raise_for_status()
        body = response.json()
        return body["session_id"], body["token"]


@contextlib.asynccontextmanager
async def serve(app: Starlette, **options: Any) -> AsyncIterator[Live]:
    """Serve ``app`` on 127.0.0.1, port 0, until the block ends."""
    options.setdefault("log_level", "warning")
    server = StreamerServer(server_config(app, host="127.0.0.1", port=0, **options))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(TIMEOUT):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT
    ) as http:
        try:
            yield Live(app, server, port, http)
        finally:
            server.should_exit = True
            async with asyncio.timeout(TIMEOUT):
                await task
