"""Jobs: submit, list, get, cancel, follow (Server-Sent Events)."""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import StringConstraints

from jobs.store import SUMMARY_FIELDS, TERMINAL, JobQuery
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
from ..models import INCLUDES, ConvertRequest, Job, JobList, Status, job_from_record, summary_from_record
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


#: the query parameters of GET /jobs; any other is refused (422), and only status, model_type and include repeat
LIST_PARAMS = ("status", "model_type", "source", "owner", "since", "until", "include", "skip", "limit")
_REPEATABLE = frozenset({"status", "model_type", "include"})
_OFFSET = re.compile(r" (\d\d(:?\d\d)?)$")  # "+01:00" sent without URL-encoding arrives as " 01:00"


def parse_time(name: str, value: str) -> float:
    """``since``/``until``: ISO 8601 (``2026-03-01``, ``2026-03-01T12:00:00Z``, with an offset; UTC when it has
    none) or seconds since the epoch -> epoch seconds."""
    try:
        t = float(value)
    except ValueError:
        try:
            dt = datetime.fromisoformat(_OFFSET.sub(r"+\1", value.strip()))
        except ValueError:
            raise InvalidRequestError(
                f"{name} must be an ISO 8601 time (2026-03-01T12:00:00Z) or seconds since the epoch",
                parameter=name,
            ) from None
        t = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(t):
        raise InvalidRequestError(f"{name} must be a finite time", parameter=name)
    return t


def check_list_params(request: Request) -> None:
    """Unknown query parameters (a typo, a filter this API does not have) are refused rather than ignored, and so is
    a repeated parameter that takes one value: a dashboard must not show all jobs as if they matched."""
    names = [k for k, _ in request.query_params.multi_items()]
    unknown = sorted({k for k in names if k not in LIST_PARAMS})
    if unknown:
        raise InvalidRequestError(
            f"unknown query parameter{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)[:500]}; GET /jobs takes "
            + ", ".join(LIST_PARAMS),
            unknown=unknown[:20],
            allowed=list(LIST_PARAMS),
        )
    repeated = sorted({k for k in names if names.count(k) > 1 and k not in _REPEATABLE})
    if repeated:
        raise InvalidRequestError(
            f"{', '.join(repeated)} may be given once (status, model_type and include repeat)",
            repeated=repeated,
        )


@router.get(
    "/jobs",
    response_model=JobList,
    responses={422: {"description": "an unknown or repeated query parameter, a bad value"}},
    summary="List jobs, newest first",
)
async def list_jobs(
    request: Request,
    principal: PrincipalDep,
    status: Annotated[
        list[Status], Query(description="repeatable: jobs in any of these statuses", max_length=5)
    ] = [],  # noqa: B006 - FastAPI copies defaults
    model_type: Annotated[
        list[Annotated[str, StringConstraints(max_length=100)]],
        Query(description="repeatable: jobs of any of these model types", max_length=50),
    ] = [],  # noqa: B006
    source: Annotated[
        str | None,
        Query(max_length=4096, description="the source as jobs show it: a Hub repo id or a local path"),
    ] = None,
    owner: Annotated[
        str | None, Query(max_length=64, description="jobs submitted by this API token name")
    ] = None,
    since: Annotated[
        str | None, Query(max_length=64, description="created at or after: ISO 8601 or epoch seconds")
    ] = None,
    until: Annotated[
        str | None, Query(max_length=64, description="created before: ISO 8601 or epoch seconds")
    ] = None,
    include: Annotated[
        list[str],
        Query(
            description="repeatable or comma-separated: plan, phases, result (whole) in each item",
            max_length=3,
        ),
    ] = [],  # noqa: B006
    skip: int = Query(0, ge=0, le=1_000_000_000),
    limit: int = Query(50, ge=1, le=500),
) -> Response:
    """Jobs newest first, as ``{data, count}``; every filter is optional and they combine (AND); a repeated
    ``status`` or ``model_type`` matches any of its values. ``since <= created_at < until``. Items are summaries
    (no plan, no phase timings, the result's output, noop and bytes_written only): ``include=plan``,
    ``include=phases``, ``include=result`` add them. For a ``submit`` token, only the jobs it submitted. Unknown
    parameters are 422."""
    check_list_params(request)
    wanted = frozenset(x.strip() for v in include for x in v.split(",") if x.strip())
    if bad := sorted(wanted - set(INCLUDES)):
        raise InvalidRequestError(
            f"include takes {', '.join(INCLUDES)}; not {', '.join(bad)[:200]}", unknown=bad[:10]
        )
    query = JobQuery(
        statuses=tuple(dict.fromkeys(status)),
        model_types=tuple(dict.fromkeys(model_type)),
        source=source or None,
        owners=tuple(o for o in (principal.owner_filter, owner) if o),
        since=None if since is None else parse_time("since", since),
        until=None if until is None else parse_time("until", until),
    )
    fields = SUMMARY_FIELDS + tuple(f for f in ("plan", "phases") if f in wanted)
    recs, count = await request.app.state.reader.list_jobs(query, skip=skip, limit=limit, fields=fields)
    body = JobList(data=[summary_from_record(r, wanted) for r in recs], count=count)
    left_out = {f for f in ("plan", "phases") if f not in wanted}  # absent, rather than null: not asked for
    return Response(
        body.model_dump_json(exclude={"data": {"__all__": left_out}} if left_out else None),
        media_type="application/json",
    )


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
