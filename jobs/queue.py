"""The queue both sides agree on: task names, the queue, and one Celery configuration.

The API sends tasks by name (:data:`TASK_CONVERT`) with a producer-only app (:func:`make_celery`); the workers
register the tasks under those names. Reliability settings, and why:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged only when it ends, so a worker
  process that dies mid-job (OOM, kill -9 of a pool child) has its task put back on the queue, not lost.
* ``worker_prefetch_multiplier=1``: a busy worker does not hold queued jobs that an idle one could run.
* ``visibility_timeout`` (``CKPT_CONVERT_VISIBILITY_TIMEOUT``, default 1 h): Redis redelivers a task not
  acknowledged within this time, which is also how a job whose whole worker died is picked up again. It must be
  longer than the longest task, or a running task is delivered a second time; the job lock then keeps the copy from
  running concurrently, and job fan-out into per-shard tasks keeps each task short.
* ``task_acks_on_failure_or_timeout=False``: a task raises only if Redis stayed unreachable; it is then delivered
  again rather than leaving its job "running" forever.
"""

from __future__ import annotations

from typing import Any

from .settings import Settings

TASK_CONVERT = "ckpt_convert.convert"
TASK_PART = "ckpt_convert.write_part"
TASK_FINISH = "ckpt_convert.finish"
QUEUE = "ckpt-convert"


def make_celery(settings: Settings, *, include: list[str] | None = None) -> Any:
    """The Celery app on the settings' Redis (broker and result backend), configured for at-least-once delivery."""
    from celery import Celery

    url = settings.redis
    app = Celery("ckpt_convert", broker=url, backend=url, include=include or [])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # how often a worker looks for tasks whose worker died (older than the visibility timeout)
            "unacked_restore_interval": max(1.0, min(60.0, settings.visibility_timeout / 4)),
            "unacked_restore_throttle": 1,
        },
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app
