"""Kimi-K2.5: a DeepSeek-V3 language model (``blocks``) and a MoonViT vision encoder with fused, RoPE-interleaved
``wqkv`` (chunked into q/k/v, q and k rows permuted per head) and norms/MLPs numbered from 0 on disk.

``norm0 -> norm1, norm1 -> norm2`` (and ``fc0/fc1``) are rename groups: applied at once, and only to checkpoints
that still have ``norm0``, so an already converted checkpoint is not shifted again."""

from .common import QWEN2_MOE
from .core import Convert, Rename, RenameGroup
from .ops import Chunk, PermuteForRope
from .registry import Nested, register

BLOCK = "vision_tower.encoder.blocks.*"


def _shift(a: str, b: str, c: str) -> RenameGroup:
    return RenameGroup([Rename(f"{BLOCK}.{a}", f"{BLOCK}.{b}"), Rename(f"{BLOCK}.{b}", f"{BLOCK}.{c}")])


register(
    "kimi_k25",
    (
        Rename("language_model.model", "model.language_model"),
        Rename("language_model.lm_head", "lm_head"),
        _shift("norm0", "norm1", "norm2"),
        _shift("mlp.fc0", "mlp.fc1", "mlp.fc2"),
        Rename(f"{BLOCK}.wo", f"{BLOCK}.attn.proj"),
        Rename("vision_tower.encoder", "model.vision_tower"),
        Rename("mm_projector.proj.0", "model.mm_projector.in_proj"),
        Rename("mm_projector.proj.2", "model.mm_projector.out_proj"),
        Rename("blocks", "layers"),
        Rename(
            "vision_tower.patch_embed.pos_emb.weight",
            "model.vision_tower.patch_embed.pos_emb.position_embeddings",
        ),
        Convert(
            "wqkv",
            ["attn.q_proj", "attn.k_proj", "attn.v_proj"],
            [Chunk(0), PermuteForRope("vision_config", ("q_proj", "k_proj"))],
        ),
        *QWEN2_MOE,
    ),
    family="kimi",
    # its DeepSeek-V3 text model (model.language_model) brings the qwen2_moe expert rules again
    submodels=[Nested("model.language_model", "deepseek_v3")],
    keep_fp32=("e_score_correction_bias",),
)
