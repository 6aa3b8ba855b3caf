"""The registry of every model type: rule features (scopes, rename groups, index offsets, name boundaries), nested
sub-models, architectures with rules of their own, the ``rules`` listing, and the NeMo-compatible API."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import converter
from converter.errors import UnsupportedError
from converter.rules import REGISTRY, SUBMODELS, Rename, RenameGroup, get_entry, rules_for
from converter.rules.core import compile_template


def test_every_model_type_of_transformers_5_23_is_registered():
    # SEMANTICS.md section 1: 144 model types (plus class-keyed entries) in transformers 5.23's mapping
    assert len(REGISTRY) >= 144 and len(SUBMODELS) >= 100
    for t in ("mixtral", "qwen3_vl_moe", "kimi_k25", "inkling2_text", "ernie4_5_vl_moe", "rt_detr", "esm"):
        assert t in REGISTRY


@pytest.mark.parametrize(
    "template,name,hit",
    [
        ("shard_*.weight", "ngram_embedding.shard_12.weight", True),  # an index inside a name part
        ("shard_*.weight", "ngram_embedding.shard_x.weight", False),
        (".ln1", "blocks.0.ln1.weight", True),  # leading dot: not the first part
        (".ln1", "ln1.weight", False),
        ("ln1.", "ln1.weight", True),  # trailing dot: not the last part
        ("ln1.", "blocks.0.ln1", False),
    ],
)
def test_template_boundaries_and_partial_indices(template, name, hit):
    assert (compile_template(template).regex.search(name) is not None) == hit


def test_scoped_rules_touch_only_their_sub_model():
    rs = rules_for("llava", config={"vision_config": {"model_type": "siglip_vision_model"}})
    assert rs.rename("vision_tower.vision_model.encoder.x") == "model.vision_tower.encoder.x"
    # the same name parts outside the vision tower are left alone
    assert rs.rename("multi_modal_projector.vision_model.x") == "model.multi_modal_projector.vision_model.x"


def test_a_rename_never_reapplies_to_its_own_output():
    r = Rename("post_mlp_layernorm", "mlp.post_mlp_layernorm")
    assert (
        r.apply("model.layers.0.post_mlp_layernorm.weight") == "model.layers.0.mlp.post_mlp_layernorm.weight"
    )
    assert (
        r.apply("model.layers.0.mlp.post_mlp_layernorm.weight")
        == "model.layers.0.mlp.post_mlp_layernorm.weight"
    )


def test_index_offset_rename_and_its_inverse():
    r = Rename("attn_res.attn_queries.*", "layers.*.attention_input.query", index_offset=1)
    assert r.apply("model.attn_res.attn_queries.0") == "model.layers.1.attention_input.query"
    assert r.reversed().apply("model.layers.1.attention_input.query") == "model.attn_res.attn_queries.0"


def test_rename_group_applies_at_once_and_only_with_its_guard():
    g = RenameGroup([Rename("b.*.norm0", "b.*.norm1"), Rename("b.*.norm1", "b.*.norm2")])
    assert g.apply("b.0.norm0.w") == "b.0.norm1.w" and g.apply("b.0.norm1.w") == "b.0.norm2.w"  # no chaining
    rs = rules_for("kimi_k25", add_legacy=False)
    published = ["vision_tower.encoder.blocks.0.norm0.weight", "vision_tower.encoder.blocks.0.norm1.weight"]
    assert [rs.bind(published).rename(n) for n in published] == [
        "model.vision_tower.layers.0.norm1.weight",
        "model.vision_tower.layers.0.norm2.weight",
    ]
    converted = ["vision_tower.encoder.blocks.0.norm1.weight", "vision_tower.encoder.blocks.0.norm2.weight"]
    assert [rs.bind(converted).rename(n) for n in converted] == [
        "model.vision_tower.layers.0.norm1.weight",
        "model.vision_tower.layers.0.norm2.weight",
    ]


def test_nested_sub_models_compose_with_their_paths():
    entry = get_entry("qwen3_omni_moe")
    assert [(n.path, n.key) for n in entry.submodels][:2] == [
        ("thinker", "Qwen3OmniMoeThinkerForConditionalGeneration"),
        ("thinker.model", "Qwen3OmniMoeThinkerModel"),
    ]
    rs = rules_for("qwen3_omni_moe", add_legacy=False)
    assert rs.rename("thinker.model.layers.0.x") == "thinker.model.language_model.layers.0.x"
    assert rs.rename("thinker.audio_tower.conv.x") == "thinker.model.audio_tower.conv.x"


def test_an_architecture_with_rules_of_its_own_is_refused():
    config = {"model_type": "sapiens2", "architectures": ["Sapiens2ForPoseEstimation"]}
    with pytest.raises(UnsupportedError, match="Sapiens2ForPoseEstimation"):
        rules_for("sapiens2", config=config)
    rules_for("sapiens2", config={"model_type": "sapiens2", "architectures": ["Sapiens2Model"]})
    rules_for("qwen2_vl", config={"architectures": ["Qwen2VLForConditionalGeneration"]})  # its root class


def test_unsupported_types_say_why():
    summary = get_entry("esm").summary()
    assert summary["supported"] is False and "inv_freq" in summary["unsupported_reason"]


def test_requires_tensor_merging_for_every_type():
    for t, entry in REGISTRY.items():
        ops = {op for r in entry.rules if hasattr(r, "ops") for op in r.ops}
        assert converter.requires_tensor_merging(t) == bool(ops), t
    assert converter.requires_tensor_merging("nomic_bert")  # qkv chunked
    assert not converter.requires_tensor_merging("swin")  # renames only
    assert get_entry("nomic_bert").merges_tensors is False and get_entry("mixtral").merges_tensors is True


def test_rules_listing_has_ops_merges_quantized_and_support():
    out = subprocess.run(
        [sys.executable, "-m", "converter.cli", "rules", "--json"], check=True, capture_output=True, text=True
    ).stdout
    rows = {r["model_type"]: r for r in json.loads(out)}
    assert len(rows) == len(REGISTRY)
    assert rows["mixtral"]["ops"] == ["concat", "stack"] and rows["mixtral"]["merges_tensors"] is True
    assert rows["gpt_oss"]["quantized"] == {"fp8": ["keep", "dequantize"], "mxfp4": ["keep", "dequantize"]}
    assert rows["esm"]["supported"] is False and rows["esm"]["quantized"] == {}
    assert rows["kimi_k25"]["ops"] == ["chunk", "concat", "permute_for_rope", "stack"]
    human = subprocess.run(
        [sys.executable, "-m", "converter.cli", "rules"], check=True, capture_output=True, text=True
    ).stdout
    assert "pre-quantized" in human and "no: ESM" in human.replace("\n", " ")


def test_nemo_key_mapping_keeps_scopes():
    km = converter.get_combined_key_mapping("mistral_large4")

    def first_match(name: str) -> str:  # NeMo's _get_key_renaming_mapping
        for rx, repl in km.items():
            name, n = re.subn(rx, repl, name)
            if n:
                break
        return name

    assert first_match("model.language_model.layers.0.self_attn.wkv_b.weight") == (
        "model.language_model.layers.0.self_attn.kv_b_proj.weight"
    )
    # outside the scoped language model the scoped renames do nothing
    name = "model.vision_tower.transformer.layers.0.attention_norm.weight"
    assert first_match(name) == name
