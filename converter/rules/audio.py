"""Speech and audio models: audio-LMs built like LLaVA (``audio_tower`` + projector + language model), NeMo-style
ASR/speech-LM checkpoints, codecs (Mimi) and TTS, published under their original module names."""

from .core import Convert, Rename
from .ops import Chunk, PermuteForRope, Transpose
from .registry import Nested, alias, register, register_submodel, submodel_alias

# --- audio-LMs: the LLaVA layout with an audio tower --------------------------------------------------------------
register_submodel("Qwen2AudioModel", (Rename("^language_model.model", "^language_model"),), family="audio")
for cls in (
    "AudioFlamingo3Model",
    "GlmAsrModel",
    "MusicFlamingoModel",
    "VoxtralModel",
    "VoxtralRealtimeModel",
):
    submodel_alias(cls, "Qwen2AudioModel")
QWEN2_AUDIO = (
    Rename("^language_model.lm_head", "^lm_head"),
    Rename("^language_model", "^model.language_model"),
    Rename("^audio_tower", "^model.audio_tower"),
    Rename("^multi_modal_projector", "^model.multi_modal_projector"),
)
register("qwen2_audio", QWEN2_AUDIO, family="audio", submodels=[Nested("model", "Qwen2AudioModel")])
for t, cls in (
    ("voxtral", "VoxtralModel"),
    ("voxtral_realtime", "VoxtralRealtimeModel"),
    ("audioflamingo3", "AudioFlamingo3Model"),
    ("glmasr", "GlmAsrModel"),
    ("musicflamingo", "MusicFlamingoModel"),
):
    alias(t, "qwen2_audio", submodels=[Nested("model", cls)])

register_submodel("GraniteSpeechModel", (Rename("^language_model.model", "^language_model"),), family="audio")
submodel_alias("GraniteSpeechPlusModel", "GraniteSpeechModel")
register(
    "granite_speech",
    (
        Rename("^language_model.lm_head", "^lm_head"),
        Rename("^language_model", "^model.language_model"),
        Rename("^encoder", "^model.encoder"),
        Rename("^projector", "^model.projector"),
    ),
    family="audio",
    submodels=[Nested("model", "GraniteSpeechModel")],
)
alias("granite_speech_plus", "granite_speech", submodels=[Nested("model", "GraniteSpeechPlusModel")])

register_submodel("VibeVoiceAsrModel", (Rename("^language_model.model", "^language_model"),), family="audio")
register(
    "vibevoice_asr",
    (
        Rename("^language_model.lm_head", "^lm_head"),
        Rename("^language_model", "^model.language_model"),
        Rename("^acoustic_tokenizer_encoder", "^model.acoustic_tokenizer_encoder"),
        Rename("^semantic_tokenizer_encoder", "^model.semantic_tokenizer_encoder"),
        Rename("^multi_modal_projector", "^model.multi_modal_projector"),
    ),
    family="audio",
    submodels=[Nested("model", "VibeVoiceAsrModel")],
)

# --- NeMo-style checkpoints ---------------------------------------------------------------------------------------
ENC_ATTN = (
    ("linear_q", "q_proj"),
    ("linear_k", "k_proj"),
    ("linear_v", "v_proj"),
    ("linear_out", "o_proj"),
    ("linear_pos", "relative_k_proj"),
    ("pos_bias_u", "bias_u"),
    ("pos_bias_v", "bias_v"),
)
DEC_ATTN = (
    ("query_net", "q_proj"),
    ("key_net", "k_proj"),
    ("value_net", "v_proj"),
    ("out_projection", "o_proj"),
)
register(
    "cohere_asr",
    (
        Rename("encoder.pre_encode.conv.", "encoder.subsampling.layers"),
        Rename("encoder.pre_encode.out.", "encoder.subsampling.linear"),
        Rename("transf_decoder._embedding.position_embedding.pos_enc", "decoder.pos_emb.weight"),
        Rename("transf_decoder._embedding.token_embedding", "decoder.embed_tokens"),
        Rename("transf_decoder._embedding.layer_norm", "decoder.embedding_layernorm"),
        Rename("transf_decoder._decoder.final_layer_norm", "decoder.norm"),
        Rename("transf_decoder._decoder.layers", "decoder.layers"),
        Rename("encoder_decoder_proj.", "decoder.proj"),
        # transformers: `encoder\.(.+)\.self_attn\.linear_q` -> `encoder.\1.self_attn.q_proj` (and the decoder's);
        # the encoder's attention alone has these names
        *(Rename(f".self_attn.{a}", f"self_attn.{b}") for a, b in ENC_ATTN),
        *(Rename(f".first_sub_layer.{a}", f"self_attn.{b}") for a, b in DEC_ATTN),
        *(Rename(f".second_sub_layer.{a}", f"encoder_attn.{b}") for a, b in DEC_ATTN),
        Rename(".third_sub_layer.dense_in", "mlp.fc1"),
        Rename(".third_sub_layer.dense_out", "mlp.fc2"),
        Rename(".layer_norm_1.", "input_layernorm"),
        Rename(".layer_norm_2.", "post_attention_layernorm"),
        Rename(".layer_norm_3.", "final_layernorm"),
        Rename(".conv.batch_norm", "conv.norm"),
        Rename("log_softmax.mlp.layer0", "proj_out"),
    ),
    family="audio",
)

DIAR = "perception.encoder.diarization_model"
SORTFORMER = f"{DIAR}.sortformer_modules"
register(
    "nemo_speechlm",
    (
        Rename("^perception.encoder.asr_encoder.", "^model.audio_tower.asr_encoder"),
        Rename(f"^{DIAR}.encoder.", "^model.audio_tower.diarization_model.model.audio_tower"),
        Rename("^ctc_timestamp.decoder.transformer.", "^model.word_timestamp_encoder"),
        Rename("^ctc_timestamp.decoder.upsample.", "^model.word_timestamp_encoder.upsampler"),
        Rename("^ctc_timestamp.decoder.decoder_layers.0.", "^word_timestamp_head"),
        Rename(f"^{SORTFORMER}.encoder_proj.", "^model.audio_tower.diarization_model.model.proj"),
        Rename(
            f"^{SORTFORMER}.subpixel_upsample.", "^model.audio_tower.diarization_model.model.upsampler.conv"
        ),
        Rename(
            f"^{SORTFORMER}.first_hidden_to_hidden.", "^model.audio_tower.diarization_model.classifier.dense"
        ),
        Rename(
            f"^{SORTFORMER}.single_hidden_to_spks.",
            "^model.audio_tower.diarization_model.classifier.out_proj",
        ),
        Rename(f"^{SORTFORMER}.learnable_sil_emb", "^model.audio_tower.diarization_model.silence_embeds"),
        Rename("^perception.encoder.asr_norm.", "^model.audio_tower.asr_norm"),
        Rename("^perception.encoder.diar_norm.", "^model.audio_tower.speaker_norm"),
        Rename("^perception.proj.", "^model.multi_modal_projector"),
        Rename("^llm.model.embed_tokens.", "^model.language_model.embeddings"),
        Rename("^llm.model.norm.", "^model.language_model.norm_f"),
        Rename("^llm.model.layers.", "^model.language_model.layers"),
        Rename("^llm.lm_head.", "^lm_head"),
        Rename(".pre_encode.proj.", "embedder.projection"),
        Rename(".embed_norm.", "input_layer_norm"),
        Rename(".final_norm.", "layer_norm"),
        Rename(".norm1.", "layer_norm1"),
        Rename(".norm2.", "layer_norm2"),
        Rename(".attn.out_proj.", "self_attn.o_proj"),
        Rename(".attn.q_norm.", "self_attn.q_norm"),
        Rename(".attn.k_norm.", "self_attn.k_norm"),
        Rename(".ffn.net.0.", "mlp.fc1"),
        Rename(".ffn.net.3.", "mlp.fc2"),
        Rename(".mixer._fp32_params.A_log", "mixer.A_log"),
        Rename(".mixer._fp32_params.D", "mixer.D"),
        Rename(".mixer._fp32_params.dt_bias", "mixer.dt_bias"),
        Convert(
            ".attn.w_qkv.weight",
            ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"],
            [Chunk(0)],
        ),
        Convert(".mixer.experts.gate_and_up_projs", "mixer.experts.up_proj", [Transpose(1, 2)]),
        Convert(".mixer.experts.down_projs", "mixer.experts.down_proj", [Transpose(1, 2)]),
    ),
    family="audio",
    # its Nemotron-H language model brings `backbone. -> model.` and the expert stacking
    submodels=[Nested("language_model", "nemotron_h")],
)

FLOW = "^flow_lm"
COND = f"{FLOW}.condition_provider.conditioners"
register(
    "gradium_phonon_tts",
    (
        Rename(f"{COND}.transcript_in_segment.embed.", "^model.embed_tokens"),
        Rename(f"{COND}.speaker_wavs.output_proj.", "^model.audio_prompt_proj"),
        Rename(f"{COND}.num_speakers.embed.", "^model.num_speakers_embed"),
        Rename(f"{COND}.num_speakers.output_proj.", "^model.num_speakers_proj"),
        Rename(f"{COND}.duration_delta.output_proj.", "^model.duration_delta_proj"),
        Rename(f"{FLOW}.input_linear.", "^model.audio_latent_proj"),
        Rename(f"{FLOW}.bos_emb", "^model.bos_latent"),
        Rename(f"{FLOW}.emb_mean", "^latent_mean"),
        Rename(f"{FLOW}.emb_std", "^latent_std"),
        Rename(f"{FLOW}.out_norm.", "^model.norm"),
        Rename(f"{FLOW}.out_eos.", "^eos_head"),
        Rename(f"{FLOW}.transformer.layers.*.self_attn.in_proj.", "^model.layers.*.self_attn.in_proj"),
        Rename(f"{FLOW}.transformer.layers.*.self_attn.out_proj.", "^model.layers.*.self_attn.o_proj"),
        Rename(f"{FLOW}.transformer.layers.*.linear1.", "^model.layers.*.mlp.fc1"),
        Rename(f"{FLOW}.transformer.layers.*.linear2.", "^model.layers.*.mlp.fc2"),
        Rename(f"{FLOW}.transformer.layers.*.norm1.", "^model.layers.*.input_layernorm"),
        Rename(f"{FLOW}.transformer.layers.*.norm2.", "^model.layers.*.post_attention_layernorm"),
        Rename(f"{FLOW}.flow_net.time_embed.*.freqs", "^flow_head.timestep_embeddings.*.freqs"),
        Rename(f"{FLOW}.flow_net.time_embed.*.mlp.0.", "^flow_head.timestep_embeddings.*.fc1"),
        Rename(f"{FLOW}.flow_net.time_embed.*.mlp.2.", "^flow_head.timestep_embeddings.*.fc2"),
        Rename(f"{FLOW}.flow_net.time_embed.*.mlp.3.alpha", "^flow_head.timestep_embeddings.*.norm.weight"),
        Rename(f"{FLOW}.flow_net.cond_embed.", "^flow_head.cond_proj"),
        Rename(f"{FLOW}.flow_net.input_proj.", "^flow_head.input_proj"),
        Rename(f"{FLOW}.flow_net.res_blocks.*.in_ln.", "^flow_head.layers.*.norm"),
        Rename(f"{FLOW}.flow_net.res_blocks.*.mlp.0.", "^flow_head.layers.*.fc1"),
        Rename(f"{FLOW}.flow_net.res_blocks.*.mlp.2.", "^flow_head.layers.*.fc2"),
        Rename(f"{FLOW}.flow_net.res_blocks.*.adaLN_modulation.1.", "^flow_head.layers.*.adaln_proj"),
        Rename(f"{FLOW}.flow_net.final_layer.linear.", "^flow_head.final_layer.proj"),
        Rename(f"{FLOW}.flow_net.final_layer.adaLN_modulation.1.", "^flow_head.final_layer.adaln_proj"),
        Convert(
            "self_attn.in_proj.weight",
            ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"],
            [Chunk(0), PermuteForRope(None, ("q_proj", "k_proj"))],
        ),
    ),
    family="audio",
)

# --- Mimi (codec), Nemotron-H omni ------------------------------------------------------------------------------
register_submodel("MimiEncoderModel", (Rename("^encoder.layers", "^encoder_seanet.layers"),), family="audio")
register_submodel("MimiDecoderModel", (Rename("^decoder.layers", "^decoder_seanet.layers"),), family="audio")
register_submodel(
    "MimiModel",
    (
        Rename("^encoder.layers", "^encoder.encoder.layers"),
        Rename("^encoder_transformer", "^encoder.encoder_transformer"),
        Rename("^downsample", "^encoder.downsample"),
        Rename("^upsample", "^decoder.upsample"),
        Rename("^decoder_transformer", "^decoder.decoder_transformer"),
        Rename("^decoder.layers", "^decoder.decoder.layers"),
    ),
    family="audio",
)
register_submodel(
    "NemotronH_Omni_Reasoning_V3",
    (
        Rename("^mlp1.0.", "^multi_modal_projector.layer_norm"),
        Rename("^mlp1.1.", "^multi_modal_projector.linear_1"),
        Rename("^mlp1.3.", "^multi_modal_projector.linear_2"),
        Rename("^sound_encoder.encoder.", "^audio_tower"),
        Rename("^sound_projection.norm.", "^embed_audio.layer_norm"),
        Rename("^sound_projection.linear1.", "^embed_audio.linear_1"),
        Rename("^sound_projection.linear2.", "^embed_audio.linear_2"),
    ),
    family="audio",
)
