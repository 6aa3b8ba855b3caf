"""The Celery task: thin, idempotent; all the work is in ``worker.job.run_job`` and the converter library."""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import signals

from service.settings import get_settings
from service.store import JobStore

from .app import TASK_CONVERT, app
from .job import JobBusy, run_job

log = logging.getLogger(__name__)
_store: JobStore | None = None


def store() -> JobStore:
    global _store
    if _store is None:
        _store = JobStore(get_settings().redis_url or "redis://127.0.0.1:6379/0")
    return _store


def hostname() -> str:
    return os.environ.get("CKPT_CONVERT_WORKER_NAME") or socket.gethostname()


@app.task(name=TASK_CONVERT, bind=True, max_retries=None)
def convert_job(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    """Run job ``job_id``; if another delivery of it is running, check again later."""
    try:
        # the Hub token of this job travels with the task message only (never in the job record)
        token = getattr(self.request, "hf_token", None) or (getattr(self.request, "headers", None) or {}).get(
            "hf_token"
        )
        return run_job(
            store(), job_id, get_settings(), worker=self.request.hostname or hostname(), token=token
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
