"""The WebSocket endpoint: a session's events, live, with resume.

Everything that can refuse a client (origin, token, job filter, limits) is
decided before the handshake is accepted, and a refusal is an HTTP response
with the API's error body; a cursor is never refused, only reset. Once
accepted, the endpoint's task reads the client's messages and sending goes
on beside it, so a client that never reads cannot stall its own pings and a
chatty one cannot stall sends.

Sending costs no task while the client keeps up. With nothing queued, the
subscription is handed off to publish, which writes each message as it comes:
straight to the transport when the server offers the :data:`TEXT_FRAMES`
extension (streamer's own uvicorn protocol does, see :mod:`streamer.runner`),
else by starting the ASGI send right there, which returns without suspending
whenever the transport takes the bytes (uvicorn's send waits only once the
transport has paused writing; it runs in the publisher's task, and servers'
sends do not care which task calls them). A send that does suspend ends the
hand-off: a task finishes it, in the connection's stead, and sends what the
hub queued meanwhile, bounded and coalesced as for any reader, until it has
caught up and hands off again. So a paused transport holds at most one
message beyond its own buffer, and one slow client never delays publish or
the others.

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
from collections.abc import Callable, Coroutine, Generator
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .errors import HubClosed, HubLimitExceeded, SubscriberEvicted, SubscriptionClosed
from .hub import Subscription
from .server import ApiError, Server, ServerSettings, server_of

__all__ = ["TEXT_FRAMES", "job_filter", "open_subscription", "websocket_endpoint"]

logger = logging.getLogger("streamer.ws")

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013

_MAX_JOB_FILTER = 100

#: The scope extension of a server that can write a text message at once. Its
#: ``"write"``, called with the payload's bytes, writes the message and
#: returns ``True``, or, if it cannot without waiting, writes nothing and
#: returns ``False``.
TEXT_FRAMES = "streamer.text_frames"

_encode = json.JSONEncoder(separators=(",", ":")).encode


def allowed_origin(connection: HTTPConnection, origins: tuple[str, ...] | None) -> bool:
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
        subscription = _handshake(server, websocket)
    except ApiError as exc:
        logger.info("refused websocket: %s", exc.code)
        await websocket.send_denial_response(exc.response())
        return

    # This task reads; a second one sends, but only while publish cannot
    # write for it. When the sender closes the socket (shutdown, eviction),
    # the client's answer or the ping timeout ends the reading here.
    with subscription:
        await websocket.accept()
        sender = _Sender(websocket, subscription)
        sender.start()
        try:
            await _receive(websocket, server.settings)
        finally:
            await sender.stop()


def _handshake(server: Server, websocket: WebSocket) -> Subscription:
    # Read through a view of the scope of its own, so that the parsed query,
    # token and all, is dropped with the view instead of staying on the
    # WebSocket for the connection's life.
    handshake = HTTPConnection(websocket.scope)
    if not allowed_origin(handshake, server.settings.origins):
        raise ApiError(403, "origin_refused", "this origin may not connect")

    cursor = handshake.query_params.get("cursor")
    return open_subscription(server, handshake, cursor)


class _Sender:
    """Sends a subscription's messages, handing off to publish whenever idle.

    Its task runs only to send what is queued (the first message, a replay,
    what piled up behind a slow transport) and to finish a send that could
    not complete at once; then it hands off and ends, and the hub's
    :meth:`~streamer.hub.Subscription.hand_off` wakes a new one when needed.
    An idle connection holds no task of its own for sending.
    """

    __slots__ = (
        "_failed",
        "_frames",
        "_rest",
        "_stopped",
        "_subscription",
        "_task",
        "_websocket",
    )

    def __init__(self, websocket: WebSocket, subscription: Subscription) -> None:
        self._websocket = websocket
        self._subscription = subscription
        extension = (websocket.scope.get("extensions") or {}).get(TEXT_FRAMES) or {}
        self._frames: Callable[[bytes], bool] | None = extension.get("write")
        self._task: asyncio.Task[None] | None = None
        self._rest: _Rest | None = None
        self._failed: Exception | None = None
        self._stopped = False

    def start(self) -> None:
        """Start sending; called once, and from the hub's wake-up after that."""
        # The previous task, if any, ended when it handed off, so only one
        # ever runs; stop() awaits whichever is the last.
        if not self._stopped:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop sending: cancel the task, if one runs, and drop what it held."""
        self._stopped = True
        task = self._task
        if task is not None:
            task.cancel()
            # The sender's failure is the connection's end, which the reader
            # sees for itself; nothing is left to report.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

        rest, self._rest = self._rest, None
        if rest is not None:
            rest.close()

    def write_now(self, data: bytes) -> bool:
        """Whether the message went out; if not, :meth:`_finish` completes it."""
        try:
            if self._frames is not None and self._frames(data):
                return True

            text = {"type": "websocket.send", "text": data.decode()}
            send = self._websocket.send(text)
            suspended = send.send(None)
        except StopIteration:
            return True
        except Exception as exc:
            # Raised in the sending task instead, which ends as it would
            # have had it made the call itself; publish must not see it.
            self._failed = exc
            return False

        self._rest = _Rest(send, suspended)
        return False

    async def _run(self) -> None:
        websocket, subscription = self._websocket, self._subscription
        try:
            await self._finish()
            while True:
                data = subscription.get_nowait()
                if data is None:
                    if subscription.hand_off(self.write_now, self.start):
                        # Ending without an error, this task need not be
                        # awaited; a finished task kept here would only
                        # hold memory for the connection's life.
                        self._task = None
                        return
                    continue

                if not self.write_now(data):
                    await self._finish()
        except SubscriberEvicted:
            await _close(websocket, CLOSE_TRY_AGAIN, "lagging; resume from your cursor")
        except SubscriptionClosed as exc:
            if exc.reason == "shutdown":
                await _close(websocket, CLOSE_RESTART, "server restarting")
            else:
                await _close(websocket, CLOSE_NORMAL, "")

    async def _finish(self) -> None:
        failed, self._failed = self._failed, None
        if failed is not None:
            raise failed

        rest, self._rest = self._rest, None
        if rest is not None:
            await rest


class _Rest:
    """What is left of a coroutine that suspended before any task awaited it.

    The coroutine has already yielded what it waits for, usually a future;
    awaiting this hands that to the awaiting task first, and resumes the
    coroutine only once the task is woken, as if it had awaited it all along.
    """

    __slots__ = ("_coroutine", "_suspended")

    def __init__(self, coroutine: Coroutine[Any, Any, None], suspended: Any) -> None:
        self._coroutine = coroutine
        self._suspended = suspended

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, suspended = self._coroutine, self._suspended
        while True:
            try:
                sent = yield suspended
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:
                # A cancellation, most likely: the coroutine gets to see it.
                try:
                    suspended = coroutine.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    suspended = coroutine.send(sent)
                except StopIteration:
                    return

    def close(self) -> None:
        self._coroutine.close()


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
