"""The error body every typed error uses, for the OpenAPI docs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    type: str
    message: str
    key: str | None = None
    file: str | None = None
    suggestions: list[str] | None = None


class ValidationItem(BaseModel):
    """One problem found by request validation (FastAPI's format)."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: ErrorDetail | list[ValidationItem]


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body cannot be parsed (not JSON / not UTF-8)"},
    401: {"model": ErrorBody, "description": "missing bearer token (when API tokens are configured)"},
    403: {
        "model": ErrorBody,
        "description": "wrong token, local path outside the allowed roots, or gated repo",
    },
    404: {
        "model": ErrorBody,
        "description": "unknown job, repo, revision, local folder or model_type (with close names)",
    },
    409: {"model": ErrorBody, "description": "the job already finished"},
    413: {"model": ErrorBody, "description": "request body over the size cap"},
    422: {
        "model": ErrorBody,
        "description": "invalid request (repo id, size, path...) or a checkpoint we refuse",
    },
    502: {"model": ErrorBody, "description": "the Hub failed the request (after retries)"},
    503: {"model": ErrorBody, "description": "the job store or the queue is unavailable"},
}
