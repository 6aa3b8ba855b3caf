"""Checkpoints on this machine: a folder read as byte ranges (:class:`LocalSource`), and an output folder written
into a hidden sibling and renamed into place in one step (:class:`LocalSink`)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from ..checkpoint import read_local_checkpoint
from ..confine import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Folder,
    check_name,
    locate,
    make_dirs_beneath,
    open_beneath,
    remove_tree_at,
    renameat2,
)
from ..errors import (
    CheckpointError,
    ConversionError,
    OutputExistsError,
    OverlappingPathsError,
)
from ..safetensors_io import CheckpointIndex
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


def fingerprint(folder: str | os.PathLike[str]) -> str:
    """A local checkpoint's content fingerprint (:meth:`converter.confine.Folder.fingerprint`)."""
    with Folder(folder) as f:
        return f.fingerprint()


class LocalReader:
    """Byte ranges of a folder's shard files (opened through the folder, no link followed out of it);
    ``copy_to`` uses ``copy_file_range`` (in-kernel copy) when it can."""

    def __init__(self, folder: Folder | str | os.PathLike[str]) -> None:
        self._owned = not isinstance(folder, Folder)
        self.folder = folder if isinstance(folder, Folder) else Folder(folder)
        self._fds: dict[str, int] = {}
        self._kernel_copy = hasattr(os, "copy_file_range")

    def _fd(self, file: str) -> int:
        fd = self._fds.get(file)
        if fd is None:
            fd = self._fds[file] = self.folder.open(file, "shard")
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
        if self._owned:
            self.folder.close()


class LocalSource:
    """A checkpoint folder on this machine (also a huggingface_hub cache snapshot folder), held open by its
    descriptor: with ``roots``, opened beneath one of them without following any link, so a folder swapped for a
    link after it was checked is refused and nothing outside is read."""

    def __init__(self, folder: str | os.PathLike[str], *, roots: Sequence[Path] | None = None) -> None:
        self.root = Path(os.fspath(folder))
        self.description = os.fspath(folder)
        self.folder = Folder(folder, roots=roots, what="source")

    def __del__(self) -> None:
        folder = getattr(self, "folder", None)
        if folder is not None:
            folder.close()

    def read_index(self) -> CheckpointIndex:
        return read_local_checkpoint(self.folder)

    def read_config(self) -> dict[str, Any] | None:
        if not self.folder.exists("config.json"):
            return None
        return parse_config(self.folder.read("config.json", limit=16 * 1024 * 1024, what="config"))

    def other_files(self, weights: Collection[str] = ()) -> tuple[list[str], list[str]]:
        """Top-level files to copy unchanged (config, tokenizer, ...), and those skipped (weights in other formats or
        not part of the checkpoint, folders). ``weights``: the checkpoint's own files, neither."""
        return split_other_files(self.folder.names(), weights)

    @contextmanager
    def reader(self) -> Iterator[LocalReader]:
        r = LocalReader(self.folder)
        try:
            yield r
        finally:
            r.close()

    @contextmanager
    def open_file(self, name: str) -> Iterator[BinaryIO]:
        with os.fdopen(self.folder.open(name), "rb") as f:
            yield f


def parse_config(raw: bytes) -> dict[str, Any]:
    """A config.json's bytes as a dict; a typed error for anything else (bad JSON, nesting past the parser's limit,
    not an object)."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"config.json is not valid JSON ({e})", file="config.json") from None
    except RecursionError:
        raise CheckpointError("config.json is nested too deeply", file="config.json") from None
    if not isinstance(doc, dict):
        raise CheckpointError("config.json is not a JSON object", file="config.json")
    return doc


class LocalSink:
    """Writes into a hidden sibling of ``folder`` and publishes it there in one atomic, no-replace rename.

    Everything happens relative to the destination's parent, opened once (beneath ``roots`` when given, with no
    link followed): a parent swapped for a link later writes nothing elsewhere. Publishing never replaces what is
    there: a folder that appeared, or got files, while the job ran makes the commit fail (:class:`OutputExistsError`)
    and nothing is removed. With ``overwrite`` the new folder is swapped in atomically (``RENAME_EXCHANGE``) and only
    then the old one removed. An empty destination folder is taken over (removed only while it is still empty).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        source_root: Path | None = None,
        tag: str | None = None,
        key: str | None = None,
        roots: Sequence[Path] | None = None,
    ):
        """``tag`` names the staging folder after the job (instead of a random name), so a re-run of the same job,
        e.g. after its worker was killed, replaces what the lost run left behind. ``key``: the conversion key in the
        shards' metadata, by which :meth:`already_published` recognises this conversion's output."""
        self.final = Path(os.path.normpath(os.path.abspath(os.fspath(folder))))
        self.shown = os.fspath(folder)
        self.name = check_name(self.final.name, "output folder")
        self.overwrite, self.tag, self.key, self.roots = overwrite, tag, key, roots
        self.description = str(self.final)
        self.staging = f".{self.name}.partial-{tag or uuid.uuid4().hex[:8]}"
        self._parent: int | None = None
        self._stage: int | None = None
        self._parts: dict[str, str] = {}
        if source_root is not None:
            check_apart(self.final, source_root)
        self._check_final(self._stat_final())

    # --- the destination's parent and the final name --------------------------------------------------------------

    def _parent_fd(self, create: bool = False) -> int:
        if self._parent is None:
            root, rel = locate(self.final.parent, self.roots, "destination")
            if self.roots is None:
                root, rel = Path(self.final.parent), ()
                if create:
                    os.makedirs(root, exist_ok=True)
            make = make_dirs_beneath if create else open_beneath
            self._parent = make(root, rel, self.shown)
        return self._parent

    def _stat_final(self) -> os.stat_result | None:
        try:
            parent = self._parent_fd()
        except (CheckpointError, FileNotFoundError):
            return None  # no parent yet: nothing there
        try:
            return os.stat(self.name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _check_final(self, st: os.stat_result | None) -> None:
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise OutputExistsError(f"output {self.shown} exists and is not a folder", file=self.shown)
        if not self.overwrite and not self._final_is_empty():
            raise OutputExistsError(
                f"output folder {self.shown} is not empty; pass --overwrite to replace it", file=self.shown
            )

    def _final_is_empty(self) -> bool:
        fd = os.open(self.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self._parent_fd())
        try:
            return not os.listdir(fd)
        finally:
            os.close(fd)

    # --- staging ----------------------------------------------------------------------------------------------------

    def begin(self) -> None:
        parent = self._parent_fd(create=True)
        if self.tag is not None:
            remove_tree_at(parent, self.staging)  # what a lost run of this same job left
        os.mkdir(self.staging, 0o755, dir_fd=parent)
        self._stage = os.open(self.staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)

    def attach(self) -> None:
        """Write into the staging folder :meth:`begin` made in another process (same ``tag``, shared disk)."""
        assert self.tag is not None, "attach() needs a tag"
        try:
            self._stage = os.open(
                self.staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self._parent_fd()
            )
        except OSError:
            raise CheckpointError(
                f"staging folder of {self.shown} is gone (cancelled, or not on a shared disk?)",
                file=self.shown,
            ) from None

    def _stage_fd(self) -> int:
        assert self._stage is not None, "begin() first"
        return self._stage

    def _create(self, name: str) -> int:
        return os.open(check_name(name, "output file"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                       | os.O_CLOEXEC, 0o644, dir_fd=self._stage_fd())  # fmt: skip

    def add_written(self, shard: ShardWritten) -> None:
        """Check that a shard another process wrote is complete in the staging folder."""
        try:
            st = os.stat(check_name(shard.file), dir_fd=self._stage_fd(), follow_symlinks=False)
            ok = stat.S_ISREG(st.st_mode) and st.st_size == shard.size
        except OSError:
            ok = False
        if not ok:
            raise CheckpointError(f"output shard {shard.file} is missing or incomplete", file=shard.file)

    @contextmanager
    def open_shard(self, name: str) -> Iterator[BinaryIO]:
        """Written under a name of its own and renamed by :meth:`finish_shard`: a shard under its final name is
        complete, even if two deliveries of the same task wrote it at once."""
        part = f"{check_name(name, 'output file')}.part-{uuid.uuid4().hex[:8]}"
        self._parts[name] = part
        with os.fdopen(self._create(part), "wb", buffering=0) as f:
            yield f

    def finish_shard(self, name: str) -> dict[str, Any] | None:
        stage = self._stage_fd()
        os.rename(self._parts.pop(name), name, src_dir_fd=stage, dst_dir_fd=stage)
        return None

    def write_bytes(self, name: str, data: bytes) -> None:
        with os.fdopen(self._create(name), "wb") as f:
            f.write(data)

    def copy_file(self, source: Source, name: str) -> None:
        with source.open_file(name) as src, os.fdopen(self._create(name), "wb") as dst:
            shutil.copyfileobj(src, dst, 16 * 1024 * 1024)

    def link_file(self, source: Source, name: str, size: int | None = None) -> None:
        """``name`` of ``source`` unchanged, as a hard link when both are on one local filesystem, else a copy."""
        inner = unwrap(source)
        if isinstance(inner, LocalSource) and inner.folder.link_into(
            name, self._stage_fd(), check_name(name)
        ):
            return
        with source.reader() as reader, os.fdopen(self._create(name), "wb", buffering=0) as dst:
            reader.copy_to(dst, name, 0, size if size is not None else file_size(source, name))

    def free_bytes(self) -> int:
        """Free space on the destination's filesystem, for the caller's check before writing."""
        st = os.statvfs(self._parent_fd(create=True))
        return st.f_bavail * st.f_frsize

    def bytes_needed(self, shard_sizes: list[int]) -> int:
        """Every shard stays in the staging folder until the commit."""
        return sum(shard_sizes)

    def holds(self, source: Source) -> bool:
        return False  # an output folder overlapping the source is refused when the sink is made

    def already_published(self) -> str | None:
        """The output folder, if it holds this very conversion (``key`` in its shards' metadata): a run that died
        right after publishing, before recording it."""
        if self.key is None or self._stat_final() is None:
            return None
        try:
            with Folder(self.final, roots=self.roots, what="destination") as f:
                index = read_local_checkpoint(f)
        except ConversionError:
            return None
        if any(h.metadata.get("conversion") == self.key for h in index.shards.values()):
            return str(self.final)
        return None

    # --- publishing -------------------------------------------------------------------------------------------------

    def commit(self, message: str = "") -> str:
        parent = self._parent_fd()
        os.close(self._stage_fd())
        self._stage = None
        st = self._stat_final()
        self._check_final(st)
        try:
            if st is not None and self.overwrite and not self._final_is_empty():
                self._exchange(parent)
            else:
                if st is not None:
                    os.rmdir(self.name, dir_fd=parent)  # empty: taken over (fails if a file appeared)
                self._rename_noreplace(parent)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise OutputExistsError(
                    f"output folder {self.shown} appeared or got files while the job ran; nothing was replaced",
                    file=self.shown,
                ) from None
            raise
        return str(self.final)

    def _rename_noreplace(self, parent: int) -> None:
        try:
            renameat2(parent, self.staging, parent, self.name, RENAME_NOREPLACE)
        except NotImplementedError:
            # no renameat2: make the final folder ourselves (exclusively), then rename over it; a file put into it
            # meanwhile makes the rename fail with ENOTEMPTY instead of being lost
            os.mkdir(self.name, 0o755, dir_fd=parent)
            os.rename(self.staging, self.name, src_dir_fd=parent, dst_dir_fd=parent)

    def _exchange(self, parent: int) -> None:
        """Swap the new folder in, then remove the old one (now under the staging name)."""
        try:
            renameat2(parent, self.staging, parent, self.name, RENAME_EXCHANGE)
        except NotImplementedError:
            old = f".{self.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.name, old, src_dir_fd=parent, dst_dir_fd=parent)
            os.rename(self.staging, self.name, src_dir_fd=parent, dst_dir_fd=parent)
            remove_tree_at(parent, old)
            return
        remove_tree_at(parent, self.staging)

    def abort(self) -> None:
        if self._stage is not None:
            os.close(self._stage)
            self._stage = None
        if self._parent is not None:
            remove_tree_at(self._parent, self.staging)

    def __del__(self) -> None:
        for fd in (getattr(self, "_stage", None), getattr(self, "_parent", None)):
            if fd is not None:
                with suppress(OSError):
                    os.close(fd)
