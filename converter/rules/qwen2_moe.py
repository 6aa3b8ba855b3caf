"""Qwen2-MoE-style MoE: ``mlp.experts.{e}.gate_proj/up_proj/down_proj.weight``; shared experts untouched.

Most DeepSeek/GLM/OLMoE/... types reuse these rules unchanged (transformers' ``_MODEL_TO_CONVERSION_PATTERN``).
"""

from .common import merge_experts
from .core import Rename
from .registry import alias, register

QWEN2_MOE = merge_experts(
    "mlp.experts", gate="gate_proj.weight", up="up_proj.weight", down="down_proj.weight"
)
register("qwen2_moe", QWEN2_MOE, family="qwen2_moe")

E_SCORE = ("e_score_correction_bias",)
# model_type -> (transformers' _keep_in_fp32_modules_strict, _keep_in_fp32_modules (fp16 only))
ALIASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "qwen3_moe": ((), ()),
    "qwen3_next": ((), ()),
    "qwen3_omni_moe_text": ((), ()),
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

# transformers gives these the qwen2_moe rules too, but their checkpoints nest thinker/talker sub-models whose own
# class-keyed rules (``thinker.`` prefix changes) also apply; refused until those are expressed (never half right)
OMNI_REASON = "nested thinker/talker sub-model rules (class-keyed prefix changes) are not expressed yet"
for model_type in ("qwen3_omni_moe", "qwen3_omni_moe_thinker"):
    alias(model_type, "qwen2_moe", unsupported=OMNI_REASON)

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
