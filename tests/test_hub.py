"""Tests of the broadcast hub: cursors, replay, coalescing, eviction, limits."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest

from streamer.clock import ManualClock
from streamer.errors import (
    HubClosed,
    HubLimitExceeded,
    InvalidCursor,
    StreamerError,
    SubscriberEvicted,
    SubscriptionClosed,
)
from streamer.hub import (
    COALESCABLE,
    Cursor,
    Hub,
    HubStatistics,
    Subscription,
    parse_cursor,
)

from .conftest import TIMEOUT


@dataclass(frozen=True)
class FakeEvent:
    type: str
    job_id: str
    session_id: str = "s1"
    n: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "job_id": self.job_id,
            "ts": "2026-01-01T00:00:00+00:00",
            "job": {"job_id": self.job_id, "n": self.n},
        }


def progress(job_id: str, n: int, session_id: str = "s1") -> FakeEvent:
    return FakeEvent(COALESCABLE, job_id, session_id, n)


def lifecycle(
    job_id: str, n: int = 0, session_id: str = "s1", kind: str = "job.started"
) -> FakeEvent:
    return FakeEvent(kind, job_id, session_id, n)


def no_jobs() -> list[dict[str, Any]]:
    return []


def jobs_of(*job_ids: str) -> list[dict[str, Any]]:
    return [{"job_id": job_id, "status": "running"} for job_id in job_ids]


def drain(subscription: Subscription) -> list[dict[str, Any]]:
    messages = []
    while (data := subscription.get_nowait()) is not None:
        messages.append(json.loads(data))

    return messages


def seq_of(cursor: str) -> int:
    return parse_cursor(cursor).seq


async def start_get(subscription: Subscription) -> asyncio.Task[bytes]:
    """Start a get() and return once it is parked on the empty queue."""
    getter = asyncio.create_task(subscription.get())
    # One pass of the loop runs the new task up to its first suspension, which
    # for an empty queue is the wait for the next message.
    await asyncio.sleep(0)
    assert subscription.statistics().waiting
    return getter


# Encoding


def test_publish_cursor_follows_type() -> None:
    """The encoded event has "cursor" right after "type" and no spaces."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    subscription.get_nowait()
    hub.publish(lifecycle("a"))

    data = subscription.get_nowait()
    assert data is not None
    assert data.startswith(b'{"type":"job.started","cursor":"')
    assert b", " not in data and b": " not in data
    message = json.loads(data)
    assert list(message) == ["type", "cursor", "job_id", "ts", "job"]
    assert message["cursor"] == f"{hub.cursor_prefix('s1')}-1"


def test_publish_shares_bytes_between_subscribers() -> None:
    """Every subscriber receives the very same bytes object."""
    hub = Hub()
    first = hub.subscribe("s1", snapshot=no_jobs)
    second = hub.subscribe("s1", snapshot=no_jobs)
    first.get_nowait()
    second.get_nowait()
    hub.publish(lifecycle("a"))

    assert first.get_nowait() is second.get_nowait()


def test_publish_unencodable_event_leaves_no_gap() -> None:
    """An event that cannot be encoded raises and does not use up a cursor."""

    class Broken(FakeEvent):
        def to_dict(self) -> dict[str, Any]:
            return {"type": self.type, "job": object()}

    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    drain(subscription)
    with pytest.raises(TypeError):
        hub.publish(Broken("job.started", "a"))

    hub.publish(lifecycle("a"))
    assert [seq_of(m["cursor"]) for m in drain(subscription)] == [1]
    assert hub.statistics().published == 1


# Cursors


def test_parse_cursor_roundtrip() -> None:
    """A cursor the hub issues parses back to its epoch and sequence number."""
    hub = Hub()
    hub.publish(lifecycle("a"))
    prefix = hub.cursor_prefix("s1")
    assert prefix.startswith(hub.epoch)
    cursor = parse_cursor(f"{prefix}-42")
    assert cursor == Cursor(prefix, 42)
    assert str(cursor) == f"{prefix}-42"


def test_cursor_prefix_differs_per_session() -> None:
    """Two sessions of one hub issue cursors that cannot open each other."""
    hub = Hub()
    hub.publish(lifecycle("a"))
    other = hub.subscribe("s2", snapshot=no_jobs)
    assert hub.cursor_prefix("s1") != hub.cursor_prefix("s2")
    foreign = f"{hub.cursor_prefix('s1')}-1"
    resumed = hub.subscribe("s2", cursor=foreign, snapshot=no_jobs)
    assert drain(resumed)[0]["reset"] is True
    other.close()


def test_parse_cursor_epoch_differs_per_hub() -> None:
    """Two hubs, like two server processes, draw different epochs."""
    assert Hub().epoch != Hub().epoch


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "-1",
        "abc-1",
        "0123456789abcdef",
        "0123456789abcdef-",
        "0123456789abcdef--1",
        "0123456789abcdef-01",
        "0123456789abcdef-1.0",
        "0123456789abcdef-1 ",
        "0123456789ABCDEF-1",
        "0123456789abcdef-\uff11",
        "0123456789abcdef-1-2",
        "0123456789abcdef-" + "9" * 40,
        "a" * 10_000,
    ],
)
def test_parse_cursor_rejects_garbage(text: str) -> None:
    """Anything the hub could not have issued raises InvalidCursor."""
    with pytest.raises(InvalidCursor) as caught:
        parse_cursor(text)

    assert isinstance(caught.value, StreamerError)
    assert isinstance(caught.value, ValueError)
    if text:
        assert text not in str(caught.value)


# Snapshot and resume


def test_subscribe_without_cursor_starts_with_snapshot() -> None:
    """With no cursor the first message is a snapshot of the session's jobs."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=lambda: jobs_of("a", "b"))

    assert drain(subscription) == [
        {
            "type": "snapshot",
            "cursor": f"{hub.cursor_prefix('s1')}-0",
            "reset": False,
            "jobs": jobs_of("a", "b"),
        }
    ]


def test_subscribe_snapshot_cursor_is_latest_event() -> None:
    """The snapshot's cursor is that of the last event already published."""
    hub = Hub()
    watcher = hub.subscribe("s1", snapshot=no_jobs)
    hub.publish(lifecycle("a"))
    hub.publish(lifecycle("b"))
    latest = drain(watcher)[-1]["cursor"]

    subscription = hub.subscribe("s1", snapshot=no_jobs)
    assert drain(subscription)[0]["cursor"] == latest


def test_subscribe_snapshot_then_live_events_without_gap() -> None:
    """Events published after the snapshot follow it, each exactly once."""
    hub = Hub()
    hub.publish(lifecycle("a", 1))
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    hub.publish(lifecycle("a", 2))
    hub.publish(lifecycle("a", 3))

    messages = drain(subscription)
    assert [m["type"] for m in messages] == ["snapshot", "job.started", "job.started"]
    assert [m["job"]["n"] for m in messages[1:]] == [2, 3]
    assert seq_of(messages[1]["cursor"]) == seq_of(messages[0]["cursor"]) + 1


def test_publish_without_subscribers_keeps_replay() -> None:
    """Events of a session nobody watches are still recorded for replay."""
    hub = Hub()
    first = hub.subscribe("s1", snapshot=no_jobs)
    cursor = drain(first)[0]["cursor"]
    first.close()
    for n in range(3):
        hub.publish(lifecycle("a", n))

    resumed = hub.subscribe("s1", cursor=cursor, snapshot=no_jobs)
    messages = drain(resumed)
    assert messages[0] == {"type": "resumed", "cursor": cursor, "replayed": 3}
    assert [m["job"]["n"] for m in messages[1:]] == [0, 1, 2]


def test_resume_replays_exactly_the_missed_events() -> None:
    """A resume yields the events after the cursor, in order, none twice."""
    hub = Hub()
    watcher = hub.subscribe("s1", snapshot=no_jobs)
    for n in range(10):
        hub.publish(lifecycle(f"job{n % 3}", n))

    events = drain(watcher)[1:]
    cursor = events[3]["cursor"]
    resumed = hub.subscribe("s1", cursor=cursor, snapshot=no_jobs)
    hub.publish(lifecycle("job0", 10))

    messages = drain(resumed)
    assert messages[0] == {"type": "resumed", "cursor": cursor, "replayed": 6}
    assert messages[1:7] == events[4:]
    assert [m["job"]["n"] for m in messages[1:]] == list(range(4, 11))


def test_resume_from_latest_replays_nothing() -> None:
    """A cursor equal to the latest event resumes with nothing replayed."""
    hub = Hub()
    watcher = hub.subscribe("s1", snapshot=no_jobs)
    hub.publish(lifecycle("a"))
    cursor = drain(watcher)[-1]["cursor"]

    resumed = hub.subscribe("s1", cursor=cursor, snapshot=no_jobs)
    assert drain(resumed) == [{"type": "resumed", "cursor": cursor, "replayed": 0}]


def test_resume_does_not_call_snapshot() -> None:
    """A subscriber that can resume does not cost a snapshot of the jobs."""
    hub = Hub()
    calls: list[None] = []

    def snapshot() -> list[dict[str, Any]]:
        calls.append(None)
        return []

    cursor = drain(hub.subscribe("s1", snapshot=snapshot))[0]["cursor"]
    hub.subscribe("s1", cursor=cursor, snapshot=snapshot)
    assert len(calls) == 1


def test_resume_at_oldest_retained_event() -> None:
    """The oldest cursor still resumable is the one just before the buffer."""
    hub = Hub(replay_size=3)
    for n in range(5):
        hub.publish(lifecycle("a", n))

    # Events 3, 4 and 5 are retained, so cursor 2 misses nothing.
    resumed = hub.subscribe(
        "s1", cursor=f"{hub.cursor_prefix('s1')}-2", snapshot=no_jobs
    )
    messages = drain(resumed)
    assert messages[0]["replayed"] == 3
    assert [m["job"]["n"] for m in messages[1:]] == [2, 3, 4]


def test_resume_too_old_resets() -> None:
    """A cursor older than the replay buffer gets a reset snapshot."""
    hub = Hub(replay_size=3)
    for n in range(5):
        hub.publish(lifecycle("a", n))

    resumed = hub.subscribe(
        "s1", cursor=f"{hub.cursor_prefix('s1')}-1", snapshot=lambda: jobs_of("a")
    )
    assert drain(resumed) == [
        {
            "type": "snapshot",
            "cursor": f"{hub.cursor_prefix('s1')}-5",
            "reset": True,
            "jobs": jobs_of("a"),
        }
    ]


def test_resume_foreign_epoch_resets() -> None:
    """A cursor from another hub, as after a restart, gets a reset snapshot."""
    old, new = Hub(), Hub()
    old.publish(lifecycle("a"))
    new.publish(lifecycle("a"))

    resumed = new.subscribe(
        "s1", cursor=f"{old.cursor_prefix('s1')}-1", snapshot=no_jobs
    )
    message = drain(resumed)[0]
    assert message["type"] == "snapshot"
    assert message["reset"] is True
    assert message["cursor"] == f"{new.cursor_prefix('s1')}-1"


def test_resume_future_cursor_resets() -> None:
    """A cursor ahead of the session's latest event gets a reset snapshot."""
    hub = Hub()
    hub.publish(lifecycle("a"))

    resumed = hub.subscribe(
        "s1", cursor=f"{hub.cursor_prefix('s1')}-2", snapshot=no_jobs
    )
    message = drain(resumed)[0]
    assert (message["type"], message["reset"]) == ("snapshot", True)


@pytest.mark.parametrize(
    "template", ["", "nonsense", "{epoch}", "{epoch}-", "{epoch}--1", "{epoch}-x"]
)
def test_resume_malformed_cursor_resets(template: str) -> None:
    """A cursor that does not parse gets a reset snapshot, not an error."""
    hub = Hub()
    hub.publish(lifecycle("a"))
    cursor = template.format(epoch=hub.cursor_prefix("s1"))

    resumed = hub.subscribe("s1", cursor=cursor, snapshot=no_jobs)
    messages = drain(resumed)
    assert len(messages) == 1
    assert (messages[0]["type"], messages[0]["reset"]) == ("snapshot", True)


def test_resume_unknown_session_from_initial_cursor() -> None:
    """A never-published session resumes from its snapshot cursor."""
    hub = Hub()
    cursor = drain(hub.subscribe("s1", snapshot=no_jobs))[0]["cursor"]

    resumed = hub.subscribe("s1", cursor=cursor, snapshot=no_jobs)
    assert drain(resumed)[0] == {"type": "resumed", "cursor": cursor, "replayed": 0}


# Jobs filter


def test_jobs_filter_limits_live_events() -> None:
    """A filtered subscriber only gets events of its jobs, in order."""
    hub = Hub()
    subscription = hub.subscribe("s1", jobs={"a", "c"}, snapshot=no_jobs)
    for job_id in "abcabc":
        hub.publish(lifecycle(job_id))

    messages = drain(subscription)[1:]
    assert [m["job_id"] for m in messages] == ["a", "c", "a", "c"]


def test_jobs_filter_applies_to_replay() -> None:
    """A filtered resume replays and counts only the subscriber's jobs."""
    hub = Hub()
    cursor = drain(hub.subscribe("s1", snapshot=no_jobs))[0]["cursor"]
    for job_id in "abab":
        hub.publish(lifecycle(job_id))

    resumed = hub.subscribe("s1", cursor=cursor, jobs={"b"}, snapshot=no_jobs)
    messages = drain(resumed)
    assert messages[0]["replayed"] == 2
    assert [m["job_id"] for m in messages[1:]] == ["b", "b"]


def test_jobs_filter_applies_to_snapshot() -> None:
    """A filtered snapshot lists only the subscriber's jobs."""
    hub = Hub()
    subscription = hub.subscribe(
        "s1", jobs={"b"}, snapshot=lambda: jobs_of("a", "b", "c")
    )
    assert drain(subscription)[0]["jobs"] == jobs_of("b")


def test_jobs_filter_mixed_with_unfiltered_subscribers() -> None:
    """Filtered and unfiltered subscribers of one session each get their share."""
    hub = Hub()
    everything = hub.subscribe("s1", snapshot=no_jobs)
    only_a = hub.subscribe("s1", jobs={"a"}, snapshot=no_jobs)
    only_b = hub.subscribe("s1", jobs={"b"}, snapshot=no_jobs)
    for job_id in "abc":
        hub.publish(lifecycle(job_id))

    assert [m["job_id"] for m in drain(everything)[1:]] == ["a", "b", "c"]
    assert [m["job_id"] for m in drain(only_a)[1:]] == ["a"]
    assert [m["job_id"] for m in drain(only_b)[1:]] == ["b"]
    assert hub.statistics().delivered == 5


def test_sessions_are_isolated() -> None:
    """Events of one session never reach another session's subscribers."""
    hub = Hub()
    first = hub.subscribe("s1", snapshot=no_jobs)
    second = hub.subscribe("s2", snapshot=no_jobs)
    hub.publish(lifecycle("a", session_id="s1"))

    assert len(drain(first)) == 2
    assert len(drain(second)) == 1


# Coalescing


def test_coalesce_replaces_queued_progress_in_place() -> None:
    """Newer progress takes the queued one's place, ahead of later events."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    drain(subscription)
    hub.publish(progress("a", 1))
    hub.publish(lifecycle("b"))
    hub.publish(progress("a", 2))

    messages = drain(subscription)
    assert [(m["type"], m["job_id"]) for m in messages] == [
        ("job.progress", "a"),
        ("job.started", "b"),
    ]
    assert messages[0]["job"]["n"] == 2
    assert subscription.statistics().coalesced == 1
    assert hub.statistics().coalesced == 1


def test_coalesce_keeps_cursor_of_replaced_message() -> None:
    """A coalesced message keeps the older cursor, so cursors keep rising."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    drain(subscription)
    hub.publish(progress("a", 1))
    hub.publish(lifecycle("b"))
    hub.publish(progress("a", 2))

    cursors = [seq_of(m["cursor"]) for m in drain(subscription)]
    assert cursors == [1, 2]


def test_coalesce_same_slot_repeatedly() -> None:
    """A burst of progress for one job collapses into one up-to-date message."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    drain(subscription)
    for n in range(1, 6):
        hub.publish(progress("a", n))

    messages = drain(subscription)
    assert len(messages) == 1
    assert messages[0]["job"]["n"] == 5
    assert seq_of(messages[0]["cursor"]) == 1
    assert subscription.statistics().coalesced == 4


def test_coalesce_separate_jobs_separately() -> None:
    """Progress of different jobs is never merged."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    drain(subscription)
    for n in range(3):
        hub.publish(progress("a", n))
        hub.publish(progress("b", n))

    messages = drain(subscription)
    assert [(m["job_id"], m["job"]["n"]) for m in messages] == [("a", 2), ("b", 2)]


def test_coalesce_only_while_queued() -> None:
    """Progress that arrives after the previous one was read is queued anew."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    drain(subscription)
    hub.publish(progress("a", 1))
    assert len(drain(subscription)) == 1

    hub.publish(progress("a", 2))
    assert [m["job"]["n"] for m in drain(subscription)] == [2]
    assert subscription.statistics().coalesced == 0


def test_coalesce_leaves_other_subscribers_alone() -> None:
    """Coalescing in one queue does not change what a prompt reader gets."""
    hub = Hub()
    prompt = hub.subscribe("s1", snapshot=no_jobs)
    behind = hub.subscribe("s1", snapshot=no_jobs)
    drain(prompt)
    drain(behind)
    received = []
    for n in range(3):
        hub.publish(progress("a", n))
        received.extend(drain(prompt))

    assert [m["job"]["n"] for m in received] == [0, 1, 2]
    assert [seq_of(m["cursor"]) for m in received] == [1, 2, 3]
    assert [m["job"]["n"] for m in drain(behind)] == [2]


def test_coalesce_into_replayed_progress() -> None:
    """Live progress coalesces into replayed progress, not the other way."""
    hub = Hub()
    cursor = drain(hub.subscribe("s1", snapshot=no_jobs))[0]["cursor"]
    hub.publish(progress("a", 1))
    hub.publish(progress("a", 2))

    resumed = hub.subscribe("s1", cursor=cursor, snapshot=no_jobs)
    hub.publish(progress("a", 3))
    messages = drain(resumed)
    assert messages[0]["replayed"] == 2
    assert [m["job"]["n"] for m in messages[1:]] == [1, 3]


def test_coalesce_resume_from_any_received_cursor_is_lossless() -> None:
    """Resuming from any cursor a coalescing reader saw misses no event."""
    hub = Hub()
    reader = hub.subscribe("s1", snapshot=no_jobs)
    drain(reader)
    script = [progress("a", 1), lifecycle("b", 2), progress("a", 3)]
    script += [progress("b", 4), lifecycle("a", 5), progress("b", 6)]
    for event in script:
        hub.publish(event)

    received = drain(reader)
    for index, message in enumerate(received):
        seen = {m["job"]["n"] for m in received[: index + 1]}
        resumed = hub.subscribe("s1", cursor=message["cursor"], snapshot=no_jobs)
        replayed = {m["job"]["n"] for m in drain(resumed)[1:]}
        lifecycle_ns = {2, 5}
        assert lifecycle_ns <= seen | replayed
        resumed.close()


def test_lifecycle_events_never_coalesced() -> None:
    """Every lifecycle event is queued, even many for one job."""
    hub = Hub(queue_size=4, hard_limit=200)
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    kinds = ["job.created", "job.memory_wait", "job.memory_wait", "job.completed"]
    for n in range(50):
        hub.publish(lifecycle("a", n, kind=kinds[n % 4]))
        hub.publish(progress("a", n))

    messages = drain(subscription)[1:]
    assert [m["job"]["n"] for m in messages if m["type"] != COALESCABLE] == list(
        range(50)
    )


def test_progress_never_overtakes_lifecycle_of_its_job() -> None:
    """A newer progress is queued after a lifecycle event of its job, not before."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    hub.publish(progress("a", 1))
    hub.publish(lifecycle("a", 2, kind="job.document_failed"))
    hub.publish(progress("a", 3))
    hub.publish(progress("a", 4))
    messages = drain(subscription)[1:]
    assert [(m["type"], m["job"]["n"]) for m in messages] == [
        (COALESCABLE, 1),
        ("job.document_failed", 2),
        (COALESCABLE, 4),
    ]


# Backlog and eviction


def test_backlog_counted_past_queue_size() -> None:
    """A subscriber at queue_size counts as backlogged until it catches up."""
    hub = Hub(queue_size=3, hard_limit=10)
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    hub.publish(lifecycle("a"))
    assert hub.statistics().backlogged == 0

    hub.publish(lifecycle("a"))
    assert hub.statistics().backlogged == 1

    subscription.get_nowait()
    assert hub.statistics().backlogged == 0


def test_evict_past_hard_limit() -> None:
    """A queue longer than hard_limit gets its subscriber evicted and freed."""
    hub = Hub(queue_size=2, hard_limit=5)
    slow = hub.subscribe("s1", snapshot=no_jobs)
    for n in range(4):
        hub.publish(lifecycle("a", n))

    assert slow.closed is None
    assert slow.statistics().queued == 5

    hub.publish(lifecycle("a", 4))
    assert slow.closed == "lagging"
    assert slow.statistics().queued == 0
    with pytest.raises(SubscriberEvicted) as caught:
        slow.get_nowait()

    assert caught.value.reason == "lagging"
    assert caught.value.hard_limit == 5
    statistics = hub.statistics()
    assert (statistics.evicted, statistics.connections) == (1, 0)
    assert statistics.backlogged == 0


async def test_evict_raises_from_get() -> None:
    """get() on an evicted subscription raises SubscriberEvicted."""
    hub = Hub(queue_size=1, hard_limit=1)
    slow = hub.subscribe("s1", snapshot=no_jobs)
    hub.publish(lifecycle("a"))

    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(SubscriberEvicted):
            await slow.get()


def test_evict_then_resume_misses_nothing() -> None:
    """An evicted client that resumes from its last cursor gets every event."""
    hub = Hub(queue_size=2, hard_limit=4)
    slow = hub.subscribe("s1", snapshot=no_jobs)
    received = [json.loads(slow.get_nowait() or b"")]
    hub.publish(lifecycle("a", 0))
    received.append(json.loads(slow.get_nowait() or b""))
    for n in range(1, 10):
        hub.publish(lifecycle("a", n))

    assert slow.closed == "lagging"
    resumed = hub.subscribe("s1", cursor=received[-1]["cursor"], snapshot=no_jobs)
    messages = drain(resumed)
    assert messages[0]["type"] == "resumed"
    assert [m["job"]["n"] for m in messages[1:]] == list(range(1, 10))


async def test_slow_subscriber_does_not_delay_others() -> None:
    """A reader that never reads is evicted; a prompt one still gets it all."""
    hub = Hub(queue_size=4, hard_limit=8)
    slow = hub.subscribe("s1", snapshot=no_jobs)
    fast = hub.subscribe("s1", snapshot=no_jobs)
    received: list[dict[str, Any]] = []
    progressed = asyncio.Event()

    async def read() -> None:
        while len(received) < 101:
            received.append(json.loads(await fast.get()))
            progressed.set()

    async with asyncio.timeout(TIMEOUT):
        reader = asyncio.create_task(read())
        for n in range(100):
            # Publish only once the prompt reader has taken the last message,
            # as a connected client would, while the slow one never reads.
            await progressed.wait()
            progressed.clear()
            hub.publish(lifecycle("a", n))

        await reader

    assert slow.closed == "lagging"
    assert fast.closed is None
    assert [m["job"]["n"] for m in received[1:]] == list(range(100))


def test_thousand_subscribers_get_every_lifecycle_event() -> None:
    """A thousand subscribers each receive every lifecycle event in order."""
    hub = Hub(max_subscribers_per_session=1000)
    subscriptions = [hub.subscribe("s1", snapshot=no_jobs) for _ in range(1000)]
    for n in range(20):
        hub.publish(lifecycle(f"job{n % 4}", n, kind="job.completed"))
        hub.publish(progress(f"job{n % 4}", n))

    expected = list(range(20))
    for subscription in subscriptions:
        messages = drain(subscription)[1:]
        ns = [m["job"]["n"] for m in messages if m["type"] == "job.completed"]
        assert ns == expected

    assert hub.statistics().connections == 1000


# Waiting


async def test_get_waits_for_next_publish() -> None:
    """get() blocks while the queue is empty and returns the next event."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    subscription.get_nowait()

    async with asyncio.timeout(TIMEOUT):
        getter = await start_get(subscription)
        hub.publish(lifecycle("a"))
        message = json.loads(await getter)

    assert message["job_id"] == "a"


def test_get_nowait_returns_none_when_empty() -> None:
    """get_nowait() returns None when nothing is queued."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    assert subscription.get_nowait() is not None
    assert subscription.get_nowait() is None


async def test_get_second_waiter_refused() -> None:
    """A second concurrent get() on one subscription raises RuntimeError."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    subscription.get_nowait()

    async with asyncio.timeout(TIMEOUT):
        getter = await start_get(subscription)
        with pytest.raises(RuntimeError):
            await subscription.get()

        hub.publish(lifecycle("a"))
        assert json.loads(await getter)["job_id"] == "a"


async def test_get_cancelled_leaves_subscription_usable() -> None:
    """A cancelled get() loses nothing and a later get() works."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    subscription.get_nowait()

    async with asyncio.timeout(TIMEOUT):
        getter = await start_get(subscription)
        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter

        hub.publish(lifecycle("a"))
        assert json.loads(await subscription.get())["job_id"] == "a"


# Hand-off to publish


class Writer:
    """A consumer's writer for hand_off: takes messages until told to hold one."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.held: list[bytes] = []
        self.wakes = 0
        self.hold = False

    def write(self, data: bytes) -> bool:
        if self.hold:
            self.held.append(data)
            return False

        self.written.append(data)
        return True

    def wake(self) -> None:
        self.wakes += 1

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(data) for data in self.written]


def handed_off(hub: Hub, **options: Any) -> tuple[Subscription, Writer]:
    """A subscriber that read its first message and handed off to a Writer."""
    subscription = hub.subscribe("s1", snapshot=no_jobs, **options)
    drain(subscription)
    writer = Writer()
    assert subscription.hand_off(writer.write, writer.wake)
    return subscription, writer


def test_hand_off_publish_writes_instead_of_queueing() -> None:
    """Handed off, each message goes to the writer, in order, and none is queued."""
    hub = Hub()
    subscription, writer = handed_off(hub)
    for n in range(3):
        hub.publish(lifecycle("a", n))

    assert [m["job"]["n"] for m in writer.messages()] == [0, 1, 2]
    assert writer.wakes == 0
    statistics = subscription.statistics()
    assert (statistics.queued, statistics.sent, statistics.waiting) == (0, 4, True)
    assert hub.statistics().delivered == 3


def test_hand_off_writer_gets_the_shared_bytes() -> None:
    """The writer is handed the very bytes every other subscriber gets."""
    hub = Hub()
    _, writer = handed_off(hub)
    queued = hub.subscribe("s1", snapshot=no_jobs)
    drain(queued)
    hub.publish(lifecycle("a"))

    assert writer.written[0] is queued.get_nowait()


def test_hand_off_refused_while_a_message_is_queued() -> None:
    """hand_off returns False and changes nothing while a message waits."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    writer = Writer()

    assert not subscription.hand_off(writer.write, writer.wake)
    hub.publish(lifecycle("a"))
    assert writer.written == []
    assert [m["type"] for m in drain(subscription)] == ["snapshot", "job.started"]


def test_hand_off_refused_once_closed() -> None:
    """A closed subscription refuses a hand-off."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    drain(subscription)
    subscription.close()
    writer = Writer()

    assert not subscription.hand_off(writer.write, writer.wake)


async def test_hand_off_and_get_exclude_each_other() -> None:
    """A subscription takes one consumer: a get() or a hand-off, not both."""
    hub = Hub()
    subscription, writer = handed_off(hub)
    with pytest.raises(RuntimeError):
        await subscription.get()
    with pytest.raises(RuntimeError):
        subscription.hand_off(writer.write, writer.wake)

    other = hub.subscribe("s1", snapshot=no_jobs)
    drain(other)
    async with asyncio.timeout(TIMEOUT):
        getter = await start_get(other)
        with pytest.raises(RuntimeError):
            other.hand_off(writer.write, writer.wake)

        getter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await getter


def test_hand_off_held_message_ends_it_and_queues_the_rest() -> None:
    """A write that holds its message wakes the consumer once; the rest queue."""
    hub = Hub()
    subscription, writer = handed_off(hub)
    hub.publish(lifecycle("a", 0))
    writer.hold = True
    hub.publish(lifecycle("a", 1))
    hub.publish(lifecycle("a", 2))
    hub.publish(lifecycle("a", 3))

    assert writer.wakes == 1
    assert [json.loads(data)["job"]["n"] for data in writer.held] == [1]
    assert [m["job"]["n"] for m in drain(subscription)] == [2, 3]

    # Caught up, the consumer hands off again and publish writes once more.
    writer.hold = False
    assert subscription.hand_off(writer.write, writer.wake)
    hub.publish(lifecycle("a", 4))
    assert [m["job"]["n"] for m in writer.messages()] == [0, 4]
    assert subscription.statistics().sent == 6


def test_hand_off_held_message_then_progress_coalesces() -> None:
    """Behind a held message, progress queues and coalesces as for any reader."""
    hub = Hub()
    subscription, writer = handed_off(hub)
    writer.hold = True
    hub.publish(progress("a", 1))
    for n in range(2, 6):
        hub.publish(progress("a", n))
    hub.publish(lifecycle("a", 6, kind="job.completed"))

    assert [json.loads(data)["job"]["n"] for data in writer.held] == [1]
    messages = drain(subscription)
    assert [(m["type"], m["job"]["n"]) for m in messages] == [
        (COALESCABLE, 5),
        ("job.completed", 6),
    ]
    assert seq_of(messages[0]["cursor"]) == 2
    assert hub.statistics().coalesced == 3


def test_hand_off_held_message_then_lagging_evicts() -> None:
    """A consumer stuck on a held message is evicted past hard_limit, woken once."""
    hub = Hub(queue_size=2, hard_limit=4)
    subscription, writer = handed_off(hub)
    fast, fast_writer = handed_off(hub)
    writer.hold = True
    for n in range(6):
        hub.publish(lifecycle("a", n))

    assert subscription.closed == "lagging"
    assert writer.wakes == 1
    with pytest.raises(SubscriberEvicted):
        subscription.get_nowait()

    assert [m["job"]["n"] for m in fast_writer.messages()] == list(range(6))
    assert fast.closed is None
    assert hub.statistics().evicted == 1


def test_hand_off_close_wakes_the_consumer() -> None:
    """Closing a handed-off subscription wakes its consumer, which sees why."""
    hub = Hub()
    subscription, writer = handed_off(hub)
    hub.close()

    assert writer.wakes == 1
    with pytest.raises(SubscriptionClosed) as caught:
        subscription.get_nowait()

    assert caught.value.reason == "shutdown"
    subscription.close()
    assert writer.wakes == 1


def test_hand_off_follows_the_jobs_filter() -> None:
    """A handed-off subscriber with a job filter is written only its jobs."""
    hub = Hub()
    _, writer = handed_off(hub, jobs=["a"])
    hub.publish(lifecycle("b"))
    hub.publish(lifecycle("a"))

    assert [m["job_id"] for m in writer.messages()] == ["a"]


def test_hand_off_thousand_subscribers_each_written_every_event() -> None:
    """1000 handed-off subscribers are each written every event, in order."""
    hub = Hub(max_subscribers_per_session=1000)
    writers = [handed_off(hub)[1] for _ in range(1000)]
    for n in range(5):
        hub.publish(lifecycle("a", n))

    assert {tuple(m["job"]["n"] for m in w.messages()) for w in writers} == {
        (0, 1, 2, 3, 4)
    }
    assert sum(w.wakes for w in writers) == 0


# Closing


def test_subscription_close_unregisters() -> None:
    """A closed subscription leaves the hub and raises SubscriptionClosed."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    subscription.close()
    subscription.close()
    hub.publish(lifecycle("a"))

    assert subscription.closed == "closed"
    assert hub.statistics().connections == 0
    assert hub.statistics().delivered == 0
    with pytest.raises(SubscriptionClosed) as caught:
        subscription.get_nowait()

    assert not isinstance(caught.value, SubscriberEvicted)
    assert caught.value.reason == "closed"


def test_subscription_context_manager_closes() -> None:
    """Leaving a with block closes the subscription."""
    hub = Hub()
    with hub.subscribe("s1", snapshot=no_jobs) as subscription:
        assert hub.statistics().connections == 1

    assert subscription.closed == "closed"
    assert hub.statistics().connections == 0


async def test_hub_close_wakes_waiting_get() -> None:
    """Closing the hub makes a waiting get() raise with reason "shutdown"."""
    hub = Hub()
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    other = hub.subscribe("s2", snapshot=no_jobs)
    subscription.get_nowait()

    async with asyncio.timeout(TIMEOUT):
        getter = await start_get(subscription)
        hub.close()
        with pytest.raises(SubscriptionClosed) as caught:
            await getter

    assert caught.value.reason == "shutdown"
    assert other.closed == "shutdown"
    assert other.statistics().queued == 0
    assert hub.statistics().connections == 0


def test_hub_close_refuses_new_subscribers() -> None:
    """After close, subscribe raises HubClosed naming the reason."""
    hub = Hub()
    hub.close("restart")

    with pytest.raises(HubClosed, match="restart"):
        hub.subscribe("s1", snapshot=no_jobs)


# Limits and sessions


def test_limit_subscribers_per_session() -> None:
    """One subscriber past the per-session limit raises HubLimitExceeded."""
    hub = Hub(max_subscribers_per_session=2)
    first = hub.subscribe("s1", snapshot=no_jobs)
    hub.subscribe("s1", snapshot=no_jobs)
    with pytest.raises(HubLimitExceeded) as caught:
        hub.subscribe("s1", snapshot=no_jobs)

    assert (caught.value.limit, caught.value.value) == (
        "max_subscribers_per_session",
        2,
    )
    assert "max_subscribers_per_session=2" in str(caught.value)
    hub.subscribe("s2", snapshot=no_jobs)
    first.close()
    hub.subscribe("s1", snapshot=no_jobs)


def test_limit_sessions_bounds_new_sessions_only() -> None:
    """max_sessions refuses new sessions to subscribers, never to publish."""
    hub = Hub(max_sessions=2)
    hub.subscribe("s1", snapshot=no_jobs)
    hub.publish(lifecycle("a", session_id="s2"))
    with pytest.raises(HubLimitExceeded) as caught:
        hub.subscribe("s3", snapshot=no_jobs)

    assert (caught.value.limit, caught.value.value) == ("max_sessions", 2)
    hub.publish(lifecycle("a", session_id="s3"))
    hub.subscribe("s2", snapshot=no_jobs)
    hub.subscribe("s3", snapshot=no_jobs)
    assert hub.statistics().sessions == 3


def test_snapshot_failure_leaves_hub_unchanged() -> None:
    """If snapshot() raises, no session or subscriber is left behind."""
    hub = Hub()

    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("engine unavailable")

    with pytest.raises(RuntimeError):
        hub.subscribe("s1", snapshot=broken)

    statistics = hub.statistics()
    assert (statistics.sessions, statistics.connections) == (0, 0)


async def test_discard_session_only_when_idle() -> None:
    """A session is dropped only without subscribers and after idle_for."""
    clock = ManualClock()
    hub = Hub(clock=clock)
    subscription = hub.subscribe("s1", snapshot=no_jobs)
    hub.publish(lifecycle("a"))
    assert not hub.discard_session("s1")
    assert hub.idle_sessions(0) == []

    subscription.close()
    await clock.advance(30)
    assert hub.idle_sessions(60) == []
    assert not hub.discard_session("s1", idle_for=60)

    await clock.advance(30)
    assert hub.idle_sessions(60) == ["s1"]
    assert hub.discard_session("s1", idle_for=60)
    assert not hub.discard_session("s1")
    assert hub.statistics().sessions == 0


def test_discard_session_then_old_cursor_resets() -> None:
    """A cursor into a discarded session never resumes the session reopened."""
    hub = Hub()
    watcher = hub.subscribe("s1", snapshot=no_jobs)
    hub.publish(lifecycle("a", 1))
    early = drain(watcher)[-1]["cursor"]
    hub.publish(lifecycle("a", 2))
    watcher.close()
    assert hub.discard_session("s1")

    for n in range(3):
        hub.publish(lifecycle("a", n))

    resumed = hub.subscribe("s1", cursor=early, snapshot=no_jobs)
    message = drain(resumed)[0]
    assert (message["type"], message["reset"]) == ("snapshot", True)
    assert seq_of(message["cursor"]) > seq_of(early)


# Statistics and configuration


def test_statistics_counts_published_delivered_coalesced() -> None:
    """Counters add up across live fan-out, replay and coalescing."""
    hub = Hub()
    first = hub.subscribe("s1", snapshot=no_jobs)
    cursor = drain(first)[0]["cursor"]
    hub.subscribe("s1", snapshot=no_jobs)
    hub.publish(lifecycle("a"))
    hub.publish(progress("a", 1))
    hub.publish(progress("a", 2))
    hub.subscribe("s1", cursor=cursor, snapshot=no_jobs)

    assert hub.statistics() == HubStatistics(
        sessions=1,
        connections=3,
        backlogged=0,
        published=3,
        delivered=4 + 3,
        coalesced=2,
        evicted=0,
    )


@pytest.mark.parametrize(
    "options",
    [
        {"replay_size": -1},
        {"queue_size": 0},
        {"queue_size": 10, "hard_limit": 5},
        {"max_sessions": 0},
        {"max_subscribers_per_session": 0},
    ],
)
def test_hub_rejects_bad_configuration(options: dict[str, Any]) -> None:
    """Limits that cannot work are refused when the hub is built."""
    with pytest.raises(ValueError):
        Hub(**options)
