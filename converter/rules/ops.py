"""Tensor ops of conversion rules: one small frozen dataclass each, with ``apply`` and its ``inverse`` side by side.

Ops pass a list of *slots* from one to the next, as transformers' ``WeightConverter`` does with its dict keyed by
source pattern: a slot is one tensor, or a list of tensors (one per expert, ordered by expert index). A converter
starts with one slot per source pattern and must end with one slot per target pattern.

``apply`` works on :class:`~converter.layout.VirtualTensor` s, i.e. on byte pieces, never on data: stacking
experts and concatenating along a leading dim just reorder pieces. Ops that need arithmetic (transpose, cast)
return a :class:`~converter.layout.Computed` tensor that the executor evaluates one expert at a time.

Every op names its transformers 5.23 counterpart (``transformers_name``) so the registry can be diffed against
``transformers.conversion_mapping``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ..errors import ExpertMismatchError, ShapeError, UnsupportedError
from ..layout import Piece, VirtualTensor, coalesce, computed_tensor, gather_blocks, row_bytes
from ..safetensors_io import DTYPE_BITS, dtype_nbytes

Slot = VirtualTensor | list[VirtualTensor]


@dataclass(frozen=True)
class OpContext:
    """What an op may need besides its inputs: the output name (for errors), the number of targets, the config."""

    key: str
    n_targets: int
    config: Mapping[str, Any] | None = None


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
    """``config.get_text_config().<attr>`` on a config dict: look in text_config first, then the root."""
    if config is None:
        raise UnsupportedError(f"{ctx.key}: needs config.json to read {attr!r}", key=ctx.key)
    for c in (config.get("text_config"), config):
        if isinstance(c, Mapping) and attr in c:
            return c[attr]
    raise UnsupportedError(f"{ctx.key}: config has no {attr!r}", key=ctx.key)


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
    """Split one tensor along ``dim`` into pieces of the given sizes (ints or config attribute names)."""

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
        sizes = [s if isinstance(s, int) else int(_config_value(ctx.config, s, ctx)) for s in self.sizes]
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


def to_tensor(raw: bytes, dtype: str, shape: tuple[int, ...]) -> Any:
    import torch

    if not raw:
        return torch.empty(shape, dtype=torch_dtype(dtype))
    return torch.frombuffer(bytearray(raw), dtype=torch_dtype(dtype)).reshape(shape)


def to_bytes(t: Any) -> bytes:
    import torch

    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


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
    """Swap two dims (arithmetic: done one expert at a time). ``check_dims``: only when the shape needs it."""

    dim0: int = 0
    dim1: int = 1
    check_dims: bool = False
    transformers_name: ClassVar[str] = "Transpose"
    byte_exact_copy: ClassVar[bool] = False

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        if self.check_dims:
            raise UnsupportedError(
                f"{ctx.key}: Transpose(check_dims=True) depends on the model's parameter shape", key=ctx.key
            )
        return [transpose(_single(s, "transpose", ctx), self.dim0, self.dim1, ctx) for s in slots]

    @property
    def inverse(self) -> Op:
        return Transpose(self.dim1, self.dim0, self.check_dims)

    def describe(self) -> str:
        cond = " when the shape differs from the model's" if self.check_dims else ""
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


# --- ops that later issues execute; expressed here so rules can carry them -------------------------------------


@dataclass(frozen=True)
class _NotYetExecutable(Op):
    byte_exact_copy: ClassVar[bool] = False

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        raise UnsupportedError(f"{ctx.key}: op {self.op_name} is not executable yet", key=ctx.key)


@dataclass(frozen=True)
class PermuteForRope(_NotYetExecutable):
    """Per head, reorder rows from interleaved RoPE pairs to rotate-half layout (``inverse`` undoes it)."""

    subconfig_key: str | None = None
    permute_layer_names: tuple[str, ...] = ()
    inverse_: bool = False
    transformers_name: ClassVar[str] = "PermuteForRope"

    @property
    def inverse(self) -> Op:
        return PermuteForRope(self.subconfig_key, self.permute_layer_names, not self.inverse_)

    def describe(self) -> str:
        return "permute q/k rows from interleaved to rotate-half RoPE" + (
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
class ErnieFuseAndSplitTextVisionExperts(_NotYetExecutable):
    """Ernie-4.5-VL: split 2E experts into text and vision halves, stack each, concat gate/up per half."""

    stack_dim: int = 0
    concat_dim: int = 1
    transformers_name: ClassVar[str] = "ErnieFuseAndSplitTextVisionExperts"

    @property
    def inverse(self) -> Op:
        return ErnieSplitAndDecoupleTextVisionExperts(self.stack_dim, self.concat_dim)

    def describe(self) -> str:
        return "split experts into text/vision halves, stack each, concatenate gate and up"


@dataclass(frozen=True)
class ErnieSplitAndDecoupleTextVisionExperts(_NotYetExecutable):
    stack_dim: int = 0
    concat_dim: int = 1
    transformers_name: ClassVar[str] = "ErnieSplitAndDecoupleTextVisionExperts"

    @property
    def inverse(self) -> Op:
        return ErnieFuseAndSplitTextVisionExperts(self.stack_dim, self.concat_dim)

    def describe(self) -> str:
        return "split text/vision gate_up into per-expert gate and up"


@dataclass(frozen=True)
class Fp8Dequantize(_NotYetExecutable):
    """Block-scaled FP8 ``weight * weight_scale_inv`` (block size from the scale grid) to the target dtype."""

    transformers_name: ClassVar[str] = "Fp8Dequantize"

    @property
    def inverse(self) -> Op:
        return Identity()

    def describe(self) -> str:
        return "dequantize block-scaled FP8"


@dataclass(frozen=True)
class Mxfp4Dequantize(_NotYetExecutable):
    """MXFP4 ``_blocks``/``_scales`` to the target dtype, then transpose(1, 2) as transformers does."""

    transformers_name: ClassVar[str] = "Mxfp4Dequantize"

    @property
    def inverse(self) -> Op:
        return Identity()

    def describe(self) -> str:
        return "dequantize MXFP4 blocks and scales"


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
