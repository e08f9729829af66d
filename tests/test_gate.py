"""The memory gate: atomic grants, FIFO waits, backoff and timeouts."""

from __future__ import annotations

import asyncio
import random

import pytest

from streamer import (
    Backoff,
    ManualClock,
    MemoryGate,
    MemoryRequestTooLarge,
    MemoryWait,
    MemoryWaitTimeout,
    StaticMemoryProbe,
)
from streamer.memory import GIB

from .conftest import settle


def test_gate_grants_are_subtracted_at_once() -> None:
    """Reservations count against free memory before any real use shows."""
    gate = MemoryGate(StaticMemoryProbe(24 * GIB), clock=ManualClock())
    first = gate.try_acquire(10 * GIB)
    second = gate.try_acquire(10 * GIB)
    assert first is not None and second is not None
    assert gate.try_acquire(10 * GIB) is None
    assert gate.statistics().reserved_bytes == 20 * GIB
    first.release()
    first.release()
    assert gate.statistics().reservations == 1
    assert gate.try_acquire(10 * GIB) is not None


def test_gate_used_bytes_are_not_counted_twice() -> None:
    """Memory a document really uses shows in the probe, so it is not held twice."""
    probe = StaticMemoryProbe(24 * GIB)
    gate = MemoryGate(probe, clock=ManualClock())
    running = gate.try_acquire(10 * GIB)
    assert running is not None
    probe.available_bytes = 16 * GIB
    running.used_bytes = 8 * GIB
    assert gate.try_acquire(10 * GIB) is not None


def test_gate_backoff_grows_to_cap_with_jitter() -> None:
    """Backoff delays double up to the cap, each shortened by at most the jitter."""
    backoff = Backoff(initial=1, factor=2, cap=30, jitter=0.2)
    rng = random.Random(7)
    delays = [backoff.delay(n, rng) for n in range(8)]
    for n, delay in enumerate(delays):
        base = min(30, 2**n)
        assert 0.8 * base <= delay <= base
    assert len(set(delays)) == len(delays)
    with pytest.raises(ValueError):
        Backoff(initial=0)
    with pytest.raises(ValueError):
        Backoff(jitter=1)


async def test_gate_wait_reports_and_times_out() -> None:
    """A waiter is told each check's figures and times out after max_wait."""
    clock = ManualClock()
    gate = MemoryGate(
        StaticMemoryProbe(4 * GIB, total_bytes=32 * GIB),
        clock=clock,
        max_wait=100,
        rng=random.Random(1),
    )
    waits: list[MemoryWait] = []
    task = asyncio.create_task(gate.acquire(10 * GIB, on_wait=waits.append))
    await settle()
    await clock.advance(101)
    with pytest.raises(MemoryWaitTimeout, match="after 100 s"):
        await task
    assert waits[0].available_bytes == 4 * GIB
    assert waits[0].queue_position == 1
    assert waits[0].reason == "memory"
    assert sum(w.next_check_in_seconds for w in waits) == pytest.approx(100)
    assert gate.statistics().waiting == 0


async def test_gate_too_large_fails_fast() -> None:
    """A request above the machine's total is refused without waiting."""
    gate = MemoryGate(StaticMemoryProbe(8 * GIB, total_bytes=8 * GIB))
    with pytest.raises(MemoryRequestTooLarge, match="can never be admitted"):
        await gate.acquire(9 * GIB)


async def test_gate_cancelled_head_lets_next_in() -> None:
    """When the head waiter gives up, the next one is checked at once."""
    clock = ManualClock()
    probe = StaticMemoryProbe(6 * GIB, total_bytes=32 * GIB)
    gate = MemoryGate(probe, clock=clock)
    big = asyncio.create_task(gate.acquire(10 * GIB))
    await settle()
    small = asyncio.create_task(gate.acquire(2 * GIB))
    await settle()
    assert not small.done()
    big.cancel()
    await settle()
    assert small.done() and small.result().nbytes == 2 * GIB


async def test_gate_slot_wait_never_times_out() -> None:
    """Waiting only for a concurrency slot does not count towards max_wait."""
    clock = ManualClock()
    gate = MemoryGate(
        StaticMemoryProbe(24 * GIB), clock=clock, max_wait=10, max_concurrent=1
    )
    holder = gate.try_acquire(1 * GIB)
    assert holder is not None
    reasons: list[str] = []
    task = asyncio.create_task(
        gate.acquire(1 * GIB, on_wait=lambda w: reasons.append(w.reason))
    )
    await settle()
    await clock.advance(100)
    assert not task.done()
    assert set(reasons) == {"concurrency"}
    holder.release()
    await settle()
    assert task.done()


def test_gate_rejects_bad_limit() -> None:
    """max_concurrent below one is refused."""
    with pytest.raises(ValueError, match="max_concurrent"):
        MemoryGate(StaticMemoryProbe(GIB), max_concurrent=0)
