"""A Python client of a streamer server: the HTTP API and a session's live events.

:class:`StreamerClient` wraps the endpoints of ``docs/protocol.md``; every
error answer is raised as a :class:`ClientError` carrying the server's
status, code and message. :meth:`StreamerClient.events` follows a session
over the WebSocket and keeps following it across drops: it reconnects with
backoff and jitter, resumes from the last cursor it saw, never yields an
event twice, and stops for good only on a refusal, which it raises.

What to make of each message (skip it, apply it to the jobs it knows) is
decided by :class:`StreamState`, which does no I/O, so the resume rules are
testable without a network; :class:`EventStream` only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import mimetypes
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .errors import InvalidCursor, StreamerError
from .gate import Backoff
from .hub import Cursor, parse_cursor
from .job import JobStatus

__all__ = [
    "FINAL_STATUSES",
    "RECONNECT_BACKOFF",
    "ClientError",
    "ConnectionState",
    "ConnectionStatus",
    "EventStream",
    "StreamState",
    "StreamerClient",
]

logger = logging.getLogger("streamer.client")

#: Delays between reconnection attempts: 0.5 s doubling up to 30 s, up to half
#: of each taken off at random so clients dropped together do not return
#: together.
RECONNECT_BACKOFF = Backoff(initial=0.5, factor=2.0, cap=30.0, jitter=0.5)

#: Close codes that say the client itself is at fault: reconnecting would
#: only be closed again.
_FATAL_CLOSE = {
    1003: "the server does not accept binary frames",
    1008: "the client sent too many messages",
    1009: "the client sent a message that is too big",
}

#: The close code that asks for an immediate reconnection: the client was
#: dropped for lagging, and its events wait in the replay buffer.
_LAGGING = 1013

#: Final job statuses, after which a job sends nothing but ``job.removed``.
FINAL_STATUSES = frozenset(status.value for status in JobStatus if status.is_final)

_HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
_OPEN_TIMEOUT = 10.0

# A snapshot lists every job of a session in one frame; the server is
# trusted, so the bound only guards against a broken one.
_MAX_MESSAGE = 64 << 20


class ClientError(StreamerError):
    """The server refused a request, or could not be reached.

    ``status`` is the HTTP status (None when there was no answer), ``code``
    the server's stable ``error.code`` and ``message`` its explanation. A
    WebSocket closed for a fault of the client carries ``close_code``.
    """

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        *,
        close_code: int | None = None,
    ) -> None:
        super().__init__(
            f"{code}: {message}" if status is None else f"{status} {code}: {message}"
        )
        self.status = status
        self.code = code
        self.message = message
        self.close_code = close_code


def error_of(status: int, body: bytes | bytearray, reason: str = "") -> ClientError:
    """The :class:`ClientError` for an error answer of the server."""
    try:
        error = json.loads(body)["error"]
        return ClientError(status, str(error["code"]), str(error["message"]))
    except (ValueError, TypeError, KeyError):
        # Not the API's error body: a proxy in front, or another server.
        return ClientError(status, "http_error", reason or f"HTTP {status}")


# -- the state of a stream, without I/O ------------------------------------------


class StreamState:
    """What a client has learnt from a session's stream, message by message.

    :meth:`accept` says whether a message is news to the caller, and applies
    it to ``jobs``: a snapshot replaces them all, ``job.removed`` deletes
    one, any other event replaces its job, unless the client already holds
    a later state of it. ``cursor`` is where a reconnection resumes.
    """

    def __init__(self, cursor: str | None = None) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.cursor = cursor
        self._position = _position(cursor)
        self._stamps: dict[str, datetime] = {}

    def accept(self, message: Mapping[str, Any]) -> bool:
        """Apply ``message``; False when it is one the caller already has."""
        kind = message.get("type")
        cursor = message.get("cursor")
        if kind == "snapshot":
            # The same dict object stays, so a caller may keep a reference.
            self.jobs.clear()
            self.jobs.update(
                (job["job_id"], job)
                for job in message.get("jobs", ())
                if isinstance(job, dict) and isinstance(job.get("job_id"), str)
            )
            self._stamps.clear()
            self._move_to(cursor)
            return True
        if not isinstance(cursor, str) or "job_id" not in message:
            # Not an event: "resumed" repeats the cursor the client sent.
            return True

        # Cursors grow within an epoch, so an event at or before the last
        # one seen was delivered already (a replay overlapping the stream);
        # a new epoch always opens with a snapshot, never with an event.
        now, last = _position(cursor), self._position
        if now and last and (now.epoch != last.epoch or now.seq <= last.seq):
            return False
        self._move_to(cursor)
        return self._apply(message)

    def _move_to(self, cursor: object) -> None:
        if isinstance(cursor, str):
            self.cursor = cursor
            self._position = _position(cursor)

    def _apply(self, message: Mapping[str, Any]) -> bool:
        job_id = message.get("job_id")
        job = message.get("job")
        if not isinstance(job_id, str) or not isinstance(job, dict):
            return True
        if message.get("type") == "job.removed":
            self.jobs.pop(job_id, None)
            self._stamps.pop(job_id, None)
            return True

        # A coalesced progress can be newer than the lifecycle events queued
        # behind it, and after a resume the same progress can come again
        # under its own cursor: neither may move the job backwards.
        stamp = _stamp(message.get("ts"))
        held = self._stamps.get(job_id)
        if stamp is not None and held is not None and stamp <= held:
            if message.get("type") == "job.progress" and (
                stamp < held or self.jobs.get(job_id) == job
            ):
                return False
            if stamp < held:
                return True
        self.jobs[job_id] = job
        if stamp is not None:
            self._stamps[job_id] = stamp
        return True


def _position(cursor: object) -> Cursor | None:
    if not isinstance(cursor, str):
        return None
    try:
        return parse_cursor(cursor)
    except InvalidCursor:
        return None


def _stamp(ts: object) -> datetime | None:
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts)
    except ValueError:
        return None


# -- the connection ---------------------------------------------------------------


class ConnectionStatus(str, enum.Enum):
    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """Where an :class:`EventStream`'s connection stands."""

    status: ConnectionStatus
    #: Failed attempts since the stream was last live.
    attempt: int = 0
    #: Seconds until the next attempt, while reconnecting.
    retry_in: float | None = None
    #: Why the last connection ended: a close code, or an HTTP status.
    reason: str | None = None

    def __str__(self) -> str:
        if self.status is ConnectionStatus.RECONNECTING and self.retry_in:
            return f"reconnecting in {self.retry_in:.1f} s"
        return self.status.value


Sleep = Callable[[float], Awaitable[None]]
StateCallback = Callable[[ConnectionState], None]


class EventStream:
    """An async iterator over a session's messages, across reconnections.

    It yields the server's messages as decoded JSON: the first ``snapshot``
    (and any later reset snapshot, after which the caller replaces what it
    knows), ``resumed``, and every event once. ``state`` holds the session's
    jobs by id, ``cursor`` the last position and ``connection`` how the
    connection stands; ``on_connection`` hears of each change of the latter.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        cursor: str | None = None,
        jobs: Iterable[str] | None = None,
        on_connection: StateCallback | None = None,
        backoff: Backoff = RECONNECT_BACKOFF,
        rng: random.Random | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        self._url = url
        self._token = token
        self._jobs = ",".join(jobs) if jobs is not None else None
        self._tracker = StreamState(cursor)
        self._on_connection = on_connection
        self._backoff = backoff
        self._rng = rng if rng is not None else random.Random()
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self.connection = ConnectionState(ConnectionStatus.CONNECTING)
        self._ended: tuple[int, str] = (1006, "not connected")
        self._messages = self._run()

    @property
    def state(self) -> dict[str, dict[str, Any]]:
        return self._tracker.jobs

    @property
    def cursor(self) -> str | None:
        return self._tracker.cursor

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self._messages.__anext__()

    async def aclose(self) -> None:
        """Close the connection; the iterator then ends."""
        await self._messages.aclose()

        # A stream closed before it was first read never ran to say so.
        if self.connection.status is not ConnectionStatus.CLOSED:
            self._report(ConnectionState(ConnectionStatus.CLOSED))

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _report(self, state: ConnectionState) -> None:
        self.connection = state
        if self._on_connection is not None:
            self._on_connection(state)

    def _address(self) -> str:
        query = {"cursor": self._tracker.cursor, "jobs": self._jobs}
        given = {name: value for name, value in query.items() if value is not None}
        return self._url + ("?" + urlencode(given) if given else "")

    async def _run(self) -> AsyncGenerator[dict[str, Any]]:
        attempt = 0
        try:
            while True:
                self._report(ConnectionState(ConnectionStatus.CONNECTING, attempt))
                async with contextlib.aclosing(self._connection()) as messages:
                    async for message in messages:
                        attempt = 0
                        yield message
                code, reason = self._ended

                # A lagging client reconnects at once: its events are kept
                # for it, and waiting would only let more of them pile up.
                delay = 0.0
                if not (code == _LAGGING and attempt == 0):
                    delay = self._backoff.delay(attempt, self._rng)
                attempt += 1
                logger.info(
                    "stream %s ended (%s); reconnecting in %.1f s",
                    self._url,
                    reason,
                    delay,
                )
                self._report(
                    ConnectionState(
                        ConnectionStatus.RECONNECTING, attempt, delay, reason
                    )
                )
                if delay > 0:
                    await self._sleep(delay)
        finally:
            self._report(ConnectionState(ConnectionStatus.CLOSED, attempt))

    async def _connection(self) -> AsyncGenerator[dict[str, Any]]:
        """One connection's new messages; ``_ended`` then says how it ended.

        A refusal, and a close for a fault of the client, raise instead.
        """
        try:
            async with self._connect() as websocket:
                try:
                    async for raw in websocket:
                        message = _decode(raw)
                        if message is None:
                            continue
                        if self.connection.status is not ConnectionStatus.LIVE:
                            self._report(ConnectionState(ConnectionStatus.LIVE))
                        if self._tracker.accept(message):
                            yield message
                except ConnectionClosed:
                    pass
        except InvalidStatus as exc:
            response = exc.response
            error = error_of(response.status_code, response.body)
            if _is_refusal(response.status_code):
                raise error from None
            self._ended = (0, f"HTTP {response.status_code} {error.code}")
            return
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            self._ended = (1006, type(exc).__name__)
            return

        # Leaving the block waited for the closing handshake, so the code is
        # known now: the peer's, or 1006 for a connection lost without one.
        code = websocket.close_code or 1006
        if code in _FATAL_CLOSE:
            raise ClientError(
                None,
                "connection_closed",
                f"closed with {code}: {_FATAL_CLOSE[code]}",
                close_code=code,
            )
        self._ended = (code, str(code))

    def _connect(self) -> connect:
        # The token goes in a header, which no access log records.
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        return connect(
            self._address(),
            additional_headers=headers,
            proxy=None,
            open_timeout=_OPEN_TIMEOUT,
            max_size=_MAX_MESSAGE,
        )


def _is_refusal(status: int) -> bool:
    # A 4xx is the client's fault and will not change by itself, except a
    # timeout and too many subscribers, which are the server's load.
    return 400 <= status < 500 and status not in {408, 429}


def _decode(raw: str | bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(raw)
    except ValueError:
        logger.warning("ignored a frame that is not JSON")
        return None
    if not isinstance(message, dict):
        logger.warning("ignored a frame that is not a JSON object")
        return None
    return message


# -- the HTTP API -----------------------------------------------------------------


class StreamerClient:
    """A client of one server and, once it has one, one session of it.

    ``base_url`` is the server's root (``http://127.0.0.1:8000``). A session
    comes from :meth:`create_session`, or from ``session_id`` and ``token``
    given here. ``http`` may be a client of the caller's, which is then left
    open; otherwise one is made and :meth:`aclose` closes it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        session_id: str | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.session_id = session_id
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=_HTTP_TIMEOUT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        token: str | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> StreamerClient:
        """A client for a viewer URL or a session URL.

        ``http://host/#session=<id>&token=<token>`` is what ``streamer serve``
        prints; ``http://host/api/sessions/<id>`` needs ``token`` besides.
        Any other URL is taken as the server's root, without a session.
        """
        parts = urlsplit(url)
        fragment = parse_qs(parts.fragment)
        session_id = fragment.get("session", [None])[0]
        token = fragment.get("token", [token])[0]
        root = parts.path
        marker = "/api/sessions/"
        if marker in parts.path:
            root, _, rest = parts.path.partition(marker)
            session_id = rest.split("/", 1)[0] or session_id
        base = urlunsplit((parts.scheme, parts.netloc, root, "", ""))
        return cls(base, token=token, session_id=session_id, http=http)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> StreamerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- sessions and documents

    async def create_session(self) -> dict[str, Any]:
        """A new session, which this client then uses."""
        response = await self._request("POST", "/api/sessions", expect=201)
        body: dict[str, Any] = response.json()
        self.session_id = body["session_id"]
        self.token = body["token"]
        return body

    async def upload(self, paths: Iterable[Path | str]) -> list[dict[str, Any]]:
        """Upload files as documents of the session, in one request.

        Each file is streamed from disk, not read into memory. The answer
        lists one document per file, in order: ``document_id``, ``filename``,
        ``size_bytes`` and ``pages``.
        """
        with contextlib.ExitStack() as files:
            fields = []
            for path in map(Path, paths):
                kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                stream = files.enter_context(path.open("rb"))
                fields.append(("file", (path.name, stream, kind)))
            if not fields:
                raise ValueError("upload needs at least one file")
            response = await self._request(
                "POST", self._session("/documents"), expect=201, files=fields
            )
        documents: list[dict[str, Any]] = response.json()["documents"]
        return documents

    # -- jobs

    async def create_job(self, document_ids: Iterable[str]) -> dict[str, Any]:
        """Start a job over the session's documents; the job, with documents."""
        response = await self._request(
            "POST",
            self._session("/jobs"),
            expect=201,
            json={"document_ids": list(document_ids)},
        )
        job: dict[str, Any] = response.json()
        return job

    async def get_job(self, job_id: str) -> dict[str, Any]:
        response = await self._request("GET", self._job(job_id), expect=200)
        job: dict[str, Any] = response.json()
        return job

    async def list_jobs(self) -> list[dict[str, Any]]:
        response = await self._request("GET", self._session("/jobs"), expect=200)
        jobs: list[dict[str, Any]] = response.json()["jobs"]
        return jobs

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a job; the answer comes once it has ended."""
        response = await self._request(
            "POST", self._job(job_id) + "/cancel", expect=200
        )
        job: dict[str, Any] = response.json()
        return job

    async def delete_job(self, job_id: str) -> None:
        await self._request("DELETE", self._job(job_id), expect=204)

    async def download_result(
        self, job_id: str, document_id: str, dest: Path | str
    ) -> Path:
        """Write a converted document's text to ``dest``, streamed; ``dest``.

        The text lands in a temporary file beside ``dest`` that replaces it
        only once complete, so a failed download leaves no partial result.
        """
        dest = Path(dest)
        path = self._job(job_id) + f"/documents/{quote(document_id, safe='')}/result"
        partial = dest.with_name(f".{dest.name}.part")
        try:
            async with self._http.stream(
                "GET", self.base_url + path, headers=self._headers()
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise error_of(
                        response.status_code, response.content, response.reason_phrase
                    )
                with partial.open("wb") as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)
            partial.replace(dest)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        finally:
            partial.unlink(missing_ok=True)
        return dest

    # -- events

    def events(
        self,
        session_id: str | None = None,
        *,
        cursor: str | None = None,
        jobs: Iterable[str] | None = None,
        on_connection: StateCallback | None = None,
        backoff: Backoff = RECONNECT_BACKOFF,
        rng: random.Random | None = None,
        sleep: Sleep | None = None,
    ) -> EventStream:
        """Follow a session's events over the WebSocket, across reconnections.

        ``cursor`` resumes after a message already handled, ``jobs`` limits
        the stream to those jobs. ``backoff``, ``rng`` and ``sleep`` set the
        pace of reconnections (tests pass their own). A refusal at the
        handshake (a bad token, an unknown session) raises
        :class:`ClientError` from the iterator and ends it.
        """
        sid = session_id or self._session_id()
        parts = urlsplit(self.base_url)
        scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
        url = urlunsplit(
            (scheme, parts.netloc, f"{parts.path}/api/sessions/{sid}/ws", "", "")
        )
        return EventStream(
            url,
            self.token,
            cursor=cursor,
            jobs=jobs,
            on_connection=on_connection,
            backoff=backoff,
            rng=rng,
            sleep=sleep,
        )

    # -- plumbing

    def _session_id(self) -> str:
        if self.session_id is None:
            raise ClientError(
                None, "no_session", "no session: create one or give its id"
            )
        return self.session_id

    def _session(self, suffix: str) -> str:
        return f"/api/sessions/{self._session_id()}{suffix}"

    def _job(self, job_id: str) -> str:
        return self._session(f"/jobs/{quote(job_id, safe='')}")

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _unreachable(self, exc: httpx.TransportError) -> ClientError:
        # Some transport errors have no message, only their type.
        why = str(exc) or type(exc).__name__
        return ClientError(None, "unreachable", f"cannot reach {self.base_url}: {why}")

    async def _request(
        self, method: str, path: str, *, expect: int, **options: Any
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                method, self.base_url + path, headers=self._headers(), **options
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code != expect:
            raise error_of(
                response.status_code, response.content, response.reason_phrase
            )
        return response
