"""OCR models built from a SAM encoder, a Qwen2/ViT vision encoder and a (MoE) language model, published under
their original module names (``sam_model``, ``qwen2_model.model.model``, ``projector.layers``, ``mlp1``)."""

from .common import QWEN2_MOE
from .core import Convert, Rename
from .ops import Chunk
from .registry import Nested, register, register_submodel

SAM = "vision_tower.sam_encoder"


def _root_or_model(part: str, target: str) -> tuple[Rename, Rename]:
    """transformers' ``(^|model\\.)part`` -> ``\\1target``."""
    return Rename(f"^{part}", f"^{target}"), Rename(f"model.{part}", f"model.{target}")


register(
    "deepseek_ocr2",
    (
        Rename("sam_model.blocks.*.norm1", f"{SAM}.layers.*.layer_norm1"),
        Rename("sam_model.blocks.*.norm2", f"{SAM}.layers.*.layer_norm2"),
        Rename("sam_model.blocks.*.attn", f"{SAM}.layers.*.attn"),
        Rename("sam_model.blocks.*.mlp", f"{SAM}.layers.*.mlp"),
        Rename("sam_model.patch_embed.proj", f"{SAM}.patch_embed.projection"),
        Rename("sam_model.pos_embed", f"{SAM}.pos_embed"),
        Rename("sam_model.neck.0", f"{SAM}.neck.conv1"),
        Rename("sam_model.neck.1", f"{SAM}.neck.layer_norm1"),
        Rename("sam_model.neck.2", f"{SAM}.neck.conv2"),
        Rename("sam_model.neck.3", f"{SAM}.neck.layer_norm2"),
        Rename("sam_model.net_2", f"{SAM}.proj.conv1"),
        Rename("sam_model.net_3", f"{SAM}.proj.conv2"),
        Rename("qwen2_model.model.model.layers", "vision_tower.vision_encoder.layers"),
        Rename("qwen2_model.model.model.norm", "vision_tower.vision_encoder.norm"),
        Rename("qwen2_model.query_768", "vision_tower.query_768_resolution"),
        Rename("qwen2_model.query_1024", "vision_tower.query_1024_resolution"),
        Rename("projector.layers", "multi_modal_projector"),
        Rename("view_seperator", "view_separator"),
        *_root_or_model("embed_tokens", "language_model.embed_tokens"),
        *_root_or_model("layers", "language_model.layers"),
        *_root_or_model("norm", "language_model.norm"),
        *QWEN2_MOE,
    ),
    family="ocr",
)

register_submodel(
    "UnlimitedOcrSamVisionEncoder",
    (
        Rename("blocks.*.norm1.", "layers.*.layer_norm1"),
        Rename("blocks.*.norm2.", "layers.*.layer_norm2"),
        Rename("blocks.*.attn.", "layers.*.attn"),
        Rename("blocks.*.mlp.", "layers.*.mlp"),
        Rename("patch_embed.proj.", "patch_embed.projection"),
        Rename("neck.0.", "neck.conv1"),
        Rename("neck.1.", "neck.layer_norm1"),
        Rename("neck.2.", "neck.conv2"),
        Rename("neck.3.", "neck.layer_norm2"),
        Rename("net_2.", "proj.conv1"),
        Rename("net_3.", "proj.conv2"),
    ),
    family="ocr",
)
register_submodel(
    "UnlimitedOcrVisionEncoder",
    (
        Rename("transformer", "encoder"),
        Convert("qkv_proj.weight", ["q_proj.weight", "k_proj.weight", "v_proj.weight"], [Chunk(0)]),
        Convert("qkv_proj.bias", ["q_proj.bias", "k_proj.bias", "v_proj.bias"], [Chunk(0)]),
    ),
    family="ocr",
)
register_submodel("UnlimitedOcrTextModel", QWEN2_MOE, family="ocr", alias_of="qwen2_moe")
register(
    "unlimited_ocr",
    (
        *_root_or_model("sam_model", "vision_tower.sam_encoder"),
        *_root_or_model("vision_model", "vision_tower.vision_encoder"),
        *_root_or_model("view_seperator", "view_separator"),
        *_root_or_model("projector.layers.weight", "multi_modal_projector.weight"),
        *_root_or_model("projector.layers.bias", "multi_modal_projector.bias"),
        *_root_or_model("embed_tokens", "language_model.embed_tokens"),
        *_root_or_model("layers", "language_model.layers"),
        *_root_or_model("norm", "language_model.norm"),
    ),
    family="ocr",
    submodels=[
        Nested("model.vision_tower.sam_encoder", "UnlimitedOcrSamVisionEncoder"),
        Nested("model.vision_tower.vision_encoder", "UnlimitedOcrVisionEncoder"),
        Nested("model.language_model", "UnlimitedOcrTextModel"),
    ],
)

register(
    "qianfan_ocr",
    (
        Rename("^vision_model.", "^model.vision_tower"),
        Rename("encoder.layers.", "layers"),
        Rename(".ls1", "lambda_1"),
        Rename(".ls2", "lambda_2"),
        Rename("layers.*.attn.proj.", "layers.*.attention.projection_layer"),
        Rename(".norm1.", "layernorm_before"),
        Rename(".norm2.", "layernorm_after"),
        Rename(".embeddings.class_embedding", "embeddings.cls_token"),
        Rename(".embeddings.position_embedding", "embeddings.position_embeddings"),
        Rename(".embeddings.patch_embedding.", "embeddings.patch_embeddings.projection"),
        Rename("^language_model.model.", "^model.language_model"),
        Rename("^language_model.lm_head.", "^lm_head"),
        Rename("^mlp1.0.", "^model.multi_modal_projector.layer_norm"),
        Rename("^mlp1.1.", "^model.multi_modal_projector.linear_1"),
        Rename("^mlp1.3.", "^model.multi_modal_projector.linear_2"),
        Convert(
            "attn.qkv.weight",
            ["attention.q_proj.weight", "attention.k_proj.weight", "attention.v_proj.weight"],
            [Chunk(0)],
        ),
        Convert(
            "attn.qkv.bias",
            ["attention.q_proj.bias", "attention.k_proj.bias", "attention.v_proj.bias"],
            [Chunk(0)],
        ),
    ),
    family="ocr",
)
