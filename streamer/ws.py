"""The WebSocket endpoint: a session's events, live, with resume.

Everything that can refuse a client (origin, token, job filter, limits) is
decided before the handshake is accepted, and a refusal is an HTTP response
with the API's error body; a cursor is never refused, only reset. Once
accepted, one task sends what the hub queues while this one reads the
client's messages, so a client that never reads cannot stall its own pings
and a chatty one cannot stall sends.

Close codes: 1003 for a binary frame, 1008 for a client that exceeds its
message rate, 1009 for an oversized message, 1012 when the server shuts down,
1013 when the client fell too far behind (it resumes from its last cursor).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .errors import HubClosed, HubLimitExceeded, SubscriberEvicted, SubscriptionClosed
from .hub import Subscription
from .server import ApiError, Server, ServerSettings, server_of

__all__ = ["job_filter", "open_subscription", "websocket_endpoint"]

logger = logging.getLogger("streamer.ws")

CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013

_MAX_JOB_FILTER = 100

_encode = json.JSONEncoder(separators=(",", ":")).encode


def allowed_origin(connection: WebSocket, origins: tuple[str, ...] | None) -> bool:
    """Whether the handshake's Origin may open a socket.

    Clients that are not browsers send no Origin and are let through: the
    check protects a browser user's token from other sites' pages, nothing
    more. By default only the server's own origin is allowed.
    """
    origin = connection.headers.get("origin")
    if origin is None:
        return True
    if origins is not None:
        return "*" in origins or origin in origins
    host = connection.headers.get("host", "")
    parts = urlsplit(origin)
    return parts.scheme in {"http", "https"} and parts.netloc == host


def job_filter(connection: HTTPConnection) -> set[str] | None:
    """The job ids of the ``jobs`` query parameter, or None to follow them all."""
    raw = connection.query_params.get("jobs")
    if raw is None:
        return None

    jobs = {part.strip() for part in raw.split(",") if part.strip()}
    if not jobs or len(jobs) > _MAX_JOB_FILTER or any(len(j) > 64 for j in jobs):
        raise ApiError(
            400,
            "invalid_jobs",
            f"'jobs' must list 1 to {_MAX_JOB_FILTER} job ids, comma separated",
        )
    return jobs


def open_subscription(
    server: Server, connection: HTTPConnection, cursor: str | None
) -> Subscription:
    """Authorize a stream request and subscribe it to its session's hub.

    Both streams open through here, so they refuse the same requests alike.
    The cursor is not checked: the hub answers any cursor it cannot resume
    from, however malformed or long, with a reset snapshot.
    """
    session_id = connection.path_params["session_id"]
    server.authorize(connection, session_id)
    jobs = job_filter(connection)
    try:
        return server.hub.subscribe(
            session_id,
            cursor=cursor or None,
            jobs=jobs,
            snapshot=server.snapshot(session_id),
        )
    except HubLimitExceeded as exc:
        raise ApiError(429, "too_many_subscribers", str(exc)) from None
    except HubClosed:
        raise ApiError(503, "shutting_down", "the server is shutting down") from None


async def websocket_endpoint(websocket: WebSocket) -> None:
    server = server_of(websocket)
    try:
        if not allowed_origin(websocket, server.settings.origins):
            raise ApiError(403, "origin_refused", "this origin may not connect")
        cursor = websocket.query_params.get("cursor")
        subscription = open_subscription(server, websocket, cursor)
    except ApiError as exc:
        logger.info("refused websocket: %s", exc.code)
        await websocket.send_denial_response(exc.response())
        return

    # Two tasks a connection, this one reading and one sending: when the
    # sender closes the socket (shutdown, eviction), the client's answer or
    # the ping timeout ends the reading here.
    with subscription:
        await websocket.accept()
        sender = asyncio.create_task(_send(websocket, subscription))
        try:
            await _receive(websocket, server.settings)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender


async def _send(websocket: WebSocket, subscription: Subscription) -> None:
    try:
        while True:
            data = await subscription.get()
            await websocket.send({"type": "websocket.send", "text": data.decode()})
    except SubscriberEvicted:
        await _close(websocket, CLOSE_TRY_AGAIN, "lagging; resume from your cursor")
    except SubscriptionClosed as exc:
        if exc.reason == "shutdown":
            await _close(websocket, CLOSE_RESTART, "server restarting")
        else:
            await _close(websocket, 1000, "")


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    # The peer may already be gone; a failed close leaves nothing to tidy.
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(code, reason)


async def _receive(websocket: WebSocket, settings: ServerSettings) -> None:
    bucket = _Bucket(settings.client_messages_per_second)
    refused = 0
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if websocket.application_state != WebSocketState.CONNECTED:
            # Closed from this side; only the client's close is awaited now.
            continue

        if message.get("bytes") is not None:
            await _close(websocket, CLOSE_UNSUPPORTED, "binary frames are not accepted")
            return
        text = message.get("text") or ""
        if _too_big(text, settings.max_message_bytes):
            await _close(websocket, CLOSE_TOO_BIG, "message too big")
            return
        if bucket.take():
            reply = _answer(text)
            refused = 0
        else:
            # A client over its rate is told so; one that keeps going after
            # a burst's worth of refusals is not listening, and is closed.
            refused += 1
            if refused > bucket.capacity:
                await _close(websocket, CLOSE_POLICY, "too many messages")
                return
            reply = {
                "type": "error",
                "code": "rate_limited",
                "message": f"at most {settings.client_messages_per_second:g}"
                " messages a second",
            }
        try:
            await websocket.send_text(_encode(reply))
        except (WebSocketDisconnect, RuntimeError):
            return


def _too_big(text: str, limit: int) -> bool:
    # The limit is in bytes, as the setting says, and a character may take up
    # to four of them; only text that is not ASCII is worth encoding to count.
    if len(text) > limit:
        return True

    return not text.isascii() and len(text.encode()) > limit


def _answer(text: str) -> dict[str, object]:
    try:
        message = json.loads(text)
    except json.JSONDecodeError:
        return {"type": "error", "code": "invalid_json", "message": "not JSON"}
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return {
            "type": "error",
            "code": "invalid_message",
            "message": "a message is an object with a string 'type'",
        }
    if message["type"] == "ping":
        return {"type": "pong"}
    return {
        "type": "error",
        "code": "unknown_type",
        "message": f"unknown message type {message['type'][:32]!r}",
    }


class _Bucket:
    """A token bucket: ``rate`` messages a second, bursts of twice that."""

    __slots__ = ("_at", "_rate", "_tokens", "capacity")

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self.capacity = max(1.0, 2 * rate)
        self._tokens = self.capacity
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
