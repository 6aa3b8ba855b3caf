"""What every Source and Sink offers, as typed protocols, and what they share.

A :class:`Source` gives the planner the shard headers and ``config.json`` (:meth:`Source.read_index`,
:meth:`Source.read_config`) and gives the executor byte ranges through a :class:`Reader`. A :class:`Sink` receives
output shards in order and publishes them all at once on :meth:`Sink.commit` (a folder rename, one Hub commit), or
nothing at all on :meth:`Sink.abort`. Optional capabilities are protocols of their own and checked with
``isinstance`` (:class:`RunReader`: a reader that streams a whole run of ranges at once, like the Hub's).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Protocol, runtime_checkable

from ..safetensors_io import CheckpointIndex

#: files never copied to the output: weights in other formats or layouts (they would be stale)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".npz", ".pkl")


class Reader(Protocol):
    """Byte ranges of a source's files."""

    def read(self, file: str, offset: int, length: int) -> bytes: ...

    def copy_to(self, out: BinaryIO, file: str, offset: int, length: int) -> None: ...


@runtime_checkable
class RunReader(Protocol):
    """A reader that takes a whole run of ranges at once (coalescing neighbours, keeping requests in flight)."""

    def copy_run(
        self, out: BinaryIO, ranges: list[tuple[str, int, int]], tick: Callable[[int], None]
    ) -> None: ...


class Source(Protocol):
    description: str

    def read_index(self) -> CheckpointIndex: ...

    def read_config(self) -> dict[str, Any] | None: ...

    def other_files(self, weights: Collection[str] = ()) -> tuple[list[str], list[str]]: ...

    def reader(self) -> AbstractContextManager[Reader]: ...

    def open_file(self, name: str) -> AbstractContextManager[IO[bytes]]: ...


@dataclass
class ShardWritten:
    """One output shard, written (and for the Hub, pre-uploaded): what the final commit needs to know of it."""

    file: str
    size: int
    upload: dict[str, Any] | None = None  # Hub: sha256, size, sample of the pre-uploaded blob
    worker: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "size": self.size, "upload": self.upload, "worker": self.worker}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardWritten:
        return cls(d["file"], d["size"], d.get("upload"), d.get("worker", ""))


class Sink(Protocol):
    description: str

    def begin(self) -> None: ...

    def already_published(
        self,
    ) -> str | None: ...  # where this very conversion was published before, if it was

    def holds(self, source: Source) -> bool: ...  # is the destination the source itself?

    def open_shard(self, name: str) -> AbstractContextManager[BinaryIO]: ...  # an unbuffered binary file

    def finish_shard(self, name: str) -> dict[str, Any] | None: ...  # a Hub sink: the pre-uploaded blob

    def write_bytes(self, name: str, data: bytes) -> None: ...

    def copy_file(self, source: Source, name: str) -> None: ...

    def link_file(
        self, source: Source, name: str, size: int | None = None
    ) -> None: ...  # a weight file as is

    def commit(self, message: str) -> str: ...

    def abort(self) -> None: ...


@runtime_checkable
class PartsSink(Sink, Protocol):
    """A sink whose shards can be written by several processes (a sharded job's subtasks) and committed by one."""

    def attach(self) -> None: ...  # join what begin() prepared in another process

    def add_written(self, shard: ShardWritten) -> None: ...  # a shard another process wrote


@runtime_checkable
class SpaceAware(Protocol):
    """A sink that knows how much room it has: checked before the first byte is written."""

    def free_bytes(self) -> int: ...

    def bytes_needed(self, shard_sizes: list[int]) -> int: ...  # at the fullest moment of the run


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


def file_size(source: Source, name: str) -> int:
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

    def reader(self) -> AbstractContextManager[Reader]:
        return self.inner.reader()

    def open_file(self, name: str) -> AbstractContextManager[IO[bytes]]:
        return self.inner.open_file(name)


def unwrap(source: Source) -> Source:
    """The source behind a :class:`CachedSource`."""
    return source.inner if isinstance(source, CachedSource) else source
