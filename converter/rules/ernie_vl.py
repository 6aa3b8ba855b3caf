"""Ernie-4.5-VL-MoE: 2E experts per MoE layer on disk (text experts first, then vision experts), split into a text
and a vision MoE; the two routers (``gate.weight`` / ``gate.weight_1``, ``[H, E]``) are transposed, the correction
bias ``[2, E]`` chunked; the language model moves under ``model.language_model``, ``vision_model`` to
``vision_tower``."""

from .core import Convert, Rename
from .ops import Chunk, ErnieFuseAndSplitTextVisionExperts, Transpose
from .registry import register

SPLIT = ErnieFuseAndSplitTextVisionExperts(stack_dim=0, concat_dim=1)

register(
    "ernie4_5_vl_moe",
    (
        Rename("vision_model", "vision_tower"),
        *(
            Rename(f"{m}.{i}", f"{m}.{n}")
            for m in ("spatial_linear", "temporal_linear")
            for i, n in ((0, "fc1"), (2, "fc2"), (3, "ln"))
        ),
        # transformers: `(?<!language_model\\.)embed_tokens` etc.; a rename never re-applies to its own output
        Rename("embed_tokens", "language_model.embed_tokens"),
        Rename("layers", "language_model.layers"),
        Rename("norm", "language_model.norm"),
        Convert("mlp.gate.weight_1", "mlp.vision_moe.gate.weight", [Transpose(0, 1)]),
        Convert("mlp.gate.weight", "mlp.text_moe.gate.weight", [Transpose(0, 1)]),
        Convert(
            "mlp.moe_statics.e_score_correction_bias",
            [
                "mlp.text_moe.gate.moe_statics.e_score_correction_bias",
                "mlp.vision_moe.gate.moe_statics.e_score_correction_bias",
            ],
            [Chunk(0)],
        ),
        Convert(
            "experts.*.down_proj.weight",
            ["text_moe.experts.down_proj", "vision_moe.experts.down_proj"],
            [SPLIT],
        ),
        Convert(
            ["experts.*.gate_proj.weight", "experts.*.up_proj.weight"],
            ["text_moe.experts.gate_up_proj", "vision_moe.experts.gate_up_proj"],
            [SPLIT],
        ),
    ),
    family="ernie_vl",
    keep_fp32=("gate.weight", "moe_statics"),
)
