"""The job manager: runs conversion jobs in the background and reports on them.

A job is a list of documents converted one after another. Before each
document the manager asks the memory gate for the document's memory; jobs run
side by side, bounded by the gate's memory and its concurrency limit. Every
change of a job is an event, delivered synchronously to subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .clock import Clock, SystemClock
from .errors import (
    DocumentTimeout,
    InvalidTransition,
    JobNotFound,
    MemoryRequestTooLarge,
    MemoryWaitTimeout,
    ShuttingDown,
)
from .eta import ConverterHistory, EtaEstimator
from .events import (
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
    JobResumed,
    JobStarted,
    JobSuspended,
)
from .gate import Backoff, MemoryGate, MemoryWait, Reservation
from .job import (
    MIN_MEMORY_GB,
    ConversionJob,
    DocumentOutcome,
    DocumentStatus,
    JobStatus,
    MemoryStatus,
    format_gb,
)
from .memory import GIB, MemoryProbe, SystemMemoryProbe
from .progress import ProgressReporter, StopFlag

__all__ = [
    "DEFAULT_MAX_CONCURRENT",
    "MAX_MEMORY_WAIT_TIME",
    "MEMORY_CHECK_INTERVAL",
    "Converter",
    "DocumentMemory",
    "JobManager",
    "Subscription",
    "converter_name",
]

logger = logging.getLogger("streamer.jobs")

ProgressCallback: TypeAlias = Callable[[float], None]
_Result: TypeAlias = Mapping[str, Any] | None
Converter: TypeAlias = Callable[[str, ProgressCallback], Awaitable[_Result] | _Result]
EventCallback: TypeAlias = Callable[[JobEvent], None]
# Bytes one document of a job needs, or None for the job's own figure.
DocumentMemory: TypeAlias = Callable[[ConversionJob, str], int | None]

# The original's figures: the cap of the backoff between memory checks and
# the longest a document may wait for memory.
MEMORY_CHECK_INTERVAL = 30
MAX_MEMORY_WAIT_TIME = 600
DEFAULT_MAX_CONCURRENT = 4

# How many failures a partly failed job names in its error.
_ERRORS_NAMED = 3

# Outcomes that a resumed job keeps rather than converting again.
_ENDED = frozenset({DocumentStatus.CONVERTED, DocumentStatus.FAILED})


def converter_name(converter: Callable[..., Any]) -> str:
    """The name under which a converter's timing history is kept."""
    target = getattr(converter, "func", converter)  # functools.partial
    module = getattr(target, "__module__", None) or "?"
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{name}"


def _is_async(converter: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(converter):
        return True
    call = getattr(converter, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(call)


class Subscription:
    """A subscriber's registration; :meth:`close` ends it."""

    __slots__ = ("_manager", "callback", "job_id", "session_id")

    def __init__(
        self,
        manager: JobManager,
        callback: EventCallback,
        session_id: str | None,
        job_id: str | None,
    ) -> None:
        self._manager = manager
        self.callback = callback
        self.session_id = session_id
        self.job_id = job_id

    def wants(self, event: JobEvent) -> bool:
        return (self.session_id is None or self.session_id == event.session_id) and (
            self.job_id is None or self.job_id == event.job_id
        )

    def close(self) -> None:
        self._manager._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(slots=True)
class _Run:
    """What one started job needs while it runs."""

    converter: Converter
    name: str
    is_async: bool
    reporter: ProgressReporter
    cancelled: bool = False
    # Set when a shutdown stops the job, which then is not cancelled but
    # left unfinished, to be resumed.
    suspended: bool = False
    converting: bool = False
    # The current document's flag, so cancelling reaches its converter.
    stop: StopFlag = field(default_factory=StopFlag)

    def cancel(self) -> None:
        self.cancelled = True
        self.stop.stopped = True


class JobManager:
    """Manages background conversion jobs.

    ``JobManager()`` behaves as the original did, 10 GB per document and the
    real clock and memory; every figure can be set, and the clock and the
    memory probe injected, so tests of long waits take no time.
    """

    def __init__(
        self,
        *,
        converter: Converter | None = None,
        memory_required_gb: float = MIN_MEMORY_GB,
        max_concurrent: int | None = DEFAULT_MAX_CONCURRENT,
        document_timeout: float | None = None,
        memory_wait_timeout: float = MAX_MEMORY_WAIT_TIME,
        backoff: Backoff | None = None,
        progress_rate: float = 10.0,
        cancel_grace: float = 5.0,
        clock: Clock | None = None,
        memory_probe: MemoryProbe | None = None,
        history: ConverterHistory | None = None,
        document_memory: DocumentMemory | None = None,
    ) -> None:
        if memory_required_gb < 0:
            raise ValueError(
                f"memory_required_gb must be >= 0, not {memory_required_gb}"
            )
        if document_timeout is not None and document_timeout <= 0:
            raise ValueError(f"document_timeout must be > 0, not {document_timeout}")
        self._jobs: dict[str, ConversionJob] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._runs: dict[str, _Run] = {}
        self._subscribers: list[Subscription] = []
        self._suspending: str | None = None
        self._converter = converter
        self.memory_required_gb = memory_required_gb
        self.document_timeout = document_timeout
        self.progress_rate = progress_rate
        self.cancel_grace = cancel_grace
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.history = history if history is not None else ConverterHistory()
        self.document_memory = document_memory
        self.gate = MemoryGate(
            memory_probe if memory_probe is not None else SystemMemoryProbe(),
            clock=self.clock,
            backoff=backoff or Backoff(cap=MEMORY_CHECK_INTERVAL),
            max_wait=memory_wait_timeout,
            max_concurrent=max_concurrent,
        )

    # -- jobs -----------------------------------------------------------------

    def create_job(
        self,
        session_id: str,
        document_ids: list[str],
        *,
        memory_required_gb: float | None = None,
    ) -> str:
        """Create a new conversion job and return its id."""
        document_ids = list(document_ids)
        if not document_ids:
            raise ValueError("a job needs at least one document")
        job_id = f"job-{uuid.uuid4().hex[:12]}"
        job = ConversionJob(
            job_id=job_id,
            session_id=session_id,
            document_ids=document_ids,
            files_total=len(document_ids),
            memory_required_gb=(
                self.memory_required_gb
                if memory_required_gb is None
                else memory_required_gb
            ),
            created_at=self.clock.now(),
        )
        self._jobs[job_id] = job
        logger.info("created job %s for %d documents", job_id, len(document_ids))
        self._publish(JobCreated, job)
        return job_id

    def get_job(self, job_id: str) -> ConversionJob | None:
        """Get job by ID."""
        return self._jobs.get(job_id)

    def list_jobs(self, session_id: str | None = None) -> list[ConversionJob]:
        """List all jobs, optionally filtered by session."""
        jobs = list(self._jobs.values())
        if session_id:
            jobs = [j for j in jobs if j.session_id == session_id]
        return jobs

    async def start_job(
        self,
        job_id: str,
        converter: Converter | None = None,
        *,
        converter_name: str | None = None,
    ) -> None:
        """Start processing a job in the background.

        ``converter(document_id, progress_callback)`` returns the document's
        result, a dict; it may be a coroutine function, or a plain function,
        which then runs in a thread of its own so it cannot block the loop.
        """
        job = self._require(job_id)
        self._launch(job, converter, converter_name)
        logger.info("started job %s", job_id)
        self._publish(JobStarted, job)

    async def resume_job(
        self,
        job_id: str,
        converter: Converter | None = None,
        *,
        reason: str,
        converter_name: str | None = None,
    ) -> None:
        """Take up a job restored from a store where it stopped.

        Documents that ended before are kept as they are; the others are
        converted, the one that was cut short from its start. ``reason``
        says why the job had stopped, for the ``job.resumed`` event.
        """
        job = self._require(job_id)
        done = job.files_completed
        self._launch(job, converter, converter_name)
        job.interrupted = None
        logger.info(
            "resumed job %s at document %d of %d (%s)",
            job_id,
            done + 1,
            job.files_total,
            reason,
        )
        self._publish(JobResumed, job, reason=reason, documents_done=done)

    def restore(self, job: ConversionJob) -> None:
        """Take over a job read back from a store, without an event.

        A finished job is kept to be listed; one that had not finished comes
        pending (see :meth:`ConversionJob.from_record`), for :meth:`resume_job`.
        """
        if job.job_id in self._jobs:
            raise ValueError(f"job {job.job_id} already exists")
        self._jobs[job.job_id] = job

    def _launch(
        self, job: ConversionJob, converter: Converter | None, name: str | None
    ) -> None:
        job_id = job.job_id
        if self._suspending is not None:
            raise ShuttingDown(f"job {job_id} not started: the manager is stopping")
        converter = converter if converter is not None else self._converter
        if converter is None:
            raise ValueError(f"no converter given for job {job_id}")
        if job.status != JobStatus.PENDING:
            raise InvalidTransition(job_id, job.status.value, JobStatus.RUNNING.value)
        name = name or _name_of(converter)
        reporter = ProgressReporter(
            job,
            self.clock,
            lambda: self._publish(JobProgress, job),
            rate=self.progress_rate,
        )
        run = _Run(converter, name, _is_async(converter), reporter)
        job._eta = EtaEstimator(
            self.clock.monotonic,
            job.files_total,
            self.history.seconds_per_document(name),
            already_done=job.files_completed,
        )
        job.transition(JobStatus.RUNNING)
        if job.started_at is None:
            job.started_at = self.clock.now()
        self._runs[job_id] = run
        task = asyncio.create_task(self._run_job(job, run), name=f"streamer-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(functools.partial(self._job_task_done, job))

    async def cancel_job(self, job_id: str) -> bool:
        """Cancel a job that has not finished; False if it already has.

        The job is cancelled once its converter has had the chance to clean
        up, at most ``cancel_grace`` seconds later.
        """
        job = self._jobs.get(job_id)
        if job is None or job.status.is_final:
            return False
        run = self._runs.get(job_id)
        if run is not None:
            run.cancel()
        task = self._tasks.get(job_id)
        if task is None:
            # Never started: nothing runs, so the job ends here and now.
            self._finish(job, JobStatus.CANCELLED, "Job was cancelled")
            return True
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=self.cancel_grace)
        if not done:
            logger.warning(
                "job %s: converter still cleaning up after %.1f s",
                job_id,
                self.cancel_grace,
            )
        return True

    def remove_job(self, job_id: str) -> ConversionJob:
        """Forget a finished job; raises if it is still active."""
        job = self._require(job_id)
        if not job.status.is_final:
            raise InvalidTransition(job_id, job.status.value, "removed")
        self._forget(job)
        return job

    def cleanup_completed(self, max_age_seconds: int = 3600) -> int:
        """Remove finished jobs that ended more than ``max_age_seconds`` ago."""
        old = self.remove_finished(max_age_seconds)
        if old:
            logger.info("removed %d finished jobs", len(old))
        return len(old)

    def remove_finished(self, max_age_seconds: float) -> list[ConversionJob]:
        """Remove jobs that ended more than ``max_age_seconds`` ago; returns them."""
        now = self.clock.now()
        old = [
            job
            for job in self._jobs.values()
            if job.status.is_final
            and job.completed_at is not None
            and (now - job.completed_at).total_seconds() > max_age_seconds
        ]
        for job in old:
            self._forget(job)
        return old

    async def wait_job(self, job_id: str) -> ConversionJob:
        """Wait until a job is finished and return it."""
        job = self._require(job_id)
        task = self._tasks.get(job_id)
        if task is not None and not task.done():
            await asyncio.wait({task})
        return job

    async def suspend(
        self, grace: float, reason: str = "the server was shut down"
    ) -> int:
        """Stop for a shutdown, leaving unfinished jobs to be resumed later.

        No document starts from now on, and jobs waiting for memory stop at
        once; documents already converting get ``grace`` seconds to finish,
        then are stopped as a cancel would stop them. No job ends: each stops
        where it is, its interrupted document pending again, with a
        ``job.suspended`` event. Returns how many jobs were stopped.
        """
        if self._suspending is None:
            self._suspending = reason
        active = {
            job_id: task for job_id, task in self._tasks.items() if not task.done()
        }
        for job_id, task in active.items():
            run = self._runs.get(job_id)
            if run is not None and not run.converting:
                run.suspended = True
                run.cancel()
                task.cancel()
        running = [task for task in active.values() if not task.done()]
        if running:
            await asyncio.wait(running, timeout=grace)
        late = {job_id: task for job_id, task in active.items() if not task.done()}
        for job_id, task in late.items():
            run = self._runs.get(job_id)
            if run is not None:
                run.suspended = True
                run.cancel()
            task.cancel()
        if late:
            logger.warning(
                "stopped %d documents still converting after %.1f s",
                len(late),
                grace,
            )
            await asyncio.wait(late.values(), timeout=self.cancel_grace)
        return len(active)

    async def aclose(self) -> None:
        """Cancel every running job and wait for them to end."""
        tasks = [task for task in self._tasks.values() if not task.done()]
        for run in self._runs.values():
            run.cancel()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.cancel_grace)

    # -- events ---------------------------------------------------------------

    def subscribe(
        self,
        callback: EventCallback,
        *,
        session_id: str | None = None,
        job_id: str | None = None,
    ) -> Subscription:
        """Call ``callback(event)`` for every event of the matching jobs.

        The callback runs on the event loop, in the middle of the job's work:
        it must not block. An exception it raises is logged and swallowed.
        """
        subscription = Subscription(self, callback, session_id, job_id)
        self._subscribers.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    def report(self, kind: type[JobEvent], job_id: str, **fields: Any) -> None:
        """Publish an event of a job from outside the engine, such as a save failure."""
        self._publish(kind, self._require(job_id), **fields)

    def _publish(self, kind: type[JobEvent], job: ConversionJob, **fields: Any) -> None:
        if kind is not JobProgress:
            self._flush_progress(job)
        if not self._subscribers:
            return
        event = kind(
            job_id=job.job_id,
            session_id=job.session_id,
            ts=self.clock.now(),
            job=job.to_dict(),
            **fields,
        )
        for subscription in tuple(self._subscribers):
            if not subscription.wants(event):
                continue
            try:
                subscription.callback(event)
            except Exception:
                logger.error(
                    "subscriber failed on %s of %s",
                    event.type,
                    job.job_id,
                    exc_info=True,
                )

    def _flush_progress(self, job: ConversionJob) -> None:
        # Called before a job's state changes for another event, so the
        # progress it had reached goes out first and shows that state.
        run = self._runs.get(job.job_id)
        if run is not None:
            run.reporter.flush()

    # -- running --------------------------------------------------------------

    async def _run_job(self, job: ConversionJob, run: _Run) -> None:
        try:
            for index, outcome in enumerate(job.documents):
                # A resumed job keeps what its documents did before.
                if outcome.status in _ENDED:
                    continue
                if self._suspending is not None:
                    self._suspend(job, self._suspending)
                    return
                await self._run_document(job, run, index, outcome)
        except asyncio.CancelledError:
            if run.suspended:
                self._suspend(job, self._suspending or "stopped")
            else:
                self._finish(job, JobStatus.CANCELLED, "Job was cancelled")
                logger.info("job %s cancelled", job.job_id)
            raise
        except (MemoryWaitTimeout, MemoryRequestTooLarge) as exc:
            self._finish(job, JobStatus.FAILED, str(exc))
            logger.error("job %s failed: %s", job.job_id, exc)
            return
        except Exception as exc:
            self._finish(job, JobStatus.FAILED, f"internal error: {exc}")
            logger.error("job %s failed", job.job_id, exc_info=True)
            return

        failed = [o for o in job.documents if o.status is DocumentStatus.FAILED]
        error = _summary(failed, job.files_total) if failed else None
        status = JobStatus.FAILED if job.files_converted == 0 else JobStatus.COMPLETED
        self._finish(job, status, error)
        logger.info(
            "job %s %s: %d/%d documents converted",
            job.job_id,
            job.status.value,
            job.files_converted,
            job.files_total,
        )

    async def _run_document(
        self, job: ConversionJob, run: _Run, index: int, outcome: DocumentOutcome
    ) -> None:
        job.current_file = outcome.document_id
        job.progress = index / job.files_total
        run.reporter.changed()

        required = self._memory_of(job, outcome.document_id)
        waited = False

        def on_wait(wait: MemoryWait) -> None:
            nonlocal waited
            if wait.reason != "memory" and not waited:
                return
            waited = True
            self._memory_wait(job, wait)

        reservation = await self.gate.acquire(
            required, on_wait=on_wait, label=f"job {job.job_id}"
        )
        lease = _Lease(reservation)
        try:
            if waited:
                self._memory_resumed(job)
            await self._convert(job, run, index, outcome, lease)
        finally:
            lease.job_done()

    def _memory_of(self, job: ConversionJob, document_id: str) -> int:
        """What the gate reserves for one document: its own figure if known."""
        if self.document_memory is not None:
            declared = self.document_memory(job, document_id)
            if declared is not None:
                return max(0, int(declared))
        return int(job.memory_required_gb * GIB)

    async def _convert(
        self,
        job: ConversionJob,
        run: _Run,
        index: int,
        outcome: DocumentOutcome,
        lease: _Lease,
    ) -> None:
        assert job._eta is not None
        outcome.status = DocumentStatus.CONVERTING
        job._eta.document_started()
        stop = run.stop = StopFlag()
        stop.stopped = run.cancelled
        run.converting = True
        try:
            result = await self._call(job, run, index, outcome, stop, lease)
        except asyncio.CancelledError:
            self._flush_progress(job)
            run.reporter.document_done()
            stop.stopped = True
            outcome.duration_seconds = job._eta.document_finished()
            outcome.status = DocumentStatus.CANCELLED
            raise
        except Exception as exc:
            self._flush_progress(job)
            run.reporter.document_done()
            stop.stopped = True
            outcome.duration_seconds = job._eta.document_finished()
            outcome.status = DocumentStatus.FAILED
            outcome.error = _describe(exc)
            job.files_failed += 1
            job.files_completed += 1
            job.progress = job.files_completed / job.files_total
            logger.warning(
                "document %s of job %s failed: %s",
                outcome.document_id,
                job.job_id,
                outcome.error,
            )
            self._publish(JobDocumentFailed, job, document=outcome.to_dict())
            return
        finally:
            run.converting = False

        self._flush_progress(job)
        run.reporter.document_done()
        outcome.duration_seconds = job._eta.document_finished()
        outcome.progress = 1.0
        outcome.status = DocumentStatus.CONVERTED
        outcome.result = result
        self.history.record(run.name, outcome.duration_seconds)
        job.files_converted += 1
        job.files_completed += 1
        job.progress = job.files_completed / job.files_total
        logger.debug(
            "document %s of job %s converted in %.2f s",
            outcome.document_id,
            job.job_id,
            outcome.duration_seconds,
        )
        self._publish(JobDocumentConverted, job, document=outcome.to_dict())

    async def _call(
        self,
        job: ConversionJob,
        run: _Run,
        index: int,
        outcome: DocumentOutcome,
        stop: StopFlag,
        lease: _Lease,
    ) -> dict[str, Any] | None:
        """Run the converter on one document, under the document timeout."""
        loop = asyncio.get_running_loop()
        if run.is_async:
            callback = run.reporter.callback(outcome, index, stop)
            work: asyncio.Future[Any] = asyncio.ensure_future(
                _await(run.converter(outcome.document_id, callback))
            )
        else:
            callback = run.reporter.threadsafe_callback(outcome, index, stop, loop)
            work = _in_thread(run.converter, outcome.document_id, callback, lease, loop)

        timed_out = False

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            work.cancel()

        timer = (
            None
            if self.document_timeout is None
            else self.clock.call_later(self.document_timeout, expire)
        )
        try:
            result = await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if timed_out and (current is None or not current.cancelling()):
                raise DocumentTimeout(
                    f"conversion timed out after {self.document_timeout:g} s"
                ) from None
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return _as_result(result)

    def _memory_wait(self, job: ConversionJob, wait: MemoryWait) -> None:
        self._flush_progress(job)
        if job.status is JobStatus.RUNNING:
            job.transition(JobStatus.WAITING_FOR_MEMORY)
            job.memory_wait_started = wait.waiting_since
        job.memory_available_gb = round(wait.available_bytes / GIB, 1)
        job.memory = MemoryStatus(
            available_bytes=wait.available_bytes,
            required_bytes=wait.required_bytes,
            source=wait.source,
            waiting_since=wait.waiting_since,
            next_check_at=wait.next_check_at,
            next_check_in_seconds=wait.next_check_in_seconds,
            queue_position=wait.queue_position,
        )
        self._publish(JobMemoryWait, job, memory=job.memory.to_dict())

    def _memory_resumed(self, job: ConversionJob) -> None:
        self._flush_progress(job)
        memory = job.memory
        waited_since = job.memory_wait_started
        job.transition(JobStatus.RUNNING)
        job.memory_wait_started = None
        job.memory_available_gb = None
        job.memory = None
        reading = self.gate.probe()
        free = max(0, self.gate.free_bytes(reading))
        waited = (
            (self.clock.now() - waited_since).total_seconds() if waited_since else 0.0
        )

        # Free memory as memory_wait reported it: net of what is reserved,
        # this document's grant included.
        self._publish(
            JobMemoryResumed,
            job,
            memory={
                "available_gb": format_gb(free),
                "available_bytes": free,
                "required_gb": job.memory_required_gb,
                "source": reading.source,
                "waited_seconds": round(waited, 3),
                "queue_position": memory.queue_position if memory else None,
            },
        )

    def _finish(self, job: ConversionJob, status: JobStatus, error: str | None) -> None:
        self._flush_progress(job)
        for outcome in job.documents:
            if outcome.status is DocumentStatus.CONVERTING:
                outcome.status = DocumentStatus.CANCELLED
        job.transition(status)
        job.error = error
        job.completed_at = self.clock.now()
        job.current_file = None
        job.memory = None
        job.memory_wait_started = None
        if status is JobStatus.COMPLETED:
            job.progress = 1.0
        kind = {
            JobStatus.COMPLETED: JobCompleted,
            JobStatus.FAILED: JobFailed,
            JobStatus.CANCELLED: JobCancelled,
        }[status]
        self._publish(kind, job)
        self._runs.pop(job.job_id, None)

    def _suspend(self, job: ConversionJob, reason: str) -> None:
        """Leave a job unfinished for a shutdown: its cut-short document pending."""
        self._flush_progress(job)
        for outcome in job.documents:
            if outcome.status in (DocumentStatus.CONVERTING, DocumentStatus.CANCELLED):
                outcome.status = DocumentStatus.PENDING
                outcome.progress = 0.0
                outcome.duration_seconds = None
        job.interrupted = reason
        job.current_file = None
        job.memory = None
        job.memory_wait_started = None
        job.memory_available_gb = None
        job.progress = job.files_completed / job.files_total
        self._publish(JobSuspended, job, reason=reason)
        self._runs.pop(job.job_id, None)
        logger.info(
            "job %s suspended at %d of %d documents",
            job.job_id,
            job.files_completed,
            job.files_total,
        )

    def _forget(self, job: ConversionJob) -> None:
        del self._jobs[job.job_id]
        self._tasks.pop(job.job_id, None)
        self._publish(JobRemoved, job)

    def _job_task_done(self, job: ConversionJob, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            # A task cancelled before its first step never ran the handler
            # that ends the job, so the job is ended here, unless a shutdown
            # stopped it to be resumed.
            if not job.status.is_final and job.interrupted is None:
                self._finish(job, JobStatus.CANCELLED, "Job was cancelled")
            return
        exc = task.exception()
        if exc is not None:
            logger.error("job task %s crashed", task.get_name(), exc_info=exc)

    def _require(self, job_id: str) -> ConversionJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job


class _Lease:
    """A document's reservation, released once neither the job nor a thread needs it.

    A synchronous converter cannot be stopped from outside. When its document
    times out or is cancelled the job moves on, but the thread still holds the
    memory until it returns, so the reservation is kept until then.
    """

    __slots__ = ("_job_done", "_reservation", "thread_running")

    def __init__(self, reservation: Reservation) -> None:
        self._reservation = reservation
        self._job_done = False
        self.thread_running = False

    def job_done(self) -> None:
        self._job_done = True
        if not self.thread_running:
            self._reservation.release()

    def thread_exited(self) -> None:
        self.thread_running = False
        if self._job_done:
            self._reservation.release()


def _in_thread(
    converter: Converter,
    document_id: str,
    callback: ProgressCallback,
    lease: _Lease,
    loop: asyncio.AbstractEventLoop,
) -> asyncio.Future[Any]:
    """Run a synchronous converter in a thread of its own; a future of its result.

    A thread per document rather than a pool: a converter that hangs must not
    take a pool slot that the next document needs.
    """
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        lease.thread_exited()
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = converter(document_id, callback)
        except BaseException as exc:
            error = exc
        # The loop may have closed while the converter ran: nobody waits then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    lease.thread_running = True
    thread = threading.Thread(
        target=target, name=f"streamer-convert-{document_id}", daemon=True
    )
    thread.start()
    return future


async def _await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _as_result(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    return {"value": value}


# start_job's argument of the same name hides the function there.
_name_of = converter_name


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _summary(failed: Iterable[DocumentOutcome], total: int) -> str:
    failed = list(failed)
    named = "; ".join(f"{o.document_id}: {o.error}" for o in failed[:_ERRORS_NAMED])
    more = len(failed) - _ERRORS_NAMED
    tail = f"; and {more} more" if more > 0 else ""
    return f"{len(failed)} of {total} documents failed: {named}{tail}"
