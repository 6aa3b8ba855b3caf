"""Piece math and compute kernels: how the ops of :mod:`converter.rules.ops` build tensors out of byte pieces, and
the arithmetic that computed pieces run, on the CPU or a GPU.

Reordering kernels (:func:`stack`, :func:`concat`, :func:`split_even`, :func:`interleave`, ...) return
:class:`~converter.layout.VirtualTensor` s whose pieces are byte ranges of their inputs: no data is read.

>>> from converter.layout import from_file
>>> w1 = from_file("w1", "BF16", (4, 8), "a.safetensors", 100, 64)
>>> w3 = from_file("w3", "BF16", (4, 8), "b.safetensors", 200, 64)
>>> [p.to_dict() for p in concat([w1, w3], 0, "gate_up").pieces]
[{'file': 'a.safetensors', 'offset': 100, 'length': 64}, {'file': 'b.safetensors', 'offset': 200, 'length': 64}]

Arithmetic kernels (:func:`transpose`, :func:`cast`, :func:`fp8_dequantize`, :func:`mxfp4_dequantize`) return a
:class:`~converter.layout.Computed` tensor: ``compute(read, start, stop, device)`` gives bytes ``[start, stop)``
of the result, one expert (or block row) at a time, on the device the executor resolved with
:func:`resolve_device`. torch is imported only there, so byte-copy plans never import it. Every kernel is exact
or IEEE round-to-nearest-even, so the bytes are the same on any device.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ExpertMismatchError, ShapeError, UnsupportedError
from .layout import (
    ComputeFn,
    Piece,
    ReadInput,
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
    }[dtype]


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


# --- arithmetic (computed pieces, one slice at a time) ------------------------------------------------------------


def sliced_compute(
    in_dtype: str,
    in_shape: tuple[int, ...],
    out_dtype: str,
    out_shape: tuple[int, ...],
    fn: Callable[[Any], Any],
    *,
    per_slice: bool,
) -> tuple[ComputeFn, int]:
    """Evaluate ``fn`` one dim-0 slice at a time (``per_slice``) or on the whole tensor; cache the last slice.
    Returns the compute function and the bytes of one output slice."""
    if per_slice and len(in_shape) >= 1 and in_shape[0] > 0:
        n = in_shape[0]
        in_slice_shape, out_slice_shape = in_shape[1:], out_shape[1:]
    else:
        n = 1
        in_slice_shape, out_slice_shape = in_shape, out_shape
    in_sz = dtype_nbytes(in_dtype, in_slice_shape)
    out_sz = dtype_nbytes(out_dtype, out_slice_shape)
    cache: dict[int, bytes] = {}

    def compute(read: ReadInput, start: int, stop: int, device: str) -> bytes:
        parts = []
        first, last = start // out_sz, (stop - 1) // out_sz
        for i in range(first, min(last, n - 1) + 1):
            if i not in cache:
                cache.clear()
                x = to_tensor(read(0, i * in_sz, (i + 1) * in_sz), in_dtype, in_slice_shape, device)
                cache[i] = to_bytes(fn(x))
            b = cache[i]
            lo = max(start - i * out_sz, 0)
            hi = min(stop - i * out_sz, out_sz)
            parts.append(b[lo:hi])
        return b"".join(parts)

    return compute, out_sz


def transpose(t: VirtualTensor, dim0: int, dim1: int, key: str) -> VirtualTensor:
    """``t.transpose(dim0, dim1).contiguous()``: computed one expert at a time when neither dim is 0."""
    nd = len(t.shape)
    a, b = norm_dim(dim0, nd, key), norm_dim(dim1, nd, key)
    if a == b:
        return t
    shape = list(t.shape)
    shape[a], shape[b] = shape[b], shape[a]
    out_shape = tuple(shape)
    if t.shape[a] == 1 or t.shape[b] == 1:  # moving a size-1 dim does not move any byte
        return VirtualTensor(t.dtype, out_shape, t.pieces, t.origins)
    per_slice = 0 not in (a, b) and nd >= 3
    off = 1 if per_slice else 0
    compute, slice_sz = sliced_compute(
        t.dtype, t.shape, t.dtype, out_shape, lambda x: x.transpose(a - off, b - off), per_slice=per_slice
    )
    desc = {"op": "transpose", "dim0": a, "dim1": b}
    return computed_tensor(t.dtype, out_shape, [t], compute, desc, slice_sz)


#: elements per computed cast slice: bounded memory whatever the tensor size
CAST_CHUNK_ELEMENTS = 4 * 1024 * 1024


def cast(t: VirtualTensor, dtype: str) -> VirtualTensor:
    """``t.to(dtype)`` (round to nearest even), computed in slices of :data:`CAST_CHUNK_ELEMENTS`; ``t`` itself
    when it already has that dtype."""
    if t.dtype == dtype:
        return t
    numel = math.prod(t.shape)
    in_item, out_item = DTYPE_BITS[t.dtype] // 8, DTYPE_BITS[dtype] // 8
    chunk = CAST_CHUNK_ELEMENTS

    def compute(read: ReadInput, start: int, stop: int, device: str) -> bytes:
        out = []
        e0, e1 = start // out_item, -(-stop // out_item)
        for a in range(e0, e1, chunk):
            b = min(a + chunk, e1, numel)
            x = to_tensor(read(0, a * in_item, b * in_item), t.dtype, (b - a,), device)
            out.append(to_bytes(x.to(torch_dtype(dtype))))
        raw = b"".join(out)
        return raw[start - e0 * out_item : start - e0 * out_item + (stop - start)]

    desc = {"op": "cast", "from": t.dtype, "to": dtype}
    return computed_tensor(dtype, t.shape, [t], compute, desc, chunk * out_item)


def fp8_dequantize(weight: VirtualTensor, scale: VirtualTensor, dtype: str, key: str) -> VirtualTensor:
    """transformers' ``Fp8Dequantize``: ``(weight.float() * scale_inv per block).to(dtype)``, the block size
    derived from the scale grid; ``uint8`` scales are E8M0 (``2 ** (s - 127)``), ``int8`` weights packed FP4."""
    if weight.dtype not in ("F8_E4M3", "F8_E5M2", "I8"):
        raise UnsupportedError(f"{key}: cannot dequantize a {weight.dtype} weight as FP8", key=key)
    packed = weight.dtype == "I8"
    rows = weight.shape[-2] if len(weight.shape) >= 2 else 1
    cols = (weight.shape[-1] * (2 if packed else 1)) if weight.shape else 1
    lead = weight.shape[:-2]
    sr, sc = (scale.shape[-2], scale.shape[-1]) if len(scale.shape) >= 2 else (1, 1)
    if rows % sr or cols % sc or math.prod(scale.shape) != math.prod(lead) * sr * sc:
        raise ShapeError(
            f"{key}: weight {list(weight.shape)} does not match its scale grid {list(scale.shape)}", key=key
        )
    bm, bn = rows // sr, cols // sc
    out_shape = (*lead, rows, cols)
    units = math.prod(lead) * sr  # one unit = one block row of one expert
    w_unit = dtype_nbytes(weight.dtype, (bm, weight.shape[-1]))
    s_unit = dtype_nbytes(scale.dtype, (sc,))
    o_unit = dtype_nbytes(dtype, (bm, cols))
    cache: dict[int, bytes] = {}

    def one(read: ReadInput, u: int, device: str) -> bytes:
        import torch

        w = to_tensor(read(0, u * w_unit, (u + 1) * w_unit), weight.dtype, (bm, weight.shape[-1]), device)
        s = to_tensor(read(1, u * s_unit, (u + 1) * s_unit), scale.dtype, (sc,), device)
        wf = unpack_fp4(w) if packed else w.to(torch.float32)
        sf = (s.to(torch.float32) - 127.0).exp2() if scale.dtype == "U8" else s.to(torch.float32)
        q = wf.reshape(bm, sc, bn)
        return to_bytes((q * sf.reshape(1, sc, 1)).to(torch_dtype(dtype)).reshape(bm, cols))

    def compute(read: ReadInput, start: int, stop: int, device: str) -> bytes:
        parts = []
        for u in range(start // o_unit, min((stop - 1) // o_unit, units - 1) + 1):
            if u not in cache:
                cache.clear()
                cache[u] = one(read, u, device)
            lo, hi = max(start - u * o_unit, 0), min(stop - u * o_unit, o_unit)
            parts.append(cache[u][lo:hi])
        return b"".join(parts)

    desc = {"op": "fp8_dequantize", "block": [bm, bn], "to": dtype}
    return computed_tensor(dtype, out_shape, [weight, scale], compute, desc, o_unit)


def mxfp4_dequantize(blocks: VirtualTensor, scales: VirtualTensor, dtype: str, key: str) -> VirtualTensor:
    """transformers' ``Mxfp4Dequantize`` (``convert_moe_packed_tensors``), one expert at a time: ``blocks`` uint8
    ``[E, out, G, 16]`` and ``scales`` uint8 ``[E, out, G]`` -> ``[E, G * 32, out]`` (note the transpose)."""
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
    in_features = g * b * 2

    def fn_expert(blk: Any, sc: Any) -> Any:
        import torch

        lut = torch.tensor(FP4_E2M1, dtype=torch_dtype(dtype), device=blk.device)
        rows = out * g
        blk = blk.to(torch.uint8).reshape(rows, b)
        exp = (sc.to(torch.int32) - 127).reshape(rows, 1)
        sub = torch.empty(rows, b * 2, dtype=torch_dtype(dtype), device=blk.device)
        sub[:, 0::2] = lut[(blk & 0x0F).to(torch.int)]
        sub[:, 1::2] = lut[(blk >> 4).to(torch.int)]
        torch.ldexp(sub, exp, out=sub)
        return sub.reshape(out, g, b * 2).view(out, g * b * 2).transpose(0, 1).contiguous()

    b_unit = dtype_nbytes("U8", (out, g, b))
    s_unit = dtype_nbytes("U8", (out, g))
    o_unit = dtype_nbytes(dtype, (in_features, out))
    cache: dict[int, bytes] = {}

    def compute(read: ReadInput, start: int, stop: int, device: str) -> bytes:
        parts = []
        for i in range(start // o_unit, min((stop - 1) // o_unit, e - 1) + 1):
            if i not in cache:
                cache.clear()
                blk = to_tensor(read(0, i * b_unit, (i + 1) * b_unit), "U8", (out, g, b), device)
                sc = to_tensor(read(1, i * s_unit, (i + 1) * s_unit), "U8", (out, g), device)
                cache[i] = to_bytes(fn_expert(blk, sc))
            lo, hi = max(start - i * o_unit, 0), min(stop - i * o_unit, o_unit)
            parts.append(cache[i][lo:hi])
        return b"".join(parts)

    desc = {"op": "mxfp4_dequantize", "to": dtype}
    return computed_tensor(dtype, (e, in_features, out), [blocks, scales], compute, desc, o_unit)
