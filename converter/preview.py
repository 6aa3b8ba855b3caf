"""What the rules do to tensor names, without any checkpoint: the planner's naming, on names alone.

>>> preview(["model.layers.0.block_sparse_moe.experts.3.w1.weight"], "mixtral")[0]["targets"]
['model.layers.0.mlp.experts.gate_up_proj']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .rules import rules_for
from .rules.core import Direction, template_body


def preview(
    names: Iterable[str],
    model_type: str,
    *,
    direction: Direction | str = Direction.FORWARD,
    config: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """For each name: the output name(s), how (``copy``/``rename``/``convert``) and the converter that applies.

    A tensor merged by a converter lists the merged output (all experts of one projection map to the same name);
    a tensor split into experts (reverse direction) lists templates with ``*`` for the expert index.
    """
    rules = rules_for(model_type, direction=direction, config=config)
    forward = Direction(direction) == Direction.FORWARD
    out: list[dict[str, Any]] = []
    for name in names:
        renamed = rules.rename(name) if forward else name
        hit = rules.find_converter(renamed)
        if hit is None:
            target = renamed if forward else rules.rename(name)
            out.append(
                {
                    "source": name,
                    "targets": [target],
                    "how": "copy" if target == name else "rename",
                    "rule": None,
                }
            )
            continue
        ci, _, m = hit
        conv = rules.converters[ci]
        prefix, suffix = renamed[: m.start()], renamed[m.end() :]
        targets = [prefix + template_body(t) + suffix for t in conv.targets]
        if not forward:
            targets = [rules.rename(t) for t in targets]
        out.append({"source": name, "targets": targets, "how": "convert", "rule": conv.to_dict()})
    return out
