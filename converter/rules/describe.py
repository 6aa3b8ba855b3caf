"""Rules in words, for people (the dashboard, reports): what each converter's ops do, naming what they join."""

from __future__ import annotations

from typing import Any

from .core import Convert, Rule
from .ops import Chunk, Concat, Op


def described(rule: Rule) -> dict[str, Any]:
    """``rule.to_dict()``, and for a converter ``ops_described`` (one phrase per op) and ``describe`` (joined):
    "stack experts on dim 0, then concatenate w1 and w3 on dim 1". The op dicts stay as they are."""
    d = rule.to_dict()
    if isinstance(rule, Convert):
        d["ops_described"] = [describe_op(op, rule) for op in rule.ops]
        d["describe"] = ", then ".join(d["ops_described"])
    return d


def describe_op(op: Op, conv: Convert) -> str:
    """An op in words, naming the slots it joins or splits ("concatenate w1 and w3 on dim 1")."""
    if isinstance(op, Concat) and len(conv.sources) > 1:
        return f"concatenate {_and(_labels(conv.sources))} on dim {op.dim}"
    if isinstance(op, Chunk) and op.num_shards_attribute is None and len(conv.targets) > 1:
        return f"split dim {op.dim} into {_and(_labels(conv.targets))}"
    return op.describe()


def _labels(templates: tuple[str, ...]) -> list[str]:
    """The dotted components that tell templates apart: experts.*.w1.weight, experts.*.w3.weight -> w1, w3."""
    parts = [t.split(".") for t in templates]
    n = len(parts[0])
    if any(len(p) != n for p in parts):
        return list(templates)
    lo, hi = 0, n
    while lo < n and all(p[lo] == parts[0][lo] for p in parts):
        lo += 1
    while hi > lo and all(p[hi - 1] == parts[0][hi - 1] for p in parts):
        hi -= 1
    return [".".join(p[lo:hi]) or t for p, t in zip(parts, templates, strict=True)]


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
