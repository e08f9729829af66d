"""A converter that only pretends: it sleeps, reports progress, sometimes fails.

Useful to try the engine and the viewer without real documents.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

__all__ = ["DemoConverter"]


class DemoConverter:
    """``await DemoConverter()(document_id, progress)`` takes ``seconds`` per document.

    ``failure_rate`` is the chance that a document fails halfway, with an error
    that says it was simulated.
    """

    def __init__(
        self,
        *,
        seconds: float = 2.0,
        steps: int = 20,
        failure_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if seconds < 0 or steps < 1 or not 0.0 <= failure_rate <= 1.0:
            raise ValueError(
                f"invalid demo converter: seconds={seconds} steps={steps}"
                f" failure_rate={failure_rate}"
            )
        self.seconds = seconds
        self.steps = steps
        self.failure_rate = failure_rate
        self._rng = rng if rng is not None else random.Random()

    async def __call__(
        self, document_id: str, progress: Callable[[float], None]
    ) -> dict[str, Any]:
        fails = self._rng.random() < self.failure_rate
        for step in range(1, self.steps + 1):
            await asyncio.sleep(self.seconds / self.steps)
            progress(step / self.steps)
            if fails and step * 2 >= self.steps:
                raise RuntimeError(f"simulated failure converting {document_id}")
        return {"document_id": document_id, "pages": self.steps}
