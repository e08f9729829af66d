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
    "JobStarted",
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
