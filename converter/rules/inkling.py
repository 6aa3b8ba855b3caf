"""Inkling: experts fused on disk with gate/up rows interleaved (``w13_weight``: g0, u0, g1, u1, ...), which
``Interleave`` turns into gate rows then up rows; per-layer attention-residual queries stored one layer off."""

from .core import Convert, Rename
from .ops import Chunk, Interleave
from .registry import Nested, register

SHORT_CONVS = ("post_attention_convolution", "post_mlp_convolution", "k_sconv", "v_sconv")

register(
    "inkling2_text",
    (
        Rename("model.llm.unembed.weight", "lm_head.weight"),
        Rename("model.llm", "model"),
        Rename("embed.weight", "embed_tokens.weight"),
        Rename("embed_norm", "embed_tokens.embed_norm"),
        Convert("mlp.experts.w13_weight", "mlp.experts.gate_up_proj", [Interleave(1)]),
        Convert("mlp.experts.w13_weight_scale", "mlp.experts.gate_up_proj_scale_inv", [Interleave(1)]),
        Rename("mlp.experts.w2_weight", "mlp.experts.down_proj"),
        Rename("mlp.experts.w2_weight_scale", "mlp.experts.down_proj_scale_inv"),
        Rename("mlp.gate.bias", "mlp.gate.e_score_correction_bias"),
        Rename("attn.wq_du", "self_attn.q_proj"),
        Rename("attn.wk_dv", "self_attn.k_proj"),
        Rename("attn.wv_dv", "self_attn.v_proj"),
        Rename("attn.wr_du", "self_attn.r_proj"),
        Rename("attn.wo_ud", "self_attn.o_proj"),
        Rename("attn.gate_attn", "self_attn.gate_proj"),
        Rename("attn.attn_sink_proj", "self_attn.sink_proj"),
        *(
            Rename(f"attn.{p}", f"self_attn.{p}")
            for p in ("q_l2_clip", "k_l2_clip", "rel_l2_clip", "k_sconv", "v_sconv", "rel_logits_proj")
        ),
        Rename("attn_sconv", "post_attention_convolution"),
        Rename("mlp_sconv", "post_mlp_convolution"),
        # transformers: `(convolution|sconv)\.weight(?!_)` etc., i.e. names ending in convolution / sconv
        *(Rename(f"{c}.weight", f"{c}.conv1d.weight") for c in SHORT_CONVS),
        *(Rename(f"{c}.static_w", f"{c}.static_weight") for c in SHORT_CONVS),
        *(Rename(f"{c}.weight_proj", f"{c}.weight_proj.weight") for c in SHORT_CONVS),
        Rename("mlp_norm", "post_attention_layernorm"),
        Rename("attn_norm", "input_layernorm"),
        *(Rename(f"{p}_input_norm", f"{p}_input_layernorm") for p in "qkv"),
        # attention queries are stored from layer 0 but belong to layers 1..N-1
        Rename("attn_res.attn_queries.*", "layers.*.attention_input.query", index_offset=1),
        Rename("attn_res.mlp_queries.*", "layers.*.mlp_input.query"),
        Rename("attn_res.output_query", "final_input.query"),
    ),
    family="inkling",
    keep_fp32=(
        "e_score_correction_bias",
        "mlp.gate.weight",
        "post_attention_convolution",
        "post_mlp_convolution",
        "k_sconv.conv1d",
        "v_sconv.conv1d",
        "attention_input",
        "mlp_input",
        "final_input",
    ),
)

VISION_LAYER = "vision_tower.layers.*"
register(
    "inkling2",
    (
        Rename("model.llm.unembed.weight", "lm_head.weight"),
        Rename("model.llm.", "model.language_model"),
        Rename("model.visual.backbone.embeddings.", "model.vision_tower.embeddings"),
        Rename(
            "vision_tower.embeddings.position_embedding", "vision_tower.embeddings.position_embedding.weight"
        ),
        Rename("model.visual.backbone.ln_pre.", "model.vision_tower.pre_layernorm"),
        Rename("model.visual.backbone.layers.", "model.vision_tower.layers"),
        Rename("model.visual.proj_in.", "model.vision_tower.merger.linear_1"),
        Rename("model.visual.proj_out.", "model.vision_tower.merger.linear_2"),
        Rename(f"{VISION_LAYER}.ln_1.", f"{VISION_LAYER}.layernorm_before"),
        Rename(f"{VISION_LAYER}.ln_2.", f"{VISION_LAYER}.layernorm_after"),
        Rename(f"{VISION_LAYER}.mlp.c_fc.", f"{VISION_LAYER}.mlp.fc1"),
        Rename(f"{VISION_LAYER}.mlp.c_proj.", f"{VISION_LAYER}.mlp.fc2"),
        Rename(f"{VISION_LAYER}.ls_1.gamma", f"{VISION_LAYER}.lambda_1"),
        Rename(f"{VISION_LAYER}.ls_2.gamma", f"{VISION_LAYER}.lambda_2"),
    ),
    family="inkling",
    submodels=[Nested("model.language_model", "inkling2_text")],
)
register(
    "inkling_mm_model",
    (
        Rename("model.llm.layers", "model.language_model.layers"),
        Rename("model.llm.embed_norm.weight", "model.language_model.embed_tokens.embed_norm.weight"),
        Rename("model.llm.embed.weight", "model.language_model.embed_tokens.weight"),
        Rename("model.llm.norm.weight", "model.language_model.norm.weight"),
        Rename("model.llm.unembed.weight", "lm_head.weight"),
        Rename("model.audio.", "model.audio_tower"),
        Rename("model.visual", "model.vision_tower"),
        Rename("vision_tower.layers.linear_*", "vision_tower.encoder_layers.*.projection"),
        Rename("vision_tower.layers.norm_*", "vision_tower.encoder_layers.*.layer_norm"),
        Rename("audio_tower.encoder.weight", "audio_tower.embed_audio_tokens.embed_audio_tokens.weight"),
        Rename("audio_tower.final_norm.weight", "audio_tower.norm.weight"),
        Convert("shared_w13_weight", ["gate_proj", "up_proj"], [Interleave(1), Chunk(1)]),
        Rename("shared_w2_weight", "down_proj"),
        Convert("mlp.experts.w13_weight", "mlp.experts.gate_up_proj", [Interleave(1)]),
        Rename("mlp.experts.w2_weight", "mlp.experts.down_proj"),
        Convert(
            "mlp.w13_dn.weight", ["mlp.gate_proj.weight", "mlp.up_proj.weight"], [Interleave(0), Chunk(0)]
        ),
        Rename("mlp.w2_md.weight", "mlp.down_proj.weight"),
        Rename("mlp.gate.bias", "mlp.gate.e_score_correction_bias"),
        Rename("attn.wq_du", "self_attn.q_proj"),
        Rename("attn.wk_dv", "self_attn.k_proj"),
        Rename("attn.wv_dv", "self_attn.v_proj"),
        Rename("attn.wr_du", "self_attn.r_proj"),
        Rename("attn.wo_ud", "self_attn.o_proj"),
        Rename(".attn.q_norm", "self_attn.q_norm"),
        Rename(".attn.k_norm", "self_attn.k_norm"),
        Rename(".attn.k_sconv", "self_attn.k_sconv.conv1d"),
        Rename(".attn.v_sconv", "self_attn.v_sconv.conv1d"),
        Rename(".attn.rel_logits_proj", "self_attn.rel_logits_proj"),
        Rename("attn_sconv.weight", "attn_sconv.conv1d.weight"),
        Rename("mlp_sconv.weight", "mlp_sconv.conv1d.weight"),
        Rename("mlp_norm", "post_attention_layernorm"),
        Rename("attn_norm", "input_layernorm"),
    ),
    family="inkling",
)
