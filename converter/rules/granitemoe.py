"""Experts already fused on disk: Granite-MoE (``input_linear [E, 2I, H]``, ``output_linear [E, H, I]``), Aria,
GPT-OSS and Llama-4 (both ``[E, H, 2I]``, no rules). Renames only."""

from .core import Rename
from .registry import alias, register

GRANITEMOE = (
    Rename("block_sparse_moe.input_linear.weight", "block_sparse_moe.experts.gate_up_proj"),
    Rename("block_sparse_moe.output_linear.weight", "block_sparse_moe.experts.down_proj"),
    Rename("block_sparse_moe.router.layer.weight", "block_sparse_moe.router.weight"),
)

register("granitemoe", GRANITEMOE, family="granitemoe")
alias("granitemoeshared", "granitemoe")
alias("granitemoehybrid", "granitemoe")

# Aria: experts fused and transposed on disk (`fc1 [E, H, 2I]`, `fc2 [E, I, H]`), which is the model layout too
register(
    "aria_text",
    (
        Rename("mlp.experts.fc1.weight", "mlp.experts.gate_up_proj"),
        Rename("mlp.experts.fc2.weight", "mlp.experts.down_proj"),
    ),
    family="granitemoe",
)
# no rules: the published layout is the model layout (gpt_oss: interleaved [E, H, 2I]; Llama-4: concatenated)
register(
    "gpt_oss",
    (),
    family="granitemoe",
    keep_fp32_for_fp16=("post_attention_layernorm", "input_layernorm", "norm"),
    quantized=("mxfp4",),
)
register("llama4_text", (), family="granitemoe")
