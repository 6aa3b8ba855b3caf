"""Tensor ops of conversion rules: one small frozen dataclass each, with ``apply`` and its ``inverse`` side by side.

Ops pass a list of *slots* from one to the next, as transformers' ``WeightConverter`` does with its dict keyed by
source pattern: a slot is one tensor, or a list of tensors (one per expert, ordered by expert index). A converter
starts with one slot per source pattern and must end with one slot per target pattern.

An op is data: its fields are its JSON arguments (``GET /rules`` serialises them), ``inverse`` is the op that
undoes it, and ``apply`` checks its slots and the config, then hands the tensors to :mod:`converter.kernels`,
which works on :class:`~converter.layout.VirtualTensor` s, i.e. on byte pieces, never on data: stacking experts,
concatenating along a leading dim, de-interleaving gate/up rows and permuting q/k rows for RoPE just reorder
pieces. Ops that need arithmetic (transpose, cast, FP8/MXFP4 dequantization) give a computed tensor that the
executor evaluates one expert (or block row) at a time; torch is imported only then.

Every op names its transformers 5.23 counterpart (``transformers_name``) so the registry can be diffed against
``transformers.conversion_mapping``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .. import kernels
from ..errors import ShapeError, UnsupportedError
from ..layout import VirtualTensor

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


# --- byte-reordering ops -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack(Op):
    """Stack each slot's list of per-expert tensors into one tensor with a new ``dim`` (experts first)."""

    dim: int = 0
    transformers_name: ClassVar[str] = "MergeModulelist"

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        return [kernels.stack(s, self.dim, ctx.key) if isinstance(s, list) else s for s in slots]

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
        return [kernels.unstack(_single(s, "unstack", ctx), self.dim, ctx.key) for s in slots]

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
        return [kernels.concat(tensors, self.dim, ctx.key)]

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
            return [kernels.split_even(t, self.dim, n, ctx.key)]
        return list(kernels.split_even(t, self.dim, ctx.n_targets, ctx.key))

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
        return list(kernels.split_sizes(t, self.dim, sizes, ctx.key))

    @property
    def inverse(self) -> Op:
        return Concat(self.dim)

    def describe(self) -> str:
        return f"split dim {self.dim} into sizes {list(self.sizes)}"


@dataclass(frozen=True)
class Interleave(Op):
    """De-interleave rows along ``dim``: ``[g0, u0, g1, u1, ...]`` -> ``[g..., u...]`` (``inverse`` re-interleaves)."""

    dim: int = 0
    inverse_: bool = field(default=False, metadata={"json": "inverse"})
    transformers_name: ClassVar[str] = "Interleave"

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        return [
            kernels.interleave(_single(s, "interleave", ctx), self.dim, self.inverse_, ctx.key) for s in slots
        ]

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
        return [kernels.reshape(_single(s, "reshape", ctx), self.shape, ctx.key) for s in slots]

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
                out.append(kernels.transpose(t, self.dim0, self.dim1, ctx.key))
        return out

    def _needed(self, t: VirtualTensor, ctx: OpContext) -> bool:
        if not self.shape:
            raise UnsupportedError(
                f"{ctx.key}: Transpose(check_dims=True) needs the expected shape from the config", key=ctx.key
            )
        want = [_config_dim(d, ctx.config, ctx) for d in self.shape]
        nd = len(t.shape)
        a, b = kernels.norm_dim(self.dim0, nd, ctx.key), kernels.norm_dim(self.dim1, nd, ctx.key)
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


@dataclass(frozen=True)
class Cast(Op):
    """Convert to another float dtype exactly as ``torch.Tensor.to`` does (round to nearest even)."""

    dtype: str = "BF16"
    byte_exact_copy: ClassVar[bool] = False

    def apply(self, slots: list[Slot], ctx: OpContext) -> list[Slot]:
        return [kernels.cast(_single(s, "cast", ctx), self.dtype) for s in slots]

    def describe(self) -> str:
        return f"cast to {self.dtype}"


# --- ops that reorder rows per head or per expert group ------------------------------------------------------


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
            out.append(kernels.rope_permute(t, n_heads, self.inverse_, ctx.key))
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
                per_target[j].append(kernels.stack(group, self.stack_dim, ctx.key))
        return [ts[0] if len(ts) == 1 else kernels.concat(ts, self.concat_dim, ctx.key) for ts in per_target]

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
        chunks = [
            kernels.split_even(_single(s, "ernie split", ctx), self.concat_dim, n, ctx.key) for s in slots
        ]
        out: list[Slot] = []
        for j in range(n):
            experts: list[VirtualTensor] = []
            for per_source in chunks:
                experts.extend(kernels.unstack(per_source[j], self.stack_dim, ctx.key))
            out.append(experts)
        return out

    @property
    def inverse(self) -> Op:
        return ErnieFuseAndSplitTextVisionExperts(self.stack_dim, self.concat_dim)

    def describe(self) -> str:
        return "split text/vision gate_up into per-expert gate and up"


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
            return [[kernels.fp8_dequantize(a, b, self.dtype, ctx.key) for a, b in zip(w, s, strict=True)]]
        return [kernels.fp8_dequantize(_single(w, "fp8", ctx), _single(s, "fp8", ctx), self.dtype, ctx.key)]

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
        return [kernels.mxfp4_dequantize(blocks, scales, self.dtype, ctx.key)]

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
