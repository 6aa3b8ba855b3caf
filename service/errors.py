"""API errors: each typed error maps to one HTTP status and a body ``{"detail": {"type", "message", ...}}``."""

from __future__ import annotations

from typing import Any

from converter import errors
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


#: the one table from the library's typed errors to HTTP statuses (the most specific class listed wins; any other
#: ConversionError is a request we refuse: 422)
STATUS: dict[type[ConversionError], int] = {
    errors.UnknownModelTypeError: 404,
    errors.RepoNotFoundError: 404,
    errors.RevisionNotFoundError: 404,
    errors.UnsafePathError: 403,
    errors.GatedRepoError: 403,
    errors.OutputExistsError: 409,
    errors.DestinationBusyError: 409,
    errors.CancelledError: 409,
    errors.InsufficientSpaceError: 507,
    errors.OutputTooLargeError: 413,
    errors.HubError: 502,
}


def status_of(e: ConversionError) -> int:
    """``status_of(UnknownModelTypeError("x"))`` -> 404: the first class of ``type(e).__mro__`` in :data:`STATUS`."""
    return next((STATUS[c] for c in type(e).__mro__ if c in STATUS), 422)


def error_body(e: Exception) -> tuple[int, dict[str, Any]]:
    if isinstance(e, ApiError):
        return e.status, {"detail": e.to_dict()}
    if isinstance(e, ConversionError):
        d = {k: v for k, v in e.to_dict().items() if v is not None}
        if hasattr(e, "suggestions"):
            d["suggestions"] = e.suggestions
        return status_of(e), {"detail": d}
    raise e
