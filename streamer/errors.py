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
    └── InvalidToken

``JobNotFound`` and ``InvalidTransition`` are also ``ValueError`` because the
original module raised ``ValueError`` for both, and callers catch it.
"""

from __future__ import annotations

__all__ = [
    "ConversionCancelled",
    "DocumentTimeout",
    "HubClosed",
    "HubLimitExceeded",
    "InvalidCursor",
    "InvalidProgress",
    "InvalidToken",
    "InvalidTransition",
    "JobNotFound",
    "MemoryRequestTooLarge",
    "MemoryWaitTimeout",
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
