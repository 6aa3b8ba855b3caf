"""Request and response bodies of the API (pydantic), with the examples the OpenAPI docs show. The rules documents
(``GET /rules``, ``GET /rules/{model_type}``, the preview) are in :mod:`service.rules_models`; the job
(``GET /jobs/{id}``) in :mod:`jobs.view`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

# the job as the API shows it is shared with the workers (a completion webhook carries it): it lives in jobs.view
from jobs.view import (  # noqa: F401 - re-exported: the API's models are all found here
    Direction,
    Job,
    JobError,
    JobResult,
    PhaseTiming,
    Progress,
    ShardInfo,
    Status,
    SubtaskInfo,
    WebhookDelivery,
    job_from_record,
    phases_of,
    record_fields,
    ts,
)
from jobs.webhooks import check_secret


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


class NotifyRequest(BaseModel):
    """A webhook when the job ends: a POST to ``url`` signed as the Standard Webhooks spec says (``webhook-id``,
    ``webhook-timestamp``, ``webhook-signature``), retried with backoff. ``url`` must resolve to public addresses
    only (unless CKPT_CONVERT_WEBHOOK_ALLOW allows more); the secret is never stored in the clear nor shown."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://ci.example.com/hooks/ckpt-convert",
                    "secret": "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3",
                }
            ]
        },
    )
    url: str = Field(max_length=2000, description="http(s) URL to POST to when the job ends")
    secret: SecretStr = Field(
        description="`whsec_` + base64 of 24 to 64 random bytes: the receiver verifies each delivery's signature "
        "with it (e.g. the standardwebhooks library's `Webhook(secret).verify(body, headers)`)"
    )

    @field_validator("secret")
    @classmethod
    def _secret_format(cls, v: SecretStr) -> SecretStr:
        check_secret(v.get_secret_value())
        return v


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
    notify: NotifyRequest | None = Field(
        None,
        description="a webhook when the job ends. Not part of the conversion: a submission that gets an existing "
        "job adds its webhook to it (one per URL; a job that already finished gets none: the response is its final "
        "record)",
    )

    @model_validator(mode="before")
    @classmethod
    def _hide_secret(cls, data: Any) -> Any:
        """The webhook secret as a SecretStr before anything else is validated, so that no validation error (422)
        quotes it: it shows as ``**********``."""
        if (
            isinstance(data, dict)
            and isinstance(n := data.get("notify"), dict)
            and isinstance(n.get("secret"), str)
        ):
            data = {**data, "notify": {**n, "secret": SecretStr(n["secret"])}}
        return data


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


#: what ``include=`` may add to the items of ``GET /jobs``
INCLUDES = ("plan", "phases", "result")


def summary_from_record(rec: dict[str, Any], include: frozenset[str] = frozenset()) -> JobSummary:
    """A store record (at least :data:`jobs.store.SUMMARY_FIELDS`, plus the fields of ``include``) -> a list item
    (``GET /jobs`` leaves ``plan`` and ``phases`` out of its JSON unless they are included)."""
    res = rec.get("result")
    extra: dict[str, Any] = {}
    if "plan" in include:
        extra["plan"] = rec.get("plan")
    if "phases" in include:
        extra["phases"] = phases_of(rec)
    return JobSummary(
        **record_fields(rec),
        result=None
        if res is None
        else JobResult.model_validate(res)
        if "result" in include
        else ResultSummary.model_validate(
            {k: res[k] for k in ("output", "noop", "bytes_written") if k in res}
        ),
        **extra,
    )
