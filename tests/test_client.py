"""Tests of the Python client: its HTTP calls, and its stream across drops.

The resume rules are pinned down on :class:`StreamState` alone; the rest runs
against real servers on port 0, which a test drops, restarts or makes refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import (
    WebSocketsSansIOProtocol,
)

from streamer import JobManager, SystemClock
from streamer.app import create_app
from streamer.client import (
    FINAL_STATUSES,
    RECONNECT_BACKOFF,
    ClientError,
    ConnectionState,
    ConnectionStatus,
    EventStream,
    StreamerClient,
    StreamState,
)
from streamer.hub import parse_cursor
from streamer.tokens import mint_token

from .conftest import TIMEOUT, Recorder
from .helpers import Controlled
from .live import Live, serve
from .pdfs import not_a_pdf, page_line, text_pdf

SECRET = b"test secret of the client tests"
EPOCH = "0123456789abcdef"


@pytest.fixture
def converter() -> Controlled:
    return Controlled()


@pytest.fixture
def manager(make_manager: Callable[..., JobManager]) -> JobManager:
    # The real clock, because the server runs on it; documents ask for little
    # of the probe's plenty, so no job waits for memory.
    return make_manager(clock=SystemClock(), memory_required_gb=1.0)


@contextlib.asynccontextmanager
async def client_of(live: Live) -> AsyncIterator[StreamerClient]:
    """A client with a new session of ``live``."""
    async with StreamerClient(live.url) as client:
        await client.create_session()
        yield client


class Pacer:
    """A stand-in for ``asyncio.sleep``: records each delay, returns when let.

    While ``held`` it waits for :meth:`release`, so a test can act between a
    drop and the reconnection; ``limit`` ends the stream after so many sleeps.
    """

    def __init__(self, *, held: bool = False, limit: int | None = None) -> None:
        self.delays: list[float] = []
        self.held = held
        self.limit = limit
        self._asleep = asyncio.Event()
        self._go = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.limit is not None and len(self.delays) >= self.limit:
            raise Enough
        self._asleep.set()
        if self.held:
            await self._go.wait()
            self._go.clear()

    async def asleep(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            await self._asleep.wait()
        self._asleep.clear()

    def release(self) -> None:
        self._go.set()


class Enough(Exception):
    """Raised by a :class:`Pacer` past its limit, to end a stream."""


class Steady(random.Random):
    """A random source that returns the values it was given, in turn."""

    def __init__(self, *values: float) -> None:
        super().__init__()
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


async def take(stream: EventStream) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        return await anext(stream)


async def take_until(
    stream: EventStream, kind: str, job_id: str | None = None
) -> list[dict[str, Any]]:
    """Messages up to and including the first of type ``kind`` (of ``job_id``)."""
    messages = []
    while True:
        message = await take(stream)
        messages.append(message)
        if message["type"] == kind and job_id in (None, message.get("job_id")):
            return messages


class Collector:
    """Reads a stream in a task of its own, as a program's main loop would."""

    def __init__(self, stream: EventStream) -> None:
        self.messages: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: EventStream) -> None:
        async for message in stream:
            self.messages.append(message)
            self._changed.set()

    async def wait(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first message that is ``wanted``, once it came."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                for message in self.messages:
                    if wanted(message):
                        return message
                self._changed.clear()
                await self._changed.wait()

    async def wait_for(self, kind: str) -> dict[str, Any]:
        return await self.wait(lambda message: message["type"] == kind)

    async def aclose(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [parse_cursor(m["cursor"]).seq for m in messages if "job_id" in m]


def lifecycle(types: list[str]) -> list[str]:
    return [kind for kind in types if kind != "job.progress"]


def event(
    seq: int, kind: str, job_id: str = "job-1", ts: int = 0, **job: Any
) -> dict[str, Any]:
    """An event as the wire carries it, at ``seq`` of :data:`EPOCH`."""
    return {
        "type": kind,
        "cursor": f"{EPOCH}-{seq}",
        "job_id": job_id,
        "ts": f"2026-12-03T09:48:{ts:02d}+00:00",
        "job": {"job_id": job_id, "status": "running", **job},
    }


def snapshot(seq: int, *job_ids: str, reset: bool = False) -> dict[str, Any]:
    return {
        "type": "snapshot",
        "cursor": f"{EPOCH}-{seq}",
        "reset": reset,
        "jobs": [{"job_id": job_id, "status": "running"} for job_id in job_ids],
    }


def free_port() -> int:
    """A port nothing listens on (it was free an instant ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# The state of a stream, without a network


def test_client_state_snapshot_replaces_every_job() -> None:
    """A snapshot, reset or not, replaces the jobs wholesale in the same dict."""
    state = StreamState()
    jobs = state.jobs
    assert state.accept(snapshot(3, "job-1", "job-2"))
    assert state.accept(snapshot(9, "job-3", reset=True))

    assert state.jobs is jobs
    assert list(jobs) == ["job-3"]
    assert state.cursor == f"{EPOCH}-9"


def test_client_state_skips_events_already_seen() -> None:
    """An event at or before the last cursor of its epoch is not news."""
    state = StreamState()
    state.accept(snapshot(3))

    assert state.accept(event(4, "job.created"))
    assert state.accept(event(5, "job.started"))
    assert not state.accept(event(5, "job.started"))
    assert not state.accept(event(2, "job.created"))
    assert state.cursor == f"{EPOCH}-5"


def test_client_state_new_epoch_starts_over() -> None:
    """After a snapshot of a new server, its lower cursors are news again."""
    state = StreamState(f"{EPOCH}-40")
    restarted = "fedcba9876543210"
    state.accept({**snapshot(0), "cursor": f"{restarted}-2", "reset": True})

    assert state.accept({**event(3, "job.created"), "cursor": f"{restarted}-3"})
    assert state.cursor == f"{restarted}-3"


def test_client_state_skips_events_of_another_epoch() -> None:
    """An event of an epoch no snapshot opened belongs to another server."""
    state = StreamState()
    state.accept(snapshot(3))

    assert not state.accept({**event(9, "job.created"), "cursor": "fedcba98-9"})
    assert state.cursor == f"{EPOCH}-3"


def test_client_state_resumed_keeps_the_cursor() -> None:
    """``resumed`` is passed on and leaves the cursor where it was."""
    state = StreamState(f"{EPOCH}-7")

    assert state.accept({"type": "resumed", "cursor": f"{EPOCH}-7", "replayed": 0})
    assert not state.accept(event(7, "job.created"))
    assert state.accept(event(8, "job.started"))


def test_client_state_removed_job_is_deleted() -> None:
    """``job.removed`` deletes the job; other events replace it."""
    state = StreamState()
    state.accept(snapshot(1, "job-1"))
    state.accept(event(2, "job.completed", status="completed"))
    assert state.jobs["job-1"]["status"] == "completed"

    state.accept(event(3, "job.removed"))
    assert state.jobs == {}


def test_client_state_never_moves_a_job_backwards() -> None:
    """A stale progress is skipped; an older lifecycle event is passed on only."""
    state = StreamState()
    state.accept(snapshot(1))
    state.accept(event(2, "job.progress", ts=5, progress=0.5))

    # Queued behind a coalesced progress: news, but older than what is held.
    assert state.accept(event(3, "job.document_failed", ts=4, progress=0.4))
    assert state.jobs["job-1"]["progress"] == 0.5
    assert not state.accept(event(4, "job.progress", ts=3, progress=0.3))

    # The same progress again, under its own cursor after a resume.
    assert not state.accept(event(5, "job.progress", ts=5, progress=0.5))
    assert state.accept(event(6, "job.progress", ts=5, progress=0.6))
    assert state.jobs["job-1"]["progress"] == 0.6


def test_client_connection_state_reads_for_people() -> None:
    """A connection state says what it is, and when the next attempt is."""
    waiting = ConnectionState(ConnectionStatus.RECONNECTING, 2, 3.25, "1012")

    assert str(waiting) == "reconnecting in 3.2 s"
    assert str(ConnectionState(ConnectionStatus.LIVE)) == "live"


def test_client_from_url_reads_viewer_fragment() -> None:
    """The viewer URL ``streamer serve`` prints carries session and token."""
    client = StreamerClient.from_url(
        "http://127.0.0.1:8000/#session=ses-1&token=st1.a.b"
    )
    assert (client.base_url, client.session_id, client.token) == (
        "http://127.0.0.1:8000",
        "ses-1",
        "st1.a.b",
    )


def test_client_from_url_reads_session_path() -> None:
    """A session URL gives the session, under any prefix; the token is apart."""
    client = StreamerClient.from_url(
        "https://example.test/conv/api/sessions/ses-2/jobs", token="st1.c.d"
    )
    assert (client.base_url, client.session_id, client.token) == (
        "https://example.test/conv",
        "ses-2",
        "st1.c.d",
    )
    assert StreamerClient.from_url("http://h:1/").session_id is None


# The HTTP API


async def test_client_jobs_round_trip(
    manager: JobManager, converter: Controlled
) -> None:
    """Sessions and jobs are created, read, cancelled and removed."""
    app = create_app(manager, converter=converter)
    async with serve(app) as live, client_of(live) as client:
        job = await client.create_job(["a.pdf", "b.pdf"])
        assert job["status"] == "running"
        assert [d["document_id"] for d in job["documents"]] == ["a.pdf", "b.pdf"]

        assert (await client.get_job(job["job_id"]))["files_total"] == 2
        assert [j["job_id"] for j in await client.list_jobs()] == [job["job_id"]]

        cancelled = await client.cancel_job(job["job_id"])
        assert cancelled["status"] == "cancelled"
        await client.delete_job(job["job_id"])
        assert await client.list_jobs() == []


async def test_client_errors_carry_the_server_code(
    manager: JobManager, converter: Controlled
) -> None:
    """An error answer is raised with its status, code and message."""
    app = create_app(manager, converter=converter)
    async with serve(app) as live, client_of(live) as client:
        with pytest.raises(ClientError) as missing:
            await client.get_job("job-000000000000")
        assert (missing.value.status, missing.value.code) == (404, "job_not_found")
        assert "job-000000000000" in missing.value.message

        job = await client.create_job(["a.pdf"])
        with pytest.raises(ClientError) as active:
            await client.delete_job(job["job_id"])
        assert (active.value.status, active.value.code) == (409, "job_active")

        client.token = "st1.forged.token"
        with pytest.raises(ClientError) as refused:
            await client.list_jobs()
        assert (refused.value.status, refused.value.code) == (401, "token_invalid")


async def test_client_unreachable_server_raises_client_error() -> None:
    """A server that does not answer is a ClientError without a status."""
    async with StreamerClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(ClientError) as unreachable:
            await client.create_session()

    assert (unreachable.value.status, unreachable.value.code) == (None, "unreachable")


async def test_client_without_session_refuses_to_guess() -> None:
    """Calls that need a session say so when the client has none."""
    async with StreamerClient("http://127.0.0.1:1") as client:
        with pytest.raises(ClientError) as missing:
            await client.list_jobs()

    assert missing.value.code == "no_session"


async def test_client_leaves_a_given_http_client_open(
    manager: JobManager, converter: Controlled
) -> None:
    """An httpx client passed in is used, and still open afterwards."""
    async with serve(create_app(manager, converter=converter)) as live:
        async with StreamerClient(live.url, http=live.http) as client:
            await client.create_session()
        assert not live.http.is_closed
        assert (await live.http.get("/healthz")).status_code == 200


async def test_client_uploads_converts_and_downloads(tmp_path: Path) -> None:
    """Files upload as documents; each converted text downloads to a file."""
    files = [text_pdf(tmp_path, 2, name="a.pdf"), text_pdf(tmp_path, 3, name="b.pdf")]
    app = create_app(data_dir=tmp_path / "data")
    async with serve(app) as live, client_of(live) as client:
        documents = await client.upload(files)
        ids = [document["document_id"] for document in documents]
        job_id = (await client.create_job(ids))["job_id"]
        async with client.events(jobs=[job_id]) as stream:
            while stream.state.get(job_id, {}).get("status") not in FINAL_STATUSES:
                await take(stream)
        target = await client.download_result(job_id, ids[1], tmp_path / "b.txt")

    assert [(d["filename"], d["pages"]) for d in documents] == [
        ("a.pdf", 2),
        ("b.pdf", 3),
    ]
    assert stream.state[job_id]["status"] == "completed"
    assert target == tmp_path / "b.txt"
    assert target.read_text().startswith(page_line(1, 3))


async def test_client_upload_and_download_refusals(tmp_path: Path) -> None:
    """A refused upload or download raises, and leaves no file behind."""
    app = create_app(data_dir=tmp_path / "data")
    async with serve(app) as live, client_of(live) as client:
        with pytest.raises(ClientError) as refused:
            await client.upload([not_a_pdf(tmp_path)])
        assert (refused.value.status, refused.value.code) == (422, "not_a_pdf")

        documents = await client.upload([text_pdf(tmp_path, 1)])
        job_id = (await client.create_job([documents[0]["document_id"]]))["job_id"]
        with pytest.raises(ClientError) as missing:
            await client.download_result(job_id, "doc-nope", tmp_path / "x.txt")
        assert (missing.value.status, missing.value.code) == (
            404,
            "document_not_found",
        )

    assert not (tmp_path / "x.txt").exists()
    assert not (tmp_path / ".x.txt.part").exists()


# The stream


async def test_client_events_snapshot_then_events(
    manager: JobManager, converter: Controlled
) -> None:
    """The stream starts with a snapshot, then the job's events, in order."""
    app = create_app(manager, converter=converter)
    async with (
        serve(app) as live,
        client_of(live) as client,
        client.events() as stream,
    ):
        first = await take(stream)
        assert first["type"] == "snapshot"
        assert first["jobs"] == []
        assert stream.connection.status is ConnectionStatus.LIVE

        job = await client.create_job(["a.pdf"])
        await converter.wait_started("a.pdf")
        converter.finish("a.pdf")
        messages = await take_until(stream, "job.completed")

    assert lifecycle([m["type"] for m in messages]) == [
        "job.created",
        "job.started",
        "job.document_converted",
        "job.completed",
    ]
    assert stream.state == {job["job_id"]: messages[-1]["job"]}
    assert stream.cursor == messages[-1]["cursor"]
    assert stream.connection.status is ConnectionStatus.CLOSED


async def test_client_events_jobs_filter_follows_only_those(
    manager: JobManager, converter: Controlled
) -> None:
    """``jobs=`` limits the snapshot and the events to the listed jobs."""
    app = create_app(manager, converter=converter)
    async with serve(app) as live, client_of(live) as client:
        first = await client.create_job(["a.pdf"])
        second = await client.create_job(["b.pdf"])
        async with client.events(jobs=[second["job_id"]]) as stream:
            start = await take(stream)
            await converter.wait_started("a.pdf")
            converter.finish("a.pdf")
            await converter.wait_started("b.pdf")
            converter.finish("b.pdf")
            messages = await take_until(stream, "job.completed")

    assert [job["job_id"] for job in start["jobs"]] == [second["job_id"]]
    assert {m["job_id"] for m in messages} == {second["job_id"]}
    assert first["job_id"] not in stream.state


async def test_client_events_resume_after_a_drop_without_gaps_or_duplicates(
    manager: JobManager, converter: Controlled, recorder: Recorder
) -> None:
    """A connection lost mid-job reconnects, resumes, and misses nothing."""
    pacer = Pacer(held=True)
    app = create_app(manager, converter=converter)
    async with (
        serve(app) as live,
        client_of(live) as client,
        client.events(sleep=pacer) as stream,
    ):
        reader = Collector(stream)
        await reader.wait_for("snapshot")
        job_id = (await client.create_job(["a.pdf", "b.pdf"]))["job_id"]
        await converter.wait_started("a.pdf")
        await reader.wait_for("job.started")

        # The server's end of the socket goes without a close frame; while
        # the client waits to reconnect, the job moves on.
        for connection in list(live.server.server_state.connections):
            if isinstance(connection, WebSocketsSansIOProtocol):
                connection.transport.abort()
        await pacer.asleep()
        assert stream.connection.status is ConnectionStatus.RECONNECTING
        converter.callbacks["a.pdf"](0.5)
        converter.finish("a.pdf")
        await recorder.wait_type("job.document_converted", job_id)

        pacer.release()
        await reader.wait_for("resumed")
        await converter.wait_started("b.pdf")
        converter.finish("b.pdf")
        await reader.wait_for("job.completed")
        await reader.aclose()

    received = reader.messages
    assert pacer.delays and pacer.delays[0] <= RECONNECT_BACKOFF.initial
    assert [m["type"] for m in received if "job_id" not in m] == [
        "snapshot",
        "resumed",
    ]
    events = [m for m in received if "job_id" in m]
    assert seqs(events) == sorted(set(seqs(events)))
    assert lifecycle([m["type"] for m in events]) == lifecycle(recorder.types())
    assert "job.progress" in [m["type"] for m in events]


async def test_client_events_lagging_client_reconnects_at_once(
    manager: JobManager, converter: Controlled, recorder: Recorder
) -> None:
    """Closed 1013 for lagging, the client resumes without waiting."""
    pacer = Pacer()
    app = create_app(manager, converter=converter, queue_size=2, hard_limit=4)
    async with (
        serve(app) as live,
        client_of(live) as client,
        client.events(sleep=pacer) as stream,
    ):
        assert client.session_id is not None
        await take(stream)

        # The server's socket stops taking writes, as when its peer stops
        # reading and the buffers fill; the events then overflow the queue.
        (protocol,) = [
            c for c in live.server.server_state.connections if hasattr(c, "writable")
        ]
        protocol.pause_writing()
        for _ in range(8):
            manager.create_job(client.session_id, ["a.pdf"])
        protocol.resume_writing()

        # The one message the socket had taken when it stalled arrives, then
        # the 1013, then the client's resume replays the rest.
        messages = []
        while sum(m["type"] == "job.created" for m in messages) < 8:
            messages.append(await take(stream))

    (resumed,) = [m for m in messages if m["type"] == "resumed"]
    before = messages.index(resumed)
    created = [m for m in messages if m["type"] == "job.created"]
    assert live.streamer.hub.statistics().evicted == 1
    assert pacer.delays == []
    assert before <= 1
    assert resumed == {
        "type": "resumed",
        "cursor": resumed["cursor"],
        "replayed": 8 - before,
    }
    assert [m["job_id"] for m in created] == [e.job_id for e in recorder.events]


async def test_client_events_reset_after_a_restart_replaces_state(
    make_manager: Callable[..., JobManager], converter: Controlled
) -> None:
    """A new server process answers the old cursor with a reset snapshot.

    The snapshot holds the jobs the new process read back from the store,
    and those it has since created.
    """
    pacer = Pacer(held=True)
    states: list[ConnectionState] = []
    first = make_manager(clock=SystemClock(), memory_required_gb=1.0)
    async with serve(create_app(first, converter=converter, secret=SECRET)) as old:
        port = old.port
        client = StreamerClient(old.url)
        await client.create_session()
        assert client.session_id is not None
        before = await client.create_job(["a.pdf"])
        stream = client.events(sleep=pacer, on_connection=states.append)
        reader = Collector(stream)
        start = await reader.wait_for("snapshot")
        assert list(stream.state) == [before["job_id"]]
        old.server.should_exit = True
        await pacer.asleep()

    second = make_manager(clock=SystemClock(), memory_required_gb=1.0)
    app = create_app(second, converter=converter, secret=SECRET)
    async with serve_on(app, port) as new:
        after = second.create_job(client.session_id, ["b.pdf"])
        pacer.release()
        reset = await reader.wait(lambda message: message.get("reset") is True)
        await reader.aclose()
        await client.aclose()
        assert new.port == port

    assert start["reset"] is False
    assert reset["type"] == "snapshot" and reset["reset"] is True
    # The job of the earlier process was stored, and the new one took it up.
    assert sorted(stream.state) == sorted([before["job_id"], after])
    assert [s.reason for s in states if s.status is ConnectionStatus.RECONNECTING] == [
        "1012"
    ]


@contextlib.asynccontextmanager
async def serve_on(app: Starlette, port: int) -> AsyncIterator[Live]:
    """Serve ``app`` on a given port, such as one a stopped server left."""
    from streamer.runner import StreamerServer, server_config

    config = server_config(app, host="127.0.0.1", port=port, log_level="warning")
    server = StreamerServer(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(TIMEOUT):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            yield Live(app, server, port, http)
    finally:
        server.should_exit = True
        async with asyncio.timeout(TIMEOUT):
            await task


@pytest.mark.parametrize(
    ("token", "session", "expected"),
    [
        ("st1.forged.token", None, (401, "token_invalid")),
        (mint_token(SECRET, "someone-else"), None, (403, "token_wrong_session")),
        (mint_token(SECRET, "x"), "bad.id", (404, "session_not_found")),
    ],
)
async def test_client_events_refusal_raises_without_retry(
    manager: JobManager,
    converter: Controlled,
    token: str,
    session: str | None,
    expected: tuple[int, str],
) -> None:
    """A refused handshake raises ClientError at once, and is not retried."""
    pacer = Pacer()
    states: list[ConnectionState] = []
    async with serve(create_app(manager, converter=converter, secret=SECRET)) as live:
        client = StreamerClient(live.url, token=token, session_id="mine")
        stream = client.events(session, sleep=pacer, on_connection=states.append)
        with pytest.raises(ClientError) as refused:
            await take(stream)
        await client.aclose()

    assert (refused.value.status, refused.value.code) == expected
    assert pacer.delays == []
    assert [s.status for s in states] == [
        ConnectionStatus.CONNECTING,
        ConnectionStatus.CLOSED,
    ]


async def test_client_events_backoff_grows_with_jitter() -> None:
    """Each failed attempt waits twice as long up to 30 s, less a random share."""
    pacer = Pacer(limit=7)
    draws = [0.0, 1.0, 0.5, 0.25, 0.75, 0.1, 0.9]
    states: list[ConnectionState] = []
    client = StreamerClient(f"http://127.0.0.1:{free_port()}", session_id="s")
    stream = client.events(sleep=pacer, rng=Steady(*draws), on_connection=states.append)
    with pytest.raises(Enough):
        await take(stream)
    await client.aclose()

    bases = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert pacer.delays == [
        b * (1 - 0.5 * r) for b, r in zip(bases, draws, strict=True)
    ]
    waiting = [s for s in states if s.status is ConnectionStatus.RECONNECTING]
    assert [s.retry_in for s in waiting] == pacer.delays
    assert [s.attempt for s in waiting] == list(range(1, 8))
    assert states[-1].status is ConnectionStatus.CLOSED


def closing_app(*codes: int) -> Starlette:
    """An app whose stream accepts, sends a snapshot, and closes with each code."""
    remaining = list(codes)

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json(
            {"type": "snapshot", "cursor": f"{EPOCH}-0", "reset": False, "jobs": []}
        )
        await websocket.close(remaining.pop(0))

    return Starlette(routes=[WebSocketRoute("/api/sessions/{sid}/ws", endpoint)])


@pytest.mark.parametrize("code", [1003, 1008, 1009])
async def test_client_events_close_for_a_client_fault_stops(code: int) -> None:
    """Closed for a fault of its own, the client stops instead of retrying."""
    pacer = Pacer()
    async with serve(closing_app(code)) as live:
        client = StreamerClient(live.url, session_id="s", token="t")
        stream = client.events(sleep=pacer)
        await take(stream)
        with pytest.raises(ClientError) as closed:
            await take(stream)
        await client.aclose()

    assert closed.value.close_code == code
    assert pacer.delays == []


async def test_client_events_retry_after_restart_and_server_error() -> None:
    """1012 and 1011 are retried with backoff; 1013 right away."""
    pacer = Pacer(limit=3)
    async with serve(closing_app(1012, 1013, 1011, 1000)) as live:
        client = StreamerClient(live.url, session_id="s", token="t")
        stream = client.events(sleep=pacer, rng=Steady(0.0, 0.0, 0.0))
        starts = [await take(stream) for _ in range(4)]
        with pytest.raises(Enough):
            await take(stream)
        await client.aclose()

    assert [m["type"] for m in starts] == ["snapshot"] * 4
    # 1013 came after a live connection reset the count: no wait at all.
    assert pacer.delays == [0.5, 0.5, 0.5]
