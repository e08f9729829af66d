"""Tests of the journal: what it writes, when, and what it does when writes fail."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from streamer import JobManager
from streamer.errors import StoreError
from streamer.gate import Backoff
from streamer.journal import Journal
from streamer.store import Changes, MemoryStore

from .conftest import TIMEOUT, Recorder, settle
from .helpers import Controlled
from .test_store import document, session

Build = Callable[..., JobManager]


class FlakyStore(MemoryStore):
    """A memory store whose writes fail while ``error`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.error: StoreError | None = None
        self.applied: list[Changes] = []
        self.attempts = 0

    async def apply(self, changes: Changes) -> None:
        self.attempts += 1
        if self.error is not None:
            raise self.error
        self.applied.append(changes)
        await super().apply(changes)


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


def journal_for(store: FlakyStore, manager: JobManager) -> Journal:
    # Retries come quickly, so a test sees one without waiting long.
    return Journal(store, manager, retry=Backoff(initial=0.01, cap=0.02, jitter=0))


async def wait_until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_journal_writes_a_job_as_it_changes(
    make_manager: Build, store: FlakyStore
) -> None:
    """Creating, converting and ending a job reach the store, outcomes included."""
    manager = make_manager()
    journal = journal_for(store, manager)
    converter = Controlled()
    job_id = manager.create_job("ses-a", ["a", "b"])
    await manager.start_job(job_id, converter)
    converter.finish("a")
    converter.finish("b")
    await manager.wait_job(job_id)
    await journal.flush()

    stored = store.jobs[job_id]
    assert stored["status"] == "completed"
    assert [d["status"] for d in stored["documents"]] == ["converted", "converted"]
    assert stored["documents"][0]["result"] == {"document_id": "a", "pages": 3}
    assert store.history == manager.history.to_dict()
    await journal.close()


async def test_journal_never_writes_progress(
    make_manager: Build, store: FlakyStore
) -> None:
    """Progress inside a document causes no write at all."""
    manager = make_manager(progress_rate=1e9)
    journal = journal_for(store, manager)
    converter = Controlled()
    job_id = manager.create_job("ses-a", ["a"])
    await manager.start_job(job_id, converter)
    await converter.wait_started("a")
    await journal.flush()
    writes = store.writes
    for step in range(1, 100):
        converter.callbacks["a"](step / 100)
    await settle()
    await journal.flush()

    assert store.writes == writes
    await journal.close()


async def test_journal_batches_a_burst_into_few_writes(
    make_manager: Build, store: FlakyStore
) -> None:
    """Fifty jobs created in one go are written in far fewer transactions."""
    manager = make_manager()
    journal = journal_for(store, manager)
    for _ in range(50):
        manager.create_job("ses-a", ["a"])
    await wait_until(lambda: len(store.jobs) == 50)

    assert store.writes <= 2
    await journal.close()


async def test_journal_writes_only_changed_outcomes(
    make_manager: Build, store: FlakyStore
) -> None:
    """After its first write, a job's write names only the outcomes that changed."""
    manager = make_manager()
    journal = journal_for(store, manager)
    converter = Controlled()
    job_id = manager.create_job("ses-a", ["a", "b", "c"])
    await journal.flush()
    assert "documents" in store.applied[-1].jobs[0]
    await manager.start_job(job_id, converter)
    await journal.flush()
    converter.finish("a")
    await converter.wait_started("b")
    await journal.flush()

    # 'a' ended and 'b' started converting since the last write.
    written = store.applied[-1]
    assert "documents" not in written.jobs[0]
    assert {i: o["status"] for i, o in written.outcomes[job_id].items()} == {
        0: "converted",
        1: "converting",
    }
    assert [d["status"] for d in store.jobs[job_id]["documents"]] == [
        "converted",
        "converting",
        "pending",
    ]
    await journal.close()


async def test_journal_flush_raises_and_keeps_the_changes(
    make_manager: Build, store: FlakyStore
) -> None:
    """A failed flush raises, loses nothing, and the next one writes it all."""
    manager = make_manager()
    journal = journal_for(store, manager)
    store.error = StoreError("could not save to s.db: the disk is full", "full")
    journal.session_changed(session())
    journal.documents_added([document()])
    with pytest.raises(StoreError, match="disk is full"):
        await journal.flush()
    assert journal.statistics().error is not None
    assert journal.pending == 2

    store.error = None
    await journal.flush()
    assert list(store.sessions) == ["ses-a"]
    assert list(store.documents) == ["doc-1"]
    assert journal.statistics().error is None
    assert journal.pending == 0
    await journal.close()


async def test_journal_withdrawn_documents_are_never_written(
    make_manager: Build, store: FlakyStore
) -> None:
    """Documents withdrawn after a failed write do not reach the store later."""
    journal = journal_for(store, make_manager())
    store.error = StoreError("could not save: the disk is full", "full")
    journal.documents_added([document()])
    with pytest.raises(StoreError):
        await journal.flush()
    journal.withdraw_documents(["doc-1"])
    store.error = None
    await journal.flush()

    assert store.documents == {}
    await journal.close()


async def test_journal_retries_in_the_background_and_tells_clients_once(
    make_manager: Build, store: FlakyStore, recorder: Recorder
) -> None:
    """A failing background write is retried, told once as job.save_failed."""
    manager = make_manager()
    journal = journal_for(store, manager)
    store.error = StoreError("could not save to s.db: the disk is full", "full")
    job_id = manager.create_job("ses-a", ["a"])
    await wait_until(lambda: store.attempts >= 3)

    failed = recorder.of("job.save_failed", job_id)
    assert len(failed) == 1
    assert failed[0].to_dict()["error"] == "could not save to s.db: the disk is full"
    assert store.jobs == {}

    store.error = None
    await wait_until(lambda: job_id in store.jobs)
    assert journal.statistics().error is None
    await journal.close()


async def test_journal_removed_job_is_deleted(
    make_manager: Build, store: FlakyStore
) -> None:
    """A job removed from the manager is removed from the store."""
    manager = make_manager()
    journal = journal_for(store, manager)
    job_id = manager.create_job("ses-a", ["a"])
    await manager.cancel_job(job_id)
    await journal.flush()
    assert job_id in store.jobs
    manager.remove_job(job_id)
    await journal.flush()

    assert store.jobs == {}
    await journal.close()


async def test_journal_close_writes_what_is_left(
    make_manager: Build, store: FlakyStore
) -> None:
    """Closing writes the last changes, then stops following the manager."""
    manager = make_manager()
    journal = journal_for(store, manager)
    job_id = manager.create_job("ses-a", ["a"])
    await journal.close()
    assert job_id in store.jobs

    writes = store.writes
    manager.create_job("ses-a", ["b"])
    await settle()
    assert store.writes == writes


async def test_journal_survives_a_record_it_cannot_write(
    make_manager: Build, store: FlakyStore, caplog: Any
) -> None:
    """An unexpected error in a background write is logged, and writing goes on."""

    class Broken(FlakyStore):
        broken = True

        async def apply(self, changes: Changes) -> None:
            if self.broken:
                self.broken = False
                raise TypeError("Object of type set is not JSON serializable")
            await super().apply(changes)

    broken = Broken()
    manager = make_manager()
    journal = journal_for(broken, manager)
    job_id = manager.create_job("ses-a", ["a"])
    await wait_until(lambda: job_id in broken.jobs)

    assert "journal write failed" in caplog.text
    await journal.close()
