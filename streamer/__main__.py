"""``python -m streamer``: the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
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
    serve = commands.add_parser("serve", help="run the HTTP and WebSocket server")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="default 8000")
    serve.add_argument(
        "--secret",
        default=os.environ.get("STREAMER_SECRET"),
        help="token signing secret (default: $STREAMER_SECRET, else random)",
    )
    serve.add_argument(
        "--origin",
        action="append",
        dest="origins",
        help="an origin allowed to open the WebSocket (repeatable)",
    )
    serve.add_argument(
        "--memory-required-gb",
        type=float,
        default=10.0,
        help="memory per document (default 10)",
    )
    serve.add_argument("--ws-max-size", type=int, default=1 << 16)
    serve.add_argument("--ws-ping-interval", type=float, default=20.0)
    serve.add_argument("--ws-ping-timeout", type=float, default=20.0)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from .app import create_app
    from .runner import StreamerServer, server_config

    app = create_app(
        JobManager(memory_required_gb=args.memory_required_gb),
        secret=args.secret,
        origins=tuple(args.origins) if args.origins else None,
    )
    print(f"streamer serving on http://{args.host}:{args.port}", flush=True)
    config = server_config(
        app,
        host=args.host,
        port=args.port,
        ws_max_size=args.ws_max_size,
        ws_ping_interval=args.ws_ping_interval,
        ws_ping_timeout=args.ws_ping_timeout,
        log_level="info",
    )
    StreamerServer(config).run()
    return 0


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
    if args.command == "serve":
        return _serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
