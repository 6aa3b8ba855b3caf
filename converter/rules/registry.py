"""The registry: conversion rules per ``model_type``, and how a :class:`RuleSet` is assembled from them.

Family modules (``mixtral.py``, ``qwen2_moe.py``, ...) call :func:`register` / :func:`alias` at import; the
registry is complete once ``converter.rules`` is imported.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UnknownModelTypeError
from .core import Convert, RegexRename, Rename, Rule, RuleSet, applies


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

    @property
    def ops(self) -> list[str]:
        return sorted({op.op_name for r in self.rules if isinstance(r, Convert) for op in r.ops})

    @property
    def requires_tensor_ops(self) -> bool:
        """True when renaming keys is not enough (experts must be stacked, tensors concatenated/transposed...)."""
        return any(isinstance(r, Convert) for r in self.rules)

    def summary(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "family": self.family,
            "alias_of": self.alias_of,
            "renames": sum(not isinstance(r, Convert) for r in self.rules),
            "converters": sum(isinstance(r, Convert) for r in self.rules),
            "ops": self.ops,
            "requires_tensor_merging": self.requires_tensor_ops,
            "supported": self.unsupported is None,
            "unsupported_reason": self.unsupported,
        }


REGISTRY: dict[str, ModelTypeEntry] = {}
#: transformers' ``"legacy"`` renames, appended last when ``add_legacy`` (set by ``legacy.py``)
LEGACY: list[Rename] = []


def register(
    model_type: str,
    rules: Iterable[Rule],
    *,
    family: str,
    keep_fp32: Iterable[str] = (),
    keep_fp32_for_fp16: Iterable[str] = (),
    unsupported: str | None = None,
    notes: str = "",
    alias_of: str | None = None,
) -> ModelTypeEntry:
    if model_type in REGISTRY:
        raise ValueError(f"model_type {model_type!r} registered twice")
    entry = ModelTypeEntry(
        model_type,
        tuple(rules),
        family,
        alias_of,
        tuple(keep_fp32),
        tuple(keep_fp32_for_fp16),
        unsupported,
        notes,
    )
    REGISTRY[model_type] = entry
    return entry


def alias(model_type: str, base: str, **overrides: Any) -> ModelTypeEntry:
    """Register ``model_type`` with ``base``'s rules (transformers' ``_MODEL_TO_CONVERSION_PATTERN``)."""
    b = REGISTRY[base]
    kw: dict[str, Any] = {"family": b.family, "alias_of": base}
    kw.update(overrides)
    return register(model_type, b.rules, **kw)


def model_types() -> list[str]:
    return sorted(REGISTRY)


def get_entry(model_type: str) -> ModelTypeEntry:
    """The registry entry; :class:`UnknownModelTypeError` (with close names) when there is none."""
    entry = REGISTRY.get(model_type)
    if entry is None:
        raise UnknownModelTypeError(
            model_type, difflib.get_close_matches(model_type, REGISTRY, n=5, cutoff=0.6)
        )
    return entry


def build_ruleset(
    model_type: str,
    rules: Iterable[Rule],
    *,
    direction: str = "forward",
    config: Mapping[str, Any] | None = None,
    keep_fp32: Iterable[str] = (),
    keep_fp32_for_fp16: Iterable[str] = (),
) -> RuleSet:
    """Split rules into renames and converters, drop those whose ``when`` excludes ``config``, and invert them
    for ``direction="reverse"``."""
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be 'forward' or 'reverse', not {direction!r}")
    active = [r for r in rules if applies(r, config)]
    renames = [r for r in active if isinstance(r, (Rename, RegexRename))]
    converters = [r for r in active if isinstance(r, Convert)]
    if direction == "reverse":
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
    direction: str = "forward",
    config: Mapping[str, Any] | None = None,
    add_legacy: bool = True,
    key_mapping: Mapping[str, str] | None = None,
) -> RuleSet:
    """The rules that convert a ``model_type`` checkpoint, in application order.

    >>> rs = rules_for("mixtral")
    >>> rs.rename("model.layers.0.block_sparse_moe.gate.weight")
    'model.layers.0.mlp.gate.weight'
    >>> [r.targets for r in rs.converters]
    [('experts.gate_up_proj',), ('experts.down_proj',)]

    ``config`` (a ``config.json`` dict) selects conditional rules (e.g. the vision-tower prefix of CLIP/SigLIP
    towers); ``key_mapping`` adds the caller's own renames first, as ``from_pretrained(key_mapping=...)`` does.
    """
    entry = get_entry(model_type)
    rules: list[Rule] = []
    if key_mapping:
        rules.extend(RegexRename(k, v) for k, v in key_mapping.items())
    rules.extend(entry.rules)
    if add_legacy:
        rules.extend(LEGACY)
    return build_ruleset(
        model_type,
        rules,
        direction=direction,
        config=config,
        keep_fp32=entry.keep_fp32,
        keep_fp32_for_fp16=entry.keep_fp32_for_fp16,
    )
