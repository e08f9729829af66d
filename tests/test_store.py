"""Tests of the stores: the in-memory one and SQLite keep the same records."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from streamer import ConversionJob, DocumentStatus, JobStatus
from streamer.errors import StoreError
from streamer.sessions import Session
from streamer.sqlite import SCHEMA_VERSION, SqliteStore
from streamer.store import Changes, DocumentRecord, MemoryStore, Store

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def session(session_id: str = "ses-a") -> Session:
    return Session(session_id, NOW, NOW + timedelta(hours=1))


def document(document_id: str = "doc-1", session_id: str = "ses-a") -> DocumentRecord:
    return DocumentRecord(document_id, session_id, "report.pdf", 1234, 3, NOW)


def job_record(job_id: str = "job-1", documents: int = 3) -> dict[str, Any]:
    job = ConversionJob(
        job_id=job_id,
        session_id="ses-a",
        document_ids=[f"doc-{i}" for i in range(documents)],
        created_at=NOW,
    )
    return job.to_record()


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each backend in turn, opened."""
    backend: Store = (
        MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "s.db")
    )
    await backend.open()
    yield backend
    await backend.close()


async def reopen(store: Store, tmp_path: Path) -> Store:
    """The same store as a new process would open it."""
    if isinstance(store, MemoryStore):
        return store
    await store.close()
    again = SqliteStore(tmp_path / "s.db")
    return again


async def test_store_keeps_every_kind_of_record(store: Store, tmp_path: Path) -> None:
    """Sessions, documents, jobs with outcomes and history come back as written."""
    record = job_record()
    record["documents"][0]["status"] = "converted"
    record["documents"][0]["result"] = {"pages": 3, "text_file": "doc-0/a.txt"}
    await store.apply(
        Changes(
            sessions=[session()],
            documents=[document()],
            jobs=[record],
            history={"demo": {"seconds_per_document": 1.5, "documents": 4}},
        )
    )

    again = await reopen(store, tmp_path)
    state = await again.open()
    assert state.sessions == [session()]
    assert state.documents == [document()]
    assert state.jobs == [record]
    assert state.history == {"demo": {"seconds_per_document": 1.5, "documents": 4}}
    await again.close()


async def test_store_rewrites_only_named_outcomes(store: Store, tmp_path: Path) -> None:
    """A job written with changed positions keeps the other outcomes stored."""
    record = job_record()
    await store.apply(Changes(jobs=[record]))
    changed = dict(record["documents"][1], status="converted")
    update = {k: v for k, v in record.items() if k != "documents"}
    update["status"] = "running"
    await store.apply(Changes(jobs=[update], outcomes={"job-1": {1: changed}}))

    again = await reopen(store, tmp_path)
    stored = (await again.open()).jobs[0]
    assert stored["status"] == "running"
    statuses = [d["status"] for d in stored["documents"]]
    assert statuses == ["pending", "converted", "pending"]
    await again.close()


async def test_store_removes_records(store: Store, tmp_path: Path) -> None:
    """Removed sessions, documents and jobs (with their outcomes) are gone."""
    await store.apply(
        Changes(sessions=[session()], documents=[document()], jobs=[job_record()])
    )
    await store.apply(
        Changes(
            removed_sessions=["ses-a"],
            removed_documents=["doc-1"],
            removed_jobs=["job-1"],
        )
    )
    again = await reopen(store, tmp_path)
    state = await again.open()
    assert (state.sessions, state.documents, state.jobs) == ([], [], [])
    await again.close()


async def test_store_signing_secret_is_kept(store: Store, tmp_path: Path) -> None:
    """The secret is made once and the same one comes back after a reopen."""
    secret = await store.signing_secret()
    assert len(secret) == 32
    again = await reopen(store, tmp_path)
    await again.open()
    assert await again.signing_secret() == secret
    await again.close()


async def test_store_round_trips_a_job_to_resume(store: Store) -> None:
    """A running job comes back pending, its converting document pending again."""
    job = ConversionJob.from_record(job_record())
    job.status = JobStatus.RUNNING
    job.documents[0].status = DocumentStatus.CONVERTED
    job.documents[0].result = {"pages": 1}
    job.documents[1].status = DocumentStatus.CONVERTING
    job.files_completed = job.files_converted = 1
    await store.apply(Changes(jobs=[job.to_record()]))

    back = ConversionJob.from_record((await store.open()).jobs[0])
    assert back.status is JobStatus.PENDING
    assert [o.status for o in back.documents] == [
        DocumentStatus.CONVERTED,
        DocumentStatus.PENDING,
        DocumentStatus.PENDING,
    ]
    assert back.documents[0].result == {"pages": 1}
    assert back.progress == pytest.approx(1 / 3)


async def test_sqlite_store_files_are_private(tmp_path: Path) -> None:
    """The database and its WAL are readable by their owner only."""
    store = SqliteStore(tmp_path / "data" / "s.db")
    await store.open()
    await store.apply(Changes(sessions=[session()]))
    files = [p for p in (tmp_path / "data").iterdir() if p.name.startswith("s.db")]
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path.name
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    await store.close()


async def test_sqlite_store_uses_wal(tmp_path: Path) -> None:
    """The database is in WAL mode, so readers never wait for the writer."""
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    await store.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_sqlite_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A database written by a newer streamer is refused, not misread."""
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    await store.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        db.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'",
            (str(SCHEMA_VERSION + 1),),
        )
    again = SqliteStore(tmp_path / "s.db")
    with pytest.raises(StoreError, match="newer streamer"):
        await again.open()
    await again.close()


async def test_sqlite_store_full_database_keeps_what_it_had(tmp_path: Path) -> None:
    """A write that does not fit fails as 'full' and leaves the earlier data."""
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    await store.apply(Changes(jobs=[job_record("job-kept")]))
    limit = _cap_pages(store)

    big = job_record("job-big", documents=1)
    big["documents"][0]["result"] = {"text": "x" * (limit * 8192)}
    with pytest.raises(StoreError, match="the disk is full") as caught:
        await store.apply(Changes(jobs=[big]))
    assert caught.value.reason == "full"
    await store.close()

    again = SqliteStore(tmp_path / "s.db")
    assert [j["job_id"] for j in (await again.open()).jobs] == ["job-kept"]
    await again.close()


async def test_sqlite_store_read_only_file_is_a_clear_error(tmp_path: Path) -> None:
    """A database that cannot be written fails as 'read_only' and stays readable."""
    if os.geteuid() == 0:
        pytest.skip("root writes through file permissions; test_storage mounts one")
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    await store.open()
    await store.apply(Changes(jobs=[job_record("job-kept")]))
    await store.close()
    for item in tmp_path.iterdir():
        item.chmod(0o400)
    tmp_path.chmod(0o500)
    try:
        again = SqliteStore(path)
        with pytest.raises(StoreError) as caught:
            await again.open()
            await again.apply(Changes(jobs=[job_record("job-new")]))
        assert caught.value.reason == "read_only"
        await again.close()
    finally:
        tmp_path.chmod(0o700)
        for item in tmp_path.iterdir():
            item.chmod(0o600)


async def test_sqlite_store_closed_store_refuses(tmp_path: Path) -> None:
    """A closed store answers every call with a StoreError that says so."""
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.apply(Changes(sessions=[session()]))


def _cap_pages(store: SqliteStore) -> int:
    """Let the database grow by only two pages, as on a disk almost full.

    SQLite answers a write past ``max_page_count`` exactly as it answers one
    past the end of the disk (SQLITE_FULL); test_storage fills a real one.
    """
    connection = store._db()
    pages = int(connection.execute("PRAGMA page_count").fetchone()[0])
    connection.execute(f"PRAGMA max_page_count = {pages + 2}")
    return pages + 2
