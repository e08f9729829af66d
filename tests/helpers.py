"""Converters that tests drive step by step."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class Controlled:
    """An async converter whose documents finish when the test says so."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cleaned: list[str] = []
        self.callbacks: dict[str, Callable[[float], None]] = {}
        self.active = 0
        self.peak = 0
        self.fail: dict[str, str] = {}
        self._release: dict[str, asyncio.Event] = {}
        self._started = asyncio.Event()

    def _gate(self, document_id: str) -> asyncio.Event:
        return self._release.setdefault(document_id, asyncio.Event())

    async def __call__(
        self, document_id: str, progress: Callable[[float], None]
    ) -> dict[str, Any]:
        self.started.append(document_id)
        self.callbacks[document_id] = progress
        self.active += 1
        self.peak = max(self.peak, self.active)
        self._started.set()
        try:
            await self._gate(document_id).wait()
            if document_id in self.fail:
                raise RuntimeError(self.fail[document_id])
            return {"document_id": document_id, "pages": 3}
        finally:
            self.active -= 1
            self.cleaned.append(document_id)

    def finish(self, document_id: str) -> None:
        self._gate(document_id).set()

    async def wait_started(self, document_id: str, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while document_id not in self.started:
                self._started.clear()
                await self._started.wait()
