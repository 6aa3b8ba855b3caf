"""The workers' Celery app: the shared configuration (``jobs.queue``) on ``REDIS_URL``, with the tasks registered."""

from __future__ import annotations

from jobs.queue import make_celery
from jobs.settings import get_settings

app = make_celery(get_settings(), include=["worker.tasks"])
