"""The Server-Sent Events endpoint: the WebSocket's stream, one way, over HTTP.

Each message is one ``data:`` line of the same JSON a WebSocket client gets,
with the cursor as the event ``id``, so a browser's EventSource resumes by
itself through ``Last-Event-ID``. There is no ``event:`` field: the type is in
the JSON, and ``onmessage`` sees every message. Comment lines go out when
nothing else does, so a peer that vanished is noticed at the next write.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .errors import SubscriptionClosed
from .hub import Subscription
from .server import server_of
from .ws import open_subscription

__all__ = ["events_endpoint"]

logger = logging.getLogger("streamer.sse")

_encode = json.JSONEncoder(separators=(",", ":")).encode


async def events_endpoint(request: Request) -> Response:
    server = server_of(request)

    # A browser's EventSource resumes by itself with Last-Event-ID, which wins
    # over a ?cursor= it may still carry from the URL it first opened.
    cursor = request.headers.get("last-event-id") or request.query_params.get("cursor")
    subscription = open_subscription(server, request, cursor)
    return _EventStream(request, subscription, server.settings.sse_heartbeat)


class _EventStream(StreamingResponse):
    """A streaming response that owns its subscription, however it ends."""

    def __init__(
        self, request: Request, subscription: Subscription, heartbeat: float
    ) -> None:
        super().__init__(
            _frames(request, subscription, heartbeat),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The subscription is closed here, not in the generator: a generator
        # cancelled before its first step never runs its cleanup, and one
        # left at a yield runs it only once it is garbage-collected.
        with self._subscription:
            await super().__call__(scope, receive, send)


async def _frames(
    request: Request, subscription: Subscription, heartbeat: float
) -> AsyncIterator[bytes]:
    while True:
        try:
            data = await asyncio.wait_for(subscription.get(), heartbeat)
        except TimeoutError:
            if await request.is_disconnected():
                return
            yield b": keep-alive\n\n"
            continue
        except SubscriptionClosed as exc:
            # The stream ends; EventSource reconnects with its last id.
            yield _frame(b"", _encode({"type": "closed", "reason": exc.reason}))
            return
        yield _frame(_cursor_of(data), data.decode())


def _cursor_of(data: bytes) -> bytes:
    # Events carry their cursor as the second key; the first message's is in
    # the same place, so one slice finds it without decoding the JSON.
    start = data.find(b'"cursor":"')
    if start < 0:
        return b""
    start += len(b'"cursor":"')
    return data[start : data.index(b'"', start)]


def _frame(cursor: bytes, text: str) -> bytes:
    head = b"id: " + cursor + b"\n" if cursor else b""
    return head + b"data: " + text.encode() + b"\n\n"
