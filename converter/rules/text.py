"""Text encoders and language models published under their original names (BERT-style embedders, ESM, GPT-NeoX,
HRM, LFM3, TimesFM, T5Gemma2's encoder, MTP heads): renames, and fused projections chunked into their parts."""

from .core import Convert, Rename, prefix_change
from .ops import Chunk
from .registry import register, register_submodel

register(
    "esm",
    (
        # one rotary buffer per layer on disk, one in the model: several names onto one (refused unless only one)
        Rename(
            "encoder.layer.*.attention.self.rotary_embeddings.inv_freq",
            "rotary_embeddings.inv_freq",
            reversible=False,
        ),
        Rename("LayerNorm.gamma", "LayerNorm.weight", reversible=False),
        Rename("LayerNorm.beta", "LayerNorm.bias", reversible=False),
    ),
    family="text",
    unsupported=(
        "ESM checkpoints store one rotary `inv_freq` buffer per layer and transformers keeps one of them (all "
        "equal); collapsing them is not a conversion that can be reversed, so it is refused"
    ),
)
QKV = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
register(
    "nomic_bert",
    (
        Rename("encoder.layers", "layers"),
        Rename("emb_ln", "embeddings.LayerNorm"),
        Rename("attn.out_proj", "self_attn.o_proj"),
        Rename("fc11", "up_proj"),
        Rename("fc12", "gate_proj"),
        Rename("fc2", "down_proj"),
        Rename("norm1", "post_attention_layernorm"),
        Rename("norm2", "post_mlp_layernorm"),
        Convert("attn.Wqkv", QKV, [Chunk(0)]),
    ),
    family="text",
)
register(
    "gte",
    (
        prefix_change("", remove="new", reversible=False),
        Rename("encoder.layer", "layers"),
        Rename("attention.o_proj", "self_attn.o_proj"),
        Rename("attn_ln", "post_attention_layernorm"),
        Rename("mlp_ln", "post_mlp_layernorm"),
        Rename("lm_head.norm", "lm_head.layer_norm"),
        Convert("attention.qkv_proj", QKV, [Chunk(0)]),
        Convert("mlp.up_gate_proj", ["mlp.up_proj", "mlp.gate_proj"], [Chunk(0)]),
    ),
    family="text",
)
register(
    "jina_embeddings_v3",
    (
        Rename("emb_ln", "embeddings.LayerNorm"),
        Rename("encoder.layers", "layers"),
        Rename("mixer.out_proj", "self_attn.o_proj"),
        Rename("norm1", "post_attention_layernorm"),
        Rename("norm2", "post_mlp_layernorm"),
        Convert("mixer.Wqkv", QKV, [Chunk(0)]),
    ),
    family="text",
)
register(
    "hrm_text",
    (
        Convert("mlp.gate_up_proj.weight", ["mlp.gate_proj.weight", "mlp.up_proj.weight"], [Chunk(0)]),
        Convert(
            "attn.gqkv_proj.weight",
            [
                "self_attn.gate_proj.weight",
                "self_attn.q_proj.weight",
                "self_attn.k_proj.weight",
                "self_attn.v_proj.weight",
            ],
            [Chunk(0)],
        ),
        Rename(".attn.o_proj.", "self_attn.o_proj"),
    ),
    family="text",
)
register("lfm3", (Rename(".self_attn.gate_proj.", "self_attn.g_proj"),), family="text")
register("timesfm2_5", (Rename("ff0", "fc1"), Rename("ff1", "fc2")), family="text")
register(
    "t5gemma2_encoder",
    (
        # transformers: look-behinds keep the decoder's and the vision encoder's names; a rename never re-applies
        Rename("embed_tokens.", "text_model.embed_tokens", unless=("decoder.embed_tokens",)),
        Rename("norm.", "text_model.norm", unless=("decoder.norm",)),
        Rename(
            "layers",
            "text_model.layers",
            unless=("vision_model.encoder.layers", "vision_tower.encoder.layers", "decoder.layers"),
        ),
    ),
    family="text",
)

register_submodel("GPTNeoXForCausalLM", (Rename("^embed_out.", "^lm_head"),), family="text")
register_submodel("UltrabertModel", (prefix_change("", remove="ultrabert", reversible=False),), family="text")
register_submodel(
    "UltrabertForMaskedLM", (Rename("^ultrabert.", "^model"), Rename("^cls.", "^head.decoder")), family="text"
)
for cls in (
    "UltrabertForSequenceClassification",
    "UltrabertForTokenClassification",
    "UltrabertForQuestionAnswering",
):
    register_submodel(cls, (Rename("^ultrabert.", "^model"),), family="text")
register_submodel(
    "UltraVBertForMaskedLM",
    (Rename("^head.decoder.", "^lm_head"), Rename("^head.", "^projection_head")),
    family="text",
)

MTP_PARTS = ("mtp_block", "enorm", "hnorm", "eh_proj", "post_norm")
register_submodel(
    "MtpModel",
    (
        prefix_change("", remove="model", reversible=False),
        prefix_change("", remove="mtp", reversible=False),
        Rename(".shared_head.norm.", "post_norm"),
        Rename(".mtp_block.enorm.", "enorm"),
        Rename(".mtp_block.hnorm.", "hnorm"),
        Rename(".mtp_block.eh_proj.", "eh_proj"),
        Rename(".mtp_block.post_norm.", "post_norm"),
        Rename(".hidden_norm.", "hnorm"),
        Rename(".embed_norm.", "enorm"),
        Rename(".input_proj.", "eh_proj"),
        Rename("^chain_norm.", "^shared_post_norm"),
        Rename("layers.*.transformer_block.", "layers.*.mtp_block"),
        # transformers: `^layers\.(\d+)\.(?!(?:mtp_block|enorm|hnorm|eh_proj|post_norm)\.)` -> `layers.\1.mtp_block.`
        Rename("^layers.*.", "^layers.*.mtp_block", unless=tuple(f"^layers.*.{p}" for p in MTP_PARTS)),
        Rename("^fc.", "^layers.0.eh_proj"),
        Rename("^pre_fc_norm_embedding.", "^layers.0.enorm"),
        Rename("^pre_fc_norm_hidden.", "^layers.0.hnorm"),
        Rename("^norm.", "^layers.0.post_norm"),
    ),
    family="text",
)
