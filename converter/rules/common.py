"""Building blocks shared by the family modules: a family module imports these, never another family module (the
registry imports families lazily, see ``index.py``)."""

from __future__ import annotations

from .core import Convert, Rename
from .ops import Concat, Stack


def merge_experts(experts: str, *, gate: str, up: str, down: str) -> tuple[Convert, Convert]:
    """Per-expert gate/up/down linears under ``experts`` -> ``experts.gate_up_proj [E, 2I, H]`` (gate rows first)
    and ``experts.down_proj [E, H, I]``: transformers' ``MergeModulelist(0)`` + ``Concatenate(1)``."""
    return (
        Convert(
            [f"{experts}.*.{gate}", f"{experts}.*.{up}"], f"{experts}.gate_up_proj", [Stack(0), Concat(1)]
        ),
        Convert([f"{experts}.*.{down}"], f"{experts}.down_proj", [Stack(0)]),
    )


#: Mixtral-style per-expert w1 (gate), w3 (up), w2 (down) under any `experts`
EXPERTS_W1_W3 = merge_experts("experts", gate="w1.weight", up="w3.weight", down="w2.weight")
#: mixtral's rules: ``block_sparse_moe`` -> ``mlp``, experts merged
MIXTRAL = (Rename("block_sparse_moe", "mlp"), *EXPERTS_W1_W3)
#: Qwen2-MoE-style per-expert gate_proj/up_proj/down_proj under ``mlp.experts``
QWEN2_MOE = merge_experts(
    "mlp.experts", gate="gate_proj.weight", up="up_proj.weight", down="down_proj.weight"
)
#: the DeepSeek-style router bias transformers keeps in float32
E_SCORE = ("e_score_correction_bias",)
