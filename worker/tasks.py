"""Celery tasks: thin and idempotent; the work is in ``worker.job`` and the converter library.

A job is one ``convert`` task; a job with several output shards hands them to ``write_part`` subtasks (a chord),
whose callback ``finish`` writes the index and makes the one commit.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import chord, signals

from service.settings import get_settings
from service.store import JobStore

from .app import TASK_CONVERT, app
from .job import JobBusy, finish_parts, run_job, run_part

log = logging.getLogger(__name__)
TASK_PART = "ckpt_convert.write_part"
TASK_FINISH = "ckpt_convert.finish"
_store: JobStore | None = None


def store() -> JobStore:
    global _store
    if _store is None:
        _store = JobStore(get_settings().redis_url or "redis://127.0.0.1:6379/0")
    return _store


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
    name = getattr(sender, "hostname", None) or hostname()

    def beat() -> None:
        while not _stop.is_set():
            try:
                store().heartbeat(name)
            except Exception:  # noqa: BLE001 - Redis briefly away: try again next beat
                log.warning("heartbeat failed", exc_info=True)
            _stop.wait(5)

    threading.Thread(target=beat, name="ckpt-heartbeat", daemon=True).start()


@signals.worker_shutdown.connect
def _stop_heartbeat(**_):  # type: ignore[no-untyped-def]
    _stop.set()
