"""How a :class:`~converter.rules.core.RuleSet` names outputs: where each source tensor goes (renamed, or into which
converter, at which place) and what a converter's target is called there. The planner (on a checkpoint) and
``preview`` (on names alone) both name through here, so the two cannot drift.

>>> from converter.rules import rules_for
>>> rs = rules_for("mixtral")
>>> r = route(rs, "model.layers.0.block_sparse_moe.experts.3.w1.weight")
>>> r.converter, r.prefix, r.stars
(0, 'model.layers.0.mlp.', (3,))
>>> output_name(rs, r.prefix, rs.converters[0].targets[0], r.suffix)
'model.layers.0.mlp.experts.gate_up_proj'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .rules.core import Direction, RuleSet, fill_stars, template_body

Rename = Callable[[str], str]


@dataclass(frozen=True)
class Route:
    """Where one source tensor goes. ``converter is None``: it is kept or renamed, as ``output``. Otherwise it fills
    source pattern ``slot`` of converter ``converter`` (its index in the rule set), at the place ``prefix`` +
    pattern + ``suffix`` (the layer around the match), with the pattern's ``*`` indices ``stars``."""

    name: str
    output: str | None = None
    converter: int | None = None
    slot: int = 0
    prefix: str = ""
    suffix: str = ""
    stars: tuple[int, ...] = ()


def route(rules: RuleSet, name: str, rename: Rename | None = None) -> Route:
    """Where ``name`` goes under ``rules``: forward, the renames run first and a converter matches the renamed name;
    reverse, a converter matches the name itself and the renames run on what is left (and on converter outputs,
    see :func:`output_name`). ``rename`` replaces ``rules.rename`` (the planner's records which rules fired)."""
    rename = rename or rules.rename
    forward = rules.direction == Direction.FORWARD
    renamed = rename(name) if forward else name
    hit = rules.find_converter(renamed)
    if hit is None:
        return Route(name, output=renamed if forward else rename(name))
    ci, si, m = hit
    stars = tuple(int(x) for x in m.groups())
    return Route(name, None, ci, si, renamed[: m.start()], renamed[m.end() :], stars)


def place(prefix: str, template: str, suffix: str, index: int | None = None) -> str:
    """A name template at a place, its ``*`` filled with ``index`` (kept when None):
    ``place("model.layers.0.", "experts.*.w1.weight", "", 3)`` -> ``'model.layers.0.experts.3.w1.weight'``."""
    return prefix + (fill_stars(template, [index]) if index is not None else template_body(template)) + suffix


def output_name(
    rules: RuleSet,
    prefix: str,
    target: str,
    suffix: str,
    index: int | None = None,
    rename: Rename | None = None,
) -> str:
    """The name of converter target ``target`` at a place (:func:`place`); reverse, the renames then run on it."""
    name = place(prefix, target, suffix, index)
    return name if rules.direction == Direction.FORWARD else (rename or rules.rename)(name)
