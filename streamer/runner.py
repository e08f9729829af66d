"""Running the app under uvicorn, with a shutdown that ends every stream.

uvicorn closes WebSockets itself when it stops (with 1012), but it waits for
open HTTP responses to finish before the app's lifespan shutdown runs, and an
event stream never finishes on its own. So the server is shut down first:
jobs are suspended (converting documents get their grace period) and saved,
then the hub is closed, so SSE streams end and WebSocket clients get 1012
from the endpoint, and only then does uvicorn's own shutdown proceed.

WebSockets are served by :class:`StreamerWebSocketProtocol`, uvicorn's sans-I/O
``websockets`` protocol with one addition: it offers streamer's endpoint a
way to write a text message straight to the transport (see
:data:`~streamer.ws.TEXT_FRAMES`). At a thousand subscribers the ASGI send
path, which frames the message anew for each of them, costs more than the
write itself. The offer is made only when nothing but uvicorn's proxy headers
middleware, Starlette's error and exception middleware and streamer's own,
none of which touch a WebSocket message, stands between the protocol and a
streamer app, so no middleware of a user or a host application is bypassed.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.websockets.websockets_sansio_impl import (
    WebSocketsSansIOProtocol,
)
from websockets.http11 import Request
from websockets.protocol import State

from .server import Server
from .ws import TEXT_FRAMES

__all__ = ["StreamerServer", "StreamerWebSocketProtocol", "server_config"]

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
            # Converting documents get their grace while clients still
            # watch; then the streams end and the rest of uvicorn stops.
            await state.shutdown()
            state.hub.close("shutdown")
        await super().shutdown(sockets)


class StreamerWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, able to write text frames at once."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)

        # A refused handshake never reaches the app and has no scope; the
        # app's task has not started yet, so the scope can still change.
        if self.response.status_code == 101 and _serves_streamer(self.app):
            extensions = self.scope.get("extensions") or {}
            extensions[TEXT_FRAMES] = {"write": self.write_text_now}
            self.scope["extensions"] = extensions

    def write_text_now(self, payload: bytes) -> bool:
        """Write a text message with ``payload``, if it can go without waiting.

        Returns ``False``, having written nothing, when the transport has
        paused writing or the connection is closing; the ASGI send then
        waits or fails as it should.
        """
        conn = self.conn
        if (
            self.close_sent
            or self.disconnected
            or not self.writable.is_set()
            or conn.state is not State.OPEN
            or self.transport.is_closing()
        ):
            return False

        if conn.extensions:
            # Compression keeps state per connection: frame it as uvicorn would.
            conn.send_text(payload)
            self.transport.write(b"".join(conn.data_to_send()))
        else:
            self.transport.write(_frames.of(payload))
        return True


class _FrameCache:
    """The frame of the payload framed last.

    Publish writes one payload to every subscriber in a row, and a server's
    frame of it is the same for all of them: unmasked, uncompressed.
    """

    __slots__ = ("_frame", "_payload")

    def __init__(self) -> None:
        self._payload = b""
        self._frame = text_frame(b"")

    def of(self, payload: bytes) -> bytes:
        if payload is not self._payload:
            self._frame = text_frame(payload)
            self._payload = payload
        return self._frame


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame (RFC 6455, section 5.2) carrying ``payload``."""
    length = len(payload)
    if length < 126:
        head = bytes((0x81, length))
    elif length < 1 << 16:
        head = b"\x81\x7e" + length.to_bytes(2, "big")
    else:
        head = b"\x81\x7f" + length.to_bytes(8, "big")
    return head + payload


_frames = _FrameCache()


def _serves_streamer(app: Any) -> bool:
    # Starlette's own middleware wraps send only to watch HTTP responses, and
    # streamer's passes it on as it is; a user's middleware, or a host app
    # that mounts streamer, might do more with it.
    if isinstance(app, ProxyHeadersMiddleware):
        app = app.app
    return (
        isinstance(app, Starlette)
        and isinstance(getattr(app.state, "streamer", None), Server)
        and all(_is_ours(middleware.cls) for middleware in app.user_middleware)
    )


def _is_ours(factory: object) -> bool:
    module = getattr(factory, "__module__", None) or ""
    return module.partition(".")[0] == _PACKAGE


_PACKAGE = __name__.partition(".")[0]


def server_config(app: Starlette, **options: Any) -> uvicorn.Config:
    """A uvicorn config for ``app`` with streamer's defaults filled in."""
    if options.setdefault("ws", DEFAULT_WS) == "websockets-sansio":
        options["ws"] = StreamerWebSocketProtocol
    options.setdefault("loop", DEFAULT_LOOP)
    options.setdefault("lifespan", "on")
    return uvicorn.Config(app, **options)
