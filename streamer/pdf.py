"""The built-in converter: PDF to plain text, each document in a worker process.

PDFium parses untrusted files in C, where a bad file can crash it, hang it or
make it eat memory, so it never runs in the server. Each conversion gets a
worker process of its own (:mod:`streamer._pdfworker`), forked by
multiprocessing's fork server ahead of time, which writes the text and
reports every page on a pipe. The event loop reads the pipe, checks the
worker's memory every 50 ms, and ends the worker when its job is cancelled,
its document times out or it outgrows its memory budget. A worker that
crashes fails its own document and nothing else.

Results go to ``results_dir/<document_id>/<random>.txt``: UTF-8 text, the
pages in order with :data:`PAGE_SEPARATOR` (``"\\f\\n"``) between two of
them, lines ending in ``\\n``. The worker writes a hidden file beside it,
renamed into place once the worker is gone, so a reader never sees half a
file and two conversions of one document never write to the same one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

import psutil

from ._launcher import (
    LAUNCHER,
    Started,
    context_for,
    discard,
    has_exited,
)
from ._pdfworker import PAGE_SEPARATOR, Task
from .errors import (
    ConverterCrashed,
    DamagedPdf,
    DocumentError,
    DocumentTimeout,
    DocumentUnreadable,
    EmptyPdf,
    EncryptedPdf,
    MemoryBudgetExceeded,
    NotAPdf,
    StreamerError,
)

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerContext, SpawnContext

    _Context: TypeAlias = ForkServerContext | SpawnContext

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

T = TypeVar("T")

# Seconds between two readings of a worker's memory. A reading costs about
# 20 us on the loop; a worker can grow by a few hundred MB in between.
MEMORY_CHECK_INTERVAL: Final = 0.05
# Seconds a worker has to exit after SIGTERM before it gets SIGKILL. It has
# nothing to save, and the engine waits 5 s for a cancelled job to clean up.
KILL_GRACE: Final = 1.0

# Seconds the pipe is left alone after each read. Reading as soon as a page
# is out would wake the loop for every page, some 1,000 times a second for a
# dense text; pausing lets the pages of 10 ms gather into one read.
_READ_PAUSE = 0.01

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


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker process that runs now, as last seen: for metrics and tests."""

    document_id: str
    pid: int
    # None until the worker has opened the document.
    pages: int | None
    pages_done: int
    # Resident memory at the last check, 0 before the first.
    rss_bytes: int
    budget_bytes: int


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
        self._workers: set[_Worker] = set()

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
        worker = _Worker(
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
        return tuple(
            WorkerInfo(
                document_id=worker.document,
                pid=worker.pid,
                pages=worker.pages,
                pages_done=worker.pages_done,
                rss_bytes=worker.rss,
                budget_bytes=worker.budget,
            )
            for worker in self._workers
            if worker.pid is not None
        )

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
    worker = _Worker("forkserver", Task(str(path), None, _fault), path.name, budget)
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


class _Worker:
    """One worker process, its pipe and its memory, seen from the event loop."""

    def __init__(self, method: str, task: Task, document: str, budget: int) -> None:
        self.document = document
        self.budget = budget
        self.pid: int | None = None
        self.pages: int | None = None
        self.pages_done = 0
        self.characters = 0
        self.rss = 0
        self._method = method
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._process: BaseProcess | None = None
        self._watched: psutil.Process | None = None
        self._timer: asyncio.TimerHandle | None = None
        # The pipe's read end, what arrived on it, and a future that a
        # waiting receive() sets up for the next arrival.
        self._fd: int | None = None
        self._buffer = bytearray()
        self._eof = False
        self._arrival: asyncio.Future[None] | None = None
        self._rearm: asyncio.TimerHandle | None = None
        self._sentinel: int | None = None
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._finished = False
        self._refused: tuple[str, str] | None = None
        self._failed: str | None = None
        self._over_budget: int | None = None

    async def start(self) -> None:
        """Take a started worker and give it the task.

        Once this returns the worker is this object's to watch and to stop.
        Cancelled before, the worker it was about to take never gets a task,
        and exits by itself.
        """
        started = await self._take_worker()
        self._attach(started)
        try:
            started.tasks.send(self._task)
        except OSError:
            # Died just now: the sentinel tells, and failure() says how.
            pass
        finally:
            started.tasks.close()

    async def _take_worker(self) -> Started:
        # A worker started ahead may have failed to start, or died while it
        # waited (killed from outside); then another is taken, once.
        for retry in (False, True):
            launch = asyncio.wrap_future(LAUNCHER.take(self._method))
            try:
                started = await asyncio.shield(launch)
            except asyncio.CancelledError:
                launch.add_done_callback(discard)
                raise
            except Exception:
                if retry:
                    raise
                logger.warning("a worker failed to start; taking another")
                continue
            if retry or not has_exited(started.process):
                return started
            logger.warning("worker %d died before it got a task", started.process.pid)
            started.discard()
        raise AssertionError("unreachable")

    def _attach(self, started: Started) -> None:
        process = started.process
        assert process.pid is not None
        self._process = process
        self.pid = process.pid
        self._fd = started.read_fd
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._on_readable)
        self._sentinel = process.sentinel
        self._loop.add_reader(self._sentinel, self._on_exit)
        try:
            self._watched = psutil.Process(process.pid)
        except psutil.Error:
            pass
        else:
            self._timer = self._loop.call_later(
                MEMORY_CHECK_INTERVAL, self._check_memory
            )
        logger.debug("worker %d took document %s", self.pid, self.document)

    async def receive(self) -> str | None:
        """The kind of the worker's next message, or None once its pipe is shut."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return self._read_message(line)
            if self._eof:
                # Whatever is left is the torn last message of a killed worker.
                return None
            self._arrival = self._loop.create_future()
            await self._arrival

    def _read_message(self, line: bytes) -> str:
        message = json.loads(line)
        if "page" in message:
            self.pages_done = message["page"]
            return "page"
        if "pages" in message:
            self.pages = message["pages"]
            if self._task.output is None:
                self._finished = True
            return "pages"
        if "done" in message:
            self.characters = message["done"]
            self._finished = True
            return "done"
        if "refused" in message:
            self._refused = (message["refused"], message.get("detail", ""))
            return "refused"
        self._failed = str(message.get("failed", f"sent {message!r}"))
        return "failed"

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._buffer += data
            self._loop.remove_reader(self._fd)
            self._rearm = self._loop.call_later(_READ_PAUSE, self._arm)
        else:
            self._eof = True
            self._close_pipe()
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)

    def _arm(self) -> None:
        self._rearm = None
        if self._fd is not None:
            self._loop.add_reader(self._fd, self._on_readable)

    def _on_exit(self) -> None:
        # The sentinel turns readable once the worker is gone; its status is
        # read on the launcher's thread, for the reason _Launcher gives.
        assert self._process is not None and self._sentinel is not None
        self._loop.remove_reader(self._sentinel)
        self._sentinel = None
        self._stop_checking()

        # What the worker wrote last is read now rather than after the pause.
        if self._rearm is not None:
            self._rearm.cancel()
            self._arm()
        reaping = asyncio.wrap_future(LAUNCHER.reap(self._process))
        reaping.add_done_callback(self._on_reaped)

    def _on_reaped(self, reaping: asyncio.Future[int]) -> None:
        if self._exited.done():
            return
        if reaping.cancelled():
            self._exited.set_exception(RuntimeError("reaping a worker was cancelled"))
        elif (error := reaping.exception()) is not None:
            self._exited.set_exception(error)
        else:
            code = reaping.result()
            self._exited.set_result(code)
            logger.debug(
                "worker %d of document %s exited: %d", self.pid, self.document, code
            )

    def _check_memory(self) -> None:
        self._timer = None
        assert self._watched is not None and self._process is not None
        try:
            rss = self._watched.memory_info().rss
        except psutil.Error:
            # Gone: the sentinel says so next.
            return
        self.rss = rss
        if rss <= self.budget:
            self._timer = self._loop.call_later(
                MEMORY_CHECK_INTERVAL, self._check_memory
            )
            return

        # SIGKILL at once, without SIGTERM's grace: a worker that grows this
        # fast could take the machine's memory during the grace.
        self._over_budget = rss
        logger.warning(
            "worker %d of document %s uses %d MiB, past its budget of %d MiB:"
            " killing it",
            self.pid,
            self.document,
            rss >> 20,
            self.budget >> 20,
        )
        self._process.kill()

    async def wait(self) -> int:
        """Wait until the worker is gone; its exit code."""
        # Shielded: a cancelled wait must not cancel the future that stop()
        # waits on next.
        return await asyncio.shield(self._exited)

    def failure(self) -> StreamerError | None:
        """Why the document failed, None if the worker did its task; once it is gone."""
        code = self._exited.result()
        if self._over_budget is not None:
            return MemoryBudgetExceeded(self.document, self.budget, self._over_budget)
        if self._refused is not None:
            return _refusal(self.document, *self._refused)
        if code < 0:
            return ConverterCrashed(
                self.document, f"killed by {_signal_name(-code)}", exitcode=code
            )
        if self._failed is not None:
            return ConverterCrashed(self.document, self._failed, exitcode=code)
        if code != 0 or not self._finished:
            return ConverterCrashed(
                self.document, f"exited with status {code} unfinished", exitcode=code
            )
        return None

    async def stop(self) -> None:
        """End the worker if it runs (SIGTERM, then SIGKILL); return once it is gone."""
        if self._process is None or self._exited.done():
            return
        self._stop_checking()
        self._process.terminate()
        hurried = False
        try:
            async with asyncio.timeout(KILL_GRACE):
                await asyncio.shield(self._exited)
            return
        except TimeoutError:
            logger.warning(
                "worker %d of document %s outlived SIGTERM by %.1f s: killing it",
                self.pid,
                self.document,
                KILL_GRACE,
            )
        except asyncio.CancelledError:
            hurried = True
        self._process.kill()

        # SIGKILL cannot be refused, so this is short; it is seen through even
        # if cancelled again, as the caller must not go on while the worker
        # lives.
        await _outlast(self._exited)
        if hurried:
            raise asyncio.CancelledError

    def close(self) -> None:
        """Let go of the pipe and the watches, once the worker is gone or never ran."""
        self._stop_checking()
        self._close_pipe()
        if self._sentinel is not None:
            self._loop.remove_reader(self._sentinel)
            self._sentinel = None

    def _stop_checking(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_pipe(self) -> None:
        if self._rearm is not None:
            self._rearm.cancel()
            self._rearm = None
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None


async def _outlast(future: asyncio.Future[T]) -> T:
    """Await ``future`` to its end even through cancellation, then re-raise that.

    For the waits that must not be cut short: a worker being started or
    killed is seen through, or it would outlive its document.
    """
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return future.result()


def _refusal(document: str, kind: str, detail: str) -> DocumentError:
    if kind == "not-a-pdf":
        return NotAPdf(document)
    if kind == "encrypted":
        return EncryptedPdf(document)
    if kind == "empty":
        return EmptyPdf(document)
    if kind == "unreadable":
        return DocumentUnreadable(document, detail)
    return DamagedPdf(document, detail or "PDFium cannot parse it")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


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
