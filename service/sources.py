"""Where a job reads and writes: parse, check and normalise sources and destinations at submit time."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ForbiddenPathError, InvalidRequestError, SourceNotFoundError
from .settings import Settings

#: Hub repo ids: `org/name`, letters, digits, `-_.`, no `--` or `..`, not starting/ending with `-`/`.` (Hub rules)
REPO_ID = re.compile(
    r"^(?!.*(--|\.\.))[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?/[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$"
)
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")


@dataclass(frozen=True)
class SourceRef:
    kind: str  # "local" | "hub"
    id: str  # absolute resolved path, or repo id
    revision: str  # "local", or the requested revision
    sha: str | None = None  # commit sha (hub) or content fingerprint (local)
    hub: Any = field(default=None, compare=False, repr=False)  # the resolved converter.hub.HubSource

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.id, "revision": self.revision, "sha": self.sha}


def check_local_path(path: str, settings: Settings, *, what: str) -> Path:
    """An absolute path under one of the allowed roots (after resolving symlinks and ``..``), else 403/422."""
    if not path or not os.path.isabs(path) or "\x00" in path:
        raise InvalidRequestError(f"{what} {path!r} must be an absolute path")
    real = Path(path).resolve()
    roots = settings.local_roots
    if not roots:
        raise ForbiddenPathError(f"local {what}s are disabled (set CKPT_CONVERT_ALLOWED_LOCAL_ROOTS)")
    if not any(real == r or r in real.parents for r in roots):
        raise ForbiddenPathError(f"{what} {path} is outside the allowed local roots")
    return real


def parse_repo_ref(value: str, settings: Settings, *, what: str = "source") -> tuple[str, str | None]:
    """``org/name``, ``hf://org/name``, ``org/name@rev`` or a model URL (``https://huggingface.co/org/name``
    [``/tree/rev``]) -> (repo id, revision named in it or None)."""
    rev: str | None = None
    if value.startswith(("http://", "https://")):
        from converter.hub import parse_hub_url

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


def local_fingerprint(folder: Path) -> str:
    """Content fingerprint of a local checkpoint from its files' names, sizes and modification times."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def resolve_source(source: str, revision: str, settings: Settings, token: str | None = None) -> SourceRef:
    if source.startswith("/"):
        folder = check_local_path(source, settings, what="source")
        if not folder.is_dir():
            raise SourceNotFoundError(f"source folder {source} does not exist")
        return SourceRef("local", str(folder), "local", local_fingerprint(folder))
    repo, named = parse_repo_ref(source, settings)
    if named is not None:
        if revision not in ("main", named):
            raise InvalidRequestError(
                f"source {source!r} names revision {named!r} but the request says {revision!r}"
            )
        revision = named
    if not REVISION.match(revision or ""):
        raise InvalidRequestError(f"revision {revision!r} is not a valid branch, tag or commit")
    from converter.hub import HubSource

    # one Hub call: the revision's commit and file list; Hub errors come typed (RepoNotFoundError -> 404, ...)
    src = HubSource(repo, revision, token=token, endpoint=settings.hf_endpoint)
    return SourceRef("hub", repo, revision, src.sha, src)


def read_source_config(ref: SourceRef, settings: Settings, token: str | None = None) -> dict[str, Any] | None:
    if ref.kind == "local":
        p = Path(ref.id) / "config.json"
        if not p.is_file():
            return None
        try:
            doc = json.loads(p.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidRequestError(f"config.json of {ref.id} is not valid JSON ({e})") from None
        return doc if isinstance(doc, dict) else None
    return ref.hub.read_config()


def normalise_destination(dest: dict[str, Any], src: SourceRef, settings: Settings) -> dict[str, Any]:
    if "local_path" in dest:
        out = check_local_path(dest["local_path"], settings, what="destination")
        if src.kind == "local":
            s = Path(src.id)
            if out == s or s in out.parents or out in s.parents:
                raise InvalidRequestError(f"destination {out} overlaps the source folder {s}")
        return {"local_path": str(out)}
    repo = parse_repo_id(dest["repo_id"], settings, what="destination repo_id")
    return {"repo_id": repo, "create_pr": bool(dest.get("create_pr")), "private": bool(dest.get("private"))}
