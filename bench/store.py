"""What persisting jobs costs the event fan-out, against no store at all.

``python bench/store.py`` takes about half a minute, ``--quick`` a few
seconds; ``--check`` makes a missed target exit 1.

Each variant runs the same work in one process: jobs of many short documents
whose converter reports progress as fast as it can, published by a
JobManager through the hub to 100 subscribers of one session, each drained
by a task of its own as a WebSocket endpoint drains it. What is measured is
deliveries per second: messages taken off the subscribers' queues.

* none: the manager and the hub alone, nothing written;
* sqlite: the same with the journal writing every job to a SQLite store in
  a temporary directory, on its own thread, as ``streamer serve`` does.

The work is made to be hard on the store: every document lasts a few
milliseconds, so a job changes state (and is written) hundreds of times a
second. The machine is shared and noisy, so every round runs both variants,
in an order that alternates, and the cost is the median of the rounds'
ratios. The target: persisting costs less than 10% of the delivery rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamer.hub import Hub
from streamer.job import ConversionJob
from streamer.journal import Journal
from streamer.manager import JobManager
from streamer.memory import StaticMemoryProbe
from streamer.sqlite import SqliteStore

_TARGET_COST = 0.10
_SESSION = "ses-bench"
_SUBSCRIBERS = 100
_JOBS = 4
# Far more memory than any request, so admission never waits.
_PLENTY_BYTES = 1 << 50
_STEPS = 10


@dataclass(frozen=True, slots=True)
class Settings:
    """How long to measure."""

    label: str
    rounds: int
    documents: int


FULL = Settings("full", rounds=7, documents=300)
QUICK = Settings("quick", rounds=3, documents=80)


@dataclass(frozen=True, slots=True)
class Run:
    """One variant's figures in one round."""

    deliveries: int
    seconds: float
    writes: int
    lifecycle: int

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds


async def _convert(
    document_id: str, progress: Callable[[float], None]
) -> dict[str, int]:
    # A few milliseconds of a document: progress as often as the loop allows.
    for step in range(1, _STEPS + 1):
        progress(step / _STEPS)
        await asyncio.sleep(0.0003)
    return {"pages": _STEPS}


async def _drain(subscription: object, counts: list[int], index: int) -> None:
    get = subscription.get  # type: ignore[attr-defined]
    while True:
        await get()
        counts[index] += 1


async def run_once(settings: Settings, folder: Path | None) -> Run:
    """One variant: ``folder`` holds the SQLite store, or None for no store."""
    manager = JobManager(
        memory_required_gb=0.001,
        max_concurrent=_JOBS,
        memory_probe=StaticMemoryProbe(_PLENTY_BYTES, total_bytes=_PLENTY_BYTES),
        progress_rate=1000.0,
    )
    hub = Hub(queue_size=4096, hard_limit=1 << 20)
    manager.subscribe(hub.publish)

    def snapshot() -> list[dict[str, object]]:
        return [job.to_dict() for job in manager.list_jobs(_SESSION)]

    lifecycle = [0]

    def count(event: object) -> None:
        if getattr(event, "type", "") != "job.progress":
            lifecycle[0] += 1

    manager.subscribe(count)
    journal = None
    store = None
    if folder is not None:
        store = SqliteStore(folder / "streamer.db")
        await store.open()
        journal = Journal(store, manager)

    counts = [0] * _SUBSCRIBERS
    subscriptions = [
        hub.subscribe(_SESSION, snapshot=snapshot) for _ in range(_SUBSCRIBERS)
    ]
    drains = [
        asyncio.create_task(_drain(s, counts, i)) for i, s in enumerate(subscriptions)
    ]
    await asyncio.sleep(0.01)
    before = sum(counts)

    started = time.perf_counter()
    ids = [
        manager.create_job(_SESSION, [f"d{j}-{i}" for i in range(settings.documents)])
        for j in range(_JOBS)
    ]
    for job_id in ids:
        await manager.start_job(job_id, _convert)
    jobs: list[ConversionJob] = [await manager.wait_job(job_id) for job_id in ids]
    # Every subscriber has had every message: each drain ran to its next get.
    while any(s.statistics().queued for s in subscriptions):  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    seconds = time.perf_counter() - started
    assert all(job.files_converted == settings.documents for job in jobs)

    writes = 0
    if journal is not None:
        await journal.flush()
        writes = journal.statistics().writes
        await journal.close()
    for task in drains:
        task.cancel()
    await asyncio.gather(*drains, return_exceptions=True)
    for subscription in subscriptions:
        subscription.close()
    await manager.aclose()
    return Run(sum(counts) - before, seconds, writes, lifecycle[0])


async def measure(settings: Settings) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {"none": [], "sqlite": []}
    for round_number in range(settings.rounds):
        order = ["none", "sqlite"] if round_number % 2 == 0 else ["sqlite", "none"]
        for variant in order:
            if variant == "none":
                runs["none"].append(await run_once(settings, None))
            else:
                with tempfile.TemporaryDirectory(prefix="streamer-bench-") as tmp:
                    runs["sqlite"].append(await run_once(settings, Path(tmp)))
    return runs


def report(settings: Settings, runs: dict[str, list[Run]]) -> bool:
    print(
        f"bench/store.py ({settings.label}): {settings.rounds} rounds, {_JOBS} jobs"
        f" of {settings.documents} documents, {_SUBSCRIBERS} subscribers;"
        f" Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    print(f"{'variant':<8} {'deliveries/s':>14} {'lifecycle ev':>13} {'writes':>7}")
    for name, variant_runs in runs.items():
        rate = statistics.median(r.rate for r in variant_runs)
        lifecycle = statistics.median(r.lifecycle for r in variant_runs)
        writes = statistics.median(r.writes for r in variant_runs)
        print(f"{name:<8} {rate:>14,.0f} {lifecycle:>13,.0f} {writes:>7,.0f}")

    ratios = [
        s.rate / n.rate for n, s in zip(runs["none"], runs["sqlite"], strict=True)
    ]
    cost = 1.0 - statistics.median(ratios)
    events = statistics.median(r.lifecycle for r in runs["sqlite"])
    seconds = statistics.median(r.seconds for r in runs["sqlite"])
    passed = cost < _TARGET_COST
    print(
        "per round, sqlite/none delivery rate: " + ", ".join(f"{r:.3f}" for r in ratios)
    )
    print(
        f"persisting costs {cost:+.1%} of the delivery rate"
        f" (target < {_TARGET_COST:.0%}: {'PASS' if passed else 'FAIL'});"
        f" {events / seconds:,.0f} job changes a second were written"
    )
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a run of a few seconds, for CI"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when the 10%% target is missed"
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    passed = report(settings, asyncio.run(measure(settings)))
    return 0 if passed or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
