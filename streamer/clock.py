"""Time as the engine sees it, injectable so tests never really wait.

The engine asks a :class:`Clock` for the time, for sleeps and for timers. The
:class:`SystemClock` uses the event loop; the :class:`ManualClock` only moves
when a test advances it, so a 600 s memory wait takes microseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock", "TimerHandle"]


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the engine needs to know about time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for durations."""
        ...

    def now(self) -> datetime:
        """The current wall-clock time, timezone-aware, in UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the caller for ``seconds``."""
        ...

    def call_later(self, seconds: float, callback: Callable[[], object]) -> TimerHandle:
        """Run ``callback`` on the event loop after ``seconds``."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, the wall clock and the event loop."""

    # Bound once so the progress hot path pays a single attribute lookup.
    monotonic = staticmethod(time.monotonic)

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, seconds: float, callback: Callable[[], object]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(seconds, callback)


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], object]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that stands still until :meth:`advance` moves it.

    Sleeps and timers fire in deadline order as time passes them, and the event
    loop gets to run between firings, so code woken by one timer can set the
    next one before time moves on.
    """

    def __init__(
        self,
        start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
    ) -> None:
        self._wall_start = start
        self._elapsed = 0.0
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._elapsed

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._wall_start.timestamp() + self._elapsed, UTC)

    def call_later(self, seconds: float, callback: Callable[[], object]) -> TimerHandle:
        timer = _ManualTimer(self._elapsed + max(0.0, seconds), callback)
        heapq.heappush(self._timers, (timer.deadline, next(self._order), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_later(seconds, wake)
        try:
            await future
        finally:
            timer.cancel()

    @property
    def pending_timers(self) -> int:
        """How many timers have not fired or been cancelled yet."""
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer it passes."""
        target = self._elapsed + seconds
        await _settle()
        while self._timers and self._timers[0][0] <= target:
            deadline, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._elapsed = max(self._elapsed, deadline)
            timer.callback()
            await _settle()
        self._elapsed = target
        await _settle()


async def _settle(rounds: int = 20) -> None:
    # Several loop iterations let chains of callbacks and task steps that a
    # timer started run to their next real wait before time moves again.
    for _ in range(rounds):
        await asyncio.sleep(0)
