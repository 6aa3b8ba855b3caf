"""Where a job reads and writes: the request's source and destination checked (allowed roots, repo ids) and
resolved into the job's spec at submit time."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import Any

from converter.confine import locate
from converter.errors import UnsafePathError
from converter.spec import HUB, LOCAL, DestinationSpec, SourceSpec, parse_hub_url
from converter.storage import LocalSource, Source, open_source
from jobs.settings import Settings

from .errors import ForbiddenPathError, InvalidRequestError, SourceNotFoundError

#: Hub repo ids: `org/name`, letters, digits, `-_.`, no `--` or `..`, not starting/ending with `-`/`.` (Hub rules)
REPO_ID = re.compile(
    r"^(?!.*(--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?/[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$"
)
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")


def check_local_path(path: str, settings: Settings, *, what: str) -> str:
    """An absolute path lexically beneath one of the allowed roots (``..`` folded, links not followed: the
    workers open it beneath the root without following any), else 403/422. Returns the normalised path."""
    if not path or not os.path.isabs(path) or "\x00" in path:
        raise InvalidRequestError(f"{what} {path!r} must be an absolute path")
    try:
        path.encode()
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{what} {path!r} is not valid UTF-8") from None
    roots = settings.local_roots
    if not roots:
        raise ForbiddenPathError(f"local {what}s are disabled (set CKPT_CONVERT_ALLOWED_LOCAL_ROOTS)")
    try:
        locate(path, roots, what)
    except UnsafePathError:
        raise ForbiddenPathError(f"{what} {path} is outside the allowed local roots") from None
    return os.path.normpath(path)


def parse_repo_ref(value: str, settings: Settings, *, what: str = "source") -> tuple[str, str | None]:
    """``org/name``, ``hf://org/name``, ``org/name@rev`` or a model URL (``https://huggingface.co/org/name``
    [``/tree/rev``]) -> (repo id, revision named in it or None)."""
    rev: str | None = None
    if value.startswith(("http://", "https://")):
        ref = parse_hub_url(value, settings.hf_endpoint)
        if ref is None:
            raise InvalidRequestError(
                f"{what} {value!r} is not a Hub model URL (https://huggingface.co/org/name)"
            )
        repo, rev = ref
    else:
        repo = value[len("hf://") :] if value.startswith("hf://") else value
        if "@" in repo:
            repo, _, rev = repo.partition("@")
    if not REPO_ID.match(repo):
        raise InvalidRequestError(
            f"{what} {value!r} is not a Hub repo id (org/name) or an absolute local path"
        )
    return repo, rev or None


def parse_repo_id(value: str, settings: Settings, *, what: str = "source") -> str:
    repo, rev = parse_repo_ref(value, settings, what=what)
    if rev is not None:
        raise InvalidRequestError(f"{what} {value!r}: a destination names a repo, not a revision")
    return repo


def resolve_source(
    source: str, revision: str, settings: Settings, token: str | None = None
) -> tuple[SourceSpec, Source]:
    """The request's source as a spec (a Hub revision resolved to its commit, a local folder fingerprinted) and
    the opened source (to read its config.json and check the destination against it)."""
    if source.startswith("/"):
        folder = check_local_path(source, settings, what="source")
        if not os.path.isdir(folder):
            raise SourceNotFoundError(f"source folder {source} does not exist")
        opened = LocalSource(folder, roots=settings.local_roots)
        return SourceSpec(LOCAL, folder, sha=opened.folder.fingerprint()), opened
    repo, named = parse_repo_ref(source, settings)
    if named is not None:
        if revision not in ("main", named):
            raise InvalidRequestError(
                f"source {source!r} names revision {named!r} but the request says {revision!r}"
            )
        revision = named
    if not REVISION.match(revision or ""):
        raise InvalidRequestError(f"revision {revision!r} is not a valid branch, tag or commit")
    # one Hub call: the revision's commit and file list; Hub errors come typed (RepoNotFoundError -> 404, ...)
    spec = SourceSpec(HUB, repo, revision)
    src = open_source(spec, token=token, endpoint=settings.hf_endpoint)
    return replace(spec, sha=src.sha), src  # type: ignore[attr-defined]


def resolve_destination(
    dest: dict[str, Any], settings: Settings, *, overwrite: bool = False
) -> DestinationSpec:
    if "local_path" in dest:
        out = check_local_path(dest["local_path"], settings, what="destination")
        return DestinationSpec(LOCAL, out, overwrite=overwrite)
    repo = parse_repo_id(dest["repo_id"], settings, what="destination repo_id")
    return DestinationSpec(HUB, repo, bool(dest.get("create_pr")), bool(dest.get("private")), overwrite)
