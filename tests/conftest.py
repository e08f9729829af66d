"""Shared fixtures: a manual clock, a fake memory probe and an event recorder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from streamer import JobEvent, JobManager, ManualClock, StaticMemoryProbe
from streamer.memory import GIB

# Every wait in the tests derives from this, so a slow machine can raise it.
TIMEOUT = 5.0


class Recorder:
    """Collects a manager's events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[JobEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: JobEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def types(self, job_id: str | None = None) -> list[str]:
        return [e.type for e in self.events if job_id is None or e.job_id == job_id]

    def of(self, kind: str, job_id: str | None = None) -> list[JobEvent]:
        return [
            e
            for e in self.events
            if e.type == kind and (job_id is None or e.job_id == job_id)
        ]

    async def wait_for(
        self, predicate: Callable[[JobEvent], bool], timeout: float = TIMEOUT
    ) -> JobEvent:
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                self._changed.clear()
                await self._changed.wait()

    async def wait_type(
        self, kind: str, job_id: str | None = None, timeout: float = TIMEOUT
    ) -> JobEvent:
        return await self.wait_for(
            lambda e: e.type == kind and (job_id is None or e.job_id == job_id),
            timeout,
        )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def probe() -> StaticMemoryProbe:
    return StaticMemoryProbe(24 * GIB, total_bytes=32 * GIB, source="static")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def make_manager(
    clock: ManualClock, probe: StaticMemoryProbe, recorder: Recorder
) -> AsyncIterator[Callable[..., JobManager]]:
    """Build managers on the manual clock and fake probe, recording their events."""
    managers: list[JobManager] = []

    def build(**kwargs: Any) -> JobManager:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("memory_probe", probe)
        manager = JobManager(**kwargs)
        manager.subscribe(recorder)
        managers.append(manager)
        return manager

    yield build
    for manager in managers:
        await manager.aclose()


async def settle(rounds: int = 50) -> None:
    """Let ready tasks run to their next real wait."""
    for _ in range(rounds):
        await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: Any) -> None:
    """Give each test its own default data directory and a short shutdown grace.

    An app built without ``data_dir`` keeps its database in the per-user data
    directory, which tests must neither read nor leave behind; and a test that
    ends with a job still converting should not wait the real grace period.
    """
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg")))
    monkeypatch.setattr("streamer.server.DEFAULT_SHUTDOWN_GRACE", 0.2)
