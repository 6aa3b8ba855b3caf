"""Folders opened once and used through their file descriptor: nothing read or written outside, whatever a path
turns into after it was checked.

A :class:`Folder` is opened beneath one of the allowed roots (when there are roots) one path component at a time,
each with ``O_NOFOLLOW``: a symlink anywhere on the way is refused, so swapping a folder for a link after submit
reaches nothing. Every file is then opened relative to the folder's descriptor (``openat``), again without
following links, and staging and publishing happen relative to the destination's parent descriptor
(``mkdirat``, ``renameat2``). Two kinds of member link are followed, exactly: a sibling in the same folder
(``a.safetensors -> b.safetensors``) and the Hugging Face cache layout
(``snapshots/<rev>/f -> ../../blobs/<sha>``, the blob opened beneath the repo's ``blobs`` folder).

Errors name paths as the caller gave them, never where links point.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from .errors import CheckpointError, UnsafePathError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: ``../../blobs/<sha>`` as huggingface_hub's cache links snapshot files (sha1 for git files, sha256 for LFS)
_HF_BLOB = re.compile(r"^\.\./\.\./blobs/([0-9a-f]{40}|[0-9a-f]{64})$")
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def check_name(name: str, what: str = "file") -> str:
    """A plain file name (no separator, no ``..``, no NUL, encodable): ``check_name("model.safetensors")``."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
    ):
        raise UnsafePathError(
            f"{what} name {name!r} is not a plain file name inside the folder", file=str(name)
        )
    try:
        name.encode()
    except UnicodeEncodeError:
        raise UnsafePathError(f"{what} name {name!r} is not valid UTF-8", file=repr(name)) from None
    return name


def _open_dir_at(dir_fd: int | None, name: str, shown: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        raise _path_error(e, shown) from None


def _path_error(e: OSError, shown: str) -> Exception:
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafePathError(f"{shown} is (or goes through) a symlink or not a folder: refused", file=shown)
    if e.errno == errno.ENOENT:
        return CheckpointError(f"{shown} does not exist", file=shown)
    return CheckpointError(f"{shown}: {e.strerror}", file=shown)


def open_beneath(root: Path, rel: Sequence[str], shown: str) -> int:
    """A descriptor of ``root/rel[0]/rel[1]/...``, opened component by component without following any link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in rel:
            nxt = _open_dir_at(fd, check_name(part, "folder"), shown)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def locate(
    path: str | os.PathLike[str], roots: Sequence[Path] | None, what: str
) -> tuple[Path, tuple[str, ...]]:
    """``(root, components below it)`` for an absolute ``path`` lexically under one of ``roots`` (``..`` folded
    first), else :class:`UnsafePathError`. With ``roots=None`` the path's own parent is the root (the CLI: the
    user's own paths, their links followed)."""
    text = os.fspath(path)
    try:
        text.encode()
    except UnicodeEncodeError:
        raise UnsafePathError(f"{what} {text!r} is not valid UTF-8", file=repr(text)) from None
    if "\0" in text:
        raise UnsafePathError(f"{what} {text!r} contains a NUL byte", file=repr(text))
    p = Path(os.path.normpath(os.path.abspath(text)))
    if roots is None:
        return p.parent, (p.name,) if p.name else ()
    for root in roots:
        if p == root or root in p.parents:
            return root, p.relative_to(root).parts
    raise UnsafePathError(f"{what} {text} is outside the allowed local roots", file=text)


class Folder:
    """A folder held open by descriptor (beneath an allowed root when ``roots`` are given)."""

    def __init__(
        self, path: str | os.PathLike[str], *, roots: Sequence[Path] | None = None, what: str = "folder"
    ):
        self.path = Path(os.fspath(path))
        self.shown = os.fspath(path)
        root, rel = locate(path, roots, what)
        if roots is None:  # the CLI: the user's path as given, links and all
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                raise _path_error(e, self.shown) from None
        else:
            self.fd = open_beneath(root, rel, self.shown)
        self._blobs: int | None = None
        # the Hugging Face cache: <repo>/snapshots/<rev> may link into <repo>/blobs, and only there
        if len(rel) >= 2 and rel[-2] == "snapshots" or roots is None and self.path.parent.name == "snapshots":
            try:
                up = os.open("..", _DIR_FLAGS, dir_fd=self.fd)
                try:
                    repo = os.open("..", _DIR_FLAGS, dir_fd=up)
                finally:
                    os.close(up)
                try:
                    self._blobs = os.open("blobs", _DIR_FLAGS, dir_fd=repo)
                finally:
                    os.close(repo)
            except OSError:
                self._blobs = None
        st = os.fstat(self.fd)
        self.identity = (st.st_dev, st.st_ino)

    def close(self) -> None:
        for fd in (self.fd, self._blobs):
            if fd is not None:
                os.close(fd)
        self._blobs = None

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def names(self) -> list[str]:
        """Top-level entries, folders ending in ``/`` (a link is listed by its own name)."""
        out = []
        for name in sorted(os.listdir(self.fd)):
            try:
                st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            except OSError:
                continue
            out.append(name + "/" if stat.S_ISDIR(st.st_mode) else name)
        return out

    def fingerprint(self) -> str:
        """The folder's content fingerprint from its files' names, sizes and modification times (16 hex digits; a
        member link counts as what :meth:`open` would open): the same folder, unchanged, has the same one."""
        import hashlib

        h = hashlib.sha256()
        for name in self.names():
            if name.endswith("/"):
                continue
            try:
                fd = self.open(name)
            except (CheckpointError, UnsafePathError):
                continue
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]

    def exists(self, name: str) -> bool:
        try:
            os.stat(check_name(name), dir_fd=self.fd, follow_symlinks=False)
            return True
        except OSError:
            return False

    def open(self, name: str, what: str = "file") -> int:
        """A read-only descriptor of member ``name``; a link is followed only to a sibling or to the Hugging Face
        cache's blob, each without following further."""
        check_name(name, what)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=self.fd)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise _path_error(e, f"{self.shown}/{name}") from None
            fd = self._follow(name, flags, what)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePathError(f"{what} {name!r} is not a regular file", file=name)
        return fd

    def _follow(self, name: str, flags: int, what: str) -> int:
        target = os.readlink(name, dir_fd=self.fd)
        m = _HF_BLOB.match(target)
        try:
            if m and self._blobs is not None:
                return os.open(m.group(1), flags, dir_fd=self._blobs)
            if "/" not in target and target not in (".", ".."):
                return os.open(target, flags, dir_fd=self.fd)  # a sibling, one hop
        except OSError as e:
            raise UnsafePathError(f"{what} {name!r} is a link that cannot be followed inside the folder ({e.strerror})",
                                  file=name) from None  # fmt: skip
        raise UnsafePathError(f"{what} {name!r} is a link out of the checkpoint folder: refused", file=name)

    def link_into(self, name: str, dst_dir: int, dst_name: str) -> bool:
        """Hard-link member ``name`` (a link followed as :meth:`open` follows it) as ``dst_name`` in ``dst_dir``;
        False when the two are on different filesystems (copy instead)."""
        check_name(name)
        src_dir, src = self.fd, name
        if stat.S_ISLNK(os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode):
            target = os.readlink(name, dir_fd=self.fd)
            m = _HF_BLOB.match(target)
            if m and self._blobs is not None:
                src_dir, src = self._blobs, m.group(1)
            elif "/" not in target and target not in (".", ".."):
                src = target
            else:
                raise UnsafePathError(f"{name!r} is a link out of the checkpoint folder: refused", file=name)
        try:
            os.link(src, dst_name, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
            return True
        except OSError as e:
            if e.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                return False
            raise

    def read(self, name: str, limit: int = 64 * 1024 * 1024, what: str = "file") -> bytes:
        """The whole of a small member file (config, index), refused above ``limit`` bytes."""
        fd = self.open(name, what)
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise CheckpointError(f"{name} is {size} bytes, over the {limit}-byte limit", file=name)
            return _read_all(fd, size)
        finally:
            os.close(fd)

    def size(self, name: str) -> int:
        fd = self.open(name)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)


def _read_all(fd: int, size: int) -> bytes:
    parts, done = [], 0
    while done < size:
        b = os.pread(fd, size - done, done)
        if not b:
            break
        parts.append(b)
        done += len(b)
    return b"".join(parts)


_libc: ctypes.CDLL | None = None


def renameat2(src_dir: int, src: str, dst_dir: int, dst: str, flags: int) -> None:
    """Linux ``renameat2`` (``RENAME_NOREPLACE``: fail with ``FileExistsError`` rather than replace;
    ``RENAME_EXCHANGE``: swap the two atomically). ``NotImplementedError`` where the C library or kernel lacks it."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        raise NotImplementedError("renameat2")
    if fn(src_dir, src.encode(), dst_dir, dst.encode(), flags) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL):
            raise NotImplementedError("renameat2")
        raise OSError(err, os.strerror(err), dst)


def _clear(fd: int) -> None:
    for name in os.listdir(fd):
        if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
            sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                _clear(sub)
            finally:
                os.close(sub)
            os.rmdir(name, dir_fd=fd)
        else:
            os.unlink(name, dir_fd=fd)


def remove_tree_at(parent: int, name: str) -> None:
    """Remove folder ``name`` under ``parent`` and everything in it, following no link (the links themselves are
    removed, never what they point to)."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return
    try:
        _clear(fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


def make_dirs_beneath(root: Path, rel: Sequence[str], shown: str) -> int:
    """Like :func:`open_beneath`, creating missing folders on the way (``mkdirat``), never following a link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in rel:
            check_name(part, "folder")
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            nxt = _open_dir_at(fd, part, shown)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise
