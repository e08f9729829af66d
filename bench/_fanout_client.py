"""The client side of bench/fanout.py: many cheap WebSocket subscribers.

One process holds every connection of a run, so the client must cost far less
per message than the servers it measures, or it becomes the limit it is
supposed to find. Each connection is therefore a bare :class:`asyncio.Protocol`
with no task, no queue and no coroutine per message.

The opening handshake is ``websockets``' sans-I/O :class:`ClientProtocol`,
which writes the request and validates the response. The frames after it are
read here: the frame parser of ``websockets`` costs 4 to 7 us a frame on this
machine, about as much as a server's whole delivery, while frames from a
server are never masked and, from these servers, never compressed, which
leaves a length to read and a payload to slice, about 1.5 us.

A connection counts as subscribed once its first message arrives: every
server variant sends one (a hello, or the hub's snapshot) only after it has
registered the connection for fan-out. Each later message carries its publish
time as ``"sent_ns":<time.time_ns()>``; both processes read the same clock.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import cast

from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.uri import parse_uri

__all__ = ["Meter", "Phase", "connect_all"]

_STAMP = re.compile(rb'"sent_ns":([0-9]+)')

_BINARY, _CLOSE, _PING, _PONG = 0x2, 0x8, 0x9, 0xA
_FIN = 0x80
_MAX_HEAD = 16 * 1024

# Connections opened at once. Beyond a few dozen in flight the handshakes only
# queue in the server's backlog, and a burst of them can overflow it.
_CONNECTS_IN_FLIGHT = 64


class Phase:
    """What a meter counts while one burst or one steady stream is measured.

    Messages published before ``since_ns`` are stragglers of an earlier phase
    and are not counted.
    """

    __slots__ = (
        "done",
        "expected",
        "last_ns",
        "latencies",
        "received",
        "remaining",
        "since_ns",
    )

    def __init__(
        self, connections: int, expected: int, *, latencies: bool, since_ns: int
    ) -> None:
        self.expected = expected
        self.since_ns = since_ns
        self.remaining = connections
        self.received = 0
        self.last_ns = since_ns
        self.latencies: list[int] | None = [] if latencies else None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if connections == 0 or expected == 0:
            self.done.set_result(None)


class Meter:
    """The connections to one server, and the phase being measured on them."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.uri = f"ws://{host}:{port}{path}"
        self.host = host
        self.port = port
        self.connections: list[_Connection] = []
        self.phase: Phase | None = None
        self.lost = 0

    def start(self, expected: int, *, latencies: bool) -> Phase:
        """Reset every connection's count and begin a phase."""
        for connection in self.connections:
            connection.count = 0

        phase = Phase(
            len(self.connections),
            expected,
            latencies=latencies,
            since_ns=time.time_ns(),
        )
        self.phase = phase
        return phase

    def stop(self) -> None:
        self.phase = None

    def close(self) -> None:
        """Drop every connection without a closing handshake."""
        for connection in self.connections:
            connection.abort()

        self.connections.clear()


class _Connection(asyncio.Protocol):
    __slots__ = (
        "buffer",
        "count",
        "fragments",
        "head",
        "meter",
        "subscribed",
        "transport",
        "ws",
    )

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.ws: ClientProtocol | None = ClientProtocol(parse_uri(meter.uri))
        self.transport: asyncio.Transport | None = None
        self.subscribed: asyncio.Future[None] = (
            asyncio.get_running_loop().create_future()
        )
        self.head = bytearray()
        self.buffer = bytearray()
        self.fragments: bytearray | None = None
        self.count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        assert self.ws is not None
        self.ws.send_request(self.ws.connect())
        for chunk in self.ws.data_to_send():
            self.transport.write(chunk)

    def data_received(self, data: bytes) -> None:
        # One clock reading per read: every frame in it arrived at once.
        now = time.time_ns()
        if self.ws is not None:
            data = self._handshake(data)
            if not data:
                return

        buffer = self.buffer
        buffer += data
        size = len(buffer)
        position = 0
        while size - position >= 2:
            length = buffer[position + 1] & 0x7F
            start = position + 2
            if length == 126:
                if size - position < 4:
                    break
                length = int.from_bytes(buffer[start : start + 2])
                start += 2
            elif length == 127:
                if size - position < 10:
                    break
                length = int.from_bytes(buffer[start : start + 8])
                start += 8

            end = start + length
            if end > size:
                break

            first = buffer[position]
            position = end
            opcode = first & 0x0F
            # Opcodes 0, 1 and 2: a continuation, a text or a binary frame.
            if opcode <= _BINARY:
                self._frame(first & _FIN, buffer, start, end, now)
            elif opcode == _PING:
                self._pong(bytes(buffer[start:end]))
            elif opcode == _CLOSE:
                self.abort()
                return

        del buffer[:position]

    def connection_lost(self, exc: Exception | None) -> None:
        self.meter.lost += 1
        self._fail(exc or ConnectionError("connection closed by the server"))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _handshake(self, data: bytes) -> bytes:
        """Feed the response head to ``websockets``; return the bytes after it."""
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > _MAX_HEAD:
                self._fail(ConnectionError("no end to the handshake response"))
                self.abort()
            return b""

        head, rest = bytes(self.head[: end + 4]), bytes(self.head[end + 4 :])
        ws, self.ws = self.ws, None
        assert ws is not None
        ws.receive_data(head)
        responses = [e for e in ws.events_received() if isinstance(e, Response)]
        if not responses or ws.handshake_exc is not None:
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            self._fail(ConnectionError(f"handshake refused: {status}"))
            self.abort()
            return b""

        return rest

    def _frame(
        self, fin: int, buffer: bytearray, start: int, end: int, now: int
    ) -> None:
        # Servers here never fragment a message; a fragmented one is joined
        # up anyway, so that its stamp is found wherever it fell.
        if not fin or self.fragments is not None:
            if self.fragments is None:
                self.fragments = bytearray()
            self.fragments += buffer[start:end]
            if not fin:
                return

            buffer, start, end = self.fragments, 0, len(self.fragments)
            self.fragments = None

        if not self.subscribed.done():
            self.subscribed.set_result(None)
            return

        phase = self.meter.phase
        if phase is None:
            return

        match = _STAMP.search(buffer, start, end)
        if match is None:
            return

        sent = int(match[1])
        if sent < phase.since_ns:
            return

        phase.received += 1
        if phase.latencies is not None:
            phase.latencies.append(now - sent)

        self.count += 1
        if self.count == phase.expected:
            phase.remaining -= 1
            if phase.remaining == 0:
                phase.last_ns = now
                if not phase.done.done():
                    phase.done.set_result(None)

    def _pong(self, payload: bytes) -> None:
        # A client's frames must be masked; control payloads are short.
        if self.transport is None or self.transport.is_closing():
            return

        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload[:125]))
        self.transport.write(bytes([_FIN | _PONG, 0x80 | len(masked)]) + mask + masked)

    def _fail(self, exc: BaseException) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(exc)


async def connect_all(meter: Meter, count: int, within: float) -> None:
    """Open ``count`` more connections and wait until each is subscribed."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(_CONNECTS_IN_FLIGHT)

    async def one() -> None:
        async with gate:
            _, connection = await loop.create_connection(
                lambda: _Connection(meter), meter.host, meter.port
            )
            meter.connections.append(connection)
            await connection.subscribed

    # A connection opened before a failure is kept in the meter, so the
    # caller's close() still reaches it.
    async with asyncio.timeout(within), asyncio.TaskGroup() as group:
        for _ in range(count):
            group.create_task(one())
