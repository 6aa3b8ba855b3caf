"""Request and response bodies of the API (pydantic), with the examples the OpenAPI docs show. The rules documents
(``GET /rules``, ``GET /rules/{model_type}``, the preview) are in :mod:`service.rules_models`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Direction = Literal["forward", "reverse"]


class HubDestination(BaseModel):
    """Publish to a Hub repo (created when missing), or as a pull request."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"repo_id": "my-org/Mixtral-8x7B-grouped"}]}
    )
    repo_id: str = Field(
        description="target repo `org/name`; with create_pr and the source's own id: a PR on the source"
    )
    create_pr: bool = False
    private: bool = False


class LocalDestination(BaseModel):
    """Write to a folder on the workers' machine, under one of CKPT_CONVERT_ALLOWED_LOCAL_ROOTS."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"local_path": "/data/out/mixtral-grouped"}]}
    )
    local_path: str = Field(description="absolute path of the output folder (must not exist or be empty)")


class ConvertRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "source": "mistralai/Mixtral-8x7B-v0.1",
                    "revision": "main",
                    "destination": {"repo_id": "my-org/Mixtral-8x7B-v0.1-grouped", "private": True},
                },
                {
                    "source": "/data/checkpoints/mixtral",
                    "model_type": "mixtral",
                    "direction": "forward",
                    "dtype": "bf16",
                    "destination": {"local_path": "/data/out/mixtral-grouped"},
                },
            ]
        },
    )
    source: str = Field(description="Hub repo id (`org/name` or `hf://org/name`) or an absolute local path")
    revision: str = Field(
        "main", description="branch, tag or commit of a Hub source; resolved to a commit sha"
    )
    model_type: str | None = Field(
        None, description="rules to apply; default: the source's config.json model_type"
    )
    direction: Direction = Field("forward", description="forward: published -> model layout; reverse: back")
    dtype: Literal["bf16", "fp16", "fp32"] | None = Field(None, description="cast floats (fp32 params kept)")
    dequantize: bool = Field(False, description="dequantize pre-quantized (FP8/MXFP4) checkpoints to bf16")
    max_shard_size: str = Field("5GB", description="largest output shard, e.g. 5GB, 500MB, 2GiB")
    destination: HubDestination | LocalDestination
    overwrite: bool = Field(
        False,
        description="replace what the destination holds (a non-empty folder, a repo branch with weights); the old "
        "content is removed only after the new one is in place. Without it, nothing there is ever replaced.",
    )


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


class ResultSummary(BaseModel):
    """A succeeded job's result in a list (``GET /jobs?include=result`` gives the whole :class:`JobResult`)."""

    output: str = Field(description="output folder, Hub repo URL or pull request URL")
    noop: bool = False
    bytes_written: int = 0


class JobSummary(BaseModel):
    """A job as ``GET /jobs`` lists it: what a table of jobs shows. ``plan`` and ``phases`` are there only when
    asked for (``include=plan``, ``include=phases``), ``result`` is whole with ``include=result``; ``GET /jobs/{id}``
    has everything."""

    id: str
    status: Status
    owner: str | None = None
    source: str
    revision: str
    source_sha: str | None = None
    model_type: str
    direction: Direction
    dtype: str | None = None
    destination: dict[str, Any]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    progress: Progress | None = None
    error: JobError | None = None
    result: ResultSummary | JobResult | None = None
    plan: dict[str, Any] | None = Field(None, description="with include=plan: the plan summary")
    phases: dict[str, PhaseTiming] | None = Field(None, description="with include=phases: the phase timings")


class JobList(BaseModel):
    data: list[JobSummary]
    count: int = Field(description="jobs matching the filters (all pages)")


class PreviewRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "names": [
                        "model.layers.0.block_sparse_moe.gate.weight",
                        "model.layers.0.block_sparse_moe.experts.0.w1.weight",
                        "model.layers.0.block_sparse_moe.experts.0.w3.weight",
                    ],
                    "direction": "forward",
                }
            ]
        },
    )
    names: list[str] = Field(max_length=100_000)
    direction: Direction = "forward"
    config: dict[str, Any] | None = Field(None, description="config.json, for rules that depend on it")


class ResolveRequest(BaseModel):
    """A checkpoint's config.json: the rules composed for it, nested sub-models included."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "config": {
                        "model_type": "llava",
                        "text_config": {"model_type": "mixtral"},
                        "vision_config": {"model_type": "clip_vision_model"},
                    }
                }
            ]
        },
    )
    config: dict[str, Any] = Field(description="config.json as published")
    model_type: str | None = Field(None, description="override config.json's model_type")
    direction: Direction = "forward"


def ts(v: float | None) -> datetime | None:
    return None if v is None else datetime.fromtimestamp(v, tz=UTC)


def _phases(rec: dict[str, Any]) -> dict[str, PhaseTiming]:
    return {
        name: PhaseTiming(
            started=ts(p["started"]),  # type: ignore[arg-type]
            finished=ts(p.get("finished")),
            seconds=(p["finished"] - p["started"]) if p.get("finished") else None,
        )
        for name, p in (rec.get("phases") or {}).items()
    }


#: what ``include=`` may add to the items of ``GET /jobs``
INCLUDES = ("plan", "phases", "result")


def summary_from_record(rec: dict[str, Any], include: frozenset[str] = frozenset()) -> JobSummary:
    """A store record (at least :data:`jobs.store.SUMMARY_FIELDS`, plus the fields of ``include``) -> a list item
    (``GET /jobs`` leaves ``plan`` and ``phases`` out of its JSON unless they are included)."""
    req = rec.get("request") or {}
    res = rec.get("result")
    extra: dict[str, Any] = {}
    if "plan" in include:
        extra["plan"] = rec.get("plan")
    if "phases" in include:
        extra["phases"] = _phases(rec)
    return JobSummary(
        id=rec["id"],
        status=rec["status"],
        owner=rec.get("owner") or None,
        source=rec.get("source", req.get("source", "")),
        revision=rec.get("revision", req.get("revision", "")),
        source_sha=rec.get("source_sha") or None,
        model_type=rec.get("model_type", ""),
        direction=req.get("direction", "forward"),
        dtype=req.get("dtype"),
        destination=rec.get("destination") or {},
        created_at=ts(rec["created_at"]),  # type: ignore[arg-type]
        started_at=ts(rec.get("started_at")),
        finished_at=ts(rec.get("finished_at")),
        attempts=rec.get("attempts", 0),
        progress=rec.get("progress"),
        error=rec.get("error"),
        result=None
        if res is None
        else JobResult.model_validate(res)
        if "result" in include
        else ResultSummary.model_validate(
            {k: res[k] for k in ("output", "noop", "bytes_written") if k in res}
        ),
        **extra,
    )


def job_from_record(rec: dict[str, Any]) -> Job:
    """A store record -> the API's Job (timestamps to UTC datetimes, request fields flattened)."""
    req = rec.get("request") or {}
    phases = _phases(rec)
    return Job(
        id=rec["id"],
        status=rec["status"],
        source=rec.get("source", req.get("source", "")),
        revision=rec.get("revision", req.get("revision", "")),
        source_sha=rec.get("source_sha") or None,
        model_type=rec.get("model_type", ""),
        direction=req.get("direction", "forward"),
        dtype=req.get("dtype"),
        dequantize=bool(req.get("dequantize", False)),
        max_shard_size=req.get("max_shard_size", "5GB"),
        destination=rec.get("destination") or {},
        created_at=ts(rec["created_at"]),  # type: ignore[arg-type]
        started_at=ts(rec.get("started_at")),
        finished_at=ts(rec.get("finished_at")),
        attempts=rec.get("attempts", 0),
        progress=rec.get("progress"),
        phases=phases,
        plan=rec.get("plan"),
        result=rec.get("result"),
        error=rec.get("error"),
        owner=rec.get("owner") or None,
    )
