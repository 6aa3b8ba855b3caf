"""The registry: conversion rules per ``model_type``, and how a :class:`RuleSet` is assembled from them.

Family modules (``mixtral.py``, ``qwen2_moe.py``, ...) call :func:`register` / :func:`alias` at import. They are
imported lazily: :data:`REGISTRY` and :data:`SUBMODELS` import the family that registers a key (``index.py``) the
first time the key is looked up, so ``rules_for("mixtral")`` imports ``mixtral.py`` and nothing else, a family
whose rules nest another's brings that one in through the same lookups, and listing the keys imports them all.

transformers keys its rules by ``model_type`` *or* by class name; a class's rules apply to that class wherever it
is nested (``LlavaModel`` under ``model``, ``CLIPVisionModel`` under ``model.vision_tower``), scoped to its module
path. Here class-keyed rule sets live in :data:`SUBMODELS` (:func:`register_submodel`), and a model type lists
where they nest (:class:`Nested`); its rules are its own followed by each nested set, scoped to its path.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from ..errors import UnknownModelTypeError, UnsupportedError
from . import index
from .core import (
    Convert,
    Direction,
    RegexRename,
    Rename,
    RenameGroup,
    Rule,
    RuleSet,
    Scope,
    applies,
    config_get,
    scoped,
)
from .legacy import LEGACY
from .tables import auto_class, head_class, known_model_types
from .tables import submodels as table_submodels


@dataclass(frozen=True)
class Nested:
    """A sub-model with rules of its own: the rule set ``key`` (a class name in :data:`SUBMODELS`, or a
    model_type) applied to names under ``path``, when the config meets ``when``."""

    path: str
    key: str
    when: Scope = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "rules_of": self.key}
        if self.when:
            d["when"] = {k: list(v) for k, v in self.when}
        return d


@dataclass(frozen=True)
class SubmodelEntry:
    """Rules transformers keys by class name (``LlavaModel``, ``CLIPVisionModel``, ``DetrForSegmentation``...),
    unscoped: a model type that nests the class scopes them to its module path."""

    key: str
    rules: tuple[Rule, ...]
    family: str
    alias_of: str | None = None


@dataclass(frozen=True)
class ModelTypeEntry:
    """Everything we know about converting one model type."""

    model_type: str
    rules: tuple[Rule, ...]
    family: str
    alias_of: str | None = None
    #: transformers' ``_keep_in_fp32_modules_strict``: kept in float32 under a bf16/fp16 cast
    keep_fp32: tuple[str, ...] = ()
    #: transformers' ``_keep_in_fp32_modules``: kept in float32 only under an fp16 cast
    keep_fp32_for_fp16: tuple[str, ...] = ()
    #: why we refuse to convert this model type (never converted silently wrong); None when supported
    unsupported: str | None = None
    notes: str = ""
    #: its own rules (transformers' entry for this model_type), before the nested sub-models' ones
    root_rules: tuple[Rule, ...] = ()
    submodels: tuple[Nested, ...] = ()
    #: pre-quantized formats this model type's checkpoints are published in besides FP8 (``"mxfp4"``)
    quantized: tuple[str, ...] = ()
    #: the class these rules are composed for when transformers keys its root rules by class (it looks the class
    #: up before the model_type): a checkpoint declaring another class-keyed architecture is refused
    root_class: str | None = None

    @property
    def conversion(self) -> str:
        """``"converts"`` (names change or tensors are merged), ``"none"`` (transformers loads this type's
        checkpoints as they are, with at most its legacy renames), or ``"refused"`` (:attr:`unsupported`)."""
        if self.unsupported is not None:
            return "refused"
        return "converts" if self.rules else "none"

    @property
    def ops(self) -> list[str]:
        return sorted({op.op_name for r in self.rules if isinstance(r, Convert) for op in r.ops})

    @property
    def requires_tensor_ops(self) -> bool:
        """True when renaming keys is not enough (experts must be stacked, tensors concatenated/transposed...)."""
        return any(isinstance(r, Convert) for r in self.rules)

    @property
    def merges_tensors(self) -> bool:
        """True when several source tensors become one (experts stacked, projections concatenated)."""
        return any(
            op.op_name in ("stack", "concat", "ernie_fuse_and_split_text_vision_experts")
            for r in self.rules
            if isinstance(r, Convert)
            for op in r.ops
        )

    def summary(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "conversion": self.conversion,
            "family": self.family,
            "alias_of": self.alias_of,
            "renames": sum(not isinstance(r, Convert) for r in self.rules),
            "converters": sum(isinstance(r, Convert) for r in self.rules),
            "ops": self.ops,
            "requires_tensor_merging": self.requires_tensor_ops,
            "merges_tensors": self.merges_tensors,
            "submodels": [n.to_dict() for n in self.submodels],
            "quantized": self.quantized_support,
            "supported": self.unsupported is None,
            "unsupported_reason": self.unsupported,
        }

    @property
    def quantized_support(self) -> dict[str, list[str]]:
        """Pre-quantized checkpoints this type converts: FP8 block-scaled (any type whose weights are linear
        ``weight`` tensors) kept as is or dequantized; MXFP4 only where published (gpt_oss)."""
        if self.unsupported is not None:
            return {}
        out = {"fp8": ["keep", "dequantize"]}
        if "mxfp4" in self.quantized:
            out["mxfp4"] = ["keep", "dequantize"]
        return out


#: family modules being imported by :func:`load_family`, innermost last (what a ``register`` call belongs to)
_loading: list[str] = []
#: one lazy import at a time: a family's registrations stay attributed to it, and no thread sees half of one
_load_lock = threading.RLock()


def load_family(module: str) -> None:
    """Import the family module ``converter.rules.<module>`` (a no-op once it is imported)."""
    with _load_lock:
        if module in _loading:
            raise RuntimeError(f"family {module} looked up a key of its own before registering it")
        _loading.append(module)
        try:
            importlib.import_module(f"{__package__}.{module}")
        finally:
            _loading.pop()


def load_all() -> None:
    """Import every family module: what listing the registry needs."""
    for module in sorted({*index.MODEL_TYPES, *index.CLASS_KEYS}):
        load_family(module)


E = TypeVar("E")


class LazyTable(Mapping[str, E], Generic[E]):
    """Registry entries by key, filled by family modules as they are imported. Looking a key up imports the family
    that registers it (``where``, from ``index.py``); ``in`` answers from the index alone; iterating or sizing the
    table imports every family."""

    def __init__(self, what: str, where: Mapping[str, tuple[str, ...]]) -> None:
        self.what = what
        self.where = {key: module for module, keys in where.items() for key in keys}
        self.entries: dict[str, E] = {}

    def __getitem__(self, key: str) -> E:
        entry = self.entries.get(key)
        if entry is None and key in self.where:
            load_family(self.where[key])
            entry = self.entries.get(key)
        if entry is None:
            raise KeyError(key)
        return entry

    def __contains__(self, key: object) -> bool:
        return key in self.entries or key in self.where

    def __iter__(self) -> Iterator[str]:
        load_all()
        return iter(self.entries)

    def __len__(self) -> int:
        load_all()
        return len(self.entries)

    def add(self, key: str, entry: E) -> E:
        """Register ``entry``: the key must be new, and listed in ``index.py`` under the family importing it."""
        module = self.where.get(key)
        if module is None:
            raise ValueError(f"{self.what} {key!r} is not listed in converter/rules/index.py")
        if _loading and _loading[-1] != module:
            raise ValueError(
                f"{self.what} {key!r} is registered by {_loading[-1]}.py, index.py says {module}.py"
            )
        if key in self.entries:
            raise ValueError(f"{self.what} {key!r} registered twice")
        self.entries[key] = entry
        return entry


REGISTRY: LazyTable[ModelTypeEntry] = LazyTable("model_type", index.MODEL_TYPES)
#: class-keyed (nested sub-model) rule sets, by transformers' key
SUBMODELS: LazyTable[SubmodelEntry] = LazyTable("sub-model rules", index.CLASS_KEYS)


def register_submodel(
    key: str, rules: Iterable[Rule], *, family: str, alias_of: str | None = None
) -> SubmodelEntry:
    """Rules transformers keys by class name; see :class:`SubmodelEntry`."""
    return SUBMODELS.add(key, SubmodelEntry(key, tuple(rules), family, alias_of))


def submodel_alias(key: str, base: str) -> SubmodelEntry:
    b = SUBMODELS.get(base)
    rules = b.rules if b is not None else REGISTRY[base].root_rules
    return register_submodel(key, rules, family=b.family if b else REGISTRY[base].family, alias_of=base)


def nested_rules(key: str) -> tuple[Rule, ...]:
    """The unscoped rules of a nested sub-model: its class entry, else its model_type's own rules."""
    if key in SUBMODELS:
        return SUBMODELS[key].rules
    if key in REGISTRY:
        return REGISTRY[key].root_rules
    raise KeyError(f"no sub-model rules {key!r}")


def register(
    model_type: str,
    rules: Iterable[Rule],
    *,
    family: str,
    root_class: str | None = None,
    submodels: Iterable[Nested] = (),
    keep_fp32: Iterable[str] = (),
    keep_fp32_for_fp16: Iterable[str] = (),
    unsupported: str | None = None,
    notes: str = "",
    alias_of: str | None = None,
    quantized: Iterable[str] = (),
) -> ModelTypeEntry:
    """Register a model type: its own rules (or, with ``root_class``, that class's rules, as transformers looks a
    root class up before its model_type), then the rules of the sub-models it nests, scoped to their paths."""
    root = tuple(rules)
    nested = tuple(submodels)
    composed = list(
        SUBMODELS[root_class].rules if root_class is not None and root_class in SUBMODELS else root
    )
    for n in nested:
        composed.extend(scoped(n.path, nested_rules(n.key), n.when))
    entry = ModelTypeEntry(
        model_type,
        tuple(composed),
        family,
        alias_of,
        tuple(keep_fp32),
        tuple(keep_fp32_for_fp16),
        unsupported,
        notes,
        root,
        nested,
        tuple(quantized),
        root_class,
    )
    return REGISTRY.add(model_type, entry)


def alias(model_type: str, base: str, **overrides: Any) -> ModelTypeEntry:
    """Register ``model_type`` with ``base``'s rules (transformers' ``_MODEL_TO_CONVERSION_PATTERN``) and, unless
    overridden, its nested sub-models and fp32 lists."""
    b = REGISTRY[base]
    kw: dict[str, Any] = {
        "family": b.family,
        "alias_of": base,
        "submodels": b.submodels,
        "root_class": b.root_class,
        "keep_fp32": b.keep_fp32,
        "keep_fp32_for_fp16": b.keep_fp32_for_fp16,
    }
    kw.update(overrides)
    return register(model_type, b.root_rules, **kw)


def model_types(*, every: bool = False) -> list[str]:
    """The model types with rules of their own; ``every=True``: every type transformers 5.23 knows (those
    without rules need no conversion)."""
    return sorted(set(REGISTRY) | known_model_types()) if every else sorted(REGISTRY)


NO_CONVERSION_NOTE = (
    "transformers loads checkpoints of this type as they are (only its legacy renames apply, e.g. "
    "LayerNorm.gamma -> LayerNorm.weight); nested sub-models named in config.json may still bring rules"
)


@functools.cache
def _plain_entry(model_type: str) -> ModelTypeEntry:
    return ModelTypeEntry(model_type, (), "none", notes=NO_CONVERSION_NOTE)


def get_entry(model_type: str) -> ModelTypeEntry:
    """The registry entry; a type transformers knows without rules of its own gets an entry with none
    (:attr:`ModelTypeEntry.conversion` ``"none"``); :class:`UnknownModelTypeError` (with close names) for a type
    transformers does not know."""
    entry = REGISTRY.get(model_type)
    if entry is not None:
        return entry
    if model_type in known_model_types():
        return _plain_entry(model_type)
    candidates = sorted(set(REGISTRY) | known_model_types())
    raise UnknownModelTypeError(
        model_type, difflib.get_close_matches(model_type, candidates, n=5, cutoff=0.6)
    )


@dataclass(frozen=True)
class NestedRules:
    """A nested sub-model's rules composed in from a config: where it lives, whose rules, the rules (scoped)."""

    path: str
    key: str
    rules: tuple[Rule, ...]
    keep_fp32: tuple[str, ...] = ()
    keep_fp32_for_fp16: tuple[str, ...] = ()


def nested_from_config(entry: ModelTypeEntry, config: Mapping[str, Any] | None) -> list[NestedRules]:
    """The rules of the sub-models that ``config`` nests (``text_config``, ``vision_config``, ... with a
    ``model_type`` of their own), scoped to where each lives, as transformers 5.23 composes them
    (``get_model_conversion_mapping``: every nested ``PreTrainedModel``, its class's rules first, else its
    model_type's; skipped when an ancestor already applies the same class or type). A llava whose
    ``text_config.model_type`` is mixtral gets mixtral's rules under ``model.language_model``. Sub-models this
    type's entry already nests (:attr:`ModelTypeEntry.submodels`) are left as they are; a type without rules of its
    own gets those of every sub-model it nests that has some (a CLIP model's text and vision towers)."""
    if not config:
        return []
    static = {n.path for n in entry.submodels}
    seen: dict[str, list[str]] = {}
    root = entry.root_class or head_class(entry.model_type)
    if root:
        seen.setdefault(root, []).append("")
    if entry.root_class is None:
        seen.setdefault(entry.model_type, []).append("")
    for n in entry.submodels:
        seen.setdefault(n.key, []).append(n.path)
    out: list[NestedRules] = []
    registered = entry.model_type in REGISTRY
    for slot in table_submodels(entry.model_type):
        if slot.path in static:
            continue
        sub = config_get(config, slot.config) if slot.config else None
        named = sub.get("model_type") if isinstance(sub, Mapping) else None
        sub_type = named if isinstance(named, str) and named else slot.model_type
        if not sub_type or (registered and sub_type == slot.model_type):
            continue  # a registered type's own nesting (for its default sub-models) is in its entry already
        if sub_type == slot.model_type:
            cls = slot.class_name
        elif slot.built_by_auto_model and sub_type in known_model_types():
            cls = auto_class(sub_type) or ""  # what AutoModel.from_config builds for the sub-config here
        else:
            cls = ""  # the outer model picks the class itself: only the model_type's rules can apply

        def claimed(ident: str, path: str = slot.path) -> bool:
            return any(p == "" or path.startswith(p + ".") for p in seen.get(ident, ()))

        if cls and claimed(cls):
            continue
        if cls in SUBMODELS:
            rules, key, via_class = SUBMODELS[cls].rules, cls, True
            keep: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        else:
            if claimed(sub_type):
                continue
            sub_entry = REGISTRY.get(sub_type)
            if sub_entry is None:
                continue
            rules, key, via_class = sub_entry.root_rules, sub_type, False
            keep = (sub_entry.keep_fp32, sub_entry.keep_fp32_for_fp16)
        if cls:
            seen.setdefault(cls, []).append(slot.path)
        if not via_class:
            seen.setdefault(sub_type, []).append(slot.path)
        if rules or any(keep):
            out.append(NestedRules(slot.path, key, scoped(slot.path, rules), *keep))
    return out


def check_architecture(entry: ModelTypeEntry, config: Mapping[str, Any] | None) -> None:
    """Refuse a checkpoint whose declared architecture has class-keyed rules other than those composed here:
    transformers would apply that class's rules (e.g. a segmentation head's), which this entry does not know."""
    archs = (config or {}).get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else None
    if isinstance(arch, str) and arch in SUBMODELS and arch != entry.root_class:
        raise UnsupportedError(
            f"{entry.model_type}: architecture {arch} has rules of its own in transformers "
            f"(not composed for this model type; rules here are for "
            f"{entry.root_class or 'its base model'})",
            key=arch,
            file="config.json",
        )


def build_ruleset(
    model_type: str,
    rules: Iterable[Rule],
    *,
    direction: Direction | str = Direction.FORWARD,
    config: Mapping[str, Any] | None = None,
    keep_fp32: Iterable[str] = (),
    keep_fp32_for_fp16: Iterable[str] = (),
) -> RuleSet:
    """Split rules into renames and converters, drop those whose ``when`` excludes ``config``, and invert them
    for ``direction="reverse"``."""
    direction = Direction(direction)
    active = [r for r in rules if applies(r, config)]
    renames = [r for r in active if isinstance(r, (Rename, RenameGroup, RegexRename))]
    converters = [r for r in active if isinstance(r, Convert)]
    if direction == Direction.REVERSE:
        renames = [r.reversed() for r in reversed(renames) if r.reversible]
        converters = [c.reversed() for c in converters]
    return RuleSet(
        model_type,
        direction,
        tuple(renames),
        tuple(converters),
        tuple(keep_fp32),
        tuple(keep_fp32_for_fp16),
    )


def rules_for(
    model_type: str,
    *,
    direction: Direction | str = Direction.FORWARD,
    config: Mapping[str, Any] | None = None,
    add_legacy: bool = True,
    key_mapping: Mapping[str, str] | None = None,
    prepend: Iterable[Rule] = (),
    fp8_scales: bool = False,
) -> RuleSet:
    """The rules that convert a ``model_type`` checkpoint, in application order.

    >>> rs = rules_for("mixtral")
    >>> rs.rename("model.layers.0.block_sparse_moe.gate.weight")
    'model.layers.0.mlp.gate.weight'
    >>> [r.targets for r in rs.converters]
    [('experts.gate_up_proj',), ('experts.down_proj',)]

    ``config`` (a ``config.json`` dict) selects conditional rules (e.g. the vision-tower prefix of CLIP/SigLIP
    towers); ``key_mapping`` adds the caller's own renames first, as ``from_pretrained(key_mapping=...)`` does.
    A quantizer's rules come before everything (``prepend``); ``fp8_scales`` gives each converter of ``.weight``
    tensors a copy that merges the FP8 scale grids the same way (see ``quantization.py``).
    """
    from .quantization import fp8_scale_converters

    entry = get_entry(model_type)
    check_architecture(entry, config)
    nested = nested_from_config(entry, config)
    rules: list[Rule] = list(prepend)
    if key_mapping:
        rules.extend(RegexRename(k, v) for k, v in key_mapping.items())
    own = [*entry.rules, *(r for n in nested for r in n.rules)]
    if fp8_scales:
        model_rules: list[Rule] = []
        for r in own:
            model_rules.extend(fp8_scale_converters([r]) if isinstance(r, Convert) else [r])
        rules.extend(model_rules)
    else:
        rules.extend(own)
    if add_legacy:
        rules.extend(LEGACY)
    rs = build_ruleset(
        model_type,
        rules,
        direction=direction,
        config=config,
        keep_fp32=(*entry.keep_fp32, *(k for n in nested for k in n.keep_fp32)),
        keep_fp32_for_fp16=(*entry.keep_fp32_for_fp16, *(k for n in nested for k in n.keep_fp32_for_fp16)),
    )
    return replace(rs, nested=tuple((n.path, n.key) for n in nested)) if nested else rs
