"""What the engine's hot paths cost, in units of one ``await asyncio.sleep(0)``.

``python bench/engine.py`` takes under half a minute; ``--quick`` takes a few
seconds and suits CI; ``--check`` makes a missed acceptance target exit 1.

The machine this runs on is shared and noisy: its speed can nearly halve
within a second. So absolute times mean little, and every figure is a median
of many short rounds. In each round every variant runs once, in an order that
rotates from round to round, and ratios are taken between variants of the same
round before the median, so a change of speed shifts both sides of a ratio
alike. Garbage collection is off while a variant is timed, so a collection
that one variant triggers is not billed to another.

The acceptance target: a converter that calls its progress callback 100,000
times a second, doing about 10 us of pure-Python work between calls, runs less
than 5% slower with the engine's throttled callback than with a no-op function
in its place.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from streamer.events import JobEvent, JobProgress
from streamer.job import JobStatus
from streamer.manager import Converter, JobManager
from streamer.memory import GIB, StaticMemoryProbe, SystemMemoryProbe

Progress: TypeAlias = Callable[[float], None]
# A converter's timed inner part: given the progress callback, the ns it took.
Body: TypeAlias = Callable[[Progress], Awaitable[int]]
Mode: TypeAlias = Literal["bare", "noop", "engine"]

# Far more memory than any request, and requests far below it, so admission
# never waits and the figures show the gate's bookkeeping alone.
_PLENTY_BYTES = 1 << 50
_DOCUMENT_GB = 0.001

# Calls between two yields of the callback rounds. A real async converter has
# to yield now and then, and the throttle's timer can only fire when it does.
_CHUNK = 1_000

# A job's fixed cost is spread over this many times more documents than the
# other rounds' operations, so that it does not show as per-document cost.
_JOB_SCALE = 8

# The acceptance converter: 10 us of work per call is 100,000 calls a second.
# It switches variant every 200 calls, about 2 ms, and yields in between;
# variants that run close in time see the machine at the same speed.
_WORK_NS = 10_000
_WORK_CHUNK = 200
# Rounds whose bare work sets the next round's ``k``: about a tenth of a second.
_RECALIBRATE = 16
_TARGET_SLOWDOWN = 0.05


@dataclass(frozen=True, slots=True)
class Settings:
    """How long to measure: how many rounds, and how long each variant runs."""

    label: str
    rounds: int
    round_ns: int
    work_rounds: int


FULL = Settings("full", rounds=150, round_ns=3_000_000, work_rounds=1_500)
QUICK = Settings("quick", rounds=25, round_ns=2_000_000, work_rounds=300)


def _noop(value: float) -> None:
    """What a converter calls in place of the engine's callback, as a baseline."""


def _busy(k: int) -> int:
    """Pure-Python work standing in for a converter's own, ``k`` steps of it."""
    acc = 0
    for j in range(k):
        acc ^= j
    return acc


async def _instant(document_id: str, progress: Progress) -> None:
    """A converter that returns at once, to expose the per-document overhead."""


class Engine:
    """A JobManager whose admission never waits, with one counting subscriber."""

    def __init__(self, *, progress_rate: float = 10.0, subscribed: bool = True) -> None:
        self.manager = JobManager(
            memory_probe=StaticMemoryProbe(_PLENTY_BYTES),
            memory_required_gb=_DOCUMENT_GB,
            progress_rate=progress_rate,
        )
        self.events = 0
        self.progress_events = 0
        if subscribed:
            self.manager.subscribe(self._deliver)

    def _deliver(self, event: JobEvent) -> None:
        self.events += 1
        if isinstance(event, JobProgress):
            self.progress_events += 1

    async def run_job(self, converter: Converter, document_ids: list[str]) -> int:
        """Run one job to its end; the ns from its creation to its completion."""
        manager = self.manager
        start = time.perf_counter_ns()
        job_id = manager.create_job("bench", document_ids)
        await manager.start_job(job_id, converter, converter_name="bench")
        job = await manager.wait_job(job_id)
        elapsed = time.perf_counter_ns() - start

        # A job that failed would have measured an error path, not the engine.
        if job.status is not JobStatus.COMPLETED:
            raise RuntimeError(f"bench job {job_id} is {job.status.value}: {job.error}")
        manager.remove_job(job_id)
        return elapsed

    async def time_in_job(self, body: Body) -> int:
        """Run ``body`` as the converter of a one-document job; the ns it timed."""
        timed: list[int] = []

        async def convert(document_id: str, progress: Progress) -> None:
            timed.append(await body(progress))

        await self.run_job(convert, ["doc"])
        return timed[0]


def _loop_body(n: int) -> Body:
    """The bare loop of the callback rounds, subtracted from the others."""

    async def body(progress: Progress) -> int:
        elapsed = 0
        for start in range(0, n, _CHUNK):
            t0 = time.perf_counter_ns()
            for i in range(start, min(n, start + _CHUNK)):
                _ = i / n
            elapsed += time.perf_counter_ns() - t0
            await asyncio.sleep(0)
        return elapsed

    return body


def _calls_body(n: int, *, real: bool) -> Body:
    """``n`` rising progress values, passed to the engine's callback or a no-op."""

    async def body(progress: Progress) -> int:
        call = progress if real else _noop
        elapsed = 0

        # Only the calls are timed: the yields cost the same in every variant
        # and would drown a figure of a few hundred ns.
        for start in range(0, n, _CHUNK):
            t0 = time.perf_counter_ns()
            for i in range(start, min(n, start + _CHUNK)):
                call(i / n)
            elapsed += time.perf_counter_ns() - t0
            await asyncio.sleep(0)
        return elapsed

    return body


@dataclass(slots=True)
class Case:
    """One variant: how to run it ``n`` times, and what it measured per round."""

    run: Callable[[int], Awaitable[int]]
    engine: Engine | None = None
    scale: int = 1
    n: int = 1
    samples: list[float] = field(default_factory=list)
    events: int = 0
    progress_events: int = 0
    ops: int = 0

    def reset(self) -> None:
        self.samples.clear()
        self.events = self.progress_events = self.ops = 0


async def _timed(case: Case, n: int) -> int:
    gc.disable()
    try:
        return await case.run(n)
    finally:
        gc.enable()


async def _calibrate(case: Case, round_ns: int) -> None:
    """Pick ``n`` so that one run of the case takes about ``round_ns``."""
    target = round_ns * case.scale
    n = 1
    while True:
        elapsed = await _timed(case, n)
        if elapsed * 10 >= target or n >= 1 << 24:
            break
        n *= 4
    case.n = max(1, round(n * target / max(elapsed, 1)))


async def _sample(case: Case) -> None:
    engine = case.engine
    events = engine.events if engine is not None else 0
    progress_events = engine.progress_events if engine is not None else 0
    elapsed = await _timed(case, case.n)
    case.samples.append(elapsed / case.n)
    case.ops += case.n
    if engine is not None:
        case.events += engine.events - events
        case.progress_events += engine.progress_events - progress_events


async def _rounds(cases: list[Case], rounds: int) -> None:
    """Run every case once per round, rotating the order from round to round."""
    for index in range(rounds):
        # The manager's garbage of the last round is collected here, untimed;
        # the objects frozen at start make this cheap.
        gc.collect()
        shift = index % len(cases)
        for case in cases[shift:] + cases[:shift]:
            await _sample(case)


def _median_ratio(values: list[float], units: list[float]) -> float:
    return statistics.median(v / u for v, u in zip(values, units, strict=True))


def _spread(values: list[float]) -> str:
    """The interquartile range relative to the median: how noisy a row was."""
    if len(values) < 2:
        return "-"
    low, _, high = statistics.quantiles(values, n=4)
    middle = statistics.median(values)
    return f"{(high - low) / abs(middle):.0%}" if middle else "-"


def _net(case: Case, baseline: Case) -> list[float]:
    return [c - b for c, b in zip(case.samples, baseline.samples, strict=True)]


def _row(label: str, ns: str, ratio: str, spread: str, note: str = "") -> str:
    return f"  {label:<40}{ns:>10}{ratio:>12}{spread:>8}  {note}".rstrip()


def _total(label: str, fraction: float, note: str = "") -> str:
    return f"  {label:<44}{fraction:>+8.2%}  {note}".rstrip()


async def _micro(settings: Settings) -> float:
    """Sections 1 to 3; returns what one unthrottled progress event costs, in ns."""
    throttled = Engine()
    unthrottled = Engine(progress_rate=math.inf)
    alone = Engine(subscribed=False)
    gate = throttled.manager.gate
    nbytes = int(_DOCUMENT_GB * GIB)
    system_probe = SystemMemoryProbe()

    async def sleep_zero(n: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            await asyncio.sleep(0)
        return time.perf_counter_ns() - t0

    async def admit(n: int) -> int:
        try_acquire = gate.try_acquire
        t0 = time.perf_counter_ns()
        for _ in range(n):
            reservation = try_acquire(nbytes)
            if reservation is None:
                raise RuntimeError("the bench gate refused a document")
            reservation.release()
        return time.perf_counter_ns() - t0

    async def probe(n: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            system_probe()
        return time.perf_counter_ns() - t0

    def per_document(engine: Engine) -> Callable[[int], Awaitable[int]]:
        async def run(n: int) -> int:
            return await engine.run_job(_instant, [f"doc-{i}" for i in range(n)])

        return run

    def in_job(
        engine: Engine, body: Callable[[int], Body]
    ) -> Callable[[int], Awaitable[int]]:
        return lambda n: engine.time_in_job(body(n))

    unit = Case(sleep_zero)
    loop = Case(in_job(throttled, _loop_body))
    noop = Case(in_job(throttled, lambda n: _calls_body(n, real=False)))
    fast = Case(
        in_job(throttled, lambda n: _calls_body(n, real=True)),
        engine=throttled,
    )
    every = Case(
        in_job(unthrottled, lambda n: _calls_body(n, real=True)),
        engine=unthrottled,
    )
    gated = Case(admit)
    probed = Case(probe)
    lone = Case(per_document(alone), engine=alone, scale=_JOB_SCALE)
    watched = Case(per_document(throttled), engine=throttled, scale=_JOB_SCALE)
    cases = [unit, loop, noop, fast, every, gated, probed, lone, watched]

    for case in cases:
        await _calibrate(case, settings.round_ns)

    # One round unrecorded, so caches, the allocator and the manager's history
    # are warm before the first one that counts.
    await _rounds(cases, 1)
    for case in cases:
        case.reset()
    await _rounds(cases, settings.rounds)

    units = unit.samples

    def line(label: str, values: list[float], note: str = "") -> None:
        ratio = _median_ratio(values, units)
        ns = f"{statistics.median(values):,.0f}"
        print(_row(label, ns, f"{ratio:,.3f}", _spread(values), note))

    def per_call(case: Case) -> str:
        rate = case.progress_events / case.ops
        return f"n={case.n:,}, {rate:.2g} progress events/call"

    def per_doc(case: Case) -> str:
        return f"n={case.n:,} docs, {case.events / case.ops:.2f} events/doc"

    print(_row("", "ns/op", "x sleep(0)", "spread"))
    line("await asyncio.sleep(0)  (the unit)", units, f"n={unit.n:,}")
    print()
    print("  progress callback, net of its loop (rising floats, 1 subscriber)")
    line("unthrottled, progress_rate=inf", _net(every, loop), per_call(every))
    line("throttled, progress_rate=10 (default)", _net(fast, loop), per_call(fast))
    line("no-op function call (reference)", _net(noop, loop), f"n={noop.n:,}")
    print()
    print("  admission")
    line("MemoryGate.try_acquire + release", gated.samples, f"n={gated.n:,}")
    line("JobManager per document, 1 subscriber", watched.samples, per_doc(watched))
    line("JobManager per document, no subscriber", lone.samples, f"n={lone.n:,} docs")
    line(
        "SystemMemoryProbe() call (information)",
        probed.samples,
        f"n={probed.n:,}, the default probe",
    )
    return statistics.median(_net(every, loop))


def _busy_steps(target_ns: int) -> int:
    """The ``k`` for which one ``_busy(k)`` and its loop take ``target_ns``."""
    k, iterations = 200, 1_000

    # The median of several runs, since the machine's speed wanders; the
    # first pass only gets ``k`` near, the later ones settle it.
    for _ in range(3):
        times = []
        for _ in range(9):
            gc.disable()
            t0 = time.perf_counter_ns()
            for _ in range(iterations):
                _busy(k)
            times.append((time.perf_counter_ns() - t0) / iterations)
            gc.enable()
        k = max(1, round(k * target_ns / statistics.median(times)))
    return k


@dataclass(slots=True)
class _Work:
    """The acceptance converter's state: its ``k``, and what it measured."""

    k: int
    samples: dict[Mode, list[float]] = field(
        default_factory=lambda: {"bare": [], "noop": [], "engine": []}
    )
    k_used: list[int] = field(default_factory=list)

    def clear(self) -> None:
        for values in self.samples.values():
            values.clear()
        self.k_used.clear()


def _work_body(rounds: int, work: _Work) -> Body:
    """The acceptance converter: every variant once a round, round after round."""
    modes: list[Mode] = ["bare", "noop", "engine"]
    total = rounds * _WORK_CHUNK
    step_ns: deque[float] = deque(maxlen=_RECALIBRATE)

    async def body(progress: Progress) -> int:
        done = 0
        start = time.perf_counter_ns()
        for index in range(rounds):
            k = work.k
            work.k_used.append(k)
            shift = index % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                call = progress if mode == "engine" else _noop
                gc.disable()
                t0 = time.perf_counter_ns()
                if mode == "bare":
                    for _ in range(_WORK_CHUNK):
                        _busy(k)
                else:
                    for i in range(done, done + _WORK_CHUNK):
                        _busy(k)
                        call(i / total)
                elapsed = time.perf_counter_ns() - t0
                gc.enable()
                work.samples[mode].append(elapsed / _WORK_CHUNK)
                if mode == "bare":
                    step_ns.append(elapsed / _WORK_CHUNK / k)
                elif mode == "engine":
                    done += _WORK_CHUNK

                # The yield is left out of the timing. It costs every variant
                # the same, and the throttle's events, built and delivered in
                # it, are accounted for from their measured cost instead.
                await asyncio.sleep(0)

            # The ratios depend on how much work there is per call, and the
            # machine's speed wanders: ``k`` follows it so that the bare work
            # stays at 10 us a call. It changes only between rounds, so the
            # variants of one round always do the same work.
            work.k = max(1, round(_WORK_NS / statistics.median(step_ns)))
        return time.perf_counter_ns() - start

    return body


async def _acceptance(settings: Settings, event_ns: float) -> bool:
    """Section 4: the slowdown of a 100,000-calls-a-second converter."""
    engine = Engine()
    work = _Work(_busy_steps(_WORK_NS))
    samples = work.samples

    # A short run first, so the figures start from a warm engine and ``k``.
    await engine.time_in_job(_work_body(_RECALIBRATE, work))
    work.clear()
    events = engine.progress_events
    elapsed = await engine.time_in_job(_work_body(settings.work_rounds, work))
    event_rate = (engine.progress_events - events) / (elapsed / 1e9)

    low, middle, high = (
        min(work.k_used),
        statistics.median(work.k_used),
        max(work.k_used),
    )
    print(
        f"  one job; {settings.work_rounds:,} rounds of {_WORK_CHUNK} calls"
        f" per variant, _busy(k) before each call,"
        f" k={middle:.0f} (from {low} to {high})"
    )
    print(_row("", "ns/call", "k calls/s", "spread"))
    labels: dict[Mode, str] = {
        "bare": "work only, no call",
        "noop": "work + no-op call",
        "engine": "work + engine callback, throttled 10/s",
    }
    for mode, label in labels.items():
        middle = statistics.median(samples[mode])
        note = f"{event_rate:.1f} progress events/s" if mode == "engine" else ""
        print(
            _row(
                label,
                f"{middle:,.0f}",
                f"{1e6 / middle:,.1f}",
                _spread(samples[mode]),
                note,
            )
        )

    # The events come from the yields, outside the timed chunks; their share
    # of the converter's time is their rate times what one costs.
    events_share = event_rate * event_ns / 1e9
    pairs = [e / n for e, n in zip(samples["engine"], samples["noop"], strict=True)]
    against_noop = statistics.median(pairs) - 1
    against_bare = _median_ratio(samples["engine"], samples["bare"]) - 1
    slowdown = against_noop + events_share
    passed = slowdown < _TARGET_SLOWDOWN

    verdict = "PASS" if passed else "FAIL"
    events_label = f"events, {event_rate:.1f}/s x {event_ns / 1000:,.1f} us each"
    print()
    print(
        _total(
            "callback calls vs no-op calls, paired",
            against_noop,
            f"(pairs' interquartile range {_spread(pairs)})",
        )
    )
    print(_total(events_label, events_share, "(not in the timed chunks)"))
    print(
        _total(
            "slowdown vs no-op call",
            slowdown,
            f"target < {_TARGET_SLOWDOWN:.0%}: {verdict}",
        )
    )
    print(_total("slowdown vs no call", against_bare + events_share, "(information)"))
    return passed


async def _main(settings: Settings) -> bool:
    print("1-3. the unit, the progress callback, admission")
    event_ns = await _micro(settings)
    print()
    print("4. acceptance: a converter calling progress 100,000 times a second")
    return await _acceptance(settings, event_ns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a run of a few seconds, for CI"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when the 5%% target is missed"
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL

    print(
        f"streamer engine benchmark, {settings.label} run:"
        f" {sys.implementation.name} {platform.python_version()},"
        f" {platform.system()} {platform.machine()}, os.cpu_count()={os.cpu_count()}"
    )

    # What is alive now lives to the end; frozen, it is not rescanned by the
    # collection between rounds, which would otherwise take milliseconds.
    gc.collect()
    gc.freeze()
    start = time.perf_counter()
    passed = asyncio.run(_main(settings))
    print(f"\n  took {time.perf_counter() - start:.1f} s")
    return 1 if args.check and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
