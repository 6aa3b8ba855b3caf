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
from .rules.core import Direction


def preview(
    names: Iterable[str],
    model_type: str,
    *,
    direction: Direction | str = Direction.FORWARD,
    config: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """For each name: the output name(s), how (``copy``/``rename``/``convert``) and the converter that applies.

    A tensor merged by a converter lists the merged output (all experts of one projection map to the same name);
    a tensor split into experts (reverse direction) lists templates with ``*`` for the expert index. The names are
    taken as one checkpoint's, as the planner takes them (rename groups apply when one of them has their guard).
    """
    names = list(names)
    rules = rules_for(model_type, direction=direction, config=config).bind(names)
    out: list[dict[str, Any]] = []
    for name in names:
        r = route(rules, name)
        if r.converter is None:
            out.append(
                {
                    "source": name,
                    "targets": [r.output],
                    "how": "copy" if r.output == name else "rename",
                    "rule": None,
                }
            )
            continue
        conv = rules.converters[r.converter]
        targets = [output_name(rules, r.prefix, t, r.suffix) for t in conv.targets]
        out.append({"source": name, "targets": targets, "how": "convert", "rule": conv.to_dict()})
    return out
