"""Rule types and name patterns.

A *name template* is a dotted tensor-name fragment that matches whole name components only:

* ``block_sparse_moe`` matches the component ``block_sparse_moe`` anywhere (``model.layers.0.block_sparse_moe.gate``)
  but not ``my_block_sparse_moe``; dots are literal (transformers' ``.`` matches any character);
* ``*`` is one expert index component (``experts.*.w1.weight`` matches ``experts.12.w1.weight``);
* a leading ``^`` anchors at the start of the name (``^language_model`` matches ``language_model.lm_head.weight``
  but not ``model.language_model.x``).

A :class:`Rename` replaces the first match of its source with its target (``*`` indices carried over in order);
renames chain in list order, as in transformers. A :class:`Convert` collects every name matching one of its
sources (after renaming), groups them by what surrounds the match (the layer prefix), and runs its ops to produce
its targets. Both are frozen, JSON-serialisable, and invertible.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .ops import Op, op_from_dict


@dataclass(frozen=True)
class CompiledTemplate:
    template: str
    regex: re.Pattern[str]
    anchored: bool
    n_stars: int


@functools.lru_cache(maxsize=4096)
def compile_template(template: str) -> CompiledTemplate:
    """``compile_template("experts.*.w1.weight").regex.pattern`` -> ``(?:^|(?<=\\.))experts\\.(\\d+)\\.w1\\.weight(?=\\.|$)``."""
    anchored = template.startswith("^")
    body = template[1:] if anchored else template
    parts = body.split(".") if body else []
    if not parts and not anchored:
        raise ValueError("an empty name template must be anchored ('^')")
    if any(p == "" for p in parts):
        raise ValueError(f"name template {template!r} has an empty component")
    rx = r"\.".join(r"(\d+)" if p == "*" else re.escape(p) for p in parts)
    start = "^" if anchored else r"(?:^|(?<=\.))"
    end = r"(?=\.|$)" if parts else ""
    return CompiledTemplate(template, re.compile(start + rx + end), anchored, parts.count("*"))


def template_body(template: str) -> str:
    return template[1:] if template.startswith("^") else template


def fill_stars(template: str, indices: Sequence[str | int]) -> str:
    """``fill_stars("experts.*.w1.weight", [3])`` -> ``experts.3.w1.weight``."""
    out = template_body(template)
    for i in indices:
        out = out.replace("*", str(i), 1)
    return out


@dataclass(frozen=True)
class Rename:
    """Rename the first match of ``source`` to ``target``; skipped when any ``unless`` template matches the name.

    ``reversible=False`` marks one-way fixes (legacy ``LayerNorm.gamma``) that the reverse direction leaves out.
    ``when`` restricts the rule to configs where a dotted config path has one of the given values.
    """

    source: str
    target: str
    unless: tuple[str, ...] = ()
    reversible: bool = True
    when: tuple[tuple[str, tuple[str, ...]], ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        src, tgt = compile_template(self.source), compile_template(self.target)
        if src.n_stars != tgt.n_stars:
            raise ValueError(
                f"rename {self.source!r} -> {self.target!r}: both sides need the same number of '*'"
            )
        for u in self.unless:
            compile_template(u)

    def apply(self, name: str) -> str:
        m = compile_template(self.source).regex.search(name)
        if m is None or any(compile_template(u).regex.search(name) for u in self.unless):
            return name
        before, new, after = name[: m.start()], fill_stars(self.target, m.groups()), name[m.end() :]
        if not new:  # removing a whole prefix: drop the dot that joined it
            if after.startswith("."):
                after = after[1:]
            elif before.endswith("."):
                before = before[:-1]
        elif m.start() == m.end() and after:  # adding a prefix at the very start
            new += "."
        return before + new + after

    def reversed(self) -> Rename:
        """``target -> source``; when the target extends the source, guard against re-applying it."""
        unless: tuple[str, ...] = ()
        if template_body(self.source).startswith(template_body(self.target) + ".") or (
            self.target.startswith("^") and not template_body(self.target)
        ):
            unless = (self.source,)
        return Rename(self.target, self.source, unless, self.reversible, self.when, self.note)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "rename", "source": self.source, "target": self.target}
        if self.unless:
            d["unless"] = list(self.unless)
        if not self.reversible:
            d["reversible"] = False
        if self.when:
            d["when"] = {k: list(v) for k, v in self.when}
        if self.note:
            d["note"] = self.note
        return d


@dataclass(frozen=True)
class RegexRename:
    """A caller's own ``key_mapping`` entry, with transformers' semantics: ``re.sub(pattern, replacement, name,
    count=1)``. One-way (a regex has no general inverse), so the reverse direction leaves it out."""

    pattern: str
    replacement: str
    reversible: bool = False
    when: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        re.compile(self.pattern)

    def apply(self, name: str) -> str:
        return re.sub(self.pattern, self.replacement, name, count=1)

    def reversed(self) -> RegexRename:
        raise ValueError("a regex rename cannot be reversed")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "regex_rename", "pattern": self.pattern, "replacement": self.replacement}


def prefix_change(
    prefix: str, *, add: str | None = None, remove: str | None = None, note: str = ""
) -> Rename:
    """transformers' ``PrefixChange`` on names under ``prefix`` (``""`` = the whole name).

    ``prefix_change("model.vision_tower", remove="vision_model")`` renames ``model.vision_tower.vision_model.x``
    to ``model.vision_tower.x``; ``add=`` does the opposite and never adds twice.
    """
    base = f"^{prefix}." if prefix else "^"
    if remove is not None:
        return Rename(base + remove, f"^{prefix}" if prefix else "^", note=note)
    assert add is not None
    return Rename(f"^{prefix}" if prefix else "^", base + add, unless=(base + add,), note=note)


@dataclass(frozen=True)
class Convert:
    """Collect tensors matching ``sources`` (one slot each; ``*`` = expert index), run ``ops``, name ``targets``.

    ``Convert(["experts.*.w1.weight", "experts.*.w3.weight"], ["experts.gate_up_proj"], [Stack(0), Concat(1)])``
    turns ``...mlp.experts.{0..E-1}.w1/w3.weight`` into ``...mlp.experts.gate_up_proj [E, 2I, H]``.
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    ops: tuple[Op, ...]
    when: tuple[tuple[str, tuple[str, ...]], ...] = ()
    note: str = ""

    def __init__(
        self,
        sources: str | Iterable[str],
        targets: str | Iterable[str],
        ops: Iterable[Op],
        when: tuple[tuple[str, tuple[str, ...]], ...] = (),
        note: str = "",
    ) -> None:
        object.__setattr__(self, "sources", (sources,) if isinstance(sources, str) else tuple(sources))
        object.__setattr__(self, "targets", (targets,) if isinstance(targets, str) else tuple(targets))
        object.__setattr__(self, "ops", tuple(ops))
        object.__setattr__(self, "when", when)
        object.__setattr__(self, "note", note)
        if not self.ops:
            raise ValueError("a Convert needs at least one op (use Rename for a pure rename)")
        for t in self.sources + self.targets:
            compile_template(t)

    def match(self, name: str) -> tuple[int, re.Match[str]] | None:
        """Which source pattern matches ``name`` (first in order) and where."""
        for i, s in enumerate(self.sources):
            m = compile_template(s).regex.search(name)
            if m is not None:
                return i, m
        return None

    @property
    def byte_exact_copy(self) -> bool:
        return all(op.byte_exact_copy for op in self.ops)

    def reversed(self) -> Convert:
        return Convert(
            self.targets, self.sources, [op.inverse for op in reversed(self.ops)], self.when, self.note
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": "convert",
            "sources": list(self.sources),
            "targets": list(self.targets),
            "ops": [op.to_dict() for op in self.ops],
        }
        if self.when:
            d["when"] = {k: list(v) for k, v in self.when}
        if self.note:
            d["note"] = self.note
        return d


Rule = Rename | RegexRename | Convert


def rule_from_dict(d: Mapping[str, Any]) -> Rule:
    """Inverse of ``to_dict`` for both rule kinds."""
    when = tuple((k, tuple(v)) for k, v in (d.get("when") or {}).items())
    if d.get("kind") == "rename":
        return Rename(
            d["source"],
            d["target"],
            tuple(d.get("unless", ())),
            d.get("reversible", True),
            when,
            d.get("note", ""),
        )
    if d.get("kind") == "regex_rename":
        return RegexRename(d["pattern"], d["replacement"])
    if d.get("kind") == "convert":
        return Convert(
            d["sources"], d["targets"], [op_from_dict(o) for o in d["ops"]], when, d.get("note", "")
        )
    raise ValueError(f"unknown rule kind {d.get('kind')!r}")


def config_get(config: Mapping[str, Any] | None, path: str) -> Any:
    cur: Any = config
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def applies(rule: Rule, config: Mapping[str, Any] | None) -> bool:
    """A rule with ``when`` applies if the config is unknown or matches every condition."""
    if not rule.when or config is None:
        return True
    return all(config_get(config, k) in v for k, v in rule.when)


@dataclass(frozen=True)
class RuleSet:
    """The rules for one model type in one direction, in application order.

    Forward (published -> model): every rename in order, then at most one converter per name.
    Reverse (model -> published): at most one (reversed) converter per name, then the reversed renames in reverse
    order, on the converter's outputs too.
    """

    model_type: str
    direction: str  # "forward" | "reverse"
    renames: tuple[Rename | RegexRename, ...]
    converters: tuple[Convert, ...]
    #: names of params transformers keeps in float32 under a bf16/fp16 cast (``_keep_in_fp32_modules_strict``)
    keep_fp32: tuple[str, ...] = ()
    #: params kept in float32 only when casting to fp16 (``_keep_in_fp32_modules``)
    keep_fp32_for_fp16: tuple[str, ...] = ()
    sources: tuple[str, ...] = field(default=())  # where the rules come from, for reports

    def rename(self, name: str) -> str:
        for r in self.renames:
            name = r.apply(name)
        return name

    def find_converter(self, name: str) -> tuple[int, int, re.Match[str]] | None:
        for ci, c in enumerate(self.converters):
            hit = c.match(name)
            if hit is not None:
                return ci, hit[0], hit[1]
        return None

    @property
    def rules(self) -> tuple[Rule, ...]:
        """All rules in the order they are listed (renames first in forward, converters first in reverse)."""
        if self.direction == "forward":
            return (*self.renames, *self.converters)
        return (*self.converters, *self.renames)

    @property
    def requires_tensor_ops(self) -> bool:
        return bool(self.converters)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "direction": self.direction,
            "rules": [r.to_dict() for r in self.rules],
            "keep_fp32": list(self.keep_fp32),
            "keep_fp32_for_fp16": list(self.keep_fp32_for_fp16),
        }


def keep_fp32_matches(name: str, patterns: Iterable[str]) -> bool:
    """Does a (model-layout) name fall under one of transformers' ``_keep_in_fp32_modules`` entries?"""
    return any(compile_template(p).regex.search(name) for p in patterns)
