"""``GET /metrics``: the server's state in the Prometheus text format.

Figures are read from the hub, the engine and the memory probe when the
endpoint is scraped, so counting costs nothing on the event path.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from .job import JobStatus

__all__ = ["ServerCollector", "metrics_endpoint"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerCollector(Collector):
    """Turns one server's statistics into metric families at scrape time."""

    def __init__(self, server: object) -> None:
        from .server import Server

        assert isinstance(server, Server)
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        hub = server.hub.statistics()
        gate = server.manager.gate.statistics()

        yield GaugeMetricFamily(
            "streamer_connections",
            "Clients subscribed to a session's stream now.",
            value=hub.connections,
        )
        yield GaugeMetricFamily(
            "streamer_sessions",
            "Sessions the server knows.",
            value=len(server.sessions),
        )
        yield CounterMetricFamily(
            "streamer_events_published",
            "Events the engine published to the hub.",
            value=hub.published,
        )
        yield CounterMetricFamily(
            "streamer_events_delivered",
            "Event messages queued for subscribers.",
            value=hub.delivered,
        )
        yield CounterMetricFamily(
            "streamer_events_coalesced",
            "Progress messages that replaced a queued one.",
            value=hub.coalesced,
        )
        yield CounterMetricFamily(
            "streamer_clients_evicted",
            "Clients closed for falling too far behind.",
            value=hub.evicted,
        )

        jobs = GaugeMetricFamily(
            "streamer_jobs", "Jobs the engine holds, by status.", labels=["status"]
        )
        counts = dict.fromkeys(JobStatus, 0)
        for job in server.manager.list_jobs():
            counts[job.status] += 1
        for status, count in counts.items():
            jobs.add_metric([status.value], count)
        yield jobs

        yield CounterMetricFamily(
            "streamer_memory_wait_seconds",
            "Seconds documents spent waiting for admission.",
            value=gate.waited_seconds,
        )
        yield GaugeMetricFamily(
            "streamer_memory_waiting",
            "Documents waiting for admission now.",
            value=gate.waiting,
        )
        yield GaugeMetricFamily(
            "streamer_memory_reserved_bytes",
            "Memory reserved by documents converting now.",
            value=gate.reserved_bytes,
        )
        reading = server.manager.gate.probe()
        available = GaugeMetricFamily(
            "streamer_memory_available_bytes",
            "Free memory as the probe sees it.",
            labels=["source"],
        )
        available.add_metric([reading.source], reading.available_bytes)
        yield available

        saving = server.journal.statistics()
        yield CounterMetricFamily(
            "streamer_store_writes",
            "Writes of changes to the store that succeeded.",
            value=saving.writes,
        )
        yield CounterMetricFamily(
            "streamer_store_write_failures",
            "Writes to the store that failed and were kept to try again.",
            value=saving.failures,
        )
        yield GaugeMetricFamily(
            "streamer_store_pending",
            "Changes noted and not yet written to the store.",
            value=saving.pending,
        )


async def metrics_endpoint(request: Request) -> Response:
    state = request.app.state
    registry: CollectorRegistry | None = getattr(state, "metrics_registry", None)
    if registry is None:
        # One registry per app, so two apps in a process never share figures.
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ServerCollector(state.streamer))
        state.metrics_registry = registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE)
