"""What the rules do to tensor names, without any checkpoint: the planner's naming (:mod:`converter.naming`), on
names alone.

>>> preview(["model.layers.0.block_sparse_moe.experts.3.w1.weight"], "mixtral")[0]["targets"]
['model.layers.0.mlp.experts.gate_up_proj']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .naming import output_name, route
from .rules import rules_for
from .rules.core import Direction, RuleSet


def preview(
    names: Iterable[str],
    model_type: str,
    *,
    direction: Direction | str = Direction.FORWARD,
    config: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """For each name: the output name(s), how (``copy``/``rename``/``convert``) and the rules that applied.

    A tensor merged by a converter lists the merged output (all experts of one projection map to the same name);
    a tensor split into experts (reverse direction) lists templates with ``*`` for the expert index. The names are
    taken as one checkpoint's, as the planner takes them (rename groups apply when one of them has their guard).
    See :func:`preview_rules` for the fields.
    """
    return preview_rules(rules_for(model_type, direction=direction, config=config), names)


def preview_rules(rules: RuleSet, names: Iterable[str]) -> list[dict[str, Any]]:
    """:func:`preview` under a rule set. Each entry: ``source``, ``targets``, ``how``, ``rules`` (the positions in
    ``rules.rules`` of the rules that applied, in application order: the renames that changed the name and the
    converter that took it; reverse, the converter and then the renames that changed its outputs) and ``rule``
    (the converter's ``to_dict()``, or None; kept for older clients).

    >>> rs = rules_for("mixtral")
    >>> e = preview_rules(rs, ["model.layers.0.block_sparse_moe.gate.weight"])[0]
    >>> e["targets"], [rs.rules[i].to_dict()["target"] for i in e["rules"]]
    (['model.layers.0.mlp.gate.weight'], ['mlp'])
    """
    names = list(names)
    position = {id(r): i for i, r in enumerate(rules.rules)}
    bound = rules.bind(names)  # the same rule objects, less rename groups whose guard no name matches
    out: list[dict[str, Any]] = []
    for name in names:
        fired: set[int] = set()

        def rename(n: str, fired: set[int] = fired) -> str:
            for r in bound.renames:
                new = r.apply(n)
                if new != n:
                    fired.add(position[id(r)])
                    n = new
            return n

        r = route(bound, name, rename)
        if r.converter is None:
            how = "copy" if r.output == name else "rename"
            out.append(
                {"source": name, "targets": [r.output], "how": how, "rules": sorted(fired), "rule": None}
            )
            continue
        conv = bound.converters[r.converter]
        fired.add(position[id(conv)])
        targets = [output_name(bound, r.prefix, t, r.suffix, rename=rename) for t in conv.targets]
        # rules.rules lists them in application order both ways (reverse: converters first), so sorted = applied
        out.append(
            {
                "source": name,
                "targets": targets,
                "how": "convert",
                "rules": sorted(fired),
                "rule": conv.to_dict(),
            }
        )
    return out
