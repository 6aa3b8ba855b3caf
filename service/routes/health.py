"""Liveness, readiness (public: ok or not ok), the details behind it (admin) and Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from jobs.store import DURATION_BUCKETS, PHASE_BUCKETS, JobStore

from ..deps import StoreDep, require_scope, require_token
from ..streams import EventHub

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process is up")
async def healthz() -> dict:
    return {"status": "ok"}


async def readiness(request: Request) -> dict[str, Any]:
    """Redis reachable (within 2 s), a worker alive, and this process's event streams below 90 % of their cap."""
    hub: EventHub = request.app.state.hub
    try:
        async with asyncio.timeout(2):
            await request.app.state.aredis.ping()
            workers = await request.app.state.reader.workers_alive()
        redis_state = "ok"
    except Exception as e:  # noqa: BLE001 - any failure to reach Redis means not ready
        workers, redis_state = [], f"unreachable: {type(e).__name__}"
    ready = redis_state == "ok" and bool(workers) and hub.ready
    return {"ready": ready, "redis": redis_state, "workers": workers, "streams": hub.stats()}


@router.get(
    "/readyz",
    summary="Ready: Redis reachable, a worker alive, event streams not saturated",
    responses={
        200: {"content": {"application/json": {"example": {"status": "ok"}}}},
        503: {"description": "not ready", "content": {"application/json": {"example": {"status": "not ok"}}}},
    },
)
async def readyz(request: Request) -> JSONResponse:
    """``{"status": "ok"}`` (200) or ``{"status": "not ok"}`` (503), nothing else: it is public. Why not ok
    (Redis, workers, streams) is in ``GET /status`` (admin)."""
    ok = (await readiness(request))["ready"]
    return JSONResponse({"status": "ok" if ok else "not ok"}, 200 if ok else 503)


@router.get(
    "/status",
    summary="What readiness is made of: Redis, live workers by name, this process's event streams",
    dependencies=[Depends(require_scope("admin"))],
    responses={401: {"description": "no token"}, 403: {"description": "not an admin token"}},
)
async def status(request: Request) -> dict[str, Any]:
    """``{ready, redis, workers: [names], streams: {open, max, max_per_client, jobs_followed, clients,
    dropped_slow_clients, reader}}``; stream numbers are this API process's. Needs an ``admin`` token."""
    return await readiness(request)


def _buckets(values: dict[str, float], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """Cumulative bucket counts as stored (``"5"`` -> jobs that took at most 5 s) -> prometheus_client's buckets."""
    return [(str(float(b)), values.get(str(b), 0.0)) for b in bounds] + [("+Inf", values.get("+Inf", 0.0))]


class _JobsCollector:
    """Reads the job store at scrape time (two Redis round trips, no job record), so every API process reports the
    same numbers. Labels are bounded: statuses, model types (the registry's), error types (the library's error
    classes) and phases; never a job id or a path."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        m = self.store.metrics_snapshot()
        g = GaugeMetricFamily("ckpt_convert_jobs", "Jobs in the store by status", labels=["status"])
        for status, n in m.by_status.items():
            g.add_metric([status], n)
        yield g
        g = GaugeMetricFamily(
            "ckpt_convert_jobs_by_model_type",
            "Jobs in the store by status and model type (pairs with no job are left out)",
            labels=["status", "model_type"],
        )
        for (status, model_type), n in sorted(m.by_status_model_type.items()):
            g.add_metric([status, model_type], n)
        yield g
        c = CounterMetricFamily(
            "ckpt_convert_jobs_finished",
            "Jobs that ended, by final status and model type",
            labels=["status", "model_type"],
        )
        for (status, model_type), n in sorted(m.finished.items()):
            c.add_metric([status, model_type], n)
        yield c
        c = CounterMetricFamily(
            "ckpt_convert_job_failures",
            "Jobs that failed, by error type (the job's error.type) and model type",
            labels=["error_type", "model_type"],
        )
        for (error_type, model_type), n in sorted(m.failures.items()):
            c.add_metric([error_type, model_type], n)
        yield c
        yield CounterMetricFamily(
            "ckpt_convert_bytes_converted", "Bytes written by succeeded jobs", value=m.bytes_converted
        )
        yield HistogramMetricFamily(
            "ckpt_convert_job_duration_seconds",
            "Duration of succeeded jobs",
            buckets=_buckets(m.duration, DURATION_BUCKETS),
            sum_value=m.duration.get("sum", 0.0),
        )
        h = HistogramMetricFamily(
            "ckpt_convert_phase_duration_seconds",
            "Duration of each phase of finished jobs (resolving, planning, converting, ...), by the job's final status",
            labels=["phase", "status"],
        )
        for (phase, status), values in sorted(m.phases.items()):
            h.add_metric([phase, status], _buckets(values, PHASE_BUCKETS), sum_value=values.get("sum", 0.0))
        yield h
        yield GaugeMetricFamily(
            "ckpt_convert_queue_depth",
            "Task messages waiting in the queue (a job's first task; a sharded job adds one per part and a final one)",
            value=m.queue_depth,
        )
        yield GaugeMetricFamily(
            "ckpt_convert_queue_unacked",
            "Task messages delivered to a worker and not yet acknowledged (running, or waiting for a retry)",
            value=m.unacked,
        )
        yield GaugeMetricFamily(
            "ckpt_convert_workers_alive", "Workers with a heartbeat in the last 30 s", value=m.workers_alive
        )


class _StreamsCollector:
    """This API process's event streams (each process of the API reports its own)."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "ckpt_convert_event_streams", "Event streams open in this API process", value=self.hub.open
        )
        yield GaugeMetricFamily(
            "ckpt_convert_event_streams_max",
            "Event streams this API process serves at most",
            value=self.hub.max_streams,
        )
        yield CounterMetricFamily(
            "ckpt_convert_event_streams_dropped",
            "Event stream clients dropped for falling behind, in this API process",
            value=self.hub.dropped,
        )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics",
    dependencies=[Depends(require_token)],  # job counts are not public when API tokens are set
)
def metrics(store: StoreDep, request: Request) -> PlainTextResponse:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_JobsCollector(store))  # type: ignore[arg-type]
    registry.register(_StreamsCollector(request.app.state.hub))
    return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")
