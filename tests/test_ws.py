"""Tests of the WebSocket endpoint, against a real server on port 0.

They pin down the wire contract: the first message, resume and reset, the
order and shape of events, the job filter, what the client may send, the
refusals made before the handshake is accepted, isolation between sessions,
slow and vanished clients, and shutdown.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.websockets.websockets_sansio_impl import (
    WebSocketsSansIOProtocol,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import Event
from websockets.typing import Origin
from websockets.uri import parse_uri

from streamer import JobEvent, JobManager, SystemClock
from streamer.app import create_app
from streamer.events import JobCompleted, JobProgress, JobStarted
from streamer.hub import parse_cursor
from streamer.runner import StreamerWebSocketProtocol, text_frame
from streamer.tokens import mint_token
from streamer.ws import _Rest

from .conftest import TIMEOUT, Recorder
from .helpers import Controlled
from .live import Live, serve

SECRET = b"test secret of the websocket tests"

#: The engine's events for one job of one document, progress left out.
LIFECYCLE = ["job.created", "job.started", "job.document_converted", "job.completed"]


@pytest.fixture
def converter() -> Controlled:
    return Controlled()


@pytest.fixture
def manager(make_manager: Callable[..., JobManager]) -> JobManager:
    # The real clock, because the server and its sockets run on it; memory is
    # the probe's plenty, and each document asks for little of it, so no job
    # ever waits for memory.
    return make_manager(clock=SystemClock(), memory_required_gb=1.0)


#: uvicorn's WebSocket protocols a delivery test runs under: streamer's own,
#: which writes frames itself, and two whose sends publish drives through ASGI.
PROTOCOLS: dict[str, Any] = {
    "frames": "websockets-sansio",
    "sansio-asgi": WebSocketsSansIOProtocol,
    "wsproto-asgi": "wsproto",
}


@pytest.fixture(params=list(PROTOCOLS))
def protocol(request: pytest.FixtureRequest) -> Any:
    """The ``ws`` option of uvicorn for each of PROTOCOLS."""
    return PROTOCOLS[request.param]


def ws(
    live: Live,
    session_id: str,
    token: str | None,
    *,
    cursor: str | None = None,
    jobs: str | None = None,
    **options: Any,
) -> connect:
    """A client of a session's stream; await it or use it with ``async with``."""
    query = {"token": token, "cursor": cursor, "jobs": jobs}
    path = f"/api/sessions/{session_id}/ws"
    given = {name: value for name, value in query.items() if value is not None}
    if given:
        path += "?" + urlencode(given)
    options.setdefault("open_timeout", TIMEOUT)
    options.setdefault("close_timeout", TIMEOUT)
    return connect(live.ws_url + path, proxy=None, **options)


async def receive(client: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        data = await client.recv()
    message = json.loads(data)
    assert isinstance(message, dict)
    return message


async def receive_until(
    client: ClientConnection, kind: str, job_id: str | None = None
) -> list[dict[str, Any]]:
    """Messages up to and including the first of type ``kind`` (of ``job_id``)."""
    messages = []
    while True:
        message = await receive(client)
        messages.append(message)
        if message["type"] == kind and job_id in (None, message.get("job_id")):
            return messages


async def close_code(client: ClientConnection) -> int:
    """Read until the server closes the connection; return its close code."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(TIMEOUT):
            while True:
                await client.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def refusal(connecting: connect) -> tuple[int, str]:
    """The HTTP status and error code with which a handshake is refused."""
    with pytest.raises(InvalidStatus) as refused:
        await connecting
    response = refused.value.response
    assert response.headers["Content-Type"] == "application/json"
    code: str = json.loads(response.body)["error"]["code"]
    return response.status_code, code


async def until(predicate: Callable[[], bool]) -> None:
    """Return once ``predicate()`` holds.

    The hub announces nothing when a subscriber leaves, so its statistics
    are polled, in steps short next to the time the server takes.
    """
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.005)


def seq(message: dict[str, Any]) -> int:
    return parse_cursor(message["cursor"]).seq


def on_wire(event: JobEvent, cursor: str) -> dict[str, Any]:
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


async def small_buffer_socket(port: int) -> socket.socket:
    """A connected socket with a tiny receive buffer, to stall a peer quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Set before connecting, so the window the peer sees is small from the
    # start and the kernel does not grow it.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


# The first message


async def test_ws_first_message_is_snapshot_of_session(
    manager: JobManager, converter: Controlled
) -> None:
    """Without a cursor the first message is a snapshot of the session's jobs."""
    app = create_app(manager, converter=converter)
    async with serve(app) as live:
        session_id, token = await live.session()
        job_id = await start_job(live, session_id, token, "a")
        await converter.wait_started("a", TIMEOUT)

        async with ws(live, session_id, token) as client:
            snapshot = await receive(client)

        assert list(snapshot) == ["type", "cursor", "reset", "jobs"]
        assert snapshot["type"] == "snapshot"
        assert snapshot["reset"] is False
        assert parse_cursor(
            snapshot["cursor"]
        ).epoch == live.streamer.hub.cursor_prefix(session_id)
        assert [job["job_id"] for job in snapshot["jobs"]] == [job_id]
        assert snapshot["jobs"][0]["status"] == "running"


async def test_ws_events_follow_in_order_with_the_job(
    manager: JobManager, converter: Controlled, recorder: Recorder
) -> None:
    """Events arrive in order, numbered one by one, each as the engine sent it."""
    app = create_app(manager, converter=converter)
    async with serve(app) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            snapshot = await receive(client)
            job_id = await start_job(live, session_id, token, "a", "b")

            # One document at a time, each after the client saw it start, so
            # no progress event can stand in for an earlier one.
            events = await receive_until(client, "job.progress")
            await finish(converter, "a")
            events += await receive_until(client, "job.progress")
            await finish(converter, "b")
            events += await receive_until(client, "job.completed")

    for event in events:
        assert list(event)[:5] == ["type", "cursor", "job_id", "ts", "job"]
        assert event["job_id"] == event["job"]["job_id"] == job_id
    assert [seq(event) for event in events] == [
        seq(snapshot) + n for n in range(1, len(events) + 1)
    ]
    assert events == [
        on_wire(event, message["cursor"])
        for event, message in zip(recorder.events, events, strict=True)
    ]


# Resume and reset


async def test_ws_resume_mid_job_replays_exactly_what_was_missed(
    manager: JobManager, converter: Controlled, recorder: Recorder
) -> None:
    """A reconnect with the last cursor gets resumed, then only the missed events."""
    app = create_app(manager, converter=converter)
    async with serve(app) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            snapshot = await receive(client)
            await start_job(live, session_id, token, "a", "b", "c")
            seen = await receive_until(client, "job.started")
        last = seen[-1]["cursor"]

        # While nobody listens the job moves on by two documents.
        await finish(converter, "a", "b")
        await recorder.wait_for(
            lambda e: e.type == "job.progress" and e.job["current_file"] == "c"
        )
        missed = recorder.events[len(seen) :]

        async with ws(live, session_id, token, cursor=last) as client:
            resumed = await receive(client)
            replayed = [await receive(client) for _ in missed]
            await finish(converter, "c")
            live_events = await receive_until(client, "job.completed")

    assert resumed == {"type": "resumed", "cursor": last, "replayed": len(missed)}
    first = seq(snapshot) + len(seen) + 1
    assert replayed == [
        on_wire(event, f"{live.streamer.hub.cursor_prefix(session_id)}-{first + n}")
        for n, event in enumerate(missed)
    ]

    # The live stream carries on right after the replay: no gap, no repeat.
    assert [seq(event) for event in live_events] == [
        first + len(missed) + n for n in range(len(live_events))
    ]
    assert [event["type"] for event in live_events] == [
        "job.document_converted",
        "job.completed",
    ]


async def test_ws_resume_at_the_edge_of_the_replay_window(
    manager: JobManager, converter: Controlled
) -> None:
    """A cursor exactly replay_size events back still resumes, with all of them."""
    app = create_app(manager, converter=converter, replay_size=5)
    async with serve(app) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            cursor = (await receive(client))["cursor"]
        job_ids = [manager.create_job(session_id, ["a"]) for _ in range(5)]

        async with ws(live, session_id, token, cursor=cursor) as client:
            resumed = await receive(client)
            replayed = [await receive(client) for _ in job_ids]

    assert resumed == {"type": "resumed", "cursor": cursor, "replayed": 5}
    assert [event["job_id"] for event in replayed] == job_ids


async def test_ws_cursor_older_than_the_replay_window_resets(
    manager: JobManager, converter: Controlled
) -> None:
    """A cursor more than replay_size events back gets a reset snapshot."""
    app = create_app(manager, converter=converter, replay_size=5)
    async with serve(app) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            cursor = (await receive(client))["cursor"]
        job_ids = [manager.create_job(session_id, ["a"]) for _ in range(6)]

        async with ws(live, session_id, token, cursor=cursor) as client:
            snapshot = await receive(client)

    assert snapshot["type"] == "snapshot"
    assert snapshot["reset"] is True
    assert seq(snapshot) == parse_cursor(cursor).seq + 6
    assert [job["job_id"] for job in snapshot["jobs"]] == job_ids


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "{epoch}",
        "{epoch}-",
        "{epoch}-01",
        "{epoch}--1",
        "{epoch}-1-2",
        "{epoch}-1000000",
        "0123456789abcdef-1",
        "{epoch}-1" + "0" * 200,
    ],
    ids=[
        "garbage",
        "no-seq",
        "empty-seq",
        "leading-zero",
        "negative",
        "extra-part",
        "ahead",
        "unknown-epoch",
        "long",
    ],
)
async def test_ws_unusable_cursor_resets(
    manager: JobManager, converter: Controlled, cursor: str
) -> None:
    """A cursor the hub cannot resume from gets a reset snapshot, not a refusal."""
    app = create_app(manager, converter=converter)
    async with serve(app) as live:
        session_id, token = await live.session()
        job_id = manager.create_job(session_id, ["a"])
        given = cursor.format(epoch=live.streamer.hub.cursor_prefix(session_id))

        async with ws(live, session_id, token, cursor=given) as client:
            snapshot = await receive(client)

    assert snapshot["type"] == "snapshot"
    assert snapshot["reset"] is True
    assert [job["job_id"] for job in snapshot["jobs"]] == [job_id]


async def test_ws_cursor_of_a_previous_server_resets(
    manager: JobManager,
    converter: Controlled,
    make_manager: Callable[..., JobManager],
    tmp_path: Path,
) -> None:
    """A cursor issued by an earlier server gets a reset snapshot, not a replay."""
    # Data directories of their own, so the later server restores nothing.
    first = create_app(
        manager, converter=converter, secret=SECRET, data_dir=tmp_path / "first"
    )
    async with serve(first) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            await receive(client)
            manager.create_job(session_id, ["a"])
            cursor = (await receive(client))["cursor"]

    # The new server numbers the session's events from 1 again, so the old
    # cursor's number alone would look resumable.
    later = make_manager(clock=SystemClock(), memory_required_gb=1.0)
    second = create_app(
        later, converter=converter, secret=SECRET, data_dir=tmp_path / "second"
    )
    async with serve(second) as live:
        job_ids = [later.create_job(session_id, ["a"]) for _ in range(2)]
        async with ws(live, session_id, token, cursor=cursor) as client:
            snapshot = await receive(client)

    assert parse_cursor(cursor).seq <= seq(snapshot)
    assert snapshot["type"] == "snapshot"
    assert snapshot["reset"] is True
    assert [job["job_id"] for job in snapshot["jobs"]] == job_ids


async def test_ws_cursor_of_another_session_resets(
    manager: JobManager, converter: Controlled
) -> None:
    """A cursor issued to another session gets a reset snapshot, not a replay."""
    app = create_app(manager, converter=converter)
    async with serve(app) as live:
        session_id, token = await live.session()
        other_id, other_token = await live.session()
        async with ws(live, session_id, token) as client:
            await receive(client)
        for _ in range(3):
            manager.create_job(session_id, ["a"])
        async with ws(live, other_id, other_token) as client:
            foreign = (await receive(client))["cursor"]
        for _ in range(2):
            manager.create_job(session_id, ["a"])

        async with ws(live, session_id, token, cursor=foreign) as client:
            first = await receive(client)

    assert first["type"] == "snapshot"
    assert first["reset"] is True


# The job filter


async def test_ws_jobs_filter_follows_only_the_listed_jobs(
    manager: JobManager, converter: Controlled, recorder: Recorder
) -> None:
    """With ?jobs= the snapshot and the events cover those jobs and no others."""
    app = create_app(manager, converter=converter)
    async with serve(app) as live:
        session_id, token = await live.session()
        first, second, third = (manager.create_job(session_id, [d]) for d in "abc")
        wanted = {first, third}
        created = len(recorder.events)

        async with ws(live, session_id, token, jobs=f"{first}, {third}") as client:
            snapshot = await receive(client)
            for job_id in (first, second, third):
                await manager.start_job(job_id, converter)

            # The unwatched job ends first, so its events would have come
            # before the watched jobs' last ones.
            await finish(converter, "b")
            await recorder.wait_type("job.completed", second)
            await finish(converter, "a")
            await recorder.wait_type("job.completed", first)
            await finish(converter, "c")
            events = await receive_until(client, "job.completed", third)

    assert [job["job_id"] for job in snapshot["jobs"]] == [first, third]
    expected = [e for e in recorder.events[created:] if e.job_id in wanted]
    assert [(e["type"], e["job_id"]) for e in events] == [
        (e.type, e.job_id) for e in expected
    ]
    assert [seq(e) for e in events] == sorted({seq(e) for e in events})


# What the client may send


async def test_ws_ping_gets_pong(manager: JobManager, converter: Controlled) -> None:
    """A ping message is answered with a pong message."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            await receive(client)
            await client.send('{"type":"ping"}')
            assert await receive(client) == {"type": "pong"}


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "invalid_json"),
        ('{"type":', "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"kind":"ping"}', "invalid_message"),
        ('{"type":5}', "invalid_message"),
        ('{"type":"subscribe"}', "unknown_type"),
    ],
    ids=["text", "truncated", "array", "no-type", "number-type", "unknown-type"],
)
async def test_ws_bad_message_gets_error_and_stays_open(
    manager: JobManager, converter: Controlled, text: str, code: str
) -> None:
    """A malformed or unknown message gets an error reply; the socket stays open."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            await receive(client)
            await client.send(text)
            error = await receive(client)
            await client.send('{"type":"ping"}')
            pong = await receive(client)

    assert error["type"] == "error"
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert pong == {"type": "pong"}


async def test_ws_binary_frame_closes_1003(
    manager: JobManager, converter: Controlled
) -> None:
    """A binary frame closes the connection with 1003."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            await receive(client)
            await client.send(b'{"type":"ping"}')
            assert await close_code(client) == 1003


def padded_ping(size: int, pad: str = "x") -> str:
    """A ping message of exactly ``size`` bytes once encoded."""
    head, tail = '{"type":"ping","pad":"', '"}'
    width = len(pad.encode())
    count, odd = divmod(size - len(head) - len(tail), width)
    assert not odd
    return head + pad * count + tail


async def test_ws_message_at_the_size_limit_is_answered(
    manager: JobManager, converter: Controlled
) -> None:
    """A message of exactly max_message_bytes is accepted."""
    app = create_app(manager, converter=converter, max_message_bytes=1024)
    async with serve(app) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            await receive(client)
            await client.send(padded_ping(1024))
            assert await receive(client) == {"type": "pong"}


# The two-byte message has far fewer characters than the limit allows bytes:
# only its encoded size tells it apart from an acceptable one.
@pytest.mark.parametrize(
    ("size", "pad"), [(1025, "x"), (1026, "é")], ids=["ascii", "two-byte"]
)
async def test_ws_oversized_message_closes_1009(
    manager: JobManager, converter: Controlled, size: int, pad: str
) -> None:
    """A message over max_message_bytes, counted in bytes, closes with 1009."""
    app = create_app(manager, converter=converter, max_message_bytes=1024)
    async with serve(app) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            await receive(client)
            await client.send(padded_ping(size, pad))
            assert await close_code(client) == 1009


async def test_ws_flood_is_rate_limited_then_closed_1008(
    manager: JobManager, converter: Controlled
) -> None:
    """Past its rate a client is told rate_limited, and closed 1008 if it goes on."""
    # One message every ten seconds, a burst of one: the test is over long
    # before the bucket could grant another.
    app = create_app(manager, converter=converter, client_messages_per_second=0.1)
    async with serve(app) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            await receive(client)
            await client.send('{"type":"ping"}')
            pong = await receive(client)
            await client.send('{"type":"ping"}')
            limited = await receive(client)
            await client.send('{"type":"ping"}')
            code = await close_code(client)

    assert pong == {"type": "pong"}
    assert limited["type"] == "error"
    assert limited["code"] == "rate_limited"
    assert code == 1008


# Refusals before the handshake is accepted


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("missing-token", 401, "token_missing"),
        ("forged-token", 401, "token_invalid"),
        ("expired-token", 401, "token_invalid"),
        ("other-session-token", 403, "token_wrong_session"),
        ("foreign-origin", 403, "origin_refused"),
        ("null-origin", 403, "origin_refused"),
        ("empty-jobs", 400, "invalid_jobs"),
        ("too-many-jobs", 400, "invalid_jobs"),
        ("long-job-id", 400, "invalid_jobs"),
        ("bad-session-id", 404, "session_not_found"),
    ],
)
async def test_ws_refused_before_accept(
    manager: JobManager, converter: Controlled, case: str, status: int, code: str
) -> None:
    """A handshake that may not open is refused with an HTTP error and its body."""
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
            "foreign-origin": {"origin": Origin("http://evil.example")},
            "null-origin": {"origin": Origin("null")},
            "empty-jobs": {"jobs": " , "},
            "too-many-jobs": {"jobs": ",".join(f"job-{n}" for n in range(101))},
            "long-job-id": {"jobs": "j" * 65},
            "bad-session-id": {"session_id": "ses.bad!"},
        }
        request = {"session_id": session_id, "token": token, **requests[case]}

        assert await refusal(ws(live, **request)) == (status, code)
        assert live.streamer.hub.statistics().connections == 0


async def test_ws_token_in_authorization_header_is_accepted(
    manager: JobManager, converter: Controlled
) -> None:
    """A client that is not a browser may send its token as a Bearer header."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        headers = {"Authorization": f"Bearer {token}"}
        async with ws(live, session_id, None, additional_headers=headers) as client:
            assert (await receive(client))["type"] == "snapshot"


async def test_ws_own_origin_is_accepted_by_default(
    manager: JobManager, converter: Controlled
) -> None:
    """A page served by the server itself may open the socket."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        own = Origin(live.url)
        async with ws(live, session_id, token, origin=own) as client:
            assert (await receive(client))["type"] == "snapshot"


async def test_ws_origin_allowlist_replaces_own_origin(
    manager: JobManager, converter: Controlled
) -> None:
    """With ServerSettings.origins only the listed origins may open the socket."""
    app = create_app(manager, converter=converter, origins=("https://app.example",))
    async with serve(app) as live:
        session_id, token = await live.session()
        listed = Origin("https://app.example")
        async with ws(live, session_id, token, origin=listed) as client:
            assert (await receive(client))["type"] == "snapshot"

        own = ws(live, session_id, token, origin=Origin(live.url))
        assert await refusal(own) == (403, "origin_refused")


async def test_ws_subscribers_past_the_limit_are_refused_429(
    manager: JobManager, converter: Controlled
) -> None:
    """A session already at max_subscribers_per_session refuses one more."""
    app = create_app(manager, converter=converter, max_subscribers_per_session=1)
    async with serve(app) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            await receive(client)
            refused = await refusal(ws(live, session_id, token))

    assert refused == (429, "too_many_subscribers")


# Isolation


async def test_ws_sessions_see_only_their_own_events(
    manager: JobManager, converter: Controlled
) -> None:
    """A client of one session never sees another session's jobs or events."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        other_id, other_token = await live.session()
        other_job = manager.create_job(other_id, ["x"])

        async with (
            ws(live, session_id, token) as client,
            ws(live, other_id, other_token) as other,
        ):
            snapshot = await receive(client)
            assert [job["job_id"] for job in (await receive(other))["jobs"]] == [
                other_job
            ]
            await manager.start_job(other_job, converter)
            await finish(converter, "x")
            await receive_until(other, "job.completed")

            # Had any of the other session's events reached this client, they
            # would be queued ahead of its own job's first event.
            job_id = manager.create_job(session_id, ["y"])
            first = await receive(client)

    assert snapshot["jobs"] == []
    assert (first["type"], first["job_id"]) == ("job.created", job_id)


# Delivery under load

#: Events for the slow consumer test: several times what its buffers hold.
SLOW_EVENTS = 1000


async def test_ws_slow_consumer_is_evicted_1013_and_resumes(
    manager: JobManager, converter: Controlled, recorder: Recorder, protocol: Any
) -> None:
    """A client that stops reading does not delay others, is closed 1013, resumes."""
    app = create_app(
        manager,
        converter=converter,
        queue_size=8,
        hard_limit=32,
        replay_size=SLOW_EVENTS,
    )
    async with serve(app, ws=protocol) as live:
        session_id, token = await live.session()

        # Accepted sockets inherit the listener's send buffer; with the slow
        # client's small receive buffer, a few hundred unread events fill
        # everything between the two, instead of megabytes of them.
        listener = live.server.servers[0].sockets[0]
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock = await small_buffer_socket(live.port)
        async with (
            ws(live, session_id, token, compression=None) as fast,
            ws(live, session_id, token, compression=None, sock=sock) as slow,
        ):
            await receive(fast)
            start = await receive(slow)

            # The fast client reads each batch before the next is published,
            # so only the slow one ever falls behind.
            for _ in range(0, SLOW_EVENTS, 8):
                job_ids = [manager.create_job(session_id, ["a"]) for _ in range(8)]
                for job_id in job_ids:
                    assert (await receive(fast))["job_id"] == job_id
            assert live.streamer.hub.statistics().evicted == 1

            # Reading again, the slow client finds what was already on its
            # way, then the close.
            received: list[dict[str, Any]] = []
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(TIMEOUT):
                    while True:
                        received.append(await receive(slow))

        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1013
        cursor = (received[-1] if received else start)["cursor"]
        async with ws(live, session_id, token, cursor=cursor) as again:
            resumed = await receive(again)
            rest = [await receive(again) for _ in range(resumed["replayed"])]

    assert resumed["type"] == "resumed"
    assert [m["job_id"] for m in received + rest] == [e.job_id for e in recorder.events]


def hub_event(kind: str, session_id: str, job_id: str, n: int = 0) -> JobEvent:
    """An engine event to publish straight into a server's hub."""
    types: dict[str, type[JobEvent]] = {
        "job.started": JobStarted,
        "job.progress": JobProgress,
        "job.completed": JobCompleted,
    }
    return types[kind](
        job_id, session_id, datetime.now(UTC), {"job_id": job_id, "n": n}
    )


#: Progress events published behind a stalled client.
PROGRESS_EVENTS = 50


async def test_ws_stalled_consumer_gets_progress_coalesced_beside_fast_one(
    manager: JobManager, converter: Controlled, protocol: Any
) -> None:
    """Behind a paused transport progress coalesces; a fast client gets every event."""
    app = create_app(
        manager, converter=converter, queue_size=8, hard_limit=4096, replay_size=4096
    )
    async with serve(app, ws=protocol) as live:
        session_id, token = await live.session()
        hub = live.streamer.hub
        listener = live.server.servers[0].sockets[0]
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock = await small_buffer_socket(live.port)
        async with (
            ws(live, session_id, token, compression=None) as fast,
            ws(live, session_id, token, compression=None, sock=sock) as slow,
        ):
            await receive(fast)
            await receive(slow)

            # Lifecycle events until the slow client's queue reaches
            # queue_size: by then its transport has paused and the hub
            # queues for it, while the fast one is written every event.
            fills: list[str] = []
            while hub.statistics().backlogged == 0:
                assert len(fills) < SLOW_EVENTS, "the slow client never stalled"
                fills.append(f"fill-{len(fills)}")
                hub.publish(hub_event("job.started", session_id, fills[-1]))
                assert (await receive(fast))["job_id"] == fills[-1]

            for n in range(PROGRESS_EVENTS):
                hub.publish(hub_event("job.progress", session_id, "p", n))
                message = await receive(fast)
                assert (message["type"], message["job"]["n"]) == ("job.progress", n)
            hub.publish(hub_event("job.completed", session_id, "p"))
            assert (await receive(fast))["type"] == "job.completed"

            stream = await receive_until(slow, "job.completed", "p")

        statistics = hub.statistics()

    assert [m["job_id"] for m in stream if m["type"] == "job.started"] == fills
    progressed = [m["job"]["n"] for m in stream if m["type"] == "job.progress"]
    assert 0 < len(progressed) < PROGRESS_EVENTS
    assert progressed == sorted(set(progressed))
    assert progressed[-1] == PROGRESS_EVENTS - 1
    assert [seq(m) for m in stream] == sorted({seq(m) for m in stream})
    assert statistics.coalesced > 0
    assert statistics.evicted == 0


async def test_ws_vanished_client_disturbs_neither_publish_nor_others(
    manager: JobManager, converter: Controlled, protocol: Any
) -> None:
    """Writing to a client that reset its connection costs publish nothing."""
    async with serve(create_app(manager, converter=converter), ws=protocol) as live:
        session_id, token = await live.session()
        hub = live.streamer.hub
        async with (
            ws(live, session_id, token) as stays,
            ws(live, session_id, token) as goes,
        ):
            await receive(stays)
            await receive(goes)
            goes.transport.abort()

            # Some of these are written before the server sees the reset.
            for n in range(50):
                hub.publish(hub_event("job.started", session_id, f"j{n}"))
                assert (await receive(stays))["job_id"] == f"j{n}"

            await until(lambda: hub.statistics().connections == 1)


async def test_ws_streamer_protocol_writes_frames_itself(
    manager: JobManager, converter: Controlled, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served by streamer's runner, live events are framed by the protocol itself."""
    written: list[bytes] = []
    write_text_now = StreamerWebSocketProtocol.write_text_now

    def spy(self: StreamerWebSocketProtocol, payload: bytes) -> bool:
        done = write_text_now(self, payload)
        if done:
            written.append(payload)
        return done

    monkeypatch.setattr(StreamerWebSocketProtocol, "write_text_now", spy)
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            await receive(client)
            for n in range(5):
                live.streamer.hub.publish(hub_event("job.started", session_id, f"j{n}"))
            messages = [await receive(client) for _ in range(5)]

    # The snapshot was queued, and its sending task framed it the same way.
    assert [m["job_id"] for m in messages] == [f"j{n}" for n in range(5)]
    assert json.loads(written[0])["type"] == "snapshot"
    assert [json.loads(payload) for payload in written[1:]] == messages


class SendRecorder:
    """A user's middleware that sees every WebSocket message the app sends."""

    def __init__(self, app: ASGIApp, sent: list[Message]) -> None:
        self.app = app
        self.sent = sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def recording(message: Message) -> None:
            self.sent.append(message)
            await send(message)

        await self.app(scope, receive, recording)


async def test_ws_user_middleware_still_sees_every_message(
    manager: JobManager, converter: Controlled, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a user's middleware in the app, no message goes around it."""
    sent: list[Message] = []
    framed: list[bytes] = []
    write_text_now = StreamerWebSocketProtocol.write_text_now

    def spy(self: StreamerWebSocketProtocol, payload: bytes) -> bool:
        framed.append(payload)
        return write_text_now(self, payload)

    monkeypatch.setattr(StreamerWebSocketProtocol, "write_text_now", spy)
    app = create_app(manager, converter=converter)
    app.add_middleware(SendRecorder, sent=sent)
    async with serve(app) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            await receive(client)
            for n in range(5):
                live.streamer.hub.publish(hub_event("job.started", session_id, f"j{n}"))
            messages = [await receive(client) for _ in range(5)]

    texts = [json.loads(m["text"]) for m in sent if m["type"] == "websocket.send"]
    assert texts[1:] == messages
    assert framed == []


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
def test_ws_text_frame_is_framed_as_websockets_frames_it(length: int) -> None:
    """The protocol's own text frame is byte for byte what websockets would send."""
    payload = b"x" * length

    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


async def test_ws_rest_of_a_suspended_send_is_finished_by_a_task() -> None:
    """A send that suspended outside any task completes once a task awaits the rest."""
    ready = asyncio.Event()
    log: list[str] = []

    async def send() -> None:
        await ready.wait()
        log.append("sent")

    async def finish(rest: _Rest) -> None:
        await rest

    coroutine = send()
    task = asyncio.create_task(finish(_Rest(coroutine, coroutine.send(None))))
    await asyncio.sleep(0)
    assert log == []

    ready.set()
    async with asyncio.timeout(TIMEOUT):
        await task
    assert log == ["sent"]


async def test_ws_rest_of_a_suspended_send_sees_its_task_cancelled() -> None:
    """Cancelling the task that finishes a suspended send reaches the send."""
    log: list[str] = []

    async def send() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    async def finish(rest: _Rest) -> None:
        await rest

    coroutine = send()
    task = asyncio.create_task(finish(_Rest(coroutine, coroutine.send(None))))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(TIMEOUT):
            await task
    assert log == ["cancelled"]


#: How many subscribers the load test opens on one session.
SUBSCRIBERS = 1000


@pytest.fixture
def room_for_subscribers() -> Any:
    """Raise the open-files limit for both ends of every subscriber's socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * SUBSCRIBERS + 256
    if soft >= need:
        yield
        return

    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.load
@pytest.mark.timeout(30)
@pytest.mark.usefixtures("room_for_subscribers")
async def test_ws_load_thousand_subscribers_receive_every_lifecycle_event(
    manager: JobManager, converter: Controlled, recorder: Recorder
) -> None:
    """Load: 1000 subscribers of one session all receive every lifecycle event."""
    app = create_app(
        manager, converter=converter, max_subscribers_per_session=SUBSCRIBERS
    )
    async with serve(app) as live:
        session_id, token = await live.session()
        clients: list[ClientConnection] = []
        try:
            # In waves, so that neither the listen backlog nor the handshake
            # timeout is what the test measures.
            while len(clients) < SUBSCRIBERS:
                clients += await asyncio.gather(
                    *(
                        ws(live, session_id, token, ping_interval=None)
                        for _ in range(100)
                    )
                )
            firsts = await asyncio.gather(*(receive(client) for client in clients))
            assert live.streamer.hub.statistics().connections == SUBSCRIBERS

            job_id = await start_job(live, session_id, token, "a")
            await finish(converter, "a")
            streams = await asyncio.gather(
                *(receive_until(client, "job.completed") for client in clients)
            )
        finally:
            await asyncio.gather(*(client.close() for client in clients))

    assert {first["type"] for first in firsts} == {"snapshot"}
    expected = [(e.type, e.job_id) for e in recorder.events if e.type != "job.progress"]
    assert [kind for kind, _ in expected] == LIFECYCLE
    cursors = set()
    for stream in streams:
        lifecycle = [m for m in stream if m["type"] != "job.progress"]
        assert [(m["type"], m["job_id"]) for m in lifecycle] == expected
        cursors.add(tuple(m["cursor"] for m in lifecycle))
    assert len(cursors) == 1
    assert expected[0][1] == job_id


# Clients that vanish


async def test_ws_silent_client_is_dropped_after_unanswered_ping(
    manager: JobManager, converter: Controlled
) -> None:
    """A peer that never answers pings is closed 1011 and its subscription freed."""
    app = create_app(manager, converter=converter)
    async with serve(app, ws_ping_interval=0.2, ws_ping_timeout=0.2) as live:
        session_id, token = await live.session()
        query = urlencode({"token": token})
        uri = parse_uri(f"{live.ws_url}/api/sessions/{session_id}/ws?{query}")

        # A hand-made client: the protocol object parses what arrives and
        # would answer the pings, but nothing it prepares is ever sent.
        protocol = ClientProtocol(uri)
        protocol.send_request(protocol.connect())
        reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
        try:
            writer.write(b"".join(protocol.data_to_send()))
            events: list[Event] = []
            async with asyncio.timeout(TIMEOUT):
                while not events:
                    protocol.receive_data(await reader.read(65536))
                    events += protocol.events_received()
            assert isinstance(events[0], Response)
            assert events[0].status_code == 101
            assert live.streamer.hub.statistics().connections == 1

            # Reading is not answering: the server's pings go unanswered
            # until it gives up and closes the connection.
            async with asyncio.timeout(TIMEOUT):
                while data := await reader.read(65536):
                    protocol.receive_data(data)
            protocol.receive_eof()
            events += protocol.events_received()
        finally:
            writer.close()

        await until(lambda: live.streamer.hub.statistics().connections == 0)

    frames = [event for event in events if isinstance(event, Frame)]
    assert Opcode.PING in {frame.opcode for frame in frames}
    assert protocol.close_rcvd is not None
    assert protocol.close_rcvd.code == 1011


async def test_ws_aborted_client_frees_its_subscription(
    manager: JobManager, converter: Controlled
) -> None:
    """A connection reset without a close frame frees the subscription."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            await receive(client)
            assert live.streamer.hub.statistics().connections == 1
            client.transport.abort()

            await until(lambda: live.streamer.hub.statistics().connections == 0)


# Shutdown


async def test_ws_server_shutdown_closes_1012(
    manager: JobManager, converter: Controlled
) -> None:
    """Stopping the server closes every client with 1012."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            await receive(client)
            live.server.should_exit = True

            assert await close_code(client) == 1012


async def test_ws_host_close_closes_1012_and_refuses_new_clients(
    manager: JobManager, converter: Controlled
) -> None:
    """Server.aclose() closes clients with 1012; new ones are refused 503."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        async with ws(live, session_id, token) as client:
            await receive(client)
            await live.streamer.aclose()

            assert await close_code(client) == 1012
        assert await refusal(ws(live, session_id, token)) == (503, "shutting_down")
