"""Object detection / segmentation models (DETR family, RT-DETR, RF-DETR, MaskFormer): attention and FFN renames,
fused ``in_proj`` chunked into q/k/v. Several are keyed by class in transformers (``DetrModel``,
``ConditionalDetrForSegmentation``...): their rules live in :data:`SUBMODELS`."""

from .core import Convert, Rename
from .ops import Chunk
from .registry import Nested, alias, register, register_submodel, submodel_alias

FFN = (Rename("layers.*.fc1", "layers.*.mlp.fc1"), Rename("layers.*.fc2", "layers.*.mlp.fc2"))
DETR = (Rename("backbone.conv_encoder", "backbone"), Rename("out_proj", "o_proj"), *FFN)
register_submodel("DetrModel", DETR, family="detection")
submodel_alias("MaskFormerDetrDecoder", "DetrModel")

MASK_HEAD = (
    Rename("bbox_attention.q_linear", "bbox_attention.q_proj"),
    Rename("bbox_attention.k_linear", "bbox_attention.k_proj"),
    Rename("mask_head.lay1", "mask_head.conv1.conv"),
    Rename("mask_head.gn1", "mask_head.conv1.norm"),
    Rename("mask_head.lay2", "mask_head.conv2.conv"),
    Rename("mask_head.gn2", "mask_head.conv2.norm"),
    *(
        r
        for i in range(3)
        for r in (
            Rename(f"mask_head.adapter{i + 1}", f"mask_head.fpn_stages.{i}.fpn_adapter"),
            Rename(f"mask_head.lay{i + 3}", f"mask_head.fpn_stages.{i}.refine.conv"),
            Rename(f"mask_head.gn{i + 3}", f"mask_head.fpn_stages.{i}.refine.norm"),
        )
    ),
    Rename("mask_head.out_lay", "mask_head.output_conv"),
)
register_submodel("DetrForSegmentation", MASK_HEAD, family="detection")
register_submodel("ConditionalDetrForSegmentation", MASK_HEAD, family="detection")

CONDITIONAL_ATTN = tuple(
    Rename(f"decoder.layers.*.{pre}_{part}", f"decoder.layers.*.{attn}.{new}")
    for pre, attn in (("sa", "self_attn"), ("ca", "encoder_attn"))
    for part, new in (
        ("qcontent_proj", "q_content_proj"),
        ("qpos_proj", "q_pos_proj"),
        ("kcontent_proj", "k_content_proj"),
        ("kpos_proj", "k_pos_proj"),
        ("v_proj", "v_proj"),
    )
)
register_submodel(
    "ConditionalDetrModel",
    (
        Rename("backbone.conv_encoder", "backbone"),
        Rename("self_attn.out_proj", "self_attn.o_proj"),
        Rename("encoder_attn.out_proj", "encoder_attn.o_proj"),
        *FFN,
        *CONDITIONAL_ATTN,
        Rename("decoder.layers.*.ca_qpos_sine_proj", "decoder.layers.*.encoder_attn.q_pos_sine_proj"),
    ),
    family="detection",
)

register(
    "deformable_detr",
    (Rename("backbone.conv_encoder", "backbone"), Rename("self_attn.out_proj", "self_attn.o_proj"), *FFN),
    family="detection",
)
register(
    "maskformer",
    FFN,
    family="detection",
    submodels=[
        Nested("pixel_level_module.encoder", "swin"),
        Nested("transformer_module.decoder", "MaskFormerDetrDecoder"),
    ],
)
RT_DETR = (Rename("out_proj", "o_proj"), *FFN, Rename("encoder.encoder.*.layers", "encoder.aifi.*.layers"))
register("rt_detr", RT_DETR, family="detection")
for t in ("rt_detr_v2", "pp_doclayout_v2", "pp_doclayout_v3"):
    alias(t, "rt_detr")
register(
    "pp_doclayout_v4",
    (
        Rename("decoder_roor_order_head.", "decoder.successor_order_head.proj"),
        Rename("decoder_roor_global_pointer.", "decoder.successor_order_head.global_pointer"),
        Rename("decoder_order_head.", "decoder.relative_order_head.proj"),
        Rename("decoder_global_pointer.", "decoder.relative_order_head.global_pointer"),
        Rename("s2r_fusion.a", "decoder.relative_order_head.s2r_fusion.closure_weight"),
        *RT_DETR,
    ),
    family="detection",
)
register(
    "d_fine",
    (
        Rename("out_proj", "o_proj"),
        Rename("layers.*.fc1", "layers.*.mlp.layers.0"),
        Rename("layers.*.fc2", "layers.*.mlp.layers.1"),
        Rename("encoder.encoder.*.layers", "encoder.aifi.*.layers"),
    ),
    family="detection",
)
register(
    "lw_detr",
    (
        Rename("attention.attention.query", "attention.q_proj"),
        Rename("attention.attention.key", "attention.k_proj"),
        Rename("attention.attention.value", "attention.v_proj"),
        Rename("attention.output", "attention.o_proj"),
    ),
    family="detection",
)

RF_DETR_PROJECTOR = "projector.stages.0.0"
register_submodel(
    "RfDetrModel",
    (
        Rename("backbone.0.encoder.encoder", "backbone.backbone"),
        Rename("backbone.0.projector", "backbone.projector"),
        *(
            Rename(f"{RF_DETR_PROJECTOR}.{cv}.{k}", f"projector.projector_layer.{n}.{m}")
            for cv, n in (("cv1", "conv1"), ("cv2", "conv2"))
            for k, m in (("conv", "conv"), ("bn", "norm"))
        ),
        Rename("projector.stages.0.1", "projector.layer_norm"),
        *(
            Rename(f"{RF_DETR_PROJECTOR}.m.*.{cv}.{k}", f"projector.projector_layer.bottlenecks.*.{n}.{m}")
            for cv, n in (("cv1", "conv1"), ("cv2", "conv2"))
            for k, m in (("conv", "conv"), ("bn", "norm"))
        ),
        Rename("transformer.decoder", "decoder"),
        Rename("decoder.layers.*.norm1", "decoder.layers.*.self_attn_layer_norm"),
        Rename("decoder.layers.*.norm2", "decoder.layers.*.cross_attn_layer_norm"),
        Rename("decoder.layers.*.linear1", "decoder.layers.*.mlp.fc1"),
        Rename("decoder.layers.*.linear2", "decoder.layers.*.mlp.fc2"),
        Rename("decoder.layers.*.norm3", "decoder.layers.*.layer_norm"),
        Rename("decoder.norm", "decoder.layernorm"),
        Rename("^transformer.enc_output_norm", "^enc_output_norm"),
        Rename("^transformer.enc_output", "^enc_output"),
        Rename("transformer.enc_out_class_embed", "enc_out_class_embed"),
        Rename("transformer.enc_out_bbox_embed", "enc_out_bbox_embed"),
        Rename("refpoint_embed.weight", "reference_point_embed.weight"),
        Rename("attention.attention.query", "attention.q_proj"),
        Rename("attention.attention.key", "attention.k_proj"),
        Rename("attention.attention.value", "attention.v_proj"),
        Rename("attention.output.dense", "attention.o_proj"),
        Rename("self_attn.out_proj", "self_attn.o_proj"),
        Convert(
            "self_attn.in_proj_bias",
            ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"],
            [Chunk(0)],
        ),
        Convert(
            "self_attn.in_proj_weight",
            ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"],
            [Chunk(0)],
        ),
    ),
    family="detection",
)
register_submodel("RfDetrForObjectDetection", (Rename("^", "^model"),), family="detection")
SEG = "segmentation_head"
register_submodel(
    "RfDetrForInstanceSegmentation",
    (
        # transformers: `^(?!segmentation_head)` -> `model.`
        Rename("^", "^model", unless=(f"^{SEG}",)),
        Rename(f"{SEG}.query_features_block.layers.0", "query_features_block.mlp.fc1"),
        Rename(f"{SEG}.query_features_block.layers.2", "query_features_block.mlp.fc2"),
        Rename(f"{SEG}.query_features_block.norm_in", "query_features_block.norm"),
        Rename(f"{SEG}.blocks.*.norm", "blocks.*.layernorm"),
        Rename(f"{SEG}.blocks.*.dwconv", "blocks.*.depthwise_conv"),
        Rename(f"{SEG}.blocks.*.pwconv1", "blocks.*.pointwise_conv"),
        Rename(f"{SEG}.spatial_features_proj", "spatial_features_proj"),
        Rename(f"{SEG}.query_features_proj", "query_features_proj"),
        Rename(f"{SEG}.bias", "segmentation_bias"),
    ),
    family="detection",
)
