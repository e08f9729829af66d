"""The per-session broadcast hub between the job engine and streaming clients.

The engine calls :meth:`Hub.publish` for every event. The hub stamps the event
with a cursor, encodes it to JSON once, keeps it in the session's replay buffer
and queues the same bytes for every subscriber of that session. Endpoints
await :meth:`Subscription.get` and write what it returns to the wire; the hub
itself does no I/O.

A consumer with nothing queued may instead :meth:`Subscription.hand_off` to
publish a writer: publish then hands each message straight to it rather than
queueing it and waking the consumer's task, which at a thousand subscribers
is most of what a delivery costs. A writer that cannot finish a message at
once keeps it and ends the hand-off; everything published after it is
queued, bounded and coalesced as usual until the consumer has caught up and
hands off again.

A cursor reads ``<epoch>-<seq>``. The epoch is drawn at random per hub and
session (the hub's part, then the session's), so a cursor issued by an earlier
server process, or for another session, is recognisably foreign; ``seq``
grows by one per event of a session. A new session's numbering starts where
the hub's count of published events stands, so a session that is discarded and
opened again never reuses a number a client may still hold.

Every subscriber's first message says where its stream starts:

* ``{"type":"snapshot","cursor":...,"reset":false,"jobs":[...]}`` when it gave
  no cursor;
* ``{"type":"resumed","cursor":...,"replayed":N}`` followed by exactly the N
  events it missed, when its cursor is still covered by the replay buffer;
* ``{"type":"snapshot",...,"reset":true,...}`` for any other cursor: foreign,
  malformed, too old, or ahead of the session.

``job.progress`` events are coalesced: when one arrives for a job whose
previous progress a subscriber has not read yet, the queued message is
replaced in place instead of a new one being appended, unless another event of
that job was queued after it, which the newer progress must not overtake.
This is done whatever
the queue length, not only past ``queue_size``, because it costs one dict
lookup and spares the client stale work. The replacement keeps the cursor of
the message it replaces: the messages behind it in the queue carry older
cursors, and a client that resumed from the newer one would miss them. Every
other event type is a lifecycle event and is always appended; a subscriber
whose queue grows past ``hard_limit`` is evicted instead.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import secrets
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .clock import Clock, SystemClock
from .errors import (
    HubClosed,
    HubLimitExceeded,
    InvalidCursor,
    SubscriberEvicted,
    SubscriptionClosed,
)

__all__ = [
    "COALESCABLE",
    "Cursor",
    "Hub",
    "HubEvent",
    "HubStatistics",
    "Subscription",
    "SubscriptionStatistics",
    "parse_cursor",
]

logger = logging.getLogger("streamer.hub")

#: The only event type whose queued messages may be replaced by newer ones.
COALESCABLE = "job.progress"

# One encoder for the life of the process: json.dumps with any keyword
# argument builds a new JSONEncoder on every call.
_encode = json.JSONEncoder(separators=(",", ":")).encode

# Every progress message starts with these bytes, because publish puts "type"
# and "cursor" first; coalescing splices a different cursor in right after.
_PROGRESS_HEAD = _encode({"type": COALESCABLE, "cursor": ""})[:-2].encode()

_CURSOR = re.compile(r"([0-9a-f]{8,32})-(0|[1-9][0-9]{0,18})", re.ASCII)
_MAX_CURSOR_LENGTH = 64


class HubEvent(Protocol):
    """What the hub needs from an engine event."""

    @property
    def type(self) -> str: ...

    @property
    def job_id(self) -> str: ...

    @property
    def session_id(self) -> str: ...

    def to_dict(self) -> dict[str, Any]:
        """The wire form without the cursor, ``"type"`` first."""
        ...


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in a session's event stream."""

    epoch: str
    seq: int

    def __str__(self) -> str:
        return f"{self.epoch}-{self.seq}"


def parse_cursor(text: str) -> Cursor:
    """Read a cursor a client sent back, raising :class:`InvalidCursor`."""
    # The length check comes first so a huge value costs nothing to refuse.
    if len(text) > _MAX_CURSOR_LENGTH:
        raise InvalidCursor(len(text))

    match = _CURSOR.fullmatch(text)
    if match is None:
        raise InvalidCursor(len(text))

    return Cursor(match[1], int(match[2]))


@dataclass(frozen=True, slots=True)
class HubStatistics:
    """Counters of a hub since it was created, and its current size."""

    #: Sessions the hub holds a replay buffer or subscribers for.
    sessions: int
    #: Subscribers currently registered.
    connections: int
    #: Subscribers whose queue is at or past ``queue_size``.
    backlogged: int
    #: Events passed to :meth:`Hub.publish`.
    published: int
    #: Event messages queued for subscribers, live or replayed.
    delivered: int
    #: Progress messages that replaced a queued one instead of being queued.
    coalesced: int
    #: Subscribers dropped for lagging past ``hard_limit``.
    evicted: int


@dataclass(frozen=True, slots=True)
class SubscriptionStatistics:
    """The state of one subscriber's queue."""

    queued: int
    sent: int
    coalesced: int
    waiting: bool


class _Frame:
    """An encoded message, shared by the replay buffer and every queue."""

    __slots__ = ("cursor", "data", "job_id", "progress", "seq", "shared")

    def __init__(
        self,
        data: bytes,
        seq: int,
        cursor: str,
        job_id: str,
        *,
        progress: bool = False,
        shared: bool = True,
    ) -> None:
        self.data = data
        self.seq = seq
        self.cursor = cursor
        self.job_id = job_id
        self.progress = progress
        # A frame that is not shared belongs to one queue, so coalescing may
        # rewrite it without touching anyone else's copy.
        self.shared = shared


class _Session:
    __slots__ = (
        "by_job",
        "epoch",
        "everyone",
        "last_active",
        "members",
        "replay",
        "seq",
    )

    def __init__(self, epoch: str, seq: int, replay_size: int, now: float) -> None:
        self.epoch = epoch
        self.seq = seq
        self.replay: deque[_Frame] = deque(maxlen=replay_size)
        self.members: set[Subscription] = set()
        # Publish walks these tuples; they are rebuilt whenever membership
        # changes, so an eviction during a walk cannot disturb it.
        self.everyone: tuple[Subscription, ...] = ()
        self.by_job: dict[str, tuple[Subscription, ...]] = {}
        self.last_active = now

    def rebuild(self) -> None:
        everyone: list[Subscription] = []
        by_job: dict[str, list[Subscription]] = {}
        for member in self.members:
            if member.jobs is None:
                everyone.append(member)
                continue

            for job_id in member.jobs:
                by_job.setdefault(job_id, []).append(member)

        self.everyone = tuple(everyone)
        self.by_job = {job_id: tuple(subs) for job_id, subs in by_job.items()}


class Subscription:
    """One client's queue of messages from a session; made by :meth:`Hub.subscribe`.

    A subscription has a single consumer: one :meth:`get` at a time, or a
    :meth:`hand_off` to publish.
    """

    __slots__ = (
        "_backlogged",
        "_closed",
        "_coalesced",
        "_hard_limit",
        "_hub",
        "_pending",
        "_queue",
        "_sent",
        "_soft_limit",
        "_waiter",
        "_wake",
        "_writer",
        "jobs",
        "session_id",
    )

    def __init__(
        self,
        hub: Hub,
        session_id: str,
        jobs: frozenset[str] | None,
        soft_limit: int,
        hard_limit: int,
    ) -> None:
        self._hub = hub
        self.session_id = session_id
        self.jobs = jobs
        self._soft_limit = soft_limit
        self._hard_limit = hard_limit
        # None whenever nothing is queued: an empty deque holds a block of
        # 64 slots, most of what an idle subscriber would cost otherwise.
        self._queue: deque[_Frame] | None = None
        # The queued progress frame of each job, so a newer one can take its
        # place; entries leave when the frame is read.
        self._pending: dict[str, _Frame] = {}
        self._waiter: asyncio.Future[None] | None = None
        self._writer: Callable[[bytes], bool] | None = None
        self._wake: Callable[[], None] | None = None
        self._closed: str | None = None
        self._backlogged = False
        self._sent = 0
        self._coalesced = 0

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> str | None:
        """Why the subscription was closed, or ``None`` while it is open."""
        return self._closed

    async def get(self) -> bytes:
        """Wait for the next message and return its JSON bytes.

        Raises :class:`SubscriberEvicted` if the subscriber fell too far
        behind, and :class:`SubscriptionClosed` once it is closed otherwise.
        """
        while self._queue is None:
            if self._closed is not None:
                raise self._closed_error()

            self._check_no_consumer()
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

        return self._pop()

    def hand_off(
        self, write: Callable[[bytes], bool], wake: Callable[[], None]
    ) -> bool:
        """Let publish write each new message with ``write`` until it cannot.

        Returns ``False``, and changes nothing, if a message is queued or the
        subscription is closed: read on with :meth:`get_nowait`. Otherwise,
        from now on :meth:`Hub.publish` calls ``write(data)`` for each message
        instead of queueing it. ``write`` returns ``True`` once the message is
        on its way, or ``False`` if it holds the message unfinished; then, or
        when the subscription closes, the hand-off ends: ``wake()`` is called
        once, and what is published next is queued again, for the consumer to
        read after it has finished the message that ``write`` holds. Neither
        callable may raise, and neither may call back into the hub.
        """
        if self._queue is not None or self._closed is not None:
            return False

        self._check_no_consumer()
        self._writer = write
        self._wake = wake
        return True

    def get_nowait(self) -> bytes | None:
        """Return the next message if one is queued, else ``None``."""
        if self._queue is not None:
            return self._pop()

        if self._closed is not None:
            raise self._closed_error()

        return None

    def close(self) -> None:
        """Unregister from the hub and drop whatever is still queued."""
        if self._closed is None:
            self._hub._remove(self)
            self._close("closed")

    def statistics(self) -> SubscriptionStatistics:
        return SubscriptionStatistics(
            queued=0 if self._queue is None else len(self._queue),
            sent=self._sent,
            coalesced=self._coalesced,
            waiting=self._writer is not None
            or (self._waiter is not None and not self._waiter.done()),
        )

    def _check_no_consumer(self) -> None:
        if self._waiter is not None or self._writer is not None:
            raise RuntimeError(
                f"subscription to session {self.session_id} already has "
                "a consumer waiting"
            )

    def _closed_error(self) -> SubscriptionClosed:
        if self._closed == "lagging":
            return SubscriberEvicted(self.session_id, self._hard_limit)

        return SubscriptionClosed(self.session_id, self._closed or "closed")

    def _prime(self, first: _Frame, frames: Collection[_Frame]) -> None:
        # Replayed frames are queued as they are, without coalescing among
        # themselves, so a resume delivers exactly the events it announced.
        self._queue = deque((first, *frames))
        for frame in frames:
            if frame.progress:
                self._pending[frame.job_id] = frame

    def _push(self, frame: _Frame) -> None:
        # This runs once per subscriber per event: keep it to a dict lookup,
        # a deque append and, only for a consumer that is waiting, a wake-up.
        write = self._writer
        if write is not None:
            # Handed off, so nothing is queued and nothing the consumer sent
            # is unfinished: the message may skip the queue, and there is no
            # queued progress to coalesce it with.
            self._sent += 1
            if not write(frame.data):
                self._end_hand_off()
            return

        if frame.progress:
            queued = self._pending.get(frame.job_id)
            if queued is not None:
                self._coalesce(queued, frame)
                return

            self._pending[frame.job_id] = frame
        elif self._pending:
            # A later progress of this job must not jump ahead of this event
            # by taking the place of an earlier one.
            self._pending.pop(frame.job_id, None)

        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(frame)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

        if len(queue) >= self._soft_limit:
            self._overflow(len(queue))

    def _end_hand_off(self) -> None:
        wake = self._wake
        self._writer = self._wake = None
        if wake is not None:
            wake()

    def _coalesce(self, queued: _Frame, frame: _Frame) -> None:
        data = (
            _PROGRESS_HEAD
            + queued.cursor.encode()
            + frame.data[len(_PROGRESS_HEAD) + len(frame.cursor) :]
        )
        if queued.shared:
            # The first replacement swaps in a private copy; later ones for
            # the same slot rewrite that copy and skip the search. A pending
            # frame is always queued, so the queue is there.
            assert self._queue is not None
            private = _Frame(
                data,
                queued.seq,
                queued.cursor,
                queued.job_id,
                progress=True,
                shared=False,
            )
            self._queue[self._queue.index(queued)] = private
            self._pending[queued.job_id] = private
        else:
            queued.data = data

        self._coalesced += 1
        self._hub._coalesced += 1

    def _overflow(self, queued: int) -> None:
        if queued > self._hard_limit:
            self._hub._evict(self, queued)
            return

        if not self._backlogged:
            self._backlogged = True
            self._hub._backlogged += 1
            logger.debug(
                "subscriber of session %s has %d messages queued",
                self.session_id,
                queued,
            )

    def _pop(self) -> bytes:
        queue = self._queue
        assert queue is not None
        frame = queue.popleft()
        left = len(queue)
        if not left:
            self._queue = None

        self._sent += 1
        if frame.progress and self._pending.get(frame.job_id) is frame:
            del self._pending[frame.job_id]

        if self._backlogged and left < self._soft_limit:
            self._backlogged = False
            self._hub._backlogged -= 1

        return frame.data

    def _close(self, reason: str) -> None:
        if self._closed is not None:
            return

        self._closed = reason
        if self._backlogged:
            self._backlogged = False
            self._hub._backlogged -= 1

        self._queue = None
        self._pending.clear()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

        # A consumer that handed off learns of the close from its wake-up.
        self._end_hand_off()


class Hub:
    """Fans engine events out to the subscribers of each session.

    ``replay_size`` events are kept per session for clients that resume.
    ``queue_size`` is a soft bound per subscriber: past it the subscriber
    counts as backlogged. Past ``hard_limit`` queued messages it is evicted.
    ``max_sessions`` bounds the sessions that subscribers may open; publish
    is exempt, because the engine has already accepted the job whose
    lifecycle it reports.
    """

    def __init__(
        self,
        *,
        replay_size: int = 1000,
        queue_size: int = 256,
        hard_limit: int = 1024,
        max_subscribers_per_session: int = 128,
        max_sessions: int = 10_000,
        clock: Clock | None = None,
    ) -> None:
        if replay_size < 0:
            raise ValueError(f"replay_size must be >= 0, not {replay_size}")

        if not 1 <= queue_size <= hard_limit:
            raise ValueError(
                f"need 1 <= queue_size <= hard_limit, not {queue_size} and {hard_limit}"
            )

        if max_subscribers_per_session < 1 or max_sessions < 1:
            raise ValueError(
                "max_subscribers_per_session and max_sessions must be >= 1"
            )

        self._replay_size = replay_size
        self._queue_size = queue_size
        self._hard_limit = hard_limit
        self._max_subscribers = max_subscribers_per_session
        self._max_sessions = max_sessions
        self._monotonic = (clock or SystemClock()).monotonic
        self._epoch = secrets.token_hex(8)
        self._sessions: dict[str, _Session] = {}
        self._closed: str | None = None
        self._connections = 0
        self._backlogged = 0
        self._published = 0
        self._fanned_out = 0
        self._replayed = 0
        self._coalesced = 0
        self._evicted = 0

    @property
    def epoch(self) -> str:
        """The random token that opens every cursor of this hub."""
        return self._epoch

    def publish(self, event: HubEvent) -> None:
        """Stamp, encode, record and fan out one event; never blocks."""
        session = self._sessions.get(event.session_id)
        if session is None:
            session = self._open(event.session_id)

        # Encode before taking the number, so an event that cannot be
        # encoded leaves no gap in the session's sequence.
        seq = session.seq + 1
        cursor = f"{session.epoch}-{seq}"
        # "type" and "cursor" lead, so coalescing can splice the cursor; the
        # event's own "type" takes the first slot's place, not a new one.
        message = {"type": event.type, "cursor": cursor, **event.to_dict()}
        frame = _Frame(
            _encode(message).encode(),
            seq,
            cursor,
            event.job_id,
            progress=event.type == COALESCABLE,
        )
        session.seq = seq
        session.replay.append(frame)
        session.last_active = self._monotonic()
        self._published += 1

        everyone = session.everyone
        for subscriber in everyone:
            subscriber._push(frame)

        fanned_out = len(everyone)
        watchers = session.by_job.get(event.job_id)
        if watchers is not None:
            for subscriber in watchers:
                subscriber._push(frame)

            fanned_out += len(watchers)

        self._fanned_out += fanned_out

    def subscribe(
        self,
        session_id: str,
        *,
        cursor: str | None = None,
        jobs: Collection[str] | None = None,
        snapshot: Callable[[], list[dict[str, Any]]],
    ) -> Subscription:
        """Register a subscriber and queue where its stream starts.

        ``snapshot`` returns the session's jobs as dicts keyed like events'
        ``job``; it is called only when the subscriber cannot resume. ``jobs``
        limits the subscriber, its replay and its snapshot to those job ids.
        Nothing awaits in here, so no event can slip in between the snapshot
        or replay and the registration.
        """
        if self._closed is not None:
            raise HubClosed(self._closed)

        session = self._sessions.get(session_id)
        if session is None:
            if len(self._sessions) >= self._max_sessions:
                raise HubLimitExceeded("max_sessions", self._max_sessions)
        elif len(session.members) >= self._max_subscribers:
            raise HubLimitExceeded("max_subscribers_per_session", self._max_subscribers)

        wanted = None if jobs is None else frozenset(jobs)
        latest = self._published if session is None else session.seq
        replay: deque[_Frame] = deque() if session is None else session.replay
        epoch = self._session_epoch() if session is None else session.epoch
        missed: list[_Frame] | None = None
        if cursor is not None:
            missed, reason = self._missed(epoch, latest, replay, cursor)
            if missed is None:
                logger.debug("session %s resets a subscriber: %s", session_id, reason)

        if missed is not None:
            if wanted is not None:
                missed = [frame for frame in missed if frame.job_id in wanted]

            first = self._control(
                {"type": "resumed", "cursor": cursor, "replayed": len(missed)}
            )
        else:
            # snapshot() runs before the session exists, so if it raises
            # the hub is left as it was.
            jobs_now = snapshot()
            if wanted is not None:
                jobs_now = [job for job in jobs_now if job.get("job_id") in wanted]

            first = self._control(
                {
                    "type": "snapshot",
                    "cursor": f"{epoch}-{latest}",
                    "reset": cursor is not None,
                    "jobs": jobs_now,
                }
            )

        if session is None:
            session = self._open(session_id, epoch)

        subscriber = Subscription(
            self, session_id, wanted, self._queue_size, self._hard_limit
        )
        subscriber._prime(first, missed or ())
        self._replayed += len(missed or ())
        session.members.add(subscriber)
        session.rebuild()
        self._connections += 1
        return subscriber

    def idle_sessions(self, idle_for: float) -> list[str]:
        """Sessions without subscribers and without events for ``idle_for`` s."""
        cutoff = self._monotonic() - idle_for
        return [
            session_id
            for session_id, session in self._sessions.items()
            if not session.members and session.last_active <= cutoff
        ]

    def discard_session(self, session_id: str, *, idle_for: float = 0.0) -> bool:
        """Drop a session's replay buffer if it has no subscribers and is idle.

        Returns whether the session was dropped. Clients that later resume
        from one of its cursors get a reset snapshot.
        """
        session = self._sessions.get(session_id)
        if session is None or session.members:
            return False

        if session.last_active > self._monotonic() - idle_for:
            return False

        del self._sessions[session_id]
        return True

    def close(self, reason: str = "shutdown") -> None:
        """Close every subscriber with ``reason`` and refuse new ones."""
        if self._closed is not None:
            return

        self._closed = reason
        closed = 0
        for session in self._sessions.values():
            for subscriber in session.members:
                subscriber._close(reason)
                closed += 1

            session.members.clear()
            session.rebuild()
            session.last_active = self._monotonic()

        self._connections = 0
        logger.info("hub closed (%s), %d subscribers dropped", reason, closed)

    def statistics(self) -> HubStatistics:
        return HubStatistics(
            sessions=len(self._sessions),
            connections=self._connections,
            backlogged=self._backlogged,
            published=self._published,
            delivered=self._fanned_out + self._replayed - self._coalesced,
            coalesced=self._coalesced,
            evicted=self._evicted,
        )

    def cursor_prefix(self, session_id: str) -> str:
        """The epoch part of a session's cursors; KeyError for an unknown session."""
        return self._sessions[session_id].epoch

    def _session_epoch(self) -> str:
        return self._epoch + secrets.token_hex(4)

    def _open(self, session_id: str, epoch: str | None = None) -> _Session:
        session = _Session(
            epoch or self._session_epoch(),
            self._published,
            self._replay_size,
            self._monotonic(),
        )
        self._sessions[session_id] = session
        return session

    def _missed(
        self, epoch: str, latest: int, replay: deque[_Frame], text: str
    ) -> tuple[list[_Frame] | None, str]:
        try:
            cursor = parse_cursor(text)
        except InvalidCursor:
            return None, "malformed cursor"

        if cursor.epoch != epoch:
            return None, "foreign epoch"

        if cursor.seq > latest:
            return None, "cursor ahead of the session"

        # Sequence numbers of a session are contiguous, so the missed events
        # are the last ``count`` frames, provided the buffer still holds them.
        count = latest - cursor.seq
        if count > len(replay):
            return None, "cursor older than the replay buffer"

        frames: Iterator[_Frame] = itertools.islice(replay, len(replay) - count, None)
        return list(frames), "resumed"

    def _control(self, message: dict[str, Any]) -> _Frame:
        return _Frame(_encode(message).encode(), -1, "", "")

    def _remove(self, subscriber: Subscription) -> None:
        session = self._sessions.get(subscriber.session_id)
        if session is None or subscriber not in session.members:
            return

        session.members.discard(subscriber)
        session.rebuild()
        session.last_active = self._monotonic()
        self._connections -= 1

    def _evict(self, subscriber: Subscription, queued: int) -> None:
        # The queue is freed at once; a client that reconnects with its last
        # cursor is served from the replay buffer instead.
        self._remove(subscriber)
        subscriber._close("lagging")
        self._evicted += 1
        logger.warning(
            "evicted lagging subscriber of session %s: %d messages queued, limit %d",
            subscriber.session_id,
            queued,
            self._hard_limit,
        )
