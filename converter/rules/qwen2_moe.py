"""Qwen2-MoE-style MoE: ``mlp.experts.{e}.gate_proj/up_proj/down_proj.weight``; shared experts untouched.

Most DeepSeek/GLM/OLMoE/... types reuse these rules unchanged (transformers' ``_MODEL_TO_CONVERSION_PATTERN``).
"""

from .common import E_SCORE, QWEN2_MOE
from .core import Rename
from .registry import alias, register

register("qwen2_moe", QWEN2_MOE, family="qwen2_moe")

# model_type -> (transformers' _keep_in_fp32_modules_strict, _keep_in_fp32_modules (fp16 only))
ALIASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "qwen3_moe": ((), ()),
    "qwen3_next": ((), ()),
    "deepseek_v2": ((), ()),
    "deepseek_v3": (E_SCORE, ()),
    "deepseek_v32": (E_SCORE, ("indexer.weights_proj",)),
    "dots1": (E_SCORE, ()),
    "glm4_moe": (E_SCORE, ()),
    "glm4_moe_lite": (E_SCORE, ()),
    "glm_moe_dsa": (E_SCORE, ("indexer.weights_proj",)),
    "glm4v_moe": (E_SCORE, ()),
    "longcat_flash": ((), ("classifier.weight",)),
    "solar_open": (E_SCORE, ()),
    "mellum": ((), ()),
    "beam": ((*E_SCORE, "mlp.gate.weight"), ()),
    "hunyuan_v1_moe": (("gate.wg",), ()),  # the modeling code creates the router in float32
    "flex_olmo": ((), ()),
    "olmoe": ((), ()),
    "afmoe": (
        (),
        (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_mlp_layernorm",
            "post_mlp_layernorm",
            "q_norm",
            "k_norm",
            "norm",
            "expert_bias",
        ),
    ),
    "cohere2_moe": ((), ()),
}
for model_type, (strict, fp16_only) in ALIASES.items():
    alias(model_type, "qwen2_moe", keep_fp32=strict, keep_fp32_for_fp16=fp16_only)


register(
    "ernie4_5_moe",
    (
        *QWEN2_MOE,
        Rename("mlp.moe_statics.e_score_correction_bias", "mlp.gate.moe_statics.e_score_correction_bias"),
    ),
    family="qwen2_moe",
    keep_fp32=("gate.weight", "moe_statics"),
)
register(
    "exaone_moe",
    (*QWEN2_MOE, Rename("mlp.e_score_correction_bias", "mlp.gate.e_score_correction_bias")),
    family="qwen2_moe",
    keep_fp32=E_SCORE,
)

# qwen2_moe's experts plus a few renames of their own (transformers lists the converters first; renames run first)
register(
    "flint",
    (*QWEN2_MOE, Rename("self_attn.softmax_offset", "self_attn.sinks")),
    family="qwen2_moe",
    keep_fp32=("gate.weight", "sinks"),
)
register(
    "mimo_v2_flash",
    (*QWEN2_MOE, Rename("self_attn.attention_sink_bias", "self_attn.sinks")),
    family="qwen2_moe",
    keep_fp32=E_SCORE,
)
register(
    "axk1",
    (*QWEN2_MOE, Rename("post_mlp_layernorm", "mlp.post_mlp_layernorm")),
    family="qwen2_moe",
    keep_fp32=E_SCORE,
)
register(
    "axk2",
    (
        *QWEN2_MOE,
        Rename("W_down", "mlp.fc1"),
        Rename("W_up", "mlp.fc2"),
        Rename("self_attn.q_b_proj", "self_attn.q_gate_proj"),
    ),
    family="qwen2_moe",
    keep_fp32=E_SCORE,
    keep_fp32_for_fp16=("indexer.weights_proj",),
)
register(
    "hy_v3",
    (
        *QWEN2_MOE,
        Rename("mlp.router.gate.weight", "mlp.gate.weight"),
        Rename("mlp.expert_bias", "mlp.e_score_correction_bias"),
        Rename("mlp.shared_mlp", "mlp.shared_experts"),
    ),
    family="qwen2_moe",
    keep_fp32=E_SCORE,
)
register(
    "kolibri1",
    (
        *QWEN2_MOE,
        Rename("moe.router.expert_bias", "mlp.gate.e_score_correction_bias"),
        Rename("post_attn_norm", "post_self_attn_layernorm"),
        Rename("post_ffn_norm", "post_mlp_layernorm"),
    ),
    family="qwen2_moe",
    keep_fp32=E_SCORE,
)
register(
    "laguna",
    (
        *QWEN2_MOE,
        Rename("mlp.experts.e_score_correction_bias", "mlp.gate.e_score_correction_bias"),
        Rename("mlp.shared_expert", "mlp.shared_experts"),
    ),
    family="qwen2_moe",
)
