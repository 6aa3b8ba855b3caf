"""How a running job talks to the job store: progress reports and cancel checks (done by a background thread, so
that the conversion never waits on Redis), the job's lock (its heartbeat), terminal transitions retried until Redis
is back, the workers' heartbeat, and the drain of a worker that is shutting down. Used by the workers; nothing here
knows Celery."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis

from converter.executor import Progress

from .settings import Settings
from .store import JobStore, now

log = logging.getLogger(__name__)


class JobBusy(Exception):
    """Another delivery of this job holds its lock (it is running elsewhere)."""


class Requeue(Exception):
    """This worker is shutting down: the job went back to ``queued``; its task message must go back on the queue
    (not acknowledged), so that the next worker runs it."""


#: set in a pool process when its worker shuts down (warm shutdown): running conversions stop at their next chunk,
#: discard what they wrote and go back to the queue (:class:`Requeue`)
DRAIN = threading.Event()
DRAIN_SIGNAL = signal.SIGUSR2


def drain_on_signal() -> None:
    """In a pool process: :data:`DRAIN_SIGNAL` sets :data:`DRAIN`."""
    signal.signal(DRAIN_SIGNAL, lambda *_: DRAIN.set())


def drain(pids: Iterable[int]) -> None:
    """From a worker shutting down: tell its pool processes to put their jobs back on the queue."""
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, DRAIN_SIGNAL)


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


class Outbox:
    """A running job's writes to the job store and its cancel checks, done by a background thread so that the
    conversion never waits on Redis. While Redis is away, writes wait and are retried with back-off (a newer write of
    the same kind replaces a waiting one: the latest progress wins) and the cancel flag keeps its last known value."""

    def __init__(
        self, store: JobStore, job_id: str, poll: float = 0.2, lost: threading.Event | None = None
    ) -> None:
        self.store, self.job_id, self.poll = store.quick(), job_id, poll
        self.lost = lost or threading.Event()  # set by job_lock when another delivery took the job's lock
        self.cancel_requested = False
        self._pending: dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]] = {}
        self._cv = threading.Condition()
        self._until: float | None = None  # set by close(): write what is waiting until then, then stop
        self._thread = threading.Thread(target=self._run, name="ckpt-outbox", daemon=True)
        self._thread.start()

    def put(self, kind: str, method: str, *args: Any, **kwargs: Any) -> None:
        """Call ``JobStore.<method>(*args, **kwargs)`` soon; replaces a waiting write of the same ``kind``."""
        with self._cv:
            self._pending[kind] = (method, args, kwargs)
            self._cv.notify()

    def should_cancel(self) -> bool:
        """The conversion's cancel check: the job was cancelled, this worker is shutting down, or another delivery
        took the job over (after a long Redis outage): stopping, it cannot publish a folder the other is writing."""
        return self.cancel_requested or DRAIN.is_set() or self.lost.is_set()

    def close(self, flush: float = 5.0) -> None:
        """Write what is waiting (for at most ``flush`` seconds), then stop the thread."""
        with self._cv:
            if self._until is None:
                self._until = time.monotonic() + flush
            self._cv.notify()
        self._thread.join(flush + 3)

    def _run(self) -> None:
        delay, next_poll = 0.0, 0.0
        while True:
            with self._cv:
                if self._until is not None and (not self._pending or time.monotonic() >= self._until):
                    return
                batch, self._pending = self._pending, {}
            ok = self._write(batch)
            if ok and self._until is None and time.monotonic() >= next_poll:
                ok, next_poll = self._poll(), time.monotonic() + self.poll
            delay = 0.0 if ok else min(max(0.5, 2 * delay), 5.0)
            retry_at = time.monotonic() + delay
            with self._cv:  # wait out the back-off; else wait for a write, the next poll or close()
                while (t := time.monotonic()) < (end := self._until or float("inf")):
                    if delay:
                        if t >= retry_at:
                            break
                        self._cv.wait(min(retry_at, end) - t)
                    elif self._pending or self._until is not None or t >= next_poll:
                        break
                    else:
                        self._cv.wait(next_poll - t)

    def _write(self, batch: dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]]) -> bool:
        for i, (method, args, kwargs) in enumerate(batch.values()):
            try:
                getattr(self.store, method)(*args, **kwargs)
            except redis.RedisError:
                with self._cv:  # put back what was not written, unless a newer one of its kind is waiting
                    for k, call in list(batch.items())[i:]:
                        self._pending.setdefault(k, call)
                return False
            except Exception:  # noqa: BLE001 - a bad write is dropped; the conversion goes on
                log.exception("job %s: %s not written", self.job_id, method)
        return True

    def _poll(self) -> bool:
        try:
            self.cancel_requested = self.cancel_requested or self.store.cancel_requested(self.job_id)
        except redis.RedisError:
            return False
        return True


class Reporter:
    """Executor progress -> throttled job-record updates, phase timings and events (written by an :class:`Outbox`)."""

    def __init__(self, out: Outbox, interval: float, phases: dict | None = None) -> None:
        self.out, self.job_id, self.interval = out, out.job_id, interval
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
        self.out.put("phases", "update", self.job_id, phases={k: dict(v) for k, v in self.phases.items()})
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
        self.out.put("progress", "progress", self.job_id, progress)


@contextmanager
def job_lock(store: JobStore, job_id: str, settings: Settings, worker: str) -> Iterator[threading.Event]:
    """Hold the job's lock or raise :class:`JobBusy`. Refreshed in the background every quarter of ``lock_ttl``, it
    is the job's heartbeat: it expires ``lock_ttl`` after its worker died. Yields an event set if the lock expired
    (Redis away for longer than ``lock_ttl``) and another delivery took it: the job is that delivery's now."""
    owner, ttl = f"{worker}:{os.getpid()}:{uuid.uuid4().hex[:6]}", settings.lock_ttl
    if not store.lock(job_id, owner, ttl):
        raise JobBusy(job_id)
    stop, lost, quick = threading.Event(), threading.Event(), store.quick()

    def keep() -> None:
        while not stop.wait(ttl / 4):
            if best_effort(quick.refresh_lock, job_id, owner, ttl, default=True) is False:
                log.warning("job %s: another delivery took its lock while Redis was away; stopping", job_id)
                lost.set()
                return

    threading.Thread(target=keep, daemon=True).start()
    try:
        yield lost
    finally:
        stop.set()
        best_effort(store.unlock, job_id, owner)


def start_heartbeat(
    store: Callable[[], JobStore],
    name: str,
    stop: threading.Event,
    every: float = 5.0,
    held: tuple[str, Callable[[], Iterable[str]]] | None = None,
    chore: tuple[float, Callable[[], Any]] | None = None,
) -> None:
    """Record ``name`` as alive in the job store every ``every`` seconds until ``stop`` is set (GET /readyz counts
    live workers), and with ``held`` = (the broker's index of unacknowledged messages, the delivery tags this worker
    holds), vouch for those messages (see ``jobs.queue``); a Redis outage only skips beats. ``chore`` = (interval,
    fn): also call ``fn`` every interval seconds (the webhook sweep); its failures are logged."""

    def beat() -> None:
        next_chore = time.monotonic()
        while not stop.is_set():
            try:
                store().heartbeat(name)
                if held is not None:
                    store().vouch(held[0], held[1]())
                wait = every
            except Exception:  # noqa: BLE001 - Redis away: vouch as soon as it is back, before others restore
                log.warning("heartbeat failed", exc_info=True)
                wait = min(every, 0.5)
            if chore is not None and time.monotonic() >= next_chore:
                next_chore = time.monotonic() + chore[0]
                try:
                    chore[1]()
                except Exception:  # noqa: BLE001 - Redis or the broker away: the next round tries again
                    log.warning("heartbeat chore failed", exc_info=True)
            stop.wait(min(wait, max(0.05, next_chore - time.monotonic())) if chore is not None else wait)

    threading.Thread(target=beat, name="ckpt-heartbeat", daemon=True).start()
