"""Building blocks shared by the family modules."""

from __future__ import annotations

from .core import Convert
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
