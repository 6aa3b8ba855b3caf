"""Hub repos as Sources and Sinks, through huggingface_hub's own HTTP machinery (session, auth headers, errors).

* :class:`HubSource` plans from the safetensors headers fetched with HTTP range requests (a few KB per shard) and
  streams every planned byte range with range requests: adjacent ranges coalesced, several in flight at once,
  retried with backoff on 5xx and dropped connections, every length checked. No shard is downloaded whole.
* :class:`HubSink` writes each output shard to a local temporary file, pre-uploads it (LFS) as soon as it is
  complete and deletes the local copy, so local disk holds about one shard. One commit at the end publishes the
  shards, the index, the copied files and a model card section, on a branch, a new repo or a pull request. An open
  pull request of the same conversion (same ``pr_key``) is reused instead of opening another. Nothing is visible
  on the Hub unless that commit succeeds.

>>> src = HubSource("mistralai/Mixtral-8x7B-v0.1", "main")                   # doctest: +SKIP
>>> convert(src, HubSink("my-org/Mixtral-8x7B-grouped", private=True))     # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.parse import quote

from .errors import CheckpointError, CheckpointIndexError, ConversionError, UnsafePathError, UnsupportedError
from .safetensors_io import (
    INDEX_NAME,
    MAX_HEADER_SIZE,
    CheckpointIndex,
    ShardHeader,
    assemble_index,
    choose_weight_files,
    parse_header,
    parse_index_bytes,
)
from .storage import split_other_files

HUB_PREFIX = "hf://"
#: bytes asked for a shard's header: one request covers the 8-byte length and a header of up to ~4 KB
HEADER_PROBE = 4096
#: range requests are split into chunks of this size, several in flight at once
CHUNK = 16 * 1024 * 1024
PARALLEL = 4
RETRIES = 6
RETRY_STATUS = {429, 500, 502, 503, 504}
#: a gap smaller than this between two wanted ranges of a file is read through rather than requested apart
COALESCE_GAP = 0


class HubError(ConversionError):
    """The Hub refused or failed a request (after retries), or answered something we cannot trust."""

    http_status = 502


class RepoNotFoundError(HubError):
    http_status = 404


class RevisionNotFoundError(HubError):
    http_status = 404


class GatedRepoError(HubError):
    http_status = 403


REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
#: hosts whose model URLs name a Hub repo (besides the configured ``HF_ENDPOINT``)
HUB_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")


def parse_hub_path(path: str) -> tuple[str, str | None]:
    """``hf://org/name@rev`` -> (``org/name``, ``rev``); ``hf://org/name`` -> (``org/name``, None). A model URL
    (``https://huggingface.co/org/name/tree/rev``) is read the same way."""
    if path.startswith(("http://", "https://")):
        ref = parse_hub_url(path)
        if ref is None:
            raise CheckpointError(
                f"{path!r} is not a Hub model URL (https://huggingface.co/org/name)", file=path
            )
        return ref
    rest = path[len(HUB_PREFIX) :] if path.startswith(HUB_PREFIX) else path
    repo, _, rev = rest.partition("@")
    if not REPO_ID.fullmatch(repo):
        raise CheckpointError(f"{path!r} is not hf://org/name[@revision]", file=path)
    return repo, rev or None


def parse_hub_url(url: str, endpoint: str | None = None) -> tuple[str, str | None] | None:
    """``https://huggingface.co/org/name`` -> (``org/name``, None); ``.../org/name/tree/v1.0`` -> (``org/name``,
    ``v1.0``). Also hf.co and the configured endpoint (``HF_ENDPOINT``). None when it is no model repo URL (a
    dataset, a space, a single file, another host)."""
    from urllib.parse import unquote, urlsplit

    from huggingface_hub import constants

    u = urlsplit(url)
    bases = [urlsplit(e) for e in (endpoint, os.environ.get("HF_ENDPOINT"), constants.ENDPOINT) if e]
    ours = any(u.scheme == b.scheme and u.netloc == b.netloc for b in bases)
    if u.scheme not in ("http", "https") or not (u.hostname in HUB_HOSTS or ours):
        return None
    parts = [unquote(p) for p in u.path.split("/") if p]
    if len(parts) < 2 or parts[0] in ("datasets", "spaces", "api"):
        return None
    repo = f"{parts[0]}/{parts[1]}"
    if not REPO_ID.fullmatch(repo):
        return None
    rest = parts[2:]
    if not rest:
        return repo, None
    if rest[0] == "tree" and len(rest) >= 2:
        return repo, "/".join(rest[1:])
    return None  # blob/resolve/commit URLs name a file or a commit page, not a repo revision


def looks_like_repo_id(value: str) -> bool:
    """``org/name`` or ``org/name@rev`` as typed for ``from_pretrained`` (no leading ``.``/``/``)."""
    return bool(REPO_ID.fullmatch(value.partition("@")[0])) and not value.startswith((".", "/"))


def _map_hub_error(e: Exception, repo: str, revision: str | None) -> ConversionError:
    from huggingface_hub import errors as hf

    if isinstance(e, ConversionError):
        return e
    if isinstance(e, hf.GatedRepoError):
        return GatedRepoError(f"{repo} is gated: accept its terms and use a token that has access", file=repo)
    if isinstance(e, hf.RepositoryNotFoundError):
        return RepoNotFoundError(f"repository {repo} not found (or not visible with this token)", file=repo)
    if isinstance(e, hf.RevisionNotFoundError):
        return RevisionNotFoundError(f"revision {revision!r} not found in {repo}", file=repo)
    if isinstance(e, hf.EntryNotFoundError):
        return CheckpointError(f"{repo}@{revision} has no such file", file=repo)
    if isinstance(e, hf.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        return HubError(f"the Hub answered HTTP {status} for {repo}", file=repo)
    return HubError(f"cannot talk to the Hub about {repo}: {type(e).__name__}", file=repo)


def _api(token: str | None, endpoint: str | None) -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token)


class RangeFetcher:
    """GET byte ranges of files of one repo revision, with retries, backoff and strict length checks."""

    def __init__(
        self,
        repo: str,
        sha: str,
        token: str | None,
        endpoint: str | None,
        *,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        from huggingface_hub import constants
        from huggingface_hub.utils import build_hf_headers

        self.repo, self.sha = repo, sha
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self.headers = build_hf_headers(token=token)
        self.on_bytes = on_bytes
        self.bytes_fetched = 0
        self._lock = threading.Lock()

    def url(self, file: str) -> str:
        return f"{self.endpoint}/{self.repo}/resolve/{quote(self.sha, safe='')}/{quote(file)}"

    def get(self, file: str, start: int, stop: int, *, total: int | None = None) -> tuple[bytes, int | None]:
        """Bytes ``[start, stop)`` of ``file`` and the file's size (from Content-Range), retrying failures."""
        from huggingface_hub.utils import get_session

        want = stop - start
        delay = 0.5
        for attempt in range(RETRIES + 1):
            try:
                headers = {
                    **self.headers,
                    "Range": f"bytes={start}-{stop - 1}",
                    "Accept-Encoding": "identity",
                }
                r = get_session().get(self.url(file), headers=headers, follow_redirects=True, timeout=60)
                if r.status_code in RETRY_STATUS:
                    raise _Retry(f"HTTP {r.status_code}")
                if r.status_code == 416:
                    raise CheckpointError(
                        f"{file}: range {start}-{stop - 1} is past the end of the file", file=file
                    )
                if r.status_code not in (200, 206):
                    from huggingface_hub.utils import hf_raise_for_status

                    hf_raise_for_status(r)
                body = r.content
                size = total
                if r.status_code == 206:
                    m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", r.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != start or int(m.group(2)) != stop - 1:
                        raise HubError(f"{file}: the Hub answered range {r.headers.get('Content-Range')!r} "
                                       f"for bytes {start}-{stop - 1}", file=file)  # fmt: skip
                    size = int(m.group(3)) if m.group(3) != "*" else total
                elif start == 0 and len(body) <= want:  # the whole (small) file, Range ignored
                    size = len(body)
                    want = min(want, size)
                else:
                    raise HubError(f"{file}: the Hub ignored the Range header (HTTP 200)", file=file)
                if len(body) != want:
                    raise _Retry(f"{len(body)} of {want} bytes")
                with self._lock:
                    self.bytes_fetched += len(body)
                if self.on_bytes:
                    self.on_bytes(len(body))
                return body, size
            except _Retry as e:
                last: Exception = e
            except ConversionError:
                raise
            except Exception as e:  # noqa: BLE001 - network errors: dropped connection, reset, timeout
                from huggingface_hub import errors as hf

                if isinstance(e, hf.HfHubHTTPError):
                    raise _map_hub_error(e, self.repo, self.sha) from None
                last = e
            if attempt == RETRIES:
                break
            time.sleep(delay)
            delay = min(delay * 2, 8)
        raise HubError(
            f"{file}: bytes {start}-{stop - 1} failed after {RETRIES + 1} attempts ({last})", file=file
        )


class _Retry(Exception):
    pass


@dataclass
class _Job:
    file: str
    start: int
    stop: int
    future: Future | None = None


class HubReader:
    """The executor's reader for a Hub source: ``copy_run`` streams a run of ranges in order with prefetching."""

    def __init__(self, fetcher: RangeFetcher, parallel: int = PARALLEL, chunk: int = CHUNK) -> None:
        self.fetcher = fetcher
        self.pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="hub-range")
        self.parallel, self.chunk = parallel, chunk

    def read(self, file: str, offset: int, length: int) -> bytes:
        return b"".join(data for data in self._stream([(file, offset, length)]))

    def copy_to(self, out: BinaryIO, file: str, offset: int, length: int) -> None:
        for data in self._stream([(file, offset, length)]):
            out.write(data)

    def copy_run(
        self, out: BinaryIO, ranges: list[tuple[str, int, int]], tick: Callable[[int], None]
    ) -> None:
        """Write ``ranges`` (file, offset, length) to ``out`` in order; up to ``parallel`` chunks in flight."""
        for data in self._stream(ranges):
            out.write(data)
            tick(len(data))

    def _stream(self, ranges: list[tuple[str, int, int]]) -> Iterator[bytes]:
        jobs: deque[_Job] = deque()
        for file, off, n in _coalesce(ranges):
            for a in range(off, off + n, self.chunk):
                jobs.append(_Job(file, a, min(a + self.chunk, off + n)))
        inflight: deque[_Job] = deque()
        try:
            while jobs or inflight:
                while jobs and len(inflight) < self.parallel:
                    j = jobs.popleft()
                    j.future = self.pool.submit(self.fetcher.get, j.file, j.start, j.stop)
                    inflight.append(j)
                j = inflight.popleft()
                assert j.future is not None
                data, _ = j.future.result()
                yield data
        finally:
            for j in inflight:
                if j.future is not None:
                    j.future.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _coalesce(ranges: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    out: list[tuple[str, int, int]] = []
    for file, off, n in ranges:
        if n <= 0:
            continue
        if out and out[-1][0] == file and out[-1][1] + out[-1][2] == off:
            out[-1] = (file, out[-1][1], out[-1][2] + n)
        else:
            out.append((file, off, n))
    return out


class HubSource:
    """A Hub repo at a revision, resolved once to a commit sha (so every read sees the same files)."""

    def __init__(
        self,
        repo_id: str,
        revision: str | None = "main",
        *,
        token: str | None = None,
        endpoint: str | None = None,
        parallel: int = PARALLEL,
    ) -> None:
        self.repo_id, self.token, self.endpoint, self.parallel = repo_id, token, endpoint, parallel
        try:
            info = _api(token, endpoint).model_info(repo_id, revision=revision or "main", files_metadata=True)
        except Exception as e:  # noqa: BLE001
            raise _map_hub_error(e, repo_id, revision) from None
        self.sha: str = info.sha
        self.sizes: dict[str, int | None] = {s.rfilename: s.size for s in (info.siblings or [])}
        self.description = f"{HUB_PREFIX}{repo_id}@{self.sha}"
        self.fetcher = RangeFetcher(repo_id, self.sha, token, endpoint)

    # --- the planner's view: headers only --------------------------------------------------------------------

    def _small_file(self, name: str) -> bytes | None:
        if name not in self.sizes:
            return None
        size = self.sizes[name]
        data, _ = self.fetcher.get(name, 0, size if size else 1 << 20)
        return data

    def read_config(self) -> dict[str, Any] | None:
        raw = self._small_file("config.json")
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"config.json is not valid JSON ({e})", file="config.json") from None
        return doc if isinstance(doc, dict) else None

    def read_header(self, name: str) -> ShardHeader:
        """A shard's header from one range request (two if the header is longer than ~4 KB)."""
        from .errors import HeaderError

        size = self.sizes.get(name)
        probe = min(HEADER_PROBE, size) if size else HEADER_PROBE
        head, total = self.fetcher.get(name, 0, probe, total=size)
        total = total if total is not None else size
        if total is None or total < 8 or len(head) < 8:
            raise HeaderError(f"{name}: too short for a safetensors file", file=name)
        n = int.from_bytes(head[:8], "little")
        if n > MAX_HEADER_SIZE:
            raise HeaderError(f"{name}: header length {n} exceeds the {MAX_HEADER_SIZE}-byte cap", file=name)
        if n > total - 8:
            raise HeaderError(
                f"{name}: header length {n} runs past the end of the {total}-byte file", file=name
            )
        raw = head[8 : 8 + n]
        if len(raw) < n:
            rest, _ = self.fetcher.get(name, 8 + len(raw), 8 + n, total=total)
            raw += rest
        return parse_header(raw, file=name, file_size=total, header_size=n)

    def read_index(self) -> CheckpointIndex:
        chosen = choose_weight_files(self.sizes, where=self.description)
        weight_map: dict[str, str] | None = None
        meta: dict[str, object] = {}
        files = list(chosen.files)
        if chosen.index is not None:
            weight_map, meta = parse_index_bytes(self._small_file(chosen.index) or b"", chosen.index)
            files = list(dict.fromkeys(weight_map.values()))
        shards: dict[str, ShardHeader] = {}
        for name in files:
            if not name or "/" in name or "\\" in name or name in (".", ".."):
                raise UnsafePathError(
                    f"{chosen.index} names shard {name!r}, not a plain file name", file=name
                )
            if name not in self.sizes:
                raise CheckpointIndexError(
                    f"{chosen.index} names shard {name}, which the repo does not have", file=name
                )
            shards[name] = self.read_header(name) if chosen.format == "safetensors" else self.read_bin(name)
        index = assemble_index(shards, weight_map, index_file=chosen.index or INDEX_NAME)
        index.index_metadata = meta
        index.format = chosen.format
        return index

    def read_bin(self, name: str) -> ShardHeader:
        """A ``torch.save`` shard's tensors as byte ranges: its zip directory, pickle and record headers fetched
        with range requests (a few KB each), never the whole file."""
        from .pytorch_bin import read_bin_header

        size = self.sizes.get(name)
        if size is None:
            _, size = self.fetcher.get(name, 0, 1)
        if size is None:
            raise CheckpointError(f"{name}: the Hub did not say how large it is", file=name)
        return read_bin_header(
            lambda off, n: self.fetcher.get(name, off, off + n, total=size)[0] if n else b"",
            size,
            file=name,
            parallel=self.parallel * 2,
        )

    def other_files(self, weights: Collection[str] = ()) -> tuple[list[str], list[str]]:
        names: list[str] = []
        dirs: set[str] = set()
        for name in sorted(self.sizes):
            if "/" in name:
                dirs.add(name.split("/", 1)[0] + "/")
            else:
                names.append(name)
        return split_other_files(names + sorted(dirs), weights)

    # --- the executor's view -----------------------------------------------------------------------------------

    @contextmanager
    def reader(self) -> Iterator[HubReader]:
        r = HubReader(self.fetcher, self.parallel)
        try:
            yield r
        finally:
            r.close()

    @contextmanager
    def open_file(self, name: str) -> Iterator[IO[bytes]]:
        """A small non-weight file (config, tokenizer...), read into memory."""
        size = self.sizes.get(name)
        data = b"" if size == 0 else self.fetcher.get(name, 0, size or (1 << 30))[0]
        yield io.BytesIO(data)


# --- the sink -------------------------------------------------------------------------------------------------

CARD_MARK = "<!-- ckpt-convert -->"


def card_section(info: dict[str, str]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in info.items())
    return (
        f"\n\n{CARD_MARK}\n## Converted with ckpt-convert\n\n"
        "This checkpoint was converted by ckpt-convert; the tensors are bit-identical to what the conversion rules "
        "produce from the source.\n\n| | |\n|---|---|\n" + rows + "\n"
    )


class HubSink:
    """Publishes to ``repo_id`` (created when missing) in ONE commit: on ``revision``, or a pull request."""

    def __init__(
        self,
        repo_id: str,
        *,
        create_pr: bool = False,
        private: bool = False,
        revision: str = "main",
        token: str | None = None,
        endpoint: str | None = None,
        pr_key: str | None = None,
        card: dict[str, str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        pr_revision: str | None = None,
        base_model: str | None = None,
    ) -> None:
        """``pr_revision`` (``refs/pr/N``): the pull request found by :meth:`begin` in another process.
        ``base_model``: the source repo, recorded in the model card's front matter (``base_model:``) so the Hub
        links the two."""
        self.repo_id, self.create_pr, self.private, self.revision = repo_id, create_pr, private, revision
        self.token, self.endpoint, self.pr_key, self.card = token, endpoint, pr_key, card or {}
        self.workdir = workdir
        self.description = f"{HUB_PREFIX}{repo_id}" + (" (pull request)" if create_pr else f"@{revision}")
        self.api = _api(token, endpoint)
        self.tmp: Path | None = None
        self.ops: list[Any] = []
        self.pr_revision: str | None = pr_revision
        self.base_model = base_model if base_model != repo_id else None

    def begin(self) -> None:
        from huggingface_hub import errors as hf

        try:
            self.api.create_repo(self.repo_id, private=self.private, exist_ok=True)
            if self.create_pr and self.pr_key:
                for d in self.api.get_repo_discussions(
                    self.repo_id, discussion_type="pull_request", discussion_status="open"
                ):
                    if self.pr_key in d.title:
                        self.pr_revision = f"refs/pr/{d.num}"
                        break
        except hf.HfHubHTTPError as e:
            raise _map_hub_error(e, self.repo_id, self.revision) from None
        self.tmp = Path(tempfile.mkdtemp(prefix="ckpt-convert-upload-", dir=self.workdir))

    def attach(self) -> None:
        """Join a publication :meth:`begin` prepared in another process: only a local folder for shard files."""
        self.tmp = Path(tempfile.mkdtemp(prefix="ckpt-convert-upload-", dir=self.workdir))

    def add_written(self, file: str, size: int, upload: dict[str, Any] | None) -> None:
        """A shard another process pre-uploaded: the commit needs only its sha256, size and first bytes."""
        from huggingface_hub import CommitOperationAdd
        from huggingface_hub.lfs import UploadInfo

        if not upload or upload.get("mode") != "lfs":
            raise UnsupportedError(
                f"the Hub asked for {file} inline (not LFS): a job whose shards are written by several workers "
                "needs LFS uploads", file=file,
            )  # fmt: skip
        op = CommitOperationAdd(path_in_repo=file, path_or_fileobj=b"")
        op.upload_info = UploadInfo(
            size=size, sample=base64.b64decode(upload["sample"]), sha256=bytes.fromhex(upload["sha256"])
        )
        # what preupload_lfs_files records on an operation it uploaded (huggingface_hub 2.4)
        op._upload_mode, op._is_uploaded = "lfs", True
        self.ops.append(op)

    def already_published(self) -> str | None:
        """The URL of a commit of this same conversion (``pr_key`` in its message) at the target: a run that died
        after committing, before recording it. Publishing it again would only duplicate it."""
        if not self.pr_key:
            return None
        revision, _ = self._target
        if self.create_pr and not self.pr_revision:
            return None
        try:
            for c in self.api.list_repo_commits(self.repo_id, revision=revision):
                if f"[{self.pr_key}]" in (c.title or "") + (c.message or ""):
                    return f"{self.api.endpoint}/{self.repo_id}/commit/{c.commit_id}"
        except Exception:  # noqa: BLE001 - an empty repo has no commits to find
            return None
        return None

    @property
    def _target(self) -> tuple[str, bool]:
        """(revision, create_pr) for preupload and commit."""
        if self.pr_revision:
            return self.pr_revision, False
        return self.revision, self.create_pr

    @contextmanager
    def open_shard(self, name: str) -> Iterator[BinaryIO]:
        assert self.tmp is not None, "begin() first"
        with open(self.tmp / name, "wb", buffering=0) as f:
            yield f

    def finish_shard(self, name: str) -> dict[str, Any] | None:
        """Pre-upload the finished shard now and free its local disk (LFS); a blob the Hub already holds is
        skipped. Returns what another process needs to commit it (:meth:`add_written`)."""
        from huggingface_hub import CommitOperationAdd

        assert self.tmp is not None
        path = self.tmp / name
        op = CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
        revision, create_pr = self._target
        try:
            self.api.preupload_lfs_files(self.repo_id, additions=[op], revision=revision, create_pr=create_pr)
        except Exception as e:  # noqa: BLE001
            raise _map_hub_error(e, self.repo_id, revision) from None
        mode = getattr(op, "_upload_mode", None)
        info = {
            "mode": mode,
            "sha256": op.upload_info.sha256.hex(),
            "size": op.upload_info.size,
            "sample": base64.b64encode(op.upload_info.sample).decode(),
        }
        if mode == "lfs":
            path.unlink()  # uploaded: the commit only needs its sha256 and size
        self.ops.append(op)
        return info

    def write_bytes(self, name: str, data: bytes) -> None:
        from huggingface_hub import CommitOperationAdd

        self.ops.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=data))

    def copy_file(self, source: Any, name: str) -> None:
        with source.open_file(name) as f:
            data = f.read()
        if name == "README.md" and self.card:
            text = data.decode("utf-8", errors="replace").split(CARD_MARK)[0].rstrip()
            data = (self._front_matter(text) + card_section(self.card)).encode()
            self.card = {}
        self.write_bytes(name, data)

    def _front_matter(self, text: str) -> str:
        """``text`` with ``base_model: <source repo>`` in its YAML front matter (added if there is none)."""
        if not self.base_model:
            return text
        from huggingface_hub import ModelCard
        from huggingface_hub.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "metadata block was not found" is expected for a bare README
        try:
            card = ModelCard(text, ignore_metadata_errors=True)
        finally:
            hf_logging.set_verbosity(level)
        card.data.base_model = self.base_model
        return str(card).rstrip()

    def link_file(self, source: Any, name: str, size: int | None = None) -> None:
        """A weight file of ``source`` unchanged: streamed into a local file and pre-uploaded like a shard (the Hub
        skips a blob it already holds)."""
        assert self.tmp is not None, "begin() first"
        if size is None:
            with source.open_file(name) as f:
                size = f.seek(0, os.SEEK_END)
        with source.reader() as reader, self.open_shard(name) as out:
            reader.copy_to(out, name, 0, size)
        self.finish_shard(name)

    def holds(self, source: Any) -> bool:
        """True when this destination is ``source``'s own repo (a no-op there publishes nothing)."""
        return getattr(getattr(source, "inner", source), "repo_id", None) == self.repo_id

    def commit(self, message: str) -> str:
        from huggingface_hub import errors as hf

        if self.card:  # the source had no README.md
            self.write_bytes(
                "README.md", (self._front_matter("") + card_section(self.card)).lstrip().encode()
            )
            self.card = {}
        revision, create_pr = self._target
        if self.pr_key and f"[{self.pr_key}]" not in message:
            # the key in the commit message (and so in a new PR's title): the same conversion finds its PR, or
            # its commit if a run died after making it
            message = f"{message} [{self.pr_key}]"
        try:
            self.ops.extend(self._stale_weights(revision))
            info = self.api.create_commit(
                self.repo_id,
                operations=self.ops,
                commit_message=message,
                revision=revision,
                create_pr=create_pr,
            )
        except hf.HfHubHTTPError as e:
            raise _map_hub_error(e, self.repo_id, revision) from None
        finally:
            self._cleanup()
        if (
            self.pr_revision
        ):  # an existing PR of the same conversion got the commit (or already had these files)
            return f"{self.api.endpoint}/{self.repo_id}/discussions/{self.pr_revision.rsplit('/', 1)[1]}"
        return str(info.pr_url or info.commit_url)

    def _stale_weights(self, revision: str) -> list[Any]:
        """Deletions for the safetensors weights already at ``revision`` that this commit does not rewrite (the
        source's own shards when converting in a pull request on it, or an earlier conversion's extra shards):
        the result must hold one consistent checkpoint, not two layouts mixed."""
        from huggingface_hub import CommitOperationDelete
        from huggingface_hub import errors as hf

        written = {op.path_in_repo for op in self.ops}
        try:
            existing = self.api.list_repo_files(self.repo_id, revision=revision)
        except (hf.RevisionNotFoundError, hf.RepositoryNotFoundError):
            return []
        return [
            CommitOperationDelete(path_in_repo=f)
            for f in existing
            if "/" not in f and (f.endswith(".safetensors") or f == INDEX_NAME) and f not in written
        ]

    def abort(self) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def open_hub_source(path: str, *, token: str | None = None, endpoint: str | None = None) -> HubSource:
    """``hf://org/name[@rev]``, ``org/name[@rev]`` or a model URL, resolved to one commit."""
    repo, rev = parse_hub_path(path)
    return HubSource(repo, rev or "main", token=token, endpoint=endpoint)
