"""Checkpoints published in their authors' own naming, mapped to transformers' by many renames: DeepSeek-V4,
Mistral-Large-4 (the consolidated Mistral layout, with a Pixtral-style vision encoder whose q/k rows are permuted
for RoPE), MiniMax-M3-VL and HY-V4. Experts are per-expert ``w1``/``w2``/``w3`` (Mixtral style) where they exist.

Where transformers' unanchored patterns would also hit names they must not (DeepSeek-V4's ``.norm.`` is meant for
attention norms, not ``model.norm``; transformers falls back to the original name when the result is not a model
parameter), the rules name the places precisely instead.
"""

from .common import EXPERTS_W1_W3
from .core import Convert, Rename
from .ops import Concat, PermuteForRope
from .registry import Nested, register


def _alt(parts: tuple[str, ...], source: str, target: str) -> tuple[Rename, ...]:
    """One rename per alternative (transformers writes ``(a|b).w1`` -> ``\\1.gate_proj``)."""
    return tuple(Rename(source.format(p), target.format(p)) for p in parts)


HC = tuple(
    Rename(f"hc_{part}_{p}", f"{part}_hc.{p}") for part in ("attn", "ffn") for p in ("fn", "base", "scale")
)

register(
    "deepseek_v4",
    (
        Rename("attn", "self_attn"),
        Rename("ffn", "mlp"),
        Rename("indexer.compressor", "compressor.indexer"),
        Rename("^embed.weight", "^embed_tokens.weight"),
        Rename("^head.weight", "^lm_head.weight"),
        *(Rename(f"^hc_head_{p}", f"^hc_head.hc_{p}") for p in ("fn", "base", "scale")),
        Rename("attn_norm", "input_layernorm"),
        Rename("ffn_norm", "post_attention_layernorm"),
        *HC,
        Rename("attn_sink", "sinks"),
        Rename("indexer.weights_proj", "compressor.indexer.scorer.weights_proj"),
        Rename("indexer.wq_b", "compressor.indexer.q_b_proj"),
        # transformers: `\.norm\.` -> `.kv_norm.` (and falls back for model.norm); the attention norms only
        Rename("self_attn.norm", "self_attn.kv_norm"),
        Rename("compressor.norm", "compressor.kv_norm"),
        Rename("indexer.norm", "indexer.kv_norm"),
        Rename("ape", "position_bias"),
        Rename("wq_a", "q_a_proj"),
        Rename("self_attn.wq_b", "self_attn.q_b_proj"),
        Rename("wkv", "kv_proj"),
        Rename("wgate", "gate_proj"),
        Rename("wo_a", "o_a_proj"),
        Rename("wo_b", "o_b_proj"),
        Rename("q_norm", "q_a_norm"),
        Rename("gate.bias", "gate.e_score_correction_bias"),
        Rename("shared_experts.w1", "shared_experts.gate_proj"),
        Rename("shared_experts.w2", "shared_experts.down_proj"),
        Rename("shared_experts.w3", "shared_experts.up_proj"),
        *EXPERTS_W1_W3,
    ),
    family="native_layouts",
    keep_fp32=(
        "attn_hc",
        "ffn_hc",
        "hc_head",
        "sinks",
        "position_bias",
        "e_score_correction_bias",
        "q_a_norm",
        "kv_norm",
        "input_layernorm",
        "post_attention_layernorm",
        "norm",
    ),
    keep_fp32_for_fp16=(
        "self_attn.compressor.kv_proj",
        "self_attn.compressor.gate_proj",
        "self_attn.compressor.indexer.kv_proj",
        "self_attn.compressor.indexer.gate_proj",
        "self_attn.compressor.indexer.scorer.weights_proj",
    ),
)

# the text model (model_type mistral_large4_text), nested under model.language_model in the multimodal model
register(
    "mistral_large4_text",
    (
        Rename("attention", "self_attn"),
        Rename("wq", "q_proj"),
        Rename("wkv_a_with_mqa", "kv_a_proj_with_mqa"),
        Rename("wkv_b", "kv_b_proj"),
        Rename("attention_norm", "input_layernorm"),
        Rename("ffn_norm", "post_attention_layernorm"),
        Rename("kv_a_norm", "kv_a_layernorm"),
        Rename("feed_forward", "mlp"),
        Rename("gate", "mlp.gate"),
        Rename("experts", "mlp.experts"),
        Rename("shared_experts", "mlp.shared_experts"),
        Rename("ssmax_scaling.s", "softmax_scaling.scale"),
        Rename("ssmax_scaling.b", "softmax_scaling.bias"),
        *EXPERTS_W1_W3,
    ),
    family="native_layouts",
    keep_fp32=("rotary_emb", "mlp.gate.weight"),
    keep_fp32_for_fp16=("indexer.weights_proj",),
)
VISION_ROPE = PermuteForRope(subconfig_key="vision_config")
register(
    "mistral_large4",
    (
        Rename("^vision_encoder", "^model.vision_tower"),
        Rename("^tok_embeddings", "^model.language_model.embed_tokens"),
        Rename("^lerope.alpha", "^model.language_model.rotary_emb.alpha"),
        Rename("^layers", "^model.language_model.layers"),
        Rename("^norm", "^model.language_model.norm"),
        Rename("^output", "^lm_head"),
        Rename("^pre_mm_projector_norm", "^model.multi_modal_projector.norm"),
        Rename("^patch_merger", "^model.multi_modal_projector.patch_merger"),
        Rename("^vision_language_adapter.w_in", "^model.multi_modal_projector.linear_1"),
        Rename("^vision_language_adapter.w_out", "^model.multi_modal_projector.linear_2"),
        Rename("wv", "v_proj"),
        Rename("wo", "o_proj"),
        *_alt(("feed_forward", "shared_experts"), "{}.w1", "{}.gate_proj"),
        *_alt(("feed_forward", "shared_experts"), "{}.w2", "{}.down_proj"),
        *_alt(("feed_forward", "shared_experts"), "{}.w3", "{}.up_proj"),
        Convert("attention.wq", "attention.q_proj", [VISION_ROPE]),
        Convert("attention.wk", "attention.k_proj", [VISION_ROPE]),
    ),
    family="native_layouts",
    submodels=[Nested("model.language_model", "mistral_large4_text")],
    keep_fp32=("rotary_emb", "mlp.gate.weight"),
    keep_fp32_for_fp16=("indexer.weights_proj",),
)

register(
    "minimax_m3_vl",
    (
        Rename("^language_model.lm_head", "^lm_head"),
        Rename("^language_model.model", "^model.language_model"),
        Rename(
            "^vision_tower.vision_model.embeddings.patch_embedding", "^model.vision_tower.embeddings.proj"
        ),
        Rename("^vision_tower.vision_model.encoder.layers", "^model.vision_tower.layers"),
        Rename("^vision_tower.vision_model.pre_layrnorm", "^model.vision_tower.pre_layrnorm"),
        Rename("^multi_modal_projector.linear_1", "^model.multi_modal_projector.linear_1"),
        Rename("^multi_modal_projector.linear_2", "^model.multi_modal_projector.linear_2"),
        Rename("^patch_merge_mlp.linear_1", "^model.multi_modal_projector.merge_linear_1"),
        Rename("^patch_merge_mlp.linear_2", "^model.multi_modal_projector.merge_linear_2"),
        *_alt(("experts", "gate", "shared_experts"), "block_sparse_moe.{}", "mlp.{}"),
        Rename("block_sparse_moe.e_score_correction_bias", "mlp.gate.e_score_correction_bias"),
        *(
            Rename(f"self_attn.index_{p}", f"self_attn.indexer.{p}")
            for p in ("q_proj", "k_proj", "q_norm", "k_norm")
        ),
        *EXPERTS_W1_W3,
        Convert(["gate_proj.weight", "up_proj.weight"], "gate_up_proj.weight", [Concat(0)]),
    ),
    family="native_layouts",
)

register(
    "hy_v4",
    (
        # transformers: `\.hc_pre\.hc_` -> `.hc_` (a partial name); the three hyper-connection blocks by name
        *(Rename(f"hc_pre.hc_{b}", f"hc_{b}") for b in ("head", "attn_layer", "mlp_layer")),
        Rename("learnable_sink_param", "sinks"),
        Rename("linear_gate", "gate_proj"),
        *(Rename(f"hc_attn_layer.hc_{p}", f"attn_hc.{p}") for p in ("fn", "base", "scale")),
        *(Rename(f"hc_mlp_layer.hc_{p}", f"ffn_hc.{p}") for p in ("fn", "base", "scale")),
        *(Rename(f"hc_head_{p}", f"hc_{p}") for p in ("fn", "base", "scale")),
    ),
    family="native_layouts",
    keep_fp32=(
        "e_score_correction_bias",
        "fn",
        "scale",
        "base",
        "hc_fn",
        "hc_scale",
        "hc_base",
        "weights_proj",
        "k_norm",
        "sinks",
        "lm_head",
    ),
)
