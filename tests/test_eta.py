"""ETA: conversion time only, in-document progress, smoothing, history."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from streamer import (
    ConverterHistory,
    EtaEstimator,
    JobManager,
    ManualClock,
    StaticMemoryProbe,
    format_eta,
)
from streamer.memory import GIB

from .conftest import settle
from .helpers import Controlled

Build = Callable[..., JobManager]


class Ticks:
    """A monotonic clock a test sets by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_unknown_without_history() -> None:
    """With no finished document and no history, the ETA is None, not invented."""
    ticks = Ticks()
    eta = EtaEstimator(ticks, total=5, prior=None)
    assert eta.estimate(0, 0.0) is None
    eta.document_started()
    ticks.now = 30
    assert eta.estimate(0, 0.5) is None


def test_eta_uses_history_before_first_document() -> None:
    """Before the job finishes a document, the converter's history sets the pace."""
    eta = EtaEstimator(Ticks(), total=4, prior=12.0)
    assert eta.estimate(0, 0.0) == pytest.approx(48.0)


def test_eta_uses_progress_inside_document() -> None:
    """Half of the current document done counts as half a document less to go."""
    ticks = Ticks()
    eta = EtaEstimator(ticks, total=2, prior=None, smoothing=0)
    eta.document_started()
    ticks.now = 10
    eta.document_finished()
    eta.document_started()
    ticks.now = 15
    assert eta.estimate(1, 0.5) == pytest.approx(5.0)
    assert eta.estimate(1, 0.0) != eta.estimate(1, 0.5)


def test_eta_excludes_time_between_documents() -> None:
    """Time outside a document (a memory wait) neither counts nor moves the ETA."""
    ticks = Ticks()
    eta = EtaEstimator(ticks, total=3, prior=None)
    eta.document_started()
    ticks.now = 10
    eta.document_finished()
    before = eta.estimate(1, 0.0)
    ticks.now = 610  # ten minutes waiting for memory
    assert eta.estimate(1, 0.0) == before == pytest.approx(20.0)
    eta.document_started()
    ticks.now = 620
    eta.document_finished()
    assert eta.estimate(2, 0.0) == pytest.approx(10.0, rel=0.05)


def test_eta_is_smoothed() -> None:
    """A sudden leap in reported progress moves the ETA gradually, not at once."""
    ticks = Ticks()
    eta = EtaEstimator(ticks, total=10, prior=None)
    for _ in range(3):
        eta.document_started()
        ticks.now += 10
        eta.document_finished()
    eta.document_started()
    steady = eta.estimate(3, 0.0)
    assert steady == pytest.approx(70.0)
    ticks.now += 1
    after_leap = eta.estimate(3, 0.9)
    assert after_leap is not None and steady is not None
    raw = (10 - 3.9) * (31 / 3.9)
    # The raw figure dropped by about 22 s; the shown one by far less.
    assert steady - raw > 20
    assert steady - after_leap < 6

    # Held long enough, the shown figure settles near the fresh one.
    for _ in range(30):
        ticks.now += 1
        latest = eta.estimate(3, 0.9)
    fresh = (10 - 3.9) * (61 / 3.9)
    assert latest == pytest.approx(fresh, rel=0.15)


def test_eta_history_is_weighted_mean() -> None:
    """History follows a converter that changes speed, and skips bad figures."""
    history = ConverterHistory(weight=0.5)
    assert history.seconds_per_document("c") is None
    history.record("c", 10)
    history.record("c", 20)
    history.record("c", float("nan"))
    history.record("c", -1)
    assert history.seconds_per_document("c") == 15
    copy = ConverterHistory()
    copy.load(history.to_dict())
    assert copy.seconds_per_document("c") == 15
    with pytest.raises(ValueError, match="weight"):
        ConverterHistory(weight=0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, None),
        (0, "0 seconds"),
        (1, "1 second"),
        (59, "59 seconds"),
        (60, "1 minute"),
        (150, "2 minutes"),
        (3600 + 5 * 60, "1h 5m"),
    ],
)
def test_eta_human_form(seconds: int | None, text: str | None) -> None:
    """ETAs read as people say them."""
    assert format_eta(seconds) == text


async def _timed(clock: ManualClock, seconds: float) -> Callable[..., object]:
    async def converter(doc_id: str, progress: Callable[[float], None]) -> dict:
        await clock.sleep(seconds)
        return {}

    return converter


async def test_eta_job_uses_previous_jobs_of_same_converter(
    make_manager: Build, clock: ManualClock
) -> None:
    """A second job of a converter starts with an ETA from the first job's pace."""
    manager = make_manager()
    converter = await _timed(clock, 20)
    first = manager.create_job("s", ["a"])
    await manager.start_job(first, converter)
    assert manager.get_job(first).estimate_remaining_time() is None
    await settle()
    await clock.advance(20)
    await manager.wait_job(first)

    second = manager.create_job("s", ["b", "c", "d"])
    await manager.start_job(second, converter)
    job = manager.get_job(second)
    assert job is not None
    assert job.to_dict()["eta_seconds"] == 60
    assert job.to_dict()["eta_human"] == "1 minute"


async def test_eta_job_ignores_memory_wait(
    make_manager: Build, clock: ManualClock, probe: StaticMemoryProbe
) -> None:
    """Ten minutes spent waiting for memory do not inflate the job's ETA."""
    manager = make_manager(memory_wait_timeout=3600, memory_required_gb=10)
    converter = await _timed(clock, 10)
    job_id = manager.create_job("s", ["a", "b", "c"])
    await manager.start_job(job_id, converter)
    await settle()
    await clock.advance(10)
    job = manager.get_job(job_id)
    assert job is not None and job.files_completed == 1

    # Memory runs short while the second document waits for admission.
    probe.available_bytes = 1 * GIB
    await clock.advance(10)
    assert job.files_completed == 2
    await settle()
    assert job.status.value == "waiting_for_memory"
    for _ in range(20):
        await clock.advance(30)
    assert job.to_dict()["eta_seconds"] == 10
    probe.available_bytes = 24 * GIB
    await clock.advance(30)
    await clock.advance(10)
    finished = await asyncio.wait_for(manager.wait_job(job_id), 5)
    assert finished.status.value == "completed"
    assert finished.to_dict()["eta_seconds"] == 0


async def test_eta_of_finished_job(make_manager: Build) -> None:
    """A completed job has nothing left; a cancelled one has no ETA."""
    converter = Controlled()
    manager = make_manager(converter=converter)
    done = manager.create_job("s", ["a"])
    await manager.start_job(done)
    converter.finish("a")
    assert (await manager.wait_job(done)).estimate_remaining_time() == 0
    cancelled = manager.create_job("s", ["b"])
    await manager.cancel_job(cancelled)
    assert manager.get_job(cancelled).estimate_remaining_time() is None
