"""Synthetic checkpoints for the compute benches (numpy only): a Mixtral-shaped bf16 checkpoint sized in GB, its
block-scaled FP8 twin (DeepSeek-V3 style: float8_e4m3fn weights + float32 ``weight_scale_inv`` per 128x128 block),
and a gpt_oss-shaped MXFP4 checkpoint (uint8 ``*_blocks`` / ``*_scales`` experts).

    python bench/checkpoints.py bf16 OUT --gb 2
    python bench/checkpoints.py fp8 OUT --gb 7        # about 7 GB once dequantized to bf16
    python bench/checkpoints.py mxfp4 OUT --gb 2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from converter.demo import MixtralShape, mixtral_config, mixtral_tensors, write_mixtral_checkpoint  # noqa: E402
from converter.safetensors_io import INDEX_NAME, dtype_nbytes, encode_header, shard_name  # noqa: E402

#: the block of DeepSeek-V3's FP8 checkpoints
FP8_BLOCK = 128


def mixtral_shape(gb: float) -> MixtralShape:
    """The bench Mixtral shape (hidden 1024, 8 experts of 3584) with as many layers as make about ``gb`` GB of bf16."""
    base = MixtralShape.bench()
    per_layer = sum(dtype_nbytes("BF16", s) for n, s in mixtral_tensors(base) if ".layers.0." in n)
    rest = sum(dtype_nbytes("BF16", s) for n, s in mixtral_tensors(base) if ".layers." not in n)
    return MixtralShape(**{**base.__dict__, "layers": max(1, round((gb * 1e9 - rest) / per_layer))})


def _bf16(rng: np.random.Generator, n: int) -> np.ndarray:
    x = (rng.standard_normal(n, dtype=np.float32) * 0.02).view(np.uint32)
    return (x >> 16).astype("<u2")


def _fp8(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.integers(0, 256, n, dtype=np.uint8)
    x[(x & 0x7F) == 0x7F] = 0  # no NaN codes
    return x


def _write(
    root: Path, tensors: list[tuple[str, str, tuple[int, ...], np.ndarray]], config: dict, max_shard: int
) -> Path:
    """Tensors (name, dtype, shape, data) in order into shards of about ``max_shard`` bytes, with index and config."""
    root.mkdir(parents=True, exist_ok=True)
    groups: list[list[tuple[str, str, tuple[int, ...], np.ndarray]]] = [[]]
    size = 0
    for t in tensors:
        n = dtype_nbytes(t[1], t[2])
        if groups[-1] and size + n > max_shard:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += n
    weight_map = {}
    for i, group in enumerate(groups):
        file = shard_name(i, len(groups))
        header, _ = encode_header(((n, d, s) for n, d, s, _ in group), {"format": "pt"})
        with open(root / file, "wb") as f:
            f.write(header)
            for name, _, _, data in group:
                f.write(data.tobytes())
                weight_map[name] = file
    if len(groups) > 1:
        total = sum(dtype_nbytes(d, s) for _, d, s, _ in tensors)
        (root / INDEX_NAME).write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
        )
    (root / "config.json").write_text(json.dumps(config, indent=2))
    return root


def _fp8_quantized(name: str, shape: tuple[int, ...]) -> bool:
    """As DeepSeek's checkpoints: the 2-D linear weights of the decoder layers, not norms or the router."""
    return len(shape) == 2 and ".layers." in name and not name.endswith(("gate.weight", "norm.weight"))


def write_bf16(root: Path, gb: float, max_shard: int = 500_000_000) -> Path:
    return write_mixtral_checkpoint(root, mixtral_shape(gb), max_shard_bytes=max_shard)


def write_fp8(root: Path, gb: float, max_shard: int = 500_000_000) -> Path:
    """The Mixtral shape of :func:`mixtral_shape` with FP8 linear weights: about ``gb`` GB once dequantized."""
    s = mixtral_shape(gb)
    rng = np.random.default_rng(0)

    def tensors() -> Iterator[tuple[str, str, tuple[int, ...], np.ndarray]]:
        for name, shape in mixtral_tensors(s):
            n = math.prod(shape)
            if not _fp8_quantized(name, shape):
                yield name, "BF16", shape, _bf16(rng, n)
                continue
            grid = (-(-shape[0] // FP8_BLOCK), -(-shape[1] // FP8_BLOCK))
            yield name, "F8_E4M3", shape, _fp8(rng, n)
            scale = rng.uniform(1e-4, 1e-3, math.prod(grid)).astype("<f4")
            yield name + "_scale_inv", "F32", grid, scale

    config = {
        **mixtral_config(s),
        "quantization_config": {
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "weight_block_size": [FP8_BLOCK, FP8_BLOCK],
        },
    }
    return _write(root, list(tensors()), config, max_shard)


def gpt_oss_layers(gb: float, experts: int = 8, hidden: int = 2880, inter: int = 2880) -> int:
    per_layer = experts * (2 * inter * hidden + hidden * inter) * 2  # bf16 once dequantized
    return max(1, round(gb * 1e9 / per_layer))


def write_mxfp4(root: Path, gb: float, max_shard: int = 500_000_000) -> Path:
    """gpt_oss-shaped (hidden 2880, 8 experts of 2880, MXFP4 experts, the rest bf16): about ``gb`` GB dequantized."""
    e, h, i, heads, kv, hd, vocab = 8, 2880, 2880, 64, 8, 64, 32000
    layers = gpt_oss_layers(gb, e, h, i)
    rng = np.random.default_rng(0)

    def bf16(name: str, *shape: int) -> tuple[str, str, tuple[int, ...], np.ndarray]:
        return name, "BF16", shape, _bf16(rng, math.prod(shape))

    def u8(name: str, lo: int, hi: int, *shape: int) -> tuple[str, str, tuple[int, ...], np.ndarray]:
        return name, "U8", shape, rng.integers(lo, hi, math.prod(shape), dtype=np.uint8)

    tensors = [bf16("model.embed_tokens.weight", vocab, h)]
    for n in range(layers):
        p = f"model.layers.{n}"
        tensors += [
            bf16(f"{p}.input_layernorm.weight", h),
            bf16(f"{p}.post_attention_layernorm.weight", h),
            bf16(f"{p}.self_attn.q_proj.weight", heads * hd, h),
            bf16(f"{p}.self_attn.q_proj.bias", heads * hd),
            bf16(f"{p}.self_attn.k_proj.weight", kv * hd, h),
            bf16(f"{p}.self_attn.k_proj.bias", kv * hd),
            bf16(f"{p}.self_attn.v_proj.weight", kv * hd, h),
            bf16(f"{p}.self_attn.v_proj.bias", kv * hd),
            bf16(f"{p}.self_attn.o_proj.weight", h, heads * hd),
            bf16(f"{p}.self_attn.o_proj.bias", h),
            bf16(f"{p}.self_attn.sinks", heads),
            bf16(f"{p}.mlp.router.weight", e, h),
            bf16(f"{p}.mlp.router.bias", e),
            u8(f"{p}.mlp.experts.gate_up_proj_blocks", 0, 256, e, 2 * i, h // 32, 16),
            u8(f"{p}.mlp.experts.gate_up_proj_scales", 118, 131, e, 2 * i, h // 32),
            bf16(f"{p}.mlp.experts.gate_up_proj_bias", e, 2 * i),
            u8(f"{p}.mlp.experts.down_proj_blocks", 0, 256, e, h, i // 32, 16),
            u8(f"{p}.mlp.experts.down_proj_scales", 118, 131, e, h, i // 32),
            bf16(f"{p}.mlp.experts.down_proj_bias", e, h),
        ]
    tensors += [bf16("model.norm.weight", h), bf16("lm_head.weight", vocab, h)]
    config = {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "hidden_size": h,
        "intermediate_size": i,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": hd,
        "num_local_experts": e,
        "num_experts_per_tok": 2,
        "vocab_size": vocab,
        "layer_types": ["sliding_attention" if n % 2 == 0 else "full_attention" for n in range(layers)],
        "sliding_window": 128,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "attention_bias": True,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
        "quantization_config": {
            "quant_method": "mxfp4",
            "modules_to_not_convert": [
                "model.layers.*.self_attn",
                "model.layers.*.mlp.router",
                "model.embed_tokens",
                "lm_head",
            ],
        },
    }
    return _write(root, tensors, config, max_shard)


WRITERS = {"bf16": write_bf16, "fp8": write_fp8, "mxfp4": write_mxfp4}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=sorted(WRITERS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--shard-mb", type=int, default=500)
    a = ap.parse_args()
    WRITERS[a.kind](a.out, a.gb, a.shard_mb * 1_000_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
