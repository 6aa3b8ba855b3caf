"""How a running job talks to the job store: progress reports (throttled, never blocking the conversion while
Redis is away), cancel checks, the job's lock, and terminal transitions retried until Redis is back. Used by the
workers; nothing here knows Celery."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from converter.executor import Progress

from .settings import Settings
from .store import JobStore, now

log = logging.getLogger(__name__)


class JobBusy(Exception):
    """Another delivery of this job holds its lock (it is running elsewhere)."""


def best_effort(fn: Callable[..., Any], *args: Any, default: Any = None, **kwargs: Any) -> Any:
    """Progress and cancel checks must not kill a conversion while Redis restarts: log, carry on."""
    try:
        return fn(*args, **kwargs)
    except redis.RedisError as e:
        log.warning("job store unavailable (%s); the conversion continues", type(e).__name__)
        return default


def until_redis_is_back(fn: Callable[..., Any], *args: Any, wait: float = 120.0, **kwargs: Any) -> Any:
    """A job's terminal transition is retried while Redis is away (up to ``wait`` seconds); if it still fails, the
    task fails unacknowledged and is delivered again."""
    deadline, delay = time.monotonic() + wait, 0.5
    while True:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class Reporter:
    """Executor progress -> throttled job-record updates, phase timings and events."""

    def __init__(self, store: JobStore, job_id: str, interval: float, phases: dict | None = None) -> None:
        self.store, self.job_id, self.interval = store, job_id, interval
        self.phases: dict[str, dict[str, float]] = dict(phases or {})
        self.phase: str | None = next(reversed(self.phases), None)
        self.last, self.started = 0.0, time.monotonic()
        self.bytes_done = self.bytes_total = self.tensors_done = self.tensors_total = 0

    def enter(self, phase: str) -> None:
        if phase == self.phase:
            return
        t = now()
        if self.phase is not None:
            self.phases[self.phase]["finished"] = t
        self.phases[phase] = {"started": t}
        self.phase = phase
        best_effort(self.store.update, self.job_id, phases=self.phases)
        self.report(force=True)

    def final_phases(self) -> dict[str, dict[str, float]]:
        if self.phase is not None and "finished" not in self.phases[self.phase]:
            self.phases[self.phase]["finished"] = now()
        return self.phases

    def on_progress(self, ev: Progress) -> None:
        self.bytes_done, self.bytes_total = ev.bytes_done, ev.bytes_total
        self.tensors_done, self.tensors_total = ev.tensors_done, ev.tensors_total
        self.enter(ev.phase) if ev.phase != self.phase else self.report()

    def report(self, force: bool = False) -> None:
        t = time.monotonic()
        if not force and t - self.last < self.interval:
            return
        self.last, elapsed = t, t - self.started
        rate = self.bytes_done / elapsed if elapsed > 0 and self.bytes_done else None
        eta = (self.bytes_total - self.bytes_done) / rate if rate else None
        progress = {"phase": self.phase or "queued", "bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
                    "tensors_done": self.tensors_done, "tensors_total": self.tensors_total, "eta_seconds": eta,
                    "bytes_per_second": rate}  # fmt: skip
        best_effort(self.store.progress, self.job_id, progress)


def cancel_poller(store: JobStore, job_id: str, every: float = 0.2) -> Callable[[], bool]:
    last = [0.0, False]

    def should_cancel() -> bool:
        t = time.monotonic()
        if t - last[0] >= every:
            last[0] = t
            last[1] = best_effort(store.cancel_requested, job_id, default=last[1])
        return bool(last[1])

    return should_cancel


@contextmanager
def job_lock(store: JobStore, job_id: str, settings: Settings, worker: str) -> Iterator[None]:
    """Hold the job's lock (refreshed in the background) or raise :class:`JobBusy`."""
    owner, ttl = f"{worker}:{os.getpid()}:{uuid.uuid4().hex[:6]}", settings.lock_ttl
    if not store.lock(job_id, owner, ttl):
        raise JobBusy(job_id)
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(ttl / 3):
            best_effort(store.refresh_lock, job_id, owner, ttl)

    threading.Thread(target=keep, daemon=True).start()
    try:
        yield
    finally:
        stop.set()
        best_effort(store.unlock, job_id, owner)


def start_heartbeat(
    store: Callable[[], JobStore], name: str, stop: threading.Event, every: float = 5.0
) -> None:
    """Record ``name`` as alive in the job store every ``every`` seconds until ``stop`` is set (GET /readyz counts
    live workers); a Redis outage only skips beats."""

    def beat() -> None:
        while not stop.is_set():
            try:
                store().heartbeat(name)
            except Exception:  # noqa: BLE001 - Redis briefly away: try again next beat
                log.warning("heartbeat failed", exc_info=True)
            stop.wait(every)

    threading.Thread(target=beat, name="ckpt-heartbeat", daemon=True).start()
