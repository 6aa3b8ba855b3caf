"""A local stand-in for the Hugging Face Hub, for tests and benchmarks (no network).

It speaks the HTTP protocol of ``huggingface_hub`` 2.4 (``shared/reference/HUB_PROTOCOL.md``), so the
real, unmodified client works against it: ``HfApi(endpoint=...)``, ``hf_hub_download``,
``snapshot_download``, ``HfFileSystem``, ``create_commit`` (regular files inline, or git-LFS basic
transfer), pull requests, refs, commits. There is no Xet: with ``upload_mode="lfs"`` the client must run
with ``HF_HUB_DISABLE_XET=1``; ``upload_mode="regular"`` works with default client settings.

State lives on disk under ``root`` (reloaded when a stand-in starts on the same root)::

    root/blobs/<sha256>                              file contents, content-addressed (regular and LFS)
    root/repos/<type>s/<ns>/<name>/repo.json         settings, refs, pull requests / discussions
    root/repos/<type>s/<ns>/<name>/commits/<sha>.json  one snapshot per commit: {path: sha256, size, oid, lfs}

Like the Hub, a new repo starts with an "initial commit" holding ``.gitattributes``; repo ids without a
namespace go to ``standin-user``. Blob storage is shared by all repos (an LFS batch skips any blob already
stored). LFS PUTs go to ``/lfs-upload/<oid>/<nonce>`` hrefs handed out by the batch answer (the client
sends no Authorization there, as with presigned S3 URLs).

On top of the protocol: a request log (paths as the server decodes them, e.g.
``/api/models/o/r/commit/refs/pr/1``), fault injection (HTTP status, dropped connection, delay) and
inspection helpers, all under ``/_standin/...`` (JSON) and wrapped by :class:`StandInClient`, so a test
drives an in-process :class:`HubStandIn` and a stand-in in another process (:class:`StandInProcess`, or
``python tests/support/hub_standin.py --root DIR --port N``) the same way.

    with HubStandIn(tmp_path / "hub", upload_mode="lfs") as hub:
        api = HfApi(endpoint=hub.endpoint)
        ...
        hub.add_fault(r"/resolve/", method="GET", drop=True)
        assert hub.blob_uploads() == {sha256: 1}
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, unquote

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

UploadMode = Literal["lfs", "regular"]
UPLOAD_MODES: tuple[str, ...] = ("lfs", "regular")
STANDIN_USER = "standin-user"
ADMIN_PREFIX = "/_standin"
READY_LINE_PREFIX = "HUB_STANDIN_ENDPOINT="
LFS_POINTER_VERSION = "https://git-lfs.github.com/spec/v1"
# Plural URL segment of /api/{T}/... -> repo type, and the URL prefix of each type on resolve / .git URLs.
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
PREFIX_TYPES = {"datasets": "dataset", "spaces": "space", "kernels": "kernel"}
DISCUSSIONS_PAGE = 50
CHUNK = 1 << 20
GITATTRIBUTES = b"".join(
    f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n".encode()
    for ext in ("7z", "bin", "gguf", "h5", "npy", "onnx", "pt", "pth", "safetensors", "tar", "zip")
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# ------------------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------------------


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub calls a regular file's ``oid`` / ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-LFS pointer file committed in place of an LFS file's content."""
    return f"version {LFS_POINTER_VERSION}\noid sha256:{sha256}\nsize {size}\n".encode()


def now_iso() -> str:
    """A timestamp in the Hub's format (``2024-01-31T12:00:00.000Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def repo_url_path(repo_type: str, repo_id: str) -> str:
    return f"{URL_PREFIXES[repo_type]}{repo_id}"


class RangeNotSatisfiable(Exception):
    """The Range header cannot be satisfied for a file of this size (answer 416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=`` range into inclusive ``(start, end)`` offsets.

    Returns ``None`` when the whole file should be sent (no header, malformed or multi-range header:
    RFC 9110 lets a server ignore those) and raises :class:`RangeNotSatisfiable` for ranges outside the file.
    """
    if header is None:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if match is None or (not match[1] and not match[2]):
        return None
    if not match[1]:  # suffix range: the last n bytes
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    start = int(match[1])
    end = int(match[2]) if match[2] else size - 1
    if match[2] and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    return start, min(end, size - 1)


def bearer_token(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return None


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------------
# Errors: the X-Error-Code headers huggingface_hub turns into typed exceptions
# ------------------------------------------------------------------------------------------------------------


class HubError(Exception):
    """An error answer; ``code`` goes to ``X-Error-Code``.

    huggingface_hub turns these into typed errors: RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo.
    """

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}

    def response(self, head: bool = False) -> Response:
        headers = {"X-Error-Message": self.message, **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        if head:
            return Response(status_code=self.status, headers=headers)
        return JSONResponse({"error": self.message}, status_code=self.status, headers=headers)


def repo_not_found(repo_id: str, status: int = 404) -> HubError:
    return HubError(status, f"Repository not found: {repo_id}", "RepoNotFound")


def revision_not_found(revision: str) -> HubError:
    return HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def entry_not_found(path: str, commit: str) -> HubError:
    return HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit})


def bad_request(message: str) -> HubError:
    return HubError(400, message)


# ------------------------------------------------------------------------------------------------------------
# Data model
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """A file in a commit: sha256, size, git oid (blob sha1, or the LFS pointer's sha1), storage kind."""

    sha256: str
    size: int
    oid: str
    lfs: bool

    @classmethod
    def regular(cls, data: bytes, sha256: str) -> FileEntry:
        return cls(sha256=sha256, size=len(data), oid=git_blob_sha1(data), lfs=False)

    @classmethod
    def lfs_file(cls, sha256: str, size: int) -> FileEntry:
        return cls(sha256=sha256, size=size, oid=git_blob_sha1(lfs_pointer(sha256, size)), lfs=True)

    @property
    def etag(self) -> str:
        """What the Hub sends as ETag: the git oid for regular files, the sha256 for LFS files."""
        return self.sha256 if self.lfs else self.oid

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.sha256, self.size))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Commit:
    id: str
    parents: list[str]
    title: str
    message: str
    date: str
    authors: list[str]
    files: dict[str, FileEntry]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "files": {p: e.to_json() for p, e in sorted(self.files.items())}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Commit:
        return cls(**{**data, "files": {p: FileEntry(**e) for p, e in data["files"].items()}})


@dataclass
class Discussion:
    """A discussion or pull request. A pull request's head is the ref ``refs/pr/<num>``."""

    num: int
    title: str
    author: str
    status: str  # open | closed | merged | draft
    created_at: str
    is_pull_request: bool
    description: str = ""
    base_ref: str | None = None  # the branch the pull request targets, e.g. refs/heads/main
    base_commit: str | None = None  # the commit the pull request started from
    merge_commit: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ref(self) -> str | None:
        return f"refs/pr/{self.num}" if self.is_pull_request else None


@dataclass
class Repo:
    type: str
    id: str
    private: bool
    created_at: str
    gated: bool = False
    tokens: list[str] | None = None  # when set, only these bearer tokens may access the repo
    refs: dict[str, str] = field(default_factory=dict)  # full ref name -> commit id
    discussions: list[Discussion] = field(default_factory=list)
    commits: dict[str, Commit] = field(default_factory=dict, repr=False)  # loaded from commits/*.json

    @property
    def key(self) -> tuple[str, str]:
        return self.type, self.id

    def settings_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("commits")
        return data

    def discussion(self, num: int) -> Discussion:
        for d in self.discussions:
            if d.num == num:
                return d
        raise HubError(404, f"Discussion #{num} not found")


def _event(kind: str, author: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": secrets.token_hex(12),
        "type": kind,
        "createdAt": now_iso(),
        "author": {"name": author, "type": "user"},
        "data": data,
    }


def _changed_paths(old: dict[str, FileEntry], new: dict[str, FileEntry]) -> set[str]:
    return {p for p in old.keys() | new.keys() if old.get(p) != new.get(p)}


# ------------------------------------------------------------------------------------------------------------
# The store: repos, commits, refs and blobs on disk
# ------------------------------------------------------------------------------------------------------------


class HubStore:
    """Repos with git-like commits per ref and a content-addressed blob store, persisted under ``root``."""

    def __init__(self, root: Path, upload_mode: str = "lfs") -> None:
        if upload_mode not in UPLOAD_MODES:
            raise ValueError(f"upload_mode must be one of {UPLOAD_MODES}, got {upload_mode!r}")
        self.root = Path(root)
        self.upload_mode = upload_mode
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blob_uploads: dict[str, int] = {}  # sha256 -> number of LFS PUTs that stored it
        self.upload_grants: dict[str, tuple[str, int]] = {}  # nonce of an upload href -> (sha256, size)
        self.blobs_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        for d in (self.blobs_dir, self.tmp_dir, self.root / "repos"):
            d.mkdir(parents=True, exist_ok=True)
        self._load()

    # -- persistence -----------------------------------------------------------------------------------------

    def repo_dir(self, repo: Repo) -> Path:
        return self.root / "repos" / f"{repo.type}s" / repo.id

    def _load(self) -> None:
        for settings in sorted(self.root.glob("repos/*/*/*/repo.json")):
            data = json.loads(settings.read_text())
            data["discussions"] = [Discussion(**d) for d in data.get("discussions", [])]
            repo = Repo(**data)
            for path in (settings.parent / "commits").glob("*.json"):
                commit = Commit.from_json(json.loads(path.read_text()))
                repo.commits[commit.id] = commit
            self.repos[repo.key] = repo

    def _save(self, repo: Repo) -> None:
        _write_json_atomic(self.repo_dir(repo) / "repo.json", repo.settings_json())

    # -- blobs -----------------------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise bad_request(f"Invalid sha256 oid: {sha256!r}")
        return self.blobs_dir / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        path = self.blob_path(sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    def put_blob(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha256)
        if not path.exists():
            tmp = self.tmp_dir / f"{sha256}.{secrets.token_hex(4)}"
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha256

    def read_blob(self, sha256: str) -> bytes:
        return self.blob_path(sha256).read_bytes()

    # -- repos -----------------------------------------------------------------------------------------------

    def get(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise repo_not_found(repo_id)
        return repo

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}")
            repo = Repo(type=repo_type, id=repo_id, private=private, created_at=now_iso())
            sha = self.put_blob(GITATTRIBUTES)
            files = {".gitattributes": FileEntry.regular(GITATTRIBUTES, sha)}
            initial = self._new_commit(repo, [], "initial commit", "", ["system"], files)
            repo.refs["refs/heads/main"] = initial.id
            self.repos[repo.key] = repo
            self._save(repo)
            return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            repo = self.get(repo_type, repo_id)
            del self.repos[repo.key]
            shutil.rmtree(self.repo_dir(repo), ignore_errors=True)

    def update_settings(self, repo: Repo, **changes: Any) -> None:
        with self.lock:
            for name, value in changes.items():
                setattr(repo, name, value)
            self._save(repo)

    # -- revisions -------------------------------------------------------------------------------------------

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """A branch, tag, full ref (``refs/pr/1``) or commit sha -> commit; RevisionNotFound otherwise."""
        with self.lock:
            for ref in (revision, f"refs/heads/{revision}", f"refs/tags/{revision}"):
                if ref in repo.refs:
                    return repo.commits[repo.refs[ref]]
            if revision in repo.commits:
                return repo.commits[revision]
        raise revision_not_found(revision)

    def ref_name(self, repo: Repo, revision: str) -> str:
        """The full name of an existing branch or pull-request ref (what a commit can be pushed to)."""
        for ref in (revision, f"refs/heads/{revision}"):
            if ref in repo.refs and (ref.startswith("refs/heads/") or ref.startswith("refs/pr/")):
                return ref
        if re.fullmatch(r"[0-9a-f]{40}", revision) and revision in repo.commits:
            raise bad_request(f"Cannot commit to a commit id ({revision}): use a branch or refs/pr/N")
        raise revision_not_found(revision)

    def history(self, repo: Repo, revision: str) -> list[Commit]:
        """Commits reachable from ``revision`` through first parents, newest first."""
        with self.lock:
            commit: Commit | None = self.resolve(repo, revision)
            out = []
            while commit is not None:
                out.append(commit)
                commit = repo.commits[commit.parents[0]] if commit.parents else None
            return out

    def last_commit(self, repo: Repo, head: Commit, path: str, is_dir: bool) -> Commit:
        """The newest commit (first-parent history) that changed ``path`` (a file, or a folder's files)."""

        def view(c: Commit) -> Any:
            if is_dir:
                return {p: e for p, e in c.files.items() if p.startswith(path + "/")}
            return c.files.get(path)

        commit = head
        while commit.parents:
            parent = repo.commits[commit.parents[0]]
            if view(parent) != view(commit):
                return commit
            commit = parent
        return commit

    def _new_commit(
        self,
        repo: Repo,
        parents: list[str],
        title: str,
        message: str,
        authors: list[str],
        files: dict[str, FileEntry],
    ) -> Commit:
        date = now_iso()
        digest = json.dumps(
            [
                parents,
                title,
                message,
                date,
                {p: e.to_json() for p, e in sorted(files.items())},
                time.time_ns(),
            ]
        )
        commit = Commit(
            hashlib.sha1(digest.encode()).hexdigest(), parents, title, message, date, authors, files
        )
        repo.commits[commit.id] = commit
        _write_json_atomic(self.repo_dir(repo) / "commits" / f"{commit.id}.json", commit.to_json())
        return commit

    # -- writes ----------------------------------------------------------------------------------------------

    def commit(
        self,
        repo: Repo,
        revision: str,
        header: dict[str, Any],
        operations: list[tuple[str, str, FileEntry | None]],
        *,
        create_pr: bool,
        author: str,
    ) -> tuple[Commit, Discussion | None]:
        """Apply ``(kind, path, entry)`` operations on top of ``revision``.

        ``kind`` is add, delete-file or delete-folder. With ``create_pr`` the commit opens ``refs/pr/N``.
        """
        with self.lock:
            target = self.ref_name(repo, revision)
            head = repo.refs[target]
            parent_commit = header.get("parentCommit")
            if create_pr:
                if not target.startswith("refs/heads/"):
                    raise bad_request(f"Pull requests can only target a branch, not {target}")
                base = parent_commit or head
                if base not in repo.commits:
                    raise revision_not_found(base)
            else:
                if parent_commit and parent_commit != head:
                    raise HubError(
                        412, f"A commit has happened since {parent_commit}. Please refresh and try again."
                    )
                base = head
            files = dict(repo.commits[base].files)
            for kind, path, entry in operations:
                if kind == "add":
                    assert entry is not None
                    files[path] = entry
                elif kind == "delete-file":
                    if files.pop(path, None) is None:
                        raise entry_not_found(f"A file with this name doesn't exist: {path}", head)
                else:
                    under = [p for p in files if p.startswith(path.rstrip("/") + "/")]
                    if not under:
                        raise entry_not_found(f"A folder with this name doesn't exist: {path}", head)
                    for p in under:
                        del files[p]
            title = str(header.get("summary") or "Upload files")
            description = str(header.get("description") or "")
            commit = self._new_commit(repo, [base], title, description, [author], files)
            pr = None
            if create_pr:
                pr = self._new_discussion(
                    repo, title, description, author, pull_request=True, base_ref=target
                )
                pr.base_commit, pr.status = base, "open"
                repo.refs[f"refs/pr/{pr.num}"] = commit.id
                pr.events.append(_event("commit", author, {"subject": title, "oid": commit.id}))
            else:
                repo.refs[target] = commit.id
                if target.startswith("refs/pr/"):
                    d = repo.discussion(int(target.rsplit("/", 1)[1]))
                    d.events.append(_event("commit", author, {"subject": title, "oid": commit.id}))
                    if d.status == "draft":
                        d.status = "open"
            self._save(repo)
            return commit, pr

    def _new_discussion(
        self,
        repo: Repo,
        title: str,
        description: str,
        author: str,
        *,
        pull_request: bool,
        base_ref: str | None,
    ) -> Discussion:
        num = max((d.num for d in repo.discussions), default=0) + 1
        d = Discussion(
            num=num,
            title=title,
            author=author,
            status="draft" if pull_request else "open",
            created_at=now_iso(),
            is_pull_request=pull_request,
            description=description,
            base_ref=base_ref if pull_request else None,
        )
        d.events.append(
            _event("comment", author, {"edited": False, "hidden": False, "latest": {"raw": description}})
        )
        repo.discussions.append(d)
        return d

    def create_discussion(
        self, repo: Repo, title: str, description: str, author: str, pull_request: bool
    ) -> Discussion:
        """A discussion, or a draft pull request whose ref starts at the head of main (as the Hub does)."""
        with self.lock:
            d = self._new_discussion(
                repo, title, description, author, pull_request=pull_request, base_ref="refs/heads/main"
            )
            if pull_request:
                d.base_commit = repo.refs["refs/heads/main"]
                repo.refs[f"refs/pr/{d.num}"] = d.base_commit
            self._save(repo)
            return d

    def conflicts(self, repo: Repo, d: Discussion) -> list[str]:
        """Paths changed both in the pull request and on its target branch since the pull request started."""
        if (
            not d.is_pull_request
            or d.status == "merged"
            or d.base_ref not in repo.refs
            or d.ref not in repo.refs
        ):
            return []
        base = repo.commits[d.base_commit or repo.refs[d.base_ref]].files
        pr_head = repo.commits[repo.refs[d.ref]].files
        target_head = repo.commits[repo.refs[d.base_ref]].files
        both = _changed_paths(base, pr_head) & _changed_paths(base, target_head)
        return sorted(p for p in both if pr_head.get(p) != target_head.get(p))

    def merge(self, repo: Repo, d: Discussion, author: str) -> Commit:
        """Squash-merge a pull request into its target branch; 409 on conflicting files."""
        with self.lock:
            if (
                not d.is_pull_request
                or d.status not in ("open", "draft")
                or d.ref is None
                or d.base_ref is None
            ):
                raise bad_request(f"Discussion #{d.num} is not an open pull request")
            if conflicting := self.conflicts(repo, d):
                raise HubError(409, f"Merge conflict on: {', '.join(conflicting)}")
            base = repo.commits[d.base_commit or repo.refs[d.base_ref]].files
            pr_head = repo.commits[repo.refs[d.ref]].files
            files = dict(repo.commits[repo.refs[d.base_ref]].files)
            for path in _changed_paths(base, pr_head):
                if path in pr_head:
                    files[path] = pr_head[path]
                else:
                    files.pop(path, None)
            parents = [repo.refs[d.base_ref]]
            commit = self._new_commit(repo, parents, f"{d.title} (#{d.num})", d.description, [author], files)
            repo.refs[d.base_ref] = commit.id
            d.status, d.merge_commit = "merged", commit.id
            d.events.append(_event("status-change", author, {"status": "merged"}))
            self._save(repo)
            return commit

    def set_status(self, repo: Repo, d: Discussion, status: str, author: str) -> dict[str, Any]:
        with self.lock:
            d.status = status
            event = _event("status-change", author, {"status": status})
            d.events.append(event)
            self._save(repo)
            return event

    def comment(self, repo: Repo, d: Discussion, text: str, author: str) -> dict[str, Any]:
        with self.lock:
            event = _event("comment", author, {"edited": False, "hidden": False, "latest": {"raw": text}})
            d.events.append(event)
            self._save(repo)
            return event

    def create_branch(self, repo: Repo, branch: str, starting_point: str | None) -> None:
        with self.lock:
            if branch.startswith("refs/") or not re.fullmatch(r"[\w.\-/]+", branch):
                raise bad_request(f"Invalid reference for a branch: {branch}")
            if f"refs/heads/{branch}" in repo.refs:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.refs[f"refs/heads/{branch}"] = self.resolve(repo, starting_point or "main").id
            self._save(repo)

    def delete_branch(self, repo: Repo, branch: str) -> None:
        with self.lock:
            if repo.refs.pop(f"refs/heads/{branch}", None) is None:
                raise revision_not_found(branch)
            self._save(repo)


# ------------------------------------------------------------------------------------------------------------
# Request log and fault injection
# ------------------------------------------------------------------------------------------------------------


class FaultSpec(BaseModel):
    """A fault rule. ``path`` is a regex searched in the (decoded) URL path; ``count=-1`` makes it permanent.

    The action: ``delay`` seconds first (if set), then either answer ``status`` with an empty body, or
    ``drop`` the connection (headers plus ``drop_after`` body bytes, default half the body, then close; a
    HEAD or an empty body is dropped before anything is sent), or answer normally.
    """

    path: str = ".*"
    method: str = "*"
    count: int = 1
    status: int | None = None
    drop: bool = False
    drop_after: int | None = None
    delay: float | None = None
    range_only: bool = False


@dataclass
class FaultRule:
    id: int
    spec: FaultSpec
    remaining: int
    hits: int = 0

    def matches(self, method: str, path: str, has_range: bool) -> bool:
        return (
            self.remaining != 0
            and self.spec.method in ("*", method)
            and (has_range or not self.spec.range_only)
            and re.search(self.spec.path, path) is not None
        )

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self.spec.model_dump(), "remaining": self.remaining, "hits": self.hits}


class Monitor:
    """The request log (all but ``/_standin``) and the fault rules, shared by middleware and admin API."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[dict[str, Any]] = []
        self.rules: list[FaultRule] = []
        self._next_rule = 1

    def add_rule(self, spec: FaultSpec) -> FaultRule:
        if spec.status is None and not spec.drop and spec.delay is None:
            raise bad_request("A fault needs a status, drop=true or a delay")
        try:
            re.compile(spec.path)
        except re.error as err:
            raise bad_request(f"Invalid path regex {spec.path!r}: {err}") from err
        spec = spec.model_copy(update={"method": spec.method.upper()})
        with self.lock:
            rule = FaultRule(self._next_rule, spec, spec.count)
            self._next_rule += 1
            self.rules.append(rule)
            return rule

    def take(self, method: str, path: str, has_range: bool) -> FaultRule | None:
        """The first active rule matching this request, with one use consumed."""
        with self.lock:
            for rule in self.rules:
                if rule.matches(method, path, has_range):
                    rule.hits += 1
                    if rule.remaining > 0:
                        rule.remaining -= 1
                    return rule
        return None

    def record(self, entry: dict[str, Any]) -> None:
        with self.lock:
            entry["seq"] = len(self.log)
            self.log.append(entry)

    def requests(self, method: str | None = None, path_regex: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            entries = list(self.log)
        return [
            e
            for e in entries
            if (method is None or e["method"] == method.upper())
            and (path_regex is None or re.search(path_regex, e["path"]))
        ]


class _Dropped(Exception):
    """Raised into the app once a drop fault has cut its response."""


async def _close_connection(send: Send) -> bool:
    """Close the connection under uvicorn's ``send`` (flushing what was written) and wait until it is gone.

    Relies on uvicorn's RequestResponseCycle (``send.__self__``) holding ``transport`` and ``disconnected``.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        return False
    transport.close()
    deadline = time.monotonic() + 2.0
    while not getattr(cycle, "disconnected", True) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return True


class InstrumentMiddleware:
    """ASGI middleware: logs each Hub request (status, body bytes sent) and applies the fault rules."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], monitor: Monitor) -> None:
        self.app, self.monitor = app, monitor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        entry: dict[str, Any] = {
            "method": method,
            "path": path,
            "query": scope.get("query_string", b"").decode("latin-1"),
            "range": headers.get("range"),
            "authorization": headers.get("authorization"),
            "status": None,
            "bytes_sent": 0,
            "fault": None,
            "dropped": False,
            "duration": None,
        }
        # Logged now, updated before each message goes out: a client never sees bytes the log does not count.
        self.monitor.record(entry)
        started = time.monotonic()
        try:
            rule = self.monitor.take(method, path, "range" in headers)
            if rule is not None:
                entry["fault"] = rule.id
                if rule.spec.delay:
                    await asyncio.sleep(rule.spec.delay)
            if rule is not None and rule.spec.status is not None:
                await self._answer_status(rule.spec.status, receive, send, entry)
            elif rule is not None and rule.spec.drop:
                await self._run_dropping(rule.spec.drop_after, scope, receive, send, entry)
            else:
                await self._run_logged(scope, receive, send, entry)
        finally:
            entry["duration"] = time.monotonic() - started

    async def _run_logged(self, scope: Scope, receive: Receive, send: Send, entry: dict[str, Any]) -> None:
        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            elif message["type"] == "http.response.body":
                entry["bytes_sent"] += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, logged_send)

    @staticmethod
    async def _answer_status(status: int, receive: Receive, send: Send, entry: dict[str, Any]) -> None:
        more = True
        while more:  # read the request body first, so that the client is not cut while still sending it
            message = await receive()
            more = message["type"] == "http.request" and message.get("more_body", False)
        entry["status"] = status
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def _run_dropping(
        self, drop_after: int | None, scope: Scope, receive: Receive, send: Send, entry: dict[str, Any]
    ) -> None:
        state: dict[str, Any] = {"dropped": False, "limit": 0}

        async def dropping_send(message: Message) -> None:
            if state["dropped"]:
                raise _Dropped
            if message["type"] == "http.response.start":
                length = next(
                    (int(v) for k, v in message.get("headers", []) if k.lower() == b"content-length"), None
                )
                limit = drop_after if drop_after is not None else (length or 0) // 2
                if scope["method"] == "HEAD" or length == 0 or (length is not None and limit >= length):
                    # nothing worth cutting: drop before the headers
                    state["dropped"] = entry["dropped"] = True
                    raise _Dropped
                state["limit"] = limit
                entry["status"] = message["status"]
                await send(message)
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                room = state["limit"] - entry["bytes_sent"]
                if len(body) < room:
                    entry["bytes_sent"] += len(body)
                    await send(message)
                    return
                state["dropped"] = entry["dropped"] = True
                if room > 0:
                    entry["bytes_sent"] += room
                    await send({"type": "http.response.body", "body": body[:room], "more_body": True})
                raise _Dropped
            else:
                await send(message)

        try:
            await self.app(scope, receive, dropping_send)
        except BaseException:
            if not state["dropped"]:
                raise
        if state["dropped"] and not await _close_connection(send):
            raise RuntimeError("dropped connection (server without a reachable transport)")


# ------------------------------------------------------------------------------------------------------------
# Hub protocol
# ------------------------------------------------------------------------------------------------------------

# Routes over the *raw* path segments (each percent-decoded on its own: ``refs%2Fpr%2F1`` stays one segment).
# {T}: models|datasets|... ; {prefix}: datasets|spaces|kernels ;
# {rev}: one segment, or refs/<kind>/<name> sent unquoted;
# {name.git}: a repo name ending in .git ; {*path}: the rest (possibly empty).
ROUTES: list[tuple[str, tuple[str, ...], str]] = [
    ("POST", ("api", "repos", "create"), "create_repo"),
    ("DELETE", ("api", "repos", "delete"), "delete_repo"),
    ("POST", ("api", "validate-yaml"), "validate_yaml"),
    ("GET", ("api", "whoami-v2"), "whoami"),
    ("GET", ("api", "{T}", "{ns}", "{name}"), "repo_info"),
    ("GET", ("api", "{T}", "{ns}", "{name}", "revision", "{rev}"), "repo_info"),
    ("GET", ("api", "{T}", "{ns}", "{name}", "tree", "{rev}", "{*path}"), "tree"),
    ("POST", ("api", "{T}", "{ns}", "{name}", "paths-info", "{rev}"), "paths_info"),
    ("POST", ("api", "{T}", "{ns}", "{name}", "preupload", "{rev}"), "preupload"),
    ("POST", ("api", "{T}", "{ns}", "{name}", "commit", "{rev}"), "commit"),
    ("GET", ("api", "{T}", "{ns}", "{name}", "refs"), "list_refs"),
    ("GET", ("api", "{T}", "{ns}", "{name}", "commits", "{rev}"), "list_commits"),
    ("POST", ("api", "{T}", "{ns}", "{name}", "branch", "{rev}"), "create_branch"),
    ("DELETE", ("api", "{T}", "{ns}", "{name}", "branch", "{rev}"), "delete_branch"),
    ("GET", ("api", "{T}", "{ns}", "{name}", "discussions"), "list_discussions"),
    ("POST", ("api", "{T}", "{ns}", "{name}", "discussions"), "create_discussion"),
    ("GET", ("api", "{T}", "{ns}", "{name}", "discussions", "{num}"), "discussion_details"),
    ("POST", ("api", "{T}", "{ns}", "{name}", "discussions", "{num}", "{action}"), "discussion_action"),
    ("GET", ("api", "{T}", "{ns}", "{name}", "xet-write-token", "{rev}"), "no_xet"),
    ("GET", ("api", "{T}", "{ns}", "{name}", "xet-read-token", "{rev}"), "no_xet"),
    ("GET", ("api", "{T}", "{ns}", "{name}", "safetensors-metadata", "{*path}"), "safetensors_metadata"),
    ("GET", ("{ns}", "{name}", "resolve", "{rev}", "{*path}"), "resolve"),
    ("HEAD", ("{ns}", "{name}", "resolve", "{rev}", "{*path}"), "resolve"),
    ("GET", ("{prefix}", "{ns}", "{name}", "resolve", "{rev}", "{*path}"), "resolve"),
    ("HEAD", ("{prefix}", "{ns}", "{name}", "resolve", "{rev}", "{*path}"), "resolve"),
    ("POST", ("{ns}", "{name.git}", "info", "lfs", "objects", "batch"), "lfs_batch"),
    ("POST", ("{prefix}", "{ns}", "{name.git}", "info", "lfs", "objects", "batch"), "lfs_batch"),
    ("POST", ("{ns}", "{name.git}", "info", "lfs", "objects", "verify"), "lfs_verify"),
    ("POST", ("{prefix}", "{ns}", "{name.git}", "info", "lfs", "objects", "verify"), "lfs_verify"),
    ("PUT", ("lfs-upload", "{oid}", "{nonce}"), "lfs_upload"),
]


def _take_revision(segments: list[str], i: int) -> tuple[str, int]:
    """A revision at ``segments[i]``; ``refs/pr/1`` sent without quoting spans three segments."""
    if (
        segments[i] == "refs"
        and len(segments) > i + 2
        and segments[i + 1] in ("heads", "tags", "pr", "convert")
    ):
        return "/".join(segments[i : i + 3]), i + 3
    return segments[i], i + 1


def match_route(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    params: dict[str, str] = {}
    i = 0
    for token in pattern:
        if token == "{*path}":
            params["path"] = "/".join(segments[i:])
            return params
        if i >= len(segments):
            return None
        if token == "{rev}":
            params["rev"], i = _take_revision(segments, i)
            continue
        seg = segments[i]
        if token == "{T}":
            if seg not in API_TYPES:
                return None
            params["repo_type"] = API_TYPES[seg]
        elif token == "{prefix}":
            if seg not in PREFIX_TYPES:
                return None
            params["repo_type"] = PREFIX_TYPES[seg]
        elif token == "{name.git}":
            if not seg.endswith(".git") or len(seg) <= 4:
                return None
            params["name"] = seg[:-4]
        elif token.startswith("{"):
            params[token[1:-1]] = seg
        elif token != seg:
            return None
        i += 1
    return params if i == len(segments) else None


class HubProtocol:
    """The Hub endpoints, dispatched by :data:`ROUTES` over the raw request path."""

    def __init__(self, store: HubStore) -> None:
        self.store = store

    async def dispatch(self, request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.url.path.encode()
        segments = [unquote(s) for s in raw.decode("utf-8", "replace").split("?")[0].split("/")[1:]]
        if segments and segments[-1] == "":
            segments.pop()
        head = request.method == "HEAD"
        for method, pattern, handler in ROUTES:
            if method != request.method:
                continue
            params = match_route(pattern, segments)
            if params is None:
                continue
            if "ns" in params:
                params["repo_id"] = f"{params.pop('ns')}/{params.pop('name')}"
                params.setdefault("repo_type", "model")
            try:
                return await getattr(self, handler)(request, **params)
            except HubError as err:
                return err.response(head=head)
        return HubError(404, f"Not found: {request.method} {request.url.path}").response(head=head)

    # -- access ----------------------------------------------------------------------------------------------

    def repo(self, request: Request, repo_type: str, repo_id: str, *, download: bool = False) -> Repo:
        """The repo, if this request may see it: token list, private repos (need a token), gated downloads."""
        repo = self.store.get(repo_type, repo_id)
        token = bearer_token(request.headers.get("authorization"))
        if repo.tokens is not None and token not in repo.tokens:
            raise repo_not_found(repo_id, status=401)
        if repo.private and token is None:
            raise repo_not_found(repo_id, status=401)
        if download and repo.gated and not (repo.tokens and token in repo.tokens):
            raise HubError(403, f"Access to {repo_type} {repo_id} is restricted (gated repo).", "GatedRepo")
        return repo

    @staticmethod
    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def repo_url(self, request: Request, repo: Repo) -> str:
        return f"{self.base_url(request)}/{repo_url_path(repo.type, repo.id)}"

    @staticmethod
    async def json_body(request: Request) -> Any:
        try:
            return json.loads(await request.body() or b"{}")
        except json.JSONDecodeError as err:
            raise bad_request(f"Invalid JSON body: {err}") from err

    # -- repos -----------------------------------------------------------------------------------------------

    async def create_repo(self, request: Request) -> Response:
        body = await self.json_body(request)
        name = body.get("name")
        if not name or "/" in name:
            raise bad_request(f"Invalid repo name: {name!r}")
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise bad_request(f"Invalid repo type: {repo_type!r}")
        repo_id = f"{body.get('organization') or STANDIN_USER}/{name}"
        url = f"{self.base_url(request)}/{repo_url_path(repo_type, repo_id)}"
        private = body.get("visibility") == "private" or bool(body.get("private"))
        try:
            self.store.create_repo(repo_type, repo_id, private)
        except HubError as err:  # huggingface_hub reads "url" from the 409 body too (exist_ok=True)
            return JSONResponse({"error": err.message, "url": url}, status_code=err.status)
        return JSONResponse({"url": url, "name": repo_id, "id": repo_id})

    async def delete_repo(self, request: Request) -> Response:
        body = await self.json_body(request)
        repo_id = f"{body.get('organization') or STANDIN_USER}/{body.get('name')}"
        repo_type = body.get("type") or "model"
        self.repo(request, repo_type, repo_id)
        self.store.delete_repo(repo_type, repo_id)
        return JSONResponse({})

    async def validate_yaml(self, request: Request) -> Response:
        return JSONResponse({"errors": [], "warnings": []})

    async def whoami(self, request: Request) -> Response:
        if bearer_token(request.headers.get("authorization")) is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return JSONResponse(
            {
                "type": "user",
                "id": STANDIN_USER,
                "name": STANDIN_USER,
                "fullname": "Hub stand-in user",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "standin", "role": "write"}},
            }
        )

    async def repo_info(
        self, request: Request, repo_type: str, repo_id: str, rev: str | None = None
    ) -> Response:
        repo = self.repo(request, repo_type, repo_id)
        commit = self.store.resolve(repo, rev or "main")
        blobs = request.query_params.get("blobs", "").lower() == "true"
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.oid)
                if entry.lfs:
                    sibling["lfs"] = {
                        "sha256": entry.sha256,
                        "size": entry.size,
                        "pointerSize": entry.pointer_size,
                    }
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.type}/{repo.id}".encode()).hexdigest()[:24],
            "id": repo.id,
            "author": repo.id.split("/")[0],
            "sha": commit.id,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.files.values()),
        }
        if repo.type == "model":
            info["modelId"] = repo.id
        return JSONResponse(info)

    # -- listing ---------------------------------------------------------------------------------------------

    def tree_entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        entry = commit.files.get(path)
        if entry is None:
            out: dict[str, Any] = {
                "type": "directory",
                "path": path,
                "oid": hashlib.sha1(f"{commit.id}:{path}".encode()).hexdigest(),
                "size": 0,
            }
        else:
            out = {"type": "file", "path": path, "oid": entry.oid, "size": entry.size}
            if entry.lfs:
                out["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        if expand:
            last = self.store.last_commit(repo, commit, path, is_dir=entry is None)
            out["lastCommit"] = {"id": last.id, "title": last.title, "date": last.date}
        return out

    async def tree(self, request: Request, repo_type: str, repo_id: str, rev: str, path: str) -> Response:
        repo = self.repo(request, repo_type, repo_id)
        commit = self.store.resolve(repo, rev)
        recursive = request.query_params.get("recursive", "").lower() == "true"
        expand = request.query_params.get("expand", "").lower() == "true"
        prefix = path.strip("/")
        if prefix in commit.files:
            raise entry_not_found(prefix, commit.id)
        under = prefix + "/" if prefix else ""
        paths: set[str] = set()
        for file_path in commit.files:
            if not file_path.startswith(under):
                continue
            parts = file_path[len(under) :].split("/")
            if recursive:
                paths.add(file_path)
                paths.update(under + "/".join(parts[:i]) for i in range(1, len(parts)))
            else:
                paths.add(under + parts[0])
        if prefix and not paths:
            raise entry_not_found(prefix, commit.id)
        return JSONResponse([self.tree_entry(repo, commit, p, expand) for p in sorted(paths)])

    async def paths_info(self, request: Request, repo_type: str, repo_id: str, rev: str) -> Response:
        repo = self.repo(request, repo_type, repo_id)
        commit = self.store.resolve(repo, rev)
        body = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            form = json.loads(body or b"{}")
            paths, expand = form.get("paths", []), str(form.get("expand", "")).lower() == "true"
        else:
            fields = parse_qs(body.decode(), keep_blank_values=True)
            paths, expand = fields.get("paths", []), fields.get("expand", [""])[0].lower() == "true"
        out = []
        for p in dict.fromkeys(p.strip("/") for p in paths):
            if p in commit.files or any(f.startswith(p + "/") for f in commit.files):
                out.append(self.tree_entry(repo, commit, p, expand))
        return JSONResponse(out)

    async def list_refs(self, request: Request, repo_type: str, repo_id: str) -> Response:
        repo = self.repo(request, repo_type, repo_id)

        def refs(prefix: str, name: Callable[[str], str]) -> list[dict[str, str]]:
            return [
                {"name": name(ref), "ref": ref, "targetCommit": sha}
                for ref, sha in sorted(repo.refs.items())
                if ref.startswith(prefix)
            ]

        data = {
            "branches": refs("refs/heads/", lambda r: r.removeprefix("refs/heads/")),
            "tags": refs("refs/tags/", lambda r: r.removeprefix("refs/tags/")),
            "converts": refs("refs/convert/", lambda r: r.removeprefix("refs/convert/")),
        }
        if request.query_params.get("include_prs") in ("1", "true"):
            data["pullRequests"] = refs("refs/pr/", lambda r: r)
        return JSONResponse(data)

    async def list_commits(self, request: Request, repo_type: str, repo_id: str, rev: str) -> Response:
        repo = self.repo(request, repo_type, repo_id)
        return JSONResponse(
            [
                {
                    "id": c.id,
                    "title": c.title,
                    "message": c.message,
                    "date": c.date,
                    "authors": [{"user": a} for a in c.authors],
                }
                for c in self.store.history(repo, rev)
            ]
        )

    # -- downloads -------------------------------------------------------------------------------------------

    async def resolve(self, request: Request, repo_type: str, repo_id: str, rev: str, path: str) -> Response:
        repo = self.repo(request, repo_type, repo_id, download=True)
        commit = self.store.resolve(repo, rev)
        entry = commit.files.get(path)
        if entry is None:
            raise entry_not_found(path, commit.id)
        headers = {
            "X-Repo-Commit": commit.id,
            "ETag": f'"{entry.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        try:
            span = parse_range(request.headers.get("range"), entry.size)
        except RangeNotSatisfiable:
            headers.update({"Content-Range": f"bytes */{entry.size}", "Content-Length": "0"})
            return Response(status_code=416, headers=headers)
        start, end = span if span is not None else (0, entry.size - 1)
        length = end - start + 1
        headers["Content-Length"] = str(length)
        status = 200
        if span is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        if request.method == "HEAD" or length == 0:
            return Response(status_code=status, headers=headers)
        return StreamingResponse(
            _iter_file(self.store.blob_path(entry.sha256), start, length), status_code=status, headers=headers
        )

    async def safetensors_metadata(
        self, request: Request, repo_type: str, repo_id: str, path: str
    ) -> Response:
        repo = self.repo(request, repo_type, repo_id, download=True)
        commit = self.store.resolve(repo, "main")
        if path not in commit.files:
            raise entry_not_found(path, commit.id)
        index = json.loads(self.store.read_blob(commit.files[path].sha256))
        headers = {}
        folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
        for shard in sorted(set(index.get("weight_map", {}).values())):
            entry = commit.files.get(folder + shard)
            if entry is None:
                raise entry_not_found(folder + shard, commit.id)
            with open(self.store.blob_path(entry.sha256), "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                headers[shard] = json.loads(f.read(n))
        return JSONResponse({"index": index, "headers": headers})

    async def no_xet(self, request: Request, **_: str) -> Response:
        raise HubError(
            501,
            "The Hub stand-in has no Xet storage: run the client with HF_HUB_DISABLE_XET=1 (LFS mode).",
        )

    # -- uploads ---------------------------------------------------------------------------------------------

    async def preupload(self, request: Request, repo_type: str, repo_id: str, rev: str) -> Response:
        repo = self.repo(request, repo_type, repo_id)
        commit = self.store.resolve(repo, rev)
        body = await self.json_body(request)
        files = []
        for f in body.get("files", []):
            mode = "regular" if self.store.upload_mode == "regular" or int(f.get("size", 0)) == 0 else "lfs"
            existing = commit.files.get(f["path"])
            oid = None if existing is None else (existing.sha256 if existing.lfs else existing.oid)
            files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return JSONResponse({"files": files})

    async def lfs_batch(self, request: Request, repo_type: str, repo_id: str) -> Response:
        repo = self.repo(request, repo_type, repo_id)
        body = await self.json_body(request)
        if body.get("operation") != "upload":
            raise bad_request("The stand-in's LFS batch endpoint only supports operation=upload")
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj.get("oid")), int(obj.get("size", -1))
            if not re.fullmatch(r"[0-9a-f]{64}", oid) or size < 0:
                objects.append(
                    {"oid": oid, "size": size, "error": {"code": 422, "message": "Invalid oid or size"}}
                )
            elif self.store.has_blob(oid, size):
                objects.append({"oid": oid, "size": size})  # already stored: no actions, the client skips it
            else:
                nonce = secrets.token_hex(12)
                with self.store.lock:
                    self.store.upload_grants[nonce] = (oid, size)
                base = self.base_url(request)
                verify = f"{base}/{repo_url_path(repo.type, repo.id)}.git/info/lfs/objects/verify"
                objects.append(
                    {
                        "oid": oid,
                        "size": size,
                        "authenticated": True,
                        "actions": {
                            "upload": {"href": f"{base}/lfs-upload/{oid}/{nonce}"},
                            "verify": {"href": verify},
                        },
                    }
                )
        return JSONResponse(
            {"transfer": "basic", "objects": objects}, media_type="application/vnd.git-lfs+json"
        )

    async def lfs_upload(self, request: Request, oid: str, nonce: str) -> Response:
        """The basic-transfer PUT. Like a presigned S3 URL, the href is the grant (no Authorization sent)."""
        with self.store.lock:
            grant = self.store.upload_grants.get(nonce)
        if grant is None or grant[0] != oid:
            raise HubError(403, "Unknown or expired upload URL")
        size = grant[1]
        tmp = self.store.tmp_dir / f"upload-{nonce}-{secrets.token_hex(4)}"
        sha, received = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in request.stream():
                    sha.update(chunk)
                    f.write(chunk)
                    received += len(chunk)
            if received != size or sha.hexdigest() != oid:
                raise bad_request(
                    f"Uploaded content does not match oid {oid} / size {size} (got {received} bytes)"
                )
            os.replace(tmp, self.store.blob_path(oid))
        finally:
            tmp.unlink(missing_ok=True)
        with self.store.lock:
            self.store.blob_uploads[oid] = self.store.blob_uploads.get(oid, 0) + 1
        return Response(status_code=200, headers={"ETag": f'"{oid}"'})

    async def lfs_verify(self, request: Request, repo_type: str, repo_id: str) -> Response:
        self.repo(request, repo_type, repo_id)
        body = await self.json_body(request)
        if not self.store.has_blob(str(body.get("oid")), body.get("size")):
            raise HubError(404, f"LFS object {body.get('oid')} not found")
        return JSONResponse({"oid": body["oid"], "size": body.get("size")})

    async def commit(self, request: Request, repo_type: str, repo_id: str, rev: str) -> Response:
        repo = self.repo(request, repo_type, repo_id)
        lines = [line for line in (await request.body()).splitlines() if line.strip()]
        try:
            items = [json.loads(line) for line in lines]
        except json.JSONDecodeError as err:
            raise bad_request(f"Invalid ndjson commit payload: {err}") from err
        if not items or items[0].get("key") != "header":
            raise bad_request("The commit payload must start with a header line")
        operations = [self._operation(item) for item in items[1:]]
        create_pr = request.query_params.get("create_pr") in ("1", "true")
        commit, pr = self.store.commit(
            repo, rev, items[0].get("value", {}), operations, create_pr=create_pr, author=STANDIN_USER
        )
        url = self.repo_url(request, repo)
        return JSONResponse(
            {
                "success": True,
                "commitOid": commit.id,
                "commitUrl": f"{url}/commit/{commit.id}",
                "commitMessage": commit.title,
                "pullRequestUrl": f"{url}/discussions/{pr.num}" if pr else None,
            }
        )

    def _operation(self, item: dict[str, Any]) -> tuple[str, str, FileEntry | None]:
        key, value = item.get("key"), item.get("value") or {}
        path = str(value.get("path", "")).lstrip("/")
        if not path or any(part in ("", ".", "..", ".git") for part in path.rstrip("/").split("/")):
            raise bad_request(f"Invalid path in commit: {value.get('path')!r}")
        if key == "file":
            content = value.get("content", "")
            data = base64.b64decode(content) if value.get("encoding") == "base64" else str(content).encode()
            return "add", path, FileEntry.regular(data, self.store.put_blob(data))
        if key == "lfsFile":
            oid = str(value.get("oid"))
            size = value.get("size")
            if value.get("algo", "sha256") != "sha256" or not self.store.has_blob(oid, size):
                raise bad_request(f"LFS object {oid} (size {size}) was never uploaded; cannot commit {path}")
            return "add", path, FileEntry.lfs_file(oid, self.store.blob_path(oid).stat().st_size)
        if key == "deletedFile":
            return "delete-file", path, None
        if key == "deletedFolder":
            return "delete-folder", path, None
        raise bad_request(f"Unknown commit operation: {key!r}")

    async def create_branch(self, request: Request, repo_type: str, repo_id: str, rev: str) -> Response:
        repo = self.repo(request, repo_type, repo_id)
        body = await self.json_body(request)
        self.store.create_branch(repo, rev, body.get("startingPoint"))
        return JSONResponse({})

    async def delete_branch(self, request: Request, repo_type: str, repo_id: str, rev: str) -> Response:
        self.store.delete_branch(self.repo(request, repo_type, repo_id), rev)
        return JSONResponse({})

    # -- discussions and pull requests -----------------------------------------------------------------------

    def discussion_json(self, repo: Repo, d: Discussion) -> dict[str, Any]:
        return {
            "num": d.num,
            "title": d.title,
            "status": d.status,
            "author": {"name": d.author, "type": "user"},
            "createdAt": d.created_at,
            "isPullRequest": d.is_pull_request,
            "repo": {"name": repo.id, "type": repo.type},
            "pinned": False,
            "numComments": sum(1 for e in d.events if e["type"] == "comment"),
        }

    async def list_discussions(self, request: Request, repo_type: str, repo_id: str) -> Response:
        repo = self.repo(request, repo_type, repo_id)
        q = request.query_params
        kind, status, author = q.get("type", "all"), q.get("status", "all"), q.get("author")
        selected = [
            d
            for d in sorted(repo.discussions, key=lambda d: d.num, reverse=True)
            if (kind == "all" or d.is_pull_request == (kind == "pull_request"))
            and (status == "all" or d.status == status)
            and (author is None or d.author == author)
        ]
        start = int(q.get("p", "0")) * DISCUSSIONS_PAGE
        page = selected[start : start + DISCUSSIONS_PAGE]
        return JSONResponse(
            {
                "discussions": [self.discussion_json(repo, d) for d in page],
                "count": len(selected),
                "start": start,
                "numClosedDiscussions": sum(1 for d in repo.discussions if d.status == "closed"),
            }
        )

    async def create_discussion(self, request: Request, repo_type: str, repo_id: str) -> Response:
        repo = self.repo(request, repo_type, repo_id)
        body = await self.json_body(request)
        d = self.store.create_discussion(
            repo,
            str(body.get("title", "")).strip(),
            str(body.get("description", "")),
            STANDIN_USER,
            bool(body.get("pullRequest")),
        )
        return JSONResponse({"num": d.num, "url": f"{self.repo_url(request, repo)}/discussions/{d.num}"})

    async def discussion_details(self, request: Request, repo_type: str, repo_id: str, num: str) -> Response:
        repo = self.repo(request, repo_type, repo_id)
        d = repo.discussion(int(num))
        details = {**self.discussion_json(repo, d), "events": d.events}
        if d.is_pull_request:
            details["changes"] = {"base": d.base_ref, "mergeCommitId": d.merge_commit}
            details["filesWithConflicts"] = self.store.conflicts(repo, d)
            details["diff"] = None
        return JSONResponse(details)

    async def discussion_action(
        self, request: Request, repo_type: str, repo_id: str, num: str, action: str
    ) -> Response:
        repo = self.repo(request, repo_type, repo_id)
        d = repo.discussion(int(num))
        body = await self.json_body(request) or {}
        if action == "status":
            if body.get("status") not in ("open", "closed"):
                raise bad_request("status must be 'open' or 'closed'")
            return JSONResponse({"newStatus": self.store.set_status(repo, d, body["status"], STANDIN_USER)})
        if action == "merge":
            self.store.merge(repo, d, STANDIN_USER)
            return JSONResponse({})
        if action == "comment":
            return JSONResponse(
                {"newMessage": self.store.comment(repo, d, str(body.get("comment")), STANDIN_USER)}
            )
        raise HubError(404, f"Unknown discussion action: {action}")


def _iter_file(path: Path, start: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            data = f.read(min(CHUNK, length))
            if not data:
                return
            length -= len(data)
            yield data


# ------------------------------------------------------------------------------------------------------------
# The app: admin API under /_standin, the Hub protocol everywhere else
# ------------------------------------------------------------------------------------------------------------


class ConfigSpec(BaseModel):
    upload_mode: str


class RepoSettingsSpec(BaseModel):
    repo: str
    repo_type: str = "model"
    gated: bool | None = None
    private: bool | None = None
    tokens: list[str] | None = None
    clear_tokens: bool = False


def create_app(root: Path, *, upload_mode: str = "lfs") -> FastAPI:
    """The stand-in's FastAPI app (unwrapped); ``app.state`` holds ``store`` and ``monitor``."""
    store, monitor = HubStore(root, upload_mode), Monitor()
    protocol = HubProtocol(store)
    app = FastAPI(title="Hugging Face Hub stand-in", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.monitor = store, monitor

    @app.exception_handler(HubError)
    async def hub_error(request: Request, err: HubError) -> Response:
        return err.response()

    def repo_of(repo: str, repo_type: str) -> Repo:
        return store.get(repo_type, repo)

    @app.get(f"{ADMIN_PREFIX}/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "upload_mode": store.upload_mode, "root": str(store.root)}

    @app.post(f"{ADMIN_PREFIX}/config")
    async def set_config(spec: ConfigSpec) -> dict[str, Any]:
        if spec.upload_mode not in UPLOAD_MODES:
            raise bad_request(f"upload_mode must be one of {UPLOAD_MODES}")
        store.upload_mode = spec.upload_mode
        return {"upload_mode": store.upload_mode}

    @app.post(f"{ADMIN_PREFIX}/faults")
    async def add_fault(spec: FaultSpec) -> dict[str, Any]:
        return monitor.add_rule(spec).to_json()

    @app.get(f"{ADMIN_PREFIX}/faults")
    async def list_faults() -> list[dict[str, Any]]:
        with monitor.lock:
            return [r.to_json() for r in monitor.rules]

    @app.delete(f"{ADMIN_PREFIX}/faults")
    async def clear_faults() -> dict[str, Any]:
        with monitor.lock:
            monitor.rules.clear()
        return {}

    @app.get(f"{ADMIN_PREFIX}/requests")
    async def list_requests(method: str | None = None, path_regex: str | None = None) -> list[dict[str, Any]]:
        return monitor.requests(method, path_regex)

    @app.delete(f"{ADMIN_PREFIX}/requests")
    async def reset_requests() -> dict[str, Any]:
        with monitor.lock:
            monitor.log.clear()
        return {}

    @app.get(f"{ADMIN_PREFIX}/repos")
    async def list_repos() -> list[dict[str, Any]]:
        with store.lock:
            return [r.settings_json() for r in store.repos.values()]

    @app.post(f"{ADMIN_PREFIX}/repo-settings")
    async def repo_settings(spec: RepoSettingsSpec) -> dict[str, Any]:
        repo = repo_of(spec.repo, spec.repo_type)
        changes: dict[str, Any] = {
            k: v for k, v in (("gated", spec.gated), ("private", spec.private)) if v is not None
        }
        if spec.tokens is not None or spec.clear_tokens:
            changes["tokens"] = None if spec.clear_tokens else list(spec.tokens or [])
        store.update_settings(repo, **changes)
        return repo.settings_json()

    @app.get(f"{ADMIN_PREFIX}/refs")
    async def refs(repo: str, repo_type: str = "model") -> dict[str, str]:
        with store.lock:
            return dict(repo_of(repo, repo_type).refs)

    @app.get(f"{ADMIN_PREFIX}/commits")
    async def commits(repo: str, ref: str = "main", repo_type: str = "model") -> list[dict[str, Any]]:
        return [c.to_json() for c in store.history(repo_of(repo, repo_type), ref)]

    @app.get(f"{ADMIN_PREFIX}/files")
    async def files(repo: str, ref: str = "main", repo_type: str = "model") -> dict[str, Any]:
        commit = store.resolve(repo_of(repo, repo_type), ref)
        return {p: e.to_json() for p, e in sorted(commit.files.items())}

    @app.get(f"{ADMIN_PREFIX}/file")
    async def file(repo: str, path: str, ref: str = "main", repo_type: str = "model") -> Response:
        commit = store.resolve(repo_of(repo, repo_type), ref)
        if path not in commit.files:
            raise entry_not_found(path, commit.id)
        return Response(store.read_blob(commit.files[path].sha256), media_type="application/octet-stream")

    @app.get(f"{ADMIN_PREFIX}/blob-uploads")
    async def blob_uploads() -> dict[str, int]:
        with store.lock:
            return dict(store.blob_uploads)

    @app.get(f"{ADMIN_PREFIX}/prs")
    async def prs(repo: str, repo_type: str = "model", status: str = "open") -> list[dict[str, Any]]:
        r = repo_of(repo, repo_type)
        with store.lock:
            return [
                {
                    **asdict(d),
                    "ref": d.ref,
                    "head": r.refs.get(d.ref or ""),
                    "conflicts": store.conflicts(r, d),
                }
                for d in r.discussions
                if d.is_pull_request and (status == "all" or d.status == status)
            ]

    @app.api_route(
        "/{full_path:path}",
        methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"],
        include_in_schema=False,
    )
    async def hub(request: Request) -> Response:
        return await protocol.dispatch(request)

    return app


def create_asgi_app(root: Path, *, upload_mode: str = "lfs") -> InstrumentMiddleware:
    """:func:`create_app` wrapped in the request log / fault injection middleware (what the runners serve)."""
    app = create_app(root, upload_mode=upload_mode)
    middleware = InstrumentMiddleware(app, app.state.monitor)
    middleware.state = app.state  # type: ignore[attr-defined]
    return middleware


# ------------------------------------------------------------------------------------------------------------
# Control client (admin endpoints) and runners
# ------------------------------------------------------------------------------------------------------------


class StandInClient:
    """Controls and inspects a stand-in through its ``/_standin`` admin endpoints (any process)."""

    def __init__(self, endpoint: str | None = None) -> None:
        self._endpoint = endpoint.rstrip("/") if endpoint else None
        self._client: httpx.Client | None = None

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: pass it as ``HfApi(endpoint=...)`` or ``HF_ENDPOINT``."""
        if self._endpoint is None:
            raise RuntimeError("The stand-in is not started")
        return self._endpoint

    def _admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self._client is None:
            self._client = httpx.Client(
                base_url=f"{self.endpoint}{ADMIN_PREFIX}", timeout=30, trust_env=False
            )
        response = self._client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {ADMIN_PREFIX}{path}: {response.status_code} {response.text}")
        return response

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- configuration and faults ----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._admin("GET", "/health").json()

    def set_upload_mode(self, mode: UploadMode) -> None:
        """What preupload answers from now on: ``lfs`` (every non-empty file) or ``regular`` (all inline)."""
        self._admin("POST", "/config", json={"upload_mode": mode})

    def add_fault(
        self,
        path: str = ".*",
        *,
        method: str = "*",
        count: int = 1,
        status: int | None = None,
        drop: bool = False,
        drop_after: int | None = None,
        delay: float | None = None,
        range_only: bool = False,
    ) -> int:
        """Affect the next ``count`` requests (-1: all) matching method + path regex; returns the rule id.

        ``status``: answer it with an empty body; ``drop``: send headers and ``drop_after`` body bytes
        (default half), then close the connection; ``delay``: wait that many seconds first.
        ``range_only``: only requests with a Range header.
        """
        spec = FaultSpec(
            path=path,
            method=method.upper(),
            count=count,
            status=status,
            drop=drop,
            drop_after=drop_after,
            delay=delay,
            range_only=range_only,
        )
        return self._admin("POST", "/faults", json=spec.model_dump()).json()["id"]

    def faults(self) -> list[dict[str, Any]]:
        """The rules with their ``hits`` and ``remaining`` counts."""
        return self._admin("GET", "/faults").json()

    def clear_faults(self) -> None:
        self._admin("DELETE", "/faults")

    # -- request log -----------------------------------------------------------------------------------------

    def requests(self, method: str | None = None, path_regex: str | None = None) -> list[dict[str, Any]]:
        """Logged Hub requests: method, path, query, range, authorization, status, bytes_sent, fault, dropped,
        duration, seq."""
        params = {k: v for k, v in (("method", method), ("path_regex", path_regex)) if v is not None}
        return self._admin("GET", "/requests", params=params).json()

    def reset_requests(self) -> None:
        self._admin("DELETE", "/requests")

    def bytes_served(self, path_regex: str | None = None, method: str | None = None) -> int:
        """Response body bytes sent for the matching requests (a dropped response counts what was sent)."""
        return sum(e["bytes_sent"] for e in self.requests(method, path_regex))

    def tokens_seen(self, path_regex: str | None = None) -> list[str | None]:
        """The distinct bearer tokens (None: anonymous) of the matching requests, in order of first use."""
        return list(
            dict.fromkeys(bearer_token(e["authorization"]) for e in self.requests(path_regex=path_regex))
        )

    # -- repo settings ---------------------------------------------------------------------------------------

    def set_gated(self, repo: str, gated: bool = True, *, repo_type: str = "model") -> None:
        """Gated: file downloads answer GatedRepo (403), except for tokens set with :meth:`set_tokens`."""
        self._admin("POST", "/repo-settings", json={"repo": repo, "repo_type": repo_type, "gated": gated})

    def set_tokens(self, repo: str, tokens: list[str] | None, *, repo_type: str = "model") -> None:
        """Only these bearer tokens may access the repo (others: 401 RepoNotFound); ``None``: anyone."""
        body = {"repo": repo, "repo_type": repo_type, "tokens": tokens, "clear_tokens": tokens is None}
        self._admin("POST", "/repo-settings", json=body)

    def set_private(self, repo: str, private: bool = True, *, repo_type: str = "model") -> None:
        self._admin("POST", "/repo-settings", json={"repo": repo, "repo_type": repo_type, "private": private})

    # -- repo state ------------------------------------------------------------------------------------------

    def repos(self) -> list[dict[str, Any]]:
        return self._admin("GET", "/repos").json()

    def refs(self, repo: str, *, repo_type: str = "model") -> dict[str, str]:
        """Full ref name (``refs/heads/main``, ``refs/pr/1``) -> commit id."""
        return self._admin("GET", "/refs", params={"repo": repo, "repo_type": repo_type}).json()

    def commits(self, repo: str, ref: str = "main", *, repo_type: str = "model") -> list[dict[str, Any]]:
        """First-parent history of ``ref``, newest first: id, parents, title, message, date, authors,
        files."""
        params = {"repo": repo, "ref": ref, "repo_type": repo_type}
        return self._admin("GET", "/commits", params=params).json()

    def files(self, repo: str, ref: str = "main", *, repo_type: str = "model") -> dict[str, dict[str, Any]]:
        """Path -> {sha256, size, oid, lfs} at ``ref`` (branch, refs/pr/N or commit id)."""
        params = {"repo": repo, "ref": ref, "repo_type": repo_type}
        return self._admin("GET", "/files", params=params).json()

    def read_file(self, repo: str, ref: str, path: str, *, repo_type: str = "model") -> bytes:
        params = {"repo": repo, "ref": ref, "path": path, "repo_type": repo_type}
        return self._admin("GET", "/file", params=params).content

    def blob_uploads(self) -> dict[str, int]:
        """sha256 -> number of LFS PUTs that stored that blob (hash and size checked)."""
        return self._admin("GET", "/blob-uploads").json()

    def open_prs(self, repo: str, *, repo_type: str = "model") -> list[dict[str, Any]]:
        """Open pull requests: num, title, status, author, ref, head, base_ref, base_commit, conflicts, ..."""
        return self._admin(
            "GET", "/prs", params={"repo": repo, "repo_type": repo_type, "status": "open"}
        ).json()


class HubStandIn(StandInClient):
    """Serves the stand-in with uvicorn in a background thread of this process.

    ``start()`` returns the endpoint; ``stop()`` shuts it down; also a context manager. ``port=0`` picks a
    free port. Control and inspection go through the admin HTTP API (:class:`StandInClient`), as for another
    process;
    ``self.store`` / ``self.monitor`` give direct access for anything else.
    """

    def __init__(
        self, root: Path, *, upload_mode: str = "lfs", host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__()
        self.root, self.upload_mode, self.host, self.port = Path(root), upload_mode, host, port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.store: HubStore | None = None
        self.monitor: Monitor | None = None

    def start(self) -> str:
        if self._server is not None:
            return self.endpoint
        app = create_asgi_app(self.root, upload_mode=self.upload_mode)
        self.store, self.monitor = app.state.store, app.state.monitor  # type: ignore[attr-defined]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            interface="asgi3",
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"hub-standin-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError("The Hub stand-in did not start")
            time.sleep(0.005)
        self._endpoint = f"http://{self.host}:{self.port}"
        return self._endpoint

    def stop(self) -> None:
        self.close()
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None
        self._endpoint = None

    def __enter__(self) -> HubStandIn:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class StandInProcess(StandInClient):
    """Runs ``python tests/support/hub_standin.py`` as a child process (what the benchmark does); same control API."""

    def __init__(
        self, root: Path, *, upload_mode: str = "lfs", port: int = 0, log: Path | None = None
    ) -> None:
        super().__init__()
        self.root, self.upload_mode, self.port, self.log = Path(root), upload_mode, port, log
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30) -> str:
        script = str(Path(__file__).resolve())
        cmd = [sys.executable, script, "--root", str(self.root), "--port", str(self.port)]
        cmd += ["--upload-mode", self.upload_mode]
        stderr = open(self.log, "a") if self.log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
        )
        if self.log:
            stderr.close()  # type: ignore[union-attr]
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:  # the child prints one line once it listens
            if line.startswith(READY_LINE_PREFIX):
                self._endpoint = line[len(READY_LINE_PREFIX) :].strip()
                return self._endpoint
            if time.monotonic() > deadline:
                break
        self.stop()
        raise RuntimeError("The Hub stand-in process did not start")

    def stop(self) -> None:
        self.close()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
        self._endpoint = None

    def __enter__(self) -> StandInProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="A local stand-in for the Hugging Face Hub (tests, benchmarks)."
    )
    parser.add_argument("--root", type=Path, required=True, help="state directory (repos, commits, blobs)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port (printed on the ready line)")
    parser.add_argument("--upload-mode", choices=UPLOAD_MODES, default="lfs")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    standin = HubStandIn(args.root, upload_mode=args.upload_mode, host=args.host, port=args.port)
    endpoint = standin.start()
    print(f"{READY_LINE_PREFIX}{endpoint}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        while not stop.wait(0.5):
            pass
    standin.stop()


if __name__ == "__main__":
    main()
