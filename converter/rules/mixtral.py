"""Mixtral-style MoE: ``block_sparse_moe.experts.{e}.w1/w3/w2.weight`` (gate/up/down), router ``gate``."""

from .common import MIXTRAL
from .core import Rename
from .registry import alias, register

register("mixtral", MIXTRAL, family="mixtral")
alias("minimax", "mixtral")
register(
    "minimax_m2",
    (
        *MIXTRAL,
        Rename(
            "block_sparse_moe.e_score_correction_bias",
            "mlp.e_score_correction_bias",
            note="never fires (the first rename already moved it); kept for parity with transformers",
        ),
    ),
    family="mixtral",
)
register("phimoe", (MIXTRAL[0], Rename("gate.weight", "router.weight"), *MIXTRAL[1:]), family="mixtral")
