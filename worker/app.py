"""The Celery app: Redis is broker and result backend (``REDIS_URL``).

Reliability settings, and why:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged only when it ends, so a worker
  process that dies mid-job (OOM, kill -9 of a pool child) has its task put back on the queue, not lost.
* ``worker_prefetch_multiplier=1``: a busy worker does not hold queued jobs that an idle one could run.
* ``visibility_timeout`` (``CKPT_CONVERT_VISIBILITY_TIMEOUT``, default 6 h): Redis redelivers a task not
  acknowledged within this time, which is also how a job whose whole worker died is picked up again. It must be
  longer than the longest task, or a running task is delivered a second time; the job lock (``worker/job.py``)
  then keeps the copy from running concurrently, and job fan-out into per-shard tasks keeps each task short.
* ``task_acks_on_failure_or_timeout=False``: a task raises only if Redis stayed unreachable; it is then delivered
  again rather than leaving its job "running" forever.
* The cap on redeliveries is ``CKPT_CONVERT_MAX_ATTEMPTS`` (default 3), counted in the job record: a job whose
  worker keeps dying ends ``failed`` with ``WorkerLostError`` instead of looping forever.
"""

from __future__ import annotations

from celery import Celery

from service.settings import get_settings

TASK_CONVERT = "ckpt_convert.convert"
QUEUE = "ckpt-convert"


def make_celery() -> Celery:
    s = get_settings()
    url = s.redis_url or "redis://127.0.0.1:6379/0"
    app = Celery("ckpt_convert", broker=url, backend=url, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # a task only raises when the job store itself is unreachable (job errors are recorded, not raised): leave
        # its message unacknowledged so that it is delivered again instead of the job staying "running"
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        broker_transport_options={
            "visibility_timeout": s.visibility_timeout,
            # how often a worker looks for tasks whose worker died (older than the visibility timeout)
            "unacked_restore_interval": max(1.0, min(60.0, s.visibility_timeout / 4)),
            "unacked_restore_throttle": 1,
        },
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


app = make_celery()
