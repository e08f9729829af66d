"""Sessions: who may see which jobs.

A session is a name that jobs and tokens share. The server creates sessions
on request, and a host application may mint tokens for session ids of its
own, so a valid token is proof enough that its session exists: the registry
learns such sessions the first time their token is seen.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from .clock import Clock
from .errors import StreamerError

__all__ = ["SESSION_ID", "Session", "SessionLimitReached", "SessionRegistry"]

#: What a session id may look like: safe in a URL path, a log line and a file name.
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)


class SessionLimitReached(StreamerError):
    """The server already holds as many sessions as it is allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"session limit of {limit} reached")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    created_at: datetime
    expires_at: datetime


class SessionRegistry:
    """The sessions a server knows, bounded by ``max_sessions``."""

    def __init__(self, clock: Clock, *, ttl: float, max_sessions: int) -> None:
        self._clock = clock
        self._ttl = ttl
        self._max = max_sessions
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def create(self) -> Session:
        """A new session with a random id."""
        self._make_room()
        session_id = f"ses-{secrets.token_hex(8)}"
        now = self._clock.now()
        session = Session(session_id, now, now + timedelta(seconds=self._ttl))
        self._sessions[session_id] = session
        return session

    def learn(self, session_id: str, expires_at: datetime) -> Session:
        """Record a session proven by a valid token, if it is new."""
        session = self._sessions.get(session_id)
        if session is None:
            self._make_room()
            session = Session(session_id, self._clock.now(), expires_at)
            self._sessions[session_id] = session
        elif expires_at > session.expires_at:
            session = Session(session_id, session.created_at, expires_at)
            self._sessions[session_id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def load(self, sessions: Iterable[Session]) -> None:
        """Take back sessions read from a store, past the limit if need be."""
        for session in sessions:
            self._sessions[session.session_id] = session

    def remove(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def remove_expired(self, *, keep: Collection[str] = ()) -> list[str]:
        """Forget sessions whose tokens all expired, except those in ``keep``."""
        now = self._clock.now()
        gone = [
            session_id
            for session_id, session in self._sessions.items()
            if session.expires_at <= now and session_id not in keep
        ]
        for session_id in gone:
            del self._sessions[session_id]
        return gone

    def _make_room(self) -> None:
        if len(self._sessions) < self._max:
            return

        # Expired sessions make way for new ones; live ones never do.
        now = self._clock.now()
        for session_id, session in list(self._sessions.items()):
            if session.expires_at <= now:
                del self._sessions[session_id]
        if len(self._sessions) >= self._max:
            raise SessionLimitReached(self._max)
