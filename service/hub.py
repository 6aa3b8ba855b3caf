"""Hub look-ups done at submit time (revision -> commit sha, config.json), with Hub errors mapped to API errors."""

from __future__ import annotations

import json
from typing import Any

from .errors import GatedRepoError, InvalidRequestError, ServiceUnavailableError, SourceNotFoundError
from .settings import Settings


def _api(settings: Settings, token: str | None) -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=settings.hf_endpoint, token=token)


def _map(e: Exception, repo: str, revision: str) -> Exception:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.errors import (
        GatedRepoError as HfGated,
    )

    if isinstance(e, HfGated):
        return GatedRepoError(f"{repo} is gated: accept its terms on the Hub and use a token that has access")
    if isinstance(e, RepositoryNotFoundError):
        return SourceNotFoundError(f"repository {repo} not found (or not visible with this token)")
    if isinstance(e, RevisionNotFoundError):
        return SourceNotFoundError(f"revision {revision!r} not found in {repo}")
    if isinstance(e, EntryNotFoundError):
        return SourceNotFoundError(f"{repo}@{revision} has no such file")
    if isinstance(e, HfHubHTTPError):
        status = getattr(e.response, "status_code", None)
        if status in (401, 403):
            return GatedRepoError(f"the Hub refused access to {repo} (HTTP {status}); check the token")
        return ServiceUnavailableError(f"the Hub answered HTTP {status} for {repo}; try again later")
    return ServiceUnavailableError(f"cannot reach the Hub for {repo}: {type(e).__name__}")


def resolve_revision(repo: str, revision: str, settings: Settings, token: str | None) -> str:
    try:
        info = _api(settings, token).model_info(repo, revision=revision)
    except Exception as e:  # noqa: BLE001 - every failure becomes a typed API error
        raise _map(e, repo, revision) from None
    if not info.sha:
        raise InvalidRequestError(f"the Hub gave no commit sha for {repo}@{revision}")
    return str(info.sha)


def read_config(repo: str, revision: str, settings: Settings, token: str | None) -> dict[str, Any] | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = hf_hub_download(
            repo, "config.json", revision=revision, token=token, endpoint=settings.hf_endpoint
        )
    except EntryNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001
        raise _map(e, repo, revision) from None
    with open(path, "rb") as f:
        doc = json.loads(f.read())
    return doc if isinstance(doc, dict) else None
