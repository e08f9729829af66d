"""The manual clock that tests drive."""

from __future__ import annotations

import asyncio

from streamer import ManualClock, SystemClock

from .conftest import settle


async def test_clock_manual_sleep_wakes_in_order() -> None:
    """Sleepers wake in deadline order as time advances past them."""
    clock = ManualClock()
    woke: list[str] = []

    async def nap(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [
        asyncio.create_task(nap("late", 600)),
        asyncio.create_task(nap("early", 1)),
    ]
    await settle()
    await clock.advance(10)
    assert woke == ["early"]
    await clock.advance(600)
    assert woke == ["early", "late"]
    await asyncio.gather(*tasks)
    assert clock.monotonic() == 610
    assert clock.pending_timers == 0


async def test_clock_manual_timer_cancel() -> None:
    """A cancelled timer never fires."""
    clock = ManualClock()
    fired: list[int] = []
    handle = clock.call_later(1, lambda: fired.append(1))
    handle.cancel()
    await clock.advance(2)
    assert fired == []


async def test_clock_system_is_real() -> None:
    """The system clock's time moves and its timers fire."""
    clock = SystemClock()
    fired = asyncio.Event()
    start = clock.monotonic()
    clock.call_later(0.001, fired.set)
    await asyncio.wait_for(fired.wait(), 5)
    assert clock.monotonic() > start
    assert clock.now().tzinfo is not None
