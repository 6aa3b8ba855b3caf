"""Rules: every model type, one model type's rules as JSON, and a name preview."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Query, Response

from converter.planner import resolve_model_type
from converter.preview import preview
from converter.rules import get_entry, model_types, rules_for
from converter.rules.describe import described

from ..models import Direction, PreviewRequest, PreviewResponse, ResolveRequest, RuleList, RuleSummary
from .errors import ERRORS

router = APIRouter(tags=["rules"])


@router.get("/rules", response_model=RuleList, summary="Every model type with a summary")
async def list_rules(
    q: str | None = Query(None, max_length=100, description="substring of the model type"),
) -> Response:
    return Response(_rule_list(q.lower() if q else ""), media_type="application/json")


@lru_cache(maxsize=256)
def _rule_list(q: str) -> bytes:
    rows = [RuleSummary(**get_entry(t).summary()) for t in model_types(every=True) if q in t]
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
    return json.dumps(_rules_doc(model_type, direction, None)).encode()


def _rules_doc(model_type: str, direction: str, config: dict[str, Any] | None) -> dict[str, Any]:
    entry = get_entry(model_type)
    ruleset = rules_for(model_type, direction=direction, config=config)
    d = ruleset.to_dict()
    d["rules"] = [described(r) for r in ruleset.rules]
    return {**entry.summary(), **d}


@router.post("/rules/resolve", responses=ERRORS, summary="The rules composed for a config.json")
def resolve_rules(body: ResolveRequest) -> Response:
    """The rules the planner applies to a checkpoint with this ``config.json``: its model type's (or
    ``model_type``'s), then those of every nested sub-model the config names with a model type of its own
    (``text_config``, ``vision_config``, ...), scoped to where the sub-model lives (``nested`` lists them), as
    transformers 5.23 composes them. ``conversion`` is ``converts`` when any rule applies."""
    model_type = resolve_model_type(body.model_type, body.config, "config")
    doc = _rules_doc(model_type, body.direction, body.config)
    if doc["nested"] and doc["conversion"] == "none":
        doc["conversion"] = "converts"
    return Response(json.dumps(doc), media_type="application/json")


@router.post(
    "/rules/{model_type}/preview", response_model=PreviewResponse, responses=ERRORS, summary="Preview names"
)
def preview_names(model_type: str, body: PreviewRequest) -> PreviewResponse:
    """What the rules make of these tensor names, without any tensor (the planner's naming)."""
    get_entry(model_type)
    data = preview(body.names, model_type, direction=body.direction, config=body.config)
    return PreviewResponse(model_type=model_type, direction=body.direction, data=data)  # type: ignore[arg-type]
