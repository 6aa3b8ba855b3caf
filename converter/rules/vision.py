"""Vision encoders and dense-prediction models: renames of the original (timm / BERT-style / OpenCLIP) names,
and fused ``qkv`` / ``w12`` projections chunked into their parts.

Many of these are keyed by class in transformers (``ViTModel``, ``Dinov2Model``, ``BeitBackbone``...): their rules
live in :data:`SUBMODELS` and apply wherever the class is (at the root, or nested in a larger model).
"""

from .core import Convert, Rename, prefix_change
from .ops import Chunk
from .registry import Nested, alias, register, register_submodel, submodel_alias

# --- ViT-style (BERT names) ---------------------------------------------------------------------------------------
VIT_LAYER = (
    Rename("attention.query", "q_proj"),
    Rename("attention.key", "k_proj"),
    Rename("attention.value", "v_proj"),
    Rename("attention.output.dense", "attention.o_proj"),
    Rename("intermediate.dense", "mlp.fc1"),
    Rename("output.dense", "mlp.fc2"),
)
VIT = (Rename("encoder.layer.", "layers"), *VIT_LAYER)
register_submodel("ViTModel", VIT, family="vision")
for cls in ("ASTModel", "DeiTModel", "IJepaModel", "ViTMAEModel", "ViTMSNModel", "VivitModel"):
    submodel_alias(cls, "ViTModel")
register_submodel("ViTMAEForPreTraining", VIT_LAYER, family="vision")
register_submodel("ViTMSNForImageClassification", (Rename("^encoder.", "^vit.encoder"),), family="vision")

register_submodel(
    "BeitModel",
    (
        *VIT,
        Rename("encoder.relative_position_bias", "shared_position_bias"),
        Rename(
            "attention.attention.relative_position_bias.relative_position_bias_table",
            "relative_position_bias.relative_position_bias_table",
        ),
    ),
    family="vision",
)
BEIT_FPN = (
    Rename("^fpn1.0.", "^fpn.fpn1.conv_transpose1"),
    Rename("^fpn1.1.", "^fpn.fpn1.normalization"),
    Rename("^fpn1.3.", "^fpn.fpn1.conv_transpose2"),
    Rename("^fpn2.0.", "^fpn.fpn2"),
)
register_submodel(
    "BeitBackbone",
    (
        *BEIT_FPN,
        Rename("^encoder.layer.", "^beit.encoder.layer"),
        Rename("^embeddings.", "^beit.embeddings"),
        *VIT_LAYER,
    ),
    family="vision",
)
register_submodel(
    "BeitForSemanticSegmentation",
    (
        # transformers: `(?<!psp_modules\.[0-9]\.1\.)bn\.` -- the pyramid-pooling convs keep theirs until below
        Rename("bn.", "normalization", unless=("decode_head.psp_modules.*.1.bn",)),
        Rename("conv.weight", "convolution.weight", unless=("decode_head.psp_modules.*.1.conv.weight",)),
        *BEIT_FPN,
        Rename("decode_head.bottleneck.", "decode_head.psp_bottleneck"),
        Rename(
            "decode_head.psp_modules.*.1.conv.weight",
            "decode_head.psp_modules.blocks.*.conv.convolution.weight",
        ),
        Rename("decode_head.psp_modules.*.1.bn.", "decode_head.psp_modules.blocks.*.conv.normalization"),
    ),
    family="vision",
)

# --- DINOv2 / DINOv3 ------------------------------------------------------------------------------------------------
DINOV2 = (
    Rename("attention.attention.query", "attention.q_proj"),
    Rename("attention.attention.key", "attention.k_proj"),
    Rename("attention.attention.value", "attention.v_proj"),
    Rename("attention.output.dense", "attention.o_proj"),
    Convert("mlp.weights_in.weight", ["mlp.gate_proj.weight", "mlp.up_proj.weight"], [Chunk(0)]),
    Convert("mlp.weights_in.bias", ["mlp.gate_proj.bias", "mlp.up_proj.bias"], [Chunk(0)]),
    Rename("mlp.weights_out", "mlp.down_proj"),
)
register_submodel("Dinov2Model", DINOV2, family="vision")
register_submodel("Dinov2WithRegistersModel", DINOV2, family="vision")
submodel_alias("Dinov2Backbone", "Dinov2Model")
submodel_alias("Dinov2WithRegistersBackbone", "Dinov2WithRegistersModel")
# transformers: `(?<!model\.)stages` / `(?<!model\.)layer.`; a rename never re-applies to its own output
register("dinov3_convnext", (Rename("stages", "model.stages"),), family="vision")
register("dinov3_vit", (Rename("layer", "model.layer"),), family="vision")

# --- Swin, SegFormer ---------------------------------------------------------------------------------------------
register(
    "swin",
    (
        Rename("attention.self.query", "attention.q_proj"),
        Rename("attention.self.key", "attention.k_proj"),
        Rename("attention.self.value", "attention.v_proj"),
        Rename(
            "attention.self.relative_position_bias_table",
            "attention.relative_position_bias.relative_position_bias_table",
        ),
        Rename("attention.output.dense", "attention.o_proj"),
        Rename("intermediate.dense", "mlp.fc1"),
        Rename("output.dense", "mlp.fc2"),
    ),
    family="vision",
)
register_submodel(
    "SwinBackbone",
    (Rename("^encoder.", "^swin.encoder"), Rename("^embeddings.", "^swin.embeddings")),
    family="vision",
)
register_submodel(
    "SegformerModel",
    (
        Rename("encoder.patch_embeddings.*.", "stages.*.patch_embeddings"),
        Rename("encoder.block.*.", "stages.*.blocks"),
        Rename("encoder.layer_norm.*", "stages.*.layer_norm"),
        Rename("attention.self.query", "attention.q_proj"),
        Rename("attention.self.key", "attention.k_proj"),
        Rename("attention.self.value", "attention.v_proj"),
        Rename("attention.self.sr", "attention.sequence_reduction.sequence_reduction"),
        Rename("attention.self.layer_norm", "attention.sequence_reduction.layer_norm"),
        Rename("attention.output.dense", "attention.o_proj"),
        Rename("mlp.dense1", "mlp.fc1"),
        Rename("mlp.dense2", "mlp.fc2"),
        Rename("layer_norm_1", "layernorm_before"),
        Rename("layer_norm_2", "layernorm_after"),
    ),
    family="vision",
)
register_submodel(
    "SegformerForSemanticSegmentation",
    (Rename("decode_head.linear_c", "decode_head.linear_projections"),),
    family="vision",
)

# --- other encoders ----------------------------------------------------------------------------------------------
register(
    "altclip",
    (Rename("layer.", "layers"),),
    family="vision",
    submodels=[Nested("vision_model", "AltCLIPVisionModel")],
)
register(
    "videomae",
    (
        Rename("attention.attention.q_bias", "attention.attention.query.bias"),
        Rename("attention.attention.v_bias", "attention.attention.value.bias"),
    ),
    family="vision",
)
register(
    "yolos",
    (Rename("encoder.mid_position_embeddings", "encoder.interpolation.mid_position_embeddings"),),
    family="vision",
)
register(
    "pixio",
    (
        *VIT,
        Rename("norm1", "layernorm_before"),
        Rename("norm2", "layernorm_after"),
        Rename("^encoder.", "^pixio"),
    ),
    family="vision",
)
register(
    "radio",
    (
        Rename("radio_model.model.patch_generator.video_embedder", "embeddings.video_patch_projection"),
        Rename("radio_model.model.patch_generator.embedder", "embeddings.patch_projection"),
        Rename("radio_model.model.patch_generator.pos_embed", "embeddings.position_embedding"),
        Rename("radio_model.model.patch_generator.cls_token.token", "embeddings.cls_register_token"),
        Rename("radio_model.model.blocks", "encoder.layer"),
        Rename("attn.proj", "attention.o_proj"),
        Rename("radio_model.input_conditioner", "input_conditioner"),
        Rename("radio_model.summary_idxs", "summary_idxs"),
        Convert("attn.qkv", ["attention.q_proj", "attention.k_proj", "attention.v_proj"], [Chunk(0)]),
    ),
    family="vision",
)
register(
    "lfm3_vl_vision",
    (Rename("patchifier", "patch_embed"), Rename("q_layernorm", "q_norm"), Rename("k_layernorm", "k_norm")),
    family="vision",
)
register("timm_wrapper", (prefix_change("", add="timm_model", reversible=False),), family="vision")
SAM3 = (
    Rename("detector_model.vision_encoder.backbone.", "vision_encoder.backbone"),
    Rename("tracker_neck.", "vision_encoder.neck"),
    # transformers: `tracker_model.(.+)` -> `\1` (anywhere); tracker weights are published under the root
    prefix_change("", remove="tracker_model", reversible=False),
)
register("sam3_tracker", SAM3, family="vision")
alias("sam3_tracker_video", "sam3_tracker")

# --- Sapiens2 -----------------------------------------------------------------------------------------------------
register(
    "sapiens2",
    (
        Rename("^cls_token", "^embeddings.cls_token"),
        Rename("^storage_tokens", "^embeddings.register_tokens"),
        Rename("^patch_embed.projection.", "^embeddings.patch_embeddings"),
        Rename("blocks.*.", "model.layer.*"),
        Rename("attn.proj.", "attention.o_proj"),
        Rename("attn.wq.", "attention.q_proj"),
        Rename("attn.wk.", "attention.k_proj"),
        Rename("attn.wv.", "attention.v_proj"),
        Rename("attn.q_norm.", "attention.q_norm"),
        Rename("attn.k_norm.", "attention.k_norm"),
        Rename("attn.gamma.weight", "layer_scale1.lambda1"),
        Rename("ffn.w3.", "mlp.down_proj"),
        Rename(".ln1.", "norm1"),
        Rename(".ln2.", "norm2"),
        Rename("^ln1.", "^norm"),
        Convert("ffn.w12.weight", ["mlp.gate_proj.weight", "mlp.up_proj.weight"], [Chunk(0)]),
        Convert("ffn.w12.bias", ["mlp.gate_proj.bias", "mlp.up_proj.bias"], [Chunk(0)]),
    ),
    family="vision",
)


def _conv(layer: str, i: int, j: int, target: str = "decode_head") -> tuple[Rename, Rename]:
    """transformers: `decode_head\\.{layer}\\.{i}\\.(weight|bias)` -> `{target}.{layer}.{j}.convolution.\\1`."""
    return tuple(  # type: ignore[return-value]
        Rename(f"decode_head.{layer}.{i}.{p}", f"{target}.{layer}.{j}.convolution.{p}")
        for p in ("weight", "bias")
    )


SAPIENS_BACKBONE = Rename("^backbone.", "^model")
SAPIENS_UPSAMPLE = (
    Rename("decode_head.upsample_blocks.*.0.weight", "decode_head.upsample_layers.*.convolution.weight"),
    Rename("decode_head.upsample_blocks.*.0.bias", "decode_head.upsample_layers.*.convolution.bias"),
)
SAPIENS_INPUT_CONV = tuple(
    Rename(f"decode_head.input_conv.0.{p}", f"decode_head.input_conv.convolution.{p}")
    for p in ("weight", "bias")
)
register_submodel(
    "Sapiens2ForSemanticSegmentation",
    (
        SAPIENS_BACKBONE,
        *(
            Rename(
                f"decode_head.deconv_layers.{i}.weight", f"decode_head.upsample_layers.{j}.convolution.weight"
            )
            for i, j in ((0, 0), (3, 1), (6, 2), (9, 3))
        ),
        *_conv("conv_layers", 0, 0),
        *_conv("conv_layers", 3, 1),
        Rename("decode_head.conv_seg.", "decode_head.predictor"),
    ),
    family="vision",
)
register_submodel(
    "Sapiens2ForPoseEstimation",
    (
        SAPIENS_BACKBONE,
        *(
            Rename(
                f"decode_head.deconv_layers.{i}.weight", f"decode_head.upsample_layers.{j}.convolution.weight"
            )
            for i, j in ((0, 0), (3, 1))
        ),
        *_conv("conv_layers", 0, 0),
        *_conv("conv_layers", 3, 1),
        *_conv("conv_layers", 6, 2),
        Rename("decode_head.conv_pose.", "decode_head.predictor"),
    ),
    family="vision",
)
for cls, head in (("Sapiens2ForNormalEstimation", "normal"), ("Sapiens2ForImageMatting", "matting")):
    register_submodel(
        cls,
        (
            SAPIENS_BACKBONE,
            *SAPIENS_INPUT_CONV,
            *SAPIENS_UPSAMPLE,
            *_conv("conv_layers", 0, 0),
            *_conv("conv_layers", 3, 1),
            *_conv("conv_layers", 6, 2),
            Rename(f"decode_head.conv_{head}.", "decode_head.predictor"),
        ),
        family="vision",
    )
register_submodel(
    "Sapiens2ForPointmapEstimation",
    (
        SAPIENS_BACKBONE,
        *SAPIENS_INPUT_CONV,
        *SAPIENS_UPSAMPLE,
        *_conv("conv_layers", 0, 0),
        *_conv("conv_layers", 3, 1),
        *_conv("conv_layers", 6, 2),
        Rename("decode_head.conv_pointmap.", "decode_head.predictor"),
        *(
            Rename(f"decode_head.scale_conv_layers.{i}.{p}", f"scale_head.conv_layers.{j}.convolution.{p}")
            for i, j in ((0, 0), (3, 1), (6, 2))
            for p in ("weight", "bias")
        ),
        Rename("decode_head.scale_final_layer.1.", "scale_head.predictor.block1.layers.0"),
        Rename("decode_head.scale_final_layer.3.", "scale_head.predictor.block2.layers.0"),
        Rename("decode_head.scale_final_layer.5.", "scale_head.predictor.proj"),
    ),
    family="vision",
)

# --- TIPSv2 -------------------------------------------------------------------------------------------------------
register_submodel(
    "Tipsv2TextModel",
    (
        prefix_change("", remove="text_encoder", reversible=False),
        Rename("ln_final.", "final_layer_norm"),
        Rename("token_embedding.", "embeddings.token_embedding"),
        Rename("transformer.resblocks.", "encoder.layers"),
        Rename(".ln_1.", "layer_norm1"),
        Rename(".ln_2.", "layer_norm2"),
        Rename(".attn.", "self_attn"),
        Rename(".mlp.c_fc.", "mlp.fc1"),
        Rename(".mlp.c_proj.", "mlp.fc2"),
        Convert(".in_proj_weight", ["q_proj.weight", "k_proj.weight", "v_proj.weight"], [Chunk(0)]),
        Convert(".in_proj_bias", ["q_proj.bias", "k_proj.bias", "v_proj.bias"], [Chunk(0)]),
    ),
    family="vision",
)
register_submodel(
    "Tipsv2VisionModel",
    (
        prefix_change("", remove="vision_encoder", reversible=False),
        Rename("patch_embed.proj.", "embeddings.patch_embeddings.projection"),
        Rename("cls_token", "embeddings.cls_token"),
        Rename("mask_token", "embeddings.mask_token"),
        Rename("register_tokens", "embeddings.register_tokens"),
        Rename("pos_embed", "embeddings.position_embeddings"),
        Rename("norm.", "layernorm"),
        Rename("blocks.", "encoder.layer"),
        Rename(".attn.proj.", "attention.o_proj"),
        Rename(".ls1.gamma", "layer_scale1.lambda1"),
        Rename(".ls2.gamma", "layer_scale2.lambda1"),
        Rename(".mlp.c_fc.", "mlp.fc1"),
        Rename(".mlp.c_proj.", "mlp.fc2"),
        Rename(".mlp.w3.", "mlp.down_proj"),
        Convert(".mlp.w12.weight", ["mlp.gate_proj.weight", "mlp.up_proj.weight"], [Chunk(0)]),
        Convert(".mlp.w12.bias", ["mlp.gate_proj.bias", "mlp.up_proj.bias"], [Chunk(0)]),
        Convert(
            ".attn.qkv.weight",
            ["attention.q_proj.weight", "attention.k_proj.weight", "attention.v_proj.weight"],
            [Chunk(0)],
        ),
        Convert(
            ".attn.qkv.bias",
            ["attention.q_proj.bias", "attention.k_proj.bias", "attention.v_proj.bias"],
            [Chunk(0)],
        ),
    ),
    family="vision",
)
submodel_alias("Tipsv2VisionBackbone", "Tipsv2VisionModel")
register(
    "tipsv2",
    (Rename("text_encoder", "text_model"), Rename("vision_encoder", "vision_model")),
    family="vision",
    submodels=[Nested("text_model", "Tipsv2TextModel"), Nested("vision_model", "Tipsv2VisionModel")],
)


def _dpt(head: str) -> tuple[Rename, ...]:
    """The DPT head of TIPSv2: ``{head}.reassemble...`` -> ``neck.reassemble_stage...``."""
    fusion = f"{head}.fusion_blocks.*"
    return (
        Rename("vision_encoder", "backbone"),
        Rename(f"{head}.reassemble.readout_projects.*", "neck.reassemble_stage.readout_projects.*.layers.0"),
        Rename(f"{head}.reassemble.out_projections.*.", "neck.reassemble_stage.layers.*.projection"),
        Rename(f"{head}.reassemble.resize_layers.*.", "neck.reassemble_stage.layers.*.resize"),
        Rename(f"{fusion}.out_conv.", "neck.fusion_stage.layers.*.projection"),
        Rename(f"{fusion}.main_unit.conv1.", "neck.fusion_stage.layers.*.residual_layer2.convolution1"),
        Rename(f"{fusion}.main_unit.conv2.", "neck.fusion_stage.layers.*.residual_layer2.convolution2"),
        Rename(f"{fusion}.residual_unit.conv1.", "neck.fusion_stage.layers.*.residual_layer1.convolution1"),
        Rename(f"{fusion}.residual_unit.conv2.", "neck.fusion_stage.layers.*.residual_layer1.convolution2"),
        Rename(f"{head}.convs", "neck.convs"),
        Rename(f"{head}.project", "decoder.project"),
    )


register_submodel(
    "Tipsv2DptForDepthEstimation",
    (*_dpt("depth_head"), Rename("depth_head.depth_head.", "decoder.head")),
    family="vision",
)
register_submodel(
    "Tipsv2DptForNormalEstimation",
    (*_dpt("normals_head"), Rename("normals_head.normals_head.", "decoder.head")),
    family="vision",
)
register_submodel(
    "Tipsv2DptForSemanticSegmentation",
    (*_dpt("segmentation_head"), Rename("segmentation_head.segmentation_head.", "decoder.head")),
    family="vision",
)
register(
    "tipsv2_dpt",
    (
        *_dpt("head"),
        Rename("depth_head.depth_head.", "depth_decoder.head"),
        Rename("normals_head.normals_head.", "normals_decoder.head"),
        Rename("segmentation_head.segmentation_head.", "segmentation_decoder.head"),
    ),
    family="vision",
    root_class="Tipsv2DptForDepthEstimation",
    submodels=[Nested("backbone", "Tipsv2VisionBackbone")],
)
