r"""Rule types and name patterns.

A *name template* is a dotted tensor-name fragment that matches whole name components only:

* ``block_sparse_moe`` matches the component ``block_sparse_moe`` anywhere (``model.layers.0.block_sparse_moe.gate``)
  but not ``my_block_sparse_moe``; dots are literal (transformers' ``.`` matches any character);
* ``*`` is an index: digits (``experts.*.w1.weight`` matches ``experts.12.w1.weight``; ``shard_*`` matches
  ``shard_3``);
* a leading ``^`` anchors at the start of the name (``^language_model`` matches ``language_model.lm_head.weight``
  but not ``model.language_model.x``);
* a leading ``.`` excludes the first component and a trailing ``.`` the last one (transformers' ``\.ln1\.``):
  ``.ln1`` matches ``blocks.0.ln1.weight`` but not ``ln1.weight``.

A rule may be *scoped* to a nested sub-model (transformers' ``scope_prefix``): ``scope="model.vision_tower"``
only touches names under ``model.vision_tower.``, and its template (``^`` included) is matched after that prefix.

A :class:`Rename` replaces the first match of its source with its target (``*`` indices carried over in order);
renames chain in list order, as in transformers. A :class:`RenameGroup` applies paired renames at once
(``norm0 -> norm1, norm1 -> norm2``), and only to checkpoints that have its first source. A :class:`Convert`
collects every name matching one of its sources (after renaming), groups them by what surrounds the match (the
layer prefix), and runs its ops to produce its targets. All are frozen, JSON-serialisable, and invertible.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from .ops import Op, op_from_dict

Scope = tuple[tuple[str, tuple[str, ...]], ...]


class Direction(StrEnum):
    """Which way a conversion goes: ``FORWARD`` from the published (Hub) layout to the one transformers loads,
    ``REVERSE`` back. A ``str``: it equals, prints and serialises as ``"forward"`` / ``"reverse"``, and
    ``Direction("reverse")`` is ``Direction.REVERSE``."""

    FORWARD = "forward"
    REVERSE = "reverse"

    @classmethod
    def _missing_(cls, value: object) -> Direction:
        raise ValueError(f"direction must be 'forward' or 'reverse', not {value!r}")


@dataclass(frozen=True)
class CompiledTemplate:
    template: str
    regex: re.Pattern[str]
    anchored: bool
    n_stars: int
    #: the template without its start (``^`` or component boundary), to match at a scope's end
    body: re.Pattern[str]


@functools.lru_cache(maxsize=4096)
def compile_template(template: str) -> CompiledTemplate:
    """``compile_template("experts.*.w1.weight").regex.pattern`` -> ``(?:^|(?<=\\.))experts\\.(\\d+)\\.w1\\.weight(?=\\.|$)``."""
    anchored = template.startswith("^")
    body = template[1:] if anchored else template
    inner, after = body.startswith("."), body.endswith(".") and len(body) > 1
    if inner and anchored:
        raise ValueError(f"name template {template!r}: '^' and a leading '.' exclude each other")
    body = body.strip(".")
    parts = body.split(".") if body else []
    if not parts and not anchored:
        raise ValueError("an empty name template must be anchored ('^')")
    if any(p == "" for p in parts):
        raise ValueError(f"name template {template!r} has an empty component")
    rx = r"\.".join(re.escape(p).replace(r"\*", r"(\d+)") for p in parts)
    start = "^" if anchored else r"(?<=\.)" if inner else r"(?:^|(?<=\.))"
    end = (r"(?=\.)" if after else r"(?=\.|$)") if parts else ""
    n_stars = body.count("*")
    return CompiledTemplate(template, re.compile(start + rx + end), anchored, n_stars, re.compile(rx + end))


def search(template: str, name: str, scope: str = "") -> re.Match[str] | None:
    """Where ``template`` matches ``name`` (positions in ``name``); with a ``scope``, only under ``scope.``."""
    ct = compile_template(template)
    if not scope:
        return ct.regex.search(name)
    if not name.startswith(scope + "."):
        return None
    pos = len(scope) + 1
    return ct.body.match(name, pos) if ct.anchored else ct.regex.search(name, pos)


def template_body(template: str) -> str:
    """The name parts of a template, without ``^`` or boundary dots."""
    return (template[1:] if template.startswith("^") else template).strip(".")


def fill_stars(template: str, indices: Sequence[str | int], offset: int = 0) -> str:
    """``fill_stars("experts.*.w1.weight", [3])`` -> ``experts.3.w1.weight`` (``offset`` is added to the first)."""
    out = template_body(template)
    for k, i in enumerate(indices):
        out = out.replace("*", str(int(i) + offset) if k == 0 and offset else str(i), 1)
    return out


def _join_scope(outer: str, inner: str) -> str:
    return f"{outer}.{inner}" if outer and inner else outer or inner


def _scope_dict(d: dict[str, Any], scope: str, when: Scope) -> dict[str, Any]:
    if scope:
        d["scope"] = scope
    if when:
        d["when"] = {k: list(v) for k, v in when}
    return d


@dataclass(frozen=True)
class Rename:
    """Rename the first match of ``source`` to ``target``; skipped when any ``unless`` template matches the name.

    A rename never fires on its own output: when ``source`` matches inside ``target`` (``post_mlp_layernorm`` ->
    ``mlp.post_mlp_layernorm``), names that already contain ``target`` are left alone.
    ``reversible=False`` marks one-way fixes (legacy ``LayerNorm.gamma``) that the reverse direction leaves out.
    ``when`` restricts the rule to configs where a dotted config path has one of the given values.
    ``scope`` restricts it to names under a nested sub-model (the template is matched after ``scope.``).
    ``index_offset`` is added to the first ``*`` index (transformers' ``Inkling2IndexOffsetWeightRename``).
    """

    source: str
    target: str
    unless: tuple[str, ...] = ()
    reversible: bool = True
    when: Scope = ()
    note: str = ""
    scope: str = ""
    index_offset: int = 0

    def __post_init__(self) -> None:
        src, tgt = compile_template(self.source), compile_template(self.target)
        # a one-way rename may drop indices (several names onto one: a collision unless only one exists)
        if src.n_stars != tgt.n_stars and (self.reversible or tgt.n_stars > src.n_stars):
            raise ValueError(
                f"rename {self.source!r} -> {self.target!r}: both sides need the same number of '*'"
            )
        if self.index_offset and not src.n_stars:
            raise ValueError(f"rename {self.source!r}: an index offset needs a '*'")
        for u in self.unless:
            compile_template(u)

    @functools.cached_property
    def _guards(self) -> tuple[str, ...]:
        own = template_body(self.target).replace("*", "0")
        hits = any(
            search(self.source, n) is not None for n in (own, f"{own}.x", f"x.{own}.x") if n.strip(".")
        )
        if self.target not in self.unless and hits:
            return (
                *self.unless,
                template_body(self.target) if not self.target.startswith("^") else self.target,
            )
        return self.unless

    def match(self, name: str) -> re.Match[str] | None:
        m = search(self.source, name, self.scope)
        if m is None or any(search(u, name, self.scope) for u in self._guards):
            return None
        return m

    def apply(self, name: str) -> str:
        m = self.match(name)
        return name if m is None else self.replace(name, m)

    def replace(self, name: str, m: re.Match[str]) -> str:
        before, after = name[: m.start()], name[m.end() :]
        new = fill_stars(self.target, m.groups(), self.index_offset)
        if not new:  # removing a whole prefix: drop the dot that joined it
            if after.startswith("."):
                after = after[1:]
            elif before.endswith("."):
                before = before[:-1]
        elif m.start() == m.end() and after:  # adding a prefix at the very start
            new += "."
        return (before + new + after) or name  # removing a prefix leaves a name, never nothing

    def reversed(self) -> Rename:
        """``target -> source`` (the self-guard keeps it from re-applying to names already in source form)."""
        return Rename(
            self.target,
            self.source,
            (),
            self.reversible,
            self.when,
            self.note,
            self.scope,
            -self.index_offset,
        )

    def in_scope(self, scope: str, when: Scope = ()) -> Rename:
        return replace(self, scope=_join_scope(scope, self.scope), when=(*when, *self.when))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "rename", "source": self.source, "target": self.target}
        if self.unless:
            d["unless"] = list(self.unless)
        if not self.reversible:
            d["reversible"] = False
        if self.index_offset:
            d["index_offset"] = self.index_offset
        if self.note:
            d["note"] = self.note
        return _scope_dict(d, self.scope, self.when)


@dataclass(frozen=True)
class RenameGroup:
    """Paired renames applied at once, leftmost match first (transformers' ``GroupWeightRename``): ``norm0 ->
    norm1`` and ``norm1 -> norm2`` do not chain. Active only for checkpoints that have a name matching the first
    (guard) source at this point of the chain, so an already-converted checkpoint is left alone."""

    renames: tuple[Rename, ...]
    when: Scope = ()
    note: str = ""

    def __init__(self, renames: Iterable[Rename], when: Scope = (), note: str = "") -> None:
        object.__setattr__(self, "renames", tuple(renames))
        object.__setattr__(self, "when", when)
        object.__setattr__(self, "note", note)
        if len(self.renames) < 2:
            raise ValueError("a RenameGroup needs at least two renames")

    @property
    def reversible(self) -> bool:
        return all(r.reversible for r in self.renames)

    def guard_matches(self, name: str) -> bool:
        return self.renames[0].match(name) is not None

    def apply(self, name: str) -> str:
        best: tuple[int, int, Rename, re.Match[str]] | None = None
        for i, r in enumerate(self.renames):
            m = r.match(name)
            if m is not None and (best is None or (m.start(), i) < best[:2]):
                best = (m.start(), i, r, m)
        return name if best is None else best[2].replace(name, best[3])

    def reversed(self) -> RenameGroup:
        """Each rename reversed, ordered by (new) source as transformers does, so the guard stays first."""
        return RenameGroup(
            sorted((r.reversed() for r in self.renames), key=lambda r: r.source), self.when, self.note
        )

    def in_scope(self, scope: str, when: Scope = ()) -> RenameGroup:
        return RenameGroup([r.in_scope(scope) for r in self.renames], (*when, *self.when), self.note)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": "rename_group", "renames": [r.to_dict() for r in self.renames]}
        if self.note:
            d["note"] = self.note
        return _scope_dict(d, "", self.when)


@dataclass(frozen=True)
class RegexRename:
    """A caller's own ``key_mapping`` entry, or a transformers rule no template expresses, with transformers'
    semantics: ``re.sub(pattern, replacement, name, count=1)`` (under ``scope.`` when scoped). One-way (a regex
    has no general inverse), so the reverse direction leaves it out."""

    pattern: str
    replacement: str
    reversible: bool = False
    when: Scope = ()
    scope: str = ""

    def __post_init__(self) -> None:
        re.compile(self.pattern)

    def apply(self, name: str) -> str:
        if not self.scope:
            return re.sub(self.pattern, self.replacement, name, count=1)
        head = self.scope + "."
        if not name.startswith(head):
            return name
        return head + re.sub(self.pattern, self.replacement, name[len(head) :], count=1)

    def reversed(self) -> RegexRename:
        raise ValueError("a regex rename cannot be reversed")

    def in_scope(self, scope: str, when: Scope = ()) -> RegexRename:
        return replace(self, scope=_join_scope(scope, self.scope), when=(*when, *self.when))

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": "regex_rename", "pattern": self.pattern, "replacement": self.replacement}
        return _scope_dict(d, self.scope, self.when)


def prefix_change(
    prefix: str,
    *,
    add: str | None = None,
    remove: str | None = None,
    reversible: bool = True,
    scope: str = "",
    note: str = "",
) -> Rename:
    """transformers' ``PrefixChange`` on names under ``prefix`` (``""`` = the whole name).

    ``prefix_change("model.vision_tower", remove="vision_model")`` renames ``model.vision_tower.vision_model.x``
    to ``model.vision_tower.x``; ``add=`` does the opposite and never adds twice. transformers drops prefix changes
    when saving a model it did not load (the published layout then lacks the prefix): ``reversible=False``.
    """
    base = f"^{prefix}." if prefix else "^"
    if remove is not None:
        return Rename(
            base + remove, f"^{prefix}" if prefix else "^", reversible=reversible, scope=scope, note=note
        )
    assert add is not None
    return Rename(
        f"^{prefix}" if prefix else "^",
        base + add,
        unless=(base + add,),
        reversible=reversible,
        scope=scope,
        note=note,
    )


@dataclass(frozen=True)
class Convert:
    """Collect tensors matching ``sources`` (one slot each; ``*`` = expert index), run ``ops``, name ``targets``.

    ``Convert(["experts.*.w1.weight", "experts.*.w3.weight"], ["experts.gate_up_proj"], [Stack(0), Concat(1)])``
    turns ``...mlp.experts.{0..E-1}.w1/w3.weight`` into ``...mlp.experts.gate_up_proj [E, 2I, H]``.
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    ops: tuple[Op, ...]
    when: Scope = ()
    note: str = ""
    scope: str = ""

    def __init__(
        self,
        sources: str | Iterable[str],
        targets: str | Iterable[str],
        ops: Iterable[Op],
        when: Scope = (),
        note: str = "",
        scope: str = "",
    ) -> None:
        object.__setattr__(self, "sources", (sources,) if isinstance(sources, str) else tuple(sources))
        object.__setattr__(self, "targets", (targets,) if isinstance(targets, str) else tuple(targets))
        object.__setattr__(self, "ops", tuple(ops))
        object.__setattr__(self, "when", when)
        object.__setattr__(self, "note", note)
        object.__setattr__(self, "scope", scope)
        if not self.ops:
            raise ValueError("a Convert needs at least one op (use Rename for a pure rename)")
        for t in self.sources + self.targets:
            compile_template(t)

    def match(self, name: str) -> tuple[int, re.Match[str]] | None:
        """Which source pattern matches ``name`` (first in order) and where."""
        for i, s in enumerate(self.sources):
            m = search(s, name, self.scope)
            if m is not None:
                return i, m
        return None

    def match_anywhere(self, name: str) -> bool:
        """Whether a source pattern matches ``name`` ignoring this rule's scope (what a scope may have missed)."""
        return any(search(s, name) is not None for s in self.sources)

    @property
    def byte_exact_copy(self) -> bool:
        return all(op.byte_exact_copy for op in self.ops)

    def reversed(self) -> Convert:
        return Convert(
            self.targets,
            self.sources,
            [op.inverse for op in reversed(self.ops)],
            self.when,
            self.note,
            self.scope,
        )

    def in_scope(self, scope: str, when: Scope = ()) -> Convert:
        return Convert(
            self.sources,
            self.targets,
            self.ops,
            (*when, *self.when),
            self.note,
            _join_scope(scope, self.scope),
        )

    def with_suffix(self, suffix: str, target_suffix: str | None = None) -> Convert:
        """The same conversion on companion tensors: ``weight`` -> ``weight_scale_inv`` sources, ``_scale_inv``
        targets (how transformers' quantizers merge FP8 scale grids exactly like their weights)."""
        tsuf = suffix if target_suffix is None else target_suffix
        return Convert(
            [s + suffix for s in self.sources],
            [t + tsuf for t in self.targets],
            self.ops,
            self.when,
            self.note,
            self.scope,
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": "convert",
            "sources": list(self.sources),
            "targets": list(self.targets),
            "ops": [op.to_dict() for op in self.ops],
        }
        if self.note:
            d["note"] = self.note
        return _scope_dict(d, self.scope, self.when)


Rule = Rename | RenameGroup | RegexRename | Convert
RenameRule = Rename | RenameGroup | RegexRename


def rule_from_dict(d: Mapping[str, Any]) -> Rule:
    """Inverse of ``to_dict`` for every rule kind."""
    when = tuple((k, tuple(v)) for k, v in (d.get("when") or {}).items())
    scope = d.get("scope", "")
    kind = d.get("kind")
    if kind == "rename":
        return Rename(
            d["source"],
            d["target"],
            tuple(d.get("unless", ())),
            d.get("reversible", True),
            when,
            d.get("note", ""),
            scope,
            d.get("index_offset", 0),
        )
    if kind == "rename_group":
        renames = [rule_from_dict(r) for r in d["renames"]]
        return RenameGroup([r for r in renames if isinstance(r, Rename)], when, d.get("note", ""))
    if kind == "regex_rename":
        return RegexRename(d["pattern"], d["replacement"], False, when, scope)
    if kind == "convert":
        return Convert(
            d["sources"], d["targets"], [op_from_dict(o) for o in d["ops"]], when, d.get("note", ""), scope
        )
    raise ValueError(f"unknown rule kind {kind!r}")


def scoped(scope: str, rules: Iterable[Rule], when: Scope = ()) -> tuple[Rule, ...]:
    """A nested sub-model's rules, restricted to names under ``scope`` (its module path) and to configs that
    meet ``when`` -- how transformers applies the rules of a ``PreTrainedModel`` nested in another."""
    return tuple(r.in_scope(scope, when) for r in rules)


def config_get(config: Mapping[str, Any] | None, path: str) -> Any:
    cur: Any = config
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def applies(rule: Rule, config: Mapping[str, Any] | None) -> bool:
    """A rule with ``when`` applies if the config is unknown or matches every condition (for a list-valued
    entry such as ``architectures``: if one of its items matches)."""
    if not rule.when or config is None:
        return True
    return all(_meets(config_get(config, k), v) for k, v in rule.when)


def _meets(value: Any, allowed: tuple[str, ...]) -> bool:
    if isinstance(value, list):
        return any(x in allowed for x in value)
    return value in allowed


@dataclass(frozen=True)
class RuleSet:
    """The rules for one model type in one direction, in application order.

    Forward (published -> model): every rename in order, then at most one converter per name.
    Reverse (model -> published): at most one (reversed) converter per name, then the reversed renames in reverse
    order, on the converter's outputs too.
    """

    model_type: str
    direction: Direction
    renames: tuple[RenameRule, ...]
    converters: tuple[Convert, ...]
    #: names of params transformers keeps in float32 under a bf16/fp16 cast (``_keep_in_fp32_modules_strict``)
    keep_fp32: tuple[str, ...] = ()
    #: params kept in float32 only when casting to fp16 (``_keep_in_fp32_modules``)
    keep_fp32_for_fp16: tuple[str, ...] = ()
    #: nested sub-models whose rules were composed in from the config: (module path, whose rules)
    nested: tuple[tuple[str, str], ...] = field(default=())

    def rename(self, name: str) -> str:
        for r in self.renames:
            name = r.apply(name)
        return name

    def bind(self, names: Iterable[str]) -> RuleSet:
        """These rules for one checkpoint: a :class:`RenameGroup` stays only if some name (renamed by the rules
        before it) matches its guard, as transformers activates ``GroupWeightRename`` on the first guard key."""
        if not any(isinstance(r, RenameGroup) for r in self.renames):
            return self
        current = list(names)
        kept: list[RenameRule] = []
        for r in self.renames:
            if isinstance(r, RenameGroup) and not any(r.guard_matches(n) for n in current):
                continue
            kept.append(r)
            current = [r.apply(n) for n in current]
        return replace(self, renames=tuple(kept))

    def find_converter(self, name: str) -> tuple[int, int, re.Match[str]] | None:
        for ci, c in enumerate(self.converters):
            hit = c.match(name)
            if hit is not None:
                return ci, hit[0], hit[1]
        return None

    @property
    def rules(self) -> tuple[Rule, ...]:
        """All rules in the order they are listed (renames first in forward, converters first in reverse)."""
        if self.direction == Direction.FORWARD:
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
            "nested": [{"path": p, "rules_of": k} for p, k in self.nested],
        }


def keep_fp32_matches(name: str, patterns: Iterable[str]) -> bool:
    """Does a (model-layout) name fall under one of transformers' ``_keep_in_fp32_modules`` entries?"""
    return any(compile_template(p).regex.search(name) for p in patterns)
