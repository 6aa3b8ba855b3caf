"""Rules as data: precise patterns, transformers' chaining semantics, JSON round trip, inverses, NeMo parity."""

from __future__ import annotations

import json

import pytest

import converter
from converter.errors import UnknownModelTypeError
from converter.rules import (
    REGISTRY,
    Convert,
    compile_template,
    get_entry,
    model_types,
    rule_from_dict,
    rules_for,
)


@pytest.mark.parametrize(
    "template,name,hit",
    [
        ("block_sparse_moe", "model.layers.0.block_sparse_moe.gate.weight", True),
        (
            "block_sparse_moe",
            "model.layers.0.my_block_sparse_moe.gate.weight",
            False,
        ),  # whole components only
        ("gate.weight", "model.layers.0.mlp.gate.weight", True),
        ("gate.weight", "model.layers.0.mlp.gate_weight", False),  # transformers' `.` would match `_`
        ("experts.*.w1.weight", "model.layers.0.mlp.experts.12.w1.weight", True),
        ("experts.*.w1.weight", "model.layers.0.mlp.experts.x.w1.weight", False),
        ("experts.*.w1.weight", "model.layers.0.mlp.experts.1.w1.weight_scale_inv", False),
        (
            "experts.*.w1.weight",
            "model.layers.0.mlp.experts.1.extra.w1.weight",
            False,
        ),  # `.*` does not span dots
        ("^language_model", "language_model.model.x", True),
        ("^language_model", "model.language_model.x", False),
    ],
)
def test_templates_match_whole_components(template, name, hit):
    assert (compile_template(template).regex.search(name) is not None) == hit


def test_renames_chain_in_order_like_transformers():
    rs = rules_for("phimoe")
    # .block_sparse_moe. -> .mlp. then .gate.weight -> .router.weight: both fire on one key
    assert rs.rename("model.layers.3.block_sparse_moe.gate.weight") == "model.layers.3.mlp.router.weight"


def test_unless_guards_a_prefix_rename():
    rs = rules_for("qwen2_vl")
    assert (
        rs.rename("model.layers.0.self_attn.q_proj.weight")
        == "model.language_model.layers.0.self_attn.q_proj.weight"
    )
    assert rs.rename("model.language_model.layers.0.x") == "model.language_model.layers.0.x"
    assert rs.rename("visual.blocks.0.attn.qkv.weight") == "model.visual.blocks.0.attn.qkv.weight"


def test_conditional_rule_follows_the_config():
    clip = {"vision_config": {"model_type": "clip_vision_model"}}
    pixtral = {"vision_config": {"model_type": "pixtral"}}
    name = "model.vision_tower.encoder.layers.0.x"
    assert (
        rules_for("llava", direction="reverse", config=clip).rename(name)
        == "vision_tower.vision_model.encoder.layers.0.x"
    )
    assert (
        rules_for("mistral3", direction="reverse", config=pixtral).rename(name)
        == "vision_tower.encoder.layers.0.x"
    )


def test_legacy_renames_are_forward_only():
    assert rules_for("mixtral").rename("encoder.LayerNorm.gamma") == "encoder.LayerNorm.weight"
    assert (
        rules_for("mixtral", add_legacy=False).rename("encoder.LayerNorm.gamma") == "encoder.LayerNorm.gamma"
    )
    assert (
        rules_for("mixtral", direction="reverse").rename("encoder.LayerNorm.weight")
        == "encoder.LayerNorm.weight"
    )


def test_reverse_inverts_ops_in_reverse_order():
    rev = rules_for("mixtral", direction="reverse")
    gu = rev.converters[0].to_dict()
    assert gu["sources"] == ["experts.gate_up_proj"]
    assert gu["targets"] == ["experts.*.w1.weight", "experts.*.w3.weight"]
    assert gu["ops"] == [{"op": "chunk", "dim": 1, "num_shards_attribute": None}, {"op": "unstack", "dim": 0}]


@pytest.mark.parametrize("model_type", model_types())
def test_every_rule_round_trips_through_json(model_type):
    for rule in get_entry(model_type).rules:
        d = json.loads(json.dumps(rule.to_dict()))
        assert rule_from_dict(d) == rule
    for direction in ("forward", "reverse"):
        json.dumps(rules_for(model_type, direction=direction).to_dict())


def test_key_mapping_comes_first_and_is_a_regex():
    rs = rules_for("mixtral", key_mapping={r"^transformer\.h\.": "model.layers."})
    assert rs.rename("transformer.h.0.block_sparse_moe.gate.weight") == "model.layers.0.mlp.gate.weight"


def test_unknown_model_type():
    with pytest.raises(UnknownModelTypeError) as e:
        rules_for("qwen3moe")
    assert "qwen3_moe" in e.value.suggestions


# --- NeMo AutoModel API parity ----------------------------------------------------------------------------------

NEMO_LIST = {  # NeMo 0.7's MODELS_REQUIRING_TENSOR_MERGING (SEMANTICS.md section 10)
    "mixtral", "minimax", "phimoe", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "jamba", "olmoe",
    "lfm2_moe", "dots1", "ernie4_5_moe", "glm4_moe", "glm4v_moe", "longcat_flash", "qwen3_omni_moe", "qwen3_next",
    "qwen3_vl_moe", "hunyuan_v1_moe", "flex_olmo",
}  # fmt: skip


def test_merge_list_is_derived_from_the_rules():
    assert {
        t for t, e in REGISTRY.items() if any(isinstance(r, Convert) for r in e.rules)
    } == converter.MODELS_REQUIRING_TENSOR_MERGING
    # everything NeMo lists that we register, plus the types NeMo forgets (SEMANTICS.md section 10)
    assert NEMO_LIST & set(REGISTRY) <= converter.MODELS_REQUIRING_TENSOR_MERGING
    assert {
        "minimax_m2",
        "deepseek_v32",
        "exaone_moe",
        "glm4_moe_lite",
        "cohere2_moe",
        "afmoe",
    } <= converter.MODELS_REQUIRING_TENSOR_MERGING
    assert converter.requires_tensor_merging("mixtral") and not converter.requires_tensor_merging(
        "granitemoe"
    )
    assert not converter.requires_tensor_merging("llava") and not converter.requires_tensor_merging("nope")


def test_direction_is_an_enum_that_still_takes_and_gives_plain_strings():
    from converter import Direction

    assert Direction("reverse") is Direction.REVERSE and Direction.FORWARD == "forward"
    rs = rules_for("mixtral", direction="reverse")
    assert rs.direction is Direction.REVERSE
    assert json.loads(json.dumps(rs.to_dict()))["direction"] == "reverse" and f"{rs.direction}" == "reverse"
    assert rules_for("mixtral", direction=Direction.REVERSE) == rs
    with pytest.raises(ValueError, match="direction must be 'forward' or 'reverse', not 'sideways'"):
        rules_for("mixtral", direction="sideways")
