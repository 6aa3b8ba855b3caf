"""Granite-MoE: experts already fused on disk (``input_linear [E, 2I, H]``, ``output_linear [E, H, I]``); renames only."""

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
