"""``streamer``: serve, convert and watch from the command line.

``streamer serve`` runs the server and prints, once, a viewer URL that holds a
session's token in its fragment, which browsers never send to a server and
no log line carries. ``streamer convert`` uploads files to a server (its own,
in-process, unless given one), follows the job with progress bars and writes
each result next to its input. ``streamer watch`` follows a session's events,
as lines for people or JSON lines for programs. ``streamer demo`` runs the
engine alone with the demo converter.

Exit codes: 0 for success, 1 when a conversion or a request failed, 2 for a
usage error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from starlette.applications import Starlette

from .client import (
    FINAL_STATUSES,
    ClientError,
    ConnectionState,
    EventStream,
    StreamerClient,
)
from .demo import DemoConverter
from .events import JobEvent
from .manager import JobManager
from .memory import GIB, SystemMemoryProbe
from .runner import StreamerServer, server_config

__all__ = ["main"]

logger = logging.getLogger("streamer.cli")

#: The exit code of a command stopped by Ctrl-C, as shells report SIGINT.
INTERRUPTED = 130

_LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

# How long convert waits, after the server answered a cancel, for the stream
# to tell that the job ended: a converter may take a while to clean up.
_CANCEL_WAIT = 30.0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        return INTERRUPTED
    return result


# -- the arguments ----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamer",
        description="Run document conversions in the background, follow them live.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _demo_arguments(commands)
    _serve_arguments(commands)
    _convert_arguments(commands)
    _watch_arguments(commands)
    return parser


def _size(text: str) -> int:
    from .converters import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``24h`` or ``7d``."""
    value = text.strip().lower()
    scale = _UNITS.get(value[-1:])
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration such as 30s, 15m, 24h or 7d"
        ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration of 0 or more")
    return seconds


def _duration_or_off(text: str) -> float | None:
    return None if text.strip().lower() in {"off", "never", "none"} else _duration(text)


def _engine_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--converter",
        help="'demo', or package.module:function (default: PDF to text)",
    )
    command.add_argument(
        "--memory-required",
        type=_size,
        metavar="SIZE",
        help="memory per document unless the converter says, e.g. 10GB, 512MB",
    )
    command.add_argument(
        "--max-concurrent", type=int, metavar="N", help="documents at once (default 4)"
    )


def _serve_arguments(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the HTTP and WebSocket server, print the viewer's URL",
        description="Run the server; print a viewer URL with a new session in it.",
    )
    serve.set_defaults(run=_serve)
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    serve.add_argument(
        "--port", type=int, default=8000, help="default 8000; 0 for a free one"
    )
    serve.add_argument(
        "--data-dir", type=Path, help="where uploads and results are kept"
    )
    _engine_arguments(serve)
    serve.add_argument(
        "--origin",
        action="append",
        dest="origins",
        metavar="ORIGIN",
        help="an origin allowed to open the WebSocket (repeatable; '*' for any)",
    )
    serve.add_argument(
        "--secret",
        default=os.environ.get("STREAMER_SECRET"),
        help="token signing secret (default: $STREAMER_SECRET, else one kept"
        " in the data directory)",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=_duration,
        metavar="DURATION",
        help="how long converting documents may finish on shutdown (default 10s)",
    )
    serve.add_argument(
        "--retention",
        type=_duration_or_off,
        default=24 * 3600.0,
        metavar="DURATION",
        help="remove finished jobs, results and unused uploads this long after"
        " (default 24h; 'off' keeps everything)",
    )
    serve.add_argument(
        "--ws-max-size",
        type=_size,
        default=1 << 16,
        metavar="SIZE",
        help="largest WebSocket frame accepted (default 64KiB)",
    )
    serve.add_argument(
        "--ws-ping-interval",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="seconds between protocol pings (default 20)",
    )
    serve.add_argument(
        "--ws-ping-timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="seconds a client has to answer a ping (default 20)",
    )


def _convert_arguments(commands: Any) -> None:
    convert = commands.add_parser(
        "convert",
        help="convert files on a server, with live progress",
        description="Upload files, convert them, write <name>.txt for each."
        " --converter, --memory-required and --max-concurrent set up the server"
        " that convert starts when it is given no --url.",
    )
    convert.set_defaults(run=_blocking(_convert))
    convert.add_argument("files", nargs="+", type=Path, metavar="FILE")
    convert.add_argument(
        "--url",
        help="a running server: its root, a session URL or the viewer URL"
        " (default: start one in this process)",
    )
    convert.add_argument("--token", help="the session's token, for a session URL")
    convert.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write the results into DIR instead of beside the inputs",
    )
    convert.add_argument(
        "--json", action="store_true", help="print events as JSON lines, no bars"
    )
    _engine_arguments(convert)


def _watch_arguments(commands: Any) -> None:
    watch = commands.add_parser(
        "watch",
        help="follow a session's events",
        description="Follow a session's events until interrupted.",
    )
    watch.set_defaults(run=_blocking(_watch))
    watch.add_argument(
        "url", metavar="URL", help="the viewer URL, or a session URL with --token"
    )
    watch.add_argument("--token", help="the session's token")
    watch.add_argument(
        "--json", action="store_true", help="print each message as a JSON line"
    )


def _demo_arguments(commands: Any) -> None:
    demo = commands.add_parser(
        "demo", help="convert a few documents with the demo converter, logging progress"
    )
    demo.set_defaults(run=_blocking(_demo))
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


def _blocking(
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    return lambda args: asyncio.run(command(args))


def _configure_logging(level: int) -> None:
    logging.basicConfig(level=level, format=_LOG_FORMAT, stream=sys.stderr)


def _fail(message: str, code: int = 1) -> int:
    print(f"streamer: {message}", file=sys.stderr, flush=True)
    return code


# -- serve ------------------------------------------------------------------------


def _app(args: argparse.Namespace, **settings: Any) -> Starlette:
    """The app for ``args``: the engine options that were given, and ``settings``.

    A setting of None is passed on, since for some (``retention``) None has a
    meaning of its own.
    """
    from .app import create_app

    engine = {
        "converter": args.converter,
        "memory_required": args.memory_required,
        "max_concurrent": args.max_concurrent,
    }
    given = {name: value for name, value in engine.items() if value is not None}
    return create_app(**given, **settings)


def viewer_url(host: str, port: int, session_id: str, token: str) -> str:
    """The viewer's address, the session in its fragment, which stays local."""
    if host in {"", "0.0.0.0", "::"}:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/#session={session_id}&token={token}"


def new_session(app: Starlette) -> tuple[str, str]:
    """A session of a started ``app`` and its token, made in-process."""
    server = app.state.streamer
    session = server.sessions.create()
    server.journal.session_changed(session)
    token: str = server.signer.mint(session.session_id, ttl=server.settings.token_ttl)
    return session.session_id, token


class _Server(StreamerServer):
    """A server that tells, once it listens, the port it got.

    Without ``signals`` it leaves Ctrl-C to the command that runs it.
    """

    def __init__(
        self, config: Any, announce: Callable[[int], None], *, signals: bool = True
    ) -> None:
        super().__init__(config)
        self._announce = announce
        self._signals = signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._announce(self.servers[0].sockets[0].getsockname()[1])

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if self._signals:
            with super().capture_signals():
                yield
        else:
            yield


def _serve(args: argparse.Namespace) -> int:
    _configure_logging(logging.INFO)
    settings: dict[str, Any] = {
        "data_dir": args.data_dir,
        "secret": args.secret,
        "shutdown_grace": args.shutdown_grace,
        "retention": args.retention,
    }
    if args.origins:
        settings["origins"] = tuple(args.origins)
    try:
        app = _app(args, **settings)
    except (ValueError, TypeError) as exc:
        return _fail(str(exc))

    def announce(port: int) -> None:
        # After startup, when the store has given the signing secret.
        session_id, token = new_session(app)

        # stdout, never a logger: the token must not reach a log file.
        url = viewer_url(args.host, port, session_id, token)
        print(f"streamer: open the viewer at\n\n    {url}\n", flush=True)

    # uvicorn's loggers go through the root logger, so its lines take the
    # same form as streamer's and all of them go to stderr.
    config = server_config(
        app,
        host=args.host,
        port=args.port,
        ws_max_size=args.ws_max_size,
        ws_ping_interval=args.ws_ping_interval,
        ws_ping_timeout=args.ws_ping_timeout,
        log_config=None,
        log_level="info",
    )
    server = _Server(config, announce)
    # uvicorn stops cleanly on Ctrl-C, then passes the signal on.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0


# -- convert ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _local_server(args: argparse.Namespace) -> AsyncIterator[StreamerClient]:
    """A server in this process, on a free port, and a client of a new session."""
    with tempfile.TemporaryDirectory(prefix="streamer-") as data_dir:
        app = _app(args, data_dir=data_dir)
        config = server_config(
            app, host="127.0.0.1", port=0, log_config=None, log_level="warning"
        )
        listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        server = _Server(config, listening.set_result, signals=False)
        task = asyncio.create_task(server.serve())
        try:
            either: set[asyncio.Future[Any]] = {listening, task}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not listening.done():
                task.result()
                raise ClientError(None, "server_failed", "the server did not start")
            session_id, token = new_session(app)
            async with StreamerClient(
                f"http://127.0.0.1:{listening.result()}",
                session_id=session_id,
                token=token,
            ) as client:
                yield client
        finally:
            server.should_exit = True
            await task


def _destinations(
    files: list[Path], out: Path | None
) -> tuple[dict[Path, Path], str | None]:
    """Where each file's text goes, or why it cannot go there."""
    targets = {
        path: (out / path.name if out else path).with_suffix(".txt") for path in files
    }
    seen: dict[Path, Path] = {}
    for path, target in targets.items():
        if target in seen:
            return {}, f"{seen[target]} and {path} would both write {target}"
        seen[target] = path
    return targets, None


async def _convert(args: argparse.Namespace) -> int:
    _configure_logging(logging.WARNING)
    files = list(dict.fromkeys(args.files))
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        return _fail(f"no such file: {', '.join(missing)}", 2)
    targets, clash = _destinations(files, args.out)
    if clash:
        return _fail(clash, 2)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)

    try:
        async with contextlib.AsyncExitStack() as stack:
            if args.url:
                client = await stack.enter_async_context(
                    StreamerClient.from_url(args.url, token=args.token)
                )
                if client.session_id is None:
                    await client.create_session()
            else:
                client = await stack.enter_async_context(_local_server(args))
            return await _convert_with(client, files, targets, args.json)
    except ClientError as exc:
        return _fail(str(exc))
    except asyncio.CancelledError:
        return INTERRUPTED


async def _convert_with(
    client: StreamerClient,
    files: list[Path],
    targets: dict[Path, Path],
    as_json: bool,
) -> int:
    interrupt = _Interrupt(client)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, interrupt)
    stack = contextlib.AsyncExitStack()
    try:
        documents = await client.upload(files)
        sources = dict(zip((d["document_id"] for d in documents), files, strict=True))

        # The stream opens before the job exists, so that none of the job's
        # events can pass unseen: once its first message is in, the server
        # holds everything that follows for this client.
        stream = await stack.enter_async_context(client.events())
        await anext(stream)
        with _JsonView() if as_json else _ProgressView(documents) as view:
            interrupt.creating = True
            job = await client.create_job(list(sources))
            job_id = job["job_id"]
            final = await interrupt.follow(stream, job_id, view)
            if interrupt.cancelling is not None:
                return INTERRUPTED

            # A result that cannot be had (a converter that writes no text)
            # fails its file alone; the others are still written.
            unwritten = 0
            detail = await client.get_job(job_id)
            for document in detail["documents"]:
                if document["status"] != "converted":
                    continue
                source = sources[document["document_id"]]
                try:
                    target = await client.download_result(
                        job_id, document["document_id"], targets[source]
                    )
                except ClientError as exc:
                    unwritten += 1
                    _fail(f"{source}: {exc}")
                    continue
                view.written(document["document_id"], source, target)
            view.finished(final)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await interrupt.aclose()
        await stack.aclose()
    converted = final["status"] == "completed" and not final["files_failed"]
    return 0 if converted and not unwritten else 1


class _Interrupt:
    """What Ctrl-C does: cancel the job the first time, give up the second.

    Before there is a job, or once its cancel is under way, Ctrl-C cancels
    the command's task, which then exits with 130. While the job is being
    created, the cancel waits for its id, so no job is left behind.
    """

    def __init__(self, client: StreamerClient) -> None:
        self._client = client
        self._task = asyncio.current_task()
        self._job_id: str | None = None
        self._requested = False
        self._follower: asyncio.Task[dict[str, Any]] | None = None
        self.creating = False
        self.cancelling: asyncio.Task[None] | None = None

    def __call__(self) -> None:
        if self.cancelling is not None or not (self.creating or self._job_id):
            if self._task is not None:
                self._task.cancel()
            return
        print(
            "streamer: cancelling the job (Ctrl-C again to stop waiting)",
            file=sys.stderr,
            flush=True,
        )
        self._requested = True
        self._start_cancel()

    def _start_cancel(self) -> None:
        if self._requested and self._job_id and self.cancelling is None:
            self.cancelling = asyncio.create_task(self._cancel(self._job_id))

    async def follow(
        self, stream: EventStream, job_id: str, view: _JsonView | _ProgressView
    ) -> dict[str, Any]:
        """The job's last state, once it ended, shown on the way."""
        self._job_id = job_id
        self._follower = asyncio.create_task(_follow(stream, job_id, view))
        self._start_cancel()
        try:
            return await self._follower
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        # The stream did not tell of the end in time; the server knows.
        return await self._client.get_job(job_id)

    async def _cancel(self, job_id: str) -> None:
        # A 409 means the job ended meanwhile, which the stream tells.
        with contextlib.suppress(ClientError):
            await self._client.cancel_job(job_id)

        # The stream usually tells of the end before the answer arrives; one
        # that has not within a while is not waited for any longer.
        assert self._follower is not None
        _, pending = await asyncio.wait({self._follower}, timeout=_CANCEL_WAIT)
        for follower in pending:
            follower.cancel()

    async def aclose(self) -> None:
        for task in (self._follower, self.cancelling):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ClientError):
                    await task


async def _follow(
    stream: EventStream, job_id: str, view: _JsonView | _ProgressView
) -> dict[str, Any]:
    async for message in stream:
        # The stream is the whole session's, which may have other jobs.
        if message.get("job_id", job_id) != job_id:
            continue
        if message["type"] == "snapshot":
            jobs = [job for job in message["jobs"] if job["job_id"] == job_id]
            message = {**message, "jobs": jobs}

        job = stream.state.get(job_id)
        view.show(message, job)
        if message["type"] == "job.removed":
            final: dict[str, Any] = message["job"]
            return final
        if job is not None and job["status"] in FINAL_STATUSES:
            return job
    raise ClientError(None, "stream_ended", f"the stream of job {job_id} ended")


class _JsonView:
    """Every message as a JSON line, for programs."""

    def __enter__(self) -> _JsonView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def show(self, message: dict[str, Any], job: dict[str, Any] | None) -> None:
        _print_json(message)

    def written(self, document_id: str, source: Path, target: Path) -> None:
        _print_json(
            {
                "type": "result.written",
                "document_id": document_id,
                "source": str(source),
                "path": str(target),
            }
        )

    def finished(self, job: dict[str, Any]) -> None:
        return None


class _ProgressView:
    """A progress bar for the job and a line for each document, on stderr."""

    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self._names = {
            d["document_id"]: d.get("filename") or d["document_id"] for d in documents
        }
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[eta]}"),
            TextColumn("{task.fields[status]}"),
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task(
            f"{len(documents)} documents", total=1.0, eta="", status="starting"
        )

    def __enter__(self) -> _ProgressView:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def show(self, message: dict[str, Any], job: dict[str, Any] | None) -> None:
        document = message.get("document")
        if isinstance(document, dict):
            name = self._names.get(document["document_id"], document["document_id"])
            if document["status"] == "converted":
                self._progress.console.print(f"converted {name}")
            else:
                self._progress.console.print(f"failed {name}: {document['error']}")
        if job is None:
            return
        eta = job.get("eta_human")
        self._progress.update(
            self._task,
            completed=job["progress"],
            eta=f"eta {eta}" if eta and job["status"] not in FINAL_STATUSES else "",
            status=self._status(job),
        )

    def _status(self, job: dict[str, Any]) -> str:
        memory = job.get("memory_status")
        if job["status"] == "waiting_for_memory" and isinstance(memory, dict):
            return (
                f"waiting for memory: {memory['available_gb']} GB free,"
                f" {memory['required_gb']} GB needed"
            )
        current = job.get("current_file")
        if job["status"] == "running" and current:
            return f"converting {self._names.get(current, current)}"
        return str(job["status"])

    def written(self, document_id: str, source: Path, target: Path) -> None:
        print(f"{source} -> {target}", flush=True)

    def finished(self, job: dict[str, Any]) -> None:
        if job.get("error"):
            self._progress.console.print(f"{job['status']}: {job['error']}")


def _print_json(message: dict[str, Any]) -> None:
    print(json.dumps(message, separators=(",", ":")), flush=True)


# -- watch ------------------------------------------------------------------------


async def _watch(args: argparse.Namespace) -> int:
    _configure_logging(logging.WARNING)
    client = StreamerClient.from_url(args.url, token=args.token)
    if client.session_id is None or client.token is None:
        await client.aclose()
        return _fail(
            "the URL names no session and token: give the viewer URL, or a"
            " session URL (.../api/sessions/<id>) with --token",
            2,
        )

    def connection(state: ConnectionState) -> None:
        print(f"streamer: {state}", file=sys.stderr, flush=True)

    try:
        async with client, client.events(on_connection=connection) as stream:
            async for message in stream:
                if args.json:
                    _print_json(message)
                else:
                    print(describe(message), flush=True)
    except ClientError as exc:
        return _fail(str(exc))
    return 0


def describe(message: dict[str, Any]) -> str:
    """A message of the stream as one line for people."""
    kind = message.get("type")
    if kind == "snapshot":
        jobs = message.get("jobs", [])
        head = "reset, " if message.get("reset") else ""
        lines = [f"{head}{len(jobs)} job{'' if len(jobs) == 1 else 's'}"]
        lines += [f"  {_describe_job(job)}" for job in jobs]
        return "\n".join(lines)
    if kind == "resumed":
        return f"resumed: {message.get('replayed', 0)} missed events follow"
    job = message.get("job")
    if not isinstance(job, dict):
        return json.dumps(message)

    line = f"{str(message.get('ts', ''))[11:19]} {kind} {_describe_job(job)}"
    document = message.get("document")
    if isinstance(document, dict):
        line += f" | {document['document_id']} {document['status']}"
        if document.get("error"):
            line += f": {document['error']}"
    memory = message.get("memory")
    if isinstance(memory, dict) and "message" in memory:
        line += f" | {memory['message']}"
    return line


def _describe_job(job: dict[str, Any]) -> str:
    line = (
        f"{job['job_id']} {job['status']} {job['files_completed']}/"
        f"{job['files_total']} {round(job['progress'] * 100)}%"
    )
    if job.get("eta_human") and job["status"] not in FINAL_STATUSES:
        line += f" eta {job['eta_human']}"
    return line


# -- demo -------------------------------------------------------------------------


async def _demo(args: argparse.Namespace) -> int:
    _configure_logging(logging.INFO)

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
