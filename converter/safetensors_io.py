"""safetensors headers and sharded checkpoints, read and written without touching tensor data.

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of JSON + data. The JSON maps tensor names to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data start) plus an optional
``"__metadata__": {str: str}``. Everything here validates as strictly as safetensors itself, so a hostile file is
refused with a :class:`HeaderError` naming the file and tensor, never a crash or an unbounded allocation.

>>> info = read_header("model-00001-of-00002.safetensors")          # doctest: +SKIP
>>> info.tensors["model.embed_tokens.weight"].shape
(32000, 4096)
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CheckpointIndexError, DuplicateTensorError, HeaderError, UnsafePathError

#: Same cap as the safetensors library: a header above this is refused before it is read.
MAX_HEADER_SIZE = 100_000_000
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

#: Bits per element of every dtype safetensors knows.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "C64": 64,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
#: Short names accepted on the command line and in the API.
DTYPE_ALIASES = {
    "bf16": "BF16",
    "bfloat16": "BF16",
    "fp16": "F16",
    "float16": "F16",
    "f16": "F16",
    "fp32": "F32",
    "float32": "F32",
    "f32": "F32",
}


def dtype_nbytes(dtype: str, shape: Iterable[int]) -> int:
    """Byte length of a tensor. ``dtype_nbytes("BF16", (4, 8))`` -> ``64``."""
    bits = DTYPE_BITS[dtype] * math.prod(shape)
    if bits % 8:
        raise HeaderError(f"{dtype} tensor of shape {list(shape)} does not fill whole bytes")
    return bits // 8


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of one shard: where its bytes are (absolute offsets in the file)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str  # shard file name, relative to the checkpoint folder
    offset: int  # absolute byte offset in the file
    length: int

    @property
    def nbytes(self) -> int:
        return self.length


@dataclass(frozen=True)
class ShardHeader:
    file: str
    header_size: int  # N, the JSON length
    file_size: int
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]

    @property
    def data_start(self) -> int:
        return 8 + self.header_size


def parse_header(raw: bytes, *, file: str, file_size: int, header_size: int) -> ShardHeader:
    """Validate the JSON header ``raw`` of a file of ``file_size`` bytes. Raises :class:`HeaderError`."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeaderError(f"{file}: header is not valid JSON ({e})", file=file) from None
    if not isinstance(doc, dict):
        raise HeaderError(f"{file}: header is not a JSON object", file=file)
    data_size = file_size - 8 - header_size
    metadata: dict[str, str] = {}
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in doc.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
            ):
                raise HeaderError(f"{file}: __metadata__ must map strings to strings", file=file)
            metadata = dict(entry)
            continue
        if not isinstance(entry, dict):
            raise HeaderError(f"{file}: entry for {name!r} is not an object", key=name, file=file)
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_BITS:
            raise HeaderError(f"{file}: tensor {name!r} has unknown dtype {dtype!r}", key=name, file=file)
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise HeaderError(f"{file}: tensor {name!r} has invalid shape {shape!r}", key=name, file=file)
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise HeaderError(
                f"{file}: tensor {name!r} has data_offsets {offsets!r} outside the {data_size}-byte data section",
                key=name,
                file=file,
            )
        begin, end = offsets
        bits = DTYPE_BITS[dtype] * math.prod(shape)
        if bits != (end - begin) * 8:
            raise HeaderError(
                f"{file}: tensor {name!r}: {dtype} x {shape} needs {bits / 8:g} bytes "
                f"but data_offsets give {end - begin}",
                key=name,
                file=file,
            )
        start = 8 + header_size + begin
        tensors[name] = TensorInfo(name, dtype, tuple(shape), file, start, end - begin)
        spans.append((begin, end, name))
    spans.sort()
    reach, owner = 0, ""  # furthest end so far among non-empty tensors, and whose it is
    for begin, end, name in spans:
        if end == begin:
            continue
        if begin < reach:
            raise HeaderError(f"{file}: tensors {owner!r} and {name!r} overlap", key=name, file=file)
        reach, owner = end, name
    return ShardHeader(file, header_size, file_size, metadata, tensors)


def read_header_from(f: BinaryIO, *, file: str, file_size: int) -> ShardHeader:
    """Read and validate the header of an open binary file (only its first 8 + N bytes are read)."""
    head = f.read(8)
    if len(head) < 8:
        raise HeaderError(f"{file}: {file_size} bytes is too short for a safetensors file", file=file)
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_SIZE:
        raise HeaderError(f"{file}: header length {n} exceeds the {MAX_HEADER_SIZE}-byte cap", file=file)
    if n > file_size - 8:
        raise HeaderError(
            f"{file}: header length {n} runs past the end of the {file_size}-byte file", file=file
        )
    raw = f.read(n)
    if len(raw) != n:
        raise HeaderError(f"{file}: truncated header ({len(raw)} of {n} bytes)", file=file)
    return parse_header(raw, file=file, file_size=file_size, header_size=n)


def read_header_at(read_at: Callable[[int, int], bytes], file_size: int, *, file: str) -> ShardHeader:
    """A safetensors header from ``read_at(offset, length)`` (an open file descriptor, a range request...)."""

    class _Sequential:
        pos = 0

        def read(self, n: int) -> bytes:
            data = read_at(self.pos, n)
            self.pos += len(data)
            return data

    return read_header_from(_Sequential(), file=file, file_size=file_size)  # type: ignore[arg-type]


def read_header(path: str | os.PathLike[str], *, name: str | None = None) -> ShardHeader:
    """Read and validate one local safetensors file's header. ``name`` is how errors refer to the file."""
    p = Path(path)
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return read_header_from(f, file=name or p.name, file_size=size)


def encode_header(
    tensors: Iterable[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str] | None = None
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """Build the 8-byte length + JSON header for tensors written back to back in the given order.

    Returns the header bytes (padded with spaces to a multiple of 8, as safetensors does) and each tensor's
    ``(begin, end)`` within the data section.
    """
    doc: dict[str, object] = {}
    if metadata:
        doc["__metadata__"] = dict(metadata)
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    for name, dtype, shape in tensors:
        n = dtype_nbytes(dtype, shape)
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        offsets[name] = (pos, pos + n)
        pos += n
    raw = json.dumps(doc, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offsets


# --- sharded checkpoints -----------------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)


#: the largest size accepted anywhere (a shard, an output): 1 PB
MAX_SIZE = 10**15


def parse_size(size: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000, ``"500MiB"`` -> 524_288_000, ``123`` -> 123 (as huggingface_hub counts)."""
    if isinstance(size, int):
        if size <= 0:
            raise ValueError("size must be positive")
        if size > MAX_SIZE:
            raise ValueError(f"size {size} is too large (at most {MAX_SIZE} bytes)")
        return size
    m = _SIZE_RE.match(size)
    if not m:
        raise ValueError(f"cannot read size {size!r}; use e.g. 5GB, 500MB, 2GiB or a byte count")
    num, unit, suffix = m.groups()
    base = 1024 if suffix and suffix.upper() == "IB" else 1000
    if len(num) > 20:
        raise ValueError(f"size {size!r} is too large")
    value = int(float(num) * base ** "_KMGT".index(unit.upper() or "_"))
    if value <= 0:
        raise ValueError("size must be positive")
    if value > MAX_SIZE:
        raise ValueError(f"size {size!r} is too large (at most {MAX_SIZE} bytes)")
    return value


def shard_name(i: int, n: int) -> str:
    """HF naming: ``model-00001-of-00003.safetensors``; a single shard is ``model.safetensors``."""
    return SINGLE_NAME if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def check_member_name(folder: Path, name: str, *, what: str = "file") -> Path:
    """Resolve ``name`` inside ``folder``, refusing absolute paths, ``..``, separators and symlinks that leave it.

    A Hugging Face cache snapshot (``.../snapshots/<rev>/file -> ../../blobs/<sha>``) may point into its own repo
    cache; anything else must stay inside ``folder``.
    """
    if not isinstance(name, str) or not name or name != os.path.basename(name) or name in (".", ".."):
        raise UnsafePathError(
            f"{what} name {name!r} is not a plain file name inside the checkpoint", file=str(name)
        )
    if "\\" in name or "\x00" in name:
        raise UnsafePathError(f"{what} name {name!r} is not a plain file name", file=name)
    path = folder / name
    real = path.resolve()
    root = folder.resolve()
    allowed = [root]
    if root.parent.name == "snapshots":  # huggingface_hub cache layout
        allowed.append(root.parent.parent)
    if not any(real == a or a in real.parents for a in allowed):
        raise UnsafePathError(f"{what} {name!r} resolves to {real}, outside the checkpoint folder", file=name)
    return path


@dataclass
class CheckpointIndex:
    """All tensors of a checkpoint folder, from its index file and shard headers."""

    shards: dict[str, ShardHeader]  # file name -> header, in index order
    tensors: dict[str, TensorInfo] = field(default_factory=dict)  # tensor name -> where
    index_metadata: dict[str, object] = field(default_factory=dict)
    #: "safetensors", or "pytorch" for ``torch.save`` ``.bin`` shards
    format: str = "safetensors"
    #: the index file read (None: a single file, or shards found by name)
    index_file: str | None = None
    #: what was tolerated, as transformers tolerates it (an index entry pointing to nothing, ...)
    warnings: list[str] = field(default_factory=list)
    #: index entries whose tensor is in none of the shards: name -> the file the index names
    dangling: dict[str, str] = field(default_factory=dict)

    @property
    def total_size(self) -> int:
        return sum(t.length for t in self.tensors.values())

    @property
    def files(self) -> list[str]:
        """The weight files this checkpoint is made of (the index file first, if any)."""
        return ([self.index_file] if self.index_file else []) + list(self.shards)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (to hand a planned checkpoint to other processes without reading headers again)."""
        return {
            "shards": {
                f: {
                    "header_size": h.header_size,
                    "file_size": h.file_size,
                    "metadata": h.metadata,
                    "tensors": {
                        n: [t.dtype, list(t.shape), t.offset, t.length] for n, t in h.tensors.items()
                    },
                }
                for f, h in self.shards.items()
            },
            "index_metadata": self.index_metadata,
            "format": self.format,
            "index_file": self.index_file,
            "warnings": self.warnings,
            "dangling": self.dangling,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckpointIndex:
        shards = {
            f: ShardHeader(
                f,
                h["header_size"],
                h["file_size"],
                dict(h["metadata"]),
                {
                    n: TensorInfo(n, dt, tuple(sh), f, off, ln)
                    for n, (dt, sh, off, ln) in h["tensors"].items()
                },
            )
            for f, h in d["shards"].items()
        }
        return CheckpointIndex(
            shards,
            {n: t for h in shards.values() for n, t in h.tensors.items()},
            dict(d.get("index_metadata") or {}),
            d.get("format", "safetensors"),
            d.get("index_file"),
            list(d.get("warnings") or []),
            dict(d.get("dangling") or {}),
        )


def shard_files_from_index(
    doc: object, *, file: str = INDEX_NAME
) -> tuple[dict[str, str], dict[str, object]]:
    """Validate an index document; returns (weight_map, metadata)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise CheckpointIndexError(f"{file}: expected an object with a 'weight_map' object", file=file)
    weight_map = doc["weight_map"]
    for k, v in weight_map.items():
        if not isinstance(v, str):
            raise CheckpointIndexError(f"{file}: weight_map[{k!r}] is not a file name", key=k, file=file)
    meta = doc.get("metadata") or {}
    if not isinstance(meta, dict):
        raise CheckpointIndexError(f"{file}: 'metadata' is not an object", file=file)
    return dict(weight_map), dict(meta)


def assemble_index(
    shards: dict[str, ShardHeader], weight_map: dict[str, str] | None, *, index_file: str = INDEX_NAME
) -> CheckpointIndex:
    """Merge shard headers, and compare them with the index's weight_map (when there is one) as leniently as
    transformers 5.23 loads them: every tensor of a listed shard counts, whether or not the index lists it or lists
    it in another shard (a warning); an index entry whose tensor is in no shard is a warning too, kept in
    ``dangling`` (the planner refuses it if a merge needs it). The same name in two shards is an error."""
    tensors: dict[str, TensorInfo] = {}
    for header in shards.values():
        for name, info in header.tensors.items():
            if name in tensors:
                raise DuplicateTensorError(
                    f"tensor {name!r} is in both {tensors[name].file} and {header.file}",
                    key=name,
                    file=header.file,
                )
            tensors[name] = info
    index = CheckpointIndex(shards=shards, tensors=tensors, index_file=index_file if weight_map else None)
    if weight_map is None:
        return index
    moved = [(n, f) for n, f in weight_map.items() if n in tensors and tensors[n].file != f]
    index.dangling = {n: f for n, f in weight_map.items() if n not in tensors}
    extra = sorted(set(tensors) - set(weight_map))
    if index.dangling:
        n, f = next(iter(index.dangling.items()))
        index.warnings.append(
            f"{index_file} lists {len(index.dangling)} tensor(s) that no shard holds, e.g. {n!r} (in {f}); "
            "they are not in the output"
        )
    if moved:
        n, f = moved[0]
        index.warnings.append(
            f"{index_file} puts {len(moved)} tensor(s) in the wrong shard, e.g. {n!r} in {f} but it is in "
            f"{tensors[n].file}; the shards' own headers are used"
        )
    if extra:
        index.warnings.append(
            f"{len(extra)} tensor(s) in the shards are missing from {index_file}, e.g. {extra[0]!r} in "
            f"{tensors[extra[0]].file}; they are converted like the others"
        )
    return index


def parse_index_bytes(raw: bytes, file: str) -> tuple[dict[str, str], dict[str, object]]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointIndexError(f"{file} is not valid JSON ({e})", file=file) from None
    return shard_files_from_index(doc, file=file)
