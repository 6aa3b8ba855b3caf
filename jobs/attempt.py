"""One delivery of a job's task (:class:`Attempt`): attempts counted, progress through an outbox, the conversion
(:class:`converter.job.ConversionJob`) run or handed to subtasks, and every way out recorded once. A worker shutting
down puts the job back on the queue instead (:class:`jobs.running.Requeue`). Nothing here knows Celery."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from converter.errors import CancelledError, ConversionError
from converter.executor import ConversionResult
from converter.job import ConversionJob
from converter.storage.local import fingerprint

from .running import DRAIN, Outbox, Reporter, Requeue, best_effort, until_redis_is_back
from .settings import Settings
from .spec import spec_of
from .store import JobStore, now

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

    def __init__(self, store: JobStore, rec: dict[str, Any], settings: Settings, worker: str, token: str | None,
                 lost: threading.Event | None = None):  # fmt: skip
        self.store, self.rec, self.settings, self.worker, self.token = store, rec, settings, worker, token
        self.job_id, self.attempts = rec["id"], 0
        self.out = Outbox(store, self.job_id, lost=lost)
        self.rep = Reporter(self.out, settings.progress_interval, rec.get("phases"))

    def finish(self, status: str, **fields: Any) -> str:
        self.out.close()
        phases = self.rep.final_phases()
        ok = until_redis_is_back(self.store.transition, self.job_id, "*", status, finished_at=now(),
                                 phases=phases, **fields)  # fmt: skip
        if ok:  # the transition that ended the job (once): its phase timings go to the histograms
            best_effort(self.store.record_phases, phases, status)
        return status if ok else str((self.store.get(self.job_id) or {}).get("status", "missing"))

    def succeed(self, result: dict[str, Any]) -> str:
        if spec_of(self.rec).destination.kind == "local" and os.path.isdir(result.get("output") or ""):
            result["fingerprint"] = fingerprint(result["output"])  # a resubmission checks it is still there
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
            if self.out.lost.is_set():
                return "superseded"  # another delivery runs the job now: its status is that delivery's to set
            if DRAIN.is_set() and not best_effort(self.store.cancel_requested, self.job_id, default=False):
                self.requeue()
            return self.finish("cancelled", error=e.to_dict())
        except ConversionError as e:
            return self.finish("failed", error=e.to_dict())
        except Exception as e:  # noqa: BLE001 - recorded on the job; the traceback goes to the worker log
            log.exception("job %s failed", self.job_id)
            return self.finish(
                "failed", error={"type": "InternalError", "message": f"{type(e).__name__}: {e}"[:1000]}
            )
        finally:
            self.out.close()

    def requeue(self) -> None:
        """The worker is shutting down (the executor discarded what was written): the job goes back to ``queued``,
        this start not counted, and :class:`Requeue` tells the task to put its message back on the queue."""
        self.out.close()
        best_effort(until_redis_is_back, self.store.transition, self.job_id, "running", "queued", wait=10,
                    attempts=self.attempts - 1, worker="")  # fmt: skip
        raise Requeue(self.job_id)

    def start(self, dispatch: Dispatch | None) -> str:
        try:
            self.attempts = self.store.incr_attempts(self.job_id)
            if self.attempts > self.settings.max_attempts:
                e = WorkerLostError(
                    f"the job was started {self.attempts - 1} times and its worker was lost each time"
                )
                return self.finish("failed", error=e.to_dict())
            self.rec["started_at"] = now()
            if not self.store.transition(self.job_id, ("queued", "running"), "running",
                                         started_at=self.rec["started_at"], worker=self.worker):  # fmt: skip
                # cancelled meanwhile (its worker was gone, and the API ended it)
                return str((self.store.get(self.job_id) or {}).get("status", "missing"))
            return self.guarded(lambda: self._convert(dispatch))
        finally:
            self.out.close()

    def _convert(self, dispatch: Dispatch | None) -> str:
        self.rep.enter("resolving")
        job = conversion_job(self.rec, self.settings, self.token)
        if (published := job.already_published()) is not None:
            return self.succeed({"output": published, "noop": False})
        self.rep.enter("planning")
        p = job.plan()
        self.out.put("plan", "update", self.job_id, plan=p.summary())
        n = self.settings.fanout_min_shards
        if dispatch is not None and not p.is_noop and n and len(p.shards) >= n:
            return self._fan_out(job, dispatch)
        res = job.run(progress=self.rep.on_progress, should_cancel=self.out.should_cancel)
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
        self.out.close()  # written before the subtasks report their progress
        dispatch(self.job_id, groups)
        self.store.update(self.job_id, fanout=1)  # after dispatch: a redelivery before this dispatches again
        return "running"
