"""Checkpoints on this machine: a folder read as byte ranges (:class:`LocalSource`), and an output folder written
into a hidden sibling and renamed into place in one step (:class:`LocalSink`)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ..checkpoint import read_local_checkpoint
from ..errors import (
    CheckpointError,
    ConversionError,
    OutputExistsError,
    OverlappingPathsError,
)
from ..safetensors_io import CheckpointIndex, check_member_name
from .base import ShardWritten, Source, file_size, split_other_files, unwrap

COPY_CHUNK = 64 * 1024 * 1024


def check_apart(output: str | os.PathLike[str], source: str | os.PathLike[str]) -> None:
    """Refuse an output folder that is, contains or is inside the source folder (:class:`OverlappingPathsError`)."""
    final, src = Path(output).resolve(), Path(source).resolve()
    if final == src or src in final.parents or final in src.parents:
        raise OverlappingPathsError(
            f"output {output} overlaps the source checkpoint {source}; choose a separate folder",
            file=str(output),
        )


def fingerprint(folder: Path) -> str:
    """A local checkpoint's content fingerprint from its files' names, sizes and modification times (16 hex
    digits): the same folder, unchanged, has the same fingerprint."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


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


class LocalSink:
    """Writes into a hidden sibling folder and renames it to ``folder`` only on :meth:`commit`."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        source_root: Path | None = None,
        tag: str | None = None,
        key: str | None = None,
    ):
        """``tag`` names the temporary folder (instead of a random name) so that a re-run of the same job, e.g.
        after its worker was killed, removes what the lost run left behind. ``key``: the conversion key recorded in
        the shards' metadata, by which :meth:`already_published` recognises this conversion's output."""
        self.final = Path(folder).absolute()
        self.overwrite = overwrite
        self.tag = tag
        self.key = key
        self._parts: dict[str, Path] = {}
        self.description = str(self.final)
        self.tmp: Path | None = None
        self._check(source_root)

    def _check(self, source_root: Path | None) -> None:
        final = self.final.resolve()
        if source_root is not None:
            check_apart(self.final, source_root)
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

    def add_written(self, shard: ShardWritten) -> None:
        """Check that a shard another process wrote is complete in the staging folder."""
        p = self._path(shard.file)
        if not p.is_file() or p.stat().st_size != shard.size:
            raise CheckpointError(
                f"output shard {shard.file} is missing or incomplete in {self.tmp}", file=shard.file
            )

    def already_published(self) -> str | None:
        """The output folder, if it holds this very conversion (``key`` in its shards' metadata): a run that died
        right after publishing, before recording it."""
        if self.key is None or not self.final.is_dir():
            return None
        try:
            index = read_local_checkpoint(self.final)
        except ConversionError:
            return None
        if any(h.metadata.get("conversion") == self.key for h in index.shards.values()):
            return str(self.final)
        return None

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
        source = unwrap(source)
        if isinstance(source, LocalSource):
            src = check_member_name(source.root, name)
            try:
                os.link(src, self._path(name), follow_symlinks=True)
                return
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                    raise
        with source.reader() as reader, open(self._path(name), "wb", buffering=0) as dst:
            reader.copy_to(dst, name, 0, size if size is not None else file_size(source, name))

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
