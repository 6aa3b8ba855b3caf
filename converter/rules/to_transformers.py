r"""Our rules as transformers 5.23's own rule objects (``WeightRenaming``, ``WeightConverter``, ...), the inverse of
:mod:`~converter.rules.from_transformers`; transformers must be installed (it is imported here only).

>>> to_transformers([Rename("block_sparse_moe", "mlp")])[0]                      # doctest: +SKIP
WeightRenaming(source_patterns=['^((?:[^.]+\\.)*?)block_sparse_moe(?=\\.|$)'], target_patterns=['\\1mlp'])

The objects behave like ours under transformers' own consumers (``rename_source_key``, ``convert``, a quantizer's
``update_weight_conversions``): each name template becomes a precise regex (escaped dots, whole components, the
first match), a rename's conditions become look-aheads, a scope becomes transformers' ``scope_prefix``. They are
made for loading (published -> model); transformers' ``reverse_transform`` of a precise regex is not ours.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UnsupportedError
from .core import Convert, RegexRename, Rename, RenameGroup, Rule, compile_template, fill_stars, template_body
from .ops import (
    Chunk,
    Concat,
    Conv3dToLinear,
    ErnieFuseAndSplitTextVisionExperts,
    ErnieSplitAndDecoupleTextVisionExperts,
    Identity,
    Interleave,
    LinearToConv3d,
    Op,
    PermuteForRope,
    Split,
    Stack,
    Transpose,
    Unstack,
)

#: any number of whole name components, fewest first (``model.layers.3.``)
GAP = r"(?:[^.]+\.)*?"
#: one or more whole name components, fewest first
GAP1 = r"(?:[^.]+\.)+?"
#: the end of a name component
END = r"(?=\.|$)"


def component_regex(parts: Sequence[str], *, capture: bool) -> str:
    r"""``["experts", "*", "w1"]`` -> ``experts\.(\d+)\.w1`` (``\d+`` when not ``capture``)."""
    star = r"(\d+)" if capture else r"\d+"
    return r"\.".join(re.escape(p).replace(r"\*", star) for p in parts)


def _parts(template: str) -> list[str]:
    body = template_body(template)
    return body.split(".") if body else []


def guard_regex(template: str) -> str:
    r"""A look-ahead, at the start of a (scoped) name, that fails where ``template`` matches the name:
    ``guard_regex("^model.visual")`` -> ``(?!model\.visual(?=\.|$))``."""
    ct = compile_template(template)
    parts = _parts(template)
    inner = template.lstrip("^").startswith(".")
    trail = END if not template.endswith(".") or template == "." else r"(?=\.)"
    body = component_regex(parts, capture=False)
    if ct.anchored:
        return f"(?!{body}{trail})" if parts else "(?!)"
    return f"(?!{GAP1 if inner else GAP}{body}{trail})"


@dataclass(frozen=True)
class RenameRegex:
    """A rename as one regex and its replacement, for ``re.sub(pattern, replacement, name, count=1)`` and for
    transformers' ``WeightRenaming`` alike (``groups``: how many ``\\N`` the replacement uses)."""

    pattern: str
    replacement: str
    groups: int


def rename_regex(rule: Rename, *, scope: str = "") -> RenameRegex:
    r"""``rule`` (without its scope, unless ``scope`` is given as a literal prefix) as a regex:

    >>> rename_regex(Rename("block_sparse_moe", "mlp"))                           # doctest: +SKIP
    RenameRegex(pattern='^((?:[^.]+\\.)*?)block_sparse_moe(?=\\.|$)', replacement='\\1mlp', groups=1)

    The match starts at the beginning of the name (so transformers' ``str.replace`` of the matched text and
    ``re.sub`` replace the same, first, occurrence); the replacement refers to the text before the match as ``\1``
    and to the ``*`` indices after it. A rule without conditions whose source has indices matches them alone
    instead, so that the replacement needs no ``\1`` for the text before it (transformers substitutes ``\1`` only).
    """
    if rule.index_offset:
        raise UnsupportedError(
            f"rename {rule.source!r}: an index offset is no regex substitution", key=rule.source
        )
    src, tgt = _parts(rule.source), _parts(rule.target)
    anchored = rule.source.startswith("^")
    inner = rule.source.lstrip("^").startswith(".")
    trail = r"(?=\.)" if rule.source.endswith(".") and len(rule.source) > 1 else END
    head = re.escape(scope) + r"\." if scope else ""
    guards = "".join(guard_regex(g) for g in rule._guards)
    n_src = rule.source.count("*")
    if not src:  # "^" -> "^x": add a prefix (to a non-empty name)
        return RenameRegex(f"^{head}{guards}(?=.)", f"{_unescape(head)}{'.'.join(tgt)}.", 0)
    body = component_regex(src, capture=True)
    if anchored:
        stars = [f"\\{i + 1}" for i in range(n_src)]
        out = fill_stars(rule.target, stars)
        if not tgt:  # "^x" -> "^": drop the prefix and the dot after it
            return RenameRegex(f"^{head}{guards}{body}\\.(?=.)", _unescape(head), n_src)
        return RenameRegex(f"^{head}{guards}{body}{trail}", _unescape(head) + out, n_src)
    if not guards and not scope and n_src:
        start = r"(?<=\.)" if inner else r"(?<![^.])"
        stars = [f"\\{i + 1}" for i in range(n_src)]
        return RenameRegex(f"{start}{body}{trail}", fill_stars(rule.target, stars), n_src)
    stars = [f"\\{i + 2}" for i in range(n_src)]
    out = fill_stars(rule.target, stars)
    if not tgt:
        raise UnsupportedError(f"rename {rule.source!r} -> {rule.target!r}: an empty target", key=rule.source)
    gap = GAP1 if inner else GAP
    return RenameRegex(f"^{head}{guards}({gap}){body}{trail}", f"{_unescape(head)}\\1{out}", n_src + 1)


def _unescape(head: str) -> str:
    return head.replace("\\", "")


def converter_source_regex(template: str) -> str:
    r"""A converter's source: ``experts.*.w1.weight`` -> ``(?<![^.])experts\.\d+\.w1\.weight``. It ends with
    the last name part, as transformers' patterns do (transformers adds the ``(?!\w)`` boundary itself, and its
    quantizers recognise a converter of ``.weight`` tensors by that ending)."""
    parts = _parts(template)
    anchored = template.startswith("^")
    inner = template.lstrip("^").startswith(".")
    start = "^" if anchored else r"(?<=\.)" if inner else r"(?<![^.])"
    body = component_regex(parts, capture=False)
    if template.endswith(".") and len(template) > 1:
        return f"{start}{body}(?=\\.)"
    if not re.search(r"[a-zA-Z0-9]$", body):
        return f"{start}{body}{END}"
    return start + body


def transformers_op(op: Op) -> Any:
    """Our op as the transformers op that does the same (``Stack(0)`` -> ``MergeModulelist(dim=0)``)."""
    from transformers import core_model_loading as cml

    if isinstance(op, Stack):
        return cml.MergeModulelist(dim=op.dim)
    if isinstance(op, Unstack):
        return cml.SplitModulelist(dim=op.dim)
    if isinstance(op, Concat):
        return cml.Concatenate(dim=op.dim, num_shards_attribute=op.num_shards_attribute)
    if isinstance(op, Chunk):
        return cml.Chunk(dim=op.dim, num_shards_attribute=op.num_shards_attribute)
    if isinstance(op, Split):  # transformers takes the sizes from the model's parameters
        return cml.Split(dim=op.dim)
    if isinstance(op, Interleave):
        return cml.Interleave(dim=op.dim, inverse=op.inverse_)
    if isinstance(op, Transpose):  # with check_dims, transformers compares with the model's parameter shape
        return cml.Transpose(dim0=op.dim0, dim1=op.dim1, check_dims=op.check_dims)
    if isinstance(op, PermuteForRope):
        names = list(op.permute_layer_names) or None
        return cml.PermuteForRope(
            subconfig_key=op.subconfig_key, permute_layer_names=names, inverse=op.inverse_
        )
    if isinstance(op, ErnieFuseAndSplitTextVisionExperts):
        return cml.ErnieFuseAndSplitTextVisionExperts(stack_dim=op.stack_dim, concat_dim=op.concat_dim)
    if isinstance(op, ErnieSplitAndDecoupleTextVisionExperts):
        return cml.ErnieSplitAndDecoupleTextVisionExperts(stack_dim=op.stack_dim, concat_dim=op.concat_dim)
    if isinstance(op, Conv3dToLinear):
        kernel = tuple(op.kernel_size)
        return cml.Conv3dToLinear(in_channels=op.in_channels, kernel_size=kernel)  # type: ignore[arg-type]
    if isinstance(op, LinearToConv3d):
        kernel = tuple(op.kernel_size)
        return cml.LinearToConv3d(in_channels=op.in_channels, kernel_size=kernel)  # type: ignore[arg-type]
    if isinstance(op, Identity):
        return cml._IdentityOp()
    raise UnsupportedError(f"op {op.op_name} has no transformers counterpart", key=op.op_name)


def _scope(transform: Any, scope: str, base_model_prefix: str | None) -> Any:
    """Restrict ``transform`` to names under ``scope`` as transformers scopes a nested sub-model's rules: with the
    model's ``base_model_prefix`` known, names with or without it match (as transformers allows)."""
    if not scope:
        return transform
    base = base_model_prefix or ""
    if base and (scope == base or scope.startswith(base + ".")):
        transform.scope_prefix = scope.removeprefix(base).removeprefix(".")
        transform.base_model_prefix = base
    else:
        transform.scope_prefix = scope
        transform.base_model_prefix = ""
    return transform


def to_transformers(rules: Iterable[Rule], *, base_model_prefix: str | None = None) -> list[Any]:
    """Our rules as new transformers rule objects, in the same order.

    ``base_model_prefix``: the model's (``"model"``), so that a scoped rule matches names with or without it as
    transformers' own scoped rules do; without it a scoped rule matches its full path only. Raises
    :class:`~converter.errors.UnsupportedError` for an op transformers lacks.
    """
    return [to_transformers_rule(r, base_model_prefix=base_model_prefix) for r in rules]


def to_transformers_rule(rule: Rule, *, base_model_prefix: str | None = None) -> Any:
    """One rule as a transformers rule object; see :func:`to_transformers`."""
    from transformers import core_model_loading as cml

    if isinstance(rule, RegexRename):  # transformers' own semantics already
        return _scope(cml.WeightRenaming(rule.pattern, rule.replacement), rule.scope, base_model_prefix)
    if isinstance(rule, Rename):
        if rule.index_offset:
            if rule.source.count("*") != 1 or rule._guards:
                raise UnsupportedError(f"rename {rule.source!r}: one index to offset", key=rule.source)
            src = _offset_source(rule)
            tgt = fill_stars(rule.target, [r"\1"])
            t = cml.Inkling2IndexOffsetWeightRename(src, tgt, rule.index_offset)
            return _scope(t, rule.scope, base_model_prefix)
        rx = rename_regex(rule)
        # transformers substitutes only \1 in a WeightRenaming; a one-pair GroupWeightRename substitutes every \N
        cls = cml.WeightRenaming if rx.groups <= 1 else cml.GroupWeightRename
        return _scope(cls([rx.pattern], [rx.replacement]), rule.scope, base_model_prefix)
    if isinstance(rule, RenameGroup):
        sources, targets = [], []
        for r in rule.renames:
            if r._guards or r.index_offset:
                raise UnsupportedError(f"rename group member {r.source!r} has conditions", key=r.source)
            parts = _parts(r.source)
            start = "^" if r.source.startswith("^") else r"(?<![^.])"
            sources.append(start + component_regex(parts, capture=True) + END)
            targets.append(fill_stars(r.target, [f"\\{i + 1}" for i in range(r.source.count("*"))]))
        scopes = {r.scope for r in rule.renames}
        if len(scopes) != 1:
            raise UnsupportedError("a rename group over several scopes", key=rule.renames[0].source)
        return _scope(cml.GroupWeightRename(sources, targets), scopes.pop(), base_model_prefix)
    if isinstance(rule, Convert):
        sources = [converter_source_regex(s) for s in rule.sources]
        targets = [template_body(t) for t in rule.targets]
        if any("*" in s for s in targets):
            raise UnsupportedError(f"converter targets with an index: {rule.targets}", key=rule.targets[0])
        ops = [transformers_op(op) for op in rule.ops]
        return _scope(cml.WeightConverter(sources, targets, ops), rule.scope, base_model_prefix)
    raise UnsupportedError(f"cannot express rule {rule!r} for transformers", key=type(rule).__name__)


def _offset_source(rule: Rename) -> str:
    parts = _parts(rule.source)
    start = "^" if rule.source.startswith("^") else r"(?<![^.])"
    return start + component_regex(parts, capture=True) + END


__all__ = [
    "END",
    "GAP",
    "GAP1",
    "RenameRegex",
    "component_regex",
    "converter_source_regex",
    "guard_regex",
    "rename_regex",
    "to_transformers",
    "to_transformers_rule",
    "transformers_op",
]
