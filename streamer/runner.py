"""Running the app under uvicorn, with a shutdown that ends every stream.

uvicorn closes WebSockets itself when it stops (with 1012), but it waits for
open HTTP responses to finish before the app's lifespan shutdown runs, and an
event stream never finishes on its own. So the hub is closed first: SSE
streams end and WebSocket clients get 1012 from the endpoint, and only then
does uvicorn's own shutdown proceed.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from starlette.applications import Starlette

__all__ = ["StreamerServer", "server_config"]

#: Chosen by ``bench/fanout.py --choose``: at 1000 subscribers the sans-I/O
#: websockets protocol on uvloop delivered the most events, at the least CPU
#: per delivery and the lowest p99 of uvicorn's protocol and loop pairs.
DEFAULT_WS = "websockets-sansio"
DEFAULT_LOOP = "uvloop"


class StreamerServer(uvicorn.Server):
    """A uvicorn server that closes streamer's streams before it stops."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        state = getattr(getattr(app, "state", None), "streamer", None)
        if state is not None:
            state.hub.close("shutdown")
        await super().shutdown(sockets)


def server_config(app: Starlette, **options: Any) -> uvicorn.Config:
    """A uvicorn config for ``app`` with streamer's defaults filled in."""
    options.setdefault("ws", DEFAULT_WS)
    options.setdefault("loop", DEFAULT_LOOP)
    options.setdefault("lifespan", "on")
    return uvicorn.Config(app, **options)
