"""MoE under ``feed_forward.experts``: Jamba (gate_proj/up_proj/down_proj) and LFM2-MoE (w1/w3/w2)."""

from .common import merge_experts
from .registry import register

register(
    "jamba",
    merge_experts(
        "feed_forward.experts", gate="gate_proj.weight", up="up_proj.weight", down="down_proj.weight"
    ),
    family="feed_forward_moe",
)
register(
    "lfm2_moe",
    merge_experts("feed_forward.experts", gate="w1.weight", up="w3.weight", down="w2.weight"),
    family="feed_forward_moe",
    keep_fp32=("expert_bias",),  # created in float32 by the modeling code, whatever the model dtype
)
