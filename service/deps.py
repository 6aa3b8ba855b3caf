"""FastAPI dependencies: settings, the job store, the queue, auth (who is asking, with which scope)."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException

from jobs.queue import TASK_CONVERT, TASK_NOTIFY, make_celery
from jobs.secret import TOKEN_HEADER, seal
from jobs.settings import Scope, Settings, get_settings, parse_api_tokens
from jobs.store import JobStore, store_for

from .errors import JobNotFoundError


@lru_cache
def _store(url: str) -> JobStore:
    return store_for(get_settings())


# Dependencies are async so that FastAPI does not hop to a thread for each of them on every request.


async def settings_dep() -> Settings:
    return get_settings()


async def get_store() -> JobStore:
    return _store(get_settings().redis)


class Queue:
    """Sends and revokes conversion tasks, sends webhook tasks (the Celery app is created on first use)."""

    def __init__(self) -> None:
        self._app: Any = None

    @property
    def app(self) -> Any:
        if self._app is None:  # a producer: it sends tasks by name, the workers define them
            self._app = make_celery(get_settings())
        return self._app

    def enqueue(self, job_id: str, hf_token: str | None) -> None:
        """Send the job's task. A per-job Hub token travels in its headers sealed with ``CKPT_CONVERT_SECRET_KEY``
        (the broker, and its append-only file, only ever hold ciphertext); without a key such a job is refused."""
        headers = {TOKEN_HEADER: seal(hf_token, get_settings().secret)} if hf_token else None
        self.app.send_task(TASK_CONVERT, args=[job_id], task_id=job_id, headers=headers)

    def revoke(self, job_id: str) -> None:
        self.app.control.revoke(job_id)

    def notify(self, job_id: str, subscriber: str, claim: int) -> None:
        """Send a webhook's first attempt (a job the API ended; the workers send those of the jobs they end)."""
        self.app.send_task(TASK_NOTIFY, args=[job_id, subscriber, claim])


_queue = Queue()


async def get_queue() -> Queue:
    return _queue


@dataclass(frozen=True)
class Principal:
    """Who is asking: the API token's name and scope (``name=None``, admin: no tokens configured, no auth)."""

    name: str | None
    scope: Scope

    def may_see(self, record: dict[str, Any]) -> bool:
        """A submit token sees only the jobs it submitted; read and admin tokens see all."""
        return self.scope != "submit" or record.get("owner") == self.name

    @property
    def owner_filter(self) -> str | None:
        """What ``GET /jobs`` lists: a submit token's own jobs only."""
        return self.name if self.scope == "submit" else None


ANONYMOUS = Principal(None, "admin")


@lru_cache
def _tokens(value: str) -> list[tuple[bytes, Principal]]:
    return [(t.token.encode(), Principal(t.name, t.scope)) for t in parse_api_tokens(value)]


async def require_token(
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    """With CKPT_CONVERT_API_TOKENS set: ``Authorization: Bearer <token>`` is required (401 without, 403 if wrong);
    returns the token's :class:`Principal`. Without tokens everyone is :data:`ANONYMOUS` (admin).

    Async (no thread hop): it runs on every protected request."""
    settings = get_settings()
    if not settings.api_tokens.strip():
        return ANONYMOUS
    tokens = _tokens(settings.api_tokens)
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPException(
            401,
            detail={"type": "Unauthorized", "message": "Authorization: Bearer <token> required"},
            headers={"WWW-Authenticate": "Bearer"},
        )
    given = authorization[7:].strip().encode()
    found: Principal | None = None
    for token, principal in tokens:  # compare with every token, each in constant time, without stopping early
        if hmac.compare_digest(given, token):
            found = principal
    if found is None:
        raise HTTPException(403, detail={"type": "Forbidden", "message": "invalid token"})
    return found


PrincipalDep = Annotated[Principal, Depends(require_token)]


def require_scope(*scopes: Scope) -> Any:
    """A dependency refusing (403) tokens whose scope is not one of ``scopes``."""

    async def check(principal: PrincipalDep) -> Principal:
        if principal.scope not in scopes:
            raise HTTPException(
                403,
                detail={
                    "type": "Forbidden",
                    "message": f"a {principal.scope} token cannot do this (needs {' or '.join(scopes)})",
                },
            )
        return principal

    return check


SubmitterDep = Annotated[Principal, Depends(require_scope("submit", "admin"))]

JOB_ID = re.compile(r"^[0-9a-f]{32}$")


async def job_id_param(job_id: str) -> str:
    """A job id as the store creates them (32 lowercase hex digits); anything else is 404 before Redis is asked,
    so that no path parameter reaches another key (``<id>:parts``, ``<id>:events``)."""
    if not JOB_ID.match(job_id):
        raise JobNotFoundError(f"no job {job_id[:100]}")
    return job_id


StoreDep = Annotated[JobStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(settings_dep)]
QueueDep = Annotated[Queue, Depends(get_queue)]
JobIdDep = Annotated[str, Depends(job_id_param)]
