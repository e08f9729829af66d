"""The job model: lifecycle transitions and the JSON form."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streamer import (
    ConversionJob,
    DocumentOutcome,
    DocumentStatus,
    InvalidTransition,
    JobStatus,
)


def test_job_status_values_match_original() -> None:
    """JobStatus keeps the original's six values, and is still a str."""
    assert [s.value for s in JobStatus] == [
        "pending",
        "running",
        "waiting_for_memory",
        "completed",
        "failed",
        "cancelled",
    ]
    assert JobStatus.RUNNING == "running"


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (JobStatus.COMPLETED, JobStatus.RUNNING),
        (JobStatus.CANCELLED, JobStatus.COMPLETED),
        (JobStatus.FAILED, JobStatus.CANCELLED),
        (JobStatus.PENDING, JobStatus.WAITING_FOR_MEMORY),
        (JobStatus.WAITING_FOR_MEMORY, JobStatus.COMPLETED),
    ],
)
def test_job_illegal_transition_names_state(
    current: JobStatus, target: JobStatus
) -> None:
    """An illegal transition raises an error naming the current state."""
    job = ConversionJob("job-1", "s", ["a"], status=current)
    with pytest.raises(InvalidTransition, match=f"from {current.value} to"):
        job.transition(target)
    assert job.status is current


def test_job_legal_transitions() -> None:
    """Every non-final state can be cancelled; final states go nowhere."""
    for status in JobStatus:
        assert status.can_become(JobStatus.CANCELLED) is not status.is_final
        if status.is_final:
            assert not any(status.can_become(t) for t in JobStatus)


def test_job_hand_built_keeps_original_fields() -> None:
    """A ConversionJob built as the original allowed serializes as before."""
    job = ConversionJob(
        job_id="job-1",
        session_id="s",
        document_ids=["a", "b"],
        status=JobStatus.WAITING_FOR_MEMORY,
        memory_wait_started=datetime(2026, 1, 1, tzinfo=UTC),
        memory_available_gb=3.2,
    )
    data = job.to_dict()
    assert data["files_total"] == 2
    assert data["eta_seconds"] is None
    assert data["memory_status"] == {
        "available_gb": 3.2,
        "required_gb": 10,
        "waiting_since": "2026-01-01T00:00:00+00:00",
        "message": "Waiting for memory: 3.2GB available, 10GB required",
    }
    assert [d.document_id for d in job.documents] == ["a", "b"]
    assert job.document("b") is job.documents[1]
    assert job.document("zz") is None


def test_job_memory_status_only_while_waiting() -> None:
    """memory_status appears only in the waiting state, as in the original."""
    job = ConversionJob("job-1", "s", ["a"])
    assert "memory_status" not in job.to_dict()


def test_job_document_outcome_form() -> None:
    """A document's outcome has the five fields of the protocol."""
    outcome = DocumentOutcome(
        "a", DocumentStatus.FAILED, error="bad", duration_seconds=1.23456
    )
    assert outcome.to_dict() == {
        "document_id": "a",
        "status": "failed",
        "error": "bad",
        "duration_seconds": 1.235,
        "result": None,
    }
