"""Tests of a store that cannot write: a full disk, a database made read-only.

Both are real: the disk is a small tmpfs filled to its last byte, and the
read-only database is one whose files were made immutable (``chattr +i``),
which even root cannot write through. Both need root, which CI has; without
it these tests skip, saying why, and tests/test_store.py still covers the
full database through SQLite's own page limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import TIMEOUT
from .helpers import Controlled
from .live import Live, serve
from .pdfs import text_pdf
from .test_restart import app_on, bearer, receive, ws


def needs_root(tool: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root to use {tool}")
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 8 MiB mounted for this test alone."""
    needs_root("mount")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no byte left; returns it."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        # Unbuffered, down to single bytes, so the last free one is taken.
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * size)
    finally:
        os.close(descriptor)
    return filler


async def new_job(live: Live, session_id: str, token: str, *ids: str) -> Any:
    return await live.http.post(
        f"/api/sessions/{session_id}/jobs",
        json={"document_ids": list(ids)},
        headers=bearer(token),
    )


async def upload(live: Live, session_id: str, token: str, pdf: Path) -> Any:
    return await live.http.post(
        f"/api/sessions/{session_id}/documents",
        files=[("file", (pdf.name, pdf.read_bytes(), "application/pdf"))],
        headers=bearer(token),
    )


async def test_storage_full_disk_refuses_and_keeps_what_was_stored(
    small_disk: Path, tmp_path: Path
) -> None:
    """On a full disk, sessions, uploads and jobs get 507; nothing stored is lost."""
    pdf = text_pdf(tmp_path, pages=40, lines=20)
    converter = Controlled()
    converter.finish("kept.pdf")
    async with serve(app_on(small_disk, converter)) as live:
        session_id, token = await live.session()
        uploaded = await upload(live, session_id, token, pdf)
        assert uploaded.status_code == 201, uploaded.text
        document_id = uploaded.json()["documents"][0]["document_id"]
        kept = (await new_job(live, session_id, token, "kept.pdf")).json()["job_id"]
        await live.streamer.manager.wait_job(kept)
        await live.streamer.journal.flush()

        filler = fill(small_disk)
        refused_session = await live.http.post("/api/sessions")
        refused_upload = await upload(live, session_id, token, pdf)
        refused_job = await new_job(live, session_id, token, "new.pdf")
        degraded = await live.http.get("/healthz")
        listed = await live.http.get(
            f"/api/sessions/{session_id}/jobs", headers=bearer(token)
        )
        leftovers = sorted(p.name for p in (small_disk / "documents").iterdir())

        filler.unlink()
        recovered = await live.http.post("/api/sessions")

    for answer in (refused_session, refused_upload, refused_job):
        assert answer.status_code == 507, answer.text
        assert answer.json()["error"]["code"] == "storage_failed"
        assert answer.json()["error"]["message"].startswith("nothing was changed")
    assert "disk is full" in refused_session.json()["error"]["message"]
    assert "No space left" in refused_upload.json()["error"]["message"]
    assert degraded.status_code == 503
    assert degraded.json()["status"] == "degraded"
    assert [job["job_id"] for job in listed.json()["jobs"]] == [kept]
    assert leftovers == [f"{document_id}.pdf"]
    assert recovered.status_code == 201

    # A new process finds everything that was stored before the disk filled.
    async with serve(app_on(small_disk, Controlled())) as again:
        jobs = await again.http.get(
            f"/api/sessions/{session_id}/jobs", headers=bearer(token)
        )
        documents = await again.http.get(
            f"/api/sessions/{session_id}/documents", headers=bearer(token)
        )
    assert [(j["job_id"], j["status"]) for j in jobs.json()["jobs"]] == [
        (kept, "completed")
    ]
    assert [d["document_id"] for d in documents.json()["documents"]] == [document_id]


def check_chattr(path: Path) -> None:
    """Skip, saying why, where the file system has no immutable flag."""
    probe = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"chattr does not work here: {probe.stderr.strip()}")
    subprocess.run(["chattr", "-i", str(path)], check=True)


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """Make files unwritable even for root, for the block's duration."""
    subprocess.run(["chattr", "+i", *map(str, paths)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


async def test_storage_read_only_database_is_told_and_retried(tmp_path: Path) -> None:
    """A database that turns read-only: 507 for requests, job.save_failed for jobs.

    Once it can be written again, the journal's retry saves the job's end,
    and a new process finds it.
    """
    needs_root("chattr")
    data_dir = tmp_path / "data"
    converter = Controlled()
    async with serve(app_on(data_dir, converter)) as live:
        session_id, token = await live.session()
        job_id = (await new_job(live, session_id, token, "a.pdf")).json()["job_id"]
        await converter.wait_started("a.pdf")
        await live.streamer.journal.flush()
        database = data_dir / "streamer.db"
        wal = data_dir / "streamer.db-wal"
        check_chattr(wal)

        async with ws(live.ws_url, session_id, token) as client:
            await receive(client)
            with immutable(database, wal):
                refused = await live.http.post("/api/sessions")
                converter.finish("a.pdf")
                types = []
                while "job.save_failed" not in types:
                    message = await receive(client)
                    types.append(message["type"])
                told = message
            # Writable again: the retry saves the job's end.
            async with asyncio.timeout(TIMEOUT * 4):
                while live.streamer.journal.statistics().error is not None:
                    await asyncio.sleep(0.05)

    assert refused.status_code == 507
    assert "could not save" in refused.json()["error"]["message"]
    assert "job.completed" in types
    assert told["job_id"] == job_id
    assert "could not save" in told["error"]

    async with serve(app_on(data_dir, Controlled())) as again:
        answer = await again.http.get(
            f"/api/sessions/{session_id}/jobs/{job_id}", headers=bearer(token)
        )
    assert answer.json()["status"] == "completed"
    assert answer.json()["documents"][0]["status"] == "converted"
