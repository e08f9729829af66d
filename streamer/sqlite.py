"""The embedded store: one SQLite database in the data directory.

The standard library's driver, in WAL mode, so a reader never waits for the
writer and a process killed mid-write leaves the last committed state intact.
Every call runs on one thread of its own that owns the connection: SQLite
calls block, and the event loop must not. ``synchronous=NORMAL`` keeps
commits safe against a crash of the process, which is what a restart is; a
power loss may lose the last few commits, never the database.

A job's outcomes have a table of their own, so a document's end writes one
row and not the whole job. A converter's result that JSON cannot hold (a
set, a datetime) is kept as its ``str()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import secrets
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from .sessions import Session
from .store import Changes, DocumentRecord, StoredState, StoreError

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

logger = logging.getLogger("streamer.store")

T = TypeVar("T")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    document_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    filename TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    pages INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    job_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (job_id, position)
) WITHOUT ROWID;
"""


def _reason(exc: sqlite3.Error) -> tuple[str, str]:
    """What a failed call means to a user: a reason code and words for it."""
    name = getattr(exc, "sqlite_errorname", "")
    text = str(exc)
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return "full", "the disk is full"
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return "read_only", "the database is read-only"
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM")):
        return "read_only", "the database cannot be opened for writing"
    return "failed", text


class SqliteStore:
    """Sessions, documents, jobs and timing history in ``path``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self._executor: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None

    # -- the store interface -------------------------------------------------------

    async def open(self) -> StoredState:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="streamer-store"
            )
        return await self._call(self._open, "open")

    async def signing_secret(self) -> bytes:
        return await self._call(self._secret, "read the signing secret from")

    async def apply(self, changes: Changes) -> None:
        if changes:
            # Encoded here, on the caller's thread: see _Rows.
            rows = _Rows.of(changes)
            await self._call(lambda: self._write(rows), "save to")

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._close)
        executor.shutdown(wait=True)

    # -- on the store's thread -----------------------------------------------------

    async def _call(self, work: Callable[[], T], doing: str) -> T:
        if self._executor is None:
            raise StoreError(f"the store {self.location} is closed")
        try:
            return await _outside_loop(self._executor, work)
        except sqlite3.Error as exc:
            reason, words = _reason(exc)
            raise StoreError(
                f"could not {doing} {self.location}: {words}", reason
            ) from exc
        except OSError as exc:
            raise StoreError(
                f"could not {doing} {self.location}: {exc.strerror or exc}"
            ) from exc

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

            # The database holds tokens' secret and other people's file
            # names: readable by this user only, its WAL files included.
            previous = os.umask(0o077)
            try:
                connection = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
                connection.execute("PRAGMA journal_mode=WAL")
            finally:
                os.umask(previous)
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=OFF")
            self._connection = connection
        return self._connection

    def _open(self) -> StoredState:
        db = self._db()
        with _transaction(db):
            # executescript() would commit first: one statement at a time.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            version = _meta(db, "schema_version")
            if version is None:
                db.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(version) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.location} was written by a newer streamer"
                    f" (schema {int(version)}, this one reads {SCHEMA_VERSION})"
                )
        sessions = [
            Session(row[0], _time(row[1]), _time(row[2]))
            for row in db.execute(
                "SELECT session_id, created_at, expires_at FROM sessions"
            )
        ]
        documents = [
            DocumentRecord(row[0], row[1], row[2], row[3], row[4], _time(row[5]))
            for row in db.execute(
                "SELECT document_id, session_id, filename, size_bytes, pages,"
                " created_at FROM documents ORDER BY created_at, rowid"
            )
        ]
        jobs: dict[str, dict[str, Any]] = {}
        for job_id, record in db.execute("SELECT job_id, record FROM jobs"):
            job = json.loads(record)
            job["job_id"] = job_id
            job["documents"] = []
            jobs[job_id] = job
        for job_id, outcome in db.execute(
            "SELECT job_id, outcome FROM outcomes ORDER BY job_id, position"
        ):
            if job_id in jobs:
                jobs[job_id]["documents"].append(json.loads(outcome))
        history = _meta(db, "history")
        return StoredState(
            sessions=sessions,
            documents=documents,
            jobs=sorted(jobs.values(), key=lambda job: job.get("created_at") or ""),
            history=json.loads(history) if history else {},
        )

    def _secret(self) -> bytes:
        db = self._db()
        with _transaction(db):
            stored = _meta(db, "secret")
            if stored is not None:
                return bytes.fromhex(str(stored))
            secret = secrets.token_bytes(32)
            db.execute("INSERT INTO meta VALUES ('secret', ?)", (secret.hex(),))
        return secret

    def _write(self, rows: _Rows) -> None:
        db = self._db()
        with _transaction(db):
            _insert(db, "sessions", rows.sessions)
            _insert(db, "documents", rows.documents)
            _insert(db, "jobs", rows.jobs)
            _insert(db, "outcomes", rows.outcomes)
            if rows.history is not None:
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('history', ?)", (rows.history,)
                )
            _delete(db, "sessions", "session_id", rows.removed_sessions)
            _delete(db, "documents", "document_id", rows.removed_documents)
            _delete(db, "outcomes", "job_id", rows.removed_jobs)
            _delete(db, "jobs", "job_id", rows.removed_jobs)

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            # A clean close folds the WAL back into the database file.
            with contextlib.suppress(sqlite3.Error):
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            connection.close()


async def _outside_loop(executor: ThreadPoolExecutor, work: Callable[[], T]) -> T:
    """Run ``work`` on the store's thread, and see that the thread gets to run.

    A thread that waits for the GIL asks the holder to hand it over only if
    no other switch happened while it waited (CPython's take_gil). An event
    loop with work always ready polls with a zero timeout, dropping and
    retaking the GIL thousands of times a second, so the request never
    comes: a write of a millisecond was seen to take seconds. When a call is
    still running after ``_PATIENCE``, the loop therefore waits for it
    outright, for at most ``_HAND_OVER``, which gives the thread the GIL
    until it is done; an idle or moderately busy loop never does this.
    """
    pending = executor.submit(work)
    waiting = asyncio.wrap_future(pending)
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=_PATIENCE)
        if done:
            return waiting.result()
        concurrent.futures.wait([pending], timeout=_HAND_OVER)


# Seconds a store call may take before the loop yields to it, and the most
# the loop then blocks, each time, for the thread to finish.
_PATIENCE = 0.05
_HAND_OVER = 0.02


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Any:
    # IMMEDIATE takes the write lock at once, so a second process on the same
    # file fails here rather than halfway through.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _meta(db: sqlite3.Connection, key: str) -> Any:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True, slots=True)
class _Rows:
    """One write's rows, encoded and ready for the store's thread.

    The thread takes the GIL for every statement it steps through, and while
    the event loop is busy each time costs it up to the interpreter's switch
    interval (5 ms). So the rows are encoded before the thread gets them, and
    go in a few statements of many rows each, not one statement a row: a
    write of hundreds of outcomes takes the GIL a handful of times.
    """

    sessions: list[tuple[Any, ...]]
    documents: list[tuple[Any, ...]]
    jobs: list[tuple[Any, ...]]
    outcomes: list[tuple[Any, ...]]
    history: str | None
    removed_sessions: list[str]
    removed_documents: list[str]
    removed_jobs: list[str]

    @classmethod
    def of(cls, changes: Changes) -> _Rows:
        jobs = []
        outcomes = []
        for job in changes.jobs:
            job_id = job["job_id"]
            record = {key: value for key, value in job.items() if key != "documents"}
            jobs.append((job_id, job["session_id"], _json(record)))
            changed = (
                dict(enumerate(job["documents"]))
                if "documents" in job
                else changes.outcomes.get(job_id, {})
            )
            outcomes += [(job_id, i, _json(o)) for i, o in changed.items()]
        return cls(
            sessions=[
                (s.session_id, s.created_at.isoformat(), s.expires_at.isoformat())
                for s in changes.sessions
            ],
            documents=[
                (
                    d.document_id,
                    d.session_id,
                    d.filename,
                    d.size_bytes,
                    d.pages,
                    d.created_at.isoformat(),
                )
                for d in changes.documents
            ],
            jobs=jobs,
            outcomes=outcomes,
            history=None if changes.history is None else _json(changes.history),
            removed_sessions=changes.removed_sessions,
            removed_documents=changes.removed_documents,
            removed_jobs=changes.removed_jobs,
        )


def _json(value: Any) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


# SQLite builds before 3.32 allow 999 parameters to a statement.
_MAX_PARAMETERS = 999


def _insert(db: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    # Table names come from this module, never from input.
    if not rows:
        return
    width = len(rows[0])
    chunk = _MAX_PARAMETERS // width
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        values = ", ".join(["(" + ", ".join("?" * width) + ")"] * len(part))
        db.execute(
            f"INSERT OR REPLACE INTO {table} VALUES {values}",
            [value for row in part for value in row],
        )


def _delete(db: sqlite3.Connection, table: str, column: str, keys: list[str]) -> None:
    # Table and column names come from this module, never from input.
    for start in range(0, len(keys), _MAX_PARAMETERS):
        part = keys[start : start + _MAX_PARAMETERS]
        marks = ", ".join("?" * len(part))
        db.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", part)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)
