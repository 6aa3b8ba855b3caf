"""Running a job's tasks: the job lock, attempts, progress into the job store, and every way out recorded once.

The conversion itself is :class:`converter.job.ConversionJob`; this module only adds what Celery needs. Idempotent:
a finished job is left alone; a redelivery after a lost worker runs again (the staging folder is named after the
job, so what the lost run left is replaced); a destination that already holds this conversion (a run that died
right after publishing) is recognised and the job marked succeeded, never published twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from converter.errors import CancelledError, ConversionError
from converter.executor import ConversionResult, Progress
from converter.job import CheckpointHeaders, ConversionJob
from converter.storage import ShardWritten
from converter.storage.local import fingerprint
from jobs.running import Reporter, best_effort, cancel_poller, job_lock, until_redis_is_back
from jobs.settings import Settings
from jobs.spec import spec_of
from jobs.store import TERMINAL, JobStore, now

log = logging.getLogger(__name__)
Dispatch = Callable[[str, list[list[int]]], None]


class WorkerLostError(ConversionError):
    """The job was started more times than allowed: its workers kept dying."""


def conversion_job(rec: dict[str, Any], settings: Settings, token: str | None, **kw: Any) -> ConversionJob:
    return ConversionJob(
        spec_of(rec), token=token, endpoint=settings.hf_endpoint, tag=rec["id"],
        max_bytes_per_second=settings.max_bytes_per_second or None, roots=settings.local_roots,
        max_output_bytes=settings.max_output_bytes or None, device=settings.device, **kw,
    )  # fmt: skip


def result_of(res: ConversionResult, seconds: float, **extra: Any) -> dict[str, Any]:
    s = res.summary()
    keep = ("output", "noop", "shards", "copied_files", "skipped_files", "warnings", "bytes_written")
    return {**{k: s[k] for k in keep}, "seconds": round(seconds, 3), **extra}


class Attempt:
    """One delivery of a job's task. Every way out is one terminal transition that also records the phase
    timings, so a finished job's record never changes again (the API may cache it)."""

    def __init__(
        self, store: JobStore, rec: dict[str, Any], settings: Settings, worker: str, token: str | None
    ):
        self.store, self.rec, self.settings, self.worker, self.token = store, rec, settings, worker, token
        self.job_id = rec["id"]
        self.rep = Reporter(store, self.job_id, settings.progress_interval, rec.get("phases"))

    def finish(self, status: str, **fields: Any) -> str:
        ok = until_redis_is_back(self.store.transition, self.job_id, "*", status, finished_at=now(),
                                 phases=self.rep.final_phases(), **fields)  # fmt: skip
        return status if ok else str((self.store.get(self.job_id) or {}).get("status", "missing"))

    def succeed(self, result: dict[str, Any]) -> str:
        dest = spec_of(self.rec).destination
        if dest.kind == "local" and os.path.isdir(result.get("output") or ""):
            result["fingerprint"] = fingerprint(
                Path(result["output"])
            )  # a resubmission checks it is still there
        status = self.finish("succeeded", result=result)
        if status == "succeeded" and result.get("bytes_written"):
            started = float(self.rec.get("started_at") or now())
            best_effort(self.store.record_finished, result["bytes_written"], now() - started)
        return status

    def guarded(self, body: Callable[[], str]) -> str:
        """Run ``body``; every error ends the job with its typed error (the executor aborts the sink)."""
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

    def start(self, dispatch: Dispatch | None) -> str:
        attempts = self.store.incr_attempts(self.job_id)
        if attempts > self.settings.max_attempts:
            e = WorkerLostError(f"the job was started {attempts - 1} times and its worker was lost each time")
            return self.finish("failed", error=e.to_dict())
        self.rec["started_at"] = now()
        self.store.transition(self.job_id, ("queued", "running"), "running", started_at=self.rec["started_at"],
                              worker=self.worker)  # fmt: skip
        return self.guarded(lambda: self._convert(dispatch))

    def _convert(self, dispatch: Dispatch | None) -> str:
        self.rep.enter("resolving")
        job = conversion_job(self.rec, self.settings, self.token)
        if (published := job.already_published()) is not None:
            return self.succeed({"output": published, "noop": False})
        self.rep.enter("planning")
        p = job.plan()
        self.store.update(self.job_id, plan=p.summary())
        n = self.settings.fanout_min_shards
        if dispatch is not None and not p.is_noop and n and len(p.shards) >= n:
            return self._fan_out(job, dispatch)
        res = job.run(progress=self.rep.on_progress, should_cancel=cancel_poller(self.store, self.job_id))
        return self.succeed(result_of(res, now() - self.rec["started_at"]))

    def _fan_out(self, job: ConversionJob, dispatch: Dispatch) -> str:
        """Hand the shards to subtasks (``shards_per_task`` each) and a final task: each stays about one shard long,
        so a redelivery after a lost worker redoes minutes, not the whole job."""
        self.store.put_blob(self.job_id, "headers", json.dumps(job.headers.to_dict()).encode())
        pr_revision = job.begin()
        n, total = max(1, self.settings.shards_per_task), len(job.plan().shards)
        groups = [list(range(i, min(i + n, total))) for i in range(0, total, n)]
        self.rep.enter("converting")
        self.store.update(self.job_id, pr_revision=pr_revision or "", parts=len(groups))
        dispatch(self.job_id, groups)
        self.store.update(self.job_id, fanout=1)  # after dispatch: a redelivery before this dispatches again
        return "running"


def run_job(store: JobStore, job_id: str, settings: Settings, *, worker: str, token: str | None = None,
            dispatch: Dispatch | None = None) -> str:  # fmt: skip
    """Run job ``job_id``: to a terminal status, or (with ``dispatch`` and several output shards) until its shards
    are handed to subtasks, returning "running". Raises :class:`JobBusy` if another delivery holds it."""
    rec = store.get(job_id)
    if rec is None:
        return "missing"
    if rec["status"] in TERMINAL:
        return str(rec["status"])
    if rec.get("fanout"):
        return "running"  # a redelivery after the shards were handed out: the subtasks carry on
    before = {"type": "CancelledError", "message": "cancelled before it started"}
    if store.cancel_requested(job_id) and store.transition(job_id, "queued", "cancelled", finished_at=now(),
                                                           error=before):  # fmt: skip
        return "cancelled"
    with job_lock(store, job_id, settings, worker):
        return Attempt(store, rec, settings, worker, token).start(dispatch)


def _part_job(
    store: JobStore, job_id: str, settings: Settings, token: str | None
) -> tuple[dict, ConversionJob]:
    """A sharded job's record and its job, planned from the headers its first task read."""
    rec = store.get(job_id)
    blob = store.get_blob(job_id, "headers") if rec is not None else None
    if rec is None or blob is None:
        raise ConversionError(f"job {job_id} no longer exists (or lost its headers)")
    return rec, conversion_job(rec, settings, token, headers=CheckpointHeaders.from_dict(json.loads(blob)))


def run_part(store: JobStore, job_id: str, part: int, indices: list[int], settings: Settings, *, worker: str,
             token: str | None) -> dict[str, Any]:  # fmt: skip
    """Write (and for the Hub, pre-upload) shards ``indices`` of a sharded job; idempotent. Never raises for the
    job's own errors: they are returned for the final task, which always runs."""
    out: dict[str, Any] = {"part": part, "worker": worker, "shards": [], "error": None, "cancelled": False}
    try:
        rec, job = _part_job(store, job_id, settings, token)
        if rec["status"] in TERMINAL or store.cancel_requested(job_id):
            out["cancelled"] = True
            return out
        totals = (job.plan().total_bytes, len(job.plan().tensors))

        def on_progress(ev: Progress) -> None:
            best_effort(
                store.part_progress, job_id, part, ev.bytes_done, ev.tensors_done, totals, "converting"
            )

        written = job.write_part(indices, pr_revision=rec.get("pr_revision") or None, progress=on_progress,
                                 should_cancel=cancel_poller(store, job_id))  # fmt: skip
        out["shards"] = [s.to_dict() | {"worker": worker} for s in written]
    except CancelledError:
        out["cancelled"] = True
    except ConversionError as e:
        out["error"] = e.to_dict()
    except Exception as e:  # noqa: BLE001 - handed to the final task, which fails the job with it
        log.exception("job %s part %s failed", job_id, part)
        out["error"] = {"type": "InternalError", "message": f"{type(e).__name__}: {e}"[:1000]}
    return out


def finish_parts(store: JobStore, job_id: str, parts: list[dict[str, Any]], settings: Settings, *, worker: str,
                 token: str | None) -> str:  # fmt: skip
    """The final task of a sharded job: the index, the copied files and the one commit, or the job's failure."""
    rec = store.get(job_id)
    if rec is None:
        return "missing"
    if rec["status"] in TERMINAL:
        return str(rec["status"])
    with job_lock(store, job_id, settings, worker):
        attempt = Attempt(store, rec, settings, worker, token)
        return attempt.guarded(lambda: _finish(attempt, parts))


def _finish(attempt: Attempt, parts: list[dict[str, Any]]) -> str:
    store, job_id = attempt.store, attempt.job_id
    rec, job = _part_job(store, job_id, attempt.settings, attempt.token)
    pr_revision = rec.get("pr_revision") or None
    errors = [x["error"] for x in parts if x.get("error")]
    if errors or store.cancel_requested(job_id) or any(x.get("cancelled") for x in parts):
        job.abort(pr_revision)
        if errors:
            return attempt.finish("failed", error=errors[0])
        return attempt.finish(
            "cancelled", error=CancelledError("conversion cancelled; nothing was published").to_dict()
        )
    p = job.plan()
    store.part_progress(job_id, -1, 0, 0, (p.total_bytes, len(p.tensors)), "publishing")
    written = [ShardWritten.from_dict(s) for x in parts for s in x["shards"]]
    res = job.finish(written, pr_revision=pr_revision, progress=attempt.rep.on_progress)
    subtasks = [
        {"part": x["part"], "worker": x["worker"], "shards": [s["file"] for s in x["shards"]]} for x in parts
    ]
    started = float(rec.get("started_at") or now())
    return attempt.succeed(result_of(res, now() - started, subtasks=subtasks))
