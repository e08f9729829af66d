"""The journal: what changed since the last write, written to the store in batches.

The engine publishes events on the loop and must not wait for a disk. The
journal notes which jobs, sessions and documents changed and writes them to
the store from a task of its own: every change noted while a write is on its
way goes into the next one, so a burst of events costs one transaction.

What is written when:

* a job: when it is created, started, resumed, waits for memory or gets it,
  when each of its documents ends, when it ends, is suspended or removed.
  Progress inside a document is never written: after a restart the document
  that was converting starts over anyway;
* the converters' timing history: with the job whose document added to it;
* sessions and documents: as the app notes them (a new session, an upload).

A change is written at once when the journal was idle; changes that come
while a write is on its way, or within ``interval`` (200 ms) of the last one,
go together in the next, so a job's state on disk is at most that much
behind it, besides the write's own time.

Requests that must not answer before their change is kept (a new session, an
upload, a new job) await :meth:`Journal.flush`, which raises
:class:`~streamer.errors.StoreError` if the write failed. A failed background
write is logged, told to the job's clients as ``job.save_failed``, and tried
again with a growing delay; nothing is dropped meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass, field

from .errors import StoreError
from .events import EventType, JobEvent, JobSaveFailed
from .gate import Backoff
from .job import ConversionJob, DocumentStatus
from .manager import JobManager
from .sessions import Session
from .store import Changes, DocumentRecord, Store

__all__ = ["Journal", "JournalStatistics"]

logger = logging.getLogger("streamer.store")

# Events that change nothing a restart needs.
_UNWRITTEN = frozenset({EventType.PROGRESS.value, EventType.SAVE_FAILED.value})


@dataclass(frozen=True, slots=True)
class JournalStatistics:
    """How the journal has fared, for health checks and metrics."""

    writes: int
    failures: int
    pending: int
    #: The error of the latest write, if it failed; None once one succeeds.
    error: str | None


@dataclass(slots=True)
class _Pending:
    """Changes noted and not yet written; ``None`` marks a removal."""

    jobs: dict[str, ConversionJob | None] = field(default_factory=dict)
    sessions: dict[str, Session | None] = field(default_factory=dict)
    documents: dict[str, DocumentRecord | None] = field(default_factory=dict)
    history: bool = False

    def __len__(self) -> int:
        return (
            len(self.jobs)
            + len(self.sessions)
            + len(self.documents)
            + (1 if self.history else 0)
        )

    def merge_older(self, older: _Pending) -> None:
        """Put back changes a failed write took, under any noted since."""
        self.jobs = {**older.jobs, **self.jobs}
        self.sessions = {**older.sessions, **self.sessions}
        self.documents = {**older.documents, **self.documents}
        self.history = self.history or older.history


class Journal:
    """Notes the engine's and the app's changes and writes them to ``store``."""

    def __init__(
        self,
        store: Store,
        manager: JobManager,
        *,
        retry: Backoff | None = None,
        interval: float = 0.2,
    ) -> None:
        self.store = store
        self._interval = interval
        self._last_write = -math.inf
        self._manager = manager
        self._retry = retry or Backoff(initial=0.5, cap=30.0)
        self._rng = random.Random()
        self._pending = _Pending()
        # The outcome statuses last written of each stored job, so that a
        # write carries only the outcomes that changed.
        self._written: dict[str, list[DocumentStatus]] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._told: set[str] = set()
        self._closed = False
        self._writes = 0
        self._failures = 0
        self._error: StoreError | None = None
        self._subscription = manager.subscribe(self._on_event)

    # -- noting ---------------------------------------------------------------------

    def job_stored(self, job: ConversionJob) -> None:
        """Note that ``job`` was read back from the store as it is now."""
        self._written[job.job_id] = [o.status for o in job.documents]

    def session_changed(self, session: Session) -> None:
        self._pending.sessions[session.session_id] = session
        self._schedule()

    def sessions_removed(self, session_ids: list[str]) -> None:
        for session_id in session_ids:
            self._pending.sessions[session_id] = None
        self._schedule()

    def documents_added(self, documents: list[DocumentRecord]) -> None:
        for document in documents:
            self._pending.documents[document.document_id] = document
        self._schedule()

    def documents_removed(self, document_ids: list[str]) -> None:
        for document_id in document_ids:
            self._pending.documents[document_id] = None
        self._schedule()

    def withdraw_documents(self, document_ids: list[str]) -> None:
        """Drop documents noted but never written: their upload was refused."""
        for document_id in document_ids:
            self._pending.documents.pop(document_id, None)

    def _on_event(self, event: JobEvent) -> None:
        if event.type in _UNWRITTEN:
            return
        self._pending.jobs[event.job_id] = self._manager.get_job(event.job_id)
        if event.type == EventType.DOCUMENT_CONVERTED.value:
            self._pending.history = True
        self._schedule()

    # -- writing --------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._pending)

    def statistics(self) -> JournalStatistics:
        return JournalStatistics(
            writes=self._writes,
            failures=self._failures,
            pending=len(self._pending),
            error=None if self._error is None else str(self._error),
        )

    async def flush(self) -> None:
        """Write everything noted so far; raises :class:`StoreError` if that fails."""
        async with self._lock:
            taken, self._pending = self._pending, _Pending()
            if not taken:
                return
            changes, statuses = self._changes(taken)
            try:
                await self.store.apply(changes)
            except BaseException as exc:
                # Whatever stopped the write, what it carried is noted again.
                self._pending.merge_older(taken)
                if isinstance(exc, StoreError):
                    self._failed(exc, taken)
                raise
            self._succeeded(taken, statuses)

    async def close(self) -> None:
        """Write what is left, stop writing, close the store."""
        self._closed = True
        self._subscription.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await self.flush()
        except StoreError:
            logger.error(
                "closing with %d changes unsaved in %s",
                len(self._pending),
                self.store.location,
            )
        await self.store.close()

    def _changes(
        self, taken: _Pending
    ) -> tuple[Changes, dict[str, list[DocumentStatus]]]:
        """The write for ``taken``, and the outcome statuses it carries.

        The statuses are read here, with the records: by the time the write
        is done the job may have moved on, and that must go in the next one.
        """
        changes = Changes()
        statuses: dict[str, list[DocumentStatus]] = {}
        for job_id, job in taken.jobs.items():
            if job is None:
                changes.removed_jobs.append(job_id)
                continue
            now = statuses[job_id] = [o.status for o in job.documents]
            written = self._written.get(job_id)
            if written is None or len(written) != len(now):
                changes.jobs.append(job.to_record())
                continue
            changes.jobs.append(job.to_record(documents=False))
            changes.outcomes[job_id] = {
                i: job.documents[i].to_dict()
                for i, status in enumerate(now)
                if status is not written[i]
            }
        for session_id, session in taken.sessions.items():
            if session is None:
                changes.removed_sessions.append(session_id)
            else:
                changes.sessions.append(session)
        for document_id, document in taken.documents.items():
            if document is None:
                changes.removed_documents.append(document_id)
            else:
                changes.documents.append(document)
        if taken.history:
            changes.history = self._manager.history.to_dict()
        return changes, statuses

    def _succeeded(
        self, taken: _Pending, statuses: dict[str, list[DocumentStatus]]
    ) -> None:
        self._writes += 1
        for job_id in taken.jobs:
            if job_id in statuses:
                self._written[job_id] = statuses[job_id]
            else:
                self._written.pop(job_id, None)
        if self._error is not None:
            logger.info("saving to %s works again", self.store.location)
        self._error = None
        self._told.clear()

    def _failed(self, exc: StoreError, taken: _Pending) -> None:
        self._failures += 1
        if self._error is None:
            logger.error("saving to %s failed: %s", self.store.location, exc)
        self._error = exc

        # Each job's clients hear of it once per run of failures.
        for job_id, job in taken.jobs.items():
            if job is None or job_id in self._told:
                continue
            self._told.add(job_id)
            if self._manager.get_job(job_id) is not None:
                self._manager.report(JobSaveFailed, job_id, error=str(exc))

    def _schedule(self) -> None:
        if self._closed or (self._task is not None and not self._task.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # Noted outside a loop (an app being built): the next flush or
            # change on the loop writes it.
            return
        self._task = loop.create_task(self._write(), name="streamer-journal")

    async def _write(self) -> None:
        attempt = 0
        while self._pending and not self._closed:
            # A burst of changes waits for the rest of the interval and goes
            # in one write. On a busy loop every write costs a hand-over of
            # the GIL to the store's thread and back (see sqlite._outside_loop),
            # far more than the write itself: bench/store.py measured 5-9% of
            # the fan-out's rate at 20 writes a second, none at 5.
            wait = self._last_write + self._interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_write = time.monotonic()
            try:
                await self.flush()
            except StoreError:
                delay = self._retry.delay(attempt, self._rng)
                attempt += 1
                await asyncio.sleep(delay)
            except Exception:
                # A record that cannot be written at all must not stop the
                # journal; it is logged and the rest goes on.
                logger.error("journal write failed", exc_info=True)
                await asyncio.sleep(self._retry.delay(attempt, self._rng))
                attempt += 1
            else:
                attempt = 0
