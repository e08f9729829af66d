"""The session registry: random ids, a bounded size, expiry and learned sessions."""

from __future__ import annotations

from datetime import timedelta

import pytest

from streamer import ManualClock, StreamerError
from streamer.sessions import SESSION_ID, SessionLimitReached, SessionRegistry

TTL = 100.0


def registry(clock: ManualClock, max_sessions: int = 3) -> SessionRegistry:
    return SessionRegistry(clock, ttl=TTL, max_sessions=max_sessions)


def test_sessions_create_ids_are_random_and_valid(clock: ManualClock) -> None:
    """Created ids never repeat and always fit SESSION_ID."""
    sessions = registry(clock, max_sessions=500)
    ids = [sessions.create().session_id for _ in range(500)]

    assert len(set(ids)) == 500
    assert all(SESSION_ID.fullmatch(session_id) for session_id in ids)
    assert len(sessions) == 500
    assert all(session_id in sessions for session_id in ids)


def test_sessions_create_lasts_the_ttl(clock: ManualClock) -> None:
    """A new session starts now and expires one ttl later."""
    session = registry(clock).create()

    assert session.created_at == clock.now()
    assert session.expires_at == clock.now() + timedelta(seconds=TTL)


def test_sessions_create_refused_past_limit(clock: ManualClock) -> None:
    """Creating a session past max_sessions raises SessionLimitReached."""
    sessions = registry(clock, max_sessions=2)
    sessions.create()
    sessions.create()

    with pytest.raises(SessionLimitReached, match="limit of 2") as caught:
        sessions.create()
    assert caught.value.limit == 2
    assert isinstance(caught.value, StreamerError)
    assert len(sessions) == 2


async def test_sessions_expired_sessions_make_room(clock: ManualClock) -> None:
    """Once every session has expired, a full registry takes new ones again."""
    sessions = registry(clock, max_sessions=2)
    old = [sessions.create().session_id for _ in range(2)]
    await clock.advance(TTL)

    new = sessions.create()

    assert len(sessions) == 1
    assert new.session_id in sessions
    assert not any(session_id in sessions for session_id in old)


async def test_sessions_live_sessions_are_never_evicted(clock: ManualClock) -> None:
    """Only expired sessions make room; live ones keep their place."""
    sessions = registry(clock, max_sessions=2)
    first = sessions.create()
    await clock.advance(TTL / 2)
    second = sessions.create()
    await clock.advance(TTL / 2)

    third = sessions.create()

    assert first.session_id not in sessions
    assert second.session_id in sessions
    assert third.session_id in sessions
    with pytest.raises(SessionLimitReached):
        sessions.create()


async def test_sessions_limit_counts_sessions_not_yet_pruned(
    clock: ManualClock,
) -> None:
    """Expired sessions are pruned only when room is needed, not on every call."""
    sessions = registry(clock, max_sessions=2)
    sessions.create()
    await clock.advance(TTL)

    assert len(sessions) == 1
    sessions.create()
    assert len(sessions) == 2


def test_sessions_learn_records_new_session(clock: ManualClock) -> None:
    """A session proven by a token is recorded with the token's expiry."""
    sessions = registry(clock)
    expires_at = clock.now() + timedelta(hours=5)

    session = sessions.learn("host-user-7", expires_at)

    assert session.session_id == "host-user-7"
    assert session.created_at == clock.now()
    assert session.expires_at == expires_at
    assert sessions.get("host-user-7") == session
    assert "host-user-7" in sessions


async def test_sessions_learn_extends_expiry(clock: ManualClock) -> None:
    """A later token extends a session; an earlier one never shortens it."""
    sessions = registry(clock)
    created = sessions.create()
    later = created.expires_at + timedelta(seconds=50)
    await clock.advance(10)

    extended = sessions.learn(created.session_id, later)
    unchanged = sessions.learn(created.session_id, created.expires_at)

    assert extended.expires_at == later
    assert extended.created_at == created.created_at
    assert unchanged.expires_at == later
    assert len(sessions) == 1


async def test_sessions_learn_keeps_session_past_its_first_expiry(
    clock: ManualClock,
) -> None:
    """An extended session is not pruned when its first expiry passes."""
    sessions = registry(clock, max_sessions=2)
    kept = sessions.create()
    sessions.learn(kept.session_id, kept.expires_at + timedelta(seconds=TTL))
    dropped = sessions.create()
    await clock.advance(TTL)

    sessions.create()

    assert kept.session_id in sessions
    assert dropped.session_id not in sessions


def test_sessions_learn_refused_past_limit(clock: ManualClock) -> None:
    """A new session is refused when full; a known one is still learned."""
    sessions = registry(clock, max_sessions=1)
    known = sessions.create()
    later = known.expires_at + timedelta(seconds=1)

    with pytest.raises(SessionLimitReached):
        sessions.learn("host-1", later)
    assert sessions.learn(known.session_id, later).expires_at == later
    assert "host-1" not in sessions


@pytest.mark.parametrize(
    "session_id", ["a", "ses-0123abcd", "Host_User-42", "x" * 64, "-", "_"]
)
def test_sessions_session_id_accepts_url_safe_names(session_id: str) -> None:
    """SESSION_ID takes 1 to 64 letters, digits, '-' and '_'."""
    assert SESSION_ID.fullmatch(session_id)


@pytest.mark.parametrize(
    "session_id",
    ["", "x" * 65, "..", "../etc", "a/b", "a.b", "a b", "a\n", "é", "a%2F", "a\x00"],
)
def test_sessions_session_id_refuses_anything_else(session_id: str) -> None:
    """SESSION_ID refuses what would be unsafe in a path, a log line or a file name."""
    assert SESSION_ID.fullmatch(session_id) is None
