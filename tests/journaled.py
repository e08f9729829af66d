"""A converter for restart tests: the PDF converter, slowed and journaled.

``streamer serve --converter tests.journaled:JournaledPdf`` converts with the
real :class:`~streamer.pdf.PdfTextConverter`, after a lead-in that reports
progress for ``STREAMER_TEST_LEAD_IN`` seconds, so that a test has time to
stop the server in the middle of a document. Every start and every success
is appended to ``journal.log`` in the data directory, one line each, flushed
to disk at once: what a killed process did survives it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamer.documents import DocumentStore
from streamer.pdf import PdfTextConverter

_STEPS = 10


class JournaledPdf:
    """PDF to text, with a lead-in and a journal of starts and successes."""

    memory_required = "64MB"

    def __init__(self, documents: DocumentStore) -> None:
        self._inner = PdfTextConverter(documents.resolve, documents.results_dir)
        self._journal = documents.data_dir / "journal.log"
        self._lead_in = float(os.environ.get("STREAMER_TEST_LEAD_IN", "1.0"))

    async def __call__(
        self, document_id: str, progress: Callable[[float], None]
    ) -> dict[str, Any]:
        _append(self._journal, f"start {document_id}")
        for step in range(1, _STEPS + 1):
            await asyncio.sleep(self._lead_in / _STEPS)
            progress(0.5 * step / _STEPS)
        result = await self._inner(document_id, lambda p: progress(0.5 + p / 2))
        _append(self._journal, f"done {document_id}")
        return result


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as journal:
        journal.write(line + "\n")
        journal.flush()
        os.fsync(journal.fileno())


def read_journal(data_dir: Path) -> list[tuple[str, str]]:
    """The journal's lines as (what, document_id) pairs."""
    path = data_dir / "journal.log"
    if not path.exists():
        return []
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        what, _, document_id = line.partition(" ")
        pairs.append((what, document_id))
    return pairs
