"""The data tables about transformers' models (``converter/rules/data/*.json``) and their accessors.

The shape and spot checks need no transformers; the drift checks regenerate entries with
``tools/gen_transformers_tables.py`` from the installed transformers and compare them with the stored ones.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from converter.rules import tables

ROOT = Path(__file__).resolve().parent.parent
#: regenerated in-process and compared with the stored entries
SAMPLE = ("llama", "mixtral", "llava", "mistral3", "internvl", "qwen2_vl", "gemma3", "whisper", "t5", "clip")


def _json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files("converter.rules").joinpath("data", name).read_text())
    return data


@cache
def _generator() -> ModuleType:
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location(
        "gen_transformers_tables", ROOT / "tools/gen_transformers_tables.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------------------
# shape


def test_model_types_shape():
    types = _json("model_types.json")
    assert len(types) > 700 and list(types) == sorted(types)
    for entry in types.values():
        assert set(entry) <= {"config", "sub_configs", "model_type"} and entry["config"].endswith("Config")
        assert entry.get("sub_configs", ["x"]) and all(
            isinstance(s, str) for s in entry.get("sub_configs", [])
        )
    assert types["llava"] == {"config": "LlavaConfig", "sub_configs": ["text_config", "vision_config"]}
    assert types["gpt-sw3"] == {"config": "GPT2Config", "model_type": "gpt2"}


def test_auto_classes_shape():
    auto = _json("auto_classes.json")
    types = _json("model_types.json")
    assert set(auto) <= set(types) and all(isinstance(v, str) and v for v in auto.values())


def _check_head(entry: dict[str, Any]) -> None:
    assert set(entry) <= {"class", "mapping", "base_model_prefix", "submodels", "config", "error", "base"}
    assert entry["class"] and entry["mapping"].endswith("_MAPPING_NAMES")
    if "error" in entry:
        assert "submodels" not in entry
        return
    assert isinstance(entry["base_model_prefix"], str)
    for slot in entry["submodels"]:
        assert set(slot) == {"path", "config", "class", "model_type"}
        assert slot["path"] and slot["class"]
        assert slot["config"] is None or all(p.isidentifier() for p in slot["config"].split("."))


def test_submodels_shape():
    subs = _json("submodels.json")
    assert set(subs) <= set(_json("model_types.json"))
    for entry in subs.values():
        _check_head(entry)
        if "base" in entry:
            _check_head(entry["base"])
            assert entry["base"]["mapping"] == "MODEL_MAPPING_NAMES"


def test_layouts_shape():
    layouts = _json("layouts.json")
    assert list(layouts) == list(_json("model_types.json"))
    for entry in layouts.values():
        assert set(entry) <= {
            "prefixes",
            "params",
            "classes",
            "base",
            "options",
            "ignore_unexpected",
            "fallback",
            "failed",
        }
        assert entry["prefixes"] == sorted(set(entry["prefixes"])) and entry["classes"] == sorted(
            entry["classes"]
        )
        assert all(p.count(".") <= 1 for p in entry["prefixes"])
        assert ("" in entry["prefixes"]) == bool(entry["params"])
        assert not set(entry["classes"]) & set(entry.get("failed", {}))
        for added in entry.get("options", {}).values():
            assert set(added) <= set(entry["prefixes"])


# ---------------------------------------------------------------------------------------------------------------
# spot values, through the accessors


def test_spot_values():
    assert len(tables.known_model_types()) == len(_json("model_types.json"))
    assert tables.auto_class("clip_vision_model") == "CLIPVisionModel"
    assert tables.config_class("llava") == "LlavaConfig"
    assert tables.sub_configs("llava") == ("text_config", "vision_config")

    slots = {(s.path, s.config) for s in tables.submodels("llava")}
    assert {("model.language_model", "text_config"), ("model.vision_tower", "vision_config")} <= slots
    head = tables.head("llava")
    assert (
        head is not None and head.class_name == tables.head_class("llava") == "LlavaForConditionalGeneration"
    )
    assert tables.base_model_prefix("llava") == "model"
    tower = next(s for s in head.submodels if s.path == "model.vision_tower")
    assert head.scope_of(tower) == "vision_tower" and tower.class_name == "CLIPVisionModel"
    base = tables.head("llava", base=True)
    assert base is not None and base.class_name == "LlavaModel"
    assert [s.path for s in base.submodels] == ["vision_tower", "language_model"]

    llama = tables.layout("llama")
    assert llama is not None
    assert {
        "model.layers",
        "model.embed_tokens",
        "lm_head",
        "layers.*",
        "embed_tokens",
        "norm",
    } <= llama.prefixes
    assert "tok_embeddings" not in llama.prefixes and not llama.params
    assert llama.admits("model.layers.7.self_attn.q_proj.weight") and llama.admits(
        "layers.0.mlp.up_proj.weight"
    )
    assert not llama.admits("tok_embeddings.weight") and not llama.admits("output.weight")

    mixtral = tables.layout("mixtral")
    assert mixtral is not None and mixtral.admits("model.layers.0.mlp.experts.gate_up_proj")
    assert not mixtral.admits("tok_embeddings.weight") and not mixtral.admits("output.weight")
    # depth 2 does not see inside a layer: Mistral-native `layers.0.feed_forward.w1` passes as a base checkpoint's
    assert mixtral.admits("layers.0.feed_forward.w1.weight")
    llava = tables.layout("llava")
    assert llava is not None and not llava.admits("model.mm_projector.0.weight")
    assert llava.admits("model.multi_modal_projector.linear_1.weight")

    clip = tables.layout("clip")
    assert clip is not None and "logit_scale" in clip.params and clip.admits("logit_scale")


def test_layout_for_swapped_sub_models():
    """A nested sub-model whose sub-config names another model_type brings that type's layout under its path."""
    config = {"vision_config": {"model_type": "pixtral"}, "text_config": {"model_type": "mistral"}}
    default, swapped = tables.layout("llava"), tables.layout_for("llava", config)
    assert default is not None and swapped is not None
    assert not default.admits("vision_tower.patch_conv.weight") and swapped.admits(
        "vision_tower.patch_conv.weight"
    )
    assert swapped.admits("model.vision_tower.transformer.layers.0.attention.q_proj.weight")
    # still refused: LLaVA's original projector, and the v4 layout (language model not moved under `model`)
    assert not swapped.admits("model.mm_projector.0.weight")
    assert not swapped.admits("language_model.model.layers.0.mlp.up_proj.weight")
    assert tables.layout_for("llava", {"vision_config": {"model_type": "clip_vision_model"}}) == default

    # blip-2's language model is AutoModelForCausalLM / Seq2SeqLM, not AutoModel: every t5 class's prefixes
    blip = tables.layout_for("blip-2", {"text_config": {"model_type": "t5"}})
    assert blip is not None and blip.admits("language_model.encoder.block.0.layer.0.SelfAttention.q.weight")
    assert not blip.admits("language_model.block.0.layer.0.SelfAttention.q.weight")


def test_unknown_model_type():
    with pytest.raises(KeyError):
        tables.layout("no_such_model")
    assert tables.auto_class("llava_next") == "LlavaNextModel"


# ---------------------------------------------------------------------------------------------------------------
# drift against the installed transformers


def test_model_types_match_transformers():
    pytest.importorskip("transformers")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    stored = _json("model_types.json")
    assert sorted(stored) == sorted(CONFIG_MAPPING_NAMES)
    assert {t: e["config"] for t, e in stored.items()} == dict(CONFIG_MAPPING_NAMES)
    gen = _generator()
    assert _json("auto_classes.json") == gen.auto_classes_table()
    # the whole table imports every config module (~10 s): the sample's entries only
    table = gen.model_types_table(SAMPLE)
    assert {t: stored[t] for t in SAMPLE} == table


@pytest.mark.parametrize("model_type", SAMPLE)
def test_entries_match_regenerated(model_type):
    gen = _generator()
    inspected = gen.inspect_model_type(model_type)
    assert _json("layouts.json")[model_type] == json.loads(
        json.dumps(gen.layout_entry(model_type, inspected))
    )
    assert _json("submodels.json").get(model_type) == json.loads(
        json.dumps(gen.submodels_entry(model_type, inspected))
    )
