"""Piece math and compute kernels: how the ops of :mod:`converter.rules.ops` build tensors out of byte pieces, and
the arithmetic that computed pieces run, on the CPU or a GPU.

Reordering kernels (:func:`stack`, :func:`concat`, :func:`split_even`, :func:`interleave`, ...) return
:class:`~converter.layout.VirtualTensor` s whose pieces are byte ranges of their inputs: no data is read.

>>> from converter.layout import from_file
>>> w1 = from_file("w1", "BF16", (4, 8), "a.safetensors", 100, 64)
>>> w3 = from_file("w3", "BF16", (4, 8), "b.safetensors", 200, 64)
>>> [p.to_dict() for p in concat([w1, w3], 0, "gate_up").pieces]
[{'file': 'a.safetensors', 'offset': 100, 'length': 64}, {'file': 'b.safetensors', 'offset': 200, 'length': 64}]

Arithmetic ops (:func:`transpose`, :func:`cast`, :func:`fp8_dequantize`, :func:`mxfp4_dequantize`) return a
:class:`~converter.layout.Computed` tensor whose kernel (:class:`CastKernel`, :class:`TransposeKernel`,
:class:`Fp8Kernel`, :class:`Mxfp4Kernel`) cuts its output into bounded steps (``steps``) and computes one step
from the bytes read for it into a preallocated buffer (``run``), on the device the executor resolved with
:func:`resolve_device`; the executor pipelines the steps. torch is imported only there, so byte-copy plans never
import it. Every kernel is exact or IEEE round-to-nearest-even, so the bytes are the same on any device and however
steps cut a tensor; the one exception is the payload of a NaN that a cast produces on a GPU (its conversions
canonicalise NaNs unlike the CPU's; dequantization tables are made on the CPU, so FP8 and MXFP4 agree even there).
"""

from __future__ import annotations

import functools
import math
import mmap
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ExpertMismatchError, ShapeError, UnsupportedError
from .layout import (
    Piece,
    Ranges,
    Step,
    Strided,
    VirtualTensor,
    coalesce,
    computed_tensor,
    gather_blocks,
    row_bytes,
)
from .safetensors_io import DTYPE_BITS, dtype_nbytes

# --- devices ------------------------------------------------------------------------------------------------------

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(device: str | None) -> str:
    """The device name asked for, validated without importing torch: ``None`` means ``"auto"``.

    >>> check_device(None), check_device("CUDA:1")
    ('auto', 'cuda:1')
    """
    name = "auto" if device is None else device.strip().lower()
    if not _DEVICE.fullmatch(name):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {device!r}")
    return name


def resolve_device(device: str | None) -> str:
    """Where arithmetic runs: ``"auto"`` (or None) is ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without
    a GPU is an :class:`~converter.errors.UnsupportedError`. Byte copies never get here.

    >>> resolve_device("cpu")
    'cpu'
    """
    name = check_device(device)
    if name == "cpu":
        return name  # no torch import needed to know that
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise UnsupportedError(f"device {name!r} asked for, but torch sees no CUDA device")
    index = int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise UnsupportedError(
            f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)"
        )
    return name


# --- torch <-> bytes ----------------------------------------------------------------------------------------------


def torch_dtype(dtype: str) -> Any:
    """The torch dtype of a safetensors dtype: ``torch_dtype("BF16")`` -> ``torch.bfloat16``."""
    return _torch_dtypes()[dtype]


@functools.cache
def _torch_dtypes() -> dict[str, Any]:
    import torch

    return {
        "BF16": torch.bfloat16,
        "F16": torch.float16,
        "F32": torch.float32,
        "F64": torch.float64,
        "I8": torch.int8,
        "U8": torch.uint8,
        "I16": torch.int16,
        "I32": torch.int32,
        "I64": torch.int64,
        "BOOL": torch.bool,
        "F8_E4M3": torch.float8_e4m3fn,
        "F8_E5M2": torch.float8_e5m2,
    }


def to_tensor(raw: bytes, dtype: str, shape: tuple[int, ...], device: str = "cpu") -> Any:
    """Bytes -> a tensor on ``device``: ``to_tensor(b"\\0\\0\\x80?", "F32", (1,))`` -> ``tensor([1.])``."""
    import torch

    if not raw:
        return torch.empty(shape, dtype=torch_dtype(dtype), device=device)
    t = torch.frombuffer(bytearray(raw), dtype=torch_dtype(dtype)).reshape(shape)
    return t if device == "cpu" else t.to(device, non_blocking=False)


def to_bytes(t: Any) -> bytes:
    """A tensor's row-major bytes (copied to the CPU): ``to_bytes(torch.ones(1))`` -> ``b"\\0\\0\\x80?"``."""
    import torch

    return t.contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes()


#: the 16 values of an e2m1 (FP4) nibble
FP4_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def unpack_fp4(packed: Any) -> Any:
    """Two e2m1 values per byte (low nibble first) -> float32, twice as wide on the last dim."""
    import torch

    lut = torch.tensor(FP4_E2M1, dtype=torch.float32, device=packed.device)
    u8 = packed.contiguous().view(torch.uint8)
    both = torch.stack([lut[(u8 & 0xF).long()], lut[((u8 >> 4) & 0xF).long()]], dim=-1)
    return both.reshape(*packed.shape[:-1], 2 * packed.shape[-1])


# --- reordering pieces --------------------------------------------------------------------------------------------


def norm_dim(dim: int, ndim: int, key: str) -> int:
    """``dim`` as a non-negative index of an ``ndim``-d tensor: ``norm_dim(-1, 3, "t")`` -> ``2``."""
    d = dim + ndim if dim < 0 else dim
    if not 0 <= d < max(ndim, 1):
        raise ShapeError(f"{key}: dim {dim} is out of range for a {ndim}-d tensor", key=key)
    return d


def _outer(shape: tuple[int, ...], dim: int) -> int:
    return math.prod(shape[:dim])


def _origin(t: VirtualTensor, default: str) -> str:
    return t.origins[0] if t.origins else default


def stack(tensors: list[VirtualTensor], dim: int, key: str) -> VirtualTensor:
    """``torch.stack(tensors, dim)`` on pieces. All tensors must agree in shape and dtype."""
    if not tensors:
        raise ShapeError(f"{key}: nothing to stack", key=key)
    first = tensors[0]
    for t in tensors[1:]:
        if t.shape != first.shape or t.dtype != first.dtype:
            raise ExpertMismatchError(
                f"{key}: cannot stack {_origin(t, '?')} ({t.dtype} {list(t.shape)}) "
                f"with {_origin(first, '?')} ({first.dtype} {list(first.shape)})",
                key=_origin(t, key),
            )
    d = norm_dim(dim, len(first.shape) + 1, key)
    shape = first.shape[:d] + (len(tensors),) + first.shape[d:]
    block = dtype_nbytes(first.dtype, first.shape[d:])
    pieces: list[Piece] = []
    for o in range(_outer(first.shape, d)):
        for t in tensors:
            pieces.extend(t.byte_range(o * block, (o + 1) * block))
    return VirtualTensor(first.dtype, shape, coalesce(pieces), tuple(x for t in tensors for x in t.origins))


def concat(tensors: list[VirtualTensor], dim: int, key: str) -> VirtualTensor:
    """``torch.cat(tensors, dim)`` on pieces."""
    first = tensors[0]
    d = norm_dim(dim, len(first.shape), key)
    for t in tensors[1:]:
        same_rest = len(t.shape) == len(first.shape) and all(
            a == b for i, (a, b) in enumerate(zip(t.shape, first.shape, strict=True)) if i != d
        )
        if t.dtype != first.dtype or not same_rest:
            raise ExpertMismatchError(
                f"{key}: cannot concatenate {t.dtype} {list(t.shape)} with {first.dtype} {list(first.shape)} "
                f"on dim {dim}",
                key=_origin(t, key),
            )
    shape = first.shape[:d] + (sum(t.shape[d] for t in tensors),) + first.shape[d + 1 :]
    pieces: list[Piece] = []
    for o in range(_outer(first.shape, d)):
        for t in tensors:
            block = dtype_nbytes(t.dtype, t.shape[d:])
            pieces.extend(t.byte_range(o * block, (o + 1) * block))
    return VirtualTensor(first.dtype, shape, coalesce(pieces), tuple(x for t in tensors for x in t.origins))


def split_sizes(vt: VirtualTensor, dim: int, sizes: Sequence[int], key: str) -> list[VirtualTensor]:
    """``torch.split(vt, sizes, dim)`` on pieces; the sizes must add up to the dim."""
    d = norm_dim(dim, len(vt.shape), key)
    if sum(sizes) != vt.shape[d]:
        raise ShapeError(f"{key}: sizes {list(sizes)} do not add up to dim {d} of {list(vt.shape)}", key=key)
    row = row_bytes(vt, d)
    full = vt.shape[d] * row
    out = []
    start = 0
    for s in sizes:
        ranges = [(o * full + start * row, o * full + (start + s) * row) for o in range(_outer(vt.shape, d))]
        shape = vt.shape[:d] + (s,) + vt.shape[d + 1 :]
        out.append(VirtualTensor(vt.dtype, shape, gather_blocks(vt, ranges), vt.origins))
        start += s
    return out


def split_even(vt: VirtualTensor, dim: int, n: int, key: str) -> list[VirtualTensor]:
    """``torch.chunk(vt, n, dim)`` for a dim that ``n`` divides; pieces only."""
    d = norm_dim(dim, len(vt.shape), key)
    size = vt.shape[d]
    if n <= 0 or size % n:
        raise ShapeError(
            f"{key}: cannot split dim {dim} of size {size} ({list(vt.shape)}) into {n} equal parts", key=key
        )
    return split_sizes(vt, d, [size // n] * n, key)


def unstack(vt: VirtualTensor, dim: int, key: str) -> list[VirtualTensor]:
    """``torch.unbind(vt, dim)`` on pieces: one tensor per index of ``dim``."""
    d = norm_dim(dim, len(vt.shape), key)
    parts = split_even(vt, d, vt.shape[d], key)
    return [VirtualTensor(p.dtype, p.shape[:d] + p.shape[d + 1 :], p.pieces, p.origins) for p in parts]


def reshape(t: VirtualTensor, shape: Sequence[int], key: str) -> VirtualTensor:
    """A view with another shape (one ``-1`` allowed): the same pieces."""
    new = tuple(shape)
    if -1 in new:
        known = math.prod(x for x in new if x != -1)
        new = tuple(math.prod(t.shape) // known if x == -1 else x for x in new)
    if math.prod(new) != math.prod(t.shape):
        raise ShapeError(f"{key}: cannot reshape {list(t.shape)} to {list(shape)}", key=key)
    return VirtualTensor(t.dtype, new, t.pieces, t.origins)


def permute_rows(t: VirtualTensor, perm: Sequence[int]) -> VirtualTensor:
    """Rows (indices along dim 0) of ``t`` in the order ``perm``: pieces only."""
    row = row_bytes(t, 0)
    return VirtualTensor(
        t.dtype, t.shape, gather_blocks(t, [(k * row, (k + 1) * row) for k in perm]), t.origins
    )


def interleave(t: VirtualTensor, dim: int, inverse: bool, key: str) -> VirtualTensor:
    """De-interleave ``dim``: ``[g0, u0, g1, u1, ...]`` -> ``[g..., u...]`` (a ``[n/2, 2] -> [2, n/2]`` transpose of
    its indices); ``inverse`` re-interleaves. Pieces only."""
    d = norm_dim(dim, len(t.shape), key)
    n = t.shape[d]
    if n % 2:
        raise ShapeError(f"{key}: cannot de-interleave odd dim {d} of {list(t.shape)}", key=key)
    half = n // 2
    if inverse:  # [2, n/2] -> transpose -> [n/2, 2]: out[k] = in[(k % 2) * half + k // 2]
        perm = [(k % 2) * half + k // 2 for k in range(n)]
    else:  # [n/2, 2] -> transpose -> [2, n/2]: out[k] = in[2 * (k % half) + k // half]
        perm = [2 * (k % half) + k // half for k in range(n)]
    row = row_bytes(t, d)
    ranges = [
        (o * n * row + k * row, o * n * row + (k + 1) * row) for o in range(_outer(t.shape, d)) for k in perm
    ]
    return VirtualTensor(t.dtype, t.shape, gather_blocks(t, ranges), t.origins)


def rope_permute(t: VirtualTensor, n_heads: int, inverse: bool, key: str) -> VirtualTensor:
    """transformers' ``PermuteForRope`` on dim 0: per head, ``[half, 2] -> [2, half]`` (interleaved RoPE pairs to
    rotate-half); ``inverse`` goes back. A row permutation: pieces only."""
    n = t.shape[0]
    if n_heads <= 0 or n % (2 * n_heads):
        raise ShapeError(f"{key}: {n} rows do not split into {n_heads} heads of even size", key=key)
    per = n // n_heads
    half = per // 2
    perm = []
    for h in range(n_heads):
        base = h * per
        for k in range(per):
            j, i = (k % 2, k // 2) if inverse else (k // half, k % half)
            perm.append(base + (j * half + i if inverse else i * 2 + j))
    return permute_rows(t, perm)


# --- arithmetic: kernels computed in bounded steps ------------------------------------------------------------------
#
# Each arithmetic op is a small kernel class: ``steps`` cuts a byte range of its output into bounded steps (whole
# units where they fit: elements, matrices, block rows, experts), ``run`` computes one step from the bytes read for
# it into a preallocated output buffer, on the device its tensors are on. The executor pipelines the steps.

#: a matrix (transpose, MXFP4 expert) up to this many times the step limit is read whole once and its output
#: produced in bands from memory; a larger one is read as strided bands (bounded memory, more reads)
WHOLE_INPUT_FACTOR = 4
#: elements per sub-step of the CPU FP8 kernel: its float32 temporaries stay in cache
FP8_SUB_ELEMENTS = 1 << 18


_SCRATCH = threading.local()


def scratch(slot: str, n: int, dtype: Any, device: Any) -> Any:
    """A temporary of ``n`` elements for a kernel, reused by this thread from step to step (so that temporaries do
    not fragment the heap: on the CPU it is anonymous memory of its own). Contents are garbage."""
    import torch

    cache: dict[str, Any] = _SCRATCH.__dict__.setdefault("buffers", {})
    nbytes = n * dtype.itemsize
    buf = cache.get(slot)
    if buf is None or buf.numel() < nbytes or buf.device != device:
        cache.pop(slot, None)
        size = max(nbytes, 1) * 5 // 4  # a little room, so that a slightly larger step does not reallocate
        if device.type == "cpu":
            buf = torch.frombuffer(memoryview(mmap.mmap(-1, size)), dtype=torch.uint8)
        else:
            buf = torch.empty(size, dtype=torch.uint8, device=device)
        cache[slot] = buf
    return buf[:nbytes].view(dtype)


def release_scratch() -> None:
    """Drop this thread's kernel temporaries."""
    _SCRATCH.__dict__.pop("buffers", None)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _item(dtype: str, key: str) -> int:
    bits = DTYPE_BITS[dtype]
    if bits % 8:
        raise UnsupportedError(f"{key}: cannot compute on {dtype} ({bits}-bit) elements", key=key)
    return bits // 8


def _view(buf: Any, dtype: str) -> Any:
    """A uint8 buffer's bytes as ``dtype`` elements (no copy)."""
    return buf.view(torch_dtype(dtype))


@dataclass(frozen=True)
class CastKernel:
    """``x.to(to)`` element by element (IEEE round to nearest even, as torch)."""

    frm: str
    to: str
    numel: int

    @property
    def unit_bytes(self) -> int:
        return DTYPE_BITS[self.to] // 8

    def steps(self, start: int, stop: int, limit: int) -> Iterator[Step]:
        if stop <= start:
            return
        si, so = DTYPE_BITS[self.frm] // 8, DTYPE_BITS[self.to] // 8
        e0, e1 = start // so, min(_ceil_div(stop, so), self.numel)
        per = max(1, limit // max(si, so))
        for a in range(e0, e1, per):
            b = min(a + per, e1)
            yield Step(a * so, b * so, (((a * si, b * si),),))

    def run(self, step: Step, inputs: Sequence[Any], out: Any) -> None:
        import torch

        o = _view(out, self.to)
        o.copy_(_view(inputs[0], self.frm))
        if (self.frm, self.to) == ("F16", "F32"):
            # torch's vectorised fp16 -> fp32 keeps a NaN's payload (quieted), its scalar path (the last few
            # elements of a thread's range) gives 0x7FFFFFFF: make every NaN what the vectorised path gives, so that
            # the bytes do not depend on where steps or threads cut the tensor
            nan = torch.isnan(o)
            if bool(nan.any()):
                bits = _view(inputs[0], "I16")[nan].to(torch.int32)
                fixed = ((bits & 0x8000) << 16) | 0x7FC00000 | ((bits & 0x3FF) << 13)
                o.view(torch.int32)[nan] = fixed


@dataclass(frozen=True)
class TransposeKernel:
    """Input viewed as ``[outer, A, M, B, N]`` -> output ``[outer, B, M, A, N]`` (dims A and B swapped): one
    ``[A, M, B, N]`` matrix per outer index (one expert). Small matrices go several to a step; a larger one is
    produced in bands of output rows (``B`` indices), from the matrix read whole when it is at most
    :data:`WHOLE_INPUT_FACTOR` steps, else from strided reads of just the band."""

    dtype: str
    outer: int
    a: int
    m: int
    b: int
    n: int

    @property
    def item(self) -> int:
        return DTYPE_BITS[self.dtype] // 8

    @property
    def unit_bytes(self) -> int:
        return self.a * self.m * self.b * self.n * self.item

    def steps(self, start: int, stop: int, limit: int) -> Iterator[Step]:
        if stop <= start:
            return
        mat = self.unit_bytes
        if mat <= limit:  # whole matrices, several to a step
            o0, o1 = start // mat, _ceil_div(stop, mat)
            per = limit // mat
            for o in range(o0, o1, per):
                k = min(per, o1 - o)
                yield Step(o * mat, (o + k) * mat, (((o * mat, (o + k) * mat),),), ("whole", k))
            return
        row = mat // self.b  # one output row: [M, A, N]
        per = max(1, limit // row)
        whole_input = mat <= WHOLE_INPUT_FACTOR * limit
        r, r1 = start // row, _ceil_div(stop, row)
        while r < r1:
            o, j0 = divmod(r, self.b)
            j1 = min(j0 + per, self.b, j0 + (r1 - r))
            if whole_input:
                reads: Ranges = ((o * mat, (o + 1) * mat),)
                arg: tuple[Any, ...] = ("rows of", j0, j1)
            else:
                col = self.n * self.item
                reads = Strided(o * mat + j0 * col, (j1 - j0) * col, self.b * col, self.a * self.m)
                arg = ("band", j0, j1)
            yield Step(r * row, (r + j1 - j0) * row, (reads,), arg)
            r += j1 - j0

    def run(self, step: Step, inputs: Sequence[Any], out: Any) -> None:
        x = _view(inputs[0], self.dtype)
        a, m, b, n = self.a, self.m, self.b, self.n
        kind = step.arg[0]
        if kind == "whole":
            k = step.arg[1]
            src = x.view(k, a, m, b, n).permute(0, 3, 2, 1, 4)
            _view(out, self.dtype).view(k, b, m, a, n).copy_(src)
            return
        j0, j1 = step.arg[1], step.arg[2]
        if kind == "rows of":
            # the band gathered first (a short contiguous run per row), then transposed from a contiguous source:
            # two fast copies instead of one slow one that strides across the whole matrix
            band = scratch("transpose band", a * m * (j1 - j0) * n, x.dtype, x.device).view(a, m, j1 - j0, n)
            band.copy_(x.view(a, m, b, n)[:, :, j0:j1])
            src = band.permute(2, 1, 0, 3)
        else:
            src = x.view(a, m, j1 - j0, n).permute(2, 1, 0, 3)
        _view(out, self.dtype).view(j1 - j0, m, a, n).copy_(src)


def transpose(t: VirtualTensor, dim0: int, dim1: int, key: str) -> VirtualTensor:
    """``t.transpose(dim0, dim1).contiguous()``, computed one matrix (one expert) or one band of it at a time."""
    nd = len(t.shape)
    a, b = sorted((norm_dim(dim0, nd, key), norm_dim(dim1, nd, key)))
    if a == b:
        return t
    shape = list(t.shape)
    shape[a], shape[b] = shape[b], shape[a]
    out_shape = tuple(shape)
    if t.shape[a] == 1 or t.shape[b] == 1:  # moving a size-1 dim does not move any byte
        return VirtualTensor(t.dtype, out_shape, t.pieces, t.origins)
    _item(t.dtype, key)
    s = t.shape
    kernel = TransposeKernel(
        t.dtype, math.prod(s[:a]), s[a], math.prod(s[a + 1 : b]), s[b], math.prod(s[b + 1 :])
    )
    desc = {"op": "transpose", "dim0": a, "dim1": b}
    return computed_tensor(t.dtype, out_shape, [t], kernel, desc)


def cast(t: VirtualTensor, dtype: str) -> VirtualTensor:
    """``t.to(dtype)`` (round to nearest even), computed in bounded steps; ``t`` itself when it already has that
    dtype."""
    if t.dtype == dtype:
        return t
    key = t.origins[0] if t.origins else "cast"
    _item(t.dtype, key)
    _item(dtype, key)
    desc = {"op": "cast", "from": t.dtype, "to": dtype}
    return computed_tensor(dtype, t.shape, [t], CastKernel(t.dtype, dtype, math.prod(t.shape)), desc)


@dataclass(frozen=True)
class Fp8Kernel:
    """transformers' ``Fp8Dequantize`` on ``mats`` matrices of ``rows x cols``: ``(w.float() * scale per block)
    .to(to)``, the block ``rows / sr x cols / sc``; any range of rows per step (each row's scale row is looked up),
    in float32 sub-steps of :data:`FP8_SUB_ELEMENTS` on the CPU."""

    wdtype: str
    sdtype: str
    to: str
    mats: int
    rows: int
    cols: int
    sr: int
    sc: int

    @property
    def packed(self) -> bool:
        return self.wdtype == "I8"  # two FP4 (e2m1) values per byte

    @property
    def bm(self) -> int:
        return self.rows // self.sr

    @property
    def w_row(self) -> int:
        return self.cols // 2 if self.packed else self.cols

    @property
    def o_row(self) -> int:
        return self.cols * DTYPE_BITS[self.to] // 8

    @property
    def s_row(self) -> int:
        return self.sc * DTYPE_BITS[self.sdtype] // 8

    @property
    def unit_bytes(self) -> int:
        return self.bm * self.o_row  # one block row

    def _scale_row(self, g: int) -> int:
        return (g // self.rows) * self.sr + (g % self.rows) // self.bm

    def steps(self, start: int, stop: int, limit: int) -> Iterator[Step]:
        if stop <= start:
            return
        g0, g1 = start // self.o_row, _ceil_div(stop, self.o_row)
        per = max(1, limit // max(self.o_row, self.w_row))
        for a in range(g0, g1, per):
            b = min(a + per, g1)
            s0, s1 = self._scale_row(a), self._scale_row(b - 1) + 1
            reads = (((a * self.w_row, b * self.w_row),), ((s0 * self.s_row, s1 * self.s_row),))
            yield Step(a * self.o_row, b * self.o_row, reads, (a, b))

    def run(self, step: Step, inputs: Sequence[Any], out: Any) -> None:
        import torch

        a, b = step.arg
        n, cols, sc, bn = b - a, self.cols, self.sc, self.cols // self.sc
        dev = out.device
        s = _view(inputs[1], self.sdtype).view(-1, sc)
        s32 = (s.to(torch.float32) - 127.0).exp2() if self.sdtype == "U8" else s.to(torch.float32)
        o = _view(out, self.to).view(n, cols)
        if self.packed:  # FP4 pairs: unpacked to float32, then scaled (rare; not worth a table)
            q4 = _view(inputs[0], self.wdtype).view(n, self.w_row)
            g = torch.arange(a, b, device=dev)
            rows_scale = (g // self.rows) * self.sr + (g % self.rows) // self.bm - self._scale_row(a)
            t = unpack_fp4(q4).view(n, sc, bn) * s32.index_select(0, rows_scale).unsqueeze(-1)
            o.copy_(t.view(n, cols))
            return
        # every weight byte under every scale of the step, dequantized once: (lut[byte] * scale).to(to) is the very
        # product transformers computes element by element, so one lookup per element gives its bytes
        s_cpu = s32.cpu().view(
            -1, sc, 1
        )  # the tables are made on the CPU (a few KB): a GPU writes the CPU's bytes
        tables = (fp8_lut(self.wdtype).view(1, 1, 256) * s_cpu).to(torch_dtype(self.to))
        flat = tables.view(-1).to(dev)
        q = inputs[0].view(n, cols)
        col = (torch.arange(cols, dtype=torch.int32, device=dev) // bn) * 256
        per = n if dev.type != "cpu" else max(1, min(n, FP8_SUB_ELEMENTS // cols))
        idx = scratch("fp8 index", per * cols, torch.int32, dev)
        s0 = self._scale_row(a)
        r = 0
        while r < n:
            g = a + r
            r2 = min(n, r + per, r + self.bm - (g % self.rows) % self.bm)  # one scale row at a time
            base = col + (self._scale_row(g) - s0) * sc * 256
            ix = idx[: (r2 - r) * cols].view(r2 - r, cols)
            ix.copy_(q[r:r2])
            ix.add_(base)
            torch.index_select(flat, 0, ix.view(-1), out=o[r:r2].view(-1))
            r = r2


@functools.lru_cache(maxsize=8)
def fp8_lut(dtype: str, device: str = "cpu") -> Any:
    """The float32 value of every byte of an FP8 ``dtype``, as torch converts it (NaN codes included)."""
    import torch

    return torch.arange(256, dtype=torch.uint8).view(torch_dtype(dtype)).to(torch.float32).to(device)


def fp8_dequantize(weight: VirtualTensor, scale: VirtualTensor, dtype: str, key: str) -> VirtualTensor:
    """transformers' ``Fp8Dequantize``: ``(weight.float() * scale_inv per block).to(dtype)``, the block size
    derived from the scale grid (so a grid that does not divide the weight is refused, as transformers refuses
    it); ``uint8`` scales are E8M0 (``2 ** (s - 127)``), ``int8`` weights packed FP4."""
    if weight.dtype not in ("F8_E4M3", "F8_E5M2", "I8"):
        raise UnsupportedError(f"{key}: cannot dequantize a {weight.dtype} weight as FP8", key=key)
    packed = weight.dtype == "I8"
    rows = weight.shape[-2] if len(weight.shape) >= 2 else 1
    cols = (weight.shape[-1] * (2 if packed else 1)) if weight.shape else 1
    lead = weight.shape[:-2]
    sr, sc = (scale.shape[-2], scale.shape[-1]) if len(scale.shape) >= 2 else (1, 1)
    if sr == 0 or sc == 0 or rows % sr or cols % sc or math.prod(scale.shape) != math.prod(lead) * sr * sc:
        raise ShapeError(
            f"{key}: weight {list(weight.shape)} does not match its scale grid {list(scale.shape)}", key=key
        )
    _item(scale.dtype, key)
    kernel = Fp8Kernel(weight.dtype, scale.dtype, dtype, math.prod(lead), rows, cols, sr, sc)
    desc = {"op": "fp8_dequantize", "block": [rows // sr, cols // sc], "to": dtype}
    return computed_tensor(dtype, (*lead, rows, cols), [weight, scale], kernel, desc)


@functools.lru_cache(maxsize=16)
def mxfp4_table(dtype: str, device: str = "cpu") -> Any:
    """Every MXFP4 byte under every E8M0 scale, dequantized: entry ``scale * 256 + byte`` holds the pair (low
    nibble, high nibble) of ``dtype`` values, packed in one integer. Made on the CPU exactly as transformers'
    ``convert_moe_packed_tensors`` computes each value (``ldexp(lut[nibble], scale - 127)`` in ``dtype``), so a
    lookup gives its bytes on any device."""
    import torch

    dt = torch_dtype(dtype)
    lut = torch.tensor(FP4_E2M1, dtype=dt)
    byte = torch.arange(256)
    pairs = torch.empty(256, 256, 2, dtype=dt)
    pairs[:, :, 0] = lut[byte & 0x0F]
    pairs[:, :, 1] = lut[byte >> 4]
    exp = (torch.arange(256, dtype=torch.int32) - 127).view(256, 1)
    flat = pairs.view(256, 512)
    torch.ldexp(flat, exp, out=flat)
    packed = {2: torch.int32, 4: torch.int64}[dt.itemsize]
    return pairs.view(packed).reshape(256 * 256).to(device)


@dataclass(frozen=True)
class Mxfp4Kernel:
    """transformers' ``Mxfp4Dequantize``: uint8 ``blocks [E, out, G, 16]`` and ``scales [E, out, G]`` ->
    ``[E, G * 32, out]`` in ``to``, by table lookup (:func:`mxfp4_table`); whole experts when they fit a step,
    else bands of groups (output rows) of one expert."""

    to: str
    experts: int
    out: int
    groups: int
    block: int

    @property
    def g_out(self) -> int:
        """Output bytes of one group of one expert: ``2 * block`` rows of ``out``."""
        return 2 * self.block * self.out * DTYPE_BITS[self.to] // 8

    @property
    def unit_bytes(self) -> int:
        return self.groups * self.g_out  # one expert

    def steps(self, start: int, stop: int, limit: int) -> Iterator[Step]:
        if stop <= start:
            return
        whole_input_limit = WHOLE_INPUT_FACTOR * limit
        limit = max(1, limit // 2)  # its int32 temporaries come to twice its output: half-size steps
        exp_out, bpe, spe = self.unit_bytes, self.out * self.groups * self.block, self.out * self.groups
        if exp_out <= limit:
            e0, e1 = start // exp_out, _ceil_div(stop, exp_out)
            per = limit // exp_out
            for e in range(e0, e1, per):
                k = min(per, e1 - e)
                whole = (((e * bpe, (e + k) * bpe),), ((e * spe, (e + k) * spe),))
                yield Step(e * exp_out, (e + k) * exp_out, whole, ("whole", k, 0, self.groups))
            return
        per = max(1, limit // self.g_out)
        whole_input = bpe + spe <= whole_input_limit
        u, u1 = start // self.g_out, _ceil_div(stop, self.g_out)
        while u < u1:
            e, g0 = divmod(u, self.groups)
            g1 = min(g0 + per, self.groups, g0 + (u1 - u))
            reads: tuple[Ranges, ...]
            if whole_input:
                reads = (((e * bpe, (e + 1) * bpe),), ((e * spe, (e + 1) * spe),))
                arg: tuple[Any, ...] = ("groups of", 1, g0, g1)
            else:
                bb, gs = self.block, self.groups
                reads = (
                    Strided(e * bpe + g0 * bb, (g1 - g0) * bb, gs * bb, self.out),
                    Strided(e * spe + g0, g1 - g0, gs, self.out),
                )
                arg = ("band", 1, g0, g1)
            yield Step(u * self.g_out, (u + g1 - g0) * self.g_out, reads, arg)
            u += g1 - g0

    def run(self, step: Step, inputs: Sequence[Any], out: Any) -> None:
        import torch

        kind, k, g0, g1 = step.arg
        o, gs, bb, gn = self.out, self.groups, self.block, g1 - g0
        dev = out.device
        if kind == "band":
            blk = inputs[0].view(k, o, gn, bb)
            sc = inputs[1].view(k, o, gn)
        else:
            blk = inputs[0].view(k, o, gs, bb)[:, :, g0:g1]
            sc = inputs[1].view(k, o, gs)[:, :, g0:g1]
        # table index (scale << 8 | byte) of every byte, then transposed to the output's order: [k, gn * bb, out]
        n = k * o * gn * bb
        idx = scratch("mxfp4 index", n, torch.int32, dev).view(k, o, gn, bb)
        idx.copy_(blk)  # (torch.add of uint8 and int32 would first copy the bytes to a new int32 tensor)
        idx.add_((sc.to(torch.int32) << 8).unsqueeze(-1))
        idx_t = scratch("mxfp4 index t", n, torch.int32, dev).view(k, gn * bb, o)
        idx_t.copy_(idx.view(k, o, gn * bb).transpose(1, 2))
        # one lookup per byte gives its (low, high) pair; the pairs go to two consecutive output rows
        table = mxfp4_table(self.to, str(dev))
        pairs = scratch("mxfp4 index", n, table.dtype, dev)  # the untransposed index is done with
        torch.index_select(table, 0, idx_t.view(-1), out=pairs)
        pairs = pairs.view(torch_dtype(self.to))
        rows = _view(out, self.to).view(k, gn * bb, 2, o)
        rows.copy_(pairs.view(k, gn * bb, o, 2).transpose(2, 3))


def mxfp4_dequantize(blocks: VirtualTensor, scales: VirtualTensor, dtype: str, key: str) -> VirtualTensor:
    """transformers' ``Mxfp4Dequantize`` (``convert_moe_packed_tensors``): ``blocks`` uint8 ``[E, out, G, 16]`` and
    ``scales`` uint8 ``[E, out, G]`` -> ``[E, G * 32, out]`` (note the transpose), one expert or band at a time."""
    if blocks.dtype != "U8" or scales.dtype != "U8" or len(blocks.shape) != 4:
        raise UnsupportedError(
            f"{key}: MXFP4 needs uint8 blocks [E, out, G, 16] and scales, got {blocks.dtype} "
            f"{list(blocks.shape)} and {scales.dtype} {list(scales.shape)}",
            key=key,
        )
    e, out, g, b = blocks.shape
    if tuple(scales.shape) != (e, out, g):
        raise ShapeError(
            f"{key}: scales {list(scales.shape)} do not match blocks {list(blocks.shape)}", key=key
        )
    _item(dtype, key)
    desc = {"op": "mxfp4_dequantize", "to": dtype}
    return computed_tensor(
        dtype, (e, g * b * 2, out), [blocks, scales], Mxfp4Kernel(dtype, e, out, g, b), desc
    )
