"""The events a job emits, one class per type.

Every event carries the job's whole public state (``ConversionJob.to_dict()``)
as ``job``, so a client can replace its copy of the job with the latest event,
plus the fields of its own type. ``to_dict()`` is the wire form without the
cursor, which the hub adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, ClassVar

__all__ = [
    "EventType",
    "JobCancelled",
    "JobCompleted",
    "JobCreated",
    "JobDocumentConverted",
    "JobDocumentFailed",
    "JobEvent",
    "JobFailed",
    "JobMemoryResumed",
    "JobMemoryWait",
    "JobProgress",
    "JobRemoved",
    "JobResumed",
    "JobSaveFailed",
    "JobStarted",
    "JobSuspended",
]


class EventType(str, Enum):
    """The ``type`` of each event on the wire."""

    CREATED = "job.created"
    STARTED = "job.started"
    PROGRESS = "job.progress"
    MEMORY_WAIT = "job.memory_wait"
    MEMORY_RESUMED = "job.memory_resumed"
    DOCUMENT_CONVERTED = "job.document_converted"
    DOCUMENT_FAILED = "job.document_failed"
    COMPLETED = "job.completed"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"
    REMOVED = "job.removed"
    RESUMED = "job.resumed"
    SUSPENDED = "job.suspended"
    SAVE_FAILED = "job.save_failed"


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A change of one job."""

    event_type: ClassVar[EventType]

    job_id: str
    session_id: str
    ts: datetime
    job: dict[str, Any]

    @property
    def type(self) -> str:
        return self.event_type.value

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": self.event_type.value,
            "job_id": self.job_id,
            "ts": self.ts.isoformat(),
            "job": self.job,
        }
        data.update(self._fields())
        return data

    def _fields(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True)
class JobCreated(JobEvent):
    event_type = EventType.CREATED


@dataclass(frozen=True, slots=True)
class JobStarted(JobEvent):
    event_type = EventType.STARTED


@dataclass(frozen=True, slots=True)
class JobProgress(JobEvent):
    """Progress moved, or the job moved on to another document."""

    event_type = EventType.PROGRESS


@dataclass(frozen=True, slots=True)
class JobMemoryWait(JobEvent):
    """The job waits for memory; sent when the wait starts and at each check."""

    event_type = EventType.MEMORY_WAIT
    memory: dict[str, Any]

    def _fields(self) -> dict[str, Any]:
        return {"memory": self.memory}


@dataclass(frozen=True, slots=True)
class JobMemoryResumed(JobEvent):
    """Memory was granted after a wait; ``memory`` says how long it took."""

    event_type = EventType.MEMORY_RESUMED
    memory: dict[str, Any]

    def _fields(self) -> dict[str, Any]:
        return {"memory": self.memory}


@dataclass(frozen=True, slots=True)
class JobDocumentConverted(JobEvent):
    event_type = EventType.DOCUMENT_CONVERTED
    document: dict[str, Any]

    def _fields(self) -> dict[str, Any]:
        return {"document": self.document}


@dataclass(frozen=True, slots=True)
class JobDocumentFailed(JobEvent):
    event_type = EventType.DOCUMENT_FAILED
    document: dict[str, Any]

    def _fields(self) -> dict[str, Any]:
        return {"document": self.document}


@dataclass(frozen=True, slots=True)
class JobCompleted(JobEvent):
    event_type = EventType.COMPLETED


@dataclass(frozen=True, slots=True)
class JobFailed(JobEvent):
    event_type = EventType.FAILED


@dataclass(frozen=True, slots=True)
class JobCancelled(JobEvent):
    event_type = EventType.CANCELLED


@dataclass(frozen=True, slots=True)
class JobRemoved(JobEvent):
    event_type = EventType.REMOVED


@dataclass(frozen=True, slots=True)
class JobResumed(JobEvent):
    """A job taken up again after a restart; ``reason`` says why it had stopped.

    ``documents_done`` of its documents had ended before and are not
    converted again; the one that was converting starts over.
    """

    event_type = EventType.RESUMED
    reason: str
    documents_done: int

    def _fields(self) -> dict[str, Any]:
        return {"reason": self.reason, "documents_done": self.documents_done}


@dataclass(frozen=True, slots=True)
class JobSuspended(JobEvent):
    """The server is shutting down: the job stops here, to be resumed at start."""

    event_type = EventType.SUSPENDED
    reason: str

    def _fields(self) -> dict[str, Any]:
        return {"reason": self.reason}


@dataclass(frozen=True, slots=True)
class JobSaveFailed(JobEvent):
    """The job's latest state could not be saved; it is tried again.

    The job goes on meanwhile, but what it did since its last save would be
    lost if the server stopped now.
    """

    event_type = EventType.SAVE_FAILED
    error: str

    def _fields(self) -> dict[str, Any]:
        return {"error": self.error}
