"""The store: what the server keeps across restarts, behind one small interface.

The engine and the app never talk to a database. They hand records to a
:class:`Store` and read them back once, at start, as a :class:`StoredState`.
:class:`~streamer.sqlite.SqliteStore` is the embedded default; :class:`MemoryStore`
keeps everything in the process, for tests and for a server that is meant to
forget. Another backend (Redis, say) provides the same methods.

Records are plain data, so a backend needs to know nothing of the engine:

* a session is a :class:`~streamer.sessions.Session`;
* a document is a :class:`DocumentRecord`, its file's place derived from its id;
* a job is the dict of :meth:`~streamer.job.ConversionJob.to_record`, its
  documents' outcomes under ``"documents"``;
* the converters' timing history is the dict of
  :meth:`~streamer.eta.ConverterHistory.to_dict`.

Every write is one :class:`Changes` applied atomically: all of it is kept, or
none of it and :class:`StoreError` is raised, naming what went wrong in words a
user can act on (the disk is full, the database is read-only).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from .errors import StoreError
from .sessions import Session

__all__ = [
    "Changes",
    "DocumentRecord",
    "MemoryStore",
    "Store",
    "StoreError",
    "StoredState",
]


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    """An uploaded document as the store keeps it."""

    document_id: str
    session_id: str
    filename: str
    size_bytes: int
    pages: int
    created_at: datetime


@dataclass(slots=True)
class Changes:
    """One atomic write: what to keep and what to forget.

    A job's record replaces the one stored under its id. A record with
    ``"documents"`` carries all of the job's outcomes; one without keeps the
    stored outcomes, and ``outcomes`` gives those that changed, by position,
    so that a document's end writes one outcome rather than a thousand.
    """

    sessions: list[Session] = field(default_factory=list)
    documents: list[DocumentRecord] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    history: dict[str, dict[str, float]] | None = None
    removed_sessions: list[str] = field(default_factory=list)
    removed_documents: list[str] = field(default_factory=list)
    removed_jobs: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.sessions
            or self.documents
            or self.jobs
            or self.history is not None
            or self.removed_sessions
            or self.removed_documents
            or self.removed_jobs
        )


@dataclass(frozen=True, slots=True)
class StoredState:
    """Everything a store holds, as read once when a server starts."""

    sessions: list[Session]
    documents: list[DocumentRecord]
    jobs: list[dict[str, Any]]
    history: dict[str, dict[str, float]]


class Store(Protocol):
    """Where sessions, documents, jobs and timing history are kept."""

    #: Where the store lives, for log lines and error messages.
    location: str

    async def open(self) -> StoredState:
        """Open the store (creating it if need be) and read what it holds."""
        ...

    async def signing_secret(self) -> bytes:
        """The secret that signs tokens: the stored one, or a new one kept now."""
        ...

    async def apply(self, changes: Changes) -> None:
        """Keep ``changes`` atomically, or raise :class:`StoreError`."""
        ...

    async def close(self) -> None:
        """Finish every write and release the store; idempotent."""
        ...


class MemoryStore:
    """A store that keeps everything in this process, and forgets it on exit."""

    location = "memory"

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.documents: dict[str, DocumentRecord] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.history: dict[str, dict[str, float]] = {}
        self.writes = 0
        self._secret: bytes | None = None

    async def open(self) -> StoredState:
        return StoredState(
            sessions=list(self.sessions.values()),
            documents=list(self.documents.values()),
            jobs=[dict(job) for job in self.jobs.values()],
            history=dict(self.history),
        )

    async def signing_secret(self) -> bytes:
        if self._secret is None:
            self._secret = secrets.token_bytes(32)
        return self._secret

    async def apply(self, changes: Changes) -> None:
        self.writes += 1
        _put(self.sessions, ((s.session_id, s) for s in changes.sessions))
        _put(self.documents, ((d.document_id, d) for d in changes.documents))
        for job in changes.jobs:
            self._put_job(job, changes.outcomes.get(job["job_id"], {}))
        if changes.history is not None:
            self.history = dict(changes.history)
        for session_id in changes.removed_sessions:
            self.sessions.pop(session_id, None)
        for document_id in changes.removed_documents:
            self.documents.pop(document_id, None)
        for job_id in changes.removed_jobs:
            self.jobs.pop(job_id, None)

    async def close(self) -> None:
        return None

    def _put_job(self, job: dict[str, Any], changed: dict[int, dict[str, Any]]) -> None:
        if "documents" in job:
            self.jobs[job["job_id"]] = job
            return
        stored = self.jobs[job["job_id"]]
        outcomes = list(stored["documents"])
        for position, outcome in changed.items():
            outcomes[position] = outcome
        self.jobs[job["job_id"]] = {**job, "documents": outcomes}


def _put(table: dict[str, Any], items: Iterable[tuple[str, Any]]) -> None:
    for key, value in items:
        table[key] = value
