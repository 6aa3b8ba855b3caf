"""The job as the API shows it (``GET /jobs/{id}``) and as a completion webhook carries it: one view of a job's store
record, shared by the API and the workers (pydantic)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Direction = Literal["forward", "reverse"]


class Progress(BaseModel):
    phase: str = Field(
        description="resolving, planning, converting, writing index, copying files, publishing, done"
    )
    bytes_done: int = 0
    bytes_total: int = 0
    tensors_done: int = 0
    tensors_total: int = 0
    eta_seconds: float | None = None
    bytes_per_second: float | None = None


class JobError(BaseModel):
    type: str = Field(description="error class, e.g. MissingExpertError, CancelledError, WorkerLostError")
    message: str
    key: str | None = None
    file: str | None = None


class ShardInfo(BaseModel):
    file: str
    size: int


class SubtaskInfo(BaseModel):
    part: int
    worker: str = Field(description="the worker (Celery hostname) that wrote these shards")
    shards: list[str]


class JobResult(BaseModel):
    output: str = Field(description="output folder, Hub repo URL or pull request URL")
    noop: bool = Field(
        False,
        description="the source was already in the target layout: the destination got its files unchanged "
        "(hard links locally; nothing at all for a pull request on the source repo itself)",
    )
    shards: list[ShardInfo] = []
    copied_files: list[str] = []
    skipped_files: list[str] = Field(
        [],
        description="source files not part of the output: weights in other formats or not in the checkpoint",
    )
    warnings: list[str] = Field(
        [], description="what was tolerated (e.g. an index entry pointing to no tensor)"
    )
    bytes_written: int = 0
    seconds: float = 0.0
    subtasks: list[SubtaskInfo] = Field([], description="a job of several shards: which worker wrote which")


class WebhookDelivery(BaseModel):
    """A completion webhook of the job (``notify`` in ``POST /convert``) and how its delivery went."""

    url: str
    state: Literal["waiting", "sending", "delivered", "failed"] = Field(
        description="waiting for the job to end; sending (retried with backoff); delivered; failed (attempts used, "
        "or the destination refused)"
    )
    attempts: int = 0
    last_status: int | None = Field(None, description="HTTP status of the last attempt (none: no response)")
    last_error: str | None = None
    delivered_at: datetime | None = None


class PhaseTiming(BaseModel):
    started: datetime
    finished: datetime | None = None
    seconds: float | None = None


class Job(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "3f0c2d6b9e8a4a51b1f4c0de12345678",
                    "status": "running",
                    "source": "/data/checkpoints/mixtral",
                    "revision": "local",
                    "model_type": "mixtral",
                    "direction": "forward",
                    "destination": {"local_path": "/data/out/mixtral-grouped"},
                    "created_at": "2026-11-29T10:00:00Z",
                    "progress": {"phase": "converting", "bytes_done": 1073741824, "bytes_total": 93415342080},
                }
            ]
        }
    )
    id: str
    status: Status
    source: str
    revision: str
    source_sha: str | None = Field(
        None, description="commit sha (Hub) or content fingerprint (local) converted"
    )
    model_type: str
    direction: Direction
    dtype: str | None = None
    dequantize: bool = False
    max_shard_size: str = "5GB"
    destination: dict[str, Any]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    progress: Progress | None = None
    phases: dict[str, PhaseTiming] = {}
    plan: dict[str, Any] | None = Field(
        None, description="plan summary: tensors and bytes in/out, shards, counts"
    )
    result: JobResult | None = None
    error: JobError | None = None
    owner: str | None = Field(
        None, description="name of the API token that submitted the job (with tokens set)"
    )
    notify: list[WebhookDelivery] = Field(
        [], description="completion webhooks: one per notify URL of the submissions that got this job"
    )


def ts(v: float | None) -> datetime | None:
    return None if v is None else datetime.fromtimestamp(v, tz=UTC)


def phases_of(rec: dict[str, Any]) -> dict[str, PhaseTiming]:
    """A store record's phase timings (epoch seconds) as the API shows them."""
    return {
        name: PhaseTiming(
            started=ts(p["started"]),  # type: ignore[arg-type]
            finished=ts(p.get("finished")),
            seconds=(p["finished"] - p["started"]) if p.get("finished") else None,
        )
        for name, p in (rec.get("phases") or {}).items()
    }


def record_fields(rec: dict[str, Any]) -> dict[str, Any]:
    """What a job and its list summary both show, from a store record (timestamps to UTC datetimes, request fields
    flattened)."""
    req = rec.get("request") or {}
    return {
        "id": rec["id"],
        "status": rec["status"],
        "owner": rec.get("owner") or None,
        "source": rec.get("source", req.get("source", "")),
        "revision": rec.get("revision", req.get("revision", "")),
        "source_sha": rec.get("source_sha") or None,
        "model_type": rec.get("model_type", ""),
        "direction": req.get("direction", "forward"),
        "dtype": req.get("dtype"),
        "destination": rec.get("destination") or {},
        "created_at": ts(rec["created_at"]),
        "started_at": ts(rec.get("started_at")),
        "finished_at": ts(rec.get("finished_at")),
        "attempts": rec.get("attempts", 0),
        "progress": rec.get("progress"),
        "error": rec.get("error"),
    }


def job_from_record(rec: dict[str, Any]) -> Job:
    """A store record -> the API's Job."""
    req = rec.get("request") or {}
    return Job(
        **record_fields(rec),
        dequantize=bool(req.get("dequantize", False)),
        max_shard_size=req.get("max_shard_size", "5GB"),
        phases=phases_of(rec),
        plan=rec.get("plan"),
        result=rec.get("result"),
        notify=[
            WebhookDelivery(**{**e, "delivered_at": ts(e.get("delivered_at"))})
            for e in sorted((rec.get("notify") or {}).values(), key=lambda e: e.get("subscribed_at", 0))
        ],
    )
