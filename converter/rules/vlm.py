"""Vision-language models whose conversion is renames only: the LLaVA family (and Mllama), with the class-keyed
rules of their nested sub-models: ``LlavaModel`` (and its aliases) under ``model``, and CLIP/SigLIP-like vision
towers under ``model.vision_tower``, whose ``vision_model.`` level transformers drops (a prefix change the Hub
keeps, so it is reversed too).
"""

from .core import Convert, Rename, prefix_change
from .ops import Chunk, Concat, Split
from .registry import Nested, alias, register, register_submodel, submodel_alias

#: vision towers whose transformers class drops the ``vision_model.`` level (CLIPVisionModel and its aliases)
CLIP_LIKE_VISION = (
    "clip_vision_model",
    "siglip_vision_model",
    "siglip2_vision_model",
    "altclip_vision_model",
    "chinese_clip_vision_model",
    "clipseg_vision_model",
    "metaclip_2_vision_model",
    "xclip_vision_model",
    "mlcd_vision_model",
)
CLIP_TOWER = (("vision_config.model_type", CLIP_LIKE_VISION),)

register_submodel("CLIPVisionModel", (prefix_change("", remove="vision_model"),), family="clip")
for cls in (
    "SiglipVisionModel",
    "Siglip2VisionModel",
    "AltCLIPVisionModel",
    "ChineseCLIPVisionModel",
    "CLIPSegVisionModel",
    "MetaClip2VisionModel",
    "xCLIPVisionModel",
    "mlcd_vision",
):
    submodel_alias(cls, "CLIPVisionModel")
register_submodel("CLIPTextModel", (prefix_change("", remove="text_model"),), family="clip")
for cls in (
    "SiglipTextModel",
    "Siglip2TextModel",
    "CLIPSegTextModel",
    "MetaClip2TextModel",
    "xCLIPTextModel",
):
    submodel_alias(cls, "CLIPTextModel")
register("mlcd", (prefix_change("", remove="vision_model"),), family="clip")

# `LlavaModel` and the classes transformers aliases to it, nested under `model`
register_submodel("LlavaModel", (Rename("^language_model.model", "^language_model"),), family="llava")
for cls in (
    "AriaModel",
    "AyaVisionModel",
    "FuyuModel",
    "Gemma3Model",
    "GotOcr2Model",
    "InternVLModel",
    "LlavaNextModel",
    "LlavaNextVideoModel",
    "LlavaOnevisionModel",
    "Mistral3Model",
    "MllamaModel",
    "PaliGemmaModel",
    "PPChart2TableModel",
    "VipLlavaModel",
):
    submodel_alias(cls, "LlavaModel")

LLAVA = (
    Rename("^language_model.lm_head", "^lm_head"),
    Rename("^language_model", "^model.language_model"),
    Rename("^vision_tower", "^model.vision_tower"),
    Rename("^multi_modal_projector", "^model.multi_modal_projector"),
)
LLAVA_NESTED = (Nested("model", "LlavaModel"), Nested("model.vision_tower", "CLIPVisionModel", CLIP_TOWER))
register("llava", LLAVA, family="llava", submodels=LLAVA_NESTED)
# Aria's text model (model_type aria_text, fused experts) is nested under model.language_model
alias(
    "aria",
    "llava",
    submodels=(Nested("model", "AriaModel"), LLAVA_NESTED[1], Nested("model.language_model", "aria_text")),
)
for t, cls in (
    ("aya_vision", "AyaVisionModel"),
    ("got_ocr2", "GotOcr2Model"),
    ("gemma3", "Gemma3Model"),
    ("internvl", "InternVLModel"),
    ("vipllava", "VipLlavaModel"),
    ("mistral3", "Mistral3Model"),
    ("pp_chart2table", "PPChart2TableModel"),
    ("paligemma", "PaliGemmaModel"),
):
    alias(t, "llava", submodels=(Nested("model", cls), LLAVA_NESTED[1]))

register(
    "llava_next",
    (*LLAVA, Rename("^image_newline", "^model.image_newline")),
    family="llava",
    submodels=(Nested("model", "LlavaNextModel"), LLAVA_NESTED[1]),
)
alias("llava_next_video", "llava_next", submodels=(Nested("model", "LlavaNextVideoModel"), LLAVA_NESTED[1]))
alias("llava_onevision", "llava_next", submodels=(Nested("model", "LlavaOnevisionModel"), LLAVA_NESTED[1]))

register(
    "mllama",
    (
        Rename("^language_model.lm_head", "^lm_head"),
        Rename("^language_model", "^model.language_model"),
        Rename("^vision_model", "^model.vision_model"),
        Rename("^multi_modal_projector", "^model.multi_modal_projector"),
    ),
    family="llava",
    submodels=[Nested("model", "MllamaModel")],
)

register_submodel("VideoLlavaModel", (Rename("^language_model.model", "^language_model"),), family="llava")
register(
    "video_llava",
    (
        Rename("^language_model.lm_head", "^lm_head"),
        Rename("^language_model", "^model.language_model"),
        Rename("^image_tower", "^model.image_tower"),
        Rename("^video_tower", "^model.video_tower"),
        Rename("^multi_modal_projector", "^model.multi_modal_projector"),
    ),
    family="llava",
    submodels=[
        Nested("model", "VideoLlavaModel"),
        Nested("model.video_tower", "CLIPVisionModel", CLIP_TOWER),
        Nested("model.image_tower", "CLIPVisionModel", CLIP_TOWER),
    ],
)
register(
    "fuyu",
    (
        Rename("^language_model.lm_head", "^lm_head"),
        Rename("^language_model", "^model.language_model"),
        Rename("^vision_embed_tokens", "^model.vision_embed_tokens"),
    ),
    family="llava",
    submodels=[Nested("model", "FuyuModel")],
)
register_submodel("Emu3Model", (Rename("^text_model.model", "^text_model"),), family="llava")
register(
    "emu3",
    (
        Rename("^text_model.lm_head", "^lm_head"),
        Rename("^text_model", "^model.text_model"),
        Rename("^vqmodel", "^model.vqmodel"),
    ),
    family="llava",
    submodels=[Nested("model", "Emu3Model")],
)
# ShieldGemma2: a Gemma-3 under `model.model`
register(
    "shieldgemma2",
    (prefix_change("model", add="model", reversible=False),),
    family="llava",
    submodels=[Nested("model", "Gemma3Model"), Nested("model.vision_tower", "SiglipVisionModel", CLIP_TOWER)],
)
register(
    "pi0",
    (
        prefix_change("", remove="model", reversible=False),
        Rename("state_proj", "embed_action_time.state_proj"),
        Rename("action_in_proj", "embed_action_time.action_in_proj"),
        Rename("action_time_mlp_in", "embed_action_time.action_time_mlp_in"),
        Rename("action_time_mlp_out", "embed_action_time.action_time_mlp_out"),
        Rename("^paligemma_with_expert.paligemma.model", "^model.vlm"),
        Rename("^paligemma_with_expert.gemma_expert.model", "^model.dit"),
        Rename("^paligemma_with_expert.gemma_expert.lm_head", "^model.dit.embed_tokens"),
        Rename("^paligemma_with_expert.paligemma.lm_head", "^model.vlm.language_model.embed_tokens"),
    ),
    family="llava",
    submodels=[Nested("model.vlm", "PaliGemmaModel"), Nested("model.vlm.vision_tower", "SiglipVisionModel")],
)
register(
    "gemma4_unified",
    (
        *(
            Rename(f"vision_embedder.{p}", f"embed_vision.{p}")
            for p in ("patch_ln1", "patch_dense", "patch_ln2", "pos_embedding", "pos_norm")
        ),
        Rename("embed_vision.embedding_projection", "embed_vision.multimodal_embedder.embedding_projection"),
    ),
    family="llava",
)
register(
    "hyperclovax_vision_v2",
    (
        Rename("^model.language_model.lm_head", "^lm_head"),
        Rename("^model.vision_projector", "^model.projector"),
        prefix_change("model.language_model", remove="model", reversible=False),
    ),
    family="llava",
)
ATTN_TO = tuple(
    Rename(f".self_attn.to_{a}.", f"self_attn.{b}_proj")
    for a, b in (("q", "q"), ("k", "k"), ("v", "v"), ("out", "o"))
)
register(
    "cosmos3_edge",
    (
        Rename("^embed_tokens.", "^model.language_model.embed_tokens"),
        Rename("^norm.", "^model.language_model.norm"),
        Rename("^layers.", "^model.language_model.layers"),
        *ATTN_TO,
        Rename(".mlp.up_proj.", "mlp.fc1"),
        Rename(".mlp.down_proj.", "mlp.fc2"),
    ),
    family="llava",
)
register(
    "cosmos3_omni",
    (
        *(Rename(f"^{p}.", f"^model.language_model.{p}") for p in ("layers", "embed_tokens", "norm")),
        *(
            Rename(f"^{p}.", f"^model.visual.{p}")
            for p in ("blocks", "merger", "patch_embed", "pos_embed", "deepstack_merger_list")
        ),
        *ATTN_TO,
        Rename(".self_attn.norm_q.", "self_attn.q_norm"),
        Rename(".self_attn.norm_k.", "self_attn.k_norm"),
    ),
    family="llava",
)

# Molmo2: OLMo-style names; `transformer.` is the language model unless it is the ViT's
register_submodel(
    "Molmo2TextModel",
    (
        Rename(".attn_norm.", "input_layernorm"),
        Rename(".ff_norm.", "post_attention_layernorm"),
        Convert(
            "self_attn.att_proj",
            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            [
                Split(
                    0,
                    (
                        "num_attention_heads*head_dim",
                        "num_key_value_heads*head_dim",
                        "num_key_value_heads*head_dim",
                    ),
                )
            ],
        ),
        Rename("self_attn.attn_out", "self_attn.o_proj"),
        Rename("mlp.ff_out", "mlp.down_proj"),
        Convert("mlp.ff_proj.weight", ["mlp.up_proj.weight", "mlp.gate_proj.weight"], [Chunk(0)]),
        Convert(["wte.embedding", "wte.new_embedding"], "embed_tokens.weight", [Concat(0)]),
    ),
    family="llava",
)
VIT = "vision_backbone.image_vit"
register(
    "molmo2",
    (
        Rename(
            "transformer.",
            "language_model",
            unless=("image_vit.transformer", "transformer.ln_f", "transformer.blocks"),
        ),
        Rename("transformer.ln_f.", "language_model.norm", unless=("image_vit.transformer.ln_f",)),
        Rename("transformer.blocks.", "language_model.layers", unless=("image_vit.transformer.blocks",)),
        Rename(f"{VIT}.", "vision_tower", unless=(f"{VIT}.transformer.resblocks",)),
        Rename(f"{VIT}.transformer.resblocks.", "vision_tower.layers"),
        Rename("vision_backbone.image_pooling_2d.", "multi_modal_projector.image_pooling_2d"),
        Rename("vision_backbone.image_projector.", "multi_modal_projector.image_projector"),
        Rename(".attention.wq", "self_attn.q_proj"),
        Rename(".attention.wk", "self_attn.k_proj"),
        Rename(".attention.wv", "self_attn.v_proj"),
        Rename(".attention.wo", "self_attn.o_proj"),
        Rename(".feed_forward.w1", "mlp.fc1"),
        Rename(".feed_forward.w2", "mlp.fc2"),
        Rename(".attention_norm", "layer_norm1"),
        Rename(".ffn_norm", "layer_norm2"),
        *(Rename(f"image_pooling_2d.w{p}", f"image_pooling_2d.{p}_proj") for p in "qkvo"),
        Rename("image_projector.w1", "image_projector.gate_proj"),
        Rename("image_projector.w2", "image_projector.down_proj"),
        Rename("image_projector.w3", "image_projector.up_proj"),
    ),
    family="llava",
    submodels=[Nested("model.language_model", "Molmo2TextModel")],
)

__all__ = ["CLIP_LIKE_VISION", "CLIP_TOWER", "LLAVA", "LLAVA_NESTED", "prefix_change"]
