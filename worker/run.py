"""Running a job's tasks: the job lock, then one :class:`jobs.attempt.Attempt` (attempts, progress, every way out
recorded once); a sharded job's parts and its final task.

The conversion itself is :class:`converter.job.ConversionJob`; this module only adds what Celery needs. Idempotent:
a finished job is left alone; a redelivery after a lost worker runs again (the staging folder is named after the
job, so what the lost run left is replaced); a destination that already holds this conversion (a run that died
right after publishing) is recognised and the job marked succeeded, never published twice. A worker shutting down
puts its jobs back on the queue (:class:`jobs.running.Requeue`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from converter.errors import CancelledError, ConversionError
from converter.executor import Progress
from converter.job import CheckpointHeaders, ConversionJob
from converter.storage import ShardWritten
from jobs.attempt import Attempt, Dispatch, conversion_job, result_of
from jobs.running import DRAIN, Outbox, Requeue, best_effort, job_lock
from jobs.settings import Settings
from jobs.store import TERMINAL, JobStore, now

log = logging.getLogger(__name__)


def run_job(store: JobStore, job_id: str, settings: Settings, *, worker: str, token: str | None = None,
            dispatch: Dispatch | None = None) -> str:  # fmt: skip
    """Run job ``job_id``: to a terminal status, or (with ``dispatch`` and several output shards) until its shards
    are handed to subtasks, returning "running". Raises :class:`JobBusy` if another delivery holds it."""
    if DRAIN.is_set():
        raise Requeue(job_id)  # delivered to a worker shutting down: untouched, back on the queue
    rec = store.get(job_id)
    if rec is None:
        return "missing"
    if rec.get("fanout"):
        return str(rec["status"])  # a redelivery after the shards were handed out: the subtasks carry on
    if rec["status"] in TERMINAL and not (rec["status"] == "cancelled" and rec.get("started_at")):
        return str(rec["status"])
    with job_lock(store, job_id, settings, worker) as lost:
        # the API ended it when its worker was gone: remove what that run left
        if rec["status"] == "cancelled":
            _discard(rec, settings, token)
            return "cancelled"
        cancelled = {"type": "CancelledError", "message": "cancelled before it started"}
        if store.cancel_requested(job_id) and store.transition(job_id, ("queued", "running"), "cancelled",
                                                               finished_at=now(), error=cancelled):  # fmt: skip
            _discard(rec, settings, token)
            return "cancelled"
        return Attempt(store, rec, settings, worker, token, lost).start(dispatch)


def _discard(rec: dict[str, Any], settings: Settings, token: str | None) -> None:
    """Remove what a lost run of a cancelled job wrote (its staging folder); nothing was published."""
    if rec.get("started_at"):
        try:
            conversion_job(rec, settings, token).abort()
        except Exception:  # noqa: BLE001 - a leftover staging folder is replaced by the next run of this job
            log.warning("job %s: could not remove what its lost run wrote", rec["id"], exc_info=True)


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
    if DRAIN.is_set():
        raise Requeue(job_id)
    out: dict[str, Any] = {"part": part, "worker": worker, "shards": [], "error": None, "cancelled": False}
    box = Outbox(store, job_id)
    try:
        rec, job = _part_job(store, job_id, settings, token)
        if rec["status"] in TERMINAL or store.cancel_requested(job_id):
            out["cancelled"] = True
            return out
        totals = (job.plan().total_bytes, len(job.plan().tensors))

        def on_progress(ev: Progress) -> None:
            box.put(
                "progress",
                "part_progress",
                job_id,
                part,
                ev.bytes_done,
                ev.tensors_done,
                totals,
                "converting",
            )

        written = job.write_part(indices, pr_revision=rec.get("pr_revision") or None, progress=on_progress,
                                 should_cancel=box.should_cancel)  # fmt: skip
        out["shards"] = [s.to_dict() | {"worker": worker} for s in written]
    except CancelledError:
        if DRAIN.is_set() and not best_effort(store.cancel_requested, job_id, default=False):
            raise Requeue(job_id) from None  # the part runs again (it is idempotent); the job stays running
        out["cancelled"] = True
    except ConversionError as e:
        out["error"] = e.to_dict()
    except Exception as e:  # noqa: BLE001 - handed to the final task, which fails the job with it
        log.exception("job %s part %s failed", job_id, part)
        out["error"] = {"type": "InternalError", "message": f"{type(e).__name__}: {e}"[:1000]}
    finally:
        box.close()
    return out


def finish_parts(store: JobStore, job_id: str, parts: list[dict[str, Any]], settings: Settings, *, worker: str,
                 token: str | None) -> str:  # fmt: skip
    """The final task of a sharded job: the index, the copied files and the one commit, or the job's failure."""
    rec = store.get(job_id)
    if rec is None:
        return "missing"
    if rec["status"] in TERMINAL:
        return str(rec["status"])
    with job_lock(store, job_id, settings, worker) as lost:
        attempt = Attempt(store, rec, settings, worker, token, lost)
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
