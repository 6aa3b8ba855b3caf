"""Celery tasks: thin and idempotent; the work is in ``converter.job`` (run through ``worker.run``).

A job is one ``convert`` task; a job with several output shards hands them to ``write_part`` subtasks (a chord),
whose callback ``finish`` writes the index and makes the one commit.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from typing import Any

from celery import chord, signals

from jobs.queue import TASK_CONVERT, TASK_FINISH, TASK_PART
from jobs.running import JobBusy, start_heartbeat
from jobs.settings import get_settings
from jobs.store import JobStore, store_for

from .app import app
from .run import finish_parts, run_job, run_part


@functools.cache
def store() -> JobStore:
    return store_for(get_settings())


def hostname() -> str:
    return os.environ.get("CKPT_CONVERT_WORKER_NAME") or socket.gethostname()


def _token(request: Any) -> str | None:
    """The per-job Hub token travels in the task message headers only (never in the job record)."""
    return getattr(request, "hf_token", None) or (getattr(request, "headers", None) or {}).get("hf_token")


def _name(request: Any) -> str:
    return request.hostname or hostname()


@app.task(name=TASK_CONVERT, bind=True, max_retries=None)
def convert_job(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    """Run job ``job_id``; if another delivery of it is running, check again later."""
    token = _token(self.request)
    headers = {"hf_token": token} if token else None

    def dispatch(job: str, groups: list[list[int]]) -> None:
        parts = [write_part.si(job, i, g).set(headers=headers) for i, g in enumerate(groups)]
        chord(parts)(finish.s(job).set(headers=headers))

    try:
        return run_job(
            store(), job_id, get_settings(), worker=_name(self.request), token=token, dispatch=dispatch
        )
    except JobBusy:
        raise self.retry(countdown=get_settings().lock_ttl) from None


@app.task(name=TASK_PART, bind=True)
def write_part(self, job_id: str, part: int, indices: list[int]) -> dict:  # type: ignore[no-untyped-def]
    """Write (and pre-upload) some output shards of a job; about one shard long, safe to run twice."""
    return run_part(
        store(), job_id, part, indices, get_settings(), worker=_name(self.request), token=_token(self.request)
    )


@app.task(name=TASK_FINISH, bind=True, max_retries=None)
def finish(self, parts: list[dict], job_id: str) -> str:  # type: ignore[no-untyped-def]
    """The chord callback: index, copied files, the one commit."""
    try:
        return finish_parts(
            store(), job_id, parts, get_settings(), worker=_name(self.request), token=_token(self.request)
        )
    except JobBusy:
        raise self.retry(countdown=get_settings().lock_ttl) from None


# --- heartbeats: GET /readyz counts live workers --------------------------------------------------------------
_stop = threading.Event()


@signals.worker_ready.connect
def _start_heartbeat(sender=None, **_):  # type: ignore[no-untyped-def]
    start_heartbeat(store, getattr(sender, "hostname", None) or hostname(), _stop)


@signals.worker_shutdown.connect
def _stop_heartbeat(**_):  # type: ignore[no-untyped-def]
    _stop.set()
