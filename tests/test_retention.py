"""Tests of retention: finished jobs, their files and old uploads go on a schedule."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from streamer import JobManager, ManualClock
from streamer.app import create_app
from streamer.documents import Document
from streamer.server import Server

from .conftest import settle
from .test_restart import bearer

Build = Callable[..., JobManager]
HOUR = 3600.0

# Tests that sweep by hand set the schedule's interval far beyond their
# clock's advances, so no scheduled sweep runs first.


class Writing:
    """A converter that writes each document's text under the results folder."""

    def __init__(self, results: Path) -> None:
        self.results = results

    async def __call__(
        self, document_id: str, progress: Callable[[float], None]
    ) -> dict[str, Any]:
        folder = self.results / document_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "text.txt").write_text(f"text of {document_id}")
        return {"text_file": f"{document_id}/text.txt"}


async def started(make_manager: Build, folder: Path, **settings: Any) -> Server:
    """A started app's server, its documents converted by :class:`Writing`."""
    app = create_app(
        make_manager(),
        converter=Writing(folder / "results"),
        data_dir=folder,
        **settings,
    )
    server: Server = app.state.streamer
    await server.start()
    return server


def upload(server: Server, session_id: str, name: str) -> Document:
    """A document as an upload leaves it, dated by the manager's clock."""
    server.documents.ensure_dirs()
    document_id = f"doc-{name:0>32}"
    path = server.documents.path_for(document_id)
    path.write_bytes(b"%PDF-1.4 test")
    document = Document(
        document_id, session_id, f"{name}.pdf", 13, 1, server.manager.clock.now(), path
    )
    server.documents.add(document)
    return document


async def finished_job(server: Server, session_id: str, *ids: str) -> str:
    job_id = server.manager.create_job(session_id, list(ids))
    await server.manager.start_job(job_id, server.converter)
    await server.manager.wait_job(job_id)
    return job_id


async def test_retention_sweep_removes_what_is_old_and_unused(
    make_manager: Build, clock: ManualClock, tmp_path: Path, caplog: Any
) -> None:
    """Old finished jobs, their results, unused uploads and dead sessions go."""
    server = await started(
        make_manager,
        tmp_path,
        retention=24 * HOUR,
        retention_interval=1000 * HOUR,
        token_ttl=HOUR,
    )
    old_session = server.sessions.create().session_id
    live_session = server.sessions.create().session_id
    old_doc = upload(server, old_session, "old")
    old_job = await finished_job(server, old_session, old_doc.document_id)
    await clock.advance(23 * HOUR)
    kept_doc = upload(server, live_session, "kept")
    kept_job = await finished_job(server, live_session, kept_doc.document_id)
    active = server.manager.create_job(live_session, ["never-started"])
    await clock.advance(2 * HOUR)
    live = server.sessions.learn(live_session, clock.now() + timedelta(hours=1))

    with caplog.at_level(logging.INFO, logger="streamer.retention"):
        sweep = await server.sweep()

    assert (sweep.jobs, sweep.result_files, sweep.documents, sweep.sessions) == (
        1,
        1,
        1,
        1,
    )
    assert [job.job_id for job in server.manager.list_jobs()] == [kept_job, active]
    assert server.manager.get_job(old_job) is None
    assert not (tmp_path / "results" / old_doc.document_id).exists()
    assert (tmp_path / "results" / kept_doc.document_id / "text.txt").exists()
    assert server.documents.get(old_doc.document_id) is None
    assert not old_doc.path.exists()
    assert kept_doc.path.exists()
    assert old_session not in server.sessions
    assert live.session_id in server.sessions
    assert (
        "removed 1 finished jobs, 1 result files, 1 documents and 1 sessions"
        " older than 1 d" in caplog.text
    )

    # What the sweep removed is removed from the store too.
    await server.journal.flush()
    state = await server.store.open()
    assert old_job not in {job["job_id"] for job in state.jobs}
    assert old_doc.document_id not in {d.document_id for d in state.documents}
    assert old_session not in {s.session_id for s in state.sessions}
    await server.aclose()


async def test_retention_keeps_an_upload_a_job_still_names(
    make_manager: Build, clock: ManualClock, tmp_path: Path
) -> None:
    """An old upload stays while a job that is kept names it."""
    server = await started(
        make_manager,
        tmp_path,
        retention=HOUR,
        retention_interval=1000 * HOUR,
    )
    session_id = server.sessions.create().session_id
    document = upload(server, session_id, "shared")
    await clock.advance(2 * HOUR)
    await finished_job(server, session_id, document.document_id)

    sweep = await server.sweep()
    assert (sweep.jobs, sweep.documents) == (0, 0)
    assert document.path.exists()
    await server.aclose()


async def test_retention_runs_on_a_schedule(
    make_manager: Build, clock: ManualClock, tmp_path: Path
) -> None:
    """The sweep repeats every retention_interval, on the manager's clock."""
    server = await started(
        make_manager,
        tmp_path,
        retention=HOUR,
        retention_interval=600,
    )
    session_id = server.sessions.create().session_id
    job_id = await finished_job(server, session_id, "a")
    # Sweeps at 0, 600, ... 3000 s find it younger than an hour; the one at
    # 4200 s does not.
    await clock.advance(HOUR - 60)
    await settle()
    assert server.manager.get_job(job_id) is not None
    await clock.advance(1200)
    await settle()

    assert server.manager.get_job(job_id) is None
    await server.aclose()


async def test_retention_off_keeps_everything(
    make_manager: Build, clock: ManualClock, tmp_path: Path
) -> None:
    """retention=None never removes a thing."""
    server = await started(
        make_manager,
        tmp_path,
        retention=None,
    )
    session_id = server.sessions.create().session_id
    job_id = await finished_job(server, session_id, "a")
    await clock.advance(1000 * HOUR)

    sweep = await server.sweep()
    assert (sweep.jobs, sweep.documents, sweep.sessions) == (0, 0, 0)
    assert server.manager.get_job(job_id) is not None
    await server.aclose()


async def test_retention_delete_removes_the_jobs_results(
    make_manager: Build, tmp_path: Path
) -> None:
    """DELETE of a finished job deletes its result files with it."""
    app = create_app(
        make_manager(), converter=Writing(tmp_path / "results"), data_dir=tmp_path
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        body = (await http.post("/api/sessions")).json()
        session_id, token = body["session_id"], body["token"]
        server: Server = app.state.streamer
        job_id = await finished_job(server, session_id, "a")
        assert (tmp_path / "results" / "a" / "text.txt").exists()
        answer = await http.delete(
            f"/api/sessions/{session_id}/jobs/{job_id}", headers=bearer(token)
        )

    assert answer.status_code == 204
    assert not (tmp_path / "results" / "a").exists()
    await server.aclose()
