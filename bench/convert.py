"""What converting a PDF in a worker process costs, against PDFium in-process.

``python bench/convert.py`` takes about half a minute, ``--quick`` a few
seconds; ``--check`` makes a missed target exit 1.

It makes a PDF of 200 pages of dense text (about 4,000 characters a page)
and converts it over and over, two ways:

* worker: a one-document job of a JobManager with one subscriber, whose
  converter is ``PdfTextConverter``: a new worker process for each job, from
  the fork server, every page reported through the pipe to the job's
  progress events;
* direct: ``streamer._pdfworker.work()`` called here, in this process, which
  is the very code the worker runs, so both extract and write the same text.

The machine is shared and noisy, so every round runs both, in an order that
alternates, and the overhead is the median of the rounds' ratios. The
target: the worker is less than 10% slower than the direct call.

A few more worker jobs then run with a ticker on the event loop, which
sleeps 1 ms at a time and records how late it wakes, to show that the loop
stays free while a worker runs. They are timed apart from the rounds: the
ticker wakes the loop a thousand times a second, which costs some 30 ms of
CPU a job, taken from the worker on two busy cores, and would bill the
worker path for the instrument; and during a direct round it cannot tick.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from streamer._pdfworker import Task, keep_freed_memory, work
from streamer.events import JobEvent, JobProgress
from streamer.job import JobStatus
from streamer.manager import JobManager
from streamer.memory import StaticMemoryProbe
from streamer.pdf import PdfTextConverter

# tests.pdfs is in the repository, not in the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_TARGET_OVERHEAD = 0.10
_PAGES = 200
# Far more memory than any request, so admission never waits.
_PLENTY_BYTES = 1 << 50
_TICK = 0.001


@dataclass(frozen=True, slots=True)
class Settings:
    """How long to measure."""

    label: str
    rounds: int
    # Worker jobs run with the ticker, after the rounds.
    ticked: int


FULL = Settings("full", rounds=40, ticked=10)
QUICK = Settings("quick", rounds=8, ticked=3)


class Ticker:
    """Sleeps 1 ms at a time on the loop, and keeps how late each wake-up was."""

    def __init__(self) -> None:
        self.lateness: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(_TICK)
            self.lateness.append(time.perf_counter() - before - _TICK)


class Bench:
    """One JobManager, one converter and one PDF, converted both ways."""

    def __init__(self, pdf: Path, scratch: Path, start_method: str) -> None:
        self.pdf = pdf
        self.scratch = scratch
        self.results = scratch / "results"
        self.converter = PdfTextConverter(
            lambda _: pdf, self.results, start_method=start_method
        )
        self.manager = JobManager(
            memory_probe=StaticMemoryProbe(_PLENTY_BYTES),
            memory_required_gb=0.001,
        )
        self.manager.subscribe(self._deliver)
        self.progress_events = 0
        self.ticker = Ticker()

    def _deliver(self, event: JobEvent) -> None:
        if isinstance(event, JobProgress):
            self.progress_events += 1

    async def worker(self) -> float:
        """Seconds for a one-document job, from its creation to its end."""
        manager = self.manager
        start = time.perf_counter()
        job_id = manager.create_job("bench", ["bench"])
        await manager.start_job(job_id, self.converter)
        job = await manager.wait_job(job_id)
        elapsed = time.perf_counter() - start

        # A failed job would have timed an error path, not a conversion.
        if job.status is not JobStatus.COMPLETED or job.error:
            raise RuntimeError(f"bench job is {job.status.value}: {job.error}")
        result = job.documents[0].result
        assert result is not None and result["pages"] == _PAGES
        (self.results / result["text_file"]).unlink()
        manager.remove_job(job_id)
        return elapsed

    def direct(self) -> float:
        """Seconds for the same extraction called in this process."""
        output = self.scratch / "direct.txt"
        pages: list[int] = []
        start = time.perf_counter()
        work(Task(str(self.pdf), str(output)), lambda m: pages.append(len(m)))
        elapsed = time.perf_counter() - start
        assert len(pages) == _PAGES + 2
        output.unlink()
        return elapsed


def _make_pdf(folder: Path) -> Path:
    # Imported here, not at the top: on Python before 3.13 a fork server
    # worker runs the main module again (CPython gh-126631), so importing
    # fpdf2 at the top would bill every worker for loading it, as no server
    # would.
    from tests.pdfs import bench_pdf

    return bench_pdf(folder, _PAGES)


async def _run(settings: Settings, start_method: str) -> bool:
    # A worker sets glibc up to keep freed memory, which saves it a fifth of
    # its CPU time on dense text; the direct call gets the same, so that the
    # figures compare the process and the pipe, not two allocators.
    keep_freed_memory()
    with tempfile.TemporaryDirectory(prefix="streamer-bench-") as scratch:
        folder = Path(scratch)
        pdf = _make_pdf(folder)
        bench = Bench(pdf, folder, start_method)
        print(
            f"convert bench ({settings.label}): {_PAGES} pages,"
            f" {pdf.stat().st_size / 1024:.0f} KiB, start method {start_method},"
            f" Python {platform.python_version()}, {os.cpu_count()} CPUs"
        )

        # The first worker job waits for the first worker to boot, and under
        # "forkserver" for the fork server to start and preload PDFium, once
        # per server process; later ones find a worker started ahead.
        cold = await bench.worker()
        bench.direct()
        print(f"  first worker job, with the first boot: {cold * 1000:.0f} ms")

        workers: list[float] = []
        directs: list[float] = []
        ratios: list[float] = []
        events_before = bench.progress_events
        for round_ in range(settings.rounds):
            if round_ % 2:
                direct = bench.direct()
                worker = await bench.worker()
            else:
                worker = await bench.worker()
                direct = bench.direct()
            workers.append(worker)
            directs.append(direct)
            ratios.append(worker / direct)
        events = (bench.progress_events - events_before) / settings.rounds

        bench.ticker.start()
        ticked = [await bench.worker() for _ in range(settings.ticked)]
        await bench.ticker.stop()

    overhead = statistics.median(ratios) - 1
    lateness = sorted(bench.ticker.lateness)
    p50 = lateness[len(lateness) // 2] * 1000
    p99 = lateness[int(len(lateness) * 0.99)] * 1000
    print(f"  {'':>8} {'median ms':>10} {'pages/s':>9}   spread (min..max ms)")
    _line("worker", workers)
    _line("direct", directs)
    gap = statistics.median(w - d for w, d in zip(workers, directs, strict=True))
    print(f"  per job: {gap * 1000:.1f} ms more, {events:.1f} progress events")
    print(
        f"  {settings.ticked} more worker jobs with a {_TICK * 1000:g} ms ticker:"
        f" {statistics.median(ticked) * 1000:.1f} ms median; loop wake-up"
        f" lateness p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    )
    passed = overhead < _TARGET_OVERHEAD
    verdict = "PASS" if passed else "FAIL"
    print(
        f"  overhead {overhead * 100:+.1f}% (median of {settings.rounds} rounds'"
        f" ratios), target < {_TARGET_OVERHEAD:.0%}: {verdict}"
    )
    return passed


def _line(label: str, seconds: list[float]) -> None:
    median = statistics.median(seconds)
    print(
        f"  {label:>8} {median * 1000:>10.1f} {_PAGES / median:>9.0f}"
        f"   {min(seconds) * 1000:.1f}..{max(seconds) * 1000:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--check", action="store_true", help="exit 1 on FAIL")
    parser.add_argument(
        "--start-method",
        choices=("forkserver", "spawn"),
        default="forkserver",
        help="how workers start (default forkserver)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    passed = asyncio.run(_run(settings, args.start_method))
    return 0 if passed or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
