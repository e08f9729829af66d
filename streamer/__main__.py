"""``python -m streamer``: the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from .demo import DemoConverter
from .events import JobEvent
from .manager import JobManager
from .memory import GIB, SystemMemoryProbe

logger = logging.getLogger("streamer.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="convert a few documents with the demo converter, logging progress"
    )
    demo.add_argument("--documents", type=int, default=4, help="how many (default 4)")
    demo.add_argument(
        "--jobs", type=int, default=2, help="jobs run side by side (default 2)"
    )
    demo.add_argument(
        "--seconds", type=float, default=1.5, help="seconds per document (default 1.5)"
    )
    demo.add_argument(
        "--failure-rate",
        type=float,
        default=0.2,
        help="chance that a document fails (default 0.2)",
    )
    demo.add_argument(
        "--memory-required-gb",
        type=float,
        default=None,
        help="memory per document (default: a third of what is free now)",
    )
    return parser


async def _demo(args: argparse.Namespace) -> int:
    # The demo must run on any machine, so unless told otherwise it asks for a
    # share of what is free instead of the production default of 10 GB.
    required = args.memory_required_gb
    if required is None:
        required = round(SystemMemoryProbe()().available_bytes / GIB / 3, 2)
    manager = JobManager(
        converter=DemoConverter(seconds=args.seconds, failure_rate=args.failure_rate),
        memory_required_gb=required,
        progress_rate=2.0,
    )

    def log(event: JobEvent) -> None:
        job = event.job
        logger.info(
            "%s %s: %s %d/%d, %.0f%%, eta %s",
            event.job_id,
            event.type,
            job["status"],
            job["files_completed"],
            job["files_total"],
            job["progress"] * 100,
            job["eta_human"] or "unknown",
        )

    manager.subscribe(log)
    job_ids = []
    for number in range(args.jobs):
        documents = [f"doc-{number + 1}-{i + 1}" for i in range(args.documents)]
        job_ids.append(manager.create_job("demo", documents))
    for job_id in job_ids:
        await manager.start_job(job_id)
    failed = 0
    for job_id in job_ids:
        job = await manager.wait_job(job_id)
        failed += job.status.value == "failed"
        logger.info(
            "%s ended %s: %s", job_id, job.status.value, job.error or "no errors"
        )
    return 1 if failed == len(job_ids) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.command == "demo":
        return asyncio.run(_demo(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
