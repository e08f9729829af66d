"""Tests of the Server-Sent Events endpoint, against a real server on port 0.

The stream carries the WebSocket's messages one way, with the cursor as each
frame's ``id``; these tests pin down its framing, resume through
``Last-Event-ID`` and ``?cursor=``, the job filter, refusals, heartbeats,
lagging and vanished readers, and the end of the stream at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from streamer import JobEvent, JobManager, SystemClock
from streamer.app import create_app
from streamer.hub import parse_cursor
from streamer.tokens import mint_token

from .conftest import TIMEOUT, Recorder
from .helpers import Controlled
from .live import Live, serve

SECRET = b"test secret of the event stream tests"


@pytest.fixture
def converter() -> Controlled:
    return Controlled()


@pytest.fixture
def manager(make_manager: Callable[..., JobManager]) -> JobManager:
    # The real clock, because the server and its sockets run on it; memory is
    # the probe's plenty, and each document asks for little of it.
    return make_manager(clock=SystemClock(), memory_required_gb=1.0)


def events_path(
    session_id: str,
    token: str | None,
    *,
    cursor: str | None = None,
    jobs: str | None = None,
) -> str:
    query = {"token": token, "cursor": cursor, "jobs": jobs}
    given = {name: value for name, value in query.items() if value is not None}
    path = f"/api/sessions/{session_id}/events"
    return path + "?" + urlencode(given) if given else path


class EventStream:
    """Reads a ``text/event-stream`` response one frame at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def frame(self) -> list[str]:
        """The lines of the next frame, comments included; [] once it ended."""
        lines: list[str] = []
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    line = await anext(self._lines)
                except StopAsyncIteration:
                    return lines
                if line:
                    lines.append(line)
                elif lines:
                    return lines

    async def message(self) -> tuple[str | None, dict[str, Any]]:
        """The id and the decoded data of the next frame that is no comment."""
        while True:
            lines = await self.frame()
            assert lines, "the stream ended"
            if not all(line.startswith(":") for line in lines):
                return parse_frame(lines)

    async def until(
        self, kind: str, job_id: str | None = None
    ) -> list[tuple[str | None, dict[str, Any]]]:
        """Messages up to and including the first of type ``kind`` (of ``job_id``)."""
        messages = []
        while True:
            event_id, message = await self.message()
            messages.append((event_id, message))
            if message["type"] == kind and job_id in (None, message.get("job_id")):
                return messages


def parse_frame(lines: list[str]) -> tuple[str | None, dict[str, Any]]:
    """A frame's id and data; it may hold nothing else, and one line of data."""
    fields = [line.split(": ", 1) for line in lines]
    names = [name for name, _ in fields]
    assert names in (["id", "data"], ["data"]), lines
    values = dict(fields)
    message = json.loads(values["data"])
    assert isinstance(message, dict)
    return values.get("id"), message


@contextlib.asynccontextmanager
async def event_stream(
    live: Live, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[EventStream]:
    """An open stream, read frame by frame, closed when the block ends."""
    async with live.http.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        yield EventStream(response)


async def until(predicate: Callable[[], bool]) -> None:
    """Return once ``predicate()`` holds.

    The hub announces nothing when a subscriber leaves, so its statistics
    are polled, in steps short next to the time the server takes.
    """
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.005)


def seq(cursor: str | None) -> int:
    assert cursor is not None
    return parse_cursor(cursor).seq


def on_wire(event: JobEvent, cursor: str | None) -> dict[str, Any]:
    """An engine event as a client decodes it, under the given cursor."""
    decoded: dict[str, Any] = json.loads(json.dumps(event.to_dict()))
    return {**decoded, "cursor": cursor}


async def start_job(live: Live, session_id: str, token: str, *documents: str) -> str:
    response = await live.http.post(
        f"/api/sessions/{session_id}/jobs",
        json={"document_ids": list(documents)},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def finish(converter: Controlled, *documents: str) -> None:
    """Let each document finish once the converter has started it."""
    for document_id in documents:
        await converter.wait_started(document_id, TIMEOUT)
        converter.finish(document_id)


async def small_buffer_request(
    port: int, path: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a GET by hand over a socket with a tiny receive buffer.

    A stream to a reader that does not read then stalls after a few frames,
    instead of after the megabytes that kernel buffers can grow to.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Set before connecting, so the window the server sees is small from the
    # start and the kernel does not grow it.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    return reader, writer


async def read_chunked_body(reader: asyncio.StreamReader) -> list[list[str]]:
    """Read a chunked response to its end; return its frames' lines."""
    async with asyncio.timeout(TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"\r\ntransfer-encoding: chunked\r\n" in head.lower(), head
        body = bytearray()
        while size := int(await reader.readuntil(b"\r\n"), 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readexactly(2)

    frames = body.decode().split("\n\n")
    assert frames.pop() == ""
    return [frame.split("\n") for frame in frames]


def throttle_server_sends(live: Live) -> None:
    """Give the server's sockets accepted from now on a tiny send buffer."""
    # Accepted sockets inherit the listener's buffer sizes.
    listener = live.server.servers[0].sockets[0]
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


# The stream and its frames


async def test_sse_stream_opens_with_snapshot(
    manager: JobManager, converter: Controlled
) -> None:
    """The response is an event stream whose first frame is the snapshot."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        job_id = manager.create_job(session_id, ["a"])
        async with event_stream(live, events_path(session_id, token)) as stream:
            headers = stream.response.headers
            event_id, snapshot = await stream.message()

    assert headers["content-type"].split(";")[0] == "text/event-stream"
    assert headers["cache-control"] == "no-store"
    assert snapshot["type"] == "snapshot"
    assert snapshot["reset"] is False
    assert event_id == snapshot["cursor"]
    assert parse_cursor(snapshot["cursor"]).epoch == live.streamer.hub.cursor_prefix(
        session_id
    )
    assert [job["job_id"] for job in snapshot["jobs"]] == [job_id]


async def test_sse_event_ids_are_the_cursors(
    manager: JobManager, converter: Controlled, recorder: Recorder
) -> None:
    """Every event frame's id is its cursor, and its data the engine's event."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        async with event_stream(live, events_path(session_id, token)) as stream:
            first_id, _ = await stream.message()
            await start_job(live, session_id, token, "a", "b")
            frames = await stream.until("job.progress")
            await finish(converter, "a")
            frames += await stream.until("job.progress")
            await finish(converter, "b")
            frames += await stream.until("job.completed")

    assert [event_id for event_id, _ in frames] == [m["cursor"] for _, m in frames]
    assert [seq(event_id) for event_id, _ in frames] == [
        seq(first_id) + n for n in range(1, len(frames) + 1)
    ]
    assert [message for _, message in frames] == [
        on_wire(event, event_id)
        for event, (event_id, _) in zip(recorder.events, frames, strict=True)
    ]


# Resume and reset


async def test_sse_last_event_id_resumes_exactly_what_was_missed(
    manager: JobManager, converter: Controlled, recorder: Recorder
) -> None:
    """Reconnecting with Last-Event-ID gets resumed, then only the missed events."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        path = events_path(session_id, token)
        async with event_stream(live, path) as stream:
            await stream.message()
            await start_job(live, session_id, token, "a", "b")
            seen = await stream.until("job.started")
        last = seen[-1][0]
        assert last is not None

        await finish(converter, "a")
        await recorder.wait_for(
            lambda e: e.type == "job.progress" and e.job["current_file"] == "b"
        )
        missed = recorder.events[len(seen) :]

        async with event_stream(live, path, {"Last-Event-ID": last}) as stream:
            resumed = await stream.message()
            replayed = [await stream.message() for _ in missed]
            await finish(converter, "b")
            after = await stream.until("job.completed")

    assert resumed == (
        last,
        {"type": "resumed", "cursor": last, "replayed": len(missed)},
    )
    assert [message for _, message in replayed] == [
        on_wire(event, f"{live.streamer.hub.cursor_prefix(session_id)}-{seq(last) + n}")
        for n, event in enumerate(missed, start=1)
    ]
    assert [event_id for event_id, _ in replayed + after] == [
        f"{live.streamer.hub.cursor_prefix(session_id)}-{seq(last) + n}"
        for n in range(1, len(replayed) + len(after) + 1)
    ]


async def test_sse_cursor_query_resumes(
    manager: JobManager, converter: Controlled
) -> None:
    """?cursor= resumes a stream as Last-Event-ID does."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        async with event_stream(live, events_path(session_id, token)) as stream:
            cursor, _ = await stream.message()
        job_id = manager.create_job(session_id, ["a"])

        path = events_path(session_id, token, cursor=cursor)
        async with event_stream(live, path) as stream:
            resumed = await stream.message()
            event_id, created = await stream.message()

    assert resumed == (cursor, {"type": "resumed", "cursor": cursor, "replayed": 1})
    assert (created["type"], created["job_id"]) == ("job.created", job_id)
    assert event_id == created["cursor"]


@pytest.mark.parametrize(
    ("header", "query", "first"),
    [("good", "garbage", "resumed"), ("garbage", "good", "snapshot")],
    ids=["good-header", "bad-header"],
)
async def test_sse_last_event_id_wins_over_cursor_query(
    manager: JobManager, converter: Controlled, header: str, query: str, first: str
) -> None:
    """When both are given, Last-Event-ID decides where the stream starts."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        async with event_stream(live, events_path(session_id, token)) as stream:
            good, _ = await stream.message()
        assert good is not None
        given = {"good": good, "garbage": "garbage"}

        path = events_path(session_id, token, cursor=given[query])
        headers = {"Last-Event-ID": given[header]}
        async with event_stream(live, path, headers) as stream:
            _, message = await stream.message()

    assert message["type"] == first


@pytest.mark.parametrize(
    "cursor",
    ["garbage", "{epoch}-1000000", "0123456789abcdef-0", "{epoch}-0" + "0" * 200],
    ids=["garbage", "ahead", "unknown-epoch", "long"],
)
async def test_sse_unusable_last_event_id_resets(
    manager: JobManager, converter: Controlled, cursor: str
) -> None:
    """A Last-Event-ID the hub cannot resume from gets a reset snapshot."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        job_id = manager.create_job(session_id, ["a"])
        headers = {
            "Last-Event-ID": cursor.format(
                epoch=live.streamer.hub.cursor_prefix(session_id)
            )
        }
        path = events_path(session_id, token)
        async with event_stream(live, path, headers) as stream:
            event_id, snapshot = await stream.message()

    assert snapshot["type"] == "snapshot"
    assert snapshot["reset"] is True
    assert event_id == snapshot["cursor"]
    assert [job["job_id"] for job in snapshot["jobs"]] == [job_id]


# The job filter and isolation


async def test_sse_jobs_filter_follows_only_the_listed_jobs(
    manager: JobManager, converter: Controlled, recorder: Recorder
) -> None:
    """With ?jobs= the snapshot and the events cover those jobs and no others."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        watched, unwatched = (manager.create_job(session_id, [d]) for d in "ab")
        created = len(recorder.events)

        path = events_path(session_id, token, jobs=watched)
        async with event_stream(live, path) as stream:
            _, snapshot = await stream.message()
            await manager.start_job(unwatched, converter)
            await manager.start_job(watched, converter)

            # The unwatched job ends first, so its events would have come
            # before the watched job's last one.
            await finish(converter, "b")
            await recorder.wait_type("job.completed", unwatched)
            await finish(converter, "a")
            frames = await stream.until("job.completed", watched)

    assert [job["job_id"] for job in snapshot["jobs"]] == [watched]
    expected = [e for e in recorder.events[created:] if e.job_id == watched]
    assert [(m["type"], m["job_id"]) for _, m in frames] == [
        (e.type, e.job_id) for e in expected
    ]


async def test_sse_sessions_see_only_their_own_events(
    manager: JobManager, converter: Controlled
) -> None:
    """A stream of one session never carries another session's jobs or events."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        other_id, _ = await live.session()
        manager.create_job(other_id, ["x"])
        async with event_stream(live, events_path(session_id, token)) as stream:
            _, snapshot = await stream.message()
            other_job = manager.create_job(other_id, ["y"])
            await manager.start_job(other_job, converter)
            await finish(converter, "y")
            async with asyncio.timeout(TIMEOUT):
                await manager.wait_job(other_job)

            # Had any of the other session's events reached this stream,
            # they would be queued ahead of its own job's first event.
            job_id = manager.create_job(session_id, ["z"])
            _, first = await stream.message()

    assert snapshot["jobs"] == []
    assert (first["type"], first["job_id"]) == ("job.created", job_id)


# Refusals


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("missing-token", 401, "token_missing"),
        ("forged-token", 401, "token_invalid"),
        ("expired-token", 401, "token_invalid"),
        ("other-session-token", 403, "token_wrong_session"),
        ("empty-jobs", 400, "invalid_jobs"),
        ("too-many-jobs", 400, "invalid_jobs"),
        ("long-job-id", 400, "invalid_jobs"),
        ("bad-session-id", 404, "session_not_found"),
    ],
)
async def test_sse_refused_with_http_error(
    manager: JobManager, converter: Controlled, case: str, status: int, code: str
) -> None:
    """A stream that may not open is refused with the API's error body."""
    app = create_app(manager, converter=converter, secret=SECRET)
    async with serve(app) as live:
        session_id, token = await live.session()
        _, other_token = await live.session()
        past = time.time() - 3600
        requests: dict[str, dict[str, Any]] = {
            "missing-token": {"token": None},
            "forged-token": {"token": mint_token(b"not the secret", session_id)},
            "expired-token": {
                "token": mint_token(SECRET, session_id, ttl=60, now=past)
            },
            "other-session-token": {"token": other_token},
            "empty-jobs": {"jobs": " , "},
            "too-many-jobs": {"jobs": ",".join(f"job-{n}" for n in range(101))},
            "long-job-id": {"jobs": "j" * 65},
            "bad-session-id": {"session_id": "ses.bad!"},
        }
        request = {"session_id": session_id, "token": token, **requests[case]}
        response = await live.http.get(events_path(**request))

        assert live.streamer.hub.statistics().connections == 0

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code


async def test_sse_subscribers_past_the_limit_are_refused_429(
    manager: JobManager, converter: Controlled
) -> None:
    """A session already at max_subscribers_per_session refuses one more stream."""
    app = create_app(manager, converter=converter, max_subscribers_per_session=1)
    async with serve(app) as live:
        session_id, token = await live.session()
        path = events_path(session_id, token)
        async with event_stream(live, path) as stream:
            await stream.message()
            response = await live.http.get(path)

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "too_many_subscribers"


# Heartbeats, readers that leave, lag or vanish


async def test_sse_idle_stream_sends_comment_lines(
    manager: JobManager, converter: Controlled
) -> None:
    """A stream with nothing to say sends comment frames every sse_heartbeat."""
    app = create_app(manager, converter=converter, sse_heartbeat=0.02)
    async with serve(app) as live:
        session_id, token = await live.session()
        async with event_stream(live, events_path(session_id, token)) as stream:
            await stream.message()
            beats = [await stream.frame() for _ in range(2)]
            job_id = manager.create_job(session_id, ["a"])
            _, created = await stream.message()

    assert beats == [[": keep-alive"], [": keep-alive"]]
    assert created["job_id"] == job_id


async def test_sse_closed_stream_frees_its_subscription(
    manager: JobManager, converter: Controlled
) -> None:
    """A reader that closes its stream leaves the hub without it."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        async with event_stream(live, events_path(session_id, token)) as stream:
            await stream.message()
            assert live.streamer.hub.statistics().connections == 1

        await until(lambda: live.streamer.hub.statistics().connections == 0)


#: Events for the lagging reader tests: several times what the buffers hold.
SLOW_EVENTS = 1000


async def test_sse_lagging_reader_is_ended_and_resumes(
    manager: JobManager, converter: Controlled, recorder: Recorder
) -> None:
    """A reader past hard_limit gets a closed frame, then resumes from its last id."""
    app = create_app(
        manager,
        converter=converter,
        queue_size=8,
        hard_limit=32,
        replay_size=SLOW_EVENTS,
    )
    async with serve(app) as live:
        session_id, token = await live.session()
        path = events_path(session_id, token)
        throttle_server_sends(live)
        async with event_stream(live, path) as fast:
            await fast.message()
            reader, writer = await small_buffer_request(live.port, path)
            try:
                await until(lambda: live.streamer.hub.statistics().connections == 2)

                # The fast reader reads each batch before the next is
                # published, so only the one that does not read falls behind.
                for _ in range(0, SLOW_EVENTS, 4):
                    job_ids = [manager.create_job(session_id, ["a"]) for _ in "abcd"]
                    for job_id in job_ids:
                        assert (await fast.message())[1]["job_id"] == job_id
                assert live.streamer.hub.statistics().evicted == 1
                frames = await read_chunked_body(reader)
            finally:
                writer.close()

        messages = [parse_frame(lines) for lines in frames]
        assert messages[-1] == (None, {"type": "closed", "reason": "lagging"})
        assert messages[0][1]["type"] == "snapshot"
        last = messages[-2][0]
        headers = {"Last-Event-ID": str(last)}
        async with event_stream(live, path, headers) as again:
            _, resumed = await again.message()
            rest = [await again.message() for _ in range(resumed["replayed"])]

    assert resumed["type"] == "resumed"
    events = messages[1:-1] + rest
    assert all(event_id == m["cursor"] for event_id, m in events)
    assert [m["job_id"] for _, m in events] == [e.job_id for e in recorder.events]


async def test_sse_reader_vanishing_mid_write_frees_its_subscription(
    manager: JobManager, converter: Controlled
) -> None:
    """A reader reset while the server waits to write to it leaves the hub."""
    app = create_app(manager, converter=converter, queue_size=8, hard_limit=4096)
    async with serve(app) as live:
        session_id, token = await live.session()
        path = events_path(session_id, token)
        throttle_server_sends(live)
        async with event_stream(live, path) as fast:
            await fast.message()
            _, writer = await small_buffer_request(live.port, path)
            await until(lambda: live.streamer.hub.statistics().connections == 2)

            # Once the silent reader's queue backs up, the server is stuck in
            # a write to it, with the stream suspended between two frames.
            for _ in range(SLOW_EVENTS // 4):
                job_ids = [manager.create_job(session_id, ["a"]) for _ in "abcd"]
                for job_id in job_ids:
                    assert (await fast.message())[1]["job_id"] == job_id
                if live.streamer.hub.statistics().backlogged:
                    break
            assert live.streamer.hub.statistics().backlogged == 1

            writer.transport.abort()
            await until(lambda: live.streamer.hub.statistics().connections == 1)


# Shutdown


async def test_sse_host_close_ends_the_stream(
    manager: JobManager, converter: Controlled
) -> None:
    """Server.aclose() ends every stream with a closed frame; new ones get 503."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        path = events_path(session_id, token)
        async with event_stream(live, path) as stream:
            await stream.message()
            await live.streamer.aclose()
            closed = await stream.message()
            end = await stream.frame()
        refused = await live.http.get(path)

    assert closed == (None, {"type": "closed", "reason": "shutdown"})
    assert end == []
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "shutting_down"


async def test_sse_server_shutdown_ends_the_stream(
    manager: JobManager, converter: Controlled
) -> None:
    """Stopping the server ends open event streams instead of waiting on them."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        async with event_stream(live, events_path(session_id, token)) as stream:
            await stream.message()
            live.server.should_exit = True
            async with asyncio.timeout(TIMEOUT):
                closed = await stream.message()
    assert closed == (None, {"type": "closed", "reason": "shutdown"})
