"""Nemotron-H: everything under ``backbone.`` on disk; non-gated experts (``up_proj``/``down_proj`` only)."""

from .core import Convert, Rename
from .ops import Stack
from .registry import register

register(
    "nemotron_h",
    (
        Rename("backbone", "model"),
        Convert("mixer.experts.*.up_proj.weight", "mixer.experts.up_proj", [Stack(0)]),
        Convert("mixer.experts.*.down_proj.weight", "mixer.experts.down_proj", [Stack(0)]),
    ),
    family="nemotron",
    keep_fp32=("e_score_correction_bias",),
)
