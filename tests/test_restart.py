"""Tests of restarts: what a server keeps, resumes and tells its clients.

The first tests restart an app in the test's own loop on the same data
directory. The last ones run ``streamer serve`` as a real process, kill it
with SIGKILL or stop it with SIGTERM in the middle of a document, start it
again and follow the job to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamer.app import create_app

from .conftest import TIMEOUT
from .helpers import Controlled
from .journaled import read_journal
from .live import serve
from .pdfs import page_line, text_pdf
from .test_cli import STARTUP, Program, bearer, streamer

ROOT = Path(__file__).resolve().parent.parent


@contextlib.asynccontextmanager
async def ws(
    base: str, session_id: str, token: str, cursor: str | None = None
) -> AsyncIterator[ClientConnection]:
    query = f"token={token}" + (f"&cursor={cursor}" if cursor else "")
    url = f"{base}/api/sessions/{session_id}/ws?{query}"
    async with connect(url, open_timeout=TIMEOUT, proxy=None) as client:
        yield client


async def receive(client: ClientConnection, timeout: float = TIMEOUT) -> Any:
    async with asyncio.timeout(timeout):
        return json.loads(await client.recv())


def app_on(data_dir: Path, converter: Controlled) -> Any:
    """An app that builds and owns its manager, as ``streamer serve`` does."""
    return create_app(converter=converter, data_dir=data_dir, memory_required="1MB")


# -- in this process ---------------------------------------------------------------


async def test_restart_keeps_tokens_sessions_and_jobs(tmp_path: Path) -> None:
    """With no secret configured, a token of the first process opens the second."""
    converter = Controlled()
    converter.finish("a.pdf")
    async with serve(app_on(tmp_path, converter)) as live:
        session_id, token = await live.session()
        created = await live.http.post(
            f"/api/sessions/{session_id}/jobs",
            json={"document_ids": ["a.pdf"]},
            headers=bearer(token),
        )
        job_id = created.json()["job_id"]
        await live.streamer.manager.wait_job(job_id)

    async with serve(app_on(tmp_path, Controlled())) as again:
        answer = await again.http.get(
            f"/api/sessions/{session_id}/jobs/{job_id}", headers=bearer(token)
        )
        assert session_id in again.streamer.sessions
        history = again.streamer.manager.history.to_dict()
        assert history == live.streamer.manager.history.to_dict()
        assert [entry["documents"] for entry in history.values()] == [1]

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "completed"
    assert body["documents"][0]["result"] == {"document_id": "a.pdf", "pages": 3}


async def test_restart_resumes_where_a_shutdown_stopped(tmp_path: Path) -> None:
    """A graceful stop suspends the job; the next start converts only the rest.

    A client reconnecting with its cursor of the old process gets a reset
    snapshot holding the resumed job, then the job's completion.
    """
    first = Controlled()
    first.finish("a.pdf")
    async with serve(app_on(tmp_path, first)) as live:
        session_id, token = await live.session()
        async with ws(live.ws_url, session_id, token) as client:
            await receive(client)
            created = await live.http.post(
                f"/api/sessions/{session_id}/jobs",
                json={"document_ids": ["a.pdf", "b.pdf", "c.pdf"]},
                headers=bearer(token),
            )
            job_id = created.json()["job_id"]
            await first.wait_started("b.pdf")
            cursor = None
            while True:
                message = await receive(client)
                cursor = message["cursor"]
                if message["type"] == "job.document_converted":
                    break
            live.server.should_exit = True
            last = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    last.append((await receive(client))["type"])
    assert last[-1] == "job.suspended", last
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012

    second = Controlled()
    async with (
        serve(app_on(tmp_path, second)) as again,
        ws(again.ws_url, session_id, token, cursor=cursor) as client,
    ):
        snapshot = await receive(client)
        await second.wait_started("b.pdf")
        second.finish("b.pdf")
        second.finish("c.pdf")
        types = []
        while "job.completed" not in types:
            types.append((await receive(client))["type"])

    assert snapshot["type"] == "snapshot" and snapshot["reset"] is True
    assert [job["job_id"] for job in snapshot["jobs"]] == [job_id]
    assert snapshot["jobs"][0]["status"] == "running"
    assert first.started == ["a.pdf", "b.pdf"]
    assert second.started == ["b.pdf", "c.pdf"]
    assert types.count("job.document_converted") == 2


async def test_restart_sweeps_partial_files_of_a_dead_process(tmp_path: Path) -> None:
    """Half-written uploads and results left by a killed process are deleted."""
    partial = [
        tmp_path / "documents" / ".upload-0123456789abcdef.part",
        tmp_path / "results" / "doc-a" / ".0123456789abcdef.txt.part",
    ]
    whole = tmp_path / "results" / "doc-a" / "0123456789abcdef.txt"
    for path in [*partial, whole]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    async with serve(app_on(tmp_path, Controlled())):
        pass

    assert [path.exists() for path in partial] == [False, False]
    assert whole.read_text() == "half"


async def test_restart_refuses_new_jobs_while_shutting_down(tmp_path: Path) -> None:
    """During the shutdown grace a new job is refused with 503 shutting_down."""
    converter = Controlled()
    async with serve(app_on(tmp_path, converter)) as live:
        session_id, token = await live.session()
        await live.streamer.shutdown()
        answer = await live.http.post(
            f"/api/sessions/{session_id}/jobs",
            json={"document_ids": ["a.pdf"]},
            headers=bearer(token),
        )

    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "shutting_down"


async def test_restart_skips_a_stored_job_it_cannot_read(
    tmp_path: Path, caplog: Any
) -> None:
    """A damaged job record is logged and skipped; the others load."""
    converter = Controlled()
    converter.finish("a.pdf")
    async with serve(app_on(tmp_path, converter)) as live:
        session_id, token = await live.session()
        for _ in range(2):
            created = await live.http.post(
                f"/api/sessions/{session_id}/jobs",
                json={"document_ids": ["a.pdf"]},
                headers=bearer(token),
            )
            await live.streamer.manager.wait_job(created.json()["job_id"])
        kept, broken = [job.job_id for job in live.streamer.manager.list_jobs()]

    import sqlite3

    with sqlite3.connect(tmp_path / "streamer.db") as db:
        db.execute("UPDATE jobs SET record = '{}' WHERE job_id = ?", (broken,))
    async with serve(app_on(tmp_path, Controlled())) as again:
        ids = [job.job_id for job in again.streamer.manager.list_jobs()]

    assert ids == [kept]
    assert f"skipped stored job {broken}" in caplog.text


# -- as real processes ------------------------------------------------------------


def serve_args(data_dir: Path, *extra: str) -> tuple[str, ...]:
    return (
        *("serve", "--port", "0", "--data-dir", str(data_dir)),
        *("--converter", "tests.journaled:JournaledPdf", "--max-concurrent", "1"),
        *extra,
    )


async def viewer_address(program: Program) -> tuple[str, str, str]:
    """The base URL, session and token that ``serve`` printed."""
    url = await program.line_where(lambda line: "#session=" in line)
    parts = urlsplit(url.strip())
    fragment = {key: values[0] for key, values in parse_qs(parts.fragment).items()}
    return f"127.0.0.1:{parts.port}", fragment["session"], fragment["token"]


async def upload(
    http: httpx.AsyncClient, base: str, session_id: str, token: str, paths: list[Path]
) -> list[str]:
    files = [("file", (p.name, p.read_bytes(), "application/pdf")) for p in paths]
    answer = await http.post(
        f"http://{base}/api/sessions/{session_id}/documents",
        files=files,
        headers=bearer(token),
    )
    assert answer.status_code == 201, answer.text
    return [d["document_id"] for d in answer.json()["documents"]]


async def start_and_stop_midway(
    tmp_path: Path, stop: signal.Signals
) -> tuple[dict[str, Any], str, str, str | None, list[str], str]:
    """Serve, start a job of four PDFs, stop the process in the second one.

    Returns the job as it stood, the session, token, the last cursor, the
    document ids and the process's stderr.
    """
    pdfs = [text_pdf(tmp_path, pages=3, name=f"part-{i}.pdf") for i in range(4)]
    data_dir = tmp_path / "data"
    env = {"STREAMER_TEST_LEAD_IN": "1.5", "PYTHONPATH": str(ROOT)}
    async with streamer(*serve_args(data_dir), env=env) as program:
        base, session_id, token = await viewer_address(program)
        async with httpx.AsyncClient(timeout=STARTUP) as http:
            ids = await upload(http, base, session_id, token, pdfs)
            async with ws(f"ws://{base}", session_id, token) as client:
                cursor = (await receive(client))["cursor"]
                created = await http.post(
                    f"http://{base}/api/sessions/{session_id}/jobs",
                    json={"document_ids": ids},
                    headers=bearer(token),
                )
                assert created.status_code == 201, created.text
                # Stopped once the second document is a fifth of its way.
                while True:
                    message = await receive(client, STARTUP)
                    cursor = message["cursor"]
                    job = message.get("job") or {}
                    if (
                        job.get("current_file") == ids[1]
                        and job.get("progress", 0) >= 0.3
                    ):
                        break
                before = (
                    await http.get(
                        f"http://{base}/api/sessions/{session_id}/jobs/{job['job_id']}",
                        headers=bearer(token),
                    )
                ).json()
                os.kill(program.process.pid, stop)
                if stop is signal.SIGTERM:
                    # Its grace ends the document, then the socket closes.
                    with contextlib.suppress(ConnectionClosed):
                        while True:
                            message = await receive(client, STARTUP)
                            cursor = message["cursor"]
                    assert client.close_code == 1012
        if stop is signal.SIGTERM:
            # uvicorn shuts down, then dies of the signal as its sender expects.
            assert await program.wait() in (0, -signal.SIGTERM), program.stderr
    return before, session_id, token, cursor, ids, program.stderr


async def resume_to_the_end(
    tmp_path: Path, session_id: str, token: str, cursor: str | None
) -> tuple[dict[str, Any], list[str], str]:
    """Serve again on the same data; follow the job from the old cursor to its end."""
    data_dir = tmp_path / "data"
    env = {"STREAMER_TEST_LEAD_IN": "0.2", "PYTHONPATH": str(ROOT)}
    async with streamer(*serve_args(data_dir), env=env) as program:
        base, _, _ = await viewer_address(program)
        types = []
        async with ws(f"ws://{base}", session_id, token, cursor=cursor) as client:
            first = await receive(client)
            types.append(first["type"])
            job_id = first["jobs"][0]["job_id"]
            status = first["jobs"][0]["status"]
            while status not in ("completed", "failed", "cancelled"):
                message = await receive(client, STARTUP)
                types.append(message["type"])
                status = message["job"]["status"]
        async with httpx.AsyncClient(timeout=STARTUP) as http:
            job = (
                await http.get(
                    f"http://{base}/api/sessions/{session_id}/jobs/{job_id}",
                    headers=bearer(token),
                )
            ).json()
        assert first["reset"] is True
        await program.interrupt()
    return job, types, program.stderr


def results_of(tmp_path: Path, document_id: str) -> list[Path]:
    folder = tmp_path / "data" / "results" / document_id
    return sorted(folder.iterdir()) if folder.exists() else []


@pytest.mark.timeout(120)
async def test_restart_after_sigkill_converts_each_document_once(
    tmp_path: Path,
) -> None:
    """SIGKILL mid-document: the next process resumes, converting each once.

    The first document's result is kept as it was, the interrupted one starts
    over, the client's old cursor gets a reset and then the completion.
    """
    before, session_id, token, cursor, ids, _ = await start_and_stop_midway(
        tmp_path, signal.SIGKILL
    )
    first_result = results_of(tmp_path, ids[0])
    assert before["documents"][0]["status"] == "converted"
    assert len(first_result) == 1
    kept_text = first_result[0].read_text(encoding="utf-8")

    job, types, stderr = await resume_to_the_end(tmp_path, session_id, token, cursor)

    assert job["status"] == "completed"
    assert [d["status"] for d in job["documents"]] == ["converted"] * 4
    assert job["files_converted"] == 4
    journal = read_journal(tmp_path / "data")
    assert [d for what, d in journal if what == "done"] == ids
    assert [d for what, d in journal if what == "start"] == [ids[0], ids[1], *ids[1:]]
    assert job["documents"][0]["result"] == before["documents"][0]["result"]
    assert results_of(tmp_path, ids[0]) == first_result
    assert first_result[0].read_text(encoding="utf-8") == kept_text
    for number, document_id in enumerate(ids):
        (result,) = [p for p in results_of(tmp_path, document_id) if p.suffix == ".txt"]
        assert page_line(1, 3) in result.read_text(encoding="utf-8"), number
    assert types[0] == "snapshot"
    assert types[-1] == "job.completed"
    assert "the server stopped unexpectedly" in stderr


@pytest.mark.timeout(120)
async def test_restart_after_sigterm_finishes_the_document_first(
    tmp_path: Path,
) -> None:
    """SIGTERM mid-document: its grace ends the document, clients get 1012.

    No later document starts; the next process converts the rest, each once.
    """
    _, session_id, token, cursor, ids, stderr = await start_and_stop_midway(
        tmp_path, signal.SIGTERM
    )
    journal = read_journal(tmp_path / "data")
    assert journal == [
        ("start", ids[0]),
        ("done", ids[0]),
        ("start", ids[1]),
        ("done", ids[1]),
    ]
    assert "suspended 1 jobs" in stderr

    job, _, stderr = await resume_to_the_end(tmp_path, session_id, token, cursor)

    assert job["status"] == "completed"
    journal = read_journal(tmp_path / "data")
    assert [d for what, d in journal if what == "start"] == ids
    assert [d for what, d in journal if what == "done"] == ids
    assert "the server was shut down" in stderr
