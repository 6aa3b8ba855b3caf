"""Rules: every model type, one model type's rules as JSON, and a name preview."""

from __future__ import annotations

import json
from functools import lru_cache

from fastapi import APIRouter, Query, Response

from converter.preview import preview
from converter.rules import get_entry, model_types, rules_for
from converter.rules.core import Convert
from converter.rules.ops import Chunk, Concat, Op

from ..models import Direction, PreviewRequest, PreviewResponse, RuleList, RuleSummary
from .errors import ERRORS

router = APIRouter(tags=["rules"])


@router.get("/rules", response_model=RuleList, summary="Every model type with a summary")
async def list_rules(
    q: str | None = Query(None, max_length=100, description="substring of the model type"),
) -> Response:
    return Response(_rule_list(q.lower() if q else ""), media_type="application/json")


@lru_cache(maxsize=256)
def _rule_list(q: str) -> bytes:
    rows = [RuleSummary(**get_entry(t).summary()) for t in model_types() if q in t]
    return RuleList(data=rows, count=len(rows)).model_dump_json().encode()


@router.get("/rules/{model_type}", responses=ERRORS, summary="The rules of one model type, as data")
async def get_rules(model_type: str, direction: Direction = "forward") -> Response:
    """Exactly what the planner applies, in order: renames (``source``/``target`` name templates: whole dotted
    components, ``*`` = expert index, ``^`` = start of the name) and converters (``sources`` -> ``targets`` through
    ``ops``; each converter also says what its ops do, in words: ``ops_described`` (one per op) and ``describe``,
    e.g. "stack experts on dim 0, then concatenate w1 and w3 on dim 1"). ``direction=reverse`` gives the inverse
    rules."""
    return Response(_rules_json(model_type, direction), media_type="application/json")


@lru_cache(maxsize=1024)
def _rules_json(model_type: str, direction: str) -> bytes:
    """Rules are immutable data: serialised once per (model_type, direction); errors are not cached."""
    entry = get_entry(model_type)
    ruleset = rules_for(model_type, direction=direction)
    d = ruleset.to_dict()
    for rule, rd in zip(ruleset.rules, d["rules"], strict=True):
        if isinstance(rule, Convert):
            rd["ops_described"] = [_describe_op(op, rule) for op in rule.ops]
            rd["describe"] = ", then ".join(rd["ops_described"])
    return json.dumps({**entry.summary(), **d}).encode()


def _describe_op(op: Op, conv: Convert) -> str:
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


@router.post(
    "/rules/{model_type}/preview", response_model=PreviewResponse, responses=ERRORS, summary="Preview names"
)
def preview_names(model_type: str, body: PreviewRequest) -> PreviewResponse:
    """What the rules make of these tensor names, without any tensor (the planner's naming)."""
    get_entry(model_type)
    data = preview(body.names, model_type, direction=body.direction, config=body.config)
    return PreviewResponse(model_type=model_type, direction=body.direction, data=data)  # type: ignore[arg-type]
