"""Never silently wrong: layouts that match neither side of the rules are refused with the tensors named, and
every model type transformers 5.23 knows gets an answer (converts / no conversion needed / refused)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
tm = pytest.importorskip("support.tiny_models")

from safetensors.torch import save_file  # noqa: E402
from support.helpers import read_tensors  # noqa: E402

from converter import convert, plan  # noqa: E402
from converter.errors import LayoutMismatchError, UnconvertedTensorError, UnknownModelTypeError  # noqa: E402
from converter.rules import get_entry, model_types, rules_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixtral")
    tm.save_published(tm.build_model("mixtral"), root / "published")
    return read_tensors(root / "published")


#: transformers' Hub names -> Mistral's reference-implementation names (mistral-inference, consolidated.safetensors)
MISTRAL_NATIVE = [
    (r"^model\.embed_tokens\.", "tok_embeddings."),
    (r"^model\.norm\.", "norm."),
    (r"^lm_head\.", "output."),
    (r"^model\.layers\.", "layers."),
    (r"\.self_attn\.([qkvo])_proj\.", r".attention.w\1."),
    (r"\.input_layernorm\.", ".attention_norm."),
    (r"\.post_attention_layernorm\.", ".ffn_norm."),
    (r"\.block_sparse_moe\.", ".feed_forward."),
]


def _rename(tensors, table):
    out = {}
    for k, v in tensors.items():
        for a, b in table:
            k = re.sub(a, b, k)
        out[k] = v.contiguous()
    return out


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "service.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True)  # fmt: skip


def test_mistral_native_layout_is_refused(published, tmp_path):
    src = tmp_path / "native"
    src.mkdir()
    native = _rename(published, MISTRAL_NATIVE)
    assert "layers.0.feed_forward.experts.0.w1.weight" in native and "tok_embeddings.weight" in native
    save_file(native, str(src / "consolidated.safetensors"))
    (src / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 2, "moe": {"num_experts": 4}}))
    with pytest.raises(LayoutMismatchError, match="Mistral/Meta reference-implementation layout") as e:
        plan(src, model_type="mixtral")
    assert "tok_embeddings.weight" in e.value.message and "output.weight" in e.value.message
    r = _cli("convert", src, tmp_path / "out", "--model-type", "mixtral")
    assert r.returncode == 1 and "LayoutMismatchError" in r.stderr and "tok_embeddings.weight" in r.stderr
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["native"]


def test_llava_original_codebase_layout_is_refused(tmp_path):
    """liuhaotian/llava-v1.5 style: a Llama under ``model.`` with ``model.mm_projector``; config model_type
    ``llava_llama`` (custom code, unknown to transformers), so --model-type llava is needed -- and refused."""
    src = tmp_path / "llava-orig"
    src.mkdir()
    g = torch.Generator().manual_seed(0)
    t = {
        "model.embed_tokens.weight": torch.randn(16, 8, generator=g),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8, generator=g),
        "model.norm.weight": torch.randn(8, generator=g),
        "model.mm_projector.0.weight": torch.randn(8, 8, generator=g),
        "model.mm_projector.2.weight": torch.randn(8, 8, generator=g),
        "lm_head.weight": torch.randn(16, 8, generator=g),
    }
    save_file(t, str(src / "model.safetensors"))
    (src / "config.json").write_text(
        json.dumps({"model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"]})
    )
    with pytest.raises(UnknownModelTypeError):
        plan(src)
    with pytest.raises(LayoutMismatchError, match="original LLaVA codebase layout") as e:
        plan(src, model_type="llava")
    assert "model.mm_projector.0.weight" in e.value.message
    # it used to be reported as "already in the target layout"; with the check off it still is
    assert plan(src, model_type="llava", check_layout=False).is_noop


def test_unknown_config_type_can_be_overridden(published, tmp_path):
    """A config.json whose model_type transformers does not know (custom code) is converted with --model-type."""
    src = tmp_path / "custom"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in published.items()}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"model_type": "minimax_m1_custom", "architectures": ["X"]}))
    with pytest.raises(UnknownModelTypeError):
        plan(src)
    p = plan(src, model_type="minimax")
    assert p.model_type == "minimax" and not p.is_noop
    # a known type that disagrees is still an error
    (src / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    with pytest.raises(Exception, match="disagrees"):
        plan(src, model_type="mixtral")


def test_per_expert_tensors_left_over_are_refused(published, tmp_path):
    """llava nesting a mixtral: with the text model's type in config.json its experts are merged; per-expert
    tensors where no composed rule reaches (here under the vision tower) are refused, never published."""
    src = tmp_path / "llava-mixtral"
    src.mkdir()
    t = {"language_model." + k: v.contiguous() for k, v in published.items()}
    save_file(t, str(src / "model.safetensors"))
    cfg = {"model_type": "llava", "text_config": {"model_type": "mixtral"}, "vision_config": {}}
    (src / "config.json").write_text(json.dumps(cfg))
    p = plan(src)
    assert not any(".experts.0." in x.name for x in p.tensors)
    assert any(x.name.endswith("model.language_model.layers.0.mlp.experts.gate_up_proj") for x in p.tensors)
    stray = dict(t)
    stray["vision_tower.vision_model.mlp.experts.0.w1.weight"] = torch.zeros(4, 4, dtype=torch.bfloat16)
    save_file(stray, str(src / "model.safetensors"))
    with pytest.raises(
        UnconvertedTensorError, match=r"model\.vision_tower\.vision_model\.mlp\.experts\.0\.w1\.weight"
    ):
        plan(src)


def test_every_transformers_model_type_has_an_answer():
    """All of CONFIG_MAPPING: converts / no conversion needed / refused with a reason -- none unknown."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    answers = {}
    for t in CONFIG_MAPPING_NAMES:
        e = get_entry(t)
        answers[t] = e.conversion
        if e.conversion == "refused":
            assert e.unsupported
        rs = rules_for(t) if e.conversion != "refused" else None
        if e.conversion == "none":
            assert (
                rs is not None
                and not rs.converters
                and all(not getattr(r, "reversible", True) for r in rs.renames)
            )
    counts = {k: sum(v == k for v in answers.values()) for k in ("converts", "none", "refused")}
    assert sum(counts.values()) == len(CONFIG_MAPPING_NAMES) >= 800
    assert counts["converts"] >= 140 and counts["refused"] >= 1 and counts["none"] >= 600
    for t in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3", "gemma4", "qwen3_vl"):
        assert answers[t] == "none", t
    assert set(model_types(every=True)) == set(CONFIG_MAPPING_NAMES)
    with pytest.raises(UnknownModelTypeError, match="not_a_model"):
        get_entry("not_a_model")


def test_composed_rules_for_a_config(published, tmp_path):
    cfg = {"model_type": "internvl", "text_config": {"model_type": "qwen3_moe"},
           "vision_config": {"model_type": "internvl_vision"}}  # fmt: skip
    rs = rules_for("internvl", config=cfg)
    assert ("model.language_model", "qwen3_moe") in rs.nested
    assert any(c.scope == "model.language_model" for c in rs.converters)
    assert not rules_for("internvl").converters  # without a config: llava's renames only
    r = _cli("rules", "--config", json.dumps(cfg) and _write(tmp_path / "c.json", cfg))
    assert r.returncode == 0 and "qwen3_moe rules under model.language_model" in r.stdout


def _write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_convert_refuses_before_writing(published, tmp_path):
    src = tmp_path / "native"
    src.mkdir()
    save_file(_rename(published, MISTRAL_NATIVE), str(src / "consolidated.safetensors"))
    with pytest.raises(LayoutMismatchError):
        convert(src, tmp_path / "out", model_type="mixtral")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native"]


def test_get_model_conversion_mapping_composes_nested_rules():
    """The NeMo-named API on a config whose text model converts: transformers' own renamer, fed our rules,
    merges the nested mixtral's experts under model.language_model (it used to leave them per-expert)."""
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    from converter.conversion_mapping import get_model_conversion_mapping

    cfg = {
        "model_type": "llava",
        "text_config": {"model_type": "mixtral"},
        "vision_config": {"model_type": "clip_vision_model"},
    }
    rules = get_model_conversion_mapping(cfg)
    renamings = [r for r in rules if isinstance(r, WeightRenaming)]
    converters = [r for r in rules if isinstance(r, WeightConverter)]
    name, _ = rename_source_key(
        "language_model.model.layers.1.block_sparse_moe.experts.3.w1.weight", renamings, converters
    )
    assert name == "model.language_model.layers.1.mlp.experts.gate_up_proj"


def test_another_moe_types_experts_are_refused(published, tmp_path):
    """Mixtral's tensors under a config that says qwen3_moe: both keep their blocks under ``model.layers``, but
    qwen3_moe's rules do not reach Mixtral's ``block_sparse_moe.experts.N.w1``; publishing them unconverted would
    be a checkpoint transformers loads with every expert missing. Refused, naming the tensors."""
    src = tmp_path / "mixtral-as-qwen3"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in published.items()}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    with pytest.raises(UnconvertedTensorError, match=r"block_sparse_moe\.experts\.\d+\.w[123]\.weight") as e:
        plan(src)
    assert "qwen3_moe" in str(e.value) and "per-expert" in str(e.value)
    out = tmp_path / "out"
    with pytest.raises(UnconvertedTensorError):
        convert(src, out)
    assert not out.exists()
    # the same tensors as the type they are convert
    (src / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    assert not any(".experts.0." in x.name for x in plan(src).tensors)


def test_dense_weights_under_a_merging_type_are_said(tmp_path):
    """llama's dense weights under a config that says mixtral: nothing to merge and nothing merged. The output is
    the input (it may be a variant without MoE layers), so the plan says so in its warnings instead of passing in
    silence; a real mixtral checkpoint, published or grouped, gets no such warning."""
    src = tmp_path / "dense-as-mixtral"
    src.mkdir()
    tm.save_published(tm.build_model("llama"), src)
    (src / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    p = plan(src)
    assert p.is_noop
    assert any("none of the tensors mixtral's rules merge" in w for w in p.warnings), p.warnings
    mix = tmp_path / "mixtral"
    tm.save_published(tm.build_model("mixtral"), mix)
    assert not any("rules merge" in w for w in plan(mix).warnings)
    grouped = tmp_path / "grouped"
    convert(mix, grouped)
    g = plan(grouped)
    assert g.is_noop and not any("rules merge" in w for w in g.warnings)
