"""Worker: one real worker process, from its start to its end, seen from the loop."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

import psutil
import pytest

from streamer import _launcher
from streamer._pdfworker import PAGE_SEPARATOR, Task
from streamer.errors import ConverterCrashed, EncryptedPdf, MemoryBudgetExceeded
from streamer.worker import Worker, WorkerInfo

from . import pdfs
from .conftest import TIMEOUT

MIB = 2**20
PAGES = 5
# Far above what a worker converting the samples uses.
ROOMY = 1024 * MIB

Make = Callable[..., Worker]


@dataclass(frozen=True)
class Samples:
    """The PDFs these tests give their workers."""

    text: Path
    encrypted: Path


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    """A text PDF and an encrypted one, made once for the module."""
    folder = tmp_path_factory.mktemp("worker-pdfs")
    return Samples(pdfs.text_pdf(folder, PAGES), pdfs.encrypted_pdf(folder))


@pytest.fixture
async def make_worker(tmp_path: Path) -> AsyncIterator[Make]:
    """Build workers that write into this test's folder; stop and close them after."""
    made: list[Worker] = []

    def build(
        path: Path,
        *,
        fault: str | None = None,
        budget: int = ROOMY,
        output: bool = True,
    ) -> Worker:
        target = str(tmp_path / "out.txt") if output else None
        worker = Worker("forkserver", Task(str(path), target, fault), "doc", budget)
        made.append(worker)
        return worker

    yield build
    for worker in made:
        await worker.stop()
        worker.close()


async def messages(worker: Worker) -> list[str]:
    """Every message kind the worker sends, until its pipe is shut."""
    kinds: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        while (kind := await worker.receive()) is not None:
            kinds.append(kind)
    return kinds


async def first_page(worker: Worker) -> None:
    """Start the worker and read up to its first page."""
    await worker.start()
    async with asyncio.timeout(TIMEOUT):
        while await worker.receive() != "page":
            pass


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_worker_reports_pages_then_done(
    make_worker: Make, samples: Samples, tmp_path: Path
) -> None:
    """The page count comes first, then each page, then the characters written."""
    worker = make_worker(samples.text)
    await worker.start()
    assert await messages(worker) == ["pages", *["page"] * PAGES, "done"]
    assert await asyncio.wait_for(worker.wait(), TIMEOUT) == 0
    assert worker.failure() is None
    assert (worker.pages, worker.pages_done) == (PAGES, PAGES)
    text = (tmp_path / "out.txt").read_text(encoding="utf-8")
    assert worker.characters == len(text) - (PAGES - 1) * len(PAGE_SEPARATOR)


async def test_worker_pipe_read_whole_once_gone(
    make_worker: Make, samples: Samples
) -> None:
    """Once the worker has exited, all it wrote is read without waiting for a tick."""
    worker = make_worker(samples.text)
    await worker.start()
    await asyncio.wait_for(worker.wait(), TIMEOUT)

    # A zero timeout fires at the first wait: there must be none.
    kinds: list[str] = []
    async with asyncio.timeout(0):
        while (kind := await worker.receive()) is not None:
            kinds.append(kind)
    assert kinds[-1] == "done"


async def test_worker_info_is_a_snapshot(make_worker: Make, samples: Samples) -> None:
    """info() is None before the start, then a frozen WorkerInfo of the worker."""
    worker = make_worker(samples.text, fault="hang", budget=300 * MIB)
    assert worker.info() is None
    await first_page(worker)

    info = worker.info()
    assert info is not None and info.pid == worker.pid
    assert (info.document_id, info.pages, info.pages_done) == ("doc", PAGES, 1)
    assert info.budget_bytes == 300 * MIB
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.pid = 1  # type: ignore[misc]
    assert isinstance(info, WorkerInfo)


async def test_worker_refusal_is_the_documents_error(
    make_worker: Make, samples: Samples
) -> None:
    """A document the worker refuses fails with the error of its kind."""
    worker = make_worker(samples.encrypted)
    await worker.start()
    assert await messages(worker) == ["refused"]
    await asyncio.wait_for(worker.wait(), TIMEOUT)
    failure = worker.failure()
    assert isinstance(failure, EncryptedPdf)
    assert failure.document == "doc"


async def test_worker_killed_is_a_crash_named_by_its_signal(
    make_worker: Make, samples: Samples
) -> None:
    """A worker killed from outside crashed, and the error names the signal."""
    worker = make_worker(samples.text, fault="hang")
    await first_page(worker)
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)

    assert await messages(worker) == []
    assert await asyncio.wait_for(worker.wait(), TIMEOUT) == -signal.SIGKILL
    failure = worker.failure()
    assert isinstance(failure, ConverterCrashed)
    assert failure.how == "killed by SIGKILL"
    assert failure.exitcode == -signal.SIGKILL


async def test_worker_stop_ends_a_hung_worker(
    make_worker: Make, samples: Samples
) -> None:
    """stop() ends a worker that hangs, with SIGTERM, and returns once it is gone."""
    worker = make_worker(samples.text, fault="hang")
    await first_page(worker)
    assert worker.pid is not None

    await asyncio.wait_for(worker.stop(), TIMEOUT)
    assert gone(worker.pid)
    failure = worker.failure()
    assert isinstance(failure, ConverterCrashed)
    assert failure.how == "killed by SIGTERM"


async def test_worker_stop_cancelled_still_outlasts_the_worker(
    make_worker: Make, samples: Samples
) -> None:
    """A stop() cancelled midway kills the worker and waits it out, then re-raises."""
    worker = make_worker(samples.text, fault="hang")
    await first_page(worker)
    assert worker.pid is not None

    # A stopped worker waits for SIGKILL to wake it, even doomed by SIGTERM,
    # so the stop is still waiting when it is cancelled; either signal may
    # be the exit status then.
    os.kill(worker.pid, signal.SIGSTOP)
    stopping = asyncio.ensure_future(worker.stop())
    await asyncio.sleep(0)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stopping, TIMEOUT)
    assert gone(worker.pid)
    assert await worker.wait() < 0


async def test_worker_stop_once_exited_only_waits_for_reaping(
    make_worker: Make, samples: Samples
) -> None:
    """stop() of a worker gone but not yet reaped signals nothing and waits."""
    worker = make_worker(samples.text)
    await worker.start()
    await messages(worker)
    async with asyncio.timeout(TIMEOUT):
        while not worker._gone:
            await asyncio.sleep(0)

    # Held up until the launcher's thread has reaped and closed the process,
    # the loop has not heard of it yet: the window where stop() once raised.
    _launcher.LAUNCHER._thread.submit(lambda: None).result(TIMEOUT)
    await asyncio.wait_for(worker.stop(), TIMEOUT)
    assert worker.failure() is None


async def test_worker_killed_past_its_budget(
    make_worker: Make, samples: Samples
) -> None:
    """A worker that outgrows its budget is killed, the figures in the error."""
    budget = 200 * MIB
    worker = make_worker(samples.text, fault="hog", budget=budget)
    await first_page(worker)
    assert worker.pid is not None

    await asyncio.wait_for(worker.wait(), TIMEOUT)
    assert gone(worker.pid)
    failure = worker.failure()
    assert isinstance(failure, MemoryBudgetExceeded)
    assert (failure.document, failure.budget) == ("doc", budget)
    assert failure.used > budget
    assert "past its memory budget of 200 MiB" in str(failure)


async def test_worker_opens_without_output(make_worker: Make, samples: Samples) -> None:
    """A task without an output file only counts the pages, and is done then."""
    worker = make_worker(samples.text, output=False)
    await worker.start()
    assert await messages(worker) == ["pages"]
    await asyncio.wait_for(worker.wait(), TIMEOUT)
    assert worker.failure() is None
    assert worker.pages == PAGES


async def test_worker_replaces_one_that_died_waiting(
    make_worker: Make, samples: Samples, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker killed while it waits for a task is replaced, unseen."""
    first = make_worker(samples.text)
    await first.start()
    await messages(first)

    # The first worker's start started the next one ahead, which dies here.
    ahead = await asyncio.wrap_future(_launcher.LAUNCHER._ahead["forkserver"])
    pid = ahead.process.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await asyncio.to_thread(wait, [ahead.process.sentinel], TIMEOUT)

    second = make_worker(samples.text)
    await second.start()
    assert await messages(second) == ["pages", *["page"] * PAGES, "done"]
    assert second.pid != pid
    assert f"worker {pid} died before it got a task" in caplog.text
