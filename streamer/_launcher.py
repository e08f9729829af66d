"""Worker processes for the PDF converter: started ahead, reaped on one thread.

A worker is forked by multiprocessing's fork server (or spawned) with PDFium
already imported, and one is kept waiting per start method so that a
document does not wait for a process to start. Every start and every exit
status read happens on a single thread, because ``Process.start()`` polls
every child's exit status and two polls at once can misreport one.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import sys
import threading
import types
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, TypeAlias

from . import _pdfworker

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerContext, SpawnContext

    _Context: TypeAlias = ForkServerContext | SpawnContext

__all__ = ["LAUNCHER", "Started", "context_for", "discard", "has_exited"]

logger = logging.getLogger("streamer.worker")

_START_METHODS = ("forkserver", "spawn")
# What a worker needs, imported once in the fork server rather than in each
# worker: PDFium (100 ms), and the modules a worker would otherwise import on
# its way in and on its first page, found by comparing sys.modules. The main
# module's imports are added to these (see _main_imports).
_PRELOAD = [
    "streamer._pdfworker",
    "pypdfium2",
    "multiprocessing.popen_forkserver",
    "pkgutil",
    "encodings.utf_16_le",
]


@dataclass(slots=True)
class Started:
    """A worker process that runs, waiting for the task it is to do."""

    process: BaseProcess
    # Sends the worker its task, then is closed.
    tasks: Connection
    # The read end of the pipe the worker reports on.
    read_fd: int

    def discard(self) -> None:
        """Let go of a worker before it has a task: it exits, if it has not."""
        self.tasks.close()
        os.close(self.read_fd)
        LAUNCHER.reap(self.process)


class _Launcher:
    """Starts workers on a thread of its own, each one ahead of its document.

    Booting a worker takes it some 10 ms of CPU and 20 ms in all, mostly
    because multiprocessing runs the main module again in each child before
    Python 3.13 (see _main_imports). So one worker per start method is kept
    started and waiting for its task: a document takes it, and the next is
    started once that worker has its task, while it converts. Each still
    converts one document and exits, so a crash or a leak never reaches
    another document.

    Every call that reads a worker's exit status runs on the one thread too.
    Process.start() polls every child's status first (multiprocessing.process.
    _cleanup), and two polls of one status at once can both take it, the loser
    finding nothing and taking 255 for the status. start() itself waits for
    the fork server to fork (about 2 ms; the first time, until the fork server
    is up and has preloaded PDFium, a few hundred), so it runs off the loop.
    """

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="streamer-pdf"
        )
        self._ahead: dict[str, Future[Started]] = {}
        self._lock = threading.Lock()

    def take(self, method: str) -> Future[Started]:
        """A worker for a document now: the one started ahead, or a new one."""
        with self._lock:
            launch = self._ahead.pop(method, None)
        if launch is None:
            launch = self._thread.submit(_launch, method)
        return launch

    def prepare(self, method: str) -> None:
        """Start the next document's worker, unless one is started or starting.

        Called once a document's worker has its task, not when it is taken:
        starting a worker runs Python on this thread, and started while the
        loop was handing a worker its task it held the loop up for the GIL,
        about a millisecond a document.
        """
        with self._lock:
            if method in self._ahead:
                return
            ahead = self._thread.submit(_launch, method)
            ahead.add_done_callback(_log_failure)
            self._ahead[method] = ahead

    def reap(self, process: BaseProcess) -> Future[int]:
        """The exit code of a worker that is gone, once its resources are let go."""
        return self._thread.submit(_reap, process)


def _launch(method: str) -> Started:
    """Start a worker, which then waits for its task; on the launcher's thread."""
    context = context_for(method)
    read_fd, write_fd = os.pipe()

    # The Connection only carries the write end into the child, which writes
    # to the bare descriptor; this side reads through the loop.
    reports = Connection(write_fd, readable=False)
    tasks_in, tasks = context.Pipe(duplex=False)
    process = context.Process(
        target=_pdfworker.run,
        args=(reports, tasks_in),
        name="streamer-pdf",
        daemon=True,
    )
    try:
        process.start()
    except BaseException:
        os.close(read_fd)
        tasks.close()
        raise
    finally:
        # The child has its own copies by now; these would keep the pipes
        # open after the child is gone.
        reports.close()
        tasks_in.close()
    return Started(process, tasks, read_fd)


def discard(launch: asyncio.Future[Started]) -> None:
    """Let go of a worker taken for a document that was cancelled meanwhile."""
    if not launch.cancelled() and launch.exception() is None:
        launch.result().discard()


def _log_failure(launch: Future[Started]) -> None:
    if not launch.cancelled() and (error := launch.exception()) is not None:
        logger.error("starting a worker failed", exc_info=error)


def has_exited(process: BaseProcess) -> bool:
    # The sentinel is readable once the process is gone; reading it that way
    # leaves the exit status to the launcher's thread.
    return bool(wait([process.sentinel], timeout=0))


def context_for(method: str) -> _Context:
    if method == "spawn":
        return multiprocessing.get_context("spawn")
    if method != "forkserver":
        raise ValueError(
            f"start_method must be one of {', '.join(_START_METHODS)}, not {method!r}"
        )
    context = multiprocessing.get_context("forkserver")

    # The list is the process's, for its one fork server, and counts only
    # until that server starts.
    context.set_forkserver_preload([*_PRELOAD, *_main_imports()])
    return context


def _main_imports() -> list[str]:
    """The modules that the main module imported, for the fork server to preload.

    Before Python 3.13 every worker runs the main module again (CPython
    gh-126631), so each one imports what the main module imports: under the
    ``streamer`` command, the whole command line's dependencies, 230 ms of
    CPU per document where there is no bytecode cache. Imported once in the
    fork server instead, they cost a worker nothing. These are modules the
    server has imported already; the fork server skips one it cannot import.
    """
    main = sys.modules.get("__main__")
    names: set[str] = set()
    for value in vars(main).values() if main is not None else ():
        if isinstance(value, types.ModuleType):
            names.add(value.__name__)
            continue
        try:
            module = getattr(value, "__module__", None)
        except Exception:
            continue
        if isinstance(module, str):
            names.add(module)
    return sorted(
        name for name in names - {"__main__", "__mp_main__"} if name in sys.modules
    )


def _reap(process: BaseProcess) -> int:
    """The exit code of a worker whose sentinel fired, its resources let go."""
    process.join()
    code = process.exitcode
    assert code is not None
    process.close()
    return code


LAUNCHER = _Launcher()
