"""The PDF converter and inspect_pdf, on real PDFs in real worker processes.

How one worker process is watched and ended is tests/test_worker.py's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from streamer import DocumentStatus, JobManager, JobStatus, ManualClock
from streamer.errors import (
    ConverterCrashed,
    DamagedPdf,
    DocumentError,
    DocumentTimeout,
    DocumentUnreadable,
    EmptyPdf,
    EncryptedPdf,
    MemoryBudgetExceeded,
    NotAPdf,
)
from streamer.pdf import (
    PAGE_SEPARATOR,
    PdfInfo,
    PdfTextConverter,
    WorkerInfo,
    inspect_pdf,
)

from . import pdfs
from .conftest import TIMEOUT, Recorder

Build = Callable[..., JobManager]

MIB = 2**20
PAGES = 5


@dataclass(frozen=True)
class Samples:
    """The session's PDFs, each under the document id that names it."""

    folder: Path
    files: dict[str, Path]

    def resolve(self, document_id: str) -> Path:
        return self.files[document_id]


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    """Every sample PDF, made once for the whole session."""
    folder = tmp_path_factory.mktemp("pdfs")
    files = {
        "text": pdfs.text_pdf(folder, PAGES),
        "encrypted": pdfs.encrypted_pdf(folder),
        "damaged": pdfs.damaged_pdf(folder),
        "empty": pdfs.empty_pdf(folder),
        "picture": pdfs.not_a_pdf(folder),
        "missing": folder / "missing.pdf",
    }
    return Samples(folder, files)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def make_converter(samples: Samples, results: Path) -> Callable[..., PdfTextConverter]:
    """Build converters of the sample PDFs that write into this test's folder."""

    def build(**kwargs: Any) -> PdfTextConverter:
        return PdfTextConverter(samples.resolve, results, **kwargs)

    return build


class Progress:
    """A progress callback that keeps its values and signals the first one."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.started = asyncio.Event()

    def __call__(self, value: float) -> None:
        self.values.append(value)
        self.started.set()

    async def wait_started(self) -> None:
        await asyncio.wait_for(self.started.wait(), TIMEOUT)


class Watched:
    """A worker's process, told apart from a later one that reuses its pid."""

    def __init__(self, worker: WorkerInfo) -> None:
        try:
            self._process: psutil.Process | None = psutil.Process(worker.pid)
        except psutil.NoSuchProcess:
            self._process = None

    def gone(self) -> bool:
        return self._process is None or not self._process.is_running()


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


# Each bad sample, the error it raises, and what that error's message says.
BAD_FILES = [
    (
        "encrypted",
        EncryptedPdf,
        "is encrypted; streamer cannot open password-protected",
    ),
    ("damaged", DamagedPdf, "is damaged: PDFium cannot parse it"),
    ("empty", EmptyPdf, "is a PDF with no pages"),
    ("picture", NotAPdf, "is not a PDF"),
    ("missing", DocumentUnreadable, "cannot be read: No such file"),
]


# -- text -------------------------------------------------------------------


async def test_pdf_converter_extracts_text_page_by_page(
    make_converter: Callable[..., PdfTextConverter], results: Path
) -> None:
    """Each page's text comes out in order, PAGE_SEPARATOR between two pages."""
    converter = make_converter()
    result = await converter("text", Progress())

    text = (results / result["text_file"]).read_text(encoding="utf-8")
    pages = text.split(PAGE_SEPARATOR)
    assert pages == [pdfs.page_line(n, PAGES) for n in range(1, PAGES + 1)]
    assert result["pages"] == PAGES
    assert result["characters"] == len(text) - (PAGES - 1) * len(PAGE_SEPARATOR)
    assert result["text_file"].startswith("text/")
    assert files_under(results) == [results / result["text_file"]]


async def test_pdf_converter_reports_each_page(
    make_converter: Callable[..., PdfTextConverter],
) -> None:
    """Progress rises by one page at a time and ends at 1.0."""
    progress = Progress()
    await make_converter()("text", progress)
    assert progress.values == [n / PAGES for n in range(1, PAGES + 1)]
    assert progress.values[-1] == 1.0


async def test_pdf_converter_same_document_twice_at_once(
    make_converter: Callable[..., PdfTextConverter], results: Path
) -> None:
    """Two conversions of one document at once write two whole files."""
    converter = make_converter()
    first, second = await asyncio.gather(
        converter("text", Progress()), converter("text", Progress())
    )
    assert first["text_file"] != second["text_file"]
    assert files_under(results) == sorted(
        [results / first["text_file"], results / second["text_file"]]
    )
    one, two = (results / r["text_file"] for r in (first, second))
    assert one.read_bytes() == two.read_bytes()


async def test_pdf_converter_new_worker_per_document(
    make_converter: Callable[..., PdfTextConverter],
) -> None:
    """Each conversion has a worker process of its own."""
    converter = make_converter()
    pids: list[int] = []

    def note_pid(value: float) -> None:
        if value == 1.0:
            (worker,) = converter.workers()
            pids.append(worker.pid)

    await converter("text", note_pid)
    await converter("text", note_pid)
    assert len(set(pids)) == 2


async def test_pdf_converter_spawn_start_method(
    make_converter: Callable[..., PdfTextConverter],
) -> None:
    """Workers started with "spawn" convert as those of the fork server do."""
    result = await make_converter(start_method="spawn")("text", Progress())
    assert result["pages"] == PAGES


async def test_pdf_inspect_counts_pages(samples: Samples) -> None:
    """inspect_pdf returns the page count as a frozen PdfInfo."""
    info = await inspect_pdf(samples.files["text"])
    assert info == PdfInfo(pages=PAGES)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.pages = 1  # type: ignore[misc]


# -- bad files --------------------------------------------------------------


@pytest.mark.parametrize(("sample", "error", "says"), BAD_FILES)
async def test_pdf_inspect_refuses_bad_file(
    samples: Samples, sample: str, error: type[DocumentError], says: str
) -> None:
    """Each kind of bad file has its own error, naming the file by its name."""
    path = samples.files[sample]
    pattern = re.escape(f"document {path.name} {says}")
    with pytest.raises(error, match=f"^{pattern}") as caught:
        await inspect_pdf(path)
    assert isinstance(caught.value, DocumentError)
    assert caught.value.document == path.name


@pytest.mark.parametrize(("sample", "error", "says"), BAD_FILES)
async def test_pdf_converter_refuses_bad_file(
    make_converter: Callable[..., PdfTextConverter],
    results: Path,
    sample: str,
    error: type[DocumentError],
    says: str,
) -> None:
    """The converter raises the same errors, naming the document, and leaves no file."""
    pattern = re.escape(f"document {sample} {says}")
    with pytest.raises(error, match=f"^{pattern}"):
        await make_converter()(sample, Progress())
    assert files_under(results) == []


async def test_pdf_converter_rejects_id_that_is_a_path(
    make_converter: Callable[..., PdfTextConverter],
) -> None:
    """An id that would name a folder outside results_dir is refused."""
    with pytest.raises(ValueError, match="cannot name a results folder"):
        await make_converter()("../text", Progress())


def test_pdf_converter_refuses_fork(samples: Samples, results: Path) -> None:
    """The "fork" start method is refused: workers must not inherit the server."""
    with pytest.raises(ValueError, match="forkserver, spawn"):
        PdfTextConverter(samples.resolve, results, start_method="fork")


# -- workers that fail ------------------------------------------------------


async def test_pdf_converter_killed_worker_fails_its_document_only(
    make_converter: Callable[..., PdfTextConverter], results: Path
) -> None:
    """A worker killed mid-document fails that document; the next one converts."""
    hanging = make_converter(_fault="hang")
    progress = Progress()
    call = asyncio.ensure_future(hanging("text", progress))
    await progress.wait_started()
    (worker,) = hanging.workers()
    assert worker.pages == PAGES and worker.pages_done == 1
    os.kill(worker.pid, signal.SIGKILL)

    with pytest.raises(ConverterCrashed, match="killed by SIGKILL") as caught:
        await asyncio.wait_for(call, TIMEOUT)
    assert caught.value.exitcode == -signal.SIGKILL
    assert hanging.workers() == ()
    assert files_under(results) == []

    result = await make_converter()("text", Progress())
    assert result["pages"] == PAGES


async def test_pdf_converter_hung_worker_ends_at_timeout(
    make_converter: Callable[..., PdfTextConverter], results: Path
) -> None:
    """A hung worker cancelled by a timeout, as the engine does, is gone after."""
    converter = make_converter(_fault="hang")
    progress = Progress()
    call = asyncio.ensure_future(converter("text", progress))
    await progress.wait_started()
    (worker,) = converter.workers()
    watched = Watched(worker)
    assert not watched.gone()

    # The worker hangs for good, so this timeout always expires.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(call, 0.05)
    assert watched.gone()
    assert files_under(results) == []


async def test_pdf_converter_cancel_kills_worker(
    make_converter: Callable[..., PdfTextConverter], results: Path
) -> None:
    """Cancelling a conversion kills its worker, then the cancellation goes on."""
    converter = make_converter(_fault="hang")
    progress = Progress()
    call = asyncio.ensure_future(converter("text", progress))
    await progress.wait_started()
    (worker,) = converter.workers()
    watched = Watched(worker)
    assert not watched.gone()

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert watched.gone()
    assert converter.workers() == ()
    assert files_under(results) == []


async def test_pdf_converter_memory_hog_ends_at_budget(
    make_converter: Callable[..., PdfTextConverter], results: Path
) -> None:
    """A worker that outgrows its budget is killed, with the figures in the error."""
    budget = 200 * MIB
    converter = make_converter(memory_budget=budget, _fault="hog")
    progress = Progress()
    call = asyncio.ensure_future(converter("text", progress))
    await progress.wait_started()
    (worker,) = converter.workers()
    watched = Watched(worker)

    with pytest.raises(MemoryBudgetExceeded, match="past its memory budget of 200 MiB"):
        await asyncio.wait_for(call, TIMEOUT)
    assert watched.gone()
    assert files_under(results) == []


async def test_pdf_inspect_hung_worker_times_out(samples: Samples) -> None:
    """inspect_pdf gives up on a worker that hangs, with DocumentTimeout."""
    with pytest.raises(DocumentTimeout, match=r"opening text-5\.pdf took longer"):
        await inspect_pdf(samples.files["text"], timeout=0.05, _fault="hang")


# -- memory -----------------------------------------------------------------


def test_pdf_memory_required_grows_with_size_and_pages(
    make_converter: Callable[..., PdfTextConverter],
) -> None:
    """The estimate has a floor for the worker, and rises with size and pages."""
    estimate = make_converter().memory_required
    floor = estimate(0, 0)
    assert floor >= 64 * MIB
    assert estimate(10 * MIB, 0) > floor
    assert estimate(0, 1000) > floor
    assert estimate(10 * MIB, 1000) > estimate(10 * MIB, 0)


async def budget_seen(converter: PdfTextConverter, document_id: str) -> int:
    """The budget of a hanging worker once it has opened the document."""
    progress = Progress()
    call = asyncio.ensure_future(converter(document_id, progress))
    try:
        await progress.wait_started()
        (worker,) = converter.workers()
        return worker.budget_bytes
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)


async def test_pdf_converter_default_budget_is_memory_required(
    make_converter: Callable[..., PdfTextConverter], samples: Samples
) -> None:
    """Without a budget, a worker may use memory_required() of its document."""
    converter = make_converter(_fault="hang")
    size = samples.files["text"].stat().st_size
    assert await budget_seen(converter, "text") == converter.memory_required(
        size, PAGES
    )


async def test_pdf_converter_budget_function_per_document(
    make_converter: Callable[..., PdfTextConverter],
) -> None:
    """A budget function sets each document's budget."""
    converter = make_converter(memory_budget=lambda _: 300 * MIB, _fault="hang")
    assert await budget_seen(converter, "text") == 300 * MIB


# -- in a job ---------------------------------------------------------------


def tapped(
    converter: PdfTextConverter, started: asyncio.Event
) -> Callable[[str, Callable[[float], None]], Any]:
    """The converter, setting ``started`` at its first progress report."""

    async def convert(document_id: str, progress: Callable[[float], None]) -> Any:
        def tap(value: float) -> None:
            started.set()
            progress(value)

        return await converter(document_id, tap)

    return convert


async def test_pdf_job_through_manager(
    make_manager: Build,
    make_converter: Callable[..., PdfTextConverter],
    recorder: Recorder,
    results: Path,
) -> None:
    """A job of good and bad PDFs converts the good, fails the bad, and completes."""
    manager = make_manager(converter=make_converter())
    job_id = manager.create_job("s", ["text", "encrypted", "damaged", "text"])
    await manager.start_job(job_id)
    job = await asyncio.wait_for(manager.wait_job(job_id), TIMEOUT)

    assert job.status is JobStatus.COMPLETED
    assert [d.status for d in job.documents] == [
        DocumentStatus.CONVERTED,
        DocumentStatus.FAILED,
        DocumentStatus.FAILED,
        DocumentStatus.CONVERTED,
    ]
    assert job.documents[1].error == (
        "EncryptedPdf: document encrypted is encrypted; streamer cannot open"
        " password-protected PDFs"
    )
    assert job.documents[2].error == (
        "DamagedPdf: document damaged is damaged: PDFium cannot parse it"
    )
    assert job.error is not None and job.error.startswith("2 of 4 documents failed")
    converted = [d.result for d in job.documents if d.result is not None]
    assert [r["pages"] for r in converted] == [PAGES, PAGES]
    assert len(files_under(results)) == 2
    assert recorder.types(job_id).count("job.document_failed") == 2
    assert recorder.types(job_id)[-1] == "job.completed"


async def test_pdf_job_document_timeout_ends_worker(
    make_manager: Build,
    make_converter: Callable[..., PdfTextConverter],
    clock: ManualClock,
) -> None:
    """The engine's document timeout ends a hung worker and fails its document."""
    converter = make_converter(_fault="hang")
    started = asyncio.Event()
    manager = make_manager(converter=tapped(converter, started), document_timeout=30)
    job_id = manager.create_job("s", ["text"])
    await manager.start_job(job_id)
    await asyncio.wait_for(started.wait(), TIMEOUT)
    (worker,) = converter.workers()
    watched = Watched(worker)
    assert not watched.gone()

    await clock.advance(31)
    job = await asyncio.wait_for(manager.wait_job(job_id), TIMEOUT)
    assert job.status is JobStatus.FAILED
    assert job.documents[0].error == "DocumentTimeout: conversion timed out after 30 s"
    assert watched.gone()


async def test_pdf_job_cancel_ends_worker(
    make_manager: Build, make_converter: Callable[..., PdfTextConverter]
) -> None:
    """Cancelling a job ends the worker of the document it was converting."""
    converter = make_converter(_fault="hang")
    started = asyncio.Event()
    manager = make_manager(converter=tapped(converter, started))
    job_id = manager.create_job("s", ["text", "text"])
    await manager.start_job(job_id)
    await asyncio.wait_for(started.wait(), TIMEOUT)
    (worker,) = converter.workers()
    watched = Watched(worker)
    assert not watched.gone()

    assert await manager.cancel_job(job_id)
    job = await asyncio.wait_for(manager.wait_job(job_id), TIMEOUT)
    assert job.status is JobStatus.CANCELLED
    assert [d.status for d in job.documents] == [
        DocumentStatus.CANCELLED,
        DocumentStatus.PENDING,
    ]
    assert watched.gone()
