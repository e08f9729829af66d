"""The events a job emits: names, payloads, order and progress throttling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from streamer import (
    EventType,
    JobCompleted,
    JobDocumentConverted,
    JobEvent,
    JobManager,
    JobMemoryWait,
    ManualClock,
    StaticMemoryProbe,
)
from streamer.memory import GIB

from .conftest import Recorder, settle
from .helpers import Controlled

Build = Callable[..., JobManager]

NAMES = {
    "job.created", "job.started", "job.progress", "job.memory_wait",
    "job.memory_resumed", "job.document_converted", "job.document_failed",
    "job.completed", "job.failed", "job.cancelled", "job.removed",
    "job.resumed", "job.suspended", "job.save_failed",
}  # fmt: skip


def test_events_type_names_are_the_wire_names() -> None:
    """Every event type has exactly the name the protocol fixes."""
    assert {t.value for t in EventType} == NAMES


def test_events_to_dict_carries_job_and_own_fields() -> None:
    """An event's wire form has type, job_id, ts, the job and its own fields."""
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    event = JobDocumentConverted(
        job_id="j", session_id="s", ts=ts, job={"job_id": "j"}, document={"x": 1}
    )
    assert event.type == "job.document_converted"
    assert event.to_dict() == {
        "type": "job.document_converted",
        "job_id": "j",
        "ts": "2026-01-01T00:00:00+00:00",
        "job": {"job_id": "j"},
        "document": {"x": 1},
    }
    assert JobCompleted(job_id="j", session_id="s", ts=ts, job={}).to_dict()[
        "type"
    ] == ("job.completed")


async def test_events_lifecycle_in_order(
    make_manager: Build, recorder: Recorder
) -> None:
    """A job with one good and one bad document emits its events in order."""
    converter = Controlled()
    converter.fail = {"b": "damaged"}
    manager = make_manager(converter=converter)
    job_id = manager.create_job("s", ["a", "b"])
    await manager.start_job(job_id)
    converter.finish("a")
    converter.finish("b")
    await manager.wait_job(job_id)
    manager.remove_job(job_id)
    types = [t for t in recorder.types(job_id) if t != "job.progress"]
    assert types == [
        "job.created",
        "job.started",
        "job.document_converted",
        "job.document_failed",
        "job.completed",
        "job.removed",
    ]
    converted = recorder.of("job.document_converted")[0]
    assert converted.document == {
        "document_id": "a",
        "status": "converted",
        "error": None,
        "duration_seconds": 0.0,
        "result": {"document_id": "a", "pages": 3},
    }
    failed = recorder.of("job.document_failed")[0]
    assert failed.document["status"] == "failed"
    assert failed.document["error"] == "RuntimeError: damaged"
    assert failed.job["files_failed"] == 1
    for event in recorder.events:
        assert event.job["job_id"] == job_id
        assert "documents" not in event.job


async def test_events_memory_wait_says_what_and_when(
    make_manager: Build,
    probe: StaticMemoryProbe,
    clock: ManualClock,
    recorder: Recorder,
) -> None:
    """memory_wait carries available, required, source, since, next check, place."""
    probe.available_bytes = 12 * GIB
    converter = Controlled()
    manager = make_manager(converter=converter, memory_required_gb=10)
    first = manager.create_job("s", ["a"])
    second = manager.create_job("s", ["b"])
    await manager.start_job(first)
    await manager.start_job(second)
    await settle()
    wait = recorder.of("job.memory_wait", second)[0]
    assert isinstance(wait, JobMemoryWait)
    memory = wait.memory
    assert memory["available_gb"] == 2
    assert memory["required_gb"] == 10
    assert memory["source"] == "static"
    assert memory["queue_position"] == 1
    assert memory["waiting_since"] == clock.now().isoformat()
    assert 0 < memory["next_check_in_seconds"] <= 1.0
    assert memory["message"].startswith("Waiting for memory: 2GB available, 10GB")
    assert wait.job["status"] == "waiting_for_memory"
    assert wait.job["memory_status"]["required_gb"] == 10

    await clock.advance(5)
    converter.finish("a")
    resumed = await recorder.wait_type("job.memory_resumed", second)
    assert resumed.memory["waited_seconds"] == 5.0
    assert resumed.job["status"] == "running"
    assert "memory_status" not in resumed.job


async def test_events_progress_throttled_per_job(
    make_manager: Build, clock: ManualClock, recorder: Recorder
) -> None:
    """A thousand progress reports in a second give at most ten progress events."""
    converter = Controlled()
    manager = make_manager(converter=converter)
    job_id = manager.create_job("s", ["a"])
    await manager.start_job(job_id)
    await converter.wait_started("a")
    before = len(recorder.of("job.progress"))
    for i in range(1, 1001):
        converter.callbacks["a"](i / 1001)
        if i % 10 == 0:
            await clock.advance(0.01)
    sent = len(recorder.of("job.progress")) - before
    assert 5 <= sent <= 11
    # The trailing value is not lost: it goes out when the interval ends.
    await clock.advance(0.2)
    assert recorder.of("job.progress")[-1].job["progress"] == round(1000 / 1001, 2)


async def test_events_progress_rate_is_configurable(
    make_manager: Build, clock: ManualClock, recorder: Recorder
) -> None:
    """progress_rate=2 allows two progress events a second."""
    converter = Controlled()
    manager = make_manager(converter=converter, progress_rate=2)
    job_id = manager.create_job("s", ["a"])
    await manager.start_job(job_id)
    await converter.wait_started("a")
    before = len(recorder.of("job.progress"))
    for i in range(1, 101):
        converter.callbacks["a"](i / 200)
        await clock.advance(0.01)
    sent = len(recorder.of("job.progress")) - before
    assert 1 <= sent <= 3


async def test_events_latest_progress_goes_before_lifecycle(
    make_manager: Build, clock: ManualClock, recorder: Recorder
) -> None:
    """A throttled progress value is flushed before the next lifecycle event."""
    converter = Controlled()
    manager = make_manager(converter=converter)
    job_id = manager.create_job("s", ["a", "b"])
    await manager.start_job(job_id)
    await converter.wait_started("a")
    converter.callbacks["a"](0.3)
    converter.callbacks["a"](0.7)
    converter.finish("a")
    await recorder.wait_type("job.document_converted", job_id)
    types = recorder.types(job_id)
    at = types.index("job.document_converted")
    assert types[at - 1] == "job.progress"
    flushed = recorder.of("job.progress", job_id)[-1]
    assert flushed.job["progress"] == 0.35
    assert flushed.job["files_completed"] == 0


async def test_events_subscription_filters_and_close(make_manager: Build) -> None:
    """Subscribers see only their session or job, and nothing after close."""
    converter = Controlled()
    manager = make_manager(converter=converter)
    mine: list[str] = []
    by_job: list[str] = []
    job_a = manager.create_job("mine", ["a"])
    sub = manager.subscribe(lambda e: mine.append(e.job_id), session_id="mine")
    manager.subscribe(lambda e: by_job.append(e.type), job_id=job_a)
    manager.create_job("other", ["b"])
    await manager.start_job(job_a)
    sub.close()
    converter.finish("a")
    await manager.wait_job(job_a)
    assert mine == [job_a]
    assert by_job[0] == "job.started" and by_job[-1] == "job.completed"


async def test_events_failing_subscriber_does_not_stop_others(
    make_manager: Build, recorder: Recorder
) -> None:
    """An exception in one subscriber is logged; the job and the others go on."""
    converter = Controlled()
    manager = make_manager(converter=converter)
    calls: list[str] = []

    def broken(event: JobEvent) -> None:
        calls.append(event.type)
        raise RuntimeError("subscriber bug")

    manager.subscribe(broken)
    job_id = manager.create_job("s", ["a"])
    await manager.start_job(job_id)
    converter.finish("a")
    job = await manager.wait_job(job_id)
    assert job.status.value == "completed"
    assert calls[-1] == recorder.types(job_id)[-1] == "job.completed"


async def test_events_none_dropped_under_load(
    make_manager: Build, recorder: Recorder
) -> None:
    """Many jobs at once: every job emits each lifecycle event exactly once."""

    async def quick(doc_id: str, progress: Callable[[float], None]) -> dict:
        for i in range(100):
            progress(i / 100)
        await asyncio.sleep(0)
        return {}

    manager = make_manager(converter=quick, memory_required_gb=0.01, max_concurrent=8)
    job_ids = [manager.create_job("s", ["a", "b"]) for _ in range(50)]
    for job_id in job_ids:
        await manager.start_job(job_id)
    for job_id in job_ids:
        await manager.wait_job(job_id)
    for job_id in job_ids:
        lifecycle = [t for t in recorder.types(job_id) if t != "job.progress"]
        assert lifecycle == [
            "job.created",
            "job.started",
            "job.document_converted",
            "job.document_converted",
            "job.completed",
        ]
