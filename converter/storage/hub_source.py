"""A Hub repo as a Source, through huggingface_hub's own HTTP machinery (session, auth headers, errors).

:class:`HubSource` resolves a revision to one commit, plans from the safetensors headers fetched with HTTP range
requests (a few KB per shard; ``.bin`` shards by their zip directory and pickle), and streams every planned byte
range with range requests: adjacent ranges coalesced, several in flight at once, retried with backoff on 5xx and
dropped connections, every length checked. No shard is downloaded whole.

>>> src = HubSource("mistralai/Mixtral-8x7B-v0.1", "main")                   # doctest: +SKIP
>>> plan(src).summary()["bytes_in"]                                          # doctest: +SKIP
93405400064
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, BinaryIO
from urllib.parse import quote

from ..checkpoint import choose_weight_files
from ..errors import (
    CheckpointError,
    CheckpointIndexError,
    ConversionError,
    GatedRepoError,
    HubError,
    RepoNotFoundError,
    RevisionNotFoundError,
    UnsafePathError,
)
from ..safetensors_io import (
    INDEX_NAME,
    MAX_HEADER_SIZE,
    CheckpointIndex,
    ShardHeader,
    assemble_index,
    parse_header,
    parse_index_bytes,
)
from ..spec import HUB_PREFIX, looks_like_repo_id, parse_hub_path, parse_hub_url  # noqa: F401 (re-exported)
from .base import split_other_files

#: bytes asked for a shard's header: one request covers the 8-byte length and a header of up to ~4 KB
HEADER_PROBE = 4096
#: range requests are split into chunks of this size, several in flight at once
CHUNK = 16 * 1024 * 1024
PARALLEL = 4
RETRIES = 6
RETRY_STATUS = {429, 500, 502, 503, 504}
#: a gap smaller than this between two wanted ranges of a file is read through rather than requested apart
COALESCE_GAP = 0


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
        from ..errors import HeaderError

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
        from ..pytorch_bin import read_bin_header

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


def open_hub_source(path: str, *, token: str | None = None, endpoint: str | None = None) -> HubSource:
    """``hf://org/name[@rev]``, ``org/name[@rev]`` or a model URL, resolved to one commit."""
    repo, rev = parse_hub_path(path)
    return HubSource(repo, rev or "main", token=token, endpoint=endpoint)
