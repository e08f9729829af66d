"""Estimates of the time a job has left, from conversion time alone.

The estimate counts only time spent converting: a memory wait neither adds to
the rate nor moves the estimate. Before the job finishes a document, the rate
comes from what earlier jobs of the same converter took; without that history
there is no estimate at all rather than an invented one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ConverterHistory", "EtaEstimator"]


@dataclass(slots=True)
class _Rate:
    seconds_per_document: float
    documents: int


class ConverterHistory:
    """Seconds per document for each converter, carried from job to job.

    The figure is an exponentially weighted mean, so a converter that gets
    faster or slower (new model, other hardware) is followed within a few jobs.
    """

    def __init__(self, *, weight: float = 0.3) -> None:
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"history weight must be in (0, 1], not {weight}")
        self._weight = weight
        self._rates: dict[str, _Rate] = {}

    def record(self, converter: str, seconds: float) -> None:
        """Note that ``converter`` converted one document in ``seconds``."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        rate = self._rates.get(converter)
        if rate is None:
            self._rates[converter] = _Rate(seconds, 1)
            return
        rate.seconds_per_document += self._weight * (
            seconds - rate.seconds_per_document
        )
        rate.documents += 1

    def seconds_per_document(self, converter: str) -> float | None:
        rate = self._rates.get(converter)
        return None if rate is None else rate.seconds_per_document

    def to_dict(self) -> dict[str, dict[str, float]]:
        """The history as plain data, for a store to keep across restarts."""
        return {
            name: {
                "seconds_per_document": r.seconds_per_document,
                "documents": r.documents,
            }
            for name, r in self._rates.items()
        }

    def load(self, data: dict[str, dict[str, float]]) -> None:
        for name, entry in data.items():
            self._rates[name] = _Rate(
                float(entry["seconds_per_document"]), int(entry["documents"])
            )


class EtaEstimator:
    """The remaining time of one job, smoothed so it does not jump.

    ``monotonic`` is the clock; ``prior`` the converter's historical seconds per
    document, or None. The caller reports when each document starts and ends;
    progress inside the current document is passed to :meth:`estimate`.
    ``already_done`` counts documents a resumed job finished before this
    estimator existed: they count towards the total, but their time is not
    known, so they tell nothing of the rate.
    """

    def __init__(
        self,
        monotonic: Callable[[], float],
        total: int,
        prior: float | None,
        *,
        smoothing: float = 5.0,
        already_done: int = 0,
    ) -> None:
        self._monotonic = monotonic
        self._already_done = already_done
        self._total = total
        self._prior = prior
        self._tau = smoothing
        self._active_done = 0.0
        self._current_start: float | None = None
        self._finished = 0
        self._smoothed: float | None = None
        self._smoothed_at = 0.0

    def document_started(self) -> None:
        self._current_start = self._monotonic()

    def document_finished(self) -> float:
        """End the current document; returns the seconds it was converting."""
        if self._current_start is None:
            return 0.0
        duration = self._monotonic() - self._current_start
        self._active_done += duration
        self._current_start = None
        self._finished += 1
        return duration

    def _active(self) -> float:
        if self._current_start is None:
            return self._active_done
        return self._active_done + self._monotonic() - self._current_start

    def estimate(self, completed: int, current_progress: float) -> float | None:
        """Seconds left, given documents finished and progress in the current one."""
        done = completed + current_progress
        remaining = self._total - done
        if remaining <= 0:
            return 0.0
        active = self._active()
        fresh = done - self._already_done
        # A document stopped short counts as finished without adding to done.
        if self._finished == 0 or fresh <= 0:
            if self._prior is None:
                return None

            # Lean from the history towards what this job shows, as the first
            # document advances, instead of switching at once.
            weight = min(max(fresh, 0.0), 1.0)
            observed = active / fresh if fresh > 0 else self._prior
            per_document = (1.0 - weight) * self._prior + weight * observed
        else:
            per_document = active / fresh
        raw = remaining * per_document
        return self._smooth(raw, active)

    def _smooth(self, raw: float, active: float) -> float:
        # Count down with conversion time, and pull towards the fresh figure
        # in proportion to how much conversion time passed since the last one.
        # With no conversion time between calls (a memory wait, two events in
        # one instant) the estimate stays where it was.
        if self._tau <= 0:
            return raw
        if self._smoothed is None:
            self._smoothed, self._smoothed_at = raw, active
            return raw
        elapsed = active - self._smoothed_at
        if elapsed <= 0:
            return self._smoothed
        countdown = max(0.0, self._smoothed - elapsed)
        pull = 1.0 - math.exp(-elapsed / self._tau)
        self._smoothed = countdown + pull * (raw - countdown)
        self._smoothed_at = active
        return self._smoothed
