"""dots.ocr-3 "note" models: a vision encoder with MoE layers (``fc1``/``fc3``/``fc2`` experts), a speech encoder,
and the wrappers that place them (class-keyed in transformers)."""

from .common import QWEN2_MOE
from .core import Convert, Rename, prefix_change
from .ops import Concat, Stack
from .registry import register, register_submodel

SPEECH = "speech_encoder"
register(
    "dots3_note_audio_encoder",
    (
        Rename("^audio_adapter.", "^adapter"),
        Rename("^adapter.proj.0.", "^adapter.norm"),
        Rename("^adapter.proj.1.", "^adapter.fc1"),
        Rename("^adapter.proj.3.", "^adapter.fc2"),
        Rename(f"dots_encoder.{SPEECH}.", SPEECH),
        # transformers: `speech_encoder\.(conv2d[123]|conv_out)\.` -> `speech_encoder.conv_stem.\1.`
        *(
            Rename(f"{SPEECH}.{c}.", f"{SPEECH}.conv_stem.{c}")
            for c in ("conv2d1", "conv2d2", "conv2d3", "conv_out")
        ),
        Rename("conv_stem.conv2d1.", "conv_stem.convs.0"),
        Rename("conv_stem.conv2d2.", "conv_stem.convs.1"),
        Rename("conv_stem.conv2d3.", "conv_stem.convs.2"),
        Rename(f"{SPEECH}.layers.*.self_attn.out_proj.", f"{SPEECH}.layers.*.self_attn.o_proj"),
        Rename(".self_attn_layer_norm.", "input_layernorm"),
        Rename(".final_layer_norm.", "post_attention_layernorm"),
        Rename(f"{SPEECH}.layers.*.fc1.", f"{SPEECH}.layers.*.mlp.gate_up_proj"),
        Rename(f"{SPEECH}.layers.*.fc2.", f"{SPEECH}.layers.*.mlp.down_proj"),
        # transformers: `^speech_encoder\.(conv_stem|layers|layer_norm)\.` -> `\1.`
        *(Rename(f"^{SPEECH}.{p}.", f"^{p}") for p in ("conv_stem", "layers", "layer_norm")),
    ),
    family="dots",
)
register(
    "dots3_note_vision_encoder",
    (
        Rename("^post_trunk_norm.", "^norm"),
        Rename("^adapter.", "^merger"),
        Rename("blocks.*.norm_1.", "blocks.*.norm1"),
        Rename("blocks.*.norm_2.", "blocks.*.norm2"),
        Rename("blocks.*.mlp.fc1.", "blocks.*.mlp.gate_proj"),
        Rename("blocks.*.mlp.fc2.", "blocks.*.mlp.down_proj"),
        Rename("blocks.*.mlp.fc3.", "blocks.*.mlp.up_proj"),
        Rename(".mlp.gate_weight", "mlp.gate.weight"),
        Rename(".mlp.router_bias", "mlp.e_score_correction_bias"),
        Convert(
            [".mlp.experts.*.fc1.weight", ".mlp.experts.*.fc3.weight"],
            "mlp.experts.gate_up_proj",
            [Stack(0), Concat(1)],
        ),
        Convert(".mlp.experts.*.fc2.weight", "mlp.experts.down_proj", [Stack(0)]),
    ),
    family="dots",
)
register_submodel(
    "Dots3NoteForConditionalGeneration",
    (
        Rename("^audio_encoder.audio_adapter.", "^audio_adapter"),
        *(Rename(f"^{p}.", f"^model.{p}") for p in ("vision_encoder", "audio_encoder", "audio_adapter")),
    ),
    family="dots",
)
register_submodel(
    "Dots3NoteModel",
    (
        prefix_change("", remove="model", reversible=False),
        *(Rename(f"^{p}.", f"^language_model.{p}") for p in ("embed_tokens", "layers", "norm")),
        Rename("^vision_encoder.", "^vision_tower"),
        Rename("^audio_encoder.", "^audio_tower"),
        Rename("^audio_adapter.", "^audio_tower.audio_adapter"),
    ),
    family="dots",
)
register_submodel("Dots3NoteTextModel", QWEN2_MOE, family="dots", alias_of="qwen2_moe")
