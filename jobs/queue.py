"""The queue both sides agree on: task names, the queue, and one Celery configuration.

The API sends tasks by name (:data:`TASK_CONVERT`, :data:`TASK_NOTIFY`) with a producer-only app
(:func:`make_celery`); the workers register the tasks under those names. Reliability settings, and why:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged only when it ends, so a worker
  process that dies mid-job (OOM, kill -9 of a pool child) has its task put back on the queue, not lost.
* ``worker_prefetch_multiplier=1``: a busy worker does not hold queued jobs that an idle one could run.
* A task is never stranded. kombu keeps each delivered, unacknowledged message in the ``unacked`` hash with its
  delivery time in ``unacked_index``, and every worker puts back on the queue the messages older than
  ``visibility_timeout`` (checked every ``unacked_restore_interval``). Each live worker re-dates the messages it
  holds (running, waiting for a retry) every quarter of the timeout (``jobs.running.start_heartbeat``), so only the
  messages of a worker that died get old: they are delivered again within ``visibility_timeout`` (30 s) plus the
  check interval (5 s), however long a task runs. A pool process that dies is noticed by its worker at once
  (``task_reject_on_worker_lost`` puts its message back).
* Warm shutdown (SIGTERM): the worker tells its pool processes to stop their conversions; each job goes back to
  ``queued`` and its message back on the queue (``jobs.running.Requeue``), so a restarted worker finishes it.
* ``task_acks_on_failure_or_timeout=False``: a task raises only if Redis stayed unreachable; it is then delivered
  again rather than leaving its job "running" forever.
"""

from __future__ import annotations

from typing import Any

from .settings import Settings

TASK_CONVERT = "ckpt_convert.convert"
TASK_PART = "ckpt_convert.write_part"
TASK_FINISH = "ckpt_convert.finish"
#: one attempt to deliver a job's completion webhook (``jobs.webhooks``); a failed one sends the next with a countdown
TASK_NOTIFY = "ckpt_convert.notify"
QUEUE = "ckpt-convert"
#: kombu's Redis keys for delivered, unacknowledged messages (its defaults, named here because the workers re-date
#: the messages they hold in the index)
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


def restore_interval(settings: Settings) -> float:
    """How often workers look for messages whose worker stopped vouching for them (and how often they vouch)."""
    return max(0.5, min(5.0, settings.visibility_timeout / 4))


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
            "unacked_key": UNACKED,
            "unacked_index_key": UNACKED_INDEX,
            # how often a worker looks for tasks whose worker died (not re-dated for the visibility timeout)
            "unacked_restore_interval": restore_interval(settings),
            "unacked_restore_throttle": 1,
            # a worker killed while it held the restore mutex (a few ms) must not stall recovery for long
            "unacked_mutex_expire": 30,
        },
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app
