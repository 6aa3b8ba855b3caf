"""FastAPI dependencies: settings, the job store, the queue, auth."""

from __future__ import annotations

import hmac
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException

from jobs.queue import TASK_CONVERT, make_celery
from jobs.secret import TOKEN_HEADER, seal
from jobs.settings import Settings, get_settings
from jobs.store import JobStore, store_for


@lru_cache
def _store(url: str) -> JobStore:
    return store_for(get_settings())


# Dependencies are async so that FastAPI does not hop to a thread for each of them on every request.


async def settings_dep() -> Settings:
    return get_settings()


async def get_store() -> JobStore:
    return _store(get_settings().redis)


class Queue:
    """Sends and revokes conversion tasks (the Celery app is created on first use)."""

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


_queue = Queue()


async def get_queue() -> Queue:
    return _queue


async def require_token(
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """With CKPT_CONVERT_API_TOKENS set: ``Authorization: Bearer <token>`` is required (401 without, 403 if wrong).

    Async (no thread hop): it runs on every protected request."""
    tokens = get_settings().token_list
    if not tokens:
        return
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPException(
            401,
            detail={"type": "Unauthorized", "message": "Authorization: Bearer <token> required"},
            headers={"WWW-Authenticate": "Bearer"},
        )
    given = authorization[7:].strip().encode()
    ok = False
    for t in tokens:  # compare with every token, each in constant time
        ok |= hmac.compare_digest(given, t.encode())
    if not ok:
        raise HTTPException(403, detail={"type": "Forbidden", "message": "invalid token"})


StoreDep = Annotated[JobStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(settings_dep)]
QueueDep = Annotated[Queue, Depends(get_queue)]
