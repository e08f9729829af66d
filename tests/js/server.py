"""A real streamer server for the Node tests, driven over stdin and stdout.

The Node test spawns ``python tests/js/server.py``, reads one JSON line with
the port, then writes one JSON command a line and reads one JSON answer a
line, matched by ``id``. Commands go over the pipes rather than over HTTP so
that they survive the server restarts they ask for, and so that the app
under test has no route it would not have in production.

Documents convert with the ``Controlled`` converter of the Python tests: they
finish when a command says so. The secret is fixed, so a token stays valid
across a restart, as with a real server's configured secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from streamer import JobManager, SystemClock
from streamer.app import create_app
from streamer.runner import StreamerServer, server_config
from tests.helpers import Controlled

logger = logging.getLogger("streamer.tests.js")

SECRET = b"secret of the node tests of streamer.js"


class Harness:
    """One app at a time on a fixed port, and the commands that steer it."""

    def __init__(self, replay_size: int, data_dir: Path) -> None:
        self.replay_size = replay_size
        self.data_dir = data_dir
        self.starts = 0
        self.port = 0
        self.converter = Controlled()
        self.manager: JobManager | None = None
        self.server: StreamerServer | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # A new converter and manager and an empty data directory, as a new
        # process on a new machine would have: nothing of the previous app's
        # jobs survives a restart, so the client's reset is all there is.
        self.converter = Controlled()
        self.manager = JobManager(clock=SystemClock(), memory_required_gb=0.001)
        self.starts += 1
        app = create_app(
            self.manager,
            converter=self.converter,
            secret=SECRET,
            replay_size=self.replay_size,
            data_dir=self.data_dir / f"start-{self.starts}",
        )
        config = server_config(
            app, host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = StreamerServer(config)
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError("the server stopped while starting")
            await asyncio.sleep(0.005)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is None or self.task is None:
            return
        self.server.should_exit = True
        await self.task
        if self.manager is not None:
            await self.manager.aclose()
        self.server = self.task = None

    # -- commands ---------------------------------------------------------------

    async def op_finish(self, document: str) -> dict[str, Any]:
        self.converter.finish(document)
        return {}

    async def op_fail(self, document: str, message: str) -> dict[str, Any]:
        self.converter.fail[document] = message
        self.converter.finish(document)
        return {}

    async def op_started(self, document: str, timeout: float) -> dict[str, Any]:
        await self.converter.wait_started(document, timeout)
        return {}

    async def op_progress(self, document: str, value: float) -> dict[str, Any]:
        self.converter.callbacks[document](value)
        return {}

    async def op_wait_job(self, job_id: str, timeout: float) -> dict[str, Any]:
        assert self.manager is not None
        async with asyncio.timeout(timeout):
            job = await self.manager.wait_job(job_id)
        return {"status": job.status.value}

    async def op_drop(self) -> dict[str, Any]:
        # An abort sends no close frame and no FIN handshake worth the name:
        # the client sees its connection vanish, as on a network failure.
        assert self.server is not None
        connections = list(self.server.server_state.connections)
        for connection in connections:
            connection.transport.abort()
        return {"dropped": len(connections)}

    async def op_restart(
        self, session: str | None = None, documents: list[str] | None = None
    ) -> dict[str, Any]:
        await self.stop()
        await self.start()
        job_id = None
        if session is not None and documents:
            assert self.manager is not None
            job_id = self.manager.create_job(session, documents)
            await self.manager.start_job(job_id, self.converter)
        return {"port": self.port, "job_id": job_id}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replay-size", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="streamer-js-") as data_dir:
        await _serve(Harness(args.replay_size, Path(data_dir)))


async def _serve(harness: Harness) -> None:
    await harness.start()
    write({"port": harness.port})

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    # Commands run side by side, so one that waits (for a job to end) does not
    # hold back the one that lets it end.
    running: set[asyncio.Task[None]] = set()
    try:
        # The parent closing stdin, or dying, ends the server.
        while line := await reader.readline():
            task = asyncio.create_task(answer(harness, json.loads(line)))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await harness.stop()


async def answer(harness: Harness, command: dict[str, Any]) -> None:
    ident = command.pop("id", None)
    name = command.pop("op", "")
    handler: Callable[..., Awaitable[dict[str, Any]]] | None = getattr(
        harness, f"op_{name}", None
    )
    if handler is None:
        write({"id": ident, "ok": False, "error": f"unknown op {name!r}"})
        return
    try:
        result = await handler(**command)
    except Exception as exc:
        logger.exception("op %s failed", name)
        write({"id": ident, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    write({"id": ident, "ok": True, **result})


def write(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
