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


# --- the registry is lazy: a family module is imported when one of its keys is first looked up ------------------

LAZY_PROBE = """
import json, sys
from converter.rules import index

FAMILIES = {*index.MODEL_TYPES, *index.CLASS_KEYS}


def families():
    return sorted(m for m in FAMILIES if f"converter.rules.{m}" in sys.modules)


import converter.rules
from converter.rules import get_entry, rules_for, REGISTRY, SUBMODELS, model_types

out = {"import": families(), "torch": "torch" in sys.modules}
get_entry("mixtral")
out["mixtral"] = families()
rules_for("mixtral")
out["rules_for mixtral"] = families()
rules_for("llava", config={"text_config": {"model_type": "qwen3_moe"}})
out["llava with a qwen3_moe text model"] = families()
out["model_types"] = len(model_types())
out["all"] = families()
out["registered"] = {"types": sorted(REGISTRY), "classes": sorted(SUBMODELS)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lazy_probe():
    p = subprocess.run([sys.executable, "-c", LAZY_PROBE], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_importing_the_rules_imports_no_family_module(lazy_probe):
    assert lazy_probe["import"] == [] and not lazy_probe["torch"]


def test_a_lookup_imports_only_the_families_it_needs(lazy_probe):
    assert lazy_probe["mixtral"] == lazy_probe["rules_for mixtral"] == ["mixtral"]
    # llava (vlm.py) nests aria_text (granitemoe.py) in aria; the config nests a qwen3_moe (qwen2_moe.py)
    assert lazy_probe["llava with a qwen3_moe text model"] == ["granitemoe", "mixtral", "qwen2_moe", "vlm"]
    from converter.rules import index

    assert lazy_probe["all"] == sorted({*index.MODEL_TYPES, *index.CLASS_KEYS})
    assert lazy_probe["model_types"] == len(lazy_probe["registered"]["types"])


def test_the_index_is_what_the_family_modules_register(lazy_probe):
    # register() refuses a key that the index lists under another module (the probe imported every family
    # through the lazy lookups), so equal sets mean each key is indexed under the module that registers it
    from converter.rules import index

    assert lazy_probe["registered"]["types"] == sorted(k for v in index.MODEL_TYPES.values() for k in v)
    assert lazy_probe["registered"]["classes"] == sorted(k for v in index.CLASS_KEYS.values() for k in v)


def test_register_refuses_a_key_missing_from_the_index_or_under_another_module():
    from converter.rules import registry

    get_entry("mixtral")  # registered (once) before registering it again
    with pytest.raises(ValueError, match="not listed in converter/rules/index.py"):
        registry.register("no_such_model_type", (), family="test")
    registry._loading.append("vlm")
    try:
        with pytest.raises(ValueError, match="'mixtral' is registered by vlm.py, index.py says mixtral.py"):
            registry.register("mixtral", (), family="test")
    finally:
        registry._loading.pop()
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("mixtral", (), family="test")
