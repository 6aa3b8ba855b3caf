"""Vision-language models whose conversion is renames only: the LLaVA family and Qwen2-VL.

transformers scopes some of these rules to nested sub-models (``LlavaModel`` under ``model``, the CLIP/SigLIP
vision tower under ``model.vision_tower``); here they are written out with their full anchored prefix.
"""

from .core import Rename, prefix_change
from .registry import alias, register

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

LLAVA = (
    Rename("^language_model.lm_head", "^lm_head"),
    Rename("^language_model", "^model.language_model"),
    Rename("^vision_tower", "^model.vision_tower"),
    Rename("^multi_modal_projector", "^model.multi_modal_projector"),
    # LlavaModel (scoped to `model`): ^language_model.model -> language_model
    Rename("^model.language_model.model", "^model.language_model"),
    # CLIPVisionModel (scoped to the vision tower): PrefixChange(prefix_to_remove="vision_model")
    Rename(
        "^model.vision_tower.vision_model",
        "^model.vision_tower",
        when=(("vision_config.model_type", CLIP_LIKE_VISION),),
    ),
)
register("llava", LLAVA, family="llava")
for t in (
    "aria",
    "aya_vision",
    "got_ocr2",
    "gemma3",
    "internvl",
    "vipllava",
    "mistral3",
    "pp_chart2table",
    "paligemma",
):
    alias(t, "llava")

register("llava_next", (*LLAVA, Rename("^image_newline", "^model.image_newline")), family="llava")
alias("llava_next_video", "llava_next")
alias("llava_onevision", "llava_next")

QWEN2_VL = (
    Rename("^visual", "^model.visual"),
    Rename("^model", "^model.language_model", unless=("^model.language_model", "^model.visual")),
)
register("qwen2_vl", QWEN2_VL, family="qwen2_vl")
alias("qwen2_5_vl", "qwen2_vl")

__all__ = ["CLIP_LIKE_VISION", "LLAVA", "QWEN2_VL", "prefix_change"]
