"""The exceptions streamer raises.

Every error the package raises on purpose derives from :class:`StreamerError`::

    StreamerError
    ├── JobNotFound            (also a LookupError and a ValueError)
    ├── InvalidTransition      (also a ValueError)
    ├── MemoryWaitTimeout
    ├── MemoryRequestTooLarge
    ├── DocumentTimeout
    ├── ConversionCancelled
    ├── InvalidProgress        (also a ValueError)
    ├── InvalidCursor          (also a ValueError)
    ├── HubClosed
    ├── HubLimitExceeded
    ├── SubscriptionClosed
    │   └── SubscriberEvicted
    ├── InvalidToken
    ├── DocumentError
    │   ├── NotAPdf
    │   ├── EncryptedPdf
    │   ├── DamagedPdf
    │   ├── EmptyPdf
    │   └── DocumentUnreadable
    ├── ConverterCrashed
    ├── MemoryBudgetExceeded
    ├── ShuttingDown
    └── StoreError

``JobNotFound`` and ``InvalidTransition`` are also ``ValueError`` because the
original module raised ``ValueError`` for both, and callers catch it.

A ``DocumentError`` is the document's own fault: converting it again fails
again. ``ConverterCrashed`` and ``MemoryBudgetExceeded`` say that the worker
process converting a document died or was stopped; the document may be to
blame, or the machine.
"""

from __future__ import annotations

__all__ = [
    "ConversionCancelled",
    "ConverterCrashed",
    "DamagedPdf",
    "DocumentError",
    "DocumentTimeout",
    "DocumentUnreadable",
    "EmptyPdf",
    "EncryptedPdf",
    "HubClosed",
    "HubLimitExceeded",
    "InvalidCursor",
    "InvalidProgress",
    "InvalidToken",
    "InvalidTransition",
    "JobNotFound",
    "MemoryBudgetExceeded",
    "MemoryRequestTooLarge",
    "MemoryWaitTimeout",
    "NotAPdf",
    "ShuttingDown",
    "StoreError",
    "StreamerError",
    "SubscriberEvicted",
    "SubscriptionClosed",
]


class StreamerError(Exception):
    """Base class of every error raised by streamer."""


class JobNotFound(StreamerError, LookupError, ValueError):
    """No job has the given id (it never existed or was removed)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"Job {job_id} not found")
        self.job_id = job_id


class InvalidTransition(StreamerError, ValueError):
    """A job was asked to move to a state it cannot reach from its current one."""

    def __init__(self, job_id: str, current: str, target: str) -> None:
        super().__init__(f"job {job_id} cannot go from {current} to {target}")
        self.job_id = job_id
        self.current = current
        self.target = target


class MemoryWaitTimeout(StreamerError):
    """A document waited longer than allowed for memory to become free."""


class MemoryRequestTooLarge(StreamerError):
    """A document needs more memory than the machine or container has in all."""


class DocumentTimeout(StreamerError):
    """A converter took longer than the per-document timeout."""


class ConversionCancelled(StreamerError):
    """Raised into a converter's progress callback once its job is cancelled.

    A synchronous converter running in a thread cannot be interrupted from
    outside; its next progress report raises this so it can unwind and clean up.
    """


class InvalidProgress(StreamerError, ValueError):
    """A converter reported a progress value that is not a number."""


class InvalidCursor(StreamerError, ValueError):
    """A replay cursor is not one the hub could have issued."""

    def __init__(self, length: int) -> None:
        # The text came from a client, so it is described, never repeated.
        super().__init__(f"cursor of {length} characters is malformed")
        self.length = length


class HubClosed(StreamerError):
    """The hub was closed, so it accepts no new subscribers."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"hub is closed ({reason})")
        self.reason = reason


class HubLimitExceeded(StreamerError):
    """A new subscriber would take the hub past one of its configured limits."""

    def __init__(self, limit: str, value: int) -> None:
        super().__init__(f"hub limit {limit}={value} reached")
        self.limit = limit
        self.value = value


class SubscriptionClosed(StreamerError):
    """A subscription was closed; ``reason`` says why ("closed", "shutdown")."""

    def __init__(
        self, session_id: str, reason: str, message: str | None = None
    ) -> None:
        super().__init__(
            message or f"subscription to session {session_id} is closed ({reason})"
        )
        self.session_id = session_id
        self.reason = reason


class SubscriberEvicted(SubscriptionClosed):
    """A subscriber fell so far behind that the hub dropped it and its queue."""

    def __init__(self, session_id: str, hard_limit: int) -> None:
        super().__init__(
            session_id,
            "lagging",
            f"subscriber to session {session_id} was evicted: more than "
            f"{hard_limit} messages queued",
        )
        self.hard_limit = hard_limit


class InvalidToken(StreamerError):
    """A session token was refused; ``reason`` says why, the token is never shown.

    The reason is one of "malformed", "bad signature", "expired" and
    "wrong session".
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid token: {reason}")
        self.reason = reason


class DocumentError(StreamerError):
    """A document that cannot be converted; ``document`` names it (id or file name)."""

    def __init__(self, document: str, message: str) -> None:
        super().__init__(message)
        self.document = document


class NotAPdf(DocumentError):
    """The file is no PDF: its first kilobyte holds no ``%PDF-`` header."""

    def __init__(self, document: str) -> None:
        super().__init__(
            document,
            f"document {document} is not a PDF (no %PDF- header in its first"
            " 1024 bytes)",
        )


class EncryptedPdf(DocumentError):
    """The PDF needs a password to open, or a security handler PDFium lacks."""

    def __init__(self, document: str) -> None:
        super().__init__(
            document,
            f"document {document} is encrypted; streamer cannot open"
            " password-protected PDFs",
        )


class DamagedPdf(DocumentError):
    """The PDF is damaged beyond what PDFium repairs; ``detail`` says where."""

    def __init__(self, document: str, detail: str) -> None:
        super().__init__(document, f"document {document} is damaged: {detail}")
        self.detail = detail


class EmptyPdf(DocumentError):
    """The PDF opens but has no pages, so there is nothing to convert."""

    def __init__(self, document: str) -> None:
        super().__init__(document, f"document {document} is a PDF with no pages")


class DocumentUnreadable(DocumentError):
    """The file could not be read at all: it is missing, or access is denied."""

    def __init__(self, document: str, reason: str) -> None:
        super().__init__(document, f"document {document} cannot be read: {reason}")
        self.reason = reason


class ConverterCrashed(StreamerError):
    """The worker process converting a document died before it finished.

    ``exitcode`` is as :mod:`multiprocessing` reports it: minus the signal's
    number when a signal killed the worker, so ``-9`` is SIGKILL.
    """

    def __init__(self, document: str, how: str, *, exitcode: int | None) -> None:
        super().__init__(f"the worker converting document {document} crashed: {how}")
        self.document = document
        self.how = how
        self.exitcode = exitcode


class MemoryBudgetExceeded(StreamerError):
    """The worker converting a document outgrew its memory budget and was killed.

    ``budget`` and ``used`` are bytes of resident memory; ``used`` is the
    figure of the check that caught it, so it is a lower bound of the peak.
    """

    def __init__(self, document: str, budget: int, used: int) -> None:
        super().__init__(
            f"the worker converting document {document} was killed: it used"
            f" {used / 2**20:.0f} MiB, past its memory budget of"
            f" {budget / 2**20:.0f} MiB"
        )
        self.document = document
        self.budget = budget
        self.used = used


class ShuttingDown(StreamerError):
    """The manager is shutting down and starts no more work."""


class StoreError(StreamerError):
    """A write or read of the store failed; nothing of that write was kept.

    ``reason`` is one of ``"full"`` (no space left), ``"read_only"`` and
    ``"failed"`` (anything else: a damaged file, a lost connection).
    """

    def __init__(self, message: str, reason: str = "failed") -> None:
        super().__init__(message)
        self.reason = reason
