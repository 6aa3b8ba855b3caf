"""Rules: every model type, one model type's rules as JSON, and a name preview.

The bodies are documented by :mod:`service.rules_models` (``response_model``: their JSON Schema is in
``/openapi.json``) but serialised straight from the rule dataclasses: rules are immutable, so a type's document is
built once and served as bytes. tests/test_rules_format.py validates real responses against the schema.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Query, Response

from converter.planner import resolve_model_type
from converter.preview import preview_rules
from converter.rules import FORMAT_VERSION, get_entry, model_types, rules_for
from converter.rules.describe import described

from ..models import Direction, PreviewRequest, ResolveRequest
from ..rules_models import PreviewResponse, RuleList, RulesDocument
from .errors import ERRORS

router = APIRouter(tags=["rules"])


@router.get("/rules", response_model=RuleList, summary="Every model type with a summary")
async def list_rules(
    q: str | None = Query(None, max_length=100, description="substring of the model type"),
) -> Response:
    return Response(_rule_list(q.lower() if q else ""), media_type="application/json")


@lru_cache(maxsize=256)
def _rule_list(q: str) -> bytes:
    rows = [get_entry(t).summary() for t in model_types(every=True) if q in t]
    return json.dumps({"format_version": FORMAT_VERSION, "data": rows, "count": len(rows)}).encode()


@router.get(
    "/rules/{model_type}",
    response_model=RulesDocument,
    responses=ERRORS,
    summary="The rules of one model type, as data",
)
async def get_rules(model_type: str, direction: Direction = "forward") -> Response:
    """Exactly what the planner applies, in order (docs/rules-format.md says how to apply it): renames
    (``source``/``target`` name templates: whole dotted components, ``*`` = an index, ``^`` = start of the name)
    and converters (``sources`` -> ``targets`` through ``ops``; each converter also says what its ops do, in words:
    ``ops_described`` (one per op) and ``describe``, e.g. "stack experts on dim 0, then concatenate w1 and w3 on
    dim 1"). ``direction=reverse`` gives the inverse rules. Rules with ``when`` are listed whatever the config: a
    loader evaluates them against config.json, or asks ``POST /rules/resolve``."""
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
    return {**entry.summary(), "format_version": FORMAT_VERSION, **d}


@router.post(
    "/rules/resolve",
    response_model=RulesDocument,
    responses=ERRORS,
    summary="The rules composed for a config.json",
)
def resolve_rules(body: ResolveRequest) -> Response:
    """The rules the planner applies to a checkpoint with this ``config.json``: its model type's (or
    ``model_type``'s), then those of every nested sub-model the config names with a model type of its own
    (``text_config``, ``vision_config``, ...), scoped to where the sub-model lives (``nested`` lists them), as
    transformers 5.23 composes them; rules whose ``when`` the config does not meet are left out. ``conversion`` is
    ``converts`` when any rule applies."""
    model_type = resolve_model_type(body.model_type, body.config, "config")
    doc = _rules_doc(model_type, body.direction, body.config)
    if doc["nested"] and doc["conversion"] == "none":
        doc["conversion"] = "converts"
    return Response(json.dumps(doc), media_type="application/json")


@router.post(
    "/rules/{model_type}/preview", response_model=PreviewResponse, responses=ERRORS, summary="Preview names"
)
def preview_names(model_type: str, body: PreviewRequest) -> Response:
    """What the rules make of these tensor names, without any tensor (the planner's naming). ``rules`` are the
    rules applied (those of ``GET /rules/{model_type}``, or of ``POST /rules/resolve`` with the same config); each
    entry's ``rules`` lists the positions in it of the rules that changed that name or converted it, in order."""
    get_entry(model_type)
    ruleset = rules_for(model_type, direction=body.direction, config=body.config)
    doc = {
        "model_type": model_type,
        "direction": body.direction,
        "format_version": FORMAT_VERSION,
        "rules": [described(r) for r in ruleset.rules],
        "data": preview_rules(ruleset, body.names),
    }
    return Response(json.dumps(doc), media_type="application/json")
