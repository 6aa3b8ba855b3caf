"""Jobs: submit, list, get, cancel, follow (Server-Sent Events)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from jobs.store import TERMINAL
from jobs.webhooks import settled

from ..deps import (
    JobIdDep,
    Principal,
    PrincipalDep,
    QueueDep,
    SettingsDep,
    StoreDep,
    SubmitterDep,
    require_scope,
    require_token,
)
from ..errors import InvalidRequestError, JobNotFoundError
from ..jobs import cancel as cancel_job
from ..jobs import submit
from ..models import ConvertRequest, Job, JobList, Status, job_from_record
from ..streams import EVENT_ID, EventHub, EventStreamResponse
from .errors import ERRORS

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_token)])

_FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"description": "the API token's scope does not allow this"}
}


@router.post(
    "/convert",
    status_code=202,
    response_model=Job,
    responses={
        200: {"model": Job, "description": "the same request was submitted before: that job"},
        **ERRORS,
        **_FORBIDDEN,
    },
    summary="Submit a conversion job",
)
def post_convert(
    body: ConvertRequest,
    store: StoreDep,
    settings: SettingsDep,
    queue: QueueDep,
    principal: SubmitterDep,
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
    ``Idempotency-Key``, returns the existing job (200); for a ``submit`` token, only among its own jobs.
    ``Location`` points to the job. Needs a ``submit`` or ``admin`` token (when tokens are configured); the job
    records the token's name as its owner."""
    rec, created = submit(
        body,
        store,
        settings,
        queue.enqueue,
        idempotency_key=idempotency_key,
        hf_token=x_hf_token,
        owner=principal.name,
        own_jobs_only=principal.scope == "submit",
        notify=queue.notify,
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
    principal: PrincipalDep,
    status: Status | None = None,
    model_type: str | None = Query(None, max_length=100),
    skip: int = Query(0, ge=0, le=1_000_000_000),
    limit: int = Query(50, ge=1, le=500),
) -> Response:
    """All jobs; for a ``submit`` token, only the jobs it submitted."""
    recs, count = await request.app.state.reader.list_jobs(
        status=status, model_type=model_type, owner=principal.owner_filter, skip=skip, limit=limit
    )
    body = JobList(data=[job_from_record(r) for r in recs], count=count)
    return Response(body.model_dump_json(), media_type="application/json")


async def visible_job(request: Request, job_id: str, principal: Principal) -> dict:
    """The job's record if this token may see it, else 404 (another token's job is not said to exist)."""
    rec = await request.app.state.reader.get(job_id)
    if rec is None or not principal.may_see(rec):
        raise JobNotFoundError(f"no job {job_id}")
    return rec


@router.get("/jobs/{job_id}", response_model=Job, responses=ERRORS, summary="One job")
async def get_job(job_id: JobIdDep, request: Request, principal: PrincipalDep) -> Response:
    """A job id is 32 hex digits; anything else, and another token's job for a ``submit`` token, is 404."""
    cache: FinishedJobs = request.app.state.finished
    hit = cache.get(job_id)
    if hit is None:
        rec = await visible_job(request, job_id, principal)
        body = job_from_record(rec).model_dump_json().encode()
        if settled(rec):
            cache.put(job_id, rec.get("owner"), body)
    else:
        owner, body = hit
        if not principal.may_see({"owner": owner}):
            raise JobNotFoundError(f"no job {job_id}")
    return Response(body, media_type="application/json")


class FinishedJobs:
    """The JSON of finished jobs (with their owner) whose webhooks are settled: they never change again (the last
    transition records everything, and no webhook is added to a finished job): CI and dashboards polling a finished
    job cost no Redis round trip."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self.items: OrderedDict[str, tuple[str | None, bytes]] = OrderedDict()

    def get(self, job_id: str) -> tuple[str | None, bytes] | None:
        hit = self.items.get(job_id)
        if hit is not None:
            self.items.move_to_end(job_id)
        return hit

    def put(self, job_id: str, owner: str | None, body: bytes) -> None:
        self.items[job_id] = (owner, body)
        if len(self.items) > self.size:
            self.items.popitem(last=False)


@router.delete(
    "/jobs/{job_id}",
    status_code=202,
    response_model=Job,
    responses={**ERRORS, **_FORBIDDEN},
    summary="Cancel a job",
    dependencies=[Depends(require_scope("submit", "admin"))],
)
def delete_job(job_id: JobIdDep, store: StoreDep, queue: QueueDep, principal: PrincipalDep) -> Job:
    """A queued job is cancelled at once; a running one stops within seconds and publishes nothing;
    a finished one gives 409. A ``submit`` token cancels only its own jobs (another's is 404); ``read`` none."""
    rec = store.get(job_id)
    if rec is None or not principal.may_see(rec):
        raise JobNotFoundError(f"no job {job_id}")
    return job_from_record(cancel_job(store, job_id, queue.revoke, queue.notify))


@router.get(
    "/jobs/{job_id}/events",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "status and progress events"},
        **ERRORS,
        429: {"description": "this client holds its share of event streams (`Retry-After`)"},
        503: {"description": "this API process serves its maximum of event streams (`Retry-After`)"},
    },
    summary="Follow a job (Server-Sent Events)",
)
async def job_events(
    job_id: JobIdDep,
    request: Request,
    principal: PrincipalDep,
    last_event_id: Annotated[str | None, Header(max_length=50)] = None,
) -> Response:
    """Events ``status``, ``progress`` (JSON data) and a final ``end``; resumable with ``Last-Event-ID``. A new
    client gets the job's history first; a finished job's stream ends after it. Streams per client (API token,
    or address without auth) are capped per API process: 429 with ``Retry-After`` beyond; 503 when the process
    serves its maximum. A ``submit`` token follows only its own jobs."""
    if last_event_id is not None and not EVENT_ID.match(last_event_id):
        raise InvalidRequestError("Last-Event-ID must be an event id of this stream (digits-digits)")
    rec = await visible_job(request, job_id, principal)
    hub: EventHub = request.app.state.hub
    client = principal.name or (request.client.host if request.client else "unknown")
    sub = hub.subscribe(job_id, client)
    terminal = rec["status"] if rec["status"] in TERMINAL else None
    return EventStreamResponse(hub, sub, hub.follow(sub, last_event_id, terminal))
