"""Qwen-VL style multimodal models and the text models cut out of them.

Qwen2-VL / Qwen2.5-VL publish the language model at the root (``model.layers``, ``lm_head``) beside ``visual``;
transformers nests it under ``model.language_model``. The Qwen3.5 text models accept the multimodal layout by
dropping ``language_model.`` (a prefix change transformers does not write back: one-way here). Qwen3-VL-MoE
publishes its experts fused and transposed.
"""

from .common import QWEN2_MOE
from .core import Convert, Rename, prefix_change
from .ops import Concat, Transpose
from .registry import SUBMODELS, Nested, alias, register, register_submodel, submodel_alias

# classes nested at the root / under `model` (Qwen2VLForConditionalGeneration, Qwen2VLModel)
register_submodel(
    "Qwen2VLForConditionalGeneration",
    (
        Rename("^visual", "^model.visual"),
        Rename("^model", "^model.language_model", unless=("^model.language_model", "^model.visual")),
    ),
    family="qwen_vl",
)
register_submodel(
    "Qwen2VLModel", (prefix_change("model", add="language_model", reversible=False),), family="qwen_vl"
)
submodel_alias("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration")
submodel_alias("Qwen2_5_VLModel", "Qwen2VLModel")

for mt, cls in (("qwen2_vl", "Qwen2VL"), ("qwen2_5_vl", "Qwen2_5_VL")):
    register(
        mt,
        (),
        family="qwen_vl",
        root_class=f"{cls}ForConditionalGeneration",
        submodels=[Nested("model", f"{cls}Model")],
    )

LANGUAGE_MODEL_PREFIX = prefix_change("model", remove="language_model", reversible=False)
register("qwen3_5_text", (LANGUAGE_MODEL_PREFIX,), family="qwen_vl")
alias("gemma3n_text", "qwen3_5_text")
register("qwen3_5_moe_text", (LANGUAGE_MODEL_PREFIX, *QWEN2_MOE), family="qwen_vl")
# not in transformers' mapping itself: the rules come from its text model, nested under model.language_model
register("qwen3_5_moe", (), family="qwen_vl", submodels=[Nested("model.language_model", "qwen3_5_moe_text")])
register(
    "qwen4_exp_text",
    (
        LANGUAGE_MODEL_PREFIX,
        *QWEN2_MOE,
        Convert(
            "ngram_embedding.shard_*.weight",
            "ngram_embedding.weight",
            [Concat(0, num_shards_attribute="split_ngram_parts")],
        ),
    ),
    family="qwen_vl",
)

#: the Hub stores Qwen3-VL-MoE experts transposed: gate_up_proj [E, H, 2I], down_proj [E, I, H]
register(
    "qwen3_vl_moe",
    (
        Convert(
            "mlp.experts.gate_up_proj",
            "mlp.experts.gate_up_proj",
            [Transpose(1, 2, check_dims=True, shape=("*", "2*moe_intermediate_size", "hidden_size"))],
        ),
        Convert(
            "mlp.experts.down_proj",
            "mlp.experts.down_proj",
            [Transpose(1, 2, check_dims=True, shape=("*", "hidden_size", "moe_intermediate_size"))],
        ),
    ),
    family="qwen_vl",
)

# Qwen-Omni thinkers: everything under `thinker.`; the thinker's language model goes under model.language_model
register_submodel(
    "Qwen2_5OmniThinkerForConditionalGeneration",
    (
        prefix_change("", remove="thinker", reversible=False),
        Rename("^audio_tower", "^model.audio_tower"),
        Rename("^visual", "^model.visual"),
        Rename(
            "^model",
            "^model.language_model",
            unless=("^model.language_model", "^model.visual", "^model.audio_tower"),
        ),
    ),
    family="qwen_vl",
)
register_submodel(
    "Qwen2_5OmniThinkerModel",
    (
        prefix_change("", remove="thinker", reversible=False),
        prefix_change("model", add="language_model", reversible=False),
    ),
    family="qwen_vl",
)
submodel_alias("Qwen3OmniMoeThinkerForConditionalGeneration", "Qwen2_5OmniThinkerForConditionalGeneration")
submodel_alias("Qwen3OmniMoeThinkerModel", "Qwen2_5OmniThinkerModel")
register(
    "qwen2_5_omni_thinker",
    SUBMODELS["Qwen2_5OmniThinkerForConditionalGeneration"].rules,
    family="qwen_vl",
    root_class="Qwen2_5OmniThinkerForConditionalGeneration",
    submodels=[Nested("model", "Qwen2_5OmniThinkerModel")],
)
# transformers' entries for these model types are qwen2_moe's; as a root the thinker class's rules apply first
alias("qwen3_omni_moe_text", "qwen2_moe", family="qwen_vl")
register(
    "qwen3_omni_moe_thinker",
    QWEN2_MOE,
    family="qwen_vl",
    root_class="Qwen3OmniMoeThinkerForConditionalGeneration",
    submodels=[
        Nested("model", "Qwen3OmniMoeThinkerModel"),
        Nested("model.language_model", "qwen3_omni_moe_text"),
    ],
)
register(
    "qwen3_omni_moe",
    QWEN2_MOE,
    family="qwen_vl",
    submodels=[
        Nested("thinker", "Qwen3OmniMoeThinkerForConditionalGeneration"),
        Nested("thinker.model", "Qwen3OmniMoeThinkerModel"),
        Nested("thinker.model.language_model", "qwen3_omni_moe_text"),
    ],
)

# Qwen2-VL-like multimodal models: the language model published at the root, beside the vision parts
register(
    "colqwen2",
    (prefix_change("vlm", remove="model", reversible=False),),
    family="qwen_vl",
    submodels=[Nested("vlm", "Qwen2VLModel")],
)
register(
    "paddleocr_vl",
    (
        Rename("^mlp_AR", "^model.projector"),
        Rename("^visual", "^model.visual"),
        Rename(
            "^model",
            "^model.language_model",
            unless=("^model.visual", "^model.projector", "^model.language_model"),
        ),
    ),
    family="qwen_vl",
)
register(
    "hunyuan_vl",
    (
        Rename("mlp.dense_h_to_4h", "mlp.fc1"),
        Rename("mlp.dense_4h_to_h", "mlp.fc2"),
        Rename("^vit.layers.*.input_layernorm.", "^vit.layers.*.layer_norm1"),
        Rename("^vit.layers.*.post_attention_layernorm.", "^vit.layers.*.layer_norm2"),
        Rename("perceive.proj.0.", "perceive.proj_conv"),
        Rename("perceive.proj.2.", "perceive.proj_out"),
        Rename("perceive.", "patch_merger"),
        Rename(
            "^model",
            "^model.language_model",
            unless=("^model.language_model", "^model.vit", "^model.vision_tower"),
        ),
        Rename("^model.vit", "^model.vision_tower"),
        Rename("^vit", "^model.vision_tower"),
    ),
    family="qwen_vl",
)
# JEV: a Qwen3.5 text model under `model` and a decision head
register(
    "jev", (Rename("^weight", "^proj.weight"),), family="qwen_vl", submodels=[Nested("model", "qwen3_5_text")]
)
