"""The planner: rules + a checkpoint's safetensors headers -> every output tensor and where its bytes come from.

Only headers (8 bytes + a few KB of JSON per shard), the index and ``config.json`` are read; no tensor data. Every
problem that would make the output wrong is found here, before any byte is written.

>>> p = plan("Mixtral-8x7B/")                                        # doctest: +SKIP
>>> p.tensors[0].name, p.tensors[0].dtype, p.tensors[0].shape          # doctest: +SKIP
('lm_head.weight', 'BF16', (32000, 4096))
>>> p.is_noop                                                          # doctest: +SKIP
False
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from . import kernels
from .errors import (
    CheckpointError,
    DuplicateExpertError,
    LayoutMismatchError,
    MissingExpertError,
    MissingSourceError,
    ShapeError,
    TargetCollisionError,
    UnconvertedTensorError,
    UnsupportedError,
)
from .layout import Piece, VirtualTensor, from_file
from .naming import output_name, place, route
from .rules import get_entry, rules_for
from .rules.core import Convert, Direction, Rename, Rule, RuleSet, keep_fp32_matches, search
from .rules.describe import described
from .rules.ops import OpContext, Slot
from .rules.quantization import (
    check_fp8_scales_follow,
    dequantize_tensors,
    dequantized_config,
    fp8_renames,
    quantization_of,
)
from .rules.tables import known_model_types, layout, layout_for
from .safetensors_io import DTYPE_ALIASES, FLOAT_DTYPES, CheckpointIndex, parse_size, shard_name
from .storage import Source, open_source

DEFAULT_MAX_SHARD_SIZE = "5GB"
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key where ``experts.2`` < ``experts.10`` (transformers' ``dot_natural_key`` order)."""
    return tuple(int(p) if p.isdigit() else p for p in _DIGITS.split(name))


class How(StrEnum):
    """How an output tensor was made from the source's."""

    COPY = "copy"  #: the source tensor, same name
    RENAME = "rename"  #: the source tensor under another name
    CONVERT = "convert"  #: merged, split or reshaped by a Convert rule (or dequantized)


@dataclass
class PlannedTensor:
    """One output tensor: its name, dtype, shape and the byte pieces (file ranges or computed) that form it."""

    name: str
    tensor: VirtualTensor
    how: How
    rule: int | None = None  # index of the Convert in the RuleSet, if any
    #: also cast to another dtype (``--dtype``)
    cast: bool = False

    @property
    def label(self) -> str:
        """``how``, ``+cast`` when cast, as plans show it: ``"convert+cast"``."""
        return f"{self.how}+cast" if self.cast else str(self.how)

    @property
    def kept(self) -> bool:
        """The source's tensor as it is: same name, same bytes."""
        return self.how == How.COPY and not self.cast

    @property
    def dtype(self) -> str:
        return self.tensor.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.tensor.shape

    @property
    def nbytes(self) -> int:
        return self.tensor.nbytes

    @property
    def sources(self) -> tuple[str, ...]:
        return self.tensor.origins

    @property
    def is_copy(self) -> bool:
        return self.tensor.is_copy

    def to_dict(self, *, pieces: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "nbytes": self.nbytes,
            "how": self.label,
            "sources": list(self.sources),
        }
        if pieces:
            d["pieces"] = [p.to_dict() for p in self.tensor.pieces]
        return d


@dataclass
class PlannedShard:
    file: str
    tensors: list[PlannedTensor]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass
class Plan:
    source: str
    model_type: str
    direction: Direction
    dtype: str | None
    ruleset: RuleSet
    tensors: list[PlannedTensor]
    shards: list[PlannedShard]
    source_index: CheckpointIndex
    config: dict[str, Any] | None = None
    max_shard_size: int = 0
    #: config.json to write instead of copying the source's (a dequantized checkpoint drops quantization_config)
    output_config: dict[str, Any] | None = None
    #: the checkpoint's quantization (``"fp8"``, ``"mxfp4"``) and whether this plan dequantizes it
    quantization: str | None = None
    dequantize: bool = False
    #: the rules that changed a name or merged tensors of this checkpoint, in rule order
    rules_applied: list[Rule] = field(default_factory=list)
    #: the source's other files copied unchanged (config, tokenizer...), and those left out (weights in other
    #: formats or not part of the checkpoint, e.g. ``consolidated.safetensors`` next to HF shards; folders)
    copy_files: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)
    #: what was tolerated but the user should know (an index entry pointing to no tensor, ...)
    warnings: list[str] = field(default_factory=list)

    @property
    def is_noop(self) -> bool:
        """True when the checkpoint is already in the target layout: every tensor kept, same name, same bytes,
        same config (and already safetensors): the output is the source's files, unchanged."""
        return (
            self.output_config is None
            and self.source_index.format == "safetensors"
            and all(t.kept for t in self.tensors)
        )

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def computed_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if not t.is_copy)

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = defaultdict(int)
        for t in self.tensors:
            c[t.how.value] += 1
            if t.cast:
                c["cast"] += 1
        return dict(c)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "model_type": self.model_type,
            "direction": self.direction,
            "dtype": self.dtype,
            "noop": self.is_noop,
            "tensors_in": len(self.source_index.tensors),
            "tensors_out": len(self.tensors),
            "source_shards": len(self.source_index.shards),
            "output_shards": len(self.shards),
            "bytes_in": self.source_index.total_size,
            "bytes_out": self.total_bytes,
            "bytes_computed": self.computed_bytes,
            "counts": self.counts(),
            "quantization": self.quantization,
            "rules_applied": [described(r) for r in self.rules_applied],
            "dequantize": self.dequantize,
            "source_format": self.source_index.format,
            "skipped_files": self.skipped_files,
            "warnings": self.warnings,
        }

    def to_dict(self, *, pieces: bool = True) -> dict[str, Any]:
        return {
            **self.summary(),
            "rules": self.ruleset.to_dict()["rules"],
            "shards": [
                {"file": s.file, "nbytes": s.nbytes, "tensors": [t.to_dict(pieces=pieces) for t in s.tensors]}
                for s in self.shards
            ],
        }


@dataclass
class _Group:
    """Tensors collected for one Convert at one place (prefix/suffix around the matched pattern)."""

    converter: int
    prefix: str
    suffix: str
    # slot index -> list of (expert index or None, original name, tensor)
    slots: dict[int, list[tuple[int | None, str, VirtualTensor]]] = field(
        default_factory=lambda: defaultdict(list)
    )


def _build_slots(g: _Group, conv: Convert) -> list[Slot]:
    slots: list[Slot] = []
    counts: dict[int, int] = {}
    present = next(iter(g.slots.values()))[0][1]
    for si, src in enumerate(conv.sources):
        entries = g.slots.get(si)
        if not entries:
            raise MissingSourceError(
                f"{present} needs a matching {place(g.prefix, src, g.suffix)}, which the checkpoint lacks",
                key=place(g.prefix, src, g.suffix),
            )
        if "*" not in src:
            if len(entries) > 1:
                raise TargetCollisionError(
                    f"{entries[0][1]} and {entries[1][1]} both map to {place(g.prefix, src, g.suffix)}",
                    key=entries[1][1],
                )
            slots.append(entries[0][2])
            continue
        by_index: dict[int, tuple[str, VirtualTensor]] = {}
        for idx, name, vt in entries:
            assert idx is not None
            if idx in by_index:
                raise DuplicateExpertError(
                    f"expert {idx} of {place(g.prefix, src, g.suffix)} appears twice: {by_index[idx][0]} and {name}",
                    key=name,
                )
            by_index[idx] = (name, vt)
        n = max(by_index) + 1
        missing = [i for i in range(n) if i not in by_index]
        if missing:
            raise MissingExpertError(
                f"expert {missing[0]} is missing: no {place(g.prefix, src, g.suffix, missing[0])} "
                f"(found {len(by_index)} experts with indices up to {n - 1})",
                key=place(g.prefix, src, g.suffix, missing[0]),
            )
        counts[si] = n
        slots.append([by_index[i][1] for i in range(n)])
    if len(set(counts.values())) > 1:
        most = max(counts.values())
        si = min(counts, key=lambda k: counts[k])
        src = conv.sources[si]
        raise MissingExpertError(
            f"{place(g.prefix, src, g.suffix)} has {counts[si]} experts but other projections have {most}: "
            f"no {place(g.prefix, src, g.suffix, counts[si])}",
            key=place(g.prefix, src, g.suffix, counts[si]),
        )
    return slots


def source_tensors(index: CheckpointIndex) -> dict[str, VirtualTensor]:
    """Every tensor of ``index`` as a byte range of its shard."""
    return {
        name: from_file(name, t.dtype, t.shape, t.file, t.offset, t.length)
        for name, t in index.tensors.items()
    }


def build_tensors(
    index: CheckpointIndex,
    rules: RuleSet,
    *,
    config: Mapping[str, Any] | None = None,
    dtype: str | None = None,
    tensors: Mapping[str, VirtualTensor] | None = None,
    applied: list[Rule] | None = None,
) -> list[PlannedTensor]:
    """Apply ``rules`` to every tensor of ``index`` (or to ``tensors``, e.g. dequantized ones); returns the
    output tensors in natural name order. ``applied`` receives the rules that changed a name or merged tensors,
    in rule order."""
    inputs = source_tensors(index) if tensors is None else tensors
    rules = rules.bind(inputs)
    outputs: dict[str, PlannedTensor] = {}
    groups: dict[tuple[int, str, str], _Group] = {}
    used: set[int] = set()  # id() of the rules that did something

    def rename(name: str) -> str:
        for r in rules.renames:
            new = r.apply(name)
            if new != name:
                used.add(id(r))
                name = new
        return name

    def add(name: str, vt: VirtualTensor, how: How, rule: int | None = None) -> None:
        if name in outputs:
            a, b = outputs[name].sources, vt.origins
            raise TargetCollisionError(
                f"{a[0] if a else '?'} and {b[0] if b else '?'} both map to output {name}", key=name
            )
        outputs[name] = PlannedTensor(name, vt, how, rule)

    for name in sorted(inputs, key=natural_key):
        vt = inputs[name]
        r = route(rules, name, rename)
        if r.converter is None:
            assert r.output is not None
            add(r.output, vt, (How.COPY if r.output == name else How.RENAME) if vt.is_copy else How.CONVERT)
            continue
        if len(r.stars) > 1:
            raise UnsupportedError(f"{name}: converter patterns with several '*' are not supported", key=name)
        g = groups.setdefault((r.converter, r.prefix, r.suffix), _Group(r.converter, r.prefix, r.suffix))
        g.slots[r.slot].append((r.stars[0] if r.stars else None, name, vt))

    for (ci, prefix, suffix), g in sorted(groups.items(), key=lambda kv: natural_key(kv[0][1] + kv[0][2])):
        conv = rules.converters[ci]
        used.add(id(conv))
        label = place(prefix, conv.targets[0].replace("*", "0"), suffix)
        ctx = OpContext(label, len(conv.targets), config, conv.sources, conv.targets)
        slots = _build_slots(g, conv)
        for op in conv.ops:
            slots = op.apply(slots, ctx)
        if len(slots) != len(conv.targets):
            raise ShapeError(
                f"{label}: ops produced {len(slots)} tensors for {len(conv.targets)} targets", key=label
            )
        for target, slot in zip(conv.targets, slots, strict=True):
            items = list(enumerate(slot)) if isinstance(slot, list) else [(None, slot)]
            for idx, vt in items:
                if (idx is None) != ("*" not in target):
                    raise ShapeError(f"{label}: target {target!r} and op outputs disagree on '*'", key=label)
                out = output_name(rules, prefix, target, suffix, idx, rename)
                add(out, vt, How.COPY if _unchanged(index, out, vt) else How.CONVERT, ci)

    result = [outputs[k] for k in sorted(outputs, key=natural_key)]
    if applied is not None:
        applied.extend(r for r in rules.rules if id(r) in used)
    if dtype is not None:
        result = [_cast(t, dtype, rules) for t in result]
    return result


def _unchanged(index: CheckpointIndex, name: str, vt: VirtualTensor) -> bool:
    """A converter output that is its source as is, same name (``Transpose(check_dims)`` on the target layout)."""
    src = index.tensors.get(name)
    return (
        src is not None
        and (vt.dtype, tuple(vt.shape)) == (src.dtype, tuple(src.shape))
        and vt.pieces == (Piece(src.file, src.offset, src.length),)
    )


def _cast(t: PlannedTensor, dtype: str, rules: RuleSet) -> PlannedTensor:
    """transformers' dtype policy: floats go to ``dtype``, except the params it keeps in float32 (and the scale
    grids of quantized weights, which its quantizers keep as they are)."""
    if t.dtype not in FLOAT_DTYPES or t.name.endswith("_scale_inv"):
        return t
    keep = rules.keep_fp32 + (rules.keep_fp32_for_fp16 if dtype == "F16" else ())
    target = "F32" if dtype in ("BF16", "F16") and keep_fp32_matches(t.name, keep) else dtype
    if target == t.dtype:
        return t
    return replace(t, tensor=kernels.cast(t.tensor, target), cast=True)


def assign_shards(tensors: list[PlannedTensor], max_shard_size: int) -> list[PlannedShard]:
    """Greedy fill in order, as huggingface_hub's ``split_state_dict_into_shards`` (a big tensor gets its own)."""
    groups: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.nbytes > max_shard_size:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    n = len(groups)
    return [PlannedShard(shard_name(i, n), g) for i, g in enumerate(groups)]


def normalize_dtype(dtype: str | None) -> str | None:
    if dtype is None:
        return None
    d = DTYPE_ALIASES.get(dtype.lower(), dtype.upper())
    if d not in ("BF16", "F16", "F32"):
        raise ValueError(f"dtype must be one of bf16, fp16, fp32, not {dtype!r}")
    return d


def resolve_model_type(model_type: str | None, config: Mapping[str, Any] | None, where: str) -> str:
    """The explicit model_type, else ``config.json``'s. An explicit type overrides a config type transformers does
    not know (custom code, e.g. ``minimax_m1`` as ``minimax``); against a known one it must have the same rules."""
    found = config.get("model_type") if config else None
    if model_type is None:
        if not isinstance(found, str) or not found:
            raise CheckpointError(
                f"{where} has no config.json with a model_type; pass --model-type", file=where
            )
        model_type = found
    elif isinstance(found, str) and found and found != model_type and found in known_model_types():
        a, b = get_entry(model_type), get_entry(found)
        if a.rules != b.rules:
            raise CheckpointError(
                f"--model-type {model_type} disagrees with config.json's model_type {found!r}; "
                "omit --model-type to use the config's",
                key=model_type,
                file="config.json",
            )
    entry = get_entry(model_type)
    if entry.unsupported:
        raise UnsupportedError(f"{model_type} cannot be converted: {entry.unsupported}", key=model_type)
    return model_type


def plan(
    source: str | os.PathLike[str] | Source,
    *,
    model_type: str | None = None,
    direction: Direction | str = Direction.FORWARD,
    dtype: str | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    config: Mapping[str, Any] | None = None,
    key_mapping: Mapping[str, str] | None = None,
    add_legacy: bool = True,
    dequantize: bool = False,
    check_layout: bool = True,
) -> Plan:
    """Plan the conversion of the checkpoint at ``source`` from its headers alone.

    ``direction="forward"`` converts the published layout to the one transformers loads; ``"reverse"`` goes back.
    ``dtype`` (``bf16``/``fp16``/``fp32``) casts floats as ``from_pretrained(dtype=...)`` does. A pre-quantized
    checkpoint (FP8, MXFP4: ``quantization_config`` in config.json) stays quantized, its scales merged like its
    weights; ``dequantize=True`` dequantizes it as transformers does (to ``dtype``, else config.json's ``dtype``,
    else bf16). Raises a typed :class:`~converter.errors.ConversionError` naming the tensor for anything that
    would make the output wrong, including names that do not belong to a model of this type
    (:class:`~converter.errors.LayoutMismatchError`; ``check_layout=False`` skips that check, at your own risk).
    """
    direction = Direction(direction)
    src = open_source(source)
    if config is None:
        config = src.read_config()
    mt = resolve_model_type(model_type, config, src.description)
    index = src.read_index()
    d = normalize_dtype(dtype)
    quant = quantization_of(config)
    if dequantize and quant is None:
        raise UnsupportedError("--dequantize: config.json has no quantization_config", file="config.json")
    prepend = fp8_renames(index.tensors) if quant is not None and quant.method == "fp8" else ()
    rules = rules_for(
        mt,
        direction=direction,
        config=config,
        add_legacy=add_legacy,
        key_mapping=key_mapping,
        prepend=prepend,
        fp8_scales=quant is not None and quant.method == "fp8" and not dequantize,
    )
    inputs = source_tensors(index)
    output_config = None
    if quant is not None and dequantize:
        pairing = {n: r for n in inputs if (r := _apply(prepend, n)) != n}
        inputs = dequantize_tensors(inputs, quant, d or _config_dtype(config), names_for_pairing=pairing)
        output_config = dequantized_config(config or {})
    check_dangling(index, rules)
    applied: list[Rule] = []
    tensors = build_tensors(index, rules, config=config, dtype=d, tensors=inputs, applied=applied)
    if quant is not None and quant.method == "fp8" and not dequantize:
        check_fp8_scales_follow(tensors, rules)
    forward = direction == Direction.FORWARD
    model_side = [t.name for t in tensors] if forward else list(index.tensors)
    if check_layout:
        check_model_layout(model_side, mt, src, where="output" if forward else "input", config=config)
    if forward:
        check_nothing_left(tensors, rules)
    warnings = list(index.warnings)
    if forward and (hint := nothing_to_merge(tensors, index.tensors, rules)):
        warnings.append(hint)
    if d is not None:
        output_config = config_with_dtype(output_config or config, d)
    size = parse_size(max_shard_size)
    copy, skipped = src.other_files(index.files)
    return Plan(
        source=src.description,
        model_type=mt,
        direction=direction,
        dtype=d,
        ruleset=rules,
        tensors=tensors,
        shards=assign_shards(tensors, size),
        source_index=index,
        config=dict(config) if config else None,
        max_shard_size=size,
        output_config=output_config,
        quantization=quant.method if quant is not None else None,
        dequantize=bool(quant is not None and dequantize),
        rules_applied=applied,
        copy_files=copy,
        skipped_files=skipped,
        warnings=warnings,
    )


#: names that give away a layout other than the Hugging Face one, and what it is
FOREIGN_LAYOUTS = (
    (
        ("tok_embeddings", "attention.wq", "feed_forward.w1", "attention_norm"),
        "the Mistral/Meta reference-implementation layout (consolidated.safetensors, params.json); convert the "
        "Hugging Face-format repo instead (or transformers' convert_mistral_weights_to_hf / "
        "convert_llama_weights_to_hf first)",
    ),
    (
        ("mm_projector", "vision_tower.vision_tower"),
        "the original LLaVA codebase layout (model.mm_projector); use the llava-hf checkpoint (or transformers' "
        "convert_llava_weights_to_hf first)",
    ),
)


def check_model_layout(
    names: Iterable[str],
    model_type: str,
    source: Source,
    *,
    where: str,
    config: Mapping[str, Any] | None = None,
) -> None:
    """Refuse when tensor names on the model side of a conversion (the output of a forward one, the input of a
    reverse one) are not where a ``model_type`` model keeps weights (:func:`converter.rules.tables.layout_for`:
    every class transformers 5.23 has for the type, sub-models of other types named in ``config``, by the first two
    name components). Names transformers drops on purpose (``_keys_to_ignore_on_load_unexpected``) pass."""
    lay = layout_for(model_type, config) if config else layout(model_type)
    if lay is None:
        return
    bad = [n for n in names if not lay.admits(n) and not lay.ignored(n)]
    if not bad:
        return
    hint = next(
        (what for marks, what in FOREIGN_LAYOUTS if any(m in n for n in bad for m in marks)),
        f"the checkpoint is not a {model_type} checkpoint in the published or the transformers layout "
        "(check --model-type and the source)",
    )
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise LayoutMismatchError(
        f"{len(bad)} {where} tensor name(s) are not where a {model_type} model keeps its weights: {shown}. "
        f"This looks like {hint}",
        key=bad[0],
        file=source.description,
    )


def nothing_to_merge(tensors: Sequence[PlannedTensor], names: Iterable[str], rules: RuleSet) -> str | None:
    """A warning when a type whose rules merge tensors finds neither what they merge nor what they make (llama's
    dense weights under a config that says mixtral): the output is the input, which may be right (a variant
    without such layers) or not (another type's checkpoint), so it is said rather than refused."""
    if not rules.converters or any(t.rule is not None for t in tensors):
        return None
    names = list(names)
    templates = [t for c in rules.converters for t in c.targets]
    if any(search(t, n) is not None for n in names for t in templates):
        return None  # already in the merged layout
    c = rules.converters[0]
    return (
        f"none of the tensors {rules.model_type}'s rules merge (e.g. {c.sources[0]}), nor their merged form "
        f"(e.g. {c.targets[0]}), is in this checkpoint: if it is a {rules.model_type} checkpoint it has no such "
        "layers; if not, check --model-type and config.json"
    )


#: a tensor of one expert: ``...experts.5.w1.weight`` (not ``shared_experts.0``)
PER_EXPERT = re.compile(r"(?:^|\.)experts\.\d+\.")


def check_nothing_left(tensors: Iterable[PlannedTensor], rules: RuleSet) -> None:
    """Refuse a forward plan that leaves tensors a converter of these rules takes (outside the scope its rules
    reach): e.g. per-expert weights of a text model nested under a path no rule covers."""
    tensors = list(tensors)
    left = [
        t.name for t in tensors if t.rule is None and any(c.match_anywhere(t.name) for c in rules.converters)
    ]
    if not left and any("*" in s for c in rules.converters for s in c.sources):
        # The type stacks its experts, so its model layout has no per-expert tensor: one left as it came means the
        # checkpoint is another type's (Mixtral's ``block_sparse_moe.experts.0.w1`` given as qwen3_moe).
        left = [t.name for t in tensors if t.rule is None and PER_EXPERT.search(t.name)]
        if left:
            shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
            raise UnconvertedTensorError(
                f"{len(left)} per-expert tensor(s) would be left as they are although {rules.model_type} stacks its "
                f"experts (its model layout has no per-expert tensor): {shown}. The checkpoint is probably not a "
                f"{rules.model_type} checkpoint (check --model-type and config.json); refusing rather than "
                "publishing a checkpoint transformers would load with these weights missing",
                key=left[0],
            )
    if left:
        shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        raise UnconvertedTensorError(
            f"{len(left)} tensor(s) would be left unconverted although a rule of {rules.model_type} converts "
            f"such tensors elsewhere: {shown}; refusing rather than publishing a half-converted checkpoint",
            key=left[0],
        )


#: safetensors dtype -> the name config.json uses
CONFIG_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def config_with_dtype(config: Mapping[str, Any] | None, dtype: str) -> dict[str, Any] | None:
    """``config`` with its dtype set to ``dtype`` (``dtype``, and ``torch_dtype`` where present, in the config and in
    every nested sub-config that states one), so that ``from_pretrained(out)`` loads in that dtype; None when
    nothing changes (or there is no config)."""
    if config is None:
        return None
    name = CONFIG_DTYPES[dtype]

    def fix(d: Mapping[str, Any], root: bool) -> dict[str, Any]:
        out = {k: fix(v, False) if isinstance(v, Mapping) else v for k, v in d.items()}
        for key in ("dtype", "torch_dtype"):
            stated = key in out and (out[key] is None or isinstance(out[key], str))
            if stated or (root and key == "dtype"):
                out[key] = name
        return out

    new = fix(config, True)
    return None if new == config else new


def check_dangling(index: CheckpointIndex, rules: RuleSet) -> None:
    """An index entry pointing to no tensor is tolerated (a warning), unless a converter needs it: merging the
    experts that exist would silently give a smaller or shifted stack."""
    for name, file in sorted(index.dangling.items(), key=lambda kv: natural_key(kv[0])):
        r = route(rules, name)
        if r.converter is not None:
            target = place(r.prefix, rules.converters[r.converter].targets[0], r.suffix)
            raise MissingExpertError(
                f"{index.index_file} lists {name} in {file}, but no shard holds it; {target} cannot be built "
                "without it",
                key=name,
                file=file,
            )


def _apply(renames: Iterable[Rename], name: str) -> str:
    for r in renames:
        name = r.apply(name)
    return name


def _config_dtype(config: Mapping[str, Any] | None) -> str:
    """The dtype transformers loads a checkpoint in by default: config.json's ``dtype`` (``torch_dtype``), else
    bfloat16."""
    raw = (config or {}).get("dtype") or (config or {}).get("torch_dtype")
    d = DTYPE_ALIASES.get(str(raw).lower()) if raw else None
    return d if d in ("BF16", "F16", "F32") else "BF16"


__all__ = [
    "How",
    "Plan",
    "PlannedShard",
    "PlannedTensor",
    "Piece",
    "assign_shards",
    "build_tensors",
    "natural_key",
    "plan",
]
