"""The memory gate: admission and reservation of memory in one atomic step.

Before a document converts, it asks the gate for the memory it needs. The
gate grants a request only when nobody is queued ahead of it and what the
probe reports, less what earlier grants reserved and have not used yet, covers
it. Checking and reserving happen in one synchronous step on the event loop, so
jobs that start in the same instant cannot all see the same free memory.

The gate also bounds how many documents convert at once: a grant needs a
free slot as well as the memory. A request that does not fit waits in a FIFO
queue. The head of the queue checks
again on an exponential backoff with jitter, and at once whenever a reservation
is released, so a large request is never overtaken by small ones.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from .clock import Clock, SystemClock
from .errors import MemoryRequestTooLarge, MemoryWaitTimeout
from .memory import MemoryProbe, MemoryReading, SystemMemoryProbe

__all__ = [
    "Backoff",
    "GateStatistics",
    "MemoryGate",
    "MemoryWait",
    "Reservation",
]

logger = logging.getLogger("streamer.memory")

_GIB = 1024**3


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between memory checks: ``initial * factor**n``, capped, with jitter.

    ``jitter`` is the fraction taken off at random, so waiters that started
    together do not all probe in the same instant.
    """

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.cap < self.initial or self.factor < 1:
            raise ValueError(f"invalid backoff {self}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"backoff jitter must be in [0, 1), not {self.jitter}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.cap, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * rng.random())


@dataclass(frozen=True, slots=True)
class MemoryWait:
    """The state of one waiting request, as reported after each check."""

    available_bytes: int
    required_bytes: int
    source: str
    waiting_since: datetime
    waited_seconds: float
    next_check_at: datetime
    next_check_in_seconds: float
    queue_position: int
    # "memory" when memory is short, "concurrency" when only a slot is.
    reason: str


@dataclass(frozen=True, slots=True)
class GateStatistics:
    reserved_bytes: int
    reservations: int
    waiting: int
    #: Seconds requests have spent in the queue, over the gate's life.
    waited_seconds: float


class Reservation:
    """Memory granted to one document; release it when the document is done.

    ``used_bytes`` may be raised by whoever can see the document's real usage
    (a worker process's resident size): the gate then stops counting that part
    twice, once in the probe's figure and once as reserved.
    """

    __slots__ = ("_gate", "nbytes", "released", "used_bytes")

    def __init__(self, gate: MemoryGate, nbytes: int) -> None:
        self._gate = gate
        self.nbytes = nbytes
        self.used_bytes = 0
        self.released = False

    @property
    def unused_bytes(self) -> int:
        return max(0, self.nbytes - self.used_bytes)

    def release(self) -> None:
        """Give the memory back; calling it again does nothing."""
        if not self.released:
            self.released = True
            self._gate._release(self)


class _Waiter:
    __slots__ = ("nbytes", "wake")

    def __init__(self, nbytes: int, wake: asyncio.Future[None]) -> None:
        self.nbytes = nbytes
        self.wake = wake


class MemoryGate:
    """Grants memory reservations, one document at a time, first come first served."""

    def __init__(
        self,
        probe: MemoryProbe | None = None,
        *,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        max_wait: float = 600.0,
        max_concurrent: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_concurrent is not None and max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
        self._probe = probe if probe is not None else SystemMemoryProbe()
        self._clock = clock if clock is not None else SystemClock()
        self._backoff = backoff if backoff is not None else Backoff()
        self._max_wait = max_wait
        self._max_concurrent = max_concurrent
        self._rng = rng if rng is not None else random.Random()
        self._reservations: set[Reservation] = set()
        self._queue: deque[_Waiter] = deque()
        self._waited = 0.0

    @property
    def probe(self) -> MemoryProbe:
        return self._probe

    def statistics(self) -> GateStatistics:
        return GateStatistics(
            reserved_bytes=sum(r.nbytes for r in self._reservations),
            reservations=len(self._reservations),
            waiting=len(self._queue),
            waited_seconds=self._waited,
        )

    def free_bytes(self, reading: MemoryReading) -> int:
        """What a new request may take, given a fresh probe reading."""
        unused = sum(r.unused_bytes for r in self._reservations)
        return reading.available_bytes - unused

    def _blocker(self, nbytes: int, reading: MemoryReading) -> str | None:
        if self.free_bytes(reading) < nbytes:
            return "memory"
        if (
            self._max_concurrent is not None
            and len(self._reservations) >= self._max_concurrent
        ):
            return "concurrency"
        return None

    def try_acquire(self, nbytes: int) -> Reservation | None:
        """Reserve ``nbytes`` now if nobody waits and it fits, else return None."""
        if self._queue:
            return None
        reading = self._probe()
        self._check_possible(nbytes, reading)
        if self._blocker(nbytes, reading) is None:
            return self._grant(nbytes)
        return None

    async def acquire(
        self,
        nbytes: int,
        *,
        on_wait: Callable[[MemoryWait], None] | None = None,
        label: str = "",
    ) -> Reservation:
        """Reserve ``nbytes``, waiting in line for it if need be.

        ``on_wait`` is called after every check that could not grant it.
        Raises :class:`MemoryWaitTimeout` once the time spent short of memory
        exceeds ``max_wait``; waiting only for a free slot never times out.
        """
        reading = self._probe()
        self._check_possible(nbytes, reading)
        if not self._queue and self._blocker(nbytes, reading) is None:
            return self._grant(nbytes)

        loop = asyncio.get_running_loop()
        waiter = _Waiter(nbytes, loop.create_future())
        self._queue.append(waiter)
        started = last = self._clock.monotonic()
        since = self._clock.now()
        attempt = 0
        short_for = 0.0
        try:
            while True:
                reading = self._probe()
                if self._queue[0] is waiter:
                    found = self._blocker(nbytes, reading)
                    if found is None:
                        self._queue.popleft()
                        reservation = self._grant(nbytes)
                        self._wake_head()
                        logger.debug(
                            "%s admitted after %.1f s",
                            label or "a document",
                            self._clock.monotonic() - started,
                        )
                        return reservation
                    blocker = found
                else:
                    blocker = self._blocker(nbytes, reading) or "queue"

                # Only time spent short of memory counts towards the timeout:
                # a long queue for a slot is not a reason to give up.
                now = self._clock.monotonic()
                if blocker == "memory":
                    short_for += now - last
                last = now
                waited = now - started
                left = self._max_wait - short_for
                if blocker == "memory" and left <= 0:
                    raise MemoryWaitTimeout(
                        f"memory wait timed out after {self._max_wait:g} s"
                        f" for {label or 'a document'}: only"
                        f" {_gib(self.free_bytes(reading))} GB free"
                        f" ({reading.source}), {_gib(nbytes)} GB required."
                        " Close other applications or lower the requirement,"
                        " then retry."
                    )
                delay = self._backoff.delay(attempt, self._rng)
                if blocker == "memory":
                    delay = min(delay, left)
                attempt += 1
                if on_wait is not None:
                    on_wait(
                        MemoryWait(
                            available_bytes=max(0, self.free_bytes(reading)),
                            required_bytes=nbytes,
                            source=reading.source,
                            waiting_since=since,
                            waited_seconds=waited,
                            next_check_at=self._clock.now() + timedelta(seconds=delay),
                            next_check_in_seconds=delay,
                            queue_position=self._queue.index(waiter) + 1,
                            reason="memory" if blocker == "memory" else "concurrency",
                        )
                    )
                if attempt == 1 and blocker == "memory":
                    logger.warning(
                        "%s waits for memory: %s GB free (%s), %s GB required",
                        label or "a document",
                        _gib(self.free_bytes(reading)),
                        reading.source,
                        _gib(nbytes),
                    )
                await self._sleep_or_wake(waiter, delay)
        finally:
            self._waited += self._clock.monotonic() - started
            if waiter in self._queue:
                was_head = self._queue[0] is waiter
                self._queue.remove(waiter)

                # Whoever is next in line may fit where this request did not.
                if was_head:
                    self._wake_head()

    async def _sleep_or_wake(self, waiter: _Waiter, delay: float) -> None:
        loop = asyncio.get_running_loop()
        waiter.wake = loop.create_future()
        timer = self._clock.call_later(delay, lambda: _resolve(waiter.wake))
        try:
            await waiter.wake
        finally:
            timer.cancel()

    def _check_possible(self, nbytes: int, reading: MemoryReading) -> None:
        if nbytes > reading.total_bytes:
            raise MemoryRequestTooLarge(
                f"a document needs {_gib(nbytes)} GB but only"
                f" {_gib(reading.total_bytes)} GB exist in all ({reading.source});"
                " it can never be admitted"
            )

    def _grant(self, nbytes: int) -> Reservation:
        reservation = Reservation(self, nbytes)
        self._reservations.add(reservation)
        return reservation

    def _release(self, reservation: Reservation) -> None:
        self._reservations.discard(reservation)
        self._wake_head()

    def _wake_head(self) -> None:
        if self._queue:
            _resolve(self._queue[0].wake)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _gib(nbytes: int) -> float:
    return round(nbytes / _GIB, 1)
