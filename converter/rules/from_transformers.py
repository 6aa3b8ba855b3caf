"""Translate transformers' conversion rules (``transformers.conversion_mapping``) into ours, for a model type the
registry does not have yet; transformers must be installed (it is imported here only).

>>> from_transformers("mixtral").rules[0]                                 # doctest: +SKIP
Rename(source='block_sparse_moe', target='mlp', ...)

transformers' patterns are regexes matched anywhere (``.`` is any character); ours are precise name templates.
A pattern made of literal name parts (``\\.block_sparse_moe\\.``, ``mlp.experts.*.w1.weight``, ``layers.(\\d+).fc1``)
becomes a template of whole components; any other regex (look-arounds, alternations, partial names) is kept as
a one-way :class:`~converter.rules.core.RegexRename` with transformers' semantics. A converter whose pattern or op
we cannot express is refused with :class:`~converter.errors.UnsupportedError` naming it, never half-translated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..errors import UnknownModelTypeError, UnsupportedError
from .core import Convert, RegexRename, Rename, RenameGroup, Rule, prefix_change
from .ops import (
    Chunk,
    Concat,
    Conv3dToLinear,
    ErnieFuseAndSplitTextVisionExperts,
    ErnieSplitAndDecoupleTextVisionExperts,
    Interleave,
    LinearToConv3d,
    Op,
    PermuteForRope,
    Stack,
    Transpose,
    Unstack,
)
from .registry import ModelTypeEntry

_NAME = re.compile(r"[A-Za-z0-9_*]+")


def template_of(pattern: str, *, target: bool = False) -> str | None:
    """The name template a transformers pattern means, or None when it is not one.

    ``template_of(r"\\.block_sparse_moe\\.")`` -> ``"block_sparse_moe"``; ``template_of("layers.(\\d+).fc1")`` ->
    ``"layers.*.fc1"``; ``template_of(r"(?<!x\\.)norm")`` -> None. Targets use ``\\1`` for the captured index.
    """
    anchored = pattern.startswith("^")
    body = pattern[1:] if anchored else pattern
    body = re.sub(r"\(\?!_\)$", "", body)  # `weight(?!_)`: a whole-name boundary, which templates always have
    body = body.replace(r"\1" if target else r"(\d+)", "*").replace(r"\d+", "*")
    body = body.replace(r"\.", ".")
    # a leading / trailing dot: not the first / last name part (kept on sources, meaningless on targets)
    lead = "." if body.startswith(".") and not anchored and not target else ""
    trail = "." if body.endswith(".") and len(body) > 1 and not target else ""
    body = body.strip(".")
    parts = body.split(".") if body else []
    if not all(_NAME.fullmatch(p) for p in parts):
        return None
    if any("*" in p and p != "*" and not re.fullmatch(r"[A-Za-z0-9_]*\*", p) for p in parts):
        return None
    if not parts and not anchored:
        return None
    return ("^" if anchored else lead) + ".".join(parts) + (trail if parts else "")


def _op(op: Any) -> Op:
    name = type(op).__name__
    if name == "MergeModulelist":
        return Stack(op.dim)
    if name == "SplitModulelist":
        return Unstack(op.dim)
    if name == "Concatenate":
        return Concat(op.dim, op.num_shards_attribute)
    if name == "Chunk":
        return Chunk(op.dim, op.num_shards_attribute)
    if name == "Interleave":
        return Interleave(op.dim, op.inverse)
    if name == "Transpose" and not op.check_dims:
        return Transpose(op.dim0, op.dim1)
    if name == "PermuteForRope":
        return PermuteForRope(op.subconfig_key, tuple(op.permute_layer_names or ()), op.inverse)
    if name == "ErnieFuseAndSplitTextVisionExperts":
        return ErnieFuseAndSplitTextVisionExperts(op.stack_dim, op.concat_dim)
    if name == "ErnieSplitAndDecoupleTextVisionExperts":
        return ErnieSplitAndDecoupleTextVisionExperts(op.stack_dim, op.concat_dim)
    if name == "Conv3dToLinear":
        return Conv3dToLinear(op.in_channels, tuple(op.kernel_size))
    if name == "LinearToConv3d":
        return LinearToConv3d(op.in_channels, tuple(op.kernel_size))
    why = {
        "Transpose": "Transpose(check_dims=True) depends on the model's parameter shapes",
        "Split": "Split takes its sizes from the model's parameters",
    }.get(name, "no equivalent op")
    raise UnsupportedError(f"cannot translate transformers op {name}: {why}", key=name)


def translate(transform: Any, *, scope: str = "") -> Rule:
    """One transformers ``WeightTransform`` as our rule, restricted to names under ``scope`` (a module path)."""
    kind = type(transform).__name__
    sources = list(transform._original_source_patterns)
    targets = list(transform._original_target_patterns)
    if kind == "PrefixChange":
        prefix = transform.model_prefix or ""
        if transform.prefix_to_add is not None:
            return prefix_change(prefix, add=transform.prefix_to_add, reversible=False, scope=scope)
        return prefix_change(prefix, remove=transform.prefix_to_remove, reversible=False, scope=scope)
    if kind == "WeightConverter":
        src = [template_of(s) for s in sources]
        tgt = [template_of(t, target=True) for t in targets]
        bad = [p for p, t in zip(sources + targets, src + tgt, strict=True) if t is None]
        if bad:
            raise UnsupportedError(
                f"cannot express converter pattern {bad[0]!r} as a name template", key=bad[0]
            )
        ops = [_op(op) for op in transform.operations]
        return Convert([s for s in src if s], [t for t in tgt if t], ops, scope=scope)
    if kind == "GroupWeightRename":
        members = [_rename(s, t, scope) for s, t in zip(sources, targets, strict=True)]
        if not all(isinstance(m, Rename) for m in members):
            raise UnsupportedError(
                f"cannot express the rename group {sources} as name templates", key=sources[0]
            )
        return RenameGroup([m for m in members if isinstance(m, Rename)])
    if kind in ("WeightRenaming", "Inkling2IndexOffsetWeightRename"):
        if len(sources) != 1:
            raise UnsupportedError(f"a rename with {len(sources)} sources: {sources}", key=sources[0])
        rule = _rename(sources[0], targets[0], scope, getattr(transform, "offset", 0))
        return rule
    raise UnsupportedError(f"cannot translate transformers rule type {kind}", key=kind)


def _inline_group(source: str, target: str) -> tuple[str, str]:
    """``(blocks\\.\\d+)\\.norm_1\\.`` -> ``\1.norm1.`` is ``blocks\\.\\d+\\.norm_1\\.`` -> ``blocks\\.\\d+.norm1.``: a
    captured run of literal name parts is written out on both sides."""
    m = re.search(r"\(((?:[A-Za-z0-9_]|\\\.|\\d\+)+)\)", source)
    if m is None or r"\1" not in target or source.count("(") != 1:
        return source, target
    group = m.group(1)
    return source.replace(m.group(0), group), target.replace(r"\1", group.replace(r"\d+", r"\1"))


def _rename(source: str, target: str, scope: str, offset: int = 0) -> Rename | RegexRename:
    source, target = _inline_group(source, target)
    src, tgt = template_of(source), template_of(target, target=True)
    if src is not None and tgt is not None and src.count("*") == tgt.count("*"):
        if src.startswith("^") and not tgt.startswith("^"):
            tgt = "^" + tgt
        if tgt.startswith("^") and not src.startswith("^"):
            tgt = tgt[1:]
        if offset and "*" not in src:
            raise UnsupportedError(f"an index offset on {source!r}, which captures no index", key=source)
        try:
            return Rename(src, tgt, scope=scope, index_offset=offset)
        except ValueError:
            pass
    if offset:
        raise UnsupportedError(f"cannot express the index-offset rename {source!r} as a template", key=source)
    replacement = target.removeprefix("^").replace(r"\.", ".")
    return RegexRename(source, replacement, scope=scope)


def translate_all(transforms: Iterable[Any], *, scope: str = "") -> tuple[Rule, ...]:
    return tuple(translate(t, scope=scope) for t in transforms)


def transformers_rules(key: str) -> list[Any] | None:
    """transformers' own rule objects for a model_type or class name (a fresh copy), or None."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    return get_checkpoint_conversion_mapping(key)


def from_transformers(model_type: str, *, model: Any = None) -> ModelTypeEntry:
    """Our rules for ``model_type``, translated from the installed transformers' mapping.

    Without ``model`` only the model type's own entry is translated; with a transformers model (e.g. built on the
    meta device) its nested sub-models' rules come too, scoped to their module paths, as transformers'
    ``get_model_conversion_mapping`` collects them. Raises :class:`UnknownModelTypeError` when transformers has no
    rules for it and :class:`UnsupportedError` naming the pattern or op it cannot translate.
    """
    if model is not None:
        from transformers.conversion_mapping import get_model_conversion_mapping

        rules: list[Rule] = []
        paths = _module_paths(model)
        for t in get_model_conversion_mapping(model, add_legacy=False):
            scope = "" if t.scope_prefix is None else paths.get((t.scope_prefix, t.base_model_prefix), "")
            rules.append(translate(t, scope=scope))
        return ModelTypeEntry(model_type, tuple(rules), "from_transformers", root_rules=tuple(rules))
    found = transformers_rules(model_type)
    if found is None:
        raise UnknownModelTypeError(model_type)
    own = translate_all(found)
    return ModelTypeEntry(model_type, own, "from_transformers", root_rules=own)


def _module_paths(model: Any) -> dict[tuple[str, str | None], str]:
    """(scope_prefix, base_model_prefix) -> the module path transformers scoped the rules of."""
    base = getattr(model, "base_model_prefix", "") or ""
    out: dict[tuple[str, str | None], str] = {}
    for name, _ in model.named_modules():
        if name:
            scope = name.removeprefix(base).removeprefix(".")
            out.setdefault((scope, base), name)
    return out


__all__ = ["from_transformers", "template_of", "transformers_rules", "translate", "translate_all"]
