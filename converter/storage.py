"""Where checkpoints are read from (Sources) and written to (Sinks).

A Source gives the planner the shard headers and ``config.json`` and gives the executor byte ranges. A Sink
receives output shards in order and publishes them all at once on :meth:`Sink.commit` (a folder rename for
:class:`LocalSink`), or nothing at all on :meth:`Sink.abort`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from .errors import CheckpointError, OutputExistsError, UnsafePathError
from .safetensors_io import CheckpointIndex, check_member_name, read_local_checkpoint

#: files never copied to the output: weights in other formats or layouts (they would be stale)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".npz", ".pkl")
COPY_CHUNK = 64 * 1024 * 1024


class Reader(Protocol):
    def read(self, file: str, offset: int, length: int) -> bytes: ...

    def copy_to(self, out: BinaryIO, file: str, offset: int, length: int) -> None: ...


class Source(Protocol):
    description: str

    def read_index(self) -> CheckpointIndex: ...

    def read_config(self) -> dict[str, Any] | None: ...

    def other_files(self, weights: Collection[str] = ()) -> tuple[list[str], list[str]]: ...

    def reader(self) -> Any: ...  # context manager yielding a Reader

    def open_file(self, name: str) -> Any: ...  # context manager yielding a binary file


def is_weight_file(name: str) -> bool:
    """Weights (any format) or a weights index: never copied as an "other" file (it would be stale)."""
    if name.endswith(WEIGHT_SUFFIXES):
        return True
    return name.endswith(".index.json") and any(s + "." in name for s in WEIGHT_SUFFIXES)


def split_other_files(names: Iterable[str], weights: Collection[str]) -> tuple[list[str], list[str]]:
    """``(copy, skipped)`` among a checkpoint folder's top-level ``names`` (folders end in ``/``): the checkpoint's
    own ``weights`` are neither; other weight files and folders are skipped; hidden files are ignored."""
    copy, skipped = [], []
    for name in names:
        if name in weights or name.startswith(".") and name != ".gitattributes":
            continue
        if name.endswith("/") or is_weight_file(name):
            skipped.append(name)
        else:
            copy.append(name)
    return copy, skipped


class LocalReader:
    """Byte ranges of local shard files; ``copy_to`` uses ``copy_file_range`` (in-kernel copy) when it can."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fds: dict[str, int] = {}
        self._kernel_copy = hasattr(os, "copy_file_range")

    def _fd(self, file: str) -> int:
        fd = self._fds.get(file)
        if fd is None:
            fd = os.open(check_member_name(self.root, file, what="shard"), os.O_RDONLY)
            self._fds[file] = fd
        return fd

    def read(self, file: str, offset: int, length: int) -> bytes:
        fd = self._fd(file)
        parts, done = [], 0
        while done < length:
            b = os.pread(fd, length - done, offset + done)
            if not b:
                raise CheckpointError(
                    f"{file} ended at byte {offset + done}; was it changed after planning?", file=file
                )
            parts.append(b)
            done += len(b)
        return b"".join(parts)

    def copy_to(self, out: BinaryIO, file: str, offset: int, length: int) -> None:
        """Append ``length`` bytes at ``offset`` of ``file`` to ``out`` (an unbuffered file)."""
        src = self._fd(file)
        if self._kernel_copy:
            try:
                dst = out.fileno()
                while length > 0:
                    n = os.copy_file_range(src, dst, min(length, COPY_CHUNK), offset)
                    if n == 0:
                        raise CheckpointError(
                            f"{file} ended at byte {offset}; was it changed after planning?", file=file
                        )
                    offset += n
                    length -= n
                return
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                    raise
                self._kernel_copy = False
        while length > 0:
            n = min(length, 16 * 1024 * 1024)
            out.write(self.read(file, offset, n))
            offset += n
            length -= n

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class LocalSource:
    """A checkpoint folder on this machine (also a huggingface_hub cache snapshot folder)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.root = Path(folder)
        self.description = str(self.root)

    def read_index(self) -> CheckpointIndex:
        return read_local_checkpoint(self.root)

    def read_config(self) -> dict[str, Any] | None:
        p = self.root / "config.json"
        if not p.is_file():
            return None
        try:
            doc = json.loads(p.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"config.json is not valid JSON ({e})", file="config.json") from None
        if not isinstance(doc, dict):
            raise CheckpointError("config.json is not a JSON object", file="config.json")
        return doc

    def other_files(self, weights: Collection[str] = ()) -> tuple[list[str], list[str]]:
        """Top-level files to copy unchanged (config, tokenizer, ...), and those skipped (weights in other formats or
        not part of the checkpoint, folders). ``weights``: the checkpoint's own files, neither."""
        return split_other_files(
            [p.name + ("/" if p.is_dir() else "") for p in sorted(self.root.iterdir())], weights
        )

    @contextmanager
    def reader(self) -> Iterator[LocalReader]:
        r = LocalReader(self.root)
        try:
            yield r
        finally:
            r.close()

    @contextmanager
    def open_file(self, name: str) -> Iterator[BinaryIO]:
        with open(check_member_name(self.root, name), "rb") as f:
            yield f


class Sink(Protocol):
    description: str

    def begin(self) -> None: ...

    def open_shard(self, name: str) -> Any: ...  # context manager yielding an unbuffered binary file

    def finish_shard(
        self, name: str
    ) -> dict[str, Any] | None: ...  # a Hub sink returns the uploaded blob's info

    def attach(self) -> None: ...  # join the staging another process began (a sharded job's subtasks)

    def add_written(
        self, file: str, size: int, upload: dict[str, Any] | None
    ) -> None: ...  # written elsewhere

    def write_bytes(self, name: str, data: bytes) -> None: ...

    def copy_file(self, source: Source, name: str) -> None: ...

    def link_file(
        self, source: Source, name: str, size: int | None = None
    ) -> None: ...  # a weight file as is

    def holds(self, source: Source) -> bool: ...  # is the destination the source itself?

    def commit(self, message: str) -> str: ...

    def abort(self) -> None: ...


class LocalSink:
    """Writes into a hidden sibling folder and renames it to ``folder`` only on :meth:`commit`."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        source_root: Path | None = None,
        tag: str | None = None,
    ):
        """``tag`` names the temporary folder (instead of a random name) so that a re-run of the same job, e.g.
        after its worker was killed, removes what the lost run left behind."""
        self.final = Path(folder).absolute()
        self.overwrite = overwrite
        self.tag = tag
        self._parts: dict[str, Path] = {}
        self.description = str(self.final)
        self.tmp: Path | None = None
        self._check(source_root)

    def _check(self, source_root: Path | None) -> None:
        final = self.final.resolve()
        if source_root is not None:
            src = source_root.resolve()
            if final == src or src in final.parents or final in src.parents:
                raise UnsafePathError(
                    f"output {final} overlaps the source checkpoint {src}; choose a separate folder",
                    file=str(final),
                )
        if final.exists() and not final.is_dir():
            raise OutputExistsError(f"output {final} exists and is not a folder", file=str(final))
        if final.is_dir() and any(final.iterdir()) and not self.overwrite:
            raise OutputExistsError(
                f"output folder {final} is not empty; pass --overwrite to replace it", file=str(final)
            )

    def _staging(self) -> Path:
        return self.final.parent / f".{self.final.name}.partial-{self.tag or uuid.uuid4().hex[:8]}"

    def begin(self) -> None:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self._staging()
        if self.tag is not None and self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()

    def attach(self) -> None:
        """Write into the staging folder that :meth:`begin` made in another process (same ``tag``, shared disk)."""
        assert self.tag is not None, "attach() needs a tag"
        self.tmp = self._staging()
        if not self.tmp.is_dir():
            raise CheckpointError(f"staging folder {self.tmp} is gone (cancelled, or not on a shared disk?)")

    def add_written(self, file: str, size: int, upload: dict[str, Any] | None) -> None:
        """Check that a shard another process wrote is complete in the staging folder."""
        p = self._path(file)
        if not p.is_file() or p.stat().st_size != size:
            raise CheckpointError(f"output shard {file} is missing or incomplete in {self.tmp}", file=file)

    def _path(self, name: str) -> Path:
        assert self.tmp is not None, "begin() first"
        return check_member_name(self.tmp, name, what="output file")

    @contextmanager
    def open_shard(self, name: str) -> Iterator[BinaryIO]:
        """Written under a name of its own and renamed by :meth:`finish_shard`: a shard under its final name is
        complete, even if two deliveries of the same task wrote it at once."""
        part = self._path(f"{name}.part-{uuid.uuid4().hex[:8]}")
        self._parts[name] = part
        with open(part, "wb", buffering=0) as f:
            yield f

    def finish_shard(self, name: str) -> dict[str, Any] | None:
        os.replace(self._parts.pop(name), self._path(name))
        return None

    def write_bytes(self, name: str, data: bytes) -> None:
        self._path(name).write_bytes(data)

    def copy_file(self, source: Source, name: str) -> None:
        with source.open_file(name) as src, open(self._path(name), "wb") as dst:
            shutil.copyfileobj(src, dst, 16 * 1024 * 1024)

    def link_file(self, source: Source, name: str, size: int | None = None) -> None:
        """``name`` of ``source`` unchanged, as a hard link when both are on one local filesystem, else a copy."""
        if isinstance(source, CachedSource):
            source = source.inner
        if isinstance(source, LocalSource):
            src = check_member_name(source.root, name)
            try:
                os.link(src, self._path(name), follow_symlinks=True)
                return
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                    raise
        with source.reader() as reader, open(self._path(name), "wb", buffering=0) as dst:
            reader.copy_to(dst, name, 0, size if size is not None else _size_of(source, name))

    def holds(self, source: Source) -> bool:
        return False  # an output folder overlapping the source is refused when the sink is made

    def commit(self, message: str = "") -> str:
        assert self.tmp is not None
        old: Path | None = None
        if self.final.exists():
            if any(self.final.iterdir()):
                old = self.final.parent / f".{self.final.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(self.final, old)
            else:
                self.final.rmdir()
        os.rename(self.tmp, self.final)
        self.tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return str(self.final)

    def abort(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def _size_of(source: Source, name: str) -> int:
    with source.open_file(name) as f:
        return f.seek(0, os.SEEK_END)


class CachedSource:
    """A Source whose headers and config were read before (by another process): planning it reads nothing;
    bytes and other files still come from ``inner``."""

    def __init__(self, inner: Source, index: CheckpointIndex, config: dict[str, Any] | None) -> None:
        self.inner, self.index, self.config = inner, index, config
        self.description = inner.description

    def read_index(self) -> CheckpointIndex:
        return self.index

    def read_config(self) -> dict[str, Any] | None:
        return self.config

    def other_files(self, weights: Collection[str] = ()) -> tuple[list[str], list[str]]:
        return self.inner.other_files(weights)

    def reader(self) -> Any:
        return self.inner.reader()

    def open_file(self, name: str) -> Any:
        return self.inner.open_file(name)


def is_hub_ref(value: str) -> bool:
    """``hf://...`` or an http(s) URL: always a Hub reference, never a local path."""
    return value.startswith(("hf://", "http://", "https://"))


def open_source(source: str | os.PathLike[str] | Source) -> Source:
    """A Source for a Hub repo (``hf://org/name[@revision]``, a model URL ``https://huggingface.co/org/name``
    [``/tree/rev``], or a bare ``org/name[@revision]`` as ``from_pretrained`` takes it when no such local path
    exists) or a local folder path."""
    if isinstance(source, str):
        from .hub import looks_like_repo_id, open_hub_source

        if is_hub_ref(source) or (not os.path.exists(source) and looks_like_repo_id(source)):
            return open_hub_source(source)
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if not p.exists():
            raise CheckpointError(f"source {p} does not exist", file=str(p))
        return LocalSource(p)
    return source


def open_sink(
    output: str | os.PathLike[str],
    *,
    source: Source | None = None,
    overwrite: bool = False,
    create_pr: bool = False,
    private: bool = False,
    card: dict[str, str] | None = None,
) -> Sink:
    """A Sink for ``hf://org/name`` (one commit, or a pull request with ``create_pr``) or a local folder."""
    if isinstance(output, str) and is_hub_ref(output):
        from .hub import HubSink, parse_hub_path

        repo, rev = parse_hub_path(output)
        base = getattr(getattr(source, "inner", source), "repo_id", None)
        return HubSink(
            repo, revision=rev or "main", create_pr=create_pr, private=private, card=card, base_model=base
        )
    root = source.root if isinstance(source, LocalSource) else None
    return LocalSink(output, overwrite=overwrite, source_root=root)
