"""Tests of the command line: ``python -m streamer`` run as a real process.

Servers are real too: ``serve`` in its own process, or one in the test's
loop on port 0 for ``watch`` and ``convert`` to talk to. Every process is
bounded by a timeout and killed by its PID if it outlives its test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from streamer import JobManager, SystemClock
from streamer.app import create_app
from streamer.cli import _duration, _duration_or_off, describe, main, viewer_url
from streamer.documents import DocumentStore
from streamer.tokens import TokenSigner

from .conftest import TIMEOUT, Recorder
from .helpers import Controlled
from .live import Live, serve
from .pdfs import page_line, text_pdf

SECRET = "test secret of the command-line tests"

#: A process's first answer waits for its imports, which take a while.
STARTUP = 4 * TIMEOUT


class Program:
    """A ``python -m streamer`` process: its stdout line by line, its stderr."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._stderr = bytearray()
        # Read all along, so a chatty process never blocks on a full pipe.
        self._draining = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(65536):
            self._stderr += chunk

    @property
    def stderr(self) -> str:
        return self._stderr.decode()

    async def line(self) -> str:
        """The next line of stdout, without its newline."""
        assert self.process.stdout is not None
        async with asyncio.timeout(STARTUP):
            raw = await self.process.stdout.readline()
        if not raw:
            raise EOFError(f"stdout ended; stderr: {self.stderr}")
        self.lines.append(raw.decode().rstrip("\n"))
        return self.lines[-1]

    async def line_where(self, wanted: Callable[[str], bool]) -> str:
        while not wanted(line := await self.line()):
            pass
        return line

    async def wait(self) -> int:
        """The exit code, once the process ended and its output is read."""
        assert self.process.stdout is not None
        async with asyncio.timeout(STARTUP):
            rest = await self.process.stdout.read()
            code = await self.process.wait()
            await self._draining
        self.lines += rest.decode().splitlines()
        return code

    async def interrupt(self) -> int:
        """Press Ctrl-C; the exit code."""
        os.kill(self.process.pid, signal.SIGINT)
        return await self.wait()

    async def kill(self) -> None:
        """Kill the process by its PID if it still runs, and reap it."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
        async with asyncio.timeout(STARTUP):
            await self.process.wait()
            await self._draining


@contextlib.asynccontextmanager
async def streamer(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[Program]:
    """Run ``python -m streamer *args`` until the block ends."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streamer",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    program = Program(process)
    try:
        yield program
    finally:
        await program.kill()


@pytest.fixture
def converter() -> Controlled:
    return Controlled()


@pytest.fixture
def manager(make_manager: Callable[..., JobManager]) -> JobManager:
    return make_manager(clock=SystemClock(), memory_required_gb=1.0)


def session_url(live: Live, session_id: str, token: str) -> str:
    return viewer_url("127.0.0.1", live.port, session_id, token)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Without a process


def test_cli_viewer_url_keeps_the_token_in_the_fragment() -> None:
    """The viewer URL names a reachable host and holds the token after '#'."""
    url = viewer_url("0.0.0.0", 8000, "ses-1", "st1.a.b")
    assert url == "http://127.0.0.1:8000/#session=ses-1&token=st1.a.b"
    assert viewer_url("::1", 1, "s", "t").startswith("http://[::1]:1/#")


def test_cli_describe_says_a_line_per_message() -> None:
    """Watch's human lines carry the job's state and the event's detail."""
    job = {
        "job_id": "job-1",
        "status": "waiting_for_memory",
        "files_completed": 1,
        "files_total": 3,
        "progress": 0.333,
        "eta_human": "20 seconds",
    }
    waiting = {
        "type": "job.memory_wait",
        "cursor": "ab-3",
        "job_id": "job-1",
        "ts": "2026-12-03T09:48:00+00:00",
        "job": job,
        "memory": {"message": "Waiting for memory: 6GB available, 10GB required"},
    }
    assert describe(waiting) == (
        "09:48:00 job.memory_wait job-1 waiting_for_memory 1/3 33% eta 20 seconds"
        " | Waiting for memory: 6GB available, 10GB required"
    )
    assert describe(
        {"type": "snapshot", "cursor": "ab-3", "reset": True, "jobs": [job]}
    ).splitlines()[0] == ("reset, 1 job")
    assert describe({"type": "resumed", "cursor": "ab-3", "replayed": 2}) == (
        "resumed: 2 missed events follow"
    )


def test_cli_convert_refuses_missing_files(tmp_path: Path) -> None:
    """A file that does not exist is a usage error, before any server starts."""
    assert main(["convert", str(tmp_path / "absent.pdf")]) == 2


def test_cli_convert_refuses_two_inputs_for_one_output(tmp_path: Path) -> None:
    """Two inputs that would write the same result are refused up front."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.pdf").write_bytes(b"%PDF-1.4\n")
    files = [str(tmp_path / folder / "same.pdf") for folder in ("a", "b")]

    assert main(["convert", *files, "--out", str(tmp_path / "out")]) == 2


# serve


async def test_cli_serve_prints_the_token_once_and_never_logs_it() -> None:
    """`serve --port 0` prints a viewer URL with the real port and a token.

    The token works, was signed with $STREAMER_SECRET, and is in no log line,
    not even the access log of a request that carried it in its query.
    """
    async with streamer(
        *("serve", "--port", "0", "--converter", "demo"),
        *("--memory-required", "512MB", "--max-concurrent", "2"),
        env={"STREAMER_SECRET": SECRET},
    ) as program:
        url = await program.line_where(lambda line: "#session=" in line)
        parts = urlsplit(url.strip())
        fragment = {key: values[0] for key, values in parse_qs(parts.fragment).items()}
        session_id, token = fragment["session"], fragment["token"]
        assert parts.port not in (None, 0)
        TokenSigner(SECRET).verify(token, session_id=session_id)

        base = f"http://127.0.0.1:{parts.port}/api/sessions/{session_id}"
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            listed = await http.get(f"{base}/jobs", params={"token": token})
            assert listed.json() == {"jobs": []}
            created = await http.post(
                f"{base}/jobs", json={"document_ids": ["a.pdf"]}, headers=bearer(token)
            )
            job_id = created.json()["job_id"]
            assert created.json()["memory_required_gb"] == 0.5

            # The demo converter takes seconds a document, so this ends it.
            cancelled = await http.post(
                f"{base}/jobs/{job_id}/cancel", headers=bearer(token)
            )
            assert cancelled.json()["status"] == "cancelled"

        assert await program.interrupt() == 0

    assert sum("#session=" in line for line in program.lines) == 1
    assert token not in program.stderr
    assert f"started job {job_id}" in program.stderr
    assert f"job {job_id} cancelled" in program.stderr
    assert "/jobs?token=[redacted]" in program.stderr


# watch


async def test_cli_watch_json_prints_each_message_as_a_line(
    manager: JobManager, converter: Controlled
) -> None:
    """`watch --json` prints the snapshot, then every event, one JSON per line."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        url = session_url(live, session_id, token)
        async with streamer("watch", "--json", url) as program:
            first = json.loads(await program.line())
            response = await live.http.post(
                f"/api/sessions/{session_id}/jobs",
                json={"document_ids": ["a.pdf"]},
                headers=bearer(token),
            )
            job_id = response.json()["job_id"]
            await converter.wait_started("a.pdf")
            converter.finish("a.pdf")
            messages = [json.loads(await program.line())]
            while messages[-1]["type"] != "job.completed":
                messages.append(json.loads(await program.line()))

            assert await program.interrupt() == 130

    assert first["type"] == "snapshot" and first["jobs"] == []
    types = [m["type"] for m in messages if m["type"] != "job.progress"]
    assert types == [
        "job.created",
        "job.started",
        "job.document_converted",
        "job.completed",
    ]
    assert {m["job_id"] for m in messages} == {job_id}
    assert "live" in program.stderr


async def test_cli_watch_prints_lines_for_people(
    manager: JobManager, converter: Controlled
) -> None:
    """Without --json, watch prints one readable line per event."""
    async with serve(create_app(manager, converter=converter)) as live:
        session_id, token = await live.session()
        session = f"{live.url}/api/sessions/{session_id}"
        async with streamer("watch", session, "--token", token) as program:
            assert await program.line() == "0 jobs"
            job_id = manager.create_job(session_id, ["a.pdf"])
            line = await program.line()
            assert await program.interrupt() == 130

    assert re.fullmatch(rf"\d\d:\d\d:\d\d job.created {job_id} pending 0/1 0%", line)


async def test_cli_watch_refused_token_exits_1(
    manager: JobManager, converter: Controlled
) -> None:
    """A refused token ends watch with 1 and the server's reason, no retries."""
    async with serve(create_app(manager, converter=converter)) as live:
        url = session_url(live, "ses-1", "st1.forged.token")
        async with streamer("watch", url) as program:
            assert await program.wait() == 1

    assert "401 token_invalid" in program.stderr
    assert "reconnecting" not in program.stderr


async def test_cli_watch_url_without_session_is_a_usage_error() -> None:
    """A URL that names no session and token exits 2 and says what to give."""
    async with streamer("watch", "http://127.0.0.1:1/") as program:
        assert await program.wait() == 2

    assert "--token" in program.stderr


# convert


class Picky:
    """A converter that fails the files named ``bad*`` and writes text for others."""

    def __init__(self) -> None:
        self.store: DocumentStore | None = None

    async def __call__(
        self, document_id: str, progress: Callable[[float], None]
    ) -> dict[str, Any]:
        assert self.store is not None
        document = self.store.get(document_id)
        assert document is not None
        if document.filename.startswith("bad"):
            raise ValueError("page 1: unsupported image encoding JBIG2")
        progress(0.5)
        self.store.ensure_dirs()
        (self.store.results_dir / f"{document_id}.txt").write_text(
            f"the text of {document.filename}"
        )
        return {"text_file": f"{document_id}.txt"}


async def test_cli_convert_without_url_writes_text_beside_inputs(
    tmp_path: Path,
) -> None:
    """With no server given, convert runs its own and writes <name>.txt files."""
    files = [text_pdf(tmp_path, 2, name="a.pdf"), text_pdf(tmp_path, 3, name="b.pdf")]
    async with streamer("convert", *map(str, files)) as program:
        assert await program.wait() == 0, program.stderr

    assert (tmp_path / "a.txt").read_text().startswith(page_line(1, 2))
    assert page_line(3, 3) in (tmp_path / "b.txt").read_text()
    assert program.lines == [f"{f} -> {f.with_suffix('.txt')}" for f in files]
    assert "converted a.pdf" in program.stderr


async def test_cli_convert_json_reports_a_failed_document_and_exits_1(
    tmp_path: Path, manager: JobManager
) -> None:
    """--json prints every message; a failed document means exit code 1."""
    files = [
        text_pdf(tmp_path, 1, name="good.pdf"),
        text_pdf(tmp_path, 2, name="bad.pdf"),
    ]
    converter = Picky()
    app = create_app(manager, converter=converter, data_dir=tmp_path / "data")
    converter.store = app.state.streamer.documents
    out = tmp_path / "out"
    async with serve(app) as live:
        session_id, token = await live.session()
        url = session_url(live, session_id, token)
        args = ["convert", *map(str, files), "--url", url, "--out", str(out), "--json"]
        async with streamer(*args) as program:
            assert await program.wait() == 1, program.stderr

    messages = [json.loads(line) for line in program.lines]
    assert messages[0]["type"] == "job.created"
    failed = [m for m in messages if m["type"] == "job.document_failed"]
    assert failed[0]["document"]["error"] == (
        "ValueError: page 1: unsupported image encoding JBIG2"
    )
    written = [m for m in messages if m["type"] == "result.written"]
    assert [(m["source"], m["path"]) for m in written] == [
        (str(files[0]), str(out / "good.txt"))
    ]
    assert (out / "good.txt").read_text() == "the text of good.pdf"
    assert not (out / "bad.txt").exists()


async def test_cli_convert_ctrl_c_cancels_the_job_and_exits_130(
    tmp_path: Path, manager: JobManager, converter: Controlled, recorder: Recorder
) -> None:
    """Ctrl-C during a conversion cancels the job on the server, then exits 130."""
    files = [text_pdf(tmp_path, 1, name="slow.pdf"), text_pdf(tmp_path, 2)]
    app = create_app(manager, converter=converter, data_dir=tmp_path / "data")
    async with serve(app) as live:
        session_id, token = await live.session()
        url = session_url(live, session_id, token)
        async with streamer("convert", *map(str, files), "--url", url) as program:
            started = await recorder.wait_for(
                lambda event: event.job["current_file"] is not None, STARTUP
            )
            await converter.wait_started(started.job["current_file"], TIMEOUT)
            code = await program.interrupt()

        job = manager.get_job(started.job_id)

    assert code == 130, program.stderr
    assert job is not None and job.status.value == "cancelled"
    assert converter.cleaned == converter.started
    assert "cancelling the job" in program.stderr
    assert not (tmp_path / "slow.txt").exists()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("24h", 86400.0), ("7d", 604800.0)],
)
def test_cli_durations_take_units(text: str, seconds: float) -> None:
    """--retention and --shutdown-grace read plain seconds or s, m, h, d."""
    assert _duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "nan", "infh", "1e400"])
def test_cli_durations_refuse_nonsense(text: str) -> None:
    """A duration that is not a number of 0 or more is a usage error."""
    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        _duration(text)


def test_cli_retention_off_keeps_everything() -> None:
    """--retention off passes None on, which keeps every finished job."""
    assert _duration_or_off("off") is None
    assert _duration_or_off("2h") == 7200.0


def test_cli_serve_refuses_a_bad_retention(capsys: Any) -> None:
    """`serve --retention soon` exits 2 and says what a duration looks like."""
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--retention", "soon"])
    assert exited.value.code == 2
    assert "is not a duration such as 30s" in capsys.readouterr().err
