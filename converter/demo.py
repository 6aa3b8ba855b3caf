"""Synthetic Mixtral-shaped checkpoints in the published layout (numpy only, no torch), for the demo and benches."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .safetensors_io import INDEX_NAME, dtype_nbytes, encode_header, shard_name


@dataclass(frozen=True)
class MixtralShape:
    layers: int = 2
    experts: int = 4
    hidden: int = 128
    intermediate: int = 256
    vocab: int = 512
    heads: int = 4
    kv_heads: int = 2

    @classmethod
    def bench(cls) -> MixtralShape:
        """About 1.96 GB in bf16: the checkpoint SEMANTICS.md section 12 measured transformers on."""
        return cls(layers=10, experts=8, hidden=1024, intermediate=3584, vocab=32000, heads=16, kv_heads=8)


def mixtral_tensors(s: MixtralShape) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a Mixtral checkpoint as published on the Hub."""
    head_dim = s.hidden // s.heads
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (s.vocab, s.hidden))]
    for i in range(s.layers):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", (s.hidden,)),
            (f"{p}.self_attn.q_proj.weight", (s.heads * head_dim, s.hidden)),
            (f"{p}.self_attn.k_proj.weight", (s.kv_heads * head_dim, s.hidden)),
            (f"{p}.self_attn.v_proj.weight", (s.kv_heads * head_dim, s.hidden)),
            (f"{p}.self_attn.o_proj.weight", (s.hidden, s.heads * head_dim)),
            (f"{p}.post_attention_layernorm.weight", (s.hidden,)),
            (f"{p}.block_sparse_moe.gate.weight", (s.experts, s.hidden)),
        ]
        for e in range(s.experts):
            q = f"{p}.block_sparse_moe.experts.{e}"
            out += [
                (f"{q}.w1.weight", (s.intermediate, s.hidden)),
                (f"{q}.w2.weight", (s.hidden, s.intermediate)),
                (f"{q}.w3.weight", (s.intermediate, s.hidden)),
            ]
    out += [("model.norm.weight", (s.hidden,)), ("lm_head.weight", (s.vocab, s.hidden))]
    return out


def mixtral_config(s: MixtralShape) -> dict[str, object]:
    return {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "num_local_experts": s.experts,
        "num_experts_per_tok": 2,
        "vocab_size": s.vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1e6,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    }


def _bf16_random(rng: np.random.Generator, n: int) -> bytes:
    x = (rng.standard_normal(n, dtype=np.float32) * 0.02).view(np.uint32)
    return (x >> 16).astype("<u2").tobytes()


def write_mixtral_checkpoint(
    folder: str | Path,
    shape: MixtralShape | None = None,
    *,
    max_shard_bytes: int = 500_000_000,
    seed: int = 0,
) -> Path:
    """Write a random bf16 Mixtral checkpoint (sharded, with index, config and tokenizer config) to ``folder``."""
    s = shape or MixtralShape()
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = mixtral_tensors(s)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, sh in tensors:
        n = dtype_nbytes("BF16", sh)
        if groups[-1] and size + n > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, sh))
        size += n
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups):
        file = shard_name(i, len(groups))
        header, _ = encode_header(((n, "BF16", sh) for n, sh in group), {"format": "pt"})
        with open(root / file, "wb") as f:
            f.write(header)
            for name, sh in group:
                f.write(_bf16_random(rng, int(np.prod(sh))))
                weight_map[name] = file
    if len(groups) > 1:
        total = sum(dtype_nbytes("BF16", sh) for _, sh in tensors)
        (root / INDEX_NAME).write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    (root / "config.json").write_text(json.dumps(mixtral_config(s), indent=2))
    (root / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2))
    (root / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 4096, "shape": asdict(s)}, indent=2)
    )
    return root
