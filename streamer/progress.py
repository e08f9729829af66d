"""Progress reports from converters: validated, and throttled per job.

A converter may call its progress callback a hundred thousand times a second;
the callback must cost almost nothing and the job must not emit an event for
each call. The reporter keeps only the latest value and emits at most one
``job.progress`` event per interval; before any other event of the job it
flushes the pending progress, so clients never see a lifecycle event ahead of
the progress that preceded it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from numbers import Real

from .clock import Clock, TimerHandle
from .errors import ConversionCancelled, InvalidProgress
from .job import ConversionJob, DocumentOutcome

__all__ = ["ProgressReporter", "StopFlag"]

logger = logging.getLogger("streamer.jobs")


class StopFlag:
    """Set when a document's converter must stop: cancelled, or abandoned."""

    __slots__ = ("stopped",)

    def __init__(self) -> None:
        self.stopped = False


class ProgressReporter:
    """Throttles one job's progress events to at most ``rate`` a second."""

    def __init__(
        self,
        job: ConversionJob,
        clock: Clock,
        emit: Callable[[], None],
        *,
        rate: float,
    ) -> None:
        self._job = job
        self._clock = clock
        self._monotonic = clock.monotonic
        self._emit = emit
        self._interval = 1.0 / rate if rate > 0 and math.isfinite(rate) else 0.0
        self._next_allowed = -math.inf
        self._timer: TimerHandle | None = None
        self.pending = False
        # The document being converted: while an event is pending the
        # callback skips updating the job, and this brings it up to date.
        self._live: tuple[DocumentOutcome, int] | None = None

    def changed(self) -> None:
        """Note a change of progress; emit now or as soon as the interval allows."""
        if self.pending:
            return
        now = self._monotonic()
        if now >= self._next_allowed:
            self._next_allowed = now + self._interval
            self._emit()
            return
        self.pending = True
        self._timer = self._clock.call_later(self._next_allowed - now, self._fire)

    def _sync(self) -> None:
        if self._live is not None:
            outcome, index = self._live
            self._job.progress = (index + outcome.progress) / self._job.files_total

    def _fire(self) -> None:
        self._timer = None
        self._send_pending()

    def flush(self) -> None:
        """Emit the pending progress now, ahead of another event of the job."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._send_pending()

    def _send_pending(self) -> None:
        if self.pending:
            self._sync()
            self.pending = False
            self._next_allowed = self._monotonic() + self._interval
            self._emit()

    def document_done(self) -> None:
        """The current document ended; its figures are the manager's again."""
        self._live = None

    def callback(
        self, outcome: DocumentOutcome, index: int, stop: StopFlag
    ) -> Callable[[float], None]:
        """The progress callback handed to a converter running on the event loop."""
        job = self._job
        total = job.files_total
        changed = self.changed
        warned = False
        self._live = (outcome, index)

        def on_progress(value: float) -> None:
            nonlocal warned

            # The common case, a float in range, costs two comparisons.
            if value.__class__ is not float or not 0.0 <= value <= 1.0:
                checked = _check(value)
                if checked is None:
                    if not warned:
                        warned = True
                        logger.warning(
                            "ignoring progress %r for document %s",
                            value,
                            outcome.document_id,
                        )
                    return
                value = checked
            if stop.stopped:
                raise ConversionCancelled(f"job {job.job_id} was cancelled")
            if value <= outcome.progress:
                return
            outcome.progress = value

            # With an event already pending, the job's figure is brought up
            # to date when it goes out; until then nothing else is needed.
            if self.pending:
                return
            job.progress = (index + value) / total
            changed()

        return on_progress

    def threadsafe_callback(
        self,
        outcome: DocumentOutcome,
        index: int,
        stop: StopFlag,
        loop: asyncio.AbstractEventLoop,
    ) -> Callable[[float], None]:
        """The progress callback for a synchronous converter in its own thread."""
        job = self._job
        total = job.files_total
        scheduled = False

        def apply() -> None:
            nonlocal scheduled

            # Cleared before reading, so a value stored after this point
            # schedules another apply instead of being lost.
            scheduled = False
            if not stop.stopped:
                job.progress = (index + outcome.progress) / total
                self.changed()

        def on_progress(value: float) -> None:
            nonlocal scheduled
            if value.__class__ is not float or not 0.0 <= value <= 1.0:
                checked = _check(value)
                if checked is None:
                    return
                value = checked
            if stop.stopped:
                raise ConversionCancelled(f"job {job.job_id} was cancelled")
            if value <= outcome.progress:
                return

            # Only the loop writes the job itself; this thread may have been
            # abandoned after a timeout while the job moved on.
            outcome.progress = value
            if not scheduled:
                scheduled = True
                loop.call_soon_threadsafe(apply)

        return on_progress


def _check(value: object) -> float | None:
    """A progress value made safe, None to ignore it; raises if it is no number."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidProgress(
            f"progress must be a number between 0 and 1, not {value!r}"
        )
    number = float(value)
    if math.isnan(number):
        return None
    return min(1.0, max(0.0, number))
