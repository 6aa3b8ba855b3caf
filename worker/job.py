"""Running one job: open the source, plan, execute into the destination, report progress, honour cancel.

Idempotent: a job already finished is left alone; a re-run (redelivery after a lost worker) removes what the
lost run left behind and starts again; a job whose output was already published by a run that died just after
publishing is recognised by the job id recorded in the output's shard metadata and marked succeeded, never
published twice. A per-job lock keeps two deliveries of the same task from running at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from converter import plan
from converter.errors import CancelledError, ConversionError
from converter.execute import Progress, card_info, execute
from converter.safetensors_io import read_local_checkpoint
from converter.storage import LocalSink, LocalSource
from service.settings import Settings
from service.store import TERMINAL, JobStore, now

log = logging.getLogger(__name__)


class JobBusy(Exception):
    """Another delivery of this job holds its lock (it is running elsewhere)."""


class WorkerLostError(ConversionError):
    """The job was started more times than allowed: its workers kept dying."""


class _Reporter:
    """Turns executor progress into throttled job-record updates, phase timings and events."""

    def __init__(self, store: JobStore, job_id: str, interval: float) -> None:
        self.store, self.job_id, self.interval = store, job_id, interval
        self.phases: dict[str, dict[str, float]] = {}
        self.phase: str | None = None
        self.last = 0.0
        self.started = time.monotonic()
        self.bytes_done = 0
        self.bytes_total = 0

    def enter(self, phase: str) -> None:
        if phase == self.phase:
            return
        t = now()
        if self.phase is not None:
            self.phases[self.phase]["finished"] = t
        self.phases[phase] = {"started": t}
        self.phase = phase
        _best_effort(self.store.update, self.job_id, phases=self.phases)
        self.report(force=True)

    def final_phases(self) -> dict[str, dict[str, float]]:
        """The phase timings with the current phase closed (sent with the terminal transition)."""
        if self.phase is not None and "finished" not in self.phases[self.phase]:
            self.phases[self.phase]["finished"] = now()
        return self.phases

    def on_progress(self, ev: Progress) -> None:
        self.bytes_done, self.bytes_total = ev.bytes_done, ev.bytes_total
        self.tensors = (ev.tensors_done, ev.tensors_total)
        if ev.phase != self.phase:
            self.enter(ev.phase)
        else:
            self.report()

    def report(self, force: bool = False) -> None:
        t = time.monotonic()
        if not force and t - self.last < self.interval:
            return
        self.last = t
        elapsed = t - self.started
        rate = self.bytes_done / elapsed if elapsed > 0 and self.bytes_done else None
        eta = (self.bytes_total - self.bytes_done) / rate if rate else None
        done, total = getattr(self, "tensors", (0, 0))
        _best_effort(
            self.store.progress,
            self.job_id,
            {
                "phase": self.phase or "queued",
                "bytes_done": self.bytes_done,
                "bytes_total": self.bytes_total,
                "tensors_done": done,
                "tensors_total": total,
                "eta_seconds": eta,
                "bytes_per_second": rate,
            },
        )


def _best_effort(fn: Callable[..., Any], *args: Any, default: Any = None, **kwargs: Any) -> Any:
    """Progress and cancel checks must not kill a conversion while Redis restarts: log, carry on."""
    try:
        return fn(*args, **kwargs)
    except redis.RedisError as e:
        log.warning("job store unavailable (%s); the conversion continues", type(e).__name__)
        return default


def _until_redis_is_back(fn: Callable[..., Any], *args: Any, wait: float = 120.0, **kwargs: Any) -> Any:
    """A job's terminal transition is retried while Redis is away (up to ``wait`` seconds); if it still fails,
    the task fails unacknowledged and is delivered again (``task_acks_on_failure_or_timeout=False``)."""
    deadline, delay = time.monotonic() + wait, 0.5
    while True:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _cancel_poller(store: JobStore, job_id: str, every: float = 0.2) -> Callable[[], bool]:
    last = [0.0, False]

    def should_cancel() -> bool:
        t = time.monotonic()
        if t - last[0] >= every:
            last[0] = t
            last[1] = _best_effort(store.cancel_requested, job_id, default=last[1])
        return bool(last[1])

    return should_cancel


def conversion_key(rec: dict[str, Any], job_id: str) -> str:
    """Short id of the normalised request: the same conversion has the same key, whichever job runs it."""
    return str(rec.get("idem_hash") or job_id)[:16]


def _already_published(dest: Path, key: str) -> bool:
    """True if ``dest`` holds the output of this very conversion (a run that died right after publishing)."""
    if not dest.is_dir():
        return False
    try:
        index = read_local_checkpoint(dest)
    except ConversionError:
        return False
    return any(h.metadata.get("conversion") == key for h in index.shards.values())


def _open_source(rec: dict[str, Any], settings: Settings, token: str | None) -> Any:
    if rec.get("source_kind") == "local":
        return LocalSource(rec["source"])
    from converter.hub import HubSource

    # the commit resolved at submit time: every read of the job sees the same files
    return HubSource(
        rec["source"], rec.get("source_sha") or "main", token=token, endpoint=settings.hf_endpoint
    )


def _open_sink(
    rec: dict[str, Any], job_id: str, settings: Settings, token: str | None, source: Any, card: dict
) -> Any:
    dest = rec["destination"]
    if "local_path" in dest:
        root = source.root if isinstance(source, LocalSource) else None
        return LocalSink(dest["local_path"], source_root=root, tag=job_id)
    from converter.hub import HubSink

    return HubSink(
        dest["repo_id"],
        create_pr=dest.get("create_pr", False),
        private=dest.get("private", False),
        token=token,
        endpoint=settings.hf_endpoint,
        pr_key=conversion_key(rec, job_id),
        card=card,
    )


def run_job(
    store: JobStore, job_id: str, settings: Settings, *, worker: str, token: str | None = None
) -> str:
    """Run job ``job_id`` to a terminal status (or raise :class:`JobBusy`); returns the final status."""
    rec = store.get(job_id)
    if rec is None:
        return "missing"
    if rec["status"] in TERMINAL:
        return str(rec["status"])
    before_start = {"type": "CancelledError", "message": "cancelled before it started"}
    if store.cancel_requested(job_id) and store.transition(
        job_id, "queued", "cancelled", finished_at=now(), error=before_start
    ):
        return "cancelled"
    owner = f"{worker}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    ttl = settings.lock_ttl
    if not store.lock(job_id, owner, ttl):
        raise JobBusy(job_id)
    stop = threading.Event()

    def keep_lock() -> None:
        while not stop.wait(ttl / 3):
            _best_effort(store.refresh_lock, job_id, owner, ttl)

    threading.Thread(target=keep_lock, daemon=True).start()
    try:
        return _Run(store, job_id, rec, settings, worker, token).run()
    finally:
        stop.set()
        _best_effort(store.unlock, job_id, owner)


class _Run:
    """One attempt at a job. Every way out is one terminal transition that also records the phase timings, so a
    finished job's record never changes again (the API may cache it)."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        rec: dict[str, Any],
        settings: Settings,
        worker: str,
        token: str | None,
    ) -> None:
        self.store, self.job_id, self.rec, self.settings, self.worker, self.token = (
            store, job_id, rec, settings, worker, token,
        )  # fmt: skip
        self.rep = _Reporter(store, job_id, settings.progress_interval)
        self.key = conversion_key(rec, job_id)

    def finish(self, status: str, **fields: Any) -> str:
        ok = _until_redis_is_back(
            self.store.transition,
            self.job_id,
            "*",
            status,
            finished_at=now(),
            phases=self.rep.final_phases(),
            **fields,
        )
        return status if ok else str((self.store.get(self.job_id) or {}).get("status", "missing"))

    def run(self) -> str:
        store, job_id, rec, settings = self.store, self.job_id, self.rec, self.settings
        attempts = store.incr_attempts(job_id)
        if attempts > settings.max_attempts:
            e = WorkerLostError(f"the job was started {attempts - 1} times and its worker was lost each time")
            return self.finish("failed", error=e.to_dict())
        store.transition(job_id, ("queued", "running"), "running", started_at=now(), worker=self.worker)
        req = rec["request"]
        started = time.monotonic()
        rep = self.rep
        try:
            rep.enter("resolving")
            dest = rec["destination"]
            if "local_path" in dest and _already_published(Path(dest["local_path"]), self.key):
                return self.finish("succeeded", result={"output": dest["local_path"], "noop": False})
            source = _open_source(rec, settings, self.token)
            rep.enter("planning")
            p = plan(
                source,
                model_type=rec["model_type"],
                direction=req.get("direction", "forward"),
                dtype=req.get("dtype"),
                max_shard_size=req.get("max_shard_size", "5GB"),
                dequantize=bool(req.get("dequantize", False)),
            )
            store.update(job_id, plan=p.summary())
            rep.bytes_total = p.total_bytes
            if p.is_noop:
                noop = {
                    "output": rec["source"],
                    "noop": True,
                    "shards": [],
                    "bytes_written": 0,
                    "seconds": 0.0,
                }
                return self.finish("succeeded", result=noop)
            card = {
                **card_info(p),
                "source": f"{rec['source']}@{rec.get('source_sha') or rec.get('revision')}",
            }
            sink = _open_sink(rec, job_id, settings, self.token, source, card)
            if (published := getattr(sink, "already_published", lambda: None)()) is not None:
                return self.finish("succeeded", result={"output": published, "noop": False})
            res = execute(
                p,
                source,
                sink,
                progress=rep.on_progress,
                should_cancel=_cancel_poller(store, job_id),
                # the conversion key, not the job id: a retry of the same conversion writes the same bytes, so
                # shards a failed attempt already uploaded are not uploaded again
                metadata={"conversion": self.key},
                max_bytes_per_second=settings.max_bytes_per_second or None,
                commit_message=f"Convert {rec['source']} ({p.model_type}, {p.direction}) with ckpt-convert [{self.key}]",
            )
            s = res.summary()
            result = {
                "output": res.output,
                "noop": False,
                "shards": s["shards"],
                "copied_files": s["copied_files"],
                "skipped_files": s["skipped_files"],
                "bytes_written": s["bytes_written"],
                "seconds": s["seconds"],
            }
            status = self.finish("succeeded", result=result)
            if status == "succeeded":
                store.record_finished(res.bytes_written, time.monotonic() - started)
            return status
        except CancelledError as e:
            return self.finish("cancelled", error=e.to_dict())
        except ConversionError as e:
            return self.finish("failed", error=e.to_dict())
        except Exception as e:  # noqa: BLE001 - recorded on the job; the traceback goes to the worker log
            log.exception("job %s failed", job_id)
            return self.finish(
                "failed", error={"type": "InternalError", "message": f"{type(e).__name__}: {e}"[:1000]}
            )
