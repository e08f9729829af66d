"""streamer: run long document conversions in the background, stream their state.

The job engine is importable from here; see README.md for a tour.
"""

from .clock import Clock, ManualClock, SystemClock
from .errors import (
    ConversionCancelled,
    DocumentTimeout,
    InvalidProgress,
    InvalidTransition,
    JobNotFound,
    MemoryRequestTooLarge,
    MemoryWaitTimeout,
    StreamerError,
)
from .eta import ConverterHistory, EtaEstimator
from .events import (
    EventType,
    JobCancelled,
    JobCompleted,
    JobCreated,
    JobDocumentConverted,
    JobDocumentFailed,
    JobEvent,
    JobFailed,
    JobMemoryResumed,
    JobMemoryWait,
    JobProgress,
    JobRemoved,
    JobStarted,
)
from .gate import Backoff, GateStatistics, MemoryGate, MemoryWait, Reservation
from .job import (
    MIN_MEMORY_GB,
    ConversionJob,
    DocumentOutcome,
    DocumentStatus,
    JobStatus,
    MemoryStatus,
    format_eta,
    format_gb,
)
from .manager import (
    MAX_MEMORY_WAIT_TIME,
    MEMORY_CHECK_INTERVAL,
    Converter,
    DocumentMemory,
    JobManager,
    Subscription,
    converter_name,
)
from .memory import (
    MemoryProbe,
    MemoryReading,
    StaticMemoryProbe,
    SystemMemoryProbe,
    probe_memory,
)
from .singleton import check_memory_for_conversion, get_job_manager, set_job_manager

__version__ = "0.1.0"

__all__ = [
    "MAX_MEMORY_WAIT_TIME",
    "MEMORY_CHECK_INTERVAL",
    "MIN_MEMORY_GB",
    "Backoff",
    "Clock",
    "ConversionCancelled",
    "ConversionJob",
    "Converter",
    "ConverterHistory",
    "DocumentMemory",
    "DocumentOutcome",
    "DocumentStatus",
    "DocumentTimeout",
    "EtaEstimator",
    "EventType",
    "GateStatistics",
    "InvalidProgress",
    "InvalidTransition",
    "JobCancelled",
    "JobCompleted",
    "JobCreated",
    "JobDocumentConverted",
    "JobDocumentFailed",
    "JobEvent",
    "JobFailed",
    "JobManager",
    "JobMemoryResumed",
    "JobMemoryWait",
    "JobNotFound",
    "JobProgress",
    "JobRemoved",
    "JobStarted",
    "JobStatus",
    "ManualClock",
    "MemoryGate",
    "MemoryProbe",
    "MemoryReading",
    "MemoryRequestTooLarge",
    "MemoryStatus",
    "MemoryWait",
    "MemoryWaitTimeout",
    "Reservation",
    "StaticMemoryProbe",
    "StreamerError",
    "Subscription",
    "SystemClock",
    "SystemMemoryProbe",
    "__version__",
    "check_memory_for_conversion",
    "converter_name",
    "format_eta",
    "format_gb",
    "get_job_manager",
    "probe_memory",
    "set_job_manager",
]
