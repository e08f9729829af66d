"""The server side of bench/fanout.py: one fan-out variant in its own process.

``python bench/_fanout_server.py VARIANT [--ws IMPL] [--loop LOOP] [--http IMPL]``
binds a free port of 127.0.0.1 and prints ``ready PORT PATH`` once clients
may connect to ``ws://127.0.0.1:PORT/PATH``. Then it obeys one command a line
on stdin and answers each with one line on stdout:

* ``burst COUNT``: publish COUNT events as fast as the loop allows, yielding
  once after each as an engine task would; answers ``ok START_NS END_NS``.
* ``steady RATE SECONDS``: publish RATE events a second for SECONDS;
  answers ``ok START_NS END_NS``.
* ``gc``: collect garbage, so that a reading of RSS does not include it.

End of input stops the server. The variants:

* ``websockets``: the bare ``websockets`` server and its ``broadcast()``;
* ``starlette``: a Starlette endpoint under uvicorn that only loops
  ``send_text`` over a log shared by every connection, the least any
  Starlette app can do per delivery;
* ``broadcaster``: encode/broadcaster's memory backend behind a Starlette
  endpoint: one subscriber per connection, each event sent as it comes;
* ``streamer``: ``streamer.create_app()`` with events published straight into
  its hub, served as ``streamer serve`` serves it: by streamer's runner, whose
  uvicorn WebSocket protocol lets the endpoint write frames itself;
* ``streamer-asgi``: the same app under uvicorn's own protocol, as a host
  application that mounts it would serve it: every send goes through ASGI.

Each variant imports its framework only once chosen, so that a process holds
no other variant's code in its RSS and a missing optional package fails its
own variant alone.

Every variant encodes an event to JSON once and sends the same text to every
subscriber. Burst events are ``job.document_converted``, which the streamer
hub never coalesces, so every variant delivers every event; the steady stream
is ``job.progress``, as a running job emits.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import secrets
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

VARIANTS = ("websockets", "starlette", "broadcaster", "streamer", "streamer-asgi")
LOOPS = ("asyncio", "uvloop")
WS_IMPLS = ("websockets", "websockets-sansio", "wsproto")

_HELLO = '{"type":"subscribed"}'
_CHANNEL = "session"
_START_TIMEOUT = 20.0

_encode = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class Draft:
    """One event before a variant encodes it; ``job`` holds the publish time."""

    type: str
    seq: int
    job_id: str
    ts: datetime
    job: dict[str, Any]
    document: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": self.type,
            "job_id": self.job_id,
            "ts": self.ts.isoformat(),
            "job": self.job,
        }
        if self.document is not None:
            data["document"] = self.document
        return data


def draft(kind: str, seq: int, session_id: str) -> Draft:
    """A job event shaped as the engine's, about 600 bytes once encoded."""
    now = datetime.now(UTC)
    job_id = "job-5f0c2a9e41d7b3c8"
    done = seq % 40
    job = {
        "job_id": job_id,
        "session_id": session_id,
        "status": "processing",
        "progress": round(100 * done / 40, 2),
        "current_file": f"reports/2024/quarterly-{done:03d}.pdf",
        "files_completed": done,
        "files_total": 40,
        "files_converted": done - done // 9,
        "files_failed": done // 9,
        "created_at": "2024-05-02T09:14:03.511208+00:00",
        "started_at": "2024-05-02T09:14:04.002915+00:00",
        "completed_at": None,
        "error": None,
        "eta_seconds": 4 * (40 - done),
        "eta_human": f"{4 * (40 - done) // 60} min",
        "memory_required_gb": 2.0,
        # Stamped last, as close to the publish call as the draft allows.
        "sent_ns": time.time_ns(),
    }
    document = None
    if kind == "job.document_converted":
        document = {
            "document_id": f"reports/2024/quarterly-{done:03d}.pdf",
            "status": "converted",
            "error": None,
            "duration_seconds": 3.912,
            "result": None,
        }
    return Draft(kind, seq, job_id, now, job, document)


class Fanout:
    """A server variant: where clients connect and how an event reaches them."""

    session_id = f"ses-{secrets.token_hex(8)}"

    async def start(self, sock: socket.socket) -> str:
        """Serve on ``sock`` and return the WebSocket path clients connect to."""
        raise NotImplementedError

    async def publish(self, event: Draft) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class _Encoded(Fanout):
    """A baseline that encodes the message itself, cursor and all, as the hub does."""

    _epoch = secrets.token_hex(8)

    def encode(self, event: Draft) -> str:
        return _encode(
            {"type": event.type, "cursor": f"{self._epoch}-{event.seq}"}
            | event.to_dict()
        )


class WebsocketsFanout(_Encoded):
    def __init__(self) -> None:
        from websockets.asyncio.server import ServerConnection, broadcast

        self._broadcast = broadcast
        self._clients: set[ServerConnection] = set()
        self._server: Any = None

    async def start(self, sock: socket.socket) -> str:
        from websockets.asyncio.server import ServerConnection, serve

        async def handler(connection: ServerConnection) -> None:
            self._clients.add(connection)
            try:
                await connection.send(_HELLO)
                await connection.wait_closed()
            finally:
                self._clients.discard(connection)

        # No pings and no compression, as for every other variant: the
        # bench measures fan-out, not keepalives or zlib.
        self._server = await serve(
            handler, sock=sock, ping_interval=None, compression=None, backlog=4096
        )
        return "/"

    async def publish(self, event: Draft) -> None:
        self._broadcast(self._clients, self.encode(event))

    async def stop(self) -> None:
        self._server.close()
        async with asyncio.timeout(2.0):
            await self._server.wait_closed()


class _UvicornFanout(Fanout):
    """A Starlette app under uvicorn, with the WebSocket and loop chosen."""

    def __init__(self, ws: str, http: str) -> None:
        self._ws = ws
        self._http = http
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    def app(self) -> Any:
        raise NotImplementedError

    async def started(self, port: int) -> str:
        return "/ws"

    def server(self, **options: Any) -> Any:
        """A uvicorn server of this variant's app, configured by ``options``."""
        import uvicorn

        return uvicorn.Server(uvicorn.Config(self.app(), lifespan="auto", **options))

    async def start(self, sock: socket.socket) -> str:
        self._server = self.server(
            http=self._http,
            ws=self._ws,
            log_level="warning",
            access_log=False,
            ws_ping_interval=None,
            ws_ping_timeout=None,
            backlog=4096,
            timeout_graceful_shutdown=1,
        )
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        async with asyncio.timeout(_START_TIMEOUT):
            while not self._server.started:
                if self._task.done():
                    self._task.result()
                    raise RuntimeError("uvicorn exited before it started")
                await asyncio.sleep(0.01)

        return await self.started(sock.getsockname()[1])

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            async with asyncio.timeout(5.0):
                await self._task


class _Feed:
    """Every event so far, and one future that wakes all readers at once."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self._changed: asyncio.Future[None] | None = None

    def append(self, text: str) -> None:
        self.log.append(text)
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set_result(None)

    async def wait(self) -> None:
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        await self._changed


class StarletteFanout(_UvicornFanout, _Encoded):
    def __init__(self, ws: str, http: str) -> None:
        super().__init__(ws, http)
        self._feed = _Feed()

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import WebSocketRoute
        from starlette.websockets import WebSocket

        feed = self._feed

        async def endpoint(websocket: WebSocket) -> None:
            await websocket.accept()

            # The position is taken before the hello goes out, so an event
            # published while it is sent is still delivered.
            position = len(feed.log)
            await websocket.send_text(_HELLO)
            log = feed.log
            while True:
                while position == len(log):
                    await feed.wait()
                text = log[position]
                position += 1
                await websocket.send_text(text)

        return Starlette(routes=[WebSocketRoute("/ws", endpoint)])

    async def publish(self, event: Draft) -> None:
        self._feed.append(self.encode(event))


class BroadcasterFanout(_UvicornFanout, _Encoded):
    def __init__(self, ws: str, http: str) -> None:
        from broadcaster import Broadcast

        super().__init__(ws, http)
        self._broadcast = Broadcast("memory://")

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.routing import WebSocketRoute
        from starlette.websockets import WebSocket

        broadcast = self._broadcast

        async def endpoint(websocket: WebSocket) -> None:
            await websocket.accept()
            async with broadcast.subscribe(_CHANNEL) as subscriber:
                await websocket.send_text(_HELLO)
                while True:
                    event = await subscriber.get()
                    await websocket.send_text(event.message)

        return Starlette(routes=[WebSocketRoute("/ws", endpoint)])

    async def start(self, sock: socket.socket) -> str:
        await self._broadcast.connect()
        return await super().start(sock)

    async def publish(self, event: Draft) -> None:
        await self._broadcast.publish(_CHANNEL, self.encode(event))


class StreamerFanout(_UvicornFanout):
    """``streamer.create_app()``, with events put straight into its hub.

    The clients take the way a browser does: a session from
    ``POST /api/sessions``, then ``/api/sessions/{id}/ws?token=...``. Only the
    engine is left out, so that the figures are those of the hub and the
    endpoint.
    """

    def app(self) -> Any:
        from streamer.app import create_app

        self._app = create_app()
        return self._app

    def server(self, **options: Any) -> Any:
        from streamer.runner import StreamerServer, server_config

        return StreamerServer(server_config(self.app(), **options))

    async def started(self, port: int) -> str:
        import httpx

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.post("/api/sessions", timeout=_START_TIMEOUT)
        response.raise_for_status()
        body = response.json()
        self.session_id = body["session_id"]
        return f"/api/sessions/{self.session_id}/ws?token={body['token']}"

    async def publish(self, event: Draft) -> None:
        from streamer.events import JobDocumentConverted, JobProgress

        hub_event: JobDocumentConverted | JobProgress
        if event.document is not None:
            hub_event = JobDocumentConverted(
                event.job_id, self.session_id, event.ts, event.job, event.document
            )
        else:
            hub_event = JobProgress(event.job_id, self.session_id, event.ts, event.job)
        self._app.state.streamer.hub.publish(hub_event)


class StreamerAsgiFanout(StreamerFanout):
    """``streamer.create_app()`` under uvicorn's own WebSocket protocol."""

    def server(self, **options: Any) -> Any:
        return _UvicornFanout.server(self, **options)


def make_fanout(variant: str, ws: str, http: str) -> Fanout:
    if variant == "websockets":
        return WebsocketsFanout()
    if variant == "starlette":
        return StarletteFanout(ws, http)
    if variant == "broadcaster":
        return BroadcasterFanout(ws, http)
    if variant == "streamer":
        return StreamerFanout(ws, http)
    if variant == "streamer-asgi":
        return StreamerAsgiFanout(ws, http)
    raise ValueError(f"unknown variant {variant!r}")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if name == "asyncio":
        return asyncio.new_event_loop
    raise ValueError(f"unknown event loop {name!r}")


def raise_fd_limit() -> None:
    """Allow as many open files as the hard limit, for 1000+ connections."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _burst(fanout: Fanout, count: int, seq: int) -> tuple[int, int]:
    start = time.time_ns()
    for offset in range(count):
        await fanout.publish(
            draft("job.document_converted", seq + offset, fanout.session_id)
        )
        await asyncio.sleep(0)
    return start, time.time_ns()


async def _steady(
    fanout: Fanout, rate: float, seconds: float, seq: int
) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    count = max(1, round(rate * seconds))

    # Each event is due at a fixed offset from the start, so a late one does
    # not push back those after it.
    begin = loop.time()
    start = time.time_ns()
    for offset in range(count):
        await asyncio.sleep(max(0.0, begin + offset / rate - loop.time()))
        await fanout.publish(draft("job.progress", seq + offset, fanout.session_id))
    return start, time.time_ns()


def _answer(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def _obey(fanout: Fanout) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    seq = 0
    while line := await reader.readline():
        command, *args = line.decode().split()
        if command == "burst":
            count = int(args[0])
            start, end = await _burst(fanout, count, seq)
            seq += count
            _answer(f"ok {start} {end}")
        elif command == "steady":
            rate, seconds = float(args[0]), float(args[1])
            start, end = await _steady(fanout, rate, seconds, seq)
            seq += max(1, round(rate * seconds))
            _answer(f"ok {start} {end}")
        elif command == "gc":
            gc.collect()
            _answer("ok")
        else:
            _answer(f"error unknown command {command!r}")


async def _main(fanout: Fanout) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    sock.setblocking(False)
    path = await fanout.start(sock)
    _answer(f"ready {sock.getsockname()[1]} {path}")
    try:
        await _obey(fanout)
    finally:
        await fanout.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--ws", choices=WS_IMPLS, default="websockets-sansio")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    parser.add_argument("--http", choices=("h11", "httptools"), default="httptools")
    args = parser.parse_args()

    raise_fd_limit()
    fanout = make_fanout(args.variant, args.ws, args.http)
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        runner.run(_main(fanout))


if __name__ == "__main__":
    main()
