"""The built-in converter: PDF to plain text, each document in a worker process.

PDFium parses untrusted files in C, where a bad file can crash it, hang it or
make it eat memory, so it never runs in the server. Each conversion gets a
worker process of its own (:mod:`streamer._pdfworker`), started ahead of
time by :mod:`streamer._launcher`, which writes the text and reports every
page on a pipe. A :class:`~streamer.worker.Worker` watches it from the
event loop and kills it if it outgrows its memory budget; the converter
ends it when its job is cancelled or its document times out. A worker that
crashes fails its own document and nothing else.

Results go to ``results_dir/<document_id>/<random>.txt``: UTF-8 text, the
pages in order with :data:`PAGE_SEPARATOR` (``"\\f\\n"``) between two of
them, lines ending in ``\\n``. The worker writes a hidden file beside it,
renamed into place once the worker is gone, so a reader never sees half a
file and two conversions of one document never write to the same one.

:data:`KILL_GRACE`, :data:`MEMORY_CHECK_INTERVAL` and :class:`WorkerInfo`
come from :mod:`streamer.worker` and are importable from here too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._launcher import context_for
from ._pdfworker import PAGE_SEPARATOR, Task
from .errors import DocumentTimeout
from .worker import KILL_GRACE, MEMORY_CHECK_INTERVAL, Worker, WorkerInfo

__all__ = [
    "KILL_GRACE",
    "MEMORY_CHECK_INTERVAL",
    "PAGE_SEPARATOR",
    "PdfInfo",
    "PdfTextConverter",
    "WorkerInfo",
    "inspect_pdf",
]

logger = logging.getLogger("streamer.pdf")

# The memory estimate. Measured with pypdfium2 5.15 on Linux, a worker's
# resident memory peaked at 28 MiB for 200 pages of dense text, and at 34 MiB
# both for 2,000 such pages (3 MB) and for 100 pages with ten images (6.7 MB):
# some 25 MiB is the worker itself, mostly pages it shares with the fork
# server, and each page is closed once read. The file's size stands for what
# PDFium keeps per document (cross-reference tables, object streams, fonts),
# the page count for its page tree; the base leaves room for PDFs far from
# these, whose pages hold much more than text.
_MEMORY_BASE = 128 * 2**20
_MEMORY_PER_FILE_BYTE = 2
_MEMORY_PER_PAGE = 16 * 2**10


@dataclass(frozen=True, slots=True)
class PdfInfo:
    """What :func:`inspect_pdf` found out about a PDF."""

    pages: int


class PdfTextConverter:
    """Converts a PDF to text in a worker process; see the module's docstring.

    ``resolve(document_id)`` gives the path of the document's PDF; the text
    goes under ``results_dir``. ``memory_budget`` is how much resident memory
    a worker may use before it is killed: bytes for every document, a
    function of the document's id (which may return None), or None, for
    :meth:`memory_required` of the document. ``start_method`` is the
    multiprocessing one, "forkserver" or "spawn"; "fork" is refused, as a
    worker forked from the server would inherit its threads and sockets.
    ``_fault`` is a test hook that makes every worker misbehave after its
    first page: "hang", or "hog" (eat memory).
    """

    def __init__(
        self,
        resolve: Callable[[str], Path],
        results_dir: Path,
        *,
        memory_budget: int | Callable[[str], int | None] | None = None,
        start_method: str = "forkserver",
        _fault: str | None = None,
    ) -> None:
        if isinstance(memory_budget, int) and memory_budget <= 0:
            raise ValueError(f"memory_budget must be > 0, not {memory_budget}")
        context_for(start_method)
        self._resolve = resolve
        self.results_dir = Path(results_dir)
        self.memory_budget = memory_budget
        self.start_method = start_method
        self._fault = _fault
        self._workers: set[Worker] = set()

    async def __call__(
        self, document_id: str, progress: Callable[[float], None]
    ) -> dict[str, Any]:
        """Convert one document: ``{"pages", "characters", "text_file"}``.

        ``text_file`` is relative to ``results_dir``. Raises a
        :class:`DocumentError` for a file that cannot be converted,
        :class:`ConverterCrashed` or :class:`MemoryBudgetExceeded` when the
        worker fails; a cancellation ends the worker first, then goes on.
        """
        folder = _folder_name(document_id)
        source = self._resolve(document_id)
        size = _size_of(source)
        fixed = self._fixed_budget(document_id)
        budget = fixed if fixed is not None else self.memory_required(size, 0)
        name = f"{secrets.token_hex(8)}.txt"
        final = self.results_dir / folder / name
        partial = final.with_name(f".{name}.part")
        worker = Worker(
            self.start_method,
            Task(str(source), str(partial), self._fault),
            document_id,
            budget,
        )
        started = time.monotonic()
        self._workers.add(worker)
        try:
            await worker.start()
            while (kind := await worker.receive()) is not None:
                if kind == "pages" and fixed is None and worker.pages is not None:
                    worker.budget = self.memory_required(size, worker.pages)
                elif kind == "page" and worker.pages:
                    progress(worker.pages_done / worker.pages)

            # The reservation for this document ends when this returns, so
            # the worker's memory has to be given back first.
            await worker.wait()
            failure = worker.failure()
            if failure is not None:
                raise failure
            os.replace(partial, final)
        except BaseException:
            try:
                await worker.stop()
            finally:
                _remove(partial)
            raise
        finally:
            worker.close()
            self._workers.discard(worker)

        logger.debug(
            "converted document %s: %d pages, %d characters in %.2f s",
            document_id,
            worker.pages,
            worker.characters,
            time.monotonic() - started,
        )
        return {
            "pages": worker.pages,
            "characters": worker.characters,
            "text_file": f"{folder}/{name}",
        }

    def memory_required(self, size_bytes: int, pages: int) -> int:
        """Bytes to reserve for converting a document; also its default budget.

        An estimate with room to spare: 128 MiB for the worker itself, twice
        the file's size, and 16 KiB a page; measured peaks were a quarter of
        it (see ``_MEMORY_BASE``).
        """
        return (
            _MEMORY_BASE
            + _MEMORY_PER_FILE_BYTE * max(0, size_bytes)
            + _MEMORY_PER_PAGE * max(0, pages)
        )

    def workers(self) -> tuple[WorkerInfo, ...]:
        """The workers that run now, one per document being converted."""
        seen = (worker.info() for worker in self._workers)
        return tuple(info for info in seen if info is not None)

    def _fixed_budget(self, document_id: str) -> int | None:
        budget = self.memory_budget
        if callable(budget):
            budget = budget(document_id)
        if budget is None:
            return None
        if budget <= 0:
            raise ValueError(
                f"memory budget of document {document_id} must be > 0, not {budget}"
            )
        return int(budget)


# The timeout is the function's own, not the caller's asyncio.timeout(): it
# ends the worker and raises DocumentTimeout, an error about the document.
async def inspect_pdf(
    path: Path,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109
    _fault: str | None = None,
) -> PdfInfo:
    """Open a PDF in a worker process and count its pages.

    Raises the :class:`DocumentError` that converting it would, and
    :class:`DocumentTimeout` if the worker takes longer than ``timeout``
    seconds. Errors name the file by its name alone, since they may reach a
    client that has no business knowing the server's folders. ``_fault`` is
    a test hook: "hang" makes the worker hang once it has opened the file.
    """
    path = Path(path)
    budget = _MEMORY_BASE + _MEMORY_PER_FILE_BYTE * _size_of(path)
    worker = Worker("forkserver", Task(str(path), None, _fault), path.name, budget)
    try:
        try:
            async with asyncio.timeout(timeout):
                await worker.start()
                while await worker.receive() is not None:
                    pass
                await worker.wait()
        except TimeoutError:
            raise DocumentTimeout(
                f"opening {path.name} took longer than {timeout:g} s"
            ) from None
        failure = worker.failure()
        if failure is not None:
            raise failure
    except BaseException:
        await worker.stop()
        raise
    finally:
        worker.close()

    assert worker.pages is not None
    return PdfInfo(pages=worker.pages)


def _folder_name(document_id: str) -> str:
    # The id names a folder under results_dir, so it must be one plain path
    # component: an id such as "../x" would write elsewhere.
    if (
        document_id in ("", ".", "..")
        or "/" in document_id
        or "\\" in document_id
        or "\0" in document_id
    ):
        raise ValueError(f"document id {document_id!r} cannot name a results folder")
    return document_id


def _size_of(path: Path) -> int:
    # A file that cannot be read counts as empty here: the worker tries it
    # and says why it cannot.
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        logger.warning("could not remove %s", path, exc_info=True)
