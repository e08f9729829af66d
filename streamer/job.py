"""The job model: a job's lifecycle, its documents' outcomes and its JSON form.

A :class:`ConversionJob` keeps the fields and ``to_dict()`` keys of the original
module so code written against it keeps working; the engine adds per-document
outcomes, failure counts and memory-wait detail next to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

from .errors import InvalidTransition

if TYPE_CHECKING:
    from .eta import EtaEstimator

__all__ = [
    "MIN_MEMORY_GB",
    "ConversionJob",
    "DocumentOutcome",
    "DocumentStatus",
    "JobStatus",
    "MemoryStatus",
    "format_eta",
    "format_gb",
]

# The original scheduler's requirement: an 8 GB model plus a 2 GB buffer.
MIN_MEMORY_GB = 10


class JobStatus(str, Enum):
    """Status of a background job."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING_FOR_MEMORY = "waiting_for_memory"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """Whether the job can no longer change."""
        return self in _FINAL

    def can_become(self, target: JobStatus) -> bool:
        return target in _TRANSITIONS[self]


_FINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset(
        {JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.WAITING_FOR_MEMORY,
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
        }
    ),
    JobStatus.WAITING_FOR_MEMORY: frozenset(
        {JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class DocumentStatus(str, Enum):
    """Where one document of a job stands. ``pending`` at the end means not reached."""

    PENDING = "pending"
    CONVERTING = "converting"
    CONVERTED = "converted"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class DocumentOutcome:
    """What happened to one document of a job."""

    document_id: str
    status: DocumentStatus = DocumentStatus.PENDING
    error: str | None = None
    duration_seconds: float | None = None
    result: dict[str, Any] | None = None
    # Progress inside the document, 0..1; it only ever grows.
    progress: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "document_id": self.document_id,
            "status": self.status.value,
            "error": self.error,
            "duration_seconds": (
                None
                if self.duration_seconds is None
                else round(self.duration_seconds, 3)
            ),
            "result": self.result,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DocumentOutcome:
        """An outcome as :meth:`to_dict` wrote it; one cut short starts over."""
        status = DocumentStatus(data["status"])
        if status is DocumentStatus.CONVERTING:
            status = DocumentStatus.PENDING
        converted = status is DocumentStatus.CONVERTED
        return cls(
            document_id=data["document_id"],
            status=status,
            error=data.get("error"),
            duration_seconds=data.get("duration_seconds"),
            result=data.get("result"),
            progress=1.0 if converted else 0.0,
        )


@dataclass(slots=True)
class MemoryStatus:
    """The detail of a memory wait, as the gate last reported it."""

    available_bytes: int
    required_bytes: int
    source: str
    waiting_since: datetime
    next_check_at: datetime
    next_check_in_seconds: float
    queue_position: int

    def to_dict(self) -> dict[str, Any]:
        available_gb = format_gb(self.available_bytes)
        required_gb = format_gb(self.required_bytes)
        wait = math.ceil(self.next_check_in_seconds)
        return {
            "available_gb": available_gb,
            "required_gb": required_gb,
            "waiting_since": self.waiting_since.isoformat(),
            "message": (
                f"Waiting for memory: {available_gb}GB available, "
                f"{required_gb}GB required; next check in {wait} s"
            ),
            "available_bytes": self.available_bytes,
            "required_bytes": self.required_bytes,
            "source": self.source,
            "next_check_at": self.next_check_at.isoformat(),
            "next_check_in_seconds": round(self.next_check_in_seconds, 3),
            "queue_position": self.queue_position,
        }


def format_gb(nbytes: float) -> float:
    """Bytes as GiB to one decimal, an int when whole: ``3.2``, ``10``."""
    gb = round(nbytes / 1024**3, 1)
    return int(gb) if gb == int(gb) else gb


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _parse(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass
class ConversionJob:
    """Tracks a PDF conversion job with progress and memory status."""

    job_id: str
    session_id: str
    document_ids: list[str]
    status: JobStatus = JobStatus.PENDING
    progress: float = 0.0
    current_file: str | None = None
    # Documents finished either way, converted or failed.
    files_completed: int = 0
    files_total: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    # Memory-aware scheduling fields
    memory_wait_started: datetime | None = None
    memory_available_gb: float | None = None
    memory_required_gb: float = MIN_MEMORY_GB
    # Added by the engine; everything below is new since the original.
    created_at: datetime | None = None
    files_converted: int = 0
    files_failed: int = 0
    documents: list[DocumentOutcome] = field(default_factory=list)
    memory: MemoryStatus | None = None
    #: Why the job last stopped before its end, when a shutdown stopped it.
    interrupted: str | None = None
    _eta: EtaEstimator | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.files_total:
            self.files_total = len(self.document_ids)
        if not self.documents:
            self.documents = [DocumentOutcome(d) for d in self.document_ids]

    def transition(self, target: JobStatus) -> None:
        """Move to ``target``, or raise :class:`InvalidTransition`."""
        if not self.status.can_become(target):
            raise InvalidTransition(self.job_id, self.status.value, target.value)
        self.status = target

    def document(self, document_id: str) -> DocumentOutcome | None:
        """The outcome of one document of this job, by id."""
        for outcome in self.documents:
            if outcome.document_id == document_id:
                return outcome
        return None

    def to_dict(self) -> dict[str, Any]:
        """Serialize job for API responses."""
        eta = self.estimate_remaining_time()
        result: dict[str, Any] = {
            "job_id": self.job_id,
            "session_id": self.session_id,
            "status": self.status.value,
            "progress": round(self.progress, 2),
            "current_file": self.current_file,
            "files_completed": self.files_completed,
            "files_total": self.files_total,
            "files_converted": self.files_converted,
            "files_failed": self.files_failed,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "completed_at": _iso(self.completed_at),
            "error": self.error,
            "eta_seconds": eta,
            "eta_human": format_eta(eta),
            "memory_required_gb": self.memory_required_gb,
        }
        if self.status == JobStatus.WAITING_FOR_MEMORY:
            result["memory_status"] = self._memory_status()
        return result

    def _memory_status(self) -> dict[str, Any]:
        if self.memory is not None:
            return self.memory.to_dict()

        # A job built by hand (as the original allowed) has only the old fields.
        return {
            "available_gb": self.memory_available_gb,
            "required_gb": self.memory_required_gb,
            "waiting_since": _iso(self.memory_wait_started),
            "message": (
                f"Waiting for memory: {self.memory_available_gb}GB available, "
                f"{self.memory_required_gb}GB required"
            ),
        }

    def to_record(self, *, documents: bool = True) -> dict[str, Any]:
        """The job as a store keeps it: everything needed to take it up again.

        Without ``documents`` the outcomes are left out, for a store that
        keeps them apart and is given only those that changed.
        """
        record = {
            "job_id": self.job_id,
            "session_id": self.session_id,
            "document_ids": list(self.document_ids),
            "status": self.status.value,
            "files_completed": self.files_completed,
            "files_total": self.files_total,
            "files_converted": self.files_converted,
            "files_failed": self.files_failed,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "completed_at": _iso(self.completed_at),
            "error": self.error,
            "memory_required_gb": self.memory_required_gb,
            "interrupted": self.interrupted,
        }
        if documents:
            record["documents"] = [outcome.to_dict() for outcome in self.documents]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ConversionJob:
        """A job as :meth:`to_record` kept it.

        A job that had not finished comes back pending, its documents that
        were converting pending again, ready to be resumed; the status it had
        stays readable in the record.
        """
        status = JobStatus(record["status"])
        outcomes = [DocumentOutcome.from_dict(d) for d in record["documents"]]
        job = cls(
            job_id=record["job_id"],
            session_id=record["session_id"],
            document_ids=list(record["document_ids"]),
            status=status if status.is_final else JobStatus.PENDING,
            files_completed=record["files_completed"],
            files_total=record["files_total"],
            files_converted=record["files_converted"],
            files_failed=record["files_failed"],
            created_at=_parse(record.get("created_at")),
            started_at=_parse(record.get("started_at")),
            completed_at=_parse(record.get("completed_at")),
            error=record.get("error"),
            memory_required_gb=record["memory_required_gb"],
            interrupted=record.get("interrupted"),
            documents=outcomes,
        )
        if len(outcomes) != len(job.document_ids):
            raise ValueError(
                f"job {job.job_id} has {len(outcomes)} outcomes stored for"
                f" {len(job.document_ids)} documents"
            )
        job.progress = (
            1.0
            if status is JobStatus.COMPLETED
            else job.files_completed / job.files_total
        )
        return job

    def estimate_remaining_time(self) -> int | None:
        """Seconds of conversion left, or None while there is nothing to go on."""
        if self.status.is_final:
            return 0 if self.status == JobStatus.COMPLETED else None
        if self._eta is None:
            return None
        current = 0.0
        if self.current_file is not None and self.files_completed < self.files_total:
            current = self.documents[self.files_completed].progress
        seconds = self._eta.estimate(self.files_completed, current)
        return None if seconds is None else round(seconds)

    def _format_eta(self) -> str | None:
        """Format ETA as human-readable string."""
        return format_eta(self.estimate_remaining_time())


def format_eta(seconds: int | None) -> str | None:
    """A short human form of a number of seconds: ``45 seconds``, ``2h 5m``."""
    if seconds is None:
        return None
    if seconds < 60:
        return f"{seconds} second{'' if seconds == 1 else 's'}"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} minute{'' if minutes == 1 else 's'}"
    hours, mins = divmod(minutes, 60)
    return f"{hours}h {mins}m"
