"""Submitting and cancelling jobs (no web framework here: routes call these).

``submit`` validates and normalises the request (resolving a Hub revision to its commit sha, reading the
source's config.json for its model_type), then either returns the existing job for the same normalised request
or creates one and queues its task.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from converter.planner import resolve_model_type
from converter.safetensors_io import parse_size

from .errors import ConflictError, InvalidRequestError, JobNotFoundError, ServiceUnavailableError
from .models import ConvertRequest
from .settings import Settings
from .sources import normalise_destination, read_source_config, resolve_source
from .store import TERMINAL, JobStore, now


def request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def submit(
    req: ConvertRequest,
    store: JobStore,
    settings: Settings,
    enqueue: Any,
    *,
    idempotency_key: str | None = None,
    hf_token: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Returns ``(job record, created)``."""
    raw_hash = request_hash(req.model_dump())
    if idempotency_key:
        hit = store.idempotency_key(idempotency_key, raw_hash)
        if hit is not None:
            return _same_request(store, hit, raw_hash)
    try:
        max_shard = parse_size(req.max_shard_size)
    except ValueError as e:
        raise InvalidRequestError(str(e)) from None
    src = resolve_source(req.source, req.revision, settings, hf_token)
    config = read_source_config(src, settings, hf_token)
    model_type = resolve_model_type(
        req.model_type, config, req.source
    )  # 404 with close names, 422 if unsupported
    dest = normalise_destination(req.destination.model_dump(), src, settings)
    normalised = {
        "source": src.id,
        "source_sha": src.sha,
        "model_type": model_type,
        "direction": req.direction,
        "dtype": req.dtype,
        "dequantize": req.dequantize,
        "max_shard_size": max_shard,
        "destination": dest,
    }
    fields = {
        "request": req.model_dump(),
        "source": src.id,
        "source_kind": src.kind,
        "revision": src.revision,
        "source_sha": src.sha or "",
        "model_type": model_type,
        "destination": dest,
    }
    idem = request_hash(normalised)
    fields["idem_hash"] = idem
    job_id, created = store.create(fields, idem_hash=idem)
    if idempotency_key:
        hit = store.idempotency_key(idempotency_key, raw_hash, job_id)
        if hit is not None and hit[0] != job_id:  # a concurrent request with the same key won
            return _same_request(store, hit, raw_hash)
    if created:
        try:
            enqueue(job_id, hf_token)
        except Exception as e:  # noqa: BLE001 - the broker is down: the job must not stay queued forever
            error = {"type": "ServiceUnavailableError", "message": "queue unavailable"}
            store.transition(job_id, "queued", "failed", finished_at=now(), error=error)
            raise ServiceUnavailableError(f"cannot queue the job: {type(e).__name__}") from None
    rec = store.get(job_id)
    assert rec is not None
    return rec, created


def _same_request(store: JobStore, hit: tuple[str, str], raw_hash: str) -> tuple[dict[str, Any], bool]:
    job_id, h = hit
    if h != raw_hash:
        raise InvalidRequestError("Idempotency-Key was already used with a different request")
    rec = store.get(job_id)
    if rec is None:
        raise JobNotFoundError(f"job {job_id} of this Idempotency-Key no longer exists")
    return rec, False


def cancel(store: JobStore, job_id: str, revoke: Any) -> dict[str, Any]:
    """Queued: cancelled at once (and its task revoked). Running: flagged; the task stops within seconds and
    publishes nothing. Finished: 409."""
    rec = store.get(job_id)
    if rec is None:
        raise JobNotFoundError(f"no job {job_id}")
    if rec["status"] in TERMINAL:
        raise ConflictError(f"job {job_id} already {rec['status']}")
    store.request_cancel(job_id)
    cancelled = {"type": "CancelledError", "message": "cancelled before it started"}
    if store.transition(job_id, "queued", "cancelled", finished_at=now(), error=cancelled):
        revoke(job_id)
    rec = store.get(job_id)
    assert rec is not None
    return rec
