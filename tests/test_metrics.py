"""GET /metrics: the server's figures in the Prometheus text format."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from streamer import JobManager, JobStatus, ManualClock, StaticMemoryProbe
from streamer.app import Server, create_app
from streamer.memory import GIB

from .conftest import TIMEOUT, Recorder
from .helpers import Controlled

Build = Callable[..., JobManager]

Labels = tuple[tuple[str, str], ...]

REQUIRED = {
    "streamer_connections",
    "streamer_events_published",
    "streamer_events_delivered",
    "streamer_events_coalesced",
    "streamer_clients_evicted",
    "streamer_jobs",
    "streamer_memory_wait_seconds",
    "streamer_memory_available_bytes",
    "streamer_store_writes",
    "streamer_store_write_failures",
    "streamer_store_pending",
}


class Scrape:
    """One scrape of /metrics, parsed."""

    def __init__(self, text: str) -> None:
        self.families = list(text_string_to_metric_families(text))
        self.samples: dict[tuple[str, Labels], float] = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in self.families
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[name, tuple(sorted(labels.items()))]


@contextlib.asynccontextmanager
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", timeout=TIMEOUT
    ) as http:
        try:
            yield http
        finally:
            await app.state.streamer.aclose()


async def scrape(http: httpx.AsyncClient) -> Scrape:
    response = await http.get("/metrics")
    assert response.status_code == 200
    return Scrape(response.text)


async def start_job(http: httpx.AsyncClient, *ids: str) -> tuple[str, str]:
    """Open a session and post a job of ``ids``; the session's and the job's ids."""
    session = (await http.post("/api/sessions")).json()
    response = await http.post(
        f"/api/sessions/{session['session_id']}/jobs",
        json={"document_ids": list(ids)},
        headers={"Authorization": f"Bearer {session['token']}"},
    )
    assert response.status_code == 201
    return session["session_id"], response.json()["job_id"]


def jobs_by_status(figures: Scrape) -> dict[str, float]:
    return {s.value: figures("streamer_jobs", status=s.value) for s in JobStatus}


async def test_metrics_endpoint_serves_prometheus_text(make_manager: Build) -> None:
    """Every family is named streamer_*, and the required ones are all there."""
    async with client(create_app(make_manager())) as http:
        response = await http.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    figures = Scrape(response.text)
    names = {family.name for family in figures.families}
    assert REQUIRED - names == set()
    assert all(name.startswith("streamer_") for name, _ in figures.samples)
    assert jobs_by_status(figures) == dict.fromkeys((s.value for s in JobStatus), 0)
    assert figures("streamer_memory_available_bytes", source="static") == 24 * GIB
    assert figures("streamer_memory_wait_seconds_total") == 0


async def test_metrics_figures_move_after_a_job_runs(make_manager: Build) -> None:
    """A job's run shows in the event counters and in the jobs by status."""
    manager = make_manager()
    converter = Controlled()
    app = create_app(manager, converter=converter)
    server: Server = app.state.streamer
    async with client(app) as http:
        before = await scrape(http)
        session_id, job_id = await start_job(http, "a", "b")
        subscription = server.hub.subscribe(
            session_id, snapshot=server.snapshot(session_id)
        )
        await converter.wait_started("a")
        running = await scrape(http)
        converter.finish("a")
        converter.finish("b")
        await manager.wait_job(job_id)
        subscription.close()
        after = await scrape(http)

    assert before("streamer_events_published_total") == 0
    assert before("streamer_sessions") == 0
    assert running("streamer_connections") == 1
    assert running("streamer_sessions") == 1
    assert jobs_by_status(running)["running"] == 1
    assert after("streamer_connections") == 0
    published = after("streamer_events_published_total")
    assert published >= 5
    assert 0 < after("streamer_events_delivered_total") <= published
    assert jobs_by_status(after)["running"] == 0
    assert jobs_by_status(after)["completed"] == 1


async def test_metrics_count_coalesced_and_evicted(make_manager: Build) -> None:
    """Progress replaced in a queue, and a subscriber dropped for lag, are counted."""
    converter = Controlled()
    app = create_app(
        make_manager(progress_rate=0), converter=converter, queue_size=1, hard_limit=2
    )
    server: Server = app.state.streamer
    async with client(app) as http:
        session_id, _ = await start_job(http, "a")
        await converter.wait_started("a")
        subscription = server.hub.subscribe(
            session_id, snapshot=server.snapshot(session_id)
        )
        for value in (0.25, 0.5, 0.75):
            converter.callbacks["a"](value)
        coalesced = await scrape(http)
        converter.finish("a")
        await server.manager.wait_job(server.manager.list_jobs()[0].job_id)
        evicted = await scrape(http)

    assert coalesced("streamer_events_coalesced_total") == 2
    assert coalesced("streamer_clients_evicted_total") == 0
    assert evicted("streamer_clients_evicted_total") == 1
    assert evicted("streamer_connections") == 0
    assert subscription.statistics().queued == 0


async def test_metrics_report_memory_waits(
    make_manager: Build,
    probe: StaticMemoryProbe,
    clock: ManualClock,
    recorder: Recorder,
) -> None:
    """A document waiting for memory shows as waiting, then as seconds waited."""
    manager = make_manager()
    converter = Controlled()
    probe.available_bytes = 4 * GIB
    async with client(create_app(manager, converter=converter)) as http:
        _, job_id = await start_job(http, "a")
        await recorder.wait_type("job.memory_wait", job_id)
        waiting = await scrape(http)
        probe.available_bytes = 24 * GIB
        await clock.advance(60)
        await converter.wait_started("a")
        resumed = await scrape(http)

    assert waiting("streamer_memory_waiting") == 1
    assert jobs_by_status(waiting)["waiting_for_memory"] == 1
    assert waiting("streamer_memory_available_bytes", source="static") == 4 * GIB
    assert waiting("streamer_memory_wait_seconds_total") == 0
    assert resumed("streamer_memory_waiting") == 0
    assert 0 < resumed("streamer_memory_wait_seconds_total") <= 60
    assert resumed("streamer_memory_reserved_bytes") == 10 * GIB
    assert jobs_by_status(resumed)["running"] == 1


async def test_metrics_two_apps_do_not_share_figures(
    make_manager: Build, tmp_path: Path
) -> None:
    """Two apps in one process each report only their own figures."""
    busy_manager = make_manager()
    converter = Controlled()
    converter.finish("a")
    busy = create_app(busy_manager, converter=converter, data_dir=tmp_path / "busy")
    idle = create_app(make_manager(), data_dir=tmp_path / "idle")
    async with client(busy) as busy_http, client(idle) as idle_http:
        _, job_id = await start_job(busy_http, "a")
        await busy_manager.wait_job(job_id)
        busy_figures = await scrape(busy_http)
        idle_figures = await scrape(idle_http)

    assert busy_figures("streamer_events_published_total") > 0
    assert busy_figures("streamer_sessions") == 1
    assert jobs_by_status(busy_figures)["completed"] == 1
    assert idle_figures("streamer_events_published_total") == 0
    assert idle_figures("streamer_sessions") == 0
    assert set(jobs_by_status(idle_figures).values()) == {0}


async def test_metrics_count_store_writes(make_manager: Build) -> None:
    """Writes to the store are counted once a session's creation is saved."""
    async with client(create_app(make_manager())) as http:
        await http.post("/api/sessions")
        figures = Scrape((await http.get("/metrics")).text)

    assert figures("streamer_store_writes_total") >= 1
    assert figures("streamer_store_write_failures_total") == 0
