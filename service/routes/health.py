"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from jobs.store import DURATION_BUCKETS, JobStore

from ..deps import StoreDep, require_token

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process is up")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Redis reachable and at least one worker alive",
    responses={503: {"description": "not ready"}},
)
def readyz(store: StoreDep) -> JSONResponse:
    try:
        store.r.ping()
        workers = store.workers_alive()
    except Exception as e:  # noqa: BLE001
        return JSONResponse(
            {"status": "unavailable", "redis": f"unreachable: {type(e).__name__}", "workers": []}, 503
        )
    ok = bool(workers)
    body = {"status": "ok" if ok else "no workers", "redis": "ok", "workers": workers}
    return JSONResponse(body, 200 if ok else 503)


class _JobsCollector:
    """Reads the job store at scrape time, so every API process reports the same numbers."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("ckpt_convert_jobs", "Jobs by status", labels=["status"])
        for status, n in self.store.counts_by_status().items():
            g.add_metric([status], n)
        yield g
        nbytes, d = self.store.metrics()
        yield CounterMetricFamily(
            "ckpt_convert_bytes_converted", "Bytes written by succeeded jobs", value=nbytes
        )
        buckets = [(str(float(b)), d.get(str(b), 0.0)) for b in DURATION_BUCKETS] + [
            ("+Inf", d.get("+Inf", 0.0))
        ]
        yield HistogramMetricFamily(
            "ckpt_convert_job_duration_seconds",
            "Duration of succeeded jobs",
            buckets=buckets,
            sum_value=d.get("sum", 0.0),
        )
        yield GaugeMetricFamily(
            "ckpt_convert_workers_alive",
            "Workers with a heartbeat in the last 30 s",
            value=len(self.store.workers_alive()),
        )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    summary="Prometheus metrics",
    dependencies=[Depends(require_token)],  # job counts are not public when API tokens are set
)
def metrics(store: StoreDep) -> PlainTextResponse:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_JobsCollector(store))  # type: ignore[arg-type]
    return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")
