"""The job manager, and each defect of the original module it fixes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from streamer import (
    ConversionCancelled,
    ConversionJob,
    DocumentStatus,
    InvalidTransition,
    JobManager,
    JobNotFound,
    JobStatus,
    ManualClock,
    StaticMemoryProbe,
    SystemClock,
    get_job_manager,
    set_job_manager,
)
from streamer.errors import ShuttingDown
from streamer.memory import GIB

from .conftest import TIMEOUT, Recorder, settle
from .helpers import Controlled

Build = Callable[..., JobManager]


async def test_manager_original_surface_still_works(make_manager: Build) -> None:
    """Code written against the original (create, start, get, list) runs unchanged."""
    manager = make_manager()

    async def converter(doc_id: str, progress: Callable[[float], None]) -> dict:
        progress(0.5)
        return {"doc": doc_id}

    job_id = manager.create_job("s1", ["a", "b"])
    assert job_id.startswith("job-")
    await manager.start_job(job_id, converter)
    job = await manager.wait_job(job_id)
    assert manager.get_job(job_id) is job
    assert manager.list_jobs("s1") == [job]
    assert manager.list_jobs("other") == []
    assert job.status is JobStatus.COMPLETED
    assert job.files_completed == 2
    original_keys = {
        "job_id", "session_id", "status", "progress", "current_file",
        "files_completed", "files_total", "started_at", "completed_at",
        "error", "eta_seconds", "eta_human",
    }  # fmt: skip
    assert original_keys <= job.to_dict().keys()


async def test_manager_bare_instance_requires_ten_gb() -> None:
    """A bare JobManager() keeps the original's 10 GB per document."""
    manager = JobManager()
    job = manager.get_job(manager.create_job("s", ["a"]))
    assert job is not None
    assert job.memory_required_gb == 10
    assert job.to_dict()["memory_required_gb"] == 10


async def test_manager_start_unknown_or_started_job_raises(make_manager: Build) -> None:
    """Starting a missing or already started job raises a ValueError as before."""
    manager = make_manager(converter=Controlled())
    with pytest.raises(ValueError, match="not found"):
        await manager.start_job("job-missing")
    with pytest.raises(JobNotFound):
        await manager.start_job("job-missing")
    job_id = manager.create_job("s", ["a"])
    await manager.start_job(job_id)
    with pytest.raises(InvalidTransition, match="running"):
        await manager.start_job(job_id)


async def test_manager_rejects_empty_job(make_manager: Build) -> None:
    """A job without documents is refused when it is created."""
    with pytest.raises(ValueError, match="at least one document"):
        make_manager().create_job("s", [])


# -- defect 1: admission races ------------------------------------------------


async def test_manager_simultaneous_starts_admit_what_fits(
    make_manager: Build, probe: StaticMemoryProbe
) -> None:
    """Ten jobs started at once with 24 GiB free and 10 GiB each: two convert."""
    probe.available_bytes = 24 * GIB
    converter = Controlled()
    manager = make_manager(converter=converter, memory_required_gb=10)
    job_ids = [manager.create_job("s", [f"d{i}"]) for i in range(10)]
    await asyncio.gather(*(manager.start_job(j) for j in job_ids))
    await settle()

    assert converter.active == 2
    statuses = [manager.get_job(j).status for j in job_ids]
    assert statuses.count(JobStatus.RUNNING) == 2
    assert statuses.count(JobStatus.WAITING_FOR_MEMORY) == 8
    waiting = [manager.get_job(j) for j in job_ids][2:]
    for job in waiting:
        assert job is not None
        assert job.to_dict()["memory_status"]["required_gb"] == 10


# -- defect 2: backoff, wake on release, FIFO ---------------------------------


async def test_manager_memory_checks_back_off_exponentially(
    make_manager: Build,
    probe: StaticMemoryProbe,
    clock: ManualClock,
    recorder: Recorder,
) -> None:
    """Checks while waiting come at growing intervals, capped, not every 30 s."""
    probe.available_bytes = 2 * GIB
    manager = make_manager(converter=Controlled(), memory_required_gb=10)
    job_id = manager.create_job("s", ["a"])
    await manager.start_job(job_id)
    await settle()
    for _ in range(12):
        await clock.advance(31)
    delays = [e.memory["next_check_in_seconds"] for e in recorder.of("job.memory_wait")]
    assert len(delays) >= 6
    assert delays[0] <= 1.0
    assert delays[1] > delays[0] and delays[2] > delays[1] and delays[3] > delays[2]
    assert max(delays) <= 30.0
    assert delays[-1] > 15.0


async def test_manager_release_wakes_waiter_at_once(
    make_manager: Build, probe: StaticMemoryProbe, clock: ManualClock
) -> None:
    """Memory freed by a finished document is used at once, with no clock advance."""
    probe.available_bytes = 12 * GIB
    converter = Controlled()
    manager = make_manager(converter=converter, memory_required_gb=10)
    first = manager.create_job("s", ["a"])
    second = manager.create_job("s", ["b"])
    await manager.start_job(first)
    await manager.start_job(second)
    await settle()
    assert converter.started == ["a"]
    assert manager.get_job(second).status is JobStatus.WAITING_FOR_MEMORY

    converter.finish("a")
    await converter.wait_started("b")
    assert clock.monotonic() == 0.0
    assert manager.get_job(second).status is JobStatus.RUNNING


async def test_manager_waiters_served_in_arrival_order(
    make_manager: Build, probe: StaticMemoryProbe, clock: ManualClock
) -> None:
    """A large waiting job is not overtaken by small ones that arrived later."""
    probe.available_bytes = 12 * GIB
    converter = Controlled()
    manager = make_manager(converter=converter)
    running = manager.create_job("s", ["r"], memory_required_gb=8)
    large = manager.create_job("s", ["large"], memory_required_gb=10)
    small = manager.create_job("s", ["small"], memory_required_gb=2)
    for job_id in (running, large, small):
        await manager.start_job(job_id)
        await settle()
    await clock.advance(60)

    # The small one would fit beside the running one, but it is queued behind.
    assert converter.started == ["r"]
    converter.finish("r")
    await converter.wait_started("large")
    assert converter.started == ["r", "large", "small"]


# -- defect 4 and 5: outcomes, failures, counts -------------------------------


async def test_manager_all_documents_failed_is_failed(make_manager: Build) -> None:
    """A job whose every document failed ends FAILED, not COMPLETED."""
    converter = Controlled()
    converter.fail = {"a": "bad header", "b": "no pages"}
    manager = make_manager(converter=converter)
    job_id = manager.create_job("s", ["a", "b"])
    await manager.start_job(job_id)
    converter.finish("a")
    converter.finish("b")
    job = await manager.wait_job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.files_failed == 2
    assert job.error is not None and "2 of 2 documents failed" in job.error
    assert "bad header" in job.error


async def test_manager_partial_failure_completes_and_says_why(
    make_manager: Build,
) -> None:
    """Some failures: COMPLETED, with how many failed and why, and each outcome."""
    converter = Controlled()
    converter.fail = {"b": "encrypted"}
    manager = make_manager(converter=converter)
    job_id = manager.create_job("s", ["a", "b", "c"])
    await manager.start_job(job_id)
    for doc in "abc":
        converter.finish(doc)
    job = await manager.wait_job(job_id)
    assert job.status is JobStatus.COMPLETED
    assert (job.files_converted, job.files_failed, job.files_completed) == (2, 1, 3)
    assert job.error == "1 of 3 documents failed: b: RuntimeError: encrypted"
    outcomes = {o.document_id: o for o in job.documents}
    assert outcomes["a"].status is DocumentStatus.CONVERTED
    assert outcomes["a"].result == {"document_id": "a", "pages": 3}
    assert outcomes["b"].status is DocumentStatus.FAILED
    assert outcomes["b"].error == "RuntimeError: encrypted"
    assert outcomes["a"].duration_seconds is not None


async def test_manager_progress_counts_failed_documents(make_manager: Build) -> None:
    """After a failure, files_completed and progress still advance."""
    converter = Controlled()
    converter.fail = {"a": "boom"}
    manager = make_manager(converter=converter)
    job_id = manager.create_job("s", ["a", "b"])
    await manager.start_job(job_id)
    converter.finish("a")
    await converter.wait_started("b")
    job = manager.get_job(job_id)
    assert job is not None
    assert job.files_completed == 1
    assert job.progress == pytest.approx(0.5)


async def test_manager_memory_timeout_fails_job_and_leaves_rest_unreached(
    make_manager: Build, probe: StaticMemoryProbe, clock: ManualClock
) -> None:
    """A 600 s memory wait takes no real time and fails the job with a clear error."""
    probe.available_bytes = 3 * GIB
    manager = make_manager(converter=Controlled(), memory_required_gb=10)
    job_id = manager.create_job("s", ["a", "b"])
    started = time.monotonic()
    await manager.start_job(job_id)
    await settle()
    await clock.advance(601)
    job = await manager.wait_job(job_id)
    assert time.monotonic() - started < 1.0
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert "timed out after 600 s" in job.error
    assert "3.0 GB free" in job.error and "10.0 GB required" in job.error
    assert [o.status for o in job.documents] == [DocumentStatus.PENDING] * 2
    assert job.completed_at is not None


async def test_manager_impossible_request_fails_at_once(
    make_manager: Build, probe: StaticMemoryProbe
) -> None:
    """A document that needs more than exists in all fails without waiting."""
    probe.total_bytes = 16 * GIB
    manager = make_manager(converter=Controlled(), memory_required_gb=20)
    job_id = manager.create_job("s", ["a"])
    await manager.start_job(job_id)
    job = await manager.wait_job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and "can never be admitted" in job.error


# -- defect 7: cancellation ----------------------------------------------------


async def test_manager_cancel_pending_job(
    make_manager: Build, recorder: Recorder
) -> None:
    """A job that was never started can be cancelled and gets completed_at."""
    manager = make_manager()
    job_id = manager.create_job("s", ["a"])
    assert await manager.cancel_job(job_id) is True
    job = manager.get_job(job_id)
    assert job is not None
    assert job.status is JobStatus.CANCELLED
    assert job.completed_at is not None
    assert recorder.types(job_id)[-1] == "job.cancelled"
    assert await manager.cancel_job(job_id) is False


async def test_manager_cancelled_job_is_cleaned_up(
    make_manager: Build, clock: ManualClock
) -> None:
    """Cancelled jobs have completed_at, so cleanup_completed removes them."""
    converter = Controlled()
    manager = make_manager(converter=converter)
    job_id = manager.create_job("s", ["a"])
    await manager.start_job(job_id)
    await converter.wait_started("a")
    await manager.cancel_job(job_id)
    assert manager.cleanup_completed(max_age_seconds=3600) == 0
    await clock.advance(3601)
    assert manager.cleanup_completed(max_age_seconds=3600) == 1
    assert manager.get_job(job_id) is None


async def test_manager_cancel_running_lets_converter_clean_up(
    make_manager: Build,
) -> None:
    """Cancelling a converting job runs the converter's cleanup and frees memory."""
    converter = Controlled()
    manager = make_manager(converter=converter)
    job_id = manager.create_job("s", ["a", "b"])
    await manager.start_job(job_id)
    await converter.wait_started("a")
    assert manager.gate.statistics().reservations == 1
    started = time.monotonic()
    assert await manager.cancel_job(job_id) is True
    assert time.monotonic() - started < 0.1
    job = manager.get_job(job_id)
    assert job is not None
    assert job.status is JobStatus.CANCELLED
    assert converter.cleaned == ["a"]
    assert [o.status for o in job.documents] == [
        DocumentStatus.CANCELLED,
        DocumentStatus.PENDING,
    ]
    assert manager.gate.statistics().reservations == 0


async def test_manager_cancel_while_waiting_for_memory(
    make_manager: Build, probe: StaticMemoryProbe
) -> None:
    """A job waiting for memory is cancelled at once and leaves the queue."""
    probe.available_bytes = 12 * GIB
    converter = Controlled()
    manager = make_manager(converter=converter, memory_required_gb=10)
    holder = manager.create_job("s", ["a"])
    waiter = manager.create_job("s", ["b"])
    await manager.start_job(holder)
    await manager.start_job(waiter)
    await settle()
    assert manager.gate.statistics().waiting == 1
    started = time.monotonic()
    await manager.cancel_job(waiter)
    assert time.monotonic() - started < 0.1
    assert manager.get_job(waiter).status is JobStatus.CANCELLED
    assert manager.gate.statistics().waiting == 0
    converter.finish("a")
    await manager.wait_job(holder)
    assert converter.started == ["a"]


async def test_manager_cancel_finished_job_returns_false(make_manager: Build) -> None:
    """Cancelling a job that already ended changes nothing."""
    converter = Controlled()
    manager = make_manager(converter=converter)
    job_id = manager.create_job("s", ["a"])
    await manager.start_job(job_id)
    converter.finish("a")
    await manager.wait_job(job_id)
    assert await manager.cancel_job(job_id) is False
    assert manager.get_job(job_id).status is JobStatus.COMPLETED


# -- defect 9: concurrency, progress values, sync converters, timeouts ---------


async def test_manager_concurrency_limit(make_manager: Build) -> None:
    """With plenty of memory, max_concurrent bounds documents converting at once."""
    converter = Controlled()
    manager = make_manager(
        converter=converter, memory_required_gb=0.1, max_concurrent=2
    )
    job_ids = [manager.create_job("s", [f"d{i}"]) for i in range(5)]
    for job_id in job_ids:
        await manager.start_job(job_id)
    await settle()
    assert converter.active == 2
    assert all(manager.get_job(j).status is JobStatus.RUNNING for j in job_ids)
    for i in range(5):
        converter.finish(f"d{i}")
    for job_id in job_ids:
        await manager.wait_job(job_id)
    assert converter.peak == 2


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.2, float("nan"), 0.3], 0.3),
        ([0.4, -1.0], 0.4),
        ([0.5, 7.0], 1.0),
        ([0.6, 0.1], 0.6),
        ([1, 0], 1.0),
        ([float("inf")], 1.0),
    ],
)
async def test_manager_progress_values_are_validated(
    make_manager: Build, clock: ManualClock, values: list[float], expected: float
) -> None:
    """NaN is ignored, values are clamped to 0..1 and never go backwards."""
    converter = Controlled()
    manager = make_manager(converter=converter)
    job_id = manager.create_job("s", ["a", "b"])
    await manager.start_job(job_id)
    await converter.wait_started("a")
    for value in values:
        converter.callbacks["a"](value)

    # The job's own figure catches up when the throttled event goes out.
    await clock.advance(0.2)
    job = manager.get_job(job_id)
    assert job is not None
    assert job.documents[0].progress == expected
    assert job.progress == pytest.approx(expected / 2)
    assert 0.0 <= job.to_dict()["progress"] <= 1.0


async def test_manager_progress_of_wrong_type_fails_document(
    make_manager: Build,
) -> None:
    """A progress value that is no number is a clear error for that document."""

    async def converter(doc_id: str, progress: Callable[[Any], None]) -> dict:
        progress("half")
        return {}

    manager = make_manager(converter=converter)
    job_id = manager.create_job("s", ["a"])
    await manager.start_job(job_id)
    job = await manager.wait_job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.documents[0].error is not None
    assert "progress must be a number" in job.documents[0].error


async def test_manager_sync_converter_does_not_block_loop(make_manager: Build) -> None:
    """A synchronous converter runs in a thread while the event loop keeps going."""
    release = threading.Event()
    threads: list[str] = []

    def converter(doc_id: str, progress: Callable[[float], None]) -> dict:
        threads.append(threading.current_thread().name)
        progress(0.5)
        release.wait(TIMEOUT)
        return {"sync": True}

    manager = make_manager(converter=converter)
    job_id = manager.create_job("s", ["a"])
    await manager.start_job(job_id)

    # The loop still runs its own work while the converter blocks its thread.
    ticks = 0
    for _ in range(5):
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 5
    release.set()
    job = await manager.wait_job(job_id)
    assert job.status is JobStatus.COMPLETED
    assert job.documents[0].result == {"sync": True}
    assert threads and threads[0] != threading.current_thread().name


async def test_manager_async_converter_timeout(
    make_manager: Build, clock: ManualClock
) -> None:
    """A converter that runs past the document timeout fails that document only."""
    converter = Controlled()
    manager = make_manager(converter=converter, document_timeout=30)
    job_id = manager.create_job("s", ["hangs", "ok"])
    await manager.start_job(job_id)
    await converter.wait_started("hangs")
    await clock.advance(31)
    await converter.wait_started("ok")
    converter.finish("ok")
    job = await manager.wait_job(job_id)
    assert job.status is JobStatus.COMPLETED
    assert job.documents[0].status is DocumentStatus.FAILED
    assert job.documents[0].error == "DocumentTimeout: conversion timed out after 30 s"
    assert converter.cleaned[0] == "hangs"


async def test_manager_sync_converter_timeout_keeps_memory_until_thread_ends(
    make_manager: Build, clock: ManualClock
) -> None:
    """A hung synchronous converter is abandoned at its timeout; its memory stays
    reserved until its thread returns, and its next progress report raises."""
    release = threading.Event()
    raised: list[BaseException] = []

    def converter(doc_id: str, progress: Callable[[float], None]) -> dict:
        release.wait(TIMEOUT)
        try:
            progress(0.9)
        except ConversionCancelled as exc:
            raised.append(exc)
            raise
        return {}

    manager = make_manager(converter=converter, document_timeout=10)
    job_id = manager.create_job("s", ["a"])
    await manager.start_job(job_id)
    await settle()
    await clock.advance(11)
    job = await manager.wait_job(job_id)
    assert job.status is JobStatus.FAILED
    assert manager.gate.statistics().reservations == 1
    release.set()
    async with asyncio.timeout(TIMEOUT):
        while manager.gate.statistics().reservations:
            await asyncio.sleep(0.005)
    assert raised and isinstance(raised[0], ConversionCancelled)


async def test_manager_cancel_sync_converter_raises_into_callback(
    make_manager: Build,
) -> None:
    """Cancelling a job stops a synchronous converter at its next progress call."""
    started = threading.Event()
    stop = threading.Event()
    calls: list[str] = []

    def converter(doc_id: str, progress: Callable[[float], None]) -> dict:
        started.set()
        try:
            while not stop.wait(0.005):
                progress(0.1)
        except ConversionCancelled:
            calls.append("cancelled")
            raise
        finally:
            calls.append("cleanup")
        return {}

    manager = make_manager(converter=converter)
    job_id = manager.create_job("s", ["a"])
    await manager.start_job(job_id)
    await asyncio.to_thread(started.wait, TIMEOUT)
    t0 = time.monotonic()
    await manager.cancel_job(job_id)
    assert time.monotonic() - t0 < 0.1
    assert manager.get_job(job_id).status is JobStatus.CANCELLED
    async with asyncio.timeout(TIMEOUT):
        while "cleanup" not in calls:
            await asyncio.sleep(0.005)
    stop.set()
    assert calls == ["cancelled", "cleanup"]


# -- defect 10: the singleton --------------------------------------------------


def test_manager_global_singleton_is_replaceable() -> None:
    """get_job_manager() returns what set_job_manager() installed."""
    mine = JobManager(memory_required_gb=2)
    previous = set_job_manager(mine)
    try:
        assert get_job_manager() is mine
        set_job_manager(None)
        fresh = get_job_manager()
        assert fresh is not mine and fresh.memory_required_gb == 10
    finally:
        set_job_manager(previous)


# -- removal ---------------------------------------------------------------------


async def test_manager_remove_job_only_when_finished(
    make_manager: Build, recorder: Recorder
) -> None:
    """remove_job refuses an active job and emits job.removed for a finished one."""
    converter = Controlled()
    manager = make_manager(converter=converter)
    job_id = manager.create_job("s", ["a"])
    await manager.start_job(job_id)
    with pytest.raises(InvalidTransition, match="from running to removed"):
        manager.remove_job(job_id)
    converter.finish("a")
    await manager.wait_job(job_id)
    manager.remove_job(job_id)
    assert manager.get_job(job_id) is None
    assert recorder.types(job_id)[-1] == "job.removed"
    with pytest.raises(JobNotFound):
        manager.remove_job(job_id)


async def test_manager_cancel_right_after_start(make_manager: Build) -> None:
    """A job cancelled in the same instant it was started still ends cancelled."""
    converter = Controlled()
    manager = make_manager(converter=converter)
    job_id = manager.create_job("s", ["a"])
    await manager.start_job(job_id)
    assert await manager.cancel_job(job_id) is True
    job = manager.get_job(job_id)
    assert job is not None
    assert job.status is JobStatus.CANCELLED
    assert job.completed_at is not None
    assert converter.started == []


async def test_manager_document_memory_overrides_job_figure(
    make_manager: Build, probe: StaticMemoryProbe
) -> None:
    """A per-document memory figure is what the gate reserves for that document."""
    probe.available_bytes = 24 * GIB
    converter = Controlled()
    sizes = {"small": 1 * GIB, "huge": 20 * GIB}
    manager = make_manager(
        converter=converter,
        memory_required_gb=10,
        document_memory=lambda job, doc: sizes.get(doc),
    )
    first = manager.create_job("s", ["huge"])
    second = manager.create_job("s", ["small", "plain"])
    await manager.start_job(first)
    await manager.start_job(second)
    await converter.wait_started("small")
    assert manager.gate.statistics().reserved_bytes == 21 * GIB
    converter.finish("small")
    await settle()

    # "plain" declares nothing, so it needs the job's 10 GB: 20 + 10 > 24.
    assert manager.get_job(second).status is JobStatus.WAITING_FOR_MEMORY
    converter.finish("huge")
    await converter.wait_started("plain")


# -- restart: restore, resume, suspend -------------------------------------------


def stopped_midway(manager: JobManager, document_ids: list[str]) -> ConversionJob:
    """A job as a store kept it when its process died in its second document."""
    job = ConversionJob(
        job_id="job-restored",
        session_id="ses-a",
        document_ids=document_ids,
        status=JobStatus.RUNNING,
        created_at=manager.clock.now(),
        started_at=manager.clock.now(),
        files_completed=1,
        files_converted=1,
    )
    job.documents[0].status = DocumentStatus.CONVERTED
    job.documents[0].result = {"text_file": "a/kept.txt"}
    job.documents[0].duration_seconds = 2.0
    job.documents[1].status = DocumentStatus.CONVERTING
    return ConversionJob.from_record(job.to_record())


async def test_manager_resume_converts_only_what_had_not_ended(
    make_manager: Build, recorder: Recorder
) -> None:
    """A resumed job skips ended documents and converts the cut-short one again."""
    manager = make_manager()
    converter = Controlled()
    job = stopped_midway(manager, ["a", "b", "c"])
    manager.restore(job)
    await manager.resume_job(
        job.job_id, converter, reason="the server stopped unexpectedly"
    )
    converter.finish("b")
    converter.finish("c")
    await manager.wait_job(job.job_id)

    assert converter.started == ["b", "c"]
    assert job.status is JobStatus.COMPLETED
    assert (job.files_converted, job.files_completed) == (3, 3)
    assert job.documents[0].result == {"text_file": "a/kept.txt"}
    resumed = recorder.of("job.resumed", job.job_id)
    assert len(resumed) == 1
    assert resumed[0].to_dict()["reason"] == "the server stopped unexpectedly"
    assert resumed[0].to_dict()["documents_done"] == 1
    assert "job.started" not in recorder.types(job.job_id)


async def test_manager_resumed_eta_ignores_documents_done_before(
    make_manager: Build, clock: ManualClock
) -> None:
    """A resumed job's ETA comes from what it converts now, not from zero time."""
    manager = make_manager()
    converter = Controlled()
    job = stopped_midway(manager, ["a", "b", "c"])
    manager.restore(job)
    await manager.resume_job(job.job_id, converter, reason="restart")
    await converter.wait_started("b")
    await clock.advance(10)
    converter.finish("b")
    await converter.wait_started("c")

    # One document of 10 s converted in this run, one to go.
    assert job.estimate_remaining_time() == 10


async def test_manager_suspend_lets_a_document_finish_within_grace(
    make_manager: Build, recorder: Recorder
) -> None:
    """A document that ends within the grace is kept; the next one never starts."""
    manager = make_manager(clock=SystemClock())
    converter = Controlled()
    job_id = manager.create_job("ses-a", ["a", "b"])
    await manager.start_job(job_id, converter)
    await converter.wait_started("a")
    suspending = asyncio.create_task(manager.suspend(grace=TIMEOUT))
    await settle()
    converter.finish("a")
    assert await suspending == 1

    job = manager.get_job(job_id)
    assert job is not None
    assert converter.started == ["a"]
    assert not job.status.is_final
    assert [o.status for o in job.documents] == [
        DocumentStatus.CONVERTED,
        DocumentStatus.PENDING,
    ]
    assert job.interrupted == "the server was shut down"
    assert recorder.types(job_id)[-1] == "job.suspended"


async def test_manager_suspend_stops_a_document_past_grace(
    make_manager: Build, recorder: Recorder
) -> None:
    """A document still converting after the grace is stopped and pending again."""
    manager = make_manager(clock=SystemClock())
    converter = Controlled()
    job_id = manager.create_job("ses-a", ["a"])
    await manager.start_job(job_id, converter)
    await converter.wait_started("a")
    await manager.suspend(grace=0.01)

    job = manager.get_job(job_id)
    assert job is not None
    assert converter.cleaned == ["a"]
    assert job.documents[0].status is DocumentStatus.PENDING
    assert job.status is not JobStatus.CANCELLED
    assert "job.cancelled" not in recorder.types(job_id)
    assert recorder.of("job.suspended", job_id)[0].to_dict()["reason"] == (
        "the server was shut down"
    )


async def test_manager_suspend_stops_memory_waits_at_once(
    make_manager: Build, probe: StaticMemoryProbe, recorder: Recorder
) -> None:
    """A job waiting for memory is suspended without waiting for the grace."""
    probe.available_bytes = 1 * GIB
    manager = make_manager()
    job_id = manager.create_job("ses-a", ["a"])
    await manager.start_job(job_id, Controlled())
    await recorder.wait_type("job.memory_wait", job_id)
    async with asyncio.timeout(TIMEOUT):
        await manager.suspend(grace=3600)

    job = manager.get_job(job_id)
    assert job is not None and not job.status.is_final
    assert recorder.types(job_id)[-1] == "job.suspended"
    assert manager.gate.statistics().waiting == 0


async def test_manager_starts_nothing_once_suspended(make_manager: Build) -> None:
    """After a suspend, starting a job raises ShuttingDown and it stays pending."""
    manager = make_manager()
    await manager.suspend(grace=0)
    job_id = manager.create_job("ses-a", ["a"])
    with pytest.raises(ShuttingDown, match="stopping"):
        await manager.start_job(job_id, Controlled())
    job = manager.get_job(job_id)
    assert job is not None and job.status is JobStatus.PENDING


async def test_manager_restore_refuses_a_known_job(make_manager: Build) -> None:
    """Restoring a job under an id the manager already has is an error."""
    manager = make_manager()
    job_id = manager.create_job("ses-a", ["a"])
    job = manager.get_job(job_id)
    assert job is not None
    with pytest.raises(ValueError, match="already exists"):
        manager.restore(ConversionJob.from_record(job.to_record()))


async def test_manager_remove_finished_returns_the_jobs(
    make_manager: Build, clock: ManualClock
) -> None:
    """remove_finished hands back the removed jobs, for their files to go too."""
    manager = make_manager()
    converter = Controlled()
    converter.finish("a")
    job_id = manager.create_job("ses-a", ["a"])
    await manager.start_job(job_id, converter)
    await manager.wait_job(job_id)
    await clock.advance(100)

    assert manager.remove_finished(200) == []
    removed = manager.remove_finished(50)
    assert [job.job_id for job in removed] == [job_id]
    assert manager.get_job(job_id) is None
