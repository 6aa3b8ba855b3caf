"""Running one job: open the source, plan, execute into the destination, report progress, honour cancel.

Idempotent: a job already finished is left alone; a re-run (redelivery after a lost worker) removes what the
lost run left behind and starts again; a job whose output was already published by a run that died just after
publishing is recognised by the job id recorded in the output's shard metadata and marked succeeded, never
published twice. A per-job lock keeps two deliveries of the same task from running at once.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from converter import plan
from converter.errors import CancelledError, ConversionError
from converter.executor import Meter, Progress, ShardWritten, card_info, execute, publish, write_shards
from converter.planner import Plan
from converter.safetensors_io import CheckpointIndex, read_local_checkpoint
from converter.storage import CachedSource, LocalSink, LocalSource
from service.settings import Settings
from service.store import TERMINAL, JobStore, now

log = logging.getLogger(__name__)


class JobBusy(Exception):
    """Another delivery of this job holds its lock (it is running elsewhere)."""


class WorkerLostError(ConversionError):
    """The job was started more times than allowed: its workers kept dying."""


class _Reporter:
    """Turns executor progress into throttled job-record updates, phase timings and events."""

    def __init__(
        self, store: JobStore, job_id: str, interval: float, phases: dict[str, dict[str, float]] | None = None
    ) -> None:
        """``phases``: the timings so far, when a later task of the same job carries on."""
        self.store, self.job_id, self.interval = store, job_id, interval
        self.phases: dict[str, dict[str, float]] = dict(phases or {})
        self.phase: str | None = next(reversed(self.phases), None)
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
    rec: dict[str, Any],
    job_id: str,
    settings: Settings,
    token: str | None,
    source: Any,
    card: dict,
    pr_revision: str | None = None,
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
        pr_revision=pr_revision,
        base_model=rec["source"] if rec.get("source_kind") == "hub" else None,
    )


def _plan(rec: dict[str, Any], source: Any) -> Plan:
    req = rec["request"]
    return plan(
        source,
        model_type=rec["model_type"],
        direction=req.get("direction", "forward"),
        dtype=req.get("dtype"),
        max_shard_size=req.get("max_shard_size", "5GB"),
        dequantize=bool(req.get("dequantize", False)),
    )


def _card(rec: dict[str, Any], p: Plan) -> dict[str, str]:
    return {**card_info(p), "source": f"{rec['source']}@{rec.get('source_sha') or rec.get('revision')}"}


def _commit_message(rec: dict[str, Any], p: Plan, key: str) -> str:
    return f"Convert {rec['source']} ({p.model_type}, {p.direction}) with ckpt-convert [{key}]"


def _result(
    output: str,
    shards: list[ShardWritten],
    copied: list[str],
    skipped: list[str],
    seconds: float,
    warnings: list[str],
) -> dict:
    return {
        "output": output,
        "noop": False,
        "shards": [{"file": s.file, "size": s.size} for s in shards],
        "copied_files": copied,
        "skipped_files": skipped,
        "warnings": warnings,
        "bytes_written": sum(s.size for s in shards),
        "seconds": round(seconds, 3),
    }


Dispatch = Callable[[str, list[list[int]]], None]


@contextmanager
def _job_lock(store: JobStore, job_id: str, settings: Settings, worker: str) -> Iterator[None]:
    """Hold the job's lock (refreshed in the background) or raise :class:`JobBusy`."""
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
        yield
    finally:
        stop.set()
        _best_effort(store.unlock, job_id, owner)


def run_job(
    store: JobStore,
    job_id: str,
    settings: Settings,
    *,
    worker: str,
    token: str | None = None,
    dispatch: Dispatch | None = None,
) -> str:
    """Run job ``job_id``: to a terminal status, or (with ``dispatch`` and several output shards) until its shards
    are handed to subtasks, returning "running". Raises :class:`JobBusy` if another delivery holds it."""
    rec = store.get(job_id)
    if rec is None:
        return "missing"
    if rec["status"] in TERMINAL:
        return str(rec["status"])
    if rec.get("fanout"):
        return "running"  # a redelivery after the shards were handed out: the subtasks carry on
    before_start = {"type": "CancelledError", "message": "cancelled before it started"}
    if store.cancel_requested(job_id) and store.transition(
        job_id, "queued", "cancelled", finished_at=now(), error=before_start
    ):
        return "cancelled"
    with _job_lock(store, job_id, settings, worker):
        return _Run(store, job_id, rec, settings, worker, token).run(dispatch)


class _Run:
    """One attempt at a job (or at its final step). Every way out is one terminal transition that also records
    the phase timings, so a finished job's record never changes again (the API may cache it)."""

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
        self.rep = _Reporter(store, job_id, settings.progress_interval, phases=rec.get("phases"))
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

    def succeed(self, result: dict[str, Any]) -> str:
        status = self.finish("succeeded", result=result)
        if status == "succeeded" and result.get("bytes_written"):
            self.store.record_finished(
                result["bytes_written"], now() - float(self.rec.get("started_at") or now())
            )
        return status

    def guarded(self, body: Callable[[], str]) -> str:
        """Run ``body``; every error ends the job with its typed error (and the sink aborted by the executor)."""
        try:
            return body()
        except CancelledError as e:
            return self.finish("cancelled", error=e.to_dict())
        except ConversionError as e:
            return self.finish("failed", error=e.to_dict())
        except Exception as e:  # noqa: BLE001 - recorded on the job; the traceback goes to the worker log
            log.exception("job %s failed", self.job_id)
            return self.finish(
                "failed", error={"type": "InternalError", "message": f"{type(e).__name__}: {e}"[:1000]}
            )

    def run(self, dispatch: Dispatch | None) -> str:
        store, job_id, settings = self.store, self.job_id, self.settings
        attempts = store.incr_attempts(job_id)
        if attempts > settings.max_attempts:
            e = WorkerLostError(f"the job was started {attempts - 1} times and its worker was lost each time")
            return self.finish("failed", error=e.to_dict())
        started_at = now()
        store.transition(job_id, ("queued", "running"), "running", started_at=started_at, worker=self.worker)
        self.rec["started_at"] = started_at
        return self.guarded(lambda: self._convert(dispatch))

    def _convert(self, dispatch: Dispatch | None) -> str:
        store, job_id, rec, settings, rep = self.store, self.job_id, self.rec, self.settings, self.rep
        rep.enter("resolving")
        dest = rec["destination"]
        if "local_path" in dest and _already_published(Path(dest["local_path"]), self.key):
            return self.succeed({"output": dest["local_path"], "noop": False})
        source = _open_source(rec, settings, self.token)
        rep.enter("planning")
        index, config = source.read_index(), source.read_config()
        p = _plan(rec, CachedSource(source, index, config))
        store.update(job_id, plan=p.summary())
        rep.bytes_total = p.total_bytes
        sink = _open_sink(rec, job_id, settings, self.token, source, _card(rec, p))
        if (published := getattr(sink, "already_published", lambda: None)()) is not None:
            return self.succeed({"output": published, "noop": False})
        if (
            dispatch is not None
            and not p.is_noop
            and settings.fanout_min_shards
            and len(p.shards) >= settings.fanout_min_shards
        ):
            return self._fan_out(p, index, config, sink, dispatch)
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
            commit_message=_commit_message(rec, p, self.key),
        )
        shards = [ShardWritten(f, n) for f, n in res.shards]
        result = _result(res.output, shards, res.copied_files, res.skipped_files, res.seconds, p.warnings)
        return self.succeed({**result, "noop": res.noop})

    def _fan_out(self, p: Plan, index: Any, config: Any, sink: Any, dispatch: Dispatch) -> str:
        """Hand the shards to subtasks (``shards_per_task`` each) and a final task: each stays about one shard
        long, so a redelivery after a lost worker redoes minutes, not the whole job."""
        store, job_id = self.store, self.job_id
        store.put_blob(
            job_id, "plan-input", json.dumps({"index": index.to_dict(), "config": config}).encode()
        )
        sink.begin()  # the staging folder / the target repo and pull request, shared by the subtasks
        n = max(1, self.settings.shards_per_task)
        groups = [list(range(i, min(i + n, len(p.shards)))) for i in range(0, len(p.shards), n)]
        self.rep.enter("converting")
        store.update(job_id, pr_revision=getattr(sink, "pr_revision", None) or "", parts=len(groups))
        dispatch(job_id, groups)
        store.update(job_id, fanout=1)  # after dispatch: a redelivery before this dispatches again (harmless)
        return "running"


def _part_context(
    store: JobStore, job_id: str, settings: Settings, token: str | None
) -> tuple[dict, Plan, Any]:
    """What every task of a sharded job needs: its record, the plan (from the headers read once), the source."""
    rec = store.get(job_id)
    if rec is None:
        raise ConversionError(f"job {job_id} no longer exists")
    blob = store.get_blob(job_id, "plan-input")
    if blob is None:
        raise ConversionError(f"job {job_id} lost its plan input")
    doc = json.loads(blob)
    source = CachedSource(
        _open_source(rec, settings, token), CheckpointIndex.from_dict(doc["index"]), doc["config"]
    )
    return rec, _plan(rec, source), source


def run_part(
    store: JobStore,
    job_id: str,
    part: int,
    indices: list[int],
    settings: Settings,
    *,
    worker: str,
    token: str | None,
) -> dict[str, Any]:
    """Write (and for the Hub, pre-upload) shards ``indices`` of a sharded job. Idempotent: the same shards are
    written with the same bytes however often it runs. Never raises for the job's own errors: they are returned
    for the final task, which always runs."""
    out: dict[str, Any] = {"part": part, "worker": worker, "shards": [], "error": None, "cancelled": False}
    try:
        rec, p, source = _part_context(store, job_id, settings, token)
        if rec["status"] in TERMINAL or store.cancel_requested(job_id):
            out["cancelled"] = True
            return out
        sink = _open_sink(rec, job_id, settings, token, source, _card(rec, p), rec.get("pr_revision") or None)
        sink.attach()
        totals = (p.total_bytes, len(p.tensors))

        def on_progress(ev: Progress) -> None:
            _best_effort(
                store.part_progress, job_id, part, ev.bytes_done, ev.tensors_done, totals, "converting"
            )

        meter = Meter(p, on_progress, _cancel_poller(store, job_id), settings.max_bytes_per_second or None)
        written = write_shards(p, source, sink, indices, meter, {"conversion": conversion_key(rec, job_id)})
        meter.report(force=True)
        out["shards"] = [s.to_dict() | {"worker": worker} for s in written]
    except CancelledError:
        out["cancelled"] = True
    except ConversionError as e:
        out["error"] = e.to_dict()
    except Exception as e:  # noqa: BLE001 - handed to the final task, which fails the job with it
        log.exception("job %s part %s failed", job_id, part)
        out["error"] = {"type": "InternalError", "message": f"{type(e).__name__}: {e}"[:1000]}
    return out


def finish_parts(
    store: JobStore,
    job_id: str,
    parts: list[dict[str, Any]],
    settings: Settings,
    *,
    worker: str,
    token: str | None,
) -> str:
    """The final task of a sharded job: the index, the copied files and the one commit, or the job's failure."""
    rec = store.get(job_id)
    if rec is None:
        return "missing"
    if rec["status"] in TERMINAL:
        return str(rec["status"])
    with _job_lock(store, job_id, settings, worker):
        run = _Run(store, job_id, rec, settings, worker, token)
        return run.guarded(lambda: _finish(run, parts))


def _finish(run: _Run, parts: list[dict[str, Any]]) -> str:
    store, job_id, rec, settings = run.store, run.job_id, run.rec, run.settings
    rec, p, source = _part_context(store, job_id, settings, run.token)
    sink = _open_sink(rec, job_id, settings, run.token, source, _card(rec, p), rec.get("pr_revision") or None)
    sink.attach()
    errors = [x["error"] for x in parts if x.get("error")]
    if errors or store.cancel_requested(job_id) or any(x.get("cancelled") for x in parts):
        sink.abort()
        if errors:
            return run.finish("failed", error=errors[0])
        return run.finish(
            "cancelled", error=CancelledError("conversion cancelled; nothing was published").to_dict()
        )
    shards = {s["file"]: ShardWritten.from_dict(s) for x in parts for s in x["shards"]}
    missing = [s.file for s in p.shards if s.file not in shards]
    if missing:
        sink.abort()
        return run.finish(
            "failed",
            error=ConversionError(f"shard {missing[0]} was never written", file=missing[0]).to_dict(),
        )
    for s in p.shards:
        w = shards[s.file]
        sink.add_written(w.file, w.size, w.upload)
    totals = (p.total_bytes, len(p.tensors))
    store.part_progress(job_id, -1, 0, 0, totals, "publishing")
    meter = Meter(p, run.rep.on_progress, None, None)
    meter.state.bytes_done, meter.state.tensors_done = p.total_bytes, len(p.tensors)
    try:
        where, copied, skipped = publish(p, source, sink, meter, _commit_message(rec, p, run.key))
    except BaseException:
        sink.abort()
        raise
    ordered = [shards[s.file] for s in p.shards]
    result = _result(
        where, ordered, copied, skipped, now() - float(rec.get("started_at") or now()), p.warnings
    )
    result["subtasks"] = [
        {"part": x["part"], "worker": x["worker"], "shards": [s["file"] for s in x["shards"]]} for x in parts
    ]
    return run.succeed(result)
