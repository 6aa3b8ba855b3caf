"""Small checkpoint writers for tests that do not need transformers: torch tensors -> sharded safetensors."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from converter.checkpoint import read_local_checkpoint
from converter.safetensors_io import INDEX_NAME
from converter.storage import LocalReader


def write_checkpoint(
    folder: Path,
    tensors: Mapping[str, torch.Tensor],
    *,
    shards: int = 2,
    config: Mapping[str, object] | None = None,
) -> Path:
    """Write ``tensors`` round-robin into ``shards`` files with an index (one file, no index, if shards == 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    groups = [names[i::shards] for i in range(shards)]
    groups = [g for g in groups if g]
    weight_map = {}
    for i, g in enumerate(groups):
        file = (
            "model.safetensors" if len(groups) == 1 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        )
        save_file({n: tensors[n].contiguous() for n in g}, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(g, file))
    if len(groups) > 1:
        (folder / INDEX_NAME).write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
        )
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder (via our own header reader + torch.frombuffer)."""
    from converter.kernels import to_tensor

    idx = read_local_checkpoint(folder)
    r = LocalReader(folder)
    try:
        return {
            n: to_tensor(r.read(t.file, t.offset, t.length), t.dtype, t.shape) for n, t in idx.tensors.items()
        }
    finally:
        r.close()


def evaluate(vt, reader, device: str | None = None) -> torch.Tensor:
    """A virtual tensor's value: its pieces read (computed ones worked out on ``device``) into a CPU tensor."""
    from converter.executor import _Streamer
    from converter.kernels import to_tensor

    return to_tensor(
        _Streamer(reader, lambda n: None, device=device).read_tensor(vt, 0, vt.nbytes), vt.dtype, vt.shape
    )


def raw_safetensors(path: Path, header: object, data: bytes = b"", *, length: int | None = None) -> Path:
    """A safetensors file with an arbitrary (possibly invalid) header, for hostile-input tests."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def assert_same_tensors(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> None:
    """Same names, dtypes, shapes and identical bytes."""
    assert sorted(got) == sorted(want), (sorted(set(got) ^ set(want)))[:10]
    for k, w in want.items():
        g = got[k]
        assert g.dtype == w.dtype, (k, g.dtype, w.dtype)
        assert g.shape == w.shape, (k, g.shape, w.shape)
        if w.numel():
            assert torch.equal(_bytes(g), _bytes(w)), k


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def mixtral_tensors(layers: int = 2, experts: int = 4, hidden: int = 8, inter: int = 6, dtype=torch.bfloat16):
    """A tiny published-layout Mixtral state dict with distinct random values."""
    g = torch.Generator().manual_seed(0)
    t: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(16, hidden, generator=g).to(dtype)}
    for i in range(layers):
        p = f"model.layers.{i}"
        t[f"{p}.block_sparse_moe.gate.weight"] = torch.randn(experts, hidden, generator=g).to(dtype)
        t[f"{p}.input_layernorm.weight"] = torch.randn(hidden, generator=g).to(dtype)
        for e in range(experts):
            q = f"{p}.block_sparse_moe.experts.{e}"
            t[f"{q}.w1.weight"] = torch.randn(inter, hidden, generator=g).to(dtype)
            t[f"{q}.w2.weight"] = torch.randn(hidden, inter, generator=g).to(dtype)
            t[f"{q}.w3.weight"] = torch.randn(inter, hidden, generator=g).to(dtype)
    t["lm_head.weight"] = torch.randn(16, hidden, generator=g).to(dtype)
    return t


MIXTRAL_CONFIG = {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"]}
