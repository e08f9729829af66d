"""The process-wide job manager of the original module, now replaceable."""

from __future__ import annotations

from .job import MIN_MEMORY_GB
from .manager import JobManager
from .memory import probe_memory

__all__ = ["check_memory_for_conversion", "get_job_manager", "set_job_manager"]

_job_manager: JobManager | None = None


def get_job_manager() -> JobManager:
    """Get the global job manager instance, creating a default one if needed."""
    global _job_manager
    if _job_manager is None:
        _job_manager = JobManager()
    return _job_manager


def set_job_manager(manager: JobManager | None) -> JobManager | None:
    """Install ``manager`` as the global one (None to reset); returns the old one."""
    global _job_manager
    previous, _job_manager = _job_manager, manager
    return previous


def check_memory_for_conversion() -> tuple[bool, float]:
    """Whether the original's 10 GB are free now, and how many GB are.

    Kept for code written against the original; the engine itself admits
    documents through its memory gate, which also reserves what it grants.
    """
    reading = probe_memory()
    return reading.available_bytes >= MIN_MEMORY_GB * 1024**3, reading.available_gb
