"""Submitting and cancelling jobs (no web framework here: routes call these).

``submit`` validates and normalises the request (resolving a Hub revision to its commit sha, reading the
source's config.json for its model_type), then either returns the existing job for the same normalised request
or creates one and queues its task. A request's ``notify`` (a completion webhook, :mod:`jobs.webhooks`) is not part
of the conversion: it is added to whichever job the request gets, new or existing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from converter.planner import resolve_model_type
from converter.safetensors_io import parse_size
from converter.spec import LOCAL, JobSpec
from converter.storage.local import check_apart, fingerprint
from jobs.settings import Settings
from jobs.store import TERMINAL, JobStore, now
from jobs.webhooks import Send, Subscription, on_end, subscription

from .errors import ConflictError, InvalidRequestError, JobNotFoundError, ServiceUnavailableError
from .models import ConvertRequest
from .sources import resolve_destination, resolve_source


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
    owner: str | None = None,
    own_jobs_only: bool = False,
    notify: Send | None = None,
) -> tuple[dict[str, Any], bool]:
    """Build the job's spec once (source resolved, model_type checked), then return the live job of the same spec
    or create and queue one. Returns ``(job record, created)``. ``owner``: the name of the API token submitting
    (the record keeps it); ``own_jobs_only`` (a submit token): a duplicate (same spec or ``Idempotency-Key``) is
    looked up among the owner's jobs only, so that no such token is handed a job it may not see. The request's
    webhook (its URL vetted before anything else) is added to the job returned unless that job already ended;
    ``notify`` sends a webhook task (a job failed here because the queue is down)."""
    hook = (
        subscription(req.notify.url, req.notify.secret.get_secret_value(), settings) if req.notify else None
    )
    request = req.model_dump(exclude={"notify"})  # the conversion asked for: what identifies the request
    raw_hash = request_hash(request)
    scope = owner if own_jobs_only and owner else None
    if scope and idempotency_key:
        idempotency_key = f"{scope}:{idempotency_key}"
    if idempotency_key:
        hit = store.idempotency_key(idempotency_key, raw_hash)
        if hit is not None:
            return _same_request(store, hit, raw_hash, hook)
    spec = build_spec(req, settings, hf_token)
    fields = {
        "request": request,
        "spec": spec.to_dict(),
        "source": spec.source.location,
        "source_kind": spec.source.kind,
        "revision": spec.source.revision or "local",
        "source_sha": spec.source.sha or "",
        "model_type": spec.model_type,
        "destination": destination_view(spec),
        "idem_hash": spec.key(),
    }
    if owner:
        fields["owner"] = owner
    idem = f"{spec.key()}:{scope}" if scope else spec.key()
    job_id, created = store.create(fields, idem_hash=idem, destination=destination_key(spec))
    if not created and output_changed(store.get(job_id)):
        # the same request succeeded before, but its output is gone or was changed since: run it again
        store.forget_request(idem, job_id)
        job_id, created = store.create(fields, idem_hash=idem, destination=destination_key(spec))
    if idempotency_key:
        hit = store.idempotency_key(idempotency_key, raw_hash, job_id)
        if hit is not None and hit[0] != job_id:  # a concurrent request with the same key won
            return _same_request(store, hit, raw_hash, hook)
    if hook is not None:  # before the task is queued: a new job cannot have ended yet
        store.subscribe(job_id, hook)
    if created:
        try:
            enqueue(job_id, hf_token)
        except Exception as e:  # noqa: BLE001 - the broker is down: the job must not stay queued forever
            error = {"type": "ServiceUnavailableError", "message": "queue unavailable"}
            store.transition(job_id, "queued", "failed", finished_at=now(), error=error)
            if notify is not None:
                on_end(store, job_id, notify)
            raise ServiceUnavailableError(f"cannot queue the job: {type(e).__name__}") from None
    rec = store.get(job_id)
    assert rec is not None
    return rec, created


def build_spec(req: ConvertRequest, settings: Settings, hf_token: str | None) -> JobSpec:
    """The request as a :class:`JobSpec`: sizes parsed, the source resolved (a Hub revision to its commit, a folder
    fingerprinted), model_type taken from config.json when not given (404 with close names if unknown, 422 if
    refused), the destination checked against the allowed roots and kept apart from the source."""
    try:
        max_shard = parse_size(req.max_shard_size)
    except ValueError as e:
        raise InvalidRequestError(str(e)) from None
    source, opened = resolve_source(req.source, req.revision, settings, hf_token)
    model_type = resolve_model_type(req.model_type, opened.read_config(), req.source)
    dest = resolve_destination(req.destination.model_dump(), settings, overwrite=req.overwrite)
    if source.kind == LOCAL and dest.kind == LOCAL:
        check_apart(dest.location, source.location)
    return JobSpec(source, dest, model_type, req.direction, req.dtype, max_shard, req.dequantize)


def destination_key(spec: JobSpec) -> str | None:
    """What a job claims while it writes: a folder, or a repo's branch (a pull request is the job's own)."""
    d = spec.destination
    if d.kind == LOCAL:
        return f"local:{d.location}"
    return None if d.create_pr else f"hub:{d.location}@{d.revision or 'main'}"


def output_changed(rec: dict[str, Any] | None) -> bool:
    """A succeeded job whose local output folder is gone, or no longer holds what the job wrote."""
    if not rec or rec.get("status") != "succeeded" or "local_path" not in (rec.get("destination") or {}):
        return False
    recorded = (rec.get("result") or {}).get("fingerprint")
    out = Path(rec["destination"]["local_path"])
    if not out.is_dir():
        return True
    return recorded is not None and fingerprint(out) != recorded


def destination_view(spec: JobSpec) -> dict[str, Any]:
    """The destination as the API shows it (``{"local_path"}`` or ``{"repo_id", "create_pr", "private"}``)."""
    d = spec.destination
    if d.kind == LOCAL:
        return {"local_path": d.location}
    return {"repo_id": d.location, "create_pr": d.create_pr, "private": d.private}


def _same_request(
    store: JobStore, hit: tuple[str, str], raw_hash: str, hook: Subscription | None
) -> tuple[dict[str, Any], bool]:
    job_id, h = hit
    if h != raw_hash:
        raise InvalidRequestError("Idempotency-Key was already used with a different request")
    if hook is not None:
        store.subscribe(job_id, hook)
    rec = store.get(job_id)
    if rec is None:
        raise JobNotFoundError(f"job {job_id} of this Idempotency-Key no longer exists")
    return rec, False


def cancel(store: JobStore, job_id: str, revoke: Any, notify: Send | None = None) -> dict[str, Any]:
    """Queued: cancelled at once (and its task revoked). Running: flagged; the task stops within seconds and
    publishes nothing. Running but its worker gone (the job's heartbeat expired): cancelled at once, since no worker
    will see the flag (a redelivery of its task removes what the lost run wrote). Finished: 409. A job cancelled
    here has its webhooks sent with ``notify`` (the worker sends those of a job it ends)."""
    rec = store.get(job_id)
    if rec is None:
        raise JobNotFoundError(f"no job {job_id}")
    if rec["status"] in TERMINAL:
        raise ConflictError(f"job {job_id} already {rec['status']}")
    store.request_cancel(job_id)
    cancelled = {"type": "CancelledError", "message": "cancelled before it started"}
    if store.transition(job_id, "queued", "cancelled", finished_at=now(), error=cancelled):
        revoke(job_id)
    else:
        gone = {"type": "CancelledError", "message": "cancelled; the worker running it was gone"}
        store.cancel_abandoned(job_id, finished_at=now(), error=gone)
    if notify is not None:
        on_end(store, job_id, notify)
    rec = store.get(job_id)
    assert rec is not None
    return rec
