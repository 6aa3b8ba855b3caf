"""PyTorch ``.bin`` checkpoints (``torch.save`` zip files) read as byte ranges, like safetensors shards.

A ``pytorch_model.bin`` written by ``torch.save`` (PyTorch >= 1.6) is an uncompressed zip: ``<archive>/data.pkl``
(a pickle of the state dict whose tensors point at storages) and one record ``<archive>/data/<key>`` per storage,
stored as raw little-endian bytes. So every tensor is a byte range of the file, known from the pickle and the zip
directory alone: the planner treats a ``.bin`` shard exactly like a safetensors shard, the executor copies its bytes
with ``copy_file_range`` (local) or range requests (Hub), and nothing is loaded into memory.

The pickle is read by a restricted unpickler that runs no code: only the few globals ``torch.save`` writes for
plain tensors are accepted (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and friends, storage
classes and dtypes), each replaced by an inert description. Anything else (a hostile ``os.system``, a custom class,
an optimizer state) is refused with :class:`UnsafeCheckpointError` naming it. The result is checked against the
zip records: every tensor must lie inside its storage, be contiguous, and its storage be stored uncompressed.

>>> header = read_bin_header(LocalRanges("pytorch_model.bin"), file="pytorch_model.bin")   # doctest: +SKIP
>>> header.tensors["model.embed_tokens.weight"].dtype
'BF16'
"""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .errors import HeaderError, UnsafeCheckpointError, UnsupportedError
from .safetensors_io import ShardHeader, TensorInfo

#: a state dict's pickle above this is refused before it is read (real ones are a few MB)
MAX_PICKLE_SIZE = 256 * 1024 * 1024
#: the first bytes of the pre-1.6 (non-zip) torch format: pickle protocol 2 + its magic number
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

#: legacy ``<dtype>Storage`` classes -> safetensors dtype
_STORAGE_DTYPES = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64",
}
#: torch dtypes pickled by name (``_rebuild_tensor_v3``, dtypes without a legacy storage class)
_TORCH_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ",
    "float8_e8m0fnu": "F8_E8M0",
    "complex64": "C64",
}
_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
    "F8_E8M0": 1, "C64": 8,
}  # fmt: skip

ReadAt = Callable[[int, int], bytes]


# --- inert stand-ins for what the pickle names ---------------------------------------------------------------------


@dataclass(frozen=True)
class _StorageClass:
    dtype: str | None  # None: UntypedStorage (the dtype comes with the tensor)


@dataclass(frozen=True)
class _DType:
    dtype: str


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: str | None
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    dtype: str
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise ValueError(f"{what} is not a tuple of non-negative ints")
    return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> _TensorRef:
    if not isinstance(storage, _StorageRef) or storage.dtype is None:
        raise ValueError("a tensor without a typed storage")
    return _tensor(storage, storage.dtype, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    hooks: Any,
    dtype: Any,
    *_: Any,
) -> _TensorRef:
    if not isinstance(storage, _StorageRef) or not isinstance(dtype, _DType):
        raise ValueError("a tensor without a storage or a dtype")
    return _tensor(storage, dtype.dtype, storage_offset, size, stride)


def _tensor(storage: _StorageRef, dtype: str, offset: Any, size: Any, stride: Any) -> _TensorRef:
    if type(offset) is not int or offset < 0:
        raise ValueError("a tensor with an invalid storage offset")
    return _TensorRef(
        storage, dtype, offset, _ints(size, "a tensor's size"), _ints(stride, "a tensor's stride")
    )


def _rebuild_parameter(data: Any, *_: Any) -> _TensorRef:
    if not isinstance(data, _TensorRef):
        raise ValueError("a parameter that is not a tensor")
    return data


def _ordered_dict(*args: Any) -> dict[Any, Any]:
    return dict(*args)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "UntypedStorage"): _StorageClass(None),
    ("torch.storage", "UntypedStorage"): _StorageClass(None),
    **{("torch", k): _StorageClass(v) for k, v in _STORAGE_DTYPES.items()},
    **{("torch", k): _DType(v) for k, v in _TORCH_DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    """Builds inert descriptions of tensors; refuses every global not in :data:`_ALLOWED` (no code runs)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if (
            not isinstance(pid, tuple)
            or len(pid) != 5
            or pid[0] != "storage"
            or not isinstance(pid[1], _StorageClass)
            or not isinstance(pid[2], str)
            or type(pid[4]) is not int
            or pid[4] < 0
        ):
            raise pickle.UnpicklingError("a persistent id that is not a tensor storage")
        return _StorageRef(pid[2], pid[1].dtype, pid[4])


# --- reading ---------------------------------------------------------------------------------------------------


class _RangeFile(io.RawIOBase):
    """A seekable read-only file over ``read_at(offset, length)`` for :mod:`zipfile` (reads in 16 KB blocks, the
    last few kept, so the central directory costs one or two reads, not hundreds)."""

    BLOCK = 16 * 1024

    def __init__(self, read_at: ReadAt, size: int, file: str) -> None:
        self.read_at, self.size, self.pos, self.file = read_at, size, 0, file
        self._blocks: dict[int, bytes] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def _block(self, i: int) -> bytes:
        b = self._blocks.get(i)
        if b is None:
            start = i * self.BLOCK
            b = self.read_at(start, min(self.BLOCK, self.size - start))
            if len(self._blocks) >= 8:
                self._blocks.pop(next(iter(self._blocks)))
            self._blocks[i] = b
        return b

    def readinto(self, buf: Any) -> int:
        n = min(len(buf), max(0, self.size - self.pos))
        got = 0
        while got < n:
            i, off = divmod(self.pos + got, self.BLOCK)
            chunk = self._block(i)[off : off + n - got]
            if not chunk:
                break
            buf[got : got + len(chunk)] = chunk
            got += len(chunk)
        self.pos += got
        return got

    def read_exact(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` in one read (records and the pickle: not through the block cache);
        a range outside the file is a :class:`HeaderError` (a zip directory can point anywhere)."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise HeaderError(
                f"{self.file}: zip entry at byte {offset} (+{length}) is outside the file", file=self.file
            )
        return self.read_at(offset, length) if length else b""


def _data_offset(f: _RangeFile, info: zipfile.ZipInfo, file: str) -> int:
    """Where a stored record's bytes start: after its local header (whose extra field torch uses as padding)."""
    head = f.read_exact(info.header_offset, 30)
    if len(head) != 30 or head[:4] != b"PK\x03\x04":
        raise HeaderError(f"{file}: zip record {info.filename} has no local header", file=file)
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > f.size:
        raise HeaderError(f"{file}: zip record {info.filename} runs past the end of the file", file=file)
    return start


def is_bin_checkpoint_name(name: str) -> bool:
    """``pytorch_model.bin``, ``pytorch_model-00001-of-00002.bin`` (not ``training_args.bin``, ``optimizer.bin``)."""
    return name.startswith("pytorch_model") and name.endswith(".bin")


def read_bin_header(read_at: ReadAt, size: int, *, file: str, parallel: int = 1) -> ShardHeader:
    """Every tensor of a ``torch.save`` zip file as a byte range of the file (absolute offsets), from the zip
    directory, the pickle and one local header per storage. Raises :class:`UnsafeCheckpointError` for a pickle that
    names anything but tensors, :class:`HeaderError` for a malformed file, :class:`UnsupportedError` for tensors
    that are not plain byte ranges (non-contiguous, unknown dtype, compressed). ``parallel``: local headers read
    at once (for remote files)."""
    if size < 4:
        raise HeaderError(f"{file}: {size} bytes is too short for a PyTorch checkpoint", file=file)
    f = _RangeFile(read_at, size, file)
    first = f.read_exact(0, min(size, len(LEGACY_MAGIC)))
    if first[:4] != b"PK\x03\x04":
        if first.startswith(LEGACY_MAGIC[:2]):
            raise UnsupportedError(
                f"{file} is in the legacy (pre-1.6, non-zip) torch.save format, which cannot be read without "
                "running its pickle; re-save it with a current PyTorch or as safetensors",
                file=file,
            )
        raise HeaderError(f"{file} is not a torch.save zip file", file=file)
    try:
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise HeaderError(f"{file}: not a readable zip file ({e})", file=file) from None
    pkls = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
    if len(pkls) != 1:
        raise HeaderError(f"{file}: expected one <archive>/data.pkl record, found {len(pkls)}", file=file)
    prefix = pkls[0].filename[: -len("data.pkl")]
    records = {i.filename: i for i in infos}
    order = records.get(prefix + "byteorder")
    if order is not None and _stored(f, order, file).strip() != b"little":
        raise UnsupportedError(f"{file}: big-endian tensors are not supported", file=file)
    if pkls[0].file_size > MAX_PICKLE_SIZE:
        raise HeaderError(f"{file}: its pickle ({pkls[0].file_size} bytes) exceeds the cap", file=file)
    state = _unpickle(_stored(f, pkls[0], file), file)
    needed: dict[str, zipfile.ZipInfo] = {}
    for name, ref in state.items():
        info = records.get(f"{prefix}data/{ref.storage.key}")
        if info is None:
            raise HeaderError(f"{file}: tensor {name!r} points at storage {ref.storage.key}, which is missing",
                              key=name, file=file)  # fmt: skip
        _check_stored(info, file)
        needed[ref.storage.key] = info
    # one small read per storage for its local header: several at once when reads are remote
    keys = list(needed)
    if parallel > 1 and len(keys) > 1:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            starts = list(pool.map(lambda k: _data_offset(f, needed[k], file), keys))
    else:
        starts = [_data_offset(f, needed[k], file) for k in keys]
    offsets = {k: (a, needed[k].file_size) for k, a in zip(keys, starts, strict=True)}
    tensors: dict[str, TensorInfo] = {}
    for name, ref in state.items():
        start, nbytes = offsets[ref.storage.key]
        tensors[name] = _tensor_info(name, ref, start, nbytes, file, size)
    return ShardHeader(file, 0, size, {"format": "pt"}, tensors)


def _unpickle(raw: bytes, file: str) -> dict[str, _TensorRef]:
    try:
        obj = _Unpickler(io.BytesIO(raw)).load()
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{file}: its pickle names {e}, which is not part of a plain tensor state dict; refused without "
            "running it",
            file=file,
        ) from None
    except (ValueError, TypeError, EOFError, IndexError, KeyError, AttributeError, struct.error) as e:
        raise HeaderError(f"{file}: malformed pickle ({type(e).__name__}: {e})", file=file) from None
    if not isinstance(obj, dict):
        raise UnsafeCheckpointError(f"{file} holds a {type(obj).__name__}, not a state dict", file=file)
    for k, v in obj.items():
        if not isinstance(k, str):
            raise UnsafeCheckpointError(f"{file}: state dict key {k!r} is not a string", file=file)
        if not isinstance(v, _TensorRef):
            what = "a nested dict" if isinstance(v, dict) else type(v).__name__
            raise UnsafeCheckpointError(
                f"{file}: {k!r} is {what}, not a tensor: not a plain state dict (a training checkpoint?)",
                key=k,
                file=file,
            )
    return obj


def _check_stored(info: zipfile.ZipInfo, file: str) -> None:
    if (
        info.compress_type != zipfile.ZIP_STORED
        or info.flag_bits & 0x1
        or info.compress_size != info.file_size
    ):
        raise UnsupportedError(f"{file}: record {info.filename} is compressed or encrypted", file=file)


def _stored(f: _RangeFile, info: zipfile.ZipInfo, file: str) -> bytes:
    _check_stored(info, file)
    data = f.read_exact(_data_offset(f, info, file), info.file_size)
    if len(data) != info.file_size:
        raise HeaderError(f"{file}: record {info.filename} is truncated", file=file)
    return data


def _tensor_info(name: str, ref: _TensorRef, start: int, nbytes: int, file: str, size: int) -> TensorInfo:
    item = _ITEMSIZE.get(ref.dtype)
    if item is None:
        raise UnsupportedError(
            f"{file}: tensor {name!r} has dtype {ref.dtype}, not supported", key=name, file=file
        )
    if ref.storage.dtype is not None and ref.storage.dtype != ref.dtype:
        raise UnsupportedError(
            f"{file}: tensor {name!r} views a storage of another dtype", key=name, file=file
        )
    shape = ref.shape
    if len(ref.stride) != len(shape):
        raise HeaderError(f"{file}: tensor {name!r} has {len(ref.stride)} strides for {len(shape)} dims",
                          key=name, file=file)  # fmt: skip
    numel = math.prod(shape)
    if numel and not _contiguous(shape, ref.stride):
        raise UnsupportedError(
            f"{file}: tensor {name!r} is a non-contiguous view (stride {list(ref.stride)}) of its storage; "
            "re-save the checkpoint with contiguous tensors",
            key=name,
            file=file,
        )
    begin, length = ref.offset * item, numel * item
    if begin + length > nbytes or start + nbytes > size:
        raise HeaderError(
            f"{file}: tensor {name!r} ({ref.dtype} x {list(shape)} at element {ref.offset}) runs past its "
            f"{nbytes}-byte storage",
            key=name,
            file=file,
        )
    return TensorInfo(name, ref.dtype, shape, file, start + begin if length else start, length)


def _contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for d, s in zip(reversed(shape), reversed(stride), strict=True):
        if d != 1 and s != expected:
            return False
        expected *= d
    return True


def fd_reader(fd: int) -> ReadAt:
    """``read_at(offset, length)`` over an open file descriptor (``pread`` until done or end of file)."""

    def read_at(offset: int, length: int) -> bytes:
        parts, done = [], 0
        while done < length:
            b = os.pread(fd, length - done, offset + done)
            if not b:
                break
            parts.append(b)
            done += len(b)
        return b"".join(parts)

    return read_at


__all__ = ["is_bin_checkpoint_name", "fd_reader", "read_bin_header"]
