"""A worker process of the PDF converter, as the event loop sees it.

:class:`Worker` takes a child that :mod:`streamer._launcher` started ahead,
gives it its :class:`~streamer._pdfworker.Task`, and from then on watches
it without a thread: one timer, every :data:`MEMORY_CHECK_INTERVAL`,
checks the child's resident memory against its budget and reads what it
reported on its pipe, and a reader on the child's sentinel learns of its
exit. :meth:`Worker.stop` ends a child that must not go on (SIGTERM, then
SIGKILL after :data:`KILL_GRACE`), and :meth:`Worker.failure` says what its
end means for the document: nothing, a refusal, a crash or a budget
overrun.

The pipe is read on that timer rather than as soon as a page is out: a
dense text reports 1,000 pages a second, and reading them every 10 ms took
the server half as much CPU again (13 ms against 9 ms for 200 pages), CPU
that on a small machine the worker itself is short of. The manager emits at most ten
progress events a second by default, so a read every 50 ms holds back
nothing anyone sees. Once the child is gone, what is left on the pipe is
read at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Final, TypeVar

import psutil

from ._launcher import LAUNCHER, Started, discard, has_exited
from ._pdfworker import Task
from .errors import (
    ConverterCrashed,
    DamagedPdf,
    DocumentError,
    DocumentUnreadable,
    EmptyPdf,
    EncryptedPdf,
    MemoryBudgetExceeded,
    NotAPdf,
    StreamerError,
)

__all__ = ["KILL_GRACE", "MEMORY_CHECK_INTERVAL", "Worker", "WorkerInfo"]

logger = logging.getLogger("streamer.worker")

T = TypeVar("T")

# Seconds between two readings of a worker's memory, and of its pipe. A
# reading costs about 20 us on the loop; a worker can grow by a few hundred
# MB in between.
MEMORY_CHECK_INTERVAL: Final = 0.05
# Seconds a worker has to exit after SIGTERM before it gets SIGKILL. It has
# nothing to save, and the engine waits 5 s for a cancelled job to clean up.
KILL_GRACE: Final = 1.0

# The most read from the pipe at once; a tick reads until the pipe is empty.
_READ_SIZE = 65536
_PAGE_PREFIX = b'{"page":'


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


class Worker:
    """One worker process, its pipe and its memory, seen from the event loop.

    ``method`` is the multiprocessing start method, ``document`` names the
    document in logs and errors, and ``budget`` is the resident memory in
    bytes past which the worker is killed; the owner may raise or lower
    ``budget`` while the worker runs.
    """

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
        self._sentinel: int | None = None
        # Set once the sentinel has fired: from then on the process object
        # is the launcher thread's to reap and close, and not to signal.
        self._gone = False
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
            LAUNCHER.prepare(self._method)

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
        self._sentinel = process.sentinel
        self._loop.add_reader(self._sentinel, self._on_exit)
        # Gone already, the worker is not watched: the sentinel says so next.
        with contextlib.suppress(psutil.Error):
            self._watched = psutil.Process(process.pid)
        self._timer = self._loop.call_later(MEMORY_CHECK_INTERVAL, self._tick)
        logger.debug("worker %d took document %s", self.pid, self.document)

    def info(self) -> WorkerInfo | None:
        """What the worker is doing now; None before it has a process."""
        if self.pid is None:
            return None
        return WorkerInfo(
            document_id=self.document,
            pid=self.pid,
            pages=self.pages,
            pages_done=self.pages_done,
            rss_bytes=self.rss,
            budget_bytes=self.budget,
        )

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
        # One message a page, as _pdfworker writes it; read without json.
        if line.startswith(_PAGE_PREFIX):
            self.pages_done = int(line[len(_PAGE_PREFIX) : -1])
            return "page"
        message = json.loads(line)
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

    def _tick(self) -> None:
        self._timer = None
        if self._watched is not None and not self._check_memory():
            return
        self._read_pipe()
        self._timer = self._loop.call_later(MEMORY_CHECK_INTERVAL, self._tick)

    def _check_memory(self) -> bool:
        """Whether the worker may go on: False once it is killed for its memory."""
        assert self._watched is not None and self._process is not None
        try:
            rss = self._watched.memory_info().rss
        except psutil.Error:
            # Gone: the sentinel says so next.
            return True
        self.rss = rss
        if rss <= self.budget:
            return True

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
        return False

    def _read_pipe(self, *, to_end: bool = False) -> None:
        """Take in what the pipe holds; with ``to_end``, the worker is gone."""
        if self._fd is None:
            return
        arrived = False
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if not data:
                break
            self._buffer += data
            arrived = True

        # A gone worker writes nothing more, whoever else may hold its pipe.
        if data == b"" or to_end:
            self._eof = True
            self._close_pipe()
        waiting = self._arrival
        if (arrived or self._eof) and waiting is not None and not waiting.done():
            waiting.set_result(None)

    def _on_exit(self) -> None:
        # The sentinel turns readable once the worker is gone; its status is
        # read on the launcher's thread, for the reason _Launcher gives.
        assert self._process is not None and self._sentinel is not None
        self._loop.remove_reader(self._sentinel)
        self._sentinel = None
        self._gone = True
        self._stop_ticking()
        self._read_pipe(to_end=True)
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
        if self._gone:
            # Exited already; only the reaping is left, and it is short.
            await self.wait()
            return
        self._stop_ticking()
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
        if not self._gone:
            self._process.kill()

        # SIGKILL cannot be refused, so this is short; it is seen through even
        # if cancelled again, as the caller must not go on while the worker
        # lives.
        await _outlast(self._exited)
        if hurried:
            raise asyncio.CancelledError

    def close(self) -> None:
        """Let go of the pipe and the watches, once the worker is gone or never ran."""
        self._stop_ticking()
        self._close_pipe()
        if self._sentinel is not None:
            self._loop.remove_reader(self._sentinel)
            self._sentinel = None

    def _stop_ticking(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_pipe(self) -> None:
        if self._fd is not None:
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
    # The kinds are those of streamer._pdfworker.Refused.
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
