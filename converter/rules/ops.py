"""Tensor ops of conversion rules: one small frozen dataclass each, with ``apply`` and its ``inverse`` side by side.

Ops pass a list of *slots* from one to the next, as transformers' ``WeightConverter`` does with its dict keyed by
source pattern: a slot is one tensor, or a list of tensors (one per expert, ordered by expert index). A converter
starts with one slot per source pattern and must end with one slot per target pattern.

``apply`` works on :class:`~converter.layout.VirtualTensor` s, i.e. on byte pieces, never on data: stacking
experts, concatenating along a leading dim, de-interleaving gate/up rows and permuting q/k rows for RoPE just
reorder pieces. Ops that need arithmetic (transpose, cast, FP8/MXFP4 dequantization) return a
:class:`~converter.layout.Computed` tensor that the executor evaluates one expert (or block row) at a time; torch
is imported only there.

Every op names its transformers 5.23 counterpart (``transformers_name``) so the registry can be diffed against
``transformers.conversion_mapping``.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ..errors import ExpertMismatchError, ShapeError, UnsupportedError
from ..layout import Piece, VirtualTensor, coalesce, computed_tensor, gather_blocks, row_bytes
from ..safetensors_io import DTYPE_BITS, dtype_nbytes

Slot = VirtualTensor | list[VirtualTensor]


class AmbiguousShapeError(ShapeError):
    """A shape-dependent op (``Transpose(check_dims=True)``) cannot tell from the shape what to do (a square case);
    transformers silently keeps the tensor as is, we refuse."""


@dataclass(frozen=True)
class OpContext:
    """What an op may need besides its inputs: the output name (for errors), the number of targets, the config,
    and the converter's source/target patterns (ops that act on some slots only, like PermuteForRope, need them)."""

    key: str
    n_targets: int
    config: Mapping[str, Any] | None = None
    sources: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()


class Op:
    """Base class. Subclasses are frozen dataclasses; their fields are their JSON arguments."""

    transformers_name: ClassVar[str] = ""
    #: True when the op only reorders bytes (no arithmetic); such converters stay pure byte copies.
    byte_exact_copy: ClassVar[bool] = True

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        raise NotImplementedError

    @property
    def inverse(self) -> Op:
        raise NotImplementedError

    def describe(self) -> str:
        return self.op_name

    @property
    def op_name(self) -> str:
        return OP_NAMES[type(self)]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.op_name}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d


# --- helpers -----------------------------------------------------------------------------------------------------


def _single(slot: Slot, op: str, ctx: OpContext) -> VirtualTensor:
    if isinstance(slot, list):
        raise ShapeError(f"{ctx.key}: {op} needs one tensor per slot, got a list of {len(slot)}", key=ctx.key)
    return slot


def _norm_dim(dim: int, ndim: int, ctx: OpContext) -> int:
    d = dim + ndim if dim < 0 else dim
    if not 0 <= d < max(ndim, 1):
        raise ShapeError(f"{ctx.key}: dim {dim} is out of range for a {ndim}-d tensor", key=ctx.key)
    return d


def _outer(shape: tuple[int, ...], dim: int) -> int:
    return math.prod(shape[:dim])


def stack(tensors: list[VirtualTensor], dim: int, ctx: OpContext) -> VirtualTensor:
    """``torch.stack(tensors, dim)`` on pieces. All tensors must agree in shape and dtype."""
    if not tensors:
        raise ShapeError(f"{ctx.key}: nothing to stack", key=ctx.key)
    first = tensors[0]
    for t in tensors[1:]:
        if t.shape != first.shape or t.dtype != first.dtype:
            raise ExpertMismatchError(
                f"{ctx.key}: cannot stack {t.origins[0] if t.origins else '?'} ({t.dtype} {list(t.shape)}) "
                f"with {first.origins[0] if first.origins else '?'} ({first.dtype} {list(first.shape)})",
                key=t.origins[0] if t.origins else ctx.key,
            )
    d = _norm_dim(dim, len(first.shape) + 1, ctx)
    shape = first.shape[:d] + (len(tensors),) + first.shape[d:]
    block = dtype_nbytes(first.dtype, first.shape[d:])
    pieces: list[Piece] = []
    for o in range(_outer(first.shape, d)):
        for t in tensors:
            pieces.extend(t.byte_range(o * block, (o + 1) * block))
    return VirtualTensor(first.dtype, shape, coalesce(pieces), tuple(x for t in tensors for x in t.origins))


def split_even(vt: VirtualTensor, dim: int, n: int, ctx: OpContext) -> list[VirtualTensor]:
    """``torch.chunk(vt, n, dim)`` for a dim that ``n`` divides; pieces only."""
    d = _norm_dim(dim, len(vt.shape), ctx)
    size = vt.shape[d]
    if n <= 0 or size % n:
        raise ShapeError(
            f"{ctx.key}: cannot split dim {dim} of size {size} ({list(vt.shape)}) into {n} equal parts",
            key=ctx.key,
        )
    part = size // n
    row = row_bytes(vt, d)
    full = size * row
    shape = vt.shape[:d] + (part,) + vt.shape[d + 1 :]
    out = []
    for j in range(n):
        ranges = [
            (o * full + j * part * row, o * full + (j + 1) * part * row) for o in range(_outer(vt.shape, d))
        ]
        out.append(VirtualTensor(vt.dtype, shape, gather_blocks(vt, ranges), vt.origins))
    return out


def concat(tensors: list[VirtualTensor], dim: int, ctx: OpContext) -> VirtualTensor:
    """``torch.cat(tensors, dim)`` on pieces."""
    first = tensors[0]
    d = _norm_dim(dim, len(first.shape), ctx)
    for t in tensors[1:]:
        same_rest = len(t.shape) == len(first.shape) and all(
            a == b for i, (a, b) in enumerate(zip(t.shape, first.shape, strict=True)) if i != d
        )
        if t.dtype != first.dtype or not same_rest:
            raise ExpertMismatchError(
                f"{ctx.key}: cannot concatenate {t.dtype} {list(t.shape)} with {first.dtype} {list(first.shape)} "
                f"on dim {dim}",
                key=t.origins[0] if t.origins else ctx.key,
            )
    shape = first.shape[:d] + (sum(t.shape[d] for t in tensors),) + first.shape[d + 1 :]
    pieces: list[Piece] = []
    for o in range(_outer(first.shape, d)):
        for t in tensors:
            block = dtype_nbytes(t.dtype, t.shape[d:])
            pieces.extend(t.byte_range(o * block, (o + 1) * block))
    return VirtualTensor(first.dtype, shape, coalesce(pieces), tuple(x for t in tensors for x in t.origins))


def _config_value(config: Mapping[str, Any] | None, attr: str, ctx: OpContext) -> Any:
    """``config.get_text_config().<attr>`` on a config dict: look in text_config first, then the root.

    A value missing from config.json is an error, never a guess: transformers would use the config class's
    default, which this library does not know."""
    if config is None:
        raise UnsupportedError(f"{ctx.key}: needs config.json to read {attr!r}", key=ctx.key)
    for c in (config.get("text_config"), config):
        if isinstance(c, Mapping) and attr in c:
            return c[attr]
    raise UnsupportedError(f"{ctx.key}: config.json has no {attr!r}", key=ctx.key)


def _config_dim(expr: int | str, config: Mapping[str, Any] | None, ctx: OpContext) -> int | None:
    """A dimension given as an int, ``"*"`` (any), or a product of ints and config attributes
    (``"hidden_size"``, ``"2*moe_intermediate_size"``, ``"num_key_value_heads*head_dim"``)."""
    if isinstance(expr, int):
        return expr
    if expr == "*":
        return None
    n = 1
    for f in expr.split("*"):
        n *= int(f) if f.isdigit() else int(_config_value(config, f, ctx))
    return n


def _permute_rows(t: VirtualTensor, perm: list[int]) -> VirtualTensor:
    """Rows (indices along dim 0) of ``t`` in the order ``perm``: pieces only."""
    row = row_bytes(t, 0)
    return VirtualTensor(
        t.dtype, t.shape, gather_blocks(t, [(k * row, (k + 1) * row) for k in perm]), t.origins
    )


# --- byte-reordering ops -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack(Op):
    """Stack each slot's list of per-expert tensors into one tensor with a new ``dim`` (experts first)."""

    dim: int = 0
    transformers_name: ClassVar[str] = "MergeModulelist"

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        return [stack(s, self.dim, ctx) if isinstance(s, list) else s for s in slots]

    @property
    def inverse(self) -> Op:
        return Unstack(self.dim)

    def describe(self) -> str:
        return f"stack experts on dim {self.dim}"


@dataclass(frozen=True)
class Unstack(Op):
    """Split each slot along ``dim`` into one tensor per index (the ``*`` of the target names)."""

    dim: int = 0
    transformers_name: ClassVar[str] = "SplitModulelist"

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        out: list[Slot] = []
        for s in slots:
            t = _single(s, "unstack", ctx)
            d = _norm_dim(self.dim, len(t.shape), ctx)
            parts = split_even(t, d, t.shape[d], ctx)
            squeezed = [
                VirtualTensor(p.dtype, p.shape[:d] + p.shape[d + 1 :], p.pieces, p.origins) for p in parts
            ]
            out.append(squeezed)
        return out

    @property
    def inverse(self) -> Op:
        return Stack(self.dim)

    def describe(self) -> str:
        return f"split dim {self.dim} into one tensor per expert"


@dataclass(frozen=True)
class Concat(Op):
    """Concatenate all slots, in source-pattern order, along ``dim`` (e.g. gate rows first, then up)."""

    dim: int = 0
    num_shards_attribute: str | None = None
    transformers_name: ClassVar[str] = "Concatenate"

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        tensors: list[VirtualTensor] = []
        for s in slots:
            tensors.extend(s if isinstance(s, list) else [s])
        return [concat(tensors, self.dim, ctx)]

    @property
    def inverse(self) -> Op:
        return Chunk(self.dim, self.num_shards_attribute)

    def describe(self) -> str:
        return f"concatenate on dim {self.dim}"


@dataclass(frozen=True)
class Chunk(Op):
    """Split one tensor along ``dim`` into equal pieces: one per target, or ``config.<num_shards_attribute>``."""

    dim: int = 0
    num_shards_attribute: str | None = None
    transformers_name: ClassVar[str] = "Chunk"

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        if len(slots) != 1:
            raise ShapeError(f"{ctx.key}: chunk takes one tensor, got {len(slots)}", key=ctx.key)
        t = _single(slots[0], "chunk", ctx)
        if self.num_shards_attribute is not None:
            n = int(_config_value(ctx.config, self.num_shards_attribute, ctx))
            return [split_even(t, self.dim, n, ctx)]
        return list(split_even(t, self.dim, ctx.n_targets, ctx))

    @property
    def inverse(self) -> Op:
        return Concat(self.dim, self.num_shards_attribute)

    def describe(self) -> str:
        n = f"config.{self.num_shards_attribute}" if self.num_shards_attribute else "one per target"
        return f"split dim {self.dim} into equal parts ({n})"


@dataclass(frozen=True)
class Split(Op):
    """Split one tensor along ``dim`` into pieces of the given sizes (ints or config expressions such as
    ``"num_key_value_heads*head_dim"``; transformers reads them from the model's parameters)."""

    dim: int = 0
    sizes: tuple[int | str, ...] = ()
    transformers_name: ClassVar[str] = "Split"

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        t = _single(slots[0], "split", ctx)
        if not self.sizes:
            raise UnsupportedError(
                f"{ctx.key}: Split needs the target sizes (transformers reads them from the model)",
                key=ctx.key,
            )
        sizes = [int(_config_dim(s, ctx.config, ctx) or 0) for s in self.sizes]
        d = _norm_dim(self.dim, len(t.shape), ctx)
        if sum(sizes) != t.shape[d]:
            raise ShapeError(
                f"{ctx.key}: sizes {sizes} do not add up to dim {d} of {list(t.shape)}", key=ctx.key
            )
        row = row_bytes(t, d)
        full = t.shape[d] * row
        out: list[Slot] = []
        start = 0
        for s in sizes:
            ranges = [
                (o * full + start * row, o * full + (start + s) * row) for o in range(_outer(t.shape, d))
            ]
            shape = t.shape[:d] + (s,) + t.shape[d + 1 :]
            out.append(VirtualTensor(t.dtype, shape, gather_blocks(t, ranges), t.origins))
            start += s
        return out

    @property
    def inverse(self) -> Op:
        return Concat(self.dim)

    def describe(self) -> str:
        return f"split dim {self.dim} into sizes {list(self.sizes)}"


def _interleave_perm(n: int, inverse: bool) -> list[int]:
    half = n // 2
    if inverse:  # [2, n/2] -> transpose -> [n/2, 2]: out[k] = in[(k % 2) * half + k // 2]
        return [(k % 2) * half + k // 2 for k in range(n)]
    # [n/2, 2] -> transpose -> [2, n/2]: out[k] = in[2 * (k % half) + k // half]
    return [2 * (k % half) + k // half for k in range(n)]


@dataclass(frozen=True)
class Interleave(Op):
    """De-interleave rows along ``dim``: ``[g0, u0, g1, u1, ...]`` -> ``[g..., u...]`` (``inverse`` re-interleaves)."""

    dim: int = 0
    inverse_: bool = field(default=False, metadata={"json": "inverse"})
    transformers_name: ClassVar[str] = "Interleave"

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        out: list[Slot] = []
        for s in slots:
            t = _single(s, "interleave", ctx)
            d = _norm_dim(self.dim, len(t.shape), ctx)
            n = t.shape[d]
            if n % 2:
                raise ShapeError(
                    f"{ctx.key}: cannot de-interleave odd dim {d} of {list(t.shape)}", key=ctx.key
                )
            row = row_bytes(t, d)
            perm = _interleave_perm(n, self.inverse_)
            ranges = [
                (o * n * row + k * row, o * n * row + (k + 1) * row)
                for o in range(_outer(t.shape, d))
                for k in perm
            ]
            out.append(VirtualTensor(t.dtype, t.shape, gather_blocks(t, ranges), t.origins))
        return out

    @property
    def inverse(self) -> Op:
        return Interleave(self.dim, not self.inverse_)

    def describe(self) -> str:
        what = "interleave gate/up rows" if self.inverse_ else "de-interleave gate/up rows"
        return f"{what} on dim {self.dim}"

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op_name, "dim": self.dim, "inverse": self.inverse_}


@dataclass(frozen=True)
class Reshape(Op):
    """View with another shape (same bytes): ``Conv3dToLinear`` / ``LinearToConv3d`` are reshapes."""

    shape: tuple[int, ...] = ()
    transformers_name: ClassVar[str] = ""

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        out: list[Slot] = []
        for s in slots:
            t = _single(s, "reshape", ctx)
            shape = tuple(self.shape)
            if -1 in shape:
                known = math.prod(x for x in shape if x != -1)
                shape = tuple(math.prod(t.shape) // known if x == -1 else x for x in shape)
            if math.prod(shape) != math.prod(t.shape):
                raise ShapeError(
                    f"{ctx.key}: cannot reshape {list(t.shape)} to {list(self.shape)}", key=ctx.key
                )
            out.append(VirtualTensor(t.dtype, shape, t.pieces, t.origins))
        return out

    def describe(self) -> str:
        return f"reshape to {list(self.shape)}"


@dataclass(frozen=True)
class Conv3dToLinear(Op):
    """Flatten a 5-D conv kernel ``[out, in_channels, *kernel_size]`` to a 2-D linear weight (same bytes)."""

    in_channels: int = 3
    kernel_size: tuple[int, ...] = ()
    transformers_name: ClassVar[str] = "Conv3dToLinear"

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        t = _single(slots[0], "conv3d_to_linear", ctx)
        return Reshape((t.shape[0], -1)).apply([t], ctx)

    @property
    def inverse(self) -> Op:
        return LinearToConv3d(self.in_channels, self.kernel_size)

    def describe(self) -> str:
        return "flatten the conv3d kernel to a linear weight"


@dataclass(frozen=True)
class LinearToConv3d(Op):
    in_channels: int = 3
    kernel_size: tuple[int, ...] = ()
    transformers_name: ClassVar[str] = "LinearToConv3d"

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        t = _single(slots[0], "linear_to_conv3d", ctx)
        return Reshape((t.shape[0], self.in_channels, *self.kernel_size)).apply([t], ctx)

    @property
    def inverse(self) -> Op:
        return Conv3dToLinear(self.in_channels, self.kernel_size)

    def describe(self) -> str:
        return "unflatten a linear weight into a conv3d kernel"


# --- arithmetic ops (evaluated one slice along dim 0 at a time) ------------------------------------------------


def torch_dtype(dtype: str) -> Any:
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


@functools.lru_cache(maxsize=1)
def compute_device() -> str:
    """Where arithmetic ops (cast, transpose, dequantize) run: ``cuda`` when torch sees a GPU (and
    ``CKPT_CONVERT_DEVICE`` is not ``cpu``), else ``cpu``. Byte copies never get here. Both give the same bytes:
    these ops are exact or IEEE round-to-nearest-even on either."""
    import torch

    wanted = os.environ.get("CKPT_CONVERT_DEVICE", "auto").lower()
    if wanted == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if wanted == "cuda":
        raise UnsupportedError("CKPT_CONVERT_DEVICE=cuda but torch sees no CUDA device")
    return "cpu"


def to_tensor(raw: bytes, dtype: str, shape: tuple[int, ...]) -> Any:
    """Bytes -> a tensor on the compute device."""
    import torch

    if not raw:
        return torch.empty(shape, dtype=torch_dtype(dtype), device=compute_device())
    t = torch.frombuffer(bytearray(raw), dtype=torch_dtype(dtype)).reshape(shape)
    return t if compute_device() == "cpu" else t.to(compute_device(), non_blocking=False)


def to_bytes(t: Any) -> bytes:
    import torch

    return t.contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes()


def sliced_compute(
    in_dtype: str,
    in_shape: tuple[int, ...],
    out_dtype: str,
    out_shape: tuple[int, ...],
    fn: Callable[[Any], Any],
    *,
    per_slice: bool,
) -> tuple[Callable[[Callable[[int, int, int], bytes], int, int], bytes], int]:
    """Evaluate ``fn`` one dim-0 slice at a time (``per_slice``) or on the whole tensor; cache the last slice."""
    if per_slice and len(in_shape) >= 1 and in_shape[0] > 0:
        n = in_shape[0]
        in_slice_shape, out_slice_shape = in_shape[1:], out_shape[1:]
    else:
        n = 1
        in_slice_shape, out_slice_shape = in_shape, out_shape
    in_sz = dtype_nbytes(in_dtype, in_slice_shape)
    out_sz = dtype_nbytes(out_dtype, out_slice_shape)
    cache: dict[int, bytes] = {}

    def compute(read: Callable[[int, int, int], bytes], start: int, stop: int) -> bytes:
        parts = []
        first, last = start // out_sz, (stop - 1) // out_sz
        for i in range(first, min(last, n - 1) + 1):
            if i not in cache:
                cache.clear()
                x = to_tensor(read(0, i * in_sz, (i + 1) * in_sz), in_dtype, in_slice_shape)
                cache[i] = to_bytes(fn(x))
            b = cache[i]
            lo = max(start - i * out_sz, 0)
            hi = min(stop - i * out_sz, out_sz)
            parts.append(b[lo:hi])
        return b"".join(parts)

    return compute, out_sz


@dataclass(frozen=True)
class Transpose(Op):
    """Swap two dims (arithmetic: done one expert at a time).

    ``check_dims``: transformers transposes only when the tensor's shape differs from the model parameter's. Here
    the expected output shape comes from the config (``shape``: ints, ``"*"``, config attributes, ``"2*attr"``):
    a tensor already in that shape is kept, one whose transpose has it is transposed, and a square case (both
    have it, e.g. hidden == 2 * intermediate) is refused rather than guessed.
    """

    dim0: int = 0
    dim1: int = 1
    check_dims: bool = False
    shape: tuple[int | str, ...] = ()
    transformers_name: ClassVar[str] = "Transpose"
    byte_exact_copy: ClassVar[bool] = False

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        out: list[Slot] = []
        for s in slots:
            t = _single(s, "transpose", ctx)
            if self.check_dims and not self._needed(t, ctx):
                out.append(t)
            else:
                out.append(transpose(t, self.dim0, self.dim1, ctx))
        return out

    def _needed(self, t: VirtualTensor, ctx: OpContext) -> bool:
        if not self.shape:
            raise UnsupportedError(
                f"{ctx.key}: Transpose(check_dims=True) needs the expected shape from the config", key=ctx.key
            )
        want = [_config_dim(d, ctx.config, ctx) for d in self.shape]
        nd = len(t.shape)
        a, b = _norm_dim(self.dim0, nd, ctx), _norm_dim(self.dim1, nd, ctx)
        swapped = list(t.shape)
        swapped[a], swapped[b] = swapped[b], swapped[a]

        def fits(shape: list[int]) -> bool:
            return len(shape) == len(want) and all(
                w is None or w == x for w, x in zip(want, shape, strict=True)
            )

        keep, flip = fits(list(t.shape)), fits(swapped)
        if keep and flip:
            raise AmbiguousShapeError(
                f"{ctx.key}: {list(t.shape)} is square in dims {a} and {b}: whether it is stored transposed "
                "cannot be told from its shape (transformers silently keeps it as is)",
                key=ctx.key,
            )
        if not keep and not flip:
            raise ShapeError(
                f"{ctx.key}: {list(t.shape)} fits the expected shape {want} neither as is nor transposed",
                key=ctx.key,
            )
        return flip

    @property
    def inverse(self) -> Op:
        shape = list(self.shape)
        if shape:
            shape[self.dim0], shape[self.dim1] = shape[self.dim1], shape[self.dim0]
        return Transpose(self.dim1, self.dim0, self.check_dims, tuple(shape))

    def describe(self) -> str:
        cond = " when stored the other way (decided from the config)" if self.check_dims else ""
        return f"transpose dims {self.dim0} and {self.dim1}{cond}"


def transpose(t: VirtualTensor, dim0: int, dim1: int, ctx: OpContext) -> VirtualTensor:
    nd = len(t.shape)
    a, b = _norm_dim(dim0, nd, ctx), _norm_dim(dim1, nd, ctx)
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


@dataclass(frozen=True)
class Cast(Op):
    """Convert to another float dtype exactly as ``torch.Tensor.to`` does (round to nearest even)."""

    dtype: str = "BF16"
    byte_exact_copy: ClassVar[bool] = False

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        return [cast(_single(s, "cast", ctx), self.dtype) for s in slots]

    def describe(self) -> str:
        return f"cast to {self.dtype}"


#: elements per computed cast slice: bounded memory whatever the tensor size
CAST_CHUNK_ELEMENTS = 4 * 1024 * 1024


def cast(t: VirtualTensor, dtype: str) -> VirtualTensor:
    if t.dtype == dtype:
        return t
    numel = math.prod(t.shape)
    in_item, out_item = DTYPE_BITS[t.dtype] // 8, DTYPE_BITS[dtype] // 8
    chunk = CAST_CHUNK_ELEMENTS

    def compute(read: Callable[[int, int, int], bytes], start: int, stop: int) -> bytes:

        out = []
        e0, e1 = start // out_item, -(-stop // out_item)
        for a in range(e0, e1, chunk):
            b = min(a + chunk, e1, numel)
            x = to_tensor(read(0, a * in_item, b * in_item), t.dtype, (b - a,))
            out.append(to_bytes(x.to(torch_dtype(dtype))))
        raw = b"".join(out)
        return raw[start - e0 * out_item : start - e0 * out_item + (stop - start)]

    desc = {"op": "cast", "from": t.dtype, "to": dtype}
    return computed_tensor(dtype, t.shape, [t], compute, desc, chunk * out_item)


# --- ops that reorder rows per head or per expert group ------------------------------------------------------


def _rope_perm(n: int, n_heads: int, inverse: bool) -> list[int]:
    """Row order of transformers' ``PermuteForRope``: per head, ``[half, 2] -> [2, half]`` (interleaved RoPE pairs
    to rotate-half); ``inverse`` goes back."""
    if n_heads <= 0 or n % (2 * n_heads):
        raise ValueError(f"{n} rows do not split into {n_heads} heads of even size")
    per = n // n_heads
    half = per // 2
    perm = []
    for h in range(n_heads):
        base = h * per
        for k in range(per):
            j, i = (k % 2, k // 2) if inverse else (k // half, k % half)
            perm.append(base + (j * half + i if inverse else i * 2 + j))
    return perm


@dataclass(frozen=True)
class PermuteForRope(Op):
    """Per head, reorder q/k rows from interleaved RoPE pairs to the rotate-half layout (``inverse`` undoes it).

    ``num_attention_heads`` is read from ``config[subconfig_key]`` (or the root config); only slots whose pattern
    contains one of ``permute_layer_names`` are permuted (all when it is empty). A row permutation: pieces only.
    """

    subconfig_key: str | None = None
    permute_layer_names: tuple[str, ...] = ()
    inverse_: bool = False
    transformers_name: ClassVar[str] = "PermuteForRope"

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        if len(slots) == len(ctx.targets) and len(ctx.targets) > 1:
            names = ctx.targets  # after a Chunk: one slot per target
        elif len(slots) == len(ctx.sources):
            names = ctx.sources
        else:
            raise ShapeError(f"{ctx.key}: PermuteForRope cannot tell which slot is which", key=ctx.key)
        n_heads = self._heads(ctx)
        out: list[Slot] = []
        for name, s in zip(names, slots, strict=True):
            t = _single(s, "permute_for_rope", ctx)
            if self.permute_layer_names and not any(n in name for n in self.permute_layer_names):
                out.append(t)
                continue
            try:
                perm = _rope_perm(t.shape[0], n_heads, self.inverse_)
            except ValueError as e:
                raise ShapeError(f"{ctx.key}: {e}", key=ctx.key) from None
            out.append(_permute_rows(t, perm))
        return out

    def _heads(self, ctx: OpContext) -> int:
        config = ctx.config
        if config is None:
            raise UnsupportedError(f"{ctx.key}: needs config.json to read num_attention_heads", key=ctx.key)
        sub = config.get(self.subconfig_key) if self.subconfig_key else None
        where = sub if isinstance(sub, Mapping) else config
        if "num_attention_heads" not in where:
            path = f"{self.subconfig_key}." if where is sub else ""
            raise UnsupportedError(
                f"{ctx.key}: config.json has no {path}num_attention_heads (transformers would use its default)",
                key=ctx.key,
            )
        return int(where["num_attention_heads"])

    @property
    def inverse(self) -> Op:
        return PermuteForRope(self.subconfig_key, self.permute_layer_names, not self.inverse_)

    def describe(self) -> str:
        return "permute q/k rows per head from interleaved to rotate-half RoPE" + (
            " (inverse)" if self.inverse_ else ""
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op_name,
            "subconfig_key": self.subconfig_key,
            "permute_layer_names": list(self.permute_layer_names),
            "inverse": self.inverse_,
        }


@dataclass(frozen=True)
class ErnieFuseAndSplitTextVisionExperts(Op):
    """Ernie-4.5-VL: each source's expert list is split into one equal run per target (text experts, then vision
    experts), each run stacked on ``stack_dim``, then the sources (gate, up) concatenated on ``concat_dim``."""

    stack_dim: int = 0
    concat_dim: int = 1
    transformers_name: ClassVar[str] = "ErnieFuseAndSplitTextVisionExperts"

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        n = ctx.n_targets
        per_target: list[list[VirtualTensor]] = [[] for _ in range(n)]
        for s in slots:
            experts = s if isinstance(s, list) else [s]
            size = math.ceil(len(experts) / n)  # transformers' "best effort" split
            for j in range(n):
                group = experts[j * size : (j + 1) * size]
                if not group:
                    raise ShapeError(
                        f"{ctx.key}: {len(experts)} experts leave none for target {j} of {n}", key=ctx.key
                    )
                per_target[j].append(stack(group, self.stack_dim, ctx))
        return [ts[0] if len(ts) == 1 else concat(ts, self.concat_dim, ctx) for ts in per_target]

    @property
    def inverse(self) -> Op:
        return ErnieSplitAndDecoupleTextVisionExperts(self.stack_dim, self.concat_dim)

    def describe(self) -> str:
        return "split experts into text/vision runs, stack each, concatenate gate and up"


@dataclass(frozen=True)
class ErnieSplitAndDecoupleTextVisionExperts(Op):
    """Inverse of :class:`ErnieFuseAndSplitTextVisionExperts`: each fused tensor is chunked into one piece per
    target on ``concat_dim``, unstacked on ``stack_dim``, and each target gets the experts of all sources in order."""

    stack_dim: int = 0
    concat_dim: int = 1
    transformers_name: ClassVar[str] = "ErnieSplitAndDecoupleTextVisionExperts"

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        n = ctx.n_targets
        chunks = [split_even(_single(s, "ernie split", ctx), self.concat_dim, n, ctx) for s in slots]
        out: list[Slot] = []
        for j in range(n):
            experts: list[VirtualTensor] = []
            for per_source in chunks:
                unstacked = Unstack(self.stack_dim).apply([per_source[j]], ctx)[0]
                assert isinstance(unstacked, list)
                experts.extend(unstacked)
            out.append(experts)
        return out

    @property
    def inverse(self) -> Op:
        return ErnieFuseAndSplitTextVisionExperts(self.stack_dim, self.concat_dim)

    def describe(self) -> str:
        return "split text/vision gate_up into per-expert gate and up"


# --- dequantization (arithmetic, one block row / one expert at a time) -----------------------------------------


def fp8_dequantize(weight: VirtualTensor, scale: VirtualTensor, dtype: str, ctx: OpContext) -> VirtualTensor:
    """transformers' ``Fp8Dequantize``: ``(weight.float() * scale_inv per block).to(dtype)``, the block size
    derived from the scale grid; ``uint8`` scales are E8M0 (``2 ** (s - 127)``), ``int8`` weights packed FP4."""
    if weight.dtype not in ("F8_E4M3", "F8_E5M2", "I8"):
        raise UnsupportedError(f"{ctx.key}: cannot dequantize a {weight.dtype} weight as FP8", key=ctx.key)
    packed = weight.dtype == "I8"
    rows = weight.shape[-2] if len(weight.shape) >= 2 else 1
    cols = (weight.shape[-1] * (2 if packed else 1)) if weight.shape else 1
    lead = weight.shape[:-2]
    sr, sc = (scale.shape[-2], scale.shape[-1]) if len(scale.shape) >= 2 else (1, 1)
    if rows % sr or cols % sc or math.prod(scale.shape) != math.prod(lead) * sr * sc:
        raise ShapeError(
            f"{ctx.key}: weight {list(weight.shape)} does not match its scale grid {list(scale.shape)}",
            key=ctx.key,
        )
    bm, bn = rows // sr, cols // sc
    out_shape = (*lead, rows, cols)
    units = math.prod(lead) * sr  # one unit = one block row of one expert
    w_unit = dtype_nbytes(weight.dtype, (bm, weight.shape[-1]))
    s_unit = dtype_nbytes(scale.dtype, (sc,))
    o_unit = dtype_nbytes(dtype, (bm, cols))
    cache: dict[int, bytes] = {}

    def one(read: Callable[[int, int, int], bytes], u: int) -> bytes:
        import torch

        w = to_tensor(read(0, u * w_unit, (u + 1) * w_unit), weight.dtype, (bm, weight.shape[-1]))
        s = to_tensor(read(1, u * s_unit, (u + 1) * s_unit), scale.dtype, (sc,))
        wf = _unpack_fp4(w) if packed else w.to(torch.float32)
        sf = (s.to(torch.float32) - 127.0).exp2() if scale.dtype == "U8" else s.to(torch.float32)
        q = wf.reshape(bm, sc, bn)
        return to_bytes((q * sf.reshape(1, sc, 1)).to(torch_dtype(dtype)).reshape(bm, cols))

    def compute(read: Callable[[int, int, int], bytes], start: int, stop: int) -> bytes:
        parts = []
        for u in range(start // o_unit, min((stop - 1) // o_unit, units - 1) + 1):
            if u not in cache:
                cache.clear()
                cache[u] = one(read, u)
            lo, hi = max(start - u * o_unit, 0), min(stop - u * o_unit, o_unit)
            parts.append(cache[u][lo:hi])
        return b"".join(parts)

    desc = {"op": "fp8_dequantize", "block": [bm, bn], "to": dtype}
    return computed_tensor(dtype, out_shape, [weight, scale], compute, desc, o_unit)


FP4_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def _unpack_fp4(packed: Any) -> Any:
    """Two e2m1 values per byte (low nibble first) -> float32, twice as wide on the last dim."""
    import torch

    lut = torch.tensor(FP4_E2M1, dtype=torch.float32, device=packed.device)
    u8 = packed.contiguous().view(torch.uint8)
    both = torch.stack([lut[(u8 & 0xF).long()], lut[((u8 >> 4) & 0xF).long()]], dim=-1)
    return both.reshape(*packed.shape[:-1], 2 * packed.shape[-1])


def mxfp4_dequantize(
    blocks: VirtualTensor, scales: VirtualTensor, dtype: str, ctx: OpContext
) -> VirtualTensor:
    """transformers' ``Mxfp4Dequantize`` (``convert_moe_packed_tensors``), one expert at a time: ``blocks`` uint8
    ``[E, out, G, 16]`` and ``scales`` uint8 ``[E, out, G]`` -> ``[E, G * 32, out]`` (note the transpose)."""
    if blocks.dtype != "U8" or scales.dtype != "U8" or len(blocks.shape) != 4:
        raise UnsupportedError(
            f"{ctx.key}: MXFP4 needs uint8 blocks [E, out, G, 16] and scales, got {blocks.dtype} "
            f"{list(blocks.shape)} and {scales.dtype} {list(scales.shape)}",
            key=ctx.key,
        )
    e, out, g, b = blocks.shape
    if tuple(scales.shape) != (e, out, g):
        raise ShapeError(
            f"{ctx.key}: scales {list(scales.shape)} do not match blocks {list(blocks.shape)}", key=ctx.key
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

    def compute(read: Callable[[int, int, int], bytes], start: int, stop: int) -> bytes:
        parts = []
        for i in range(start // o_unit, min((stop - 1) // o_unit, e - 1) + 1):
            if i not in cache:
                cache.clear()
                blk = to_tensor(read(0, i * b_unit, (i + 1) * b_unit), "U8", (out, g, b))
                sc = to_tensor(read(1, i * s_unit, (i + 1) * s_unit), "U8", (out, g))
                cache[i] = to_bytes(fn_expert(blk, sc))
            lo, hi = max(start - i * o_unit, 0), min(stop - i * o_unit, o_unit)
            parts.append(cache[i][lo:hi])
        return b"".join(parts)

    desc = {"op": "mxfp4_dequantize", "to": dtype}
    return computed_tensor(dtype, (e, in_features, out), [blocks, scales], compute, desc, o_unit)


@dataclass(frozen=True)
class Fp8Dequantize(Op):
    """Block-scaled FP8: slots ``[weight, weight_scale_inv]`` (tensors or per-expert lists) -> ``[weight]`` in
    ``dtype``, exactly as transformers' ``Fp8Dequantize`` (the block size comes from the scale grid)."""

    dtype: str = "BF16"
    transformers_name: ClassVar[str] = "Fp8Dequantize"
    byte_exact_copy: ClassVar[bool] = False

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        if len(slots) != 2:
            raise ShapeError(f"{ctx.key}: fp8 dequantize takes a weight and its scale", key=ctx.key)
        w, s = slots
        if isinstance(w, list) and isinstance(s, list) and len(w) == len(s):
            return [[fp8_dequantize(a, b, self.dtype, ctx) for a, b in zip(w, s, strict=True)]]
        return [fp8_dequantize(_single(w, "fp8", ctx), _single(s, "fp8", ctx), self.dtype, ctx)]

    @property
    def inverse(self) -> Op:
        return Identity()

    def describe(self) -> str:
        return f"dequantize block-scaled FP8 to {self.dtype}"


@dataclass(frozen=True)
class Mxfp4Dequantize(Op):
    """MXFP4 slots ``[blocks, scales]`` -> ``[E, in, out]`` in ``dtype`` (transformers' ``Mxfp4Dequantize``)."""

    dtype: str = "BF16"
    transformers_name: ClassVar[str] = "Mxfp4Dequantize"
    byte_exact_copy: ClassVar[bool] = False

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        if len(slots) != 2:
            raise ShapeError(f"{ctx.key}: mxfp4 dequantize takes blocks and scales", key=ctx.key)
        blocks, scales = (_single(x, "mxfp4", ctx) for x in slots)
        return [mxfp4_dequantize(blocks, scales, self.dtype, ctx)]

    @property
    def inverse(self) -> Op:
        return Identity()

    def describe(self) -> str:
        return f"dequantize MXFP4 blocks and scales to {self.dtype}"


@dataclass(frozen=True)
class Identity(Op):
    transformers_name: ClassVar[str] = "_IdentityOp"

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        return slots

    @property
    def inverse(self) -> Op:
        return self

    def describe(self) -> str:
        return "pass through"


OP_NAMES: dict[type[Op], str] = {
    Stack: "stack",
    Unstack: "unstack",
    Concat: "concat",
    Chunk: "chunk",
    Split: "split",
    Interleave: "interleave",
    Reshape: "reshape",
    Conv3dToLinear: "conv3d_to_linear",
    LinearToConv3d: "linear_to_conv3d",
    Transpose: "transpose",
    Cast: "cast",
    PermuteForRope: "permute_for_rope",
    ErnieFuseAndSplitTextVisionExperts: "ernie_fuse_and_split_text_vision_experts",
    ErnieSplitAndDecoupleTextVisionExperts: "ernie_split_and_decouple_text_vision_experts",
    Fp8Dequantize: "fp8_dequantize",
    Mxfp4Dequantize: "mxfp4_dequantize",
    Identity: "identity",
}
OPS_BY_NAME = {v: k for k, v in OP_NAMES.items()}


def op_from_dict(d: Mapping[str, Any]) -> Op:
    """Inverse of ``Op.to_dict``: ``op_from_dict({"op": "stack", "dim": 0})`` -> ``Stack(dim=0)``."""
    args = dict(d)
    cls = OPS_BY_NAME.get(args.pop("op", None))
    if cls is None:
        raise ValueError(f"unknown op {d.get('op')!r}")
    if "inverse" in args:
        args["inverse_"] = args.pop("inverse")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
