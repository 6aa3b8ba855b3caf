"""Jobs: submit, list, get, cancel, follow (Server-Sent Events)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from jobs.store import TERMINAL, events_key

from ..deps import QueueDep, SettingsDep, StoreDep, require_token
from ..errors import JobNotFoundError
from ..jobs import cancel as cancel_job
from ..jobs import submit
from ..models import ConvertRequest, Job, JobList, Status, job_from_record
from .errors import ERRORS

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_token)])


@router.post(
    "/convert",
    status_code=202,
    response_model=Job,
    responses={
        200: {"model": Job, "description": "the same request was submitted before: that job"},
        **ERRORS,
    },
    summary="Submit a conversion job",
)
def post_convert(
    body: ConvertRequest,
    store: StoreDep,
    settings: SettingsDep,
    queue: QueueDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    x_hf_token: Annotated[
        str | None,
        Header(
            description="Hub token for this job only (never stored)",
            pattern=r"^[\x21-\x7e]{1,512}$",  # visible ASCII: a token, not something that breaks the Hub request
        ),
    ] = None,
) -> Response:
    """Validate, resolve the revision to a commit, and queue a job (202). The same normalised request, or the same
    ``Idempotency-Key``, returns the existing job (200). ``Location`` points to the job."""
    rec, created = submit(
        body, store, settings, queue.enqueue, idempotency_key=idempotency_key, hf_token=x_hf_token
    )
    return Response(
        job_from_record(rec).model_dump_json(),
        status_code=202 if created else 200,
        media_type="application/json",
        headers={"Location": f"/jobs/{rec['id']}"},
    )


@router.get("/jobs", response_model=JobList, summary="List jobs, newest first")
async def list_jobs(
    request: Request,
    status: Status | None = None,
    model_type: str | None = Query(None, max_length=100),
    skip: int = Query(0, ge=0, le=1_000_000_000),
    limit: int = Query(50, ge=1, le=500),
) -> Response:
    recs, count = await request.app.state.reader.list_jobs(
        status=status, model_type=model_type, skip=skip, limit=limit
    )
    body = JobList(data=[job_from_record(r) for r in recs], count=count)
    return Response(body.model_dump_json(), media_type="application/json")


@router.get("/jobs/{job_id}", response_model=Job, responses=ERRORS, summary="One job")
async def get_job(job_id: str, request: Request) -> Response:
    cache: FinishedJobs = request.app.state.finished
    body = cache.get(job_id)
    if body is None:
        rec = await request.app.state.reader.get(job_id)
        if rec is None:
            raise JobNotFoundError(f"no job {job_id}")
        body = job_from_record(rec).model_dump_json().encode()
        if rec["status"] in TERMINAL:
            cache.put(job_id, body)
    return Response(body, media_type="application/json")


class FinishedJobs:
    """The JSON of finished jobs, which never change again (the last transition records everything): CI and
    dashboards polling a finished job cost no Redis round trip."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self.items: OrderedDict[str, bytes] = OrderedDict()

    def get(self, job_id: str) -> bytes | None:
        body = self.items.get(job_id)
        if body is not None:
            self.items.move_to_end(job_id)
        return body

    def put(self, job_id: str, body: bytes) -> None:
        self.items[job_id] = body
        if len(self.items) > self.size:
            self.items.popitem(last=False)


@router.delete(
    "/jobs/{job_id}", status_code=202, response_model=Job, responses=ERRORS, summary="Cancel a job"
)
def delete_job(job_id: str, store: StoreDep, queue: QueueDep) -> Job:
    """A queued job is cancelled at once; a running one stops within seconds and publishes nothing;
    a finished one gives 409."""
    return job_from_record(cancel_job(store, job_id, queue.revoke))


@router.get(
    "/jobs/{job_id}/events",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "status and progress events"},
        **ERRORS,
    },
    summary="Follow a job (Server-Sent Events)",
)
async def job_events(
    job_id: str,
    request: Request,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Events ``status``, ``progress`` (JSON data) and a final ``end``; resumable with ``Last-Event-ID``."""
    if await request.app.state.reader.get(job_id) is None:
        raise JobNotFoundError(f"no job {job_id}")
    client = request.app.state.aredis
    key = events_key(job_id)

    async def stream() -> AsyncIterator[str]:
        last = last_event_id or "0-0"
        yield "retry: 2000\n\n"
        while True:
            if await request.is_disconnected():
                return
            batch = await client.xread({key: last}, block=5000, count=200)
            if not batch:
                yield ": keep-alive\n\n"
                continue
            for _, entries in batch:
                for event_id, fields in entries:
                    last = event_id
                    yield f"id: {event_id}\nevent: {fields['type']}\ndata: {fields['data']}\n\n"
                    if fields["type"] == "end":
                        return

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
