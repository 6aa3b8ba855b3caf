"""Step-3.x: the language model's experts are pre-stacked per projection (``moe.gate_proj.weight [E, I, H]``),
so gate and up are only concatenated; the vision encoder (``step3p5_vision``, nested under
``model.vision_model``) has OpenCLIP-style names and a fused, RoPE-interleaved ``in_proj``."""

from .core import Convert, Rename
from .ops import Chunk, Concat, PermuteForRope
from .registry import Nested, register

QKV_ROPE = [Chunk(0), PermuteForRope("vision_config", ("q_proj", "k_proj"))]
register(
    "step3p5_vision",
    (
        Rename("^conv1.weight", "^embeddings.patch_embedding.weight"),
        Rename("^positional_embedding", "^embeddings.position_embedding.weight"),
        Rename("^transformer.resblocks", "^layers"),
        Rename("^ln_pre", "^pre_layernorm"),
        Rename("^vit_downsampler1", "^downsampler1"),
        Rename("^vit_downsampler2", "^downsampler2"),
        Rename("ls_1.gamma", "lambda_1"),
        Rename("ls_2.gamma", "lambda_2"),
        Rename("mlp.c_fc", "mlp.fc1"),
        Rename("mlp.c_proj", "mlp.fc2"),
        Rename("attn", "self_attn"),
        Rename("ln_1", "layernorm_before"),
        Rename("ln_2", "layernorm_after"),
        # transformers matches `attn\\.in_proj_weight` inside the renamed `self_attn.in_proj_weight`
        Convert(
            "self_attn.in_proj_weight",
            ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"],
            QKV_ROPE,
        ),
        Convert(
            "self_attn.in_proj_bias",
            ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"],
            QKV_ROPE,
        ),
    ),
    family="step",
)

register(
    "step3p7",
    (
        Rename("^vision_model", "^model.vision_model"),
        Rename("^vit_large_projector", "^model.multi_modal_projector"),
        Rename("^model.embed_tokens", "^model.language_model.embed_tokens"),
        Rename("^model.layers", "^model.language_model.layers"),
        Rename("^model.norm", "^model.language_model.norm"),
        Rename("moe.gate.weight", "mlp.gate.weight"),
        Rename("moe.router_bias", "mlp.gate.e_score_correction_bias"),
        Rename("moe.down_proj.weight", "mlp.experts.down_proj"),
        Rename("moe.down_proj.weight_scale_inv", "mlp.experts.down_proj_scale_inv"),
        Rename("share_expert", "mlp.shared_experts"),
        Convert(["moe.gate_proj.weight", "moe.up_proj.weight"], "mlp.experts.gate_up_proj", [Concat(1)]),
    ),
    family="step",
    submodels=[Nested("model.vision_model", "step3p5_vision")],
)
