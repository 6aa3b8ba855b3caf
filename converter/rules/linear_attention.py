"""Hybrid linear-attention models: the forget-gate parameters move under ``self_attn.forget_gate`` and the three
short convolutions (``q_conv1d``, ``k_conv1d``, ``v_conv1d``) are concatenated into one ``conv1d`` (dim 0).
Their MoE layers use the Qwen2-MoE (bailing_hybrid, glm5_next) or Mixtral (kimi_linear) expert layout."""

from .common import E_SCORE, MIXTRAL, QWEN2_MOE, merge_experts
from .core import Convert, Rename, Rule
from .ops import Concat
from .registry import Nested, alias, register


def fused_conv1d(prefix: str = "") -> Convert:
    p = f"{prefix}." if prefix else ""
    return Convert(
        [f"{p}q_conv1d.weight", f"{p}k_conv1d.weight", f"{p}v_conv1d.weight"],
        f"{p}conv1d.weight",
        [Concat(0)],
    )


FORGET_GATE = (
    Rename("self_attn.f_a_proj", "self_attn.forget_gate.f_a_proj"),
    Rename("self_attn.f_b_proj", "self_attn.forget_gate.f_b_proj"),
    Rename("self_attn.dt_bias", "self_attn.forget_gate.dt_bias"),
    Rename("self_attn.A_log", "self_attn.forget_gate.A_log"),
)

register(
    "bailing_hybrid",
    (
        *QWEN2_MOE,
        Rename("^model.word_embeddings", "^model.embed_tokens"),
        Rename("attention", "self_attn"),
        Rename("self_attn.f_proj", "self_attn.forget_gate.f_proj"),
        *FORGET_GATE[2:],
        fused_conv1d(),
        Rename("self_attn.dense", "self_attn.o_proj"),
        Rename("mlp.gate.expert_bias", "mlp.gate.e_score_correction_bias"),
    ),
    family="linear_attention",
    keep_fp32=(*E_SCORE, "conv1d", "dt_bias", "A_log"),
)

register("kimi_linear", (*FORGET_GATE, fused_conv1d("self_attn"), *MIXTRAL), family="linear_attention")

HYPER_CONNECTIONS = tuple(
    Rename(f"hc_{part}_{p}", f"{part}_hc.{p}") for part in ("attn", "ffn") for p in ("fn", "base", "scale")
)
GLM5_NEXT: tuple[Rule, ...] = (*FORGET_GATE, *HYPER_CONNECTIONS, *QWEN2_MOE, fused_conv1d("self_attn"))
GLM5_FP32 = (
    *E_SCORE,
    "conv1d",
    "dt_bias",
    "A_log",
    "attn_hc.base",
    "attn_hc.scale",
    "ffn_hc.base",
    "ffn_hc.scale",
)
register("glm5_next_text", GLM5_NEXT, family="linear_attention", keep_fp32=GLM5_FP32)
# the text model (model_type glm5_next_text) nested under model.language_model brings the same rules again
register(
    "glm5_next",
    GLM5_NEXT,
    family="linear_attention",
    submodels=[Nested("model.language_model", "glm5_next_text")],
    keep_fp32=GLM5_FP32,
)

register(
    "olmo_hybrid",
    (
        Rename("attention_layer_norm", "input_layernorm"),
        Rename("feedforward_layer_norm", "post_attention_layernorm"),
        fused_conv1d("linear_attn"),
    ),
    family="linear_attention",
)

__all__ = ["FORGET_GATE", "HYPER_CONNECTIONS", "alias", "fused_conv1d", "merge_experts"]
