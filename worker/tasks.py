"""Celery tasks: thin and idempotent; the work is in ``converter.job`` (run through ``worker.run``).

A job is one ``convert`` task; a job with several output shards hands them to ``write_part`` subtasks (a chord),
whose callback ``finish`` writes the index and makes the one commit. A job that ends has its webhooks' first attempt
made right there (not queued behind other jobs); a failed attempt sends a ``notify`` task for the next. The
heartbeat thread also sweeps for webhooks whose worker died (``jobs.webhooks.sweep``) and sends them again.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from typing import Any

from celery import chord, signals
from celery.exceptions import Reject

from jobs.queue import TASK_CONVERT, TASK_FINISH, TASK_NOTIFY, TASK_PART, UNACKED_INDEX, restore_interval
from jobs.running import JobBusy, Requeue, drain, drain_on_signal, start_heartbeat
from jobs.secret import TOKEN_HEADER, SecretKeyError, unseal
from jobs.settings import get_settings
from jobs.store import TERMINAL, JobStore, now, store_for
from jobs.webhooks import attempt, on_end, sweep

from .app import app
from .run import finish_parts, run_job, run_part


@functools.cache
def store() -> JobStore:
    return store_for(get_settings())


def hostname() -> str:
    return os.environ.get("CKPT_CONVERT_WORKER_NAME") or socket.gethostname()


def _sealed(request: Any) -> str | None:
    """The per-job Hub token travels sealed in the task message headers only (never in the job record)."""
    return getattr(request, TOKEN_HEADER, None) or (getattr(request, "headers", None) or {}).get(TOKEN_HEADER)


def _run(self: Any, job_id: str, fn: Any, *args: Any, **kw: Any) -> Any:
    """``fn`` with the job's Hub token unsealed; a worker shutting down puts the message back on the queue."""
    try:
        token = unseal(sealed, get_settings().secret) if (sealed := _sealed(self.request)) else None
        return fn(
            store(),
            job_id,
            *args,
            get_settings(),
            worker=self.request.hostname or hostname(),
            token=token,
            **kw,
        )
    except SecretKeyError as e:
        store().transition(job_id, "*", "failed", finished_at=now(), error=e.to_dict())
        return {"error": e.to_dict()} if fn is run_part else "failed"
    except Requeue:
        raise Reject("worker shutting down: the job goes back to the queue", requeue=True) from None


@app.task(name=TASK_CONVERT, bind=True, max_retries=None)
def convert_job(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    """Run job ``job_id``; if another delivery of it is running, check again later."""
    headers = {TOKEN_HEADER: sealed} if (sealed := _sealed(self.request)) else None

    def dispatch(job: str, groups: list[list[int]]) -> None:
        parts = [write_part.si(job, i, g).set(headers=headers) for i, g in enumerate(groups)]
        chord(parts)(finish.s(job).set(headers=headers))

    try:
        return _ended(job_id, _run(self, job_id, run_job, dispatch=dispatch))
    except JobBusy:
        raise self.retry(countdown=get_settings().lock_ttl) from None


@app.task(name=TASK_PART, bind=True)
def write_part(self, job_id: str, part: int, indices: list[int]) -> dict:  # type: ignore[no-untyped-def]
    """Write (and pre-upload) some output shards of a job; about one shard long, safe to run twice."""
    return _run(self, job_id, run_part, part, indices)


@app.task(name=TASK_FINISH, bind=True, max_retries=None)
def finish(self, parts: list[dict], job_id: str) -> str:  # type: ignore[no-untyped-def]
    """The chord callback: index, copied files, the one commit."""
    try:
        return _ended(job_id, _run(self, job_id, finish_parts, parts))
    except JobBusy:
        raise self.retry(countdown=get_settings().lock_ttl) from None


def _ended(job_id: str, status: str) -> str:
    """Whatever ended the job (this run, or an earlier one before its worker died), its webhooks go out once."""
    if status in TERMINAL:
        on_end(store(), job_id, _deliver, get_settings())
    return status


def _deliver(job_id: str, subscriber: str, claim: int | None = None) -> None:
    if (delay := attempt(store(), job_id, subscriber, get_settings(), claim)) is not None:
        notify.apply_async(args=[job_id, subscriber, claim], countdown=delay)


@app.task(name=TASK_NOTIFY)
def notify(job_id: str, subscriber: str, claim: int | None = None) -> None:
    """One attempt to deliver a job's webhook (``jobs.webhooks.attempt``) if ``claim`` is still its claim; a failure
    sends the next, later."""
    _deliver(job_id, subscriber, claim)


# --- liveness: GET /readyz counts live workers; each worker vouches for the messages it holds (jobs.queue) --------
_stop, _consumer = threading.Event(), []


def _held() -> list[str]:
    """Delivery tags of the messages this worker holds: running, reserved, or waiting for a retry's countdown."""
    from celery.worker import state

    return [r.message.delivery_tag for r in list(state.requests.values()) if getattr(r, "message", None)]


@signals.worker_ready.connect
def _start_heartbeat(sender=None, **_):  # type: ignore[no-untyped-def]
    _consumer.append(sender)
    s = get_settings()
    name, every = getattr(sender, "hostname", None) or hostname(), restore_interval(s)
    resend = lambda job, sub, claim: notify.apply_async(args=[job, sub, claim])  # noqa: E731
    chore = (s.webhook_sweep_interval, lambda: sweep(store(), s, resend))
    start_heartbeat(store, name, _stop, every, held=(UNACKED_INDEX, _held), chore=chore)


@signals.worker_shutting_down.connect
def _drain_pool(**_):  # type: ignore[no-untyped-def]
    """Warm shutdown: running conversions stop at once; their jobs and messages go back to the queue."""
    for c in _consumer:
        drain(c.pool.info.get("processes", []) if c.pool else [])


@signals.worker_process_init.connect
def _on_drain(**_):  # type: ignore[no-untyped-def]
    drain_on_signal()


@signals.worker_shutdown.connect
def _stop_heartbeat(**_):  # type: ignore[no-untyped-def]
    _stop.set()
