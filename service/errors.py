"""API errors: each typed error maps to one HTTP status and a body ``{"detail": {"type", "message", ...}}``."""

from __future__ import annotations

from typing import Any

from converter.errors import ConversionError


class ApiError(Exception):
    status = 400

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "message": self.message, **self.extra}


class InvalidRequestError(ApiError):
    """The request is well-formed JSON but asks for something impossible (bad repo id, size, path...)."""

    status = 422


class ForbiddenPathError(ApiError):
    """A local path outside CKPT_CONVERT_ALLOWED_LOCAL_ROOTS."""

    status = 403


class JobNotFoundError(ApiError):
    status = 404


class SourceNotFoundError(ApiError):
    """The source repo, revision or local folder does not exist (or is not visible with this token)."""

    status = 404


class ConflictError(ApiError):
    """The job is already finished, or the output folder is not empty."""

    status = 409


class ServiceUnavailableError(ApiError):
    status = 503


def error_body(e: Exception) -> tuple[int, dict[str, Any]]:
    if isinstance(e, ApiError):
        return e.status, {"detail": e.to_dict()}
    if isinstance(e, ConversionError):
        d = {k: v for k, v in e.to_dict().items() if v is not None}
        if hasattr(e, "suggestions"):
            d["suggestions"] = e.suggestions
        return e.http_status, {"detail": d}
    raise e
