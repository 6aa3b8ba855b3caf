"""Test oracle factory: tiny random transformers models saved in the published (Hub) layout.

The converter under test reads a checkpoint directory written here and must produce exactly what
``transformers`` 5.23 produces with ``from_pretrained(dir).state_dict()`` (see SEMANTICS.md §3, §5, §7, §9, §11).

Public API::

    MODEL_TYPES                      every model type this module can build
    tiny_config(model_type)          tiny bf16 config (hidden 64, vocab 128, 4 experts, untied embeddings)
    build_model(model_type, seed)    that config's model, every float tensor filled with random values
    save_published(model, out_dir)   Hub layout (transformers' reverse conversion + Hub fix-ups), many shards
    save_grouped(model, out_dir)     transformers' model layout (``save_original_format=False``), many shards
    load_state_dict(dir, type)       ``from_pretrained`` -> ``state_dict()``; raises on any loading problem
    QUANTIZED_KINDS                  "fp8_deepseek_v3", "fp8_qwen3_moe", "mxfp4_gpt_oss"
    build_quantized(kind, out_dir)   pre-quantized published checkpoint; returns the expected dequantized state dict

Run ``python tests/support/tiny_models.py [model_type_or_kind ...]`` for the self-check: build -> save -> load must
reproduce the built model's state dict bit for bit, for both layouts (and the quantized kinds their expected
dequantized state dict).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeGuard, cast

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PretrainedConfig, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

__all__ = [
    "MODEL_TYPES",
    "QUANTIZED_KINDS",
    "LoadingError",
    "build_model",
    "build_quantized",
    "load_state_dict",
    "save_grouped",
    "save_published",
    "self_check",
    "tiny_config",
]

DTYPE = torch.bfloat16

# ---------------------------------------------------------------------------------------------------------------
# Which class transformers uses for each model type's checkpoints (the class named in CASES_TABLE.md).
_MODEL_CLASSES: dict[str, str] = {
    "afmoe": "AfmoeForCausalLM",
    "aria_text": "AriaTextForCausalLM",
    "axk1": "AXK1ForCausalLM",
    "axk2": "AXK2ForCausalLM",
    "bailing_hybrid": "BailingHybridForCausalLM",
    "beam": "BeamForCausalLM",
    "cohere2_moe": "Cohere2MoeForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "deepseek_v32": "DeepseekV32ForCausalLM",
    "deepseek_ocr2": "DeepseekOcr2ForConditionalGeneration",
    "deepseek_v4": "DeepseekV4ForCausalLM",
    "dots1": "Dots1ForCausalLM",
    "ernie4_5_moe": "Ernie4_5_MoeForCausalLM",
    "ernie4_5_vl_moe": "Ernie4_5_VLMoeForConditionalGeneration",
    "exaone_moe": "ExaoneMoeForCausalLM",
    "flex_olmo": "FlexOlmoForCausalLM",
    "flint": "FlintForCausalLM",
    "gemma3": "Gemma3ForConditionalGeneration",
    "glm4_moe": "Glm4MoeForCausalLM",
    "glm4_moe_lite": "Glm4MoeLiteForCausalLM",
    "glm4v_moe": "Glm4vMoeForConditionalGeneration",
    "glm5_next": "Glm5NextForConditionalGeneration",
    "glm_moe_dsa": "GlmMoeDsaForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
    "granitemoe": "GraniteMoeForCausalLM",
    "granitemoehybrid": "GraniteMoeHybridForCausalLM",
    "granitemoeshared": "GraniteMoeSharedForCausalLM",
    "hunyuan_v1_moe": "HunYuanMoEV1ForCausalLM",
    "hy_v3": "HYV3ForCausalLM",
    "hy_v4": "HYV4ForCausalLM",
    "inkling2_text": "Inkling2ForCausalLM",
    "jamba": "JambaForCausalLM",
    "kimi_k25": "Kimi_K25ForConditionalGeneration",
    "kimi_linear": "KimiLinearForCausalLM",
    "kolibri1": "Kolibri1ForCausalLM",
    "laguna": "LagunaForCausalLM",
    "lfm2_moe": "Lfm2MoeForCausalLM",
    "llama4_text": "Llama4ForCausalLM",
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "longcat_flash": "LongcatFlashForCausalLM",
    "mellum": "MellumForCausalLM",
    "mimo_v2_flash": "MiMoV2FlashForCausalLM",
    "minimax": "MiniMaxForCausalLM",
    "minimax_m2": "MiniMaxM2ForCausalLM",
    "minimax_m3_vl": "MiniMaxM3SparseForConditionalGeneration",
    "mistral3": "Mistral3ForConditionalGeneration",
    "mistral_large4": "MistralLarge4ForConditionalGeneration",
    "mixtral": "MixtralForCausalLM",
    "mllama": "MllamaForConditionalGeneration",
    "nemotron_h": "NemotronHForCausalLM",
    "olmoe": "OlmoeForCausalLM",
    "paligemma": "PaliGemmaForConditionalGeneration",
    "phimoe": "PhimoeForCausalLM",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration",
    "qwen3_5_moe_text": "Qwen3_5MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen3_next": "Qwen3NextForCausalLM",
    "qwen3_omni_moe": "Qwen3OmniMoeForConditionalGeneration",  # no Auto class in 5.23
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
    "qwen4_exp_text": "Qwen4ExpForCausalLM",
    "solar_open": "SolarOpenForCausalLM",
    "step3p7": "Step3p7ForConditionalGeneration",
    # composite models (their text model is given by name, e.g. "llava+mixtral") and types that need no conversion
    "internvl": "InternVLForConditionalGeneration",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}

#: composite models whose text model converts on its own: ``outer+text`` -> the outer type's config with a
#: ``text_config`` of the text type (InternVL3.5-30B-A3B-HF is internvl + qwen3_moe)
COMPOSITES: tuple[str, ...] = ("llava+mixtral", "llava+qwen3_moe", "mistral3+mixtral", "internvl+qwen3_moe")

# ---------------------------------------------------------------------------------------------------------------
# Tiny config values. A key is only passed to a config class whose default instance has that attribute, so one
# table serves all families (e.g. ``num_local_experts`` for Mixtral, ``n_routed_experts`` for DeepSeek).
_TEXT: dict[str, Any] = {
    # sizes
    "vocab_size": 128,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 96,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    # experts: E = 4, top-2, expert intermediate 48
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "moe_num_experts": 4,
    "num_experts_per_tok": 2,
    "num_experts_per_token": 2,
    "moe_k": 2,
    "moe_topk": 2,
    "moe_intermediate_size": 48,
    "shared_expert_intermediate_size": 48,
    "moe_shared_expert_intermediate_size": 48,
    "shared_intermediate_size": 48,
    "n_group": 1,
    "topk_group": 1,
    "num_expert_group": 1,
    # multi-head latent attention
    "q_lora_rank": 32,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    # sparse-attention indexers
    "index_n_heads": 2,
    "index_head_dim": 16,
    "index_topk": 8,
    # linear attention / gated delta net
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_heads": 4,
    "linear_head_dim": 16,
}

_VISION: dict[str, Any] = {
    "hidden_size": 32,
    "embed_dim": 32,
    "intermediate_size": 40,
    "num_hidden_layers": 1,
    "depth": 1,
    "num_attention_heads": 2,
    "num_heads": 2,
    "head_dim": 16,
    "image_size": 28,
    "patch_size": 14,
    "out_hidden_size": 64,
    "projection_dim": 64,
    "num_position_embeddings": 16,
    "projection_intermediate_size": 64,
    "vocab_size": 128,
    "tie_word_embeddings": False,
}

# Per model type extra values (applied last); a nested dict applies to the sub-config of that name.
_OVERRIDES: dict[str, dict[str, Any]] = {
    "deepseek_ocr2": {
        "text_config": {
            "num_hidden_layers": 3,
            "first_k_dense_replace": 1,
            "mlp_layer_types": ["dense", "sparse", "sparse"],
        },
        "vision_config": {
            "sam_config": {
                "output_channels": 32,
                "downsample_channels": [64, 32],
                "global_attn_indexes": [0],
                "mlp_dim": 40,
            }
        },
    },
    "deepseek_v4": {"o_groups": 2, "o_lora_rank": 16},
    "dots1": {"n_shared_experts": 1},
    "ernie4_5_moe": {"moe_layer_end_index": 2},
    "ernie4_5_vl_moe": {
        # text experts 48, vision experts 40; M-RoPE sections must fit head_dim 16 (the model pre-rotates them)
        "text_config": {
            "moe_intermediate_size": [48, 40],
            "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default", "mrope_section": [3, 3, 2]},
        },
    },
    # DSA layers must be NoPE with num_key_value_heads == num_attention_heads; index_topk divisible by index_kpool
    "glm5_next": {
        "text_config": {
            "num_key_value_heads": 4,
            "index_topk": 16,
            "qk_rope_head_dim": 0,
            "qk_nope_head_dim": 16,
        }
    },
    "granitemoehybrid": {"mamba_n_heads": 8, "mamba_d_head": 16, "mamba_d_state": 16},  # heads * d_head = 2H
    "inkling2_text": {"swa_num_attention_heads": 4, "swa_num_key_value_heads": 2, "swa_head_dim": 16},
    # 4 layers: mamba + dense, attention + MoE, mamba + dense, attention + MoE
    "jamba": {
        "num_hidden_layers": 4,
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "mamba_dt_rank": 8,
    },
    "kimi_k25": {"vision_config": {"pos_emb_height": 8, "pos_emb_width": 8}},
    "laguna": {"num_attention_heads_per_layer": [4, 4, 4]},
    "lfm2_moe": {"layer_types": ["conv", "full_attention", "conv"]},
    "longcat_flash": {"zero_expert_num": 2},
    "minimax": {"block_size": 16},
    "minimax_m3_vl": {"projector_hidden_size": 64},
    "mllama": {
        "vision_config": {
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "intermediate_layers_indices": [0],
            "vision_output_dim": 64,
        },
    },
    # 4 layers: mamba, MoE, attention, MoE (the family's layer pattern, not "first + last")
    "nemotron_h": {
        "num_hidden_layers": 4,
        "layers_block_type": ["mamba", "moe", "attention", "moe"],
        "mamba_num_heads": 4,
        "mamba_head_dim": 16,
        "ssm_state_size": 16,
        "n_groups": 1,
    },
    "paligemma": {"projection_dim": 64},
    "qwen2_vl": {
        "vision_config": {"hidden_size": 64}
    },  # Qwen2-VL's vision "hidden_size" is the merger output
    "qwen3_omni_moe": {
        "thinker_config": {
            "audio_config": {
                "encoder_layers": 1,
                "encoder_attention_heads": 2,
                "encoder_ffn_dim": 40,
                "d_model": 32,
                "output_dim": 64,
                "downsample_hidden_size": 16,
            },
        },
        "talker_config": {
            # the talker modeling reads `spatial_merge_size` / `shared_expert_intermediate_size`, which its configs
            # lack in 5.23 (so even the default config does not build)
            "spatial_merge_size": 2,
            "text_config": {"shared_expert_intermediate_size": 48},
            "num_code_groups": 4,
            "thinker_hidden_size": 64,
            "accept_hidden_layer": 1,
            "code_predictor_config": {"num_code_groups": 4},
        },
        "code2wav_config": {
            "codebook_size": 64,
            "num_quantizers": 4,
            "decoder_dim": 32,
            "upsample_rates": [2, 2, 2, 2],
            "upsampling_ratios": [2, 2],
        },
    },
    "qwen4_exp_text": {
        # QSA indexer (layer 1 is "indexed_attention") and a per-layer n-gram embedding stored in shards on disk
        "indexer_n_heads": 2,
        "indexer_kv_heads": 1,
        "indexer_head_dim": 16,
        "indexer_budget": 8,
        "indexer_compress_ratio": 4,
        "ple_layer_ids": [1],
        "ngram_vocab_size_base": 100,
        "heads_per_ngram": 2,
        "make_ngram_vocab_size_divisible_by": 8,
        "split_ngram_parts": 4,
        "hc_lowrank": 16,
    },
    "step3p7": {"text_config": {"share_expert_dim": 48}},
}


def _has_dense_prefix(default: PretrainedConfig) -> bool:
    """Whether the family's first layer(s) use a dense MLP before the MoE layers."""
    for key in ("first_k_dense_replace", "num_dense_layers", "moe_layer_start_index"):
        if isinstance(getattr(default, key, None), int) and getattr(default, key) > 0:
            return True
    if 0 in (getattr(default, "mlp_only_layers", None) or []):
        return True
    kinds = getattr(default, "mlp_layer_types", None)
    return isinstance(kinds, list) and len(kinds) > 1 and kinds[0] == "dense" and kinds[-1] != "dense"


def _config_class(model_type: str) -> type[PretrainedConfig]:
    return CONFIG_MAPPING[model_type]


def _is_config(value: Any) -> TypeGuard[PretrainedConfig]:
    return isinstance(value, PretrainedConfig)


def _tiny_kwargs(
    default: PretrainedConfig, base: Mapping[str, Any], extra: Mapping[str, Any]
) -> dict[str, Any]:
    """kwargs for ``type(default)``: the ``base`` values the config knows, per-layer lists shrunk, sub-configs
    done recursively, then ``extra``. Families with dense first layers get 3 layers (1 dense + 2 MoE), so that
    two MoE layers can be told apart."""
    kwargs: dict[str, Any] = {k: v for k, v in base.items() if hasattr(default, k)}
    # Drop aliases (``attribute_map``) whose target is set too, e.g. DeepSeek-V4 ``intermediate_size`` ->
    # ``moe_intermediate_size``; an alias of a field not in ``base`` (LongCat ``moe_intermediate_size`` ->
    # ``expert_ffn_hidden_size``) stays.
    for alias, target in getattr(type(default), "attribute_map", {}).items():
        if alias in kwargs and target in kwargs:
            del kwargs[alias]
    if "num_hidden_layers" in kwargs and _has_dense_prefix(default):
        kwargs["num_hidden_layers"] = 3
        for key in ("first_k_dense_replace", "num_dense_layers", "moe_layer_start_index"):
            if hasattr(default, key):
                kwargs[key] = 1
        if getattr(default, "mlp_only_layers", None):
            kwargs["mlp_only_layers"] = [0]
    n_default = getattr(default, "num_hidden_layers", None)
    n_new = extra.get("num_hidden_layers", kwargs.get("num_hidden_layers"))
    # Per-layer lists: categorical ones (layer_types, mlp_layer_types, ...) become their distinct values in order
    # of appearance, the last one repeated, so that every kind appears (dense + sparse, linear + full attention);
    # numeric ones (layer indices, flags) keep their prefix.
    if isinstance(n_default, int) and isinstance(n_new, int) and n_default > 1:
        for key, value in vars(default).items():
            if key.startswith("_") or not isinstance(value, list) or len(value) != n_default:
                continue
            if all(isinstance(v, str) for v in value):
                kinds = list(dict.fromkeys(value))
                kwargs[key] = (kinds + [kinds[-1]] * n_new)[:n_new]
            else:
                kwargs[key] = value[:n_new]
    for key in list(vars(default)):
        sub = getattr(default, key, None)
        if _is_config(sub):
            sub_base = _VISION if (base is _VISION or "vision" in key or "visual" in key) else _TEXT
            sub_kwargs = _tiny_kwargs(sub, sub_base, extra.get(key, {}))
            sub_kwargs["model_type"] = sub.model_type
            kwargs[key] = sub_kwargs
    for key, value in extra.items():
        if not (isinstance(value, dict) and isinstance(kwargs.get(key), dict)):
            kwargs[key] = value
    return kwargs


def _set_everywhere(config: PretrainedConfig, **values: Any) -> None:
    """Set attributes on a config and on all its sub-configs."""
    for key, value in values.items():
        setattr(config, key, value)
    for key in list(vars(config)):
        sub = getattr(config, key, None)
        if _is_config(sub):
            _set_everywhere(sub, **values)


def tiny_config(model_type: str) -> PretrainedConfig:
    """Tiny config for ``model_type``: hidden 64, 4 heads (2 KV) of 16, 2 layers (3 = 1 dense + 2 MoE where the
    family starts with dense layers; jamba and nemotron_h 4, to have every layer kind), 4 experts (top-2) of
    intermediate 48 (families whose experts use ``intermediate_size`` -- mixtral, minimax, phimoe, olmoe, jamba,
    granitemoe*, gpt_oss, llama4, ... -- get 96), vocab 128, ``tie_word_embeddings=False`` on the config and every
    sub-config, vision towers of width 32 with 1 layer; ``config.dtype`` (alias ``torch_dtype``) is bfloat16.

    Built from ``_TEXT``/``_VISION`` (only the keys a config class has) plus ``_OVERRIDES[model_type]``."""
    outer, _, text = model_type.partition("+")
    if outer not in _MODEL_CLASSES or (text and text not in _MODEL_CLASSES):
        raise KeyError(f"unknown model type {model_type!r}; known: {', '.join(MODEL_TYPES)}")
    cls = _config_class(outer)
    default = cls()
    kwargs = _tiny_kwargs(default, _TEXT, _OVERRIDES.get(outer, {}))
    if text:  # the text model of another type, sized as if it were built alone
        text_default = _config_class(text)()
        kwargs["text_config"] = {
            **_tiny_kwargs(text_default, _TEXT, _OVERRIDES.get(text, {})),
            "model_type": text,
        }
    config = cls(**kwargs)
    _set_everywhere(config, tie_word_embeddings=False, dtype=DTYPE)
    return config


# ---------------------------------------------------------------------------------------------------------------
def _model_class(model_type: str) -> type[PreTrainedModel]:
    return getattr(transformers, _MODEL_CLASSES[model_type.partition("+")[0]])


def _fp32_pattern(model: PreTrainedModel, dtype: torch.dtype) -> re.Pattern[str] | None:
    """The names ``from_pretrained(dtype=...)`` keeps in float32 (``model._get_dtype_plan``), as one regex."""
    from transformers.core_model_loading import build_glob_alternation

    plan = model._get_dtype_plan(dtype)
    if not plan:
        return None
    alternation, _, _ = build_glob_alternation(list(plan))
    return alternation


def _random_values(shape: torch.Size, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Random values (std 0.05) in ``dtype``. Up to 1024 elements they are all distinct (drawn without
    replacement from distinct representable values); in larger tensors the rows (last dim >= 16) are distinct
    with overwhelming probability, so swapped experts / rows / halves are always detected."""
    n = int(torch.Size(shape).numel())
    if n <= 1024:
        pool = torch.unique((torch.randn(max(4 * n, 256), generator=gen) * 0.05).to(dtype).float())
        if pool.numel() >= n:
            return pool[torch.randperm(pool.numel(), generator=gen)[:n]].to(dtype).reshape(shape)
    return (torch.randn(n, generator=gen) * 0.05).to(dtype).reshape(shape)


def build_model(model_type: str, seed: int = 0) -> PreTrainedModel:
    """The tiny model of ``model_type`` (the class transformers uses for its checkpoints), in bf16 with the
    per-parameter dtypes ``from_pretrained(dtype=bf16)`` would give (``_keep_in_fp32_modules_strict`` params in
    float32; buffers/params the modeling code creates in float32 stay float32). Every floating parameter and
    persistent buffer is overwritten with seeded random values."""
    config = tiny_config(model_type)
    cls = _model_class(model_type)
    model = cls._from_config(config, dtype=DTYPE)
    fp32 = _fp32_pattern(model, DTYPE)
    gen = torch.Generator().manual_seed(seed)
    persistent = set(model.state_dict().keys())
    with torch.no_grad():
        tensors: list[tuple[str, torch.nn.Module, str, torch.Tensor, bool]] = []
        for mod_name, module in model.named_modules():
            for name, p in module.named_parameters(recurse=False):
                tensors.append((f"{mod_name}.{name}".lstrip("."), module, name, p, True))
            for name, b in module.named_buffers(recurse=False):
                tensors.append((f"{mod_name}.{name}".lstrip("."), module, name, b, False))
        seen: set[int] = set()
        for full_name, module, name, t, is_param in tensors:
            if full_name not in persistent or id(t) in seen or not t.is_floating_point():
                continue
            seen.add(id(t))
            dtype = torch.float32 if fp32 is not None and fp32.search(full_name) else t.dtype
            values = _random_values(t.shape, dtype, gen)
            if dtype == t.dtype:
                t.copy_(values)
            elif is_param:
                module._parameters[name] = torch.nn.Parameter(values, requires_grad=t.requires_grad)
            else:
                module._buffers[name] = values
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------------------------
_Fixup = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def _reshard(src_dir: Path, out_dir: Path, max_shard_bytes: int, fixup: _Fixup | None = None) -> None:
    """Copy ``src_dir`` (a save_pretrained output) to ``out_dir`` with the weights (after ``fixup``) re-sharded
    into files of at most ``max_shard_bytes`` (a larger tensor gets a shard of its own), in natural key order
    (``experts.2`` before ``experts.10``), plus ``model.safetensors.index.json`` and the other json files."""
    from transformers.core_model_loading import dot_natural_key

    files = sorted(src_dir.glob("*.safetensors"))
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():  # noqa: SIM118 - safe_open is not iterable
                tensors[k] = fh.get_tensor(k)
    if fixup is not None:
        tensors = fixup(tensors)
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in out_dir.glob("model*.safetensors*"):
        f.unlink()
    for f in src_dir.iterdir():
        if f.suffix == ".json" and not f.name.startswith("model.safetensors"):
            shutil.copy2(f, out_dir / f.name)
    shards: list[list[str]] = [[]]
    size = 0
    for k in sorted(tensors, key=dot_natural_key):
        nbytes = tensors[k].numel() * tensors[k].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += nbytes
    n = len(shards)
    weight_map: dict[str, str] = {}
    for i, keys in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file({k: tensors[k].contiguous() for k in keys}, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


@contextlib.contextmanager
def _hub_prefix_changes(model: PreTrainedModel) -> Iterator[None]:
    """While active, ``save_pretrained`` also reverts the ``PrefixChange(prefix_to_remove="vision_model")`` of
    CLIP/SigLIP-like vision towers (class ``CLIPVisionModel`` and its aliases), which transformers drops for
    models not made by ``from_pretrained`` (SEMANTICS §5): the Hub keeps ``vision_tower.vision_model.``."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import PrefixChange

    rules = get_model_conversion_mapping(model, add_legacy=False)
    keep = [r for r in rules if not isinstance(r, PrefixChange) or r.prefix_to_remove == "vision_model"]
    if not any(isinstance(r, PrefixChange) for r in keep):
        yield
        return
    had = "_weight_conversions" in vars(model)
    old = vars(model).get("_weight_conversions")
    vars(model)["_weight_conversions"] = keep
    try:
        yield
    finally:
        if had:
            vars(model)["_weight_conversions"] = old
        else:
            del vars(model)["_weight_conversions"]


def _hub_transposes(model: PreTrainedModel) -> _Fixup | None:
    """Fix-up for ``Transpose(check_dims=True)`` rules (qwen3_vl_moe): their reverse is a no-op on save, but the
    Hub stores those tensors transposed (``[E, H, 2I]`` / ``[E, I, H]``)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import Transpose, WeightConverter

    targets: list[tuple[re.Pattern[str], int, int]] = []
    for rule in get_model_conversion_mapping(model, add_legacy=False):
        if not isinstance(rule, WeightConverter):
            continue
        for op in rule.operations:
            if isinstance(op, Transpose) and op.check_dims:
                for src in rule.source_patterns:
                    targets.append((re.compile(re.escape(src) + r"$"), op.dim0, op.dim1))
    if not targets:
        return None

    def fix(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, t in tensors.items():
            for pat, d0, d1 in targets:
                if pat.search(k):
                    if (
                        t.shape[d0] == t.shape[d1]
                    ):  # transformers would not transpose it back (SEMANTICS §13.3)
                        raise ValueError(f"{k} {list(t.shape)}: Transpose(check_dims=True) is ambiguous")
                    t = t.transpose(d0, d1).contiguous()
                    break
            out[k] = t
        return out

    return fix


def save_published(model: PreTrainedModel, out_dir: Path, *, max_shard_bytes: int = 20_000) -> None:
    """Save ``model`` in the published (Hub) layout: ``save_pretrained`` (transformers' reverse conversion, e.g.
    per-expert ``w1/w2/w3``), plus the Hub fix-ups of SEMANTICS §11 (qwen3_vl_moe experts transposed, CLIP/SigLIP
    vision towers under ``vision_tower.vision_model.``), re-sharded into many small shards with an index."""
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        with _hub_prefix_changes(model):
            model.save_pretrained(tmp)
        _reshard(Path(tmp), Path(out_dir), max_shard_bytes, _hub_transposes(model))


def save_grouped(model: PreTrainedModel, out_dir: Path, *, max_shard_bytes: int = 20_000) -> None:
    """Save ``model`` in transformers' model layout (``save_original_format=False``: fused experts, model
    key names), re-sharded like :func:`save_published`."""
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        model.save_pretrained(tmp, save_original_format=False)
        _reshard(Path(tmp), Path(out_dir), max_shard_bytes)


# ---------------------------------------------------------------------------------------------------------------
class LoadingError(RuntimeError):
    """``from_pretrained`` reported missing/unexpected/mismatched keys, errors or conversion errors."""


_REPORTED = ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No transformers progress bars ("Loading weights", "Writing model shards") inside the block."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _capture_loading_info() -> Iterator[list[Any]]:
    """Record the raw ``LoadStateDictInfo`` of ``from_pretrained`` (before transformers filters missing and
    unexpected keys with ``_keys_to_ignore_on_load_*``); it also carries ``conversion_errors``, which
    ``output_loading_info`` leaves out."""
    captured: list[Any] = []
    original = PreTrainedModel._finalize_model_loading

    def wrapper(model, load_config, loading_info):
        captured.append(
            {
                "missing_keys": set(loading_info.missing_keys),
                "unexpected_keys": set(loading_info.unexpected_keys),
                "mismatched_keys": set(loading_info.mismatched_keys),
                "error_msgs": list(loading_info.error_msgs),
                "conversion_errors": dict(loading_info.conversion_errors),
                "tied": set(getattr(model, "all_tied_weights_keys", {}) or {}),
            }
        )
        return original(model, load_config, loading_info)

    setattr(PreTrainedModel, "_finalize_model_loading", staticmethod(wrapper))  # noqa: B010
    try:
        yield captured
    finally:
        setattr(PreTrainedModel, "_finalize_model_loading", staticmethod(original))  # noqa: B010


def load_state_dict(
    checkpoint_dir: Path, model_type: str, dtype: torch.dtype | str | None = None, *, dequantize: bool = True
) -> dict[str, torch.Tensor]:
    """``from_pretrained(checkpoint_dir)`` with the class of ``model_type``; returns ``model.state_dict()`` as
    contiguous CPU tensors (non-persistent buffers such as rotary ``inv_freq`` are not included).

    ``dtype=None`` passes nothing, i.e. transformers 5.23's default ``dtype="auto"``: the ``dtype`` of config.json
    (bfloat16 for checkpoints written here), else the first floating dtype of the weights. Whatever the main
    dtype, ``_keep_in_fp32_modules_strict`` params (e.g. ``e_score_correction_bias``) are float32 when it is
    bf16/fp16, and so are params the modeling code itself creates in float32; the non-strict
    ``_keep_in_fp32_modules`` only applies to float16.

    Raises :class:`LoadingError` if loading reports any missing key (other than tied ones; also those that
    ``_keys_to_ignore_on_load_missing`` hides), unexpected key (keys matching ``_keys_to_ignore_on_load_unexpected``,
    e.g. DeepSeek's MTP layer ``model.layers.61.*``, are dropped by transformers on purpose and allowed), mismatched
    shape, error message or conversion error -- a silently random-initialised weight would make the oracle
    worthless. Pre-quantized checkpoints (``quantization_config`` in config.json) are loaded with
    ``dequantize=True`` (see :func:`build_quantized`); FP8 ones with ``dequantize=False`` are loaded quantized
    (float8 weights and their ``*_scale_inv`` grids, experts fused): transformers only does that with a GPU, so
    its GPU check is answered "yes" for the duration of the load -- loading copies tensors and runs no kernel.
    """
    kwargs: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
    quant = _read_config(Path(checkpoint_dir)).get("quantization_config")
    if quant is not None and not dequantize:
        return _load_fp8_kept(Path(checkpoint_dir), model_type, quant, kwargs)
    if quant is not None:
        kwargs["quantization_config"] = _dequantize_config(quant)
    model = _load_checked(_model_class(model_type), Path(checkpoint_dir), **kwargs)
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def _load_fp8_kept(
    checkpoint_dir: Path, model_type: str, quant: Mapping[str, Any], kwargs: dict[str, Any]
) -> dict[str, torch.Tensor]:
    from unittest import mock

    from transformers.utils.quantization_config import FineGrainedFP8Config

    if quant.get("quant_method") != "fp8":
        raise ValueError("only FP8 checkpoints can be loaded quantized on a CPU")
    config = FineGrainedFP8Config(weight_block_size=tuple(quant["weight_block_size"]), dequantize=False)
    with (
        mock.patch("torch.cuda.is_available", lambda: True),
        mock.patch("torch.cuda.get_device_capability", lambda *a, **k: (9, 0)),
    ):
        model = _load_checked(
            _model_class(model_type), checkpoint_dir, quantization_config=config, device_map="cpu", **kwargs
        )
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def _read_config(checkpoint_dir: Path) -> dict[str, Any]:
    path = checkpoint_dir / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _load_checked(cls: type[PreTrainedModel], checkpoint_dir: Path, **kwargs: Any) -> PreTrainedModel:
    """``cls.from_pretrained(checkpoint_dir, **kwargs)``, raising :class:`LoadingError` on any loading problem."""
    with _capture_loading_info() as captured, _quiet():
        try:
            model, info = cast(
                tuple[PreTrainedModel, dict[str, Any]],
                cls.from_pretrained(str(checkpoint_dir), output_loading_info=True, **kwargs),
            )
        except RuntimeError as exc:  # transformers raises for conversion errors / mismatched shapes
            detail = {k: v for k, v in (captured[-1] if captured else {}).items() if v and k != "tied"}
            raise LoadingError(f"loading {checkpoint_dir} as {cls.__name__}: {exc} {detail}") from exc
    raw = captured[-1] if captured else {}
    problems = [f"{key}: {sorted(map(str, info[key]))}" for key in _REPORTED if info.get(key)]
    if raw:
        # a missing key excused by `_keys_to_ignore_on_load_missing` is still a randomly initialised weight
        missing = raw["missing_keys"] - raw["tied"] - set(info.get("missing_keys", ()))
        if missing:
            problems.append(f"missing (ignored by transformers): {sorted(missing)}")
        if raw["conversion_errors"]:
            problems.append(f"conversion_errors: {raw['conversion_errors']}")
    if problems:
        raise LoadingError(f"loading {checkpoint_dir} as {cls.__name__}: " + "; ".join(problems))
    return model


MODEL_TYPES: tuple[str, ...] = tuple(_MODEL_CLASSES)


# ---------------------------------------------------------------------------------------------------------------
# Pre-quantized checkpoints (SEMANTICS §8). transformers loads them dequantized on CPU; here the dequantization is
# forced with ``dequantize=True`` so that the result does not depend on whether a GPU is present.
QUANTIZED_KINDS: tuple[str, ...] = ("fp8_deepseek_v3", "fp8_qwen3_moe", "mxfp4_gpt_oss")

_FP8_BLOCK = (
    8,
    8,
)  # tiny stand-in for the Hub's [128, 128]; every quantized dim of the tiny models divides by 8
_FP8_MAX = 448.0  # largest finite float8_e4m3fn
_MXFP4_LUT = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def _quantized_model_type(kind: str) -> str:
    if kind not in QUANTIZED_KINDS:
        raise KeyError(f"unknown quantized kind {kind!r}; known: {', '.join(QUANTIZED_KINDS)}")
    return kind.split("_", 1)[1]


def _dequantize_config(quant: Mapping[str, Any]) -> Any:
    """A ``from_pretrained(quantization_config=...)`` that only switches the checkpoint's config to dequantize."""
    from transformers.utils.quantization_config import FineGrainedFP8Config, Mxfp4Config

    method = quant.get("quant_method")
    if method == "fp8":
        return FineGrainedFP8Config(weight_block_size=tuple(quant["weight_block_size"]), dequantize=True)
    if method == "mxfp4":
        return Mxfp4Config(dequantize=True)
    raise ValueError(f"unsupported quant_method {method!r}")


def _fp8_quantize(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-scaled FP8 of a 2-D weight: ``(float8_e4m3fn weight, float32 weight_scale_inv [rows/bm, cols/bn])``
    with ``weight ~= fp8 * scale_inv`` per block (scale = block amax / 448, as DeepSeek's checkpoints)."""
    rows, cols = weight.shape
    bm, bn = block
    if rows % bm or cols % bn:
        raise ValueError(f"{list(weight.shape)} is not divisible by the FP8 block {block}")
    w = weight.float().reshape(rows // bm, bm, cols // bn, bn)
    scale = (w.abs().amax(dim=(1, 3)) / _FP8_MAX).clamp(min=2.0**-20)
    q = (w / scale[:, None, :, None]).to(torch.float8_e4m3fn).reshape(rows, cols)
    return q, scale


def _fp8_dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    rows, cols = q.shape
    sr, sc = scale.shape
    w = q.float().reshape(sr, rows // sr, sc, cols // sc) * scale.float()[:, None, :, None]
    return w.to(dtype).reshape(rows, cols)


def _fp8_is_quantized(key: str, t: torch.Tensor) -> bool:
    """Which published tensors the Hub's FP8 checkpoints store in FP8: the 2-D linear weights of the decoder
    layers (attention, dense/shared/routed experts), not embeddings, lm_head, norms or the MoE router."""
    return (
        t.dim() == 2
        and t.is_floating_point()
        and key.startswith("model.layers.")
        and key.endswith(".weight")
        and not key.endswith(("mlp.gate.weight", "norm.weight"))
    )


def _mxfp4_random(
    shape: tuple[int, int, int], gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random MXFP4 experts of matrix shape ``[E, out, in]``: ``(blocks uint8 [E, out, in/32, 16], scales uint8
    [E, out, in/32], exact float32 values [E, out, in])``; low nibble = even element, value = LUT * 2**(s - 127)."""
    e, out, inn = shape
    codes = torch.randint(0, 16, (e, out, inn), generator=gen, dtype=torch.uint8)
    scales = torch.randint(120, 131, (e, out, inn // 32), generator=gen, dtype=torch.uint8)
    lut = torch.tensor(_MXFP4_LUT, dtype=torch.float32)
    values = lut[codes.long()] * torch.exp2(scales.float() - 127.0).repeat_interleave(32, dim=-1)
    pairs = codes.reshape(e, out, inn // 32, 16, 2)
    blocks = pairs[..., 0] | (pairs[..., 1] << 4)
    return blocks.contiguous(), scales, values


def build_quantized(
    kind: str, out_dir: Path, *, seed: int = 0, max_shard_bytes: int = 20_000
) -> dict[str, torch.Tensor]:
    """Write a tiny pre-quantized checkpoint in the published layout to ``out_dir`` and return the expected
    ``state_dict()`` of ``from_pretrained(out_dir)`` (dequantized), computed independently of transformers'
    quantizer code (the published checkpoint with each quantized tensor replaced by its dequantized value, loaded
    without quantization).

    * ``fp8_deepseek_v3`` / ``fp8_qwen3_moe``: per-expert (and attention/dense/shared) ``weight`` in
      ``float8_e4m3fn`` + ``weight_scale_inv`` float32 block grid ``[out/8, in/8]``; config
      ``quantization_config = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
      "weight_block_size": [8, 8]}``.
    * ``mxfp4_gpt_oss``: ``mlp.experts.{gate_up,down}_proj_blocks`` uint8 ``[E, out, in/32, 16]`` +
      ``_scales`` uint8 ``[E, out, in/32]`` (biases stay bf16), ``quantization_config = {"quant_method": "mxfp4",
      "modules_to_not_convert": [...]}`` as gpt-oss on the Hub.

    :func:`load_state_dict` loads such a directory with the dequantization forced on.
    """
    model_type = _quantized_model_type(kind)
    model = build_model(model_type, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    out_dir = Path(out_dir)
    dequantized: dict[str, torch.Tensor] = {}

    def quantize(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key, t in tensors.items():
            if kind.startswith("fp8") and _fp8_is_quantized(key, t):
                q, scale = _fp8_quantize(t, _FP8_BLOCK)
                out[key], out[key + "_scale_inv"] = q, scale
                dequantized[key] = _fp8_dequantize(q, scale, t.dtype)
            elif kind.startswith("mxfp4") and re.search(r"mlp\.experts\.(gate_up|down)_proj$", key):
                # model/published layout is [E, in, out]; MXFP4 quantizes the [E, out, in] matrix along "in"
                e, inn, outn = t.shape
                blocks, scales, values = _mxfp4_random((e, outn, inn), gen)
                out[key + "_blocks"], out[key + "_scales"] = blocks, scales
                dequantized[key] = values.transpose(1, 2).to(t.dtype).contiguous()
            else:
                out[key] = t
        return out

    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "published"
        save_published(model, plain, max_shard_bytes=10**12)
        _reshard(plain, out_dir, max_shard_bytes, quantize)
        # expected: the same published checkpoint with the dequantized values, loaded without quantization
        expected_dir = Path(tmp) / "expected"
        _reshard(plain, expected_dir, 10**12, lambda ts: {k: dequantized.get(k, v) for k, v in ts.items()})
        expected = load_state_dict(expected_dir, model_type)
    config = _read_config(out_dir)
    if kind.startswith("fp8"):
        config["quantization_config"] = {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": list(_FP8_BLOCK),
        }
    else:
        config["quantization_config"] = {
            "modules_to_not_convert": [
                "model.layers.*.self_attn",
                "model.layers.*.mlp.router",
                "model.embed_tokens",
                "lm_head",
            ],
            "quant_method": "mxfp4",
        }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return expected


# ---------------------------------------------------------------------------------------------------------------
def _compare(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> list[str]:
    """Differences between two state dicts (names, dtypes, shapes, bits)."""
    errors = []
    if set(expected) != set(got):
        only_e, only_g = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        errors.append(f"names differ: only expected {only_e[:5]}, only loaded {only_g[:5]}")
    for k in sorted(set(expected) & set(got)):
        a, b = expected[k], got[k]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            errors.append(f"{k}: expected {a.dtype}{list(a.shape)}, loaded {b.dtype}{list(b.shape)}")
    return errors


def _shard_count(checkpoint_dir: Path) -> int:
    return len(
        set(json.loads((checkpoint_dir / "model.safetensors.index.json").read_text())["weight_map"].values())
    )


def self_check(name: str) -> list[str]:
    """Problems found for one model type (or quantized kind); empty if all is well.

    Model type: ``build_model -> save_published -> load_state_dict`` and ``build_model -> save_grouped ->
    load_state_dict`` must both give the built model's state dict bit for bit (names, dtypes, values), in several
    shards. Quantized kind: ``build_quantized``'s expected state dict must equal transformers' dequantized load.
    """
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ckpt"
        if name in QUANTIZED_KINDS:
            expected = build_quantized(name, out)
            got = load_state_dict(out, _quantized_model_type(name))
            errors += [f"[quantized] {e}" for e in _compare(expected, got)]
            if _shard_count(out) < 2:
                errors.append("[quantized] a single shard")
            return errors
        model = build_model(name)
        expected = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        for layout, save in (("published", save_published), ("grouped", save_grouped)):
            save(model, out)
            errors += [f"[{layout}] {e}" for e in _compare(expected, load_state_dict(out, name))]
            if _shard_count(out) < 2:
                errors.append(f"[{layout}] a single shard")
    return errors


def _main(argv: list[str]) -> int:
    """``python tests/support/tiny_models.py [name ...]``: self-check the given (default: all) model types and kinds."""
    transformers.logging.set_verbosity_error()
    names = argv or [*MODEL_TYPES, *QUANTIZED_KINDS]
    start = time.perf_counter()
    failed: list[str] = []
    slowest = (0.0, "")
    for name in names:
        t0 = time.perf_counter()
        try:
            errors = self_check(name)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next one
            errors = [f"{type(exc).__name__}: {str(exc)[:2000]}"]
        seconds = time.perf_counter() - t0
        slowest = max(slowest, (seconds, name))
        print(
            f"{'FAIL' if errors else 'OK  '} {name:20s} {seconds:5.2f}s {'; '.join(errors[:5])}", flush=True
        )
        if errors:
            failed.append(name)
    total = time.perf_counter() - start
    print(
        f"{len(names) - len(failed)}/{len(names)} OK in {total:.1f}s (slowest {slowest[1]} {slowest[0]:.2f}s)"
    )
    if failed:
        print("failed:", " ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
