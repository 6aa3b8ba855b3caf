"""The planner and executor on a synthetic Mixtral checkpoint, checked against torch.stack / torch.cat."""

from __future__ import annotations

import json
import os

import pytest
import torch
from support.helpers import (
    MIXTRAL_CONFIG,
    assert_same_tensors,
    mixtral_tensors,
    read_tensors,
    write_checkpoint,
)

from converter import convert, plan
from converter.checkpoint import read_local_checkpoint
from converter.safetensors_io import INDEX_NAME


def expected_grouped(t: dict[str, torch.Tensor], layers: int, experts: int) -> dict[str, torch.Tensor]:
    """What transformers' MixtralForCausalLM holds: stack experts, cat gate (w1) and up (w3) rows."""
    out = {}
    for k, v in t.items():
        if ".experts." not in k:
            out[k.replace(".block_sparse_moe.", ".mlp.")] = v
    for i in range(layers):
        p = f"model.layers.{i}.block_sparse_moe.experts"
        w1 = torch.stack([t[f"{p}.{e}.w1.weight"] for e in range(experts)])
        w3 = torch.stack([t[f"{p}.{e}.w3.weight"] for e in range(experts)])
        out[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.cat([w1, w3], dim=1)
        out[f"model.layers.{i}.mlp.experts.down_proj"] = torch.stack(
            [t[f"{p}.{e}.w2.weight"] for e in range(experts)]
        )
    return out


@pytest.fixture
def published(tmp_path):
    t = mixtral_tensors(layers=2, experts=12)  # 12 experts: natural order puts experts.10 after experts.9
    write_checkpoint(tmp_path / "pub", t, shards=3, config=MIXTRAL_CONFIG)
    (tmp_path / "pub" / "tokenizer.json").write_text('{"version": "1.0"}')
    (tmp_path / "pub" / "pytorch_model.bin").write_bytes(b"stale weights in another format")
    (tmp_path / "pub" / "original").mkdir()
    return tmp_path / "pub", t


def test_forward_matches_stack_and_cat(published, tmp_path):
    src, t = published
    result = convert(src, tmp_path / "out")
    got = read_tensors(tmp_path / "out")
    assert_same_tensors(got, expected_grouped(t, 2, 12))
    assert got["model.layers.0.mlp.experts.gate_up_proj"].shape == (12, 12, 8)
    # every byte was copied, none computed; other files copied, other weight formats skipped
    assert result.plan.computed_bytes == 0
    assert result.copied_files == ["config.json", "tokenizer.json"]
    assert result.skipped_files == ["original/", "pytorch_model.bin"]
    assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"version": "1.0"}'
    assert not (tmp_path / "out" / "pytorch_model.bin").exists()
    # no temporary folder left next to the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "pub"]


def test_reverse_round_trip_is_bit_exact(published, tmp_path):
    src, t = published
    convert(src, tmp_path / "grouped")
    convert(tmp_path / "grouped", tmp_path / "back", direction="reverse")
    assert_same_tensors(read_tensors(tmp_path / "back"), t)


def test_already_converted_plans_to_noop(published, tmp_path):
    src, _ = published
    convert(src, tmp_path / "grouped")
    p = plan(tmp_path / "grouped")
    assert p.is_noop
    assert p.counts() == {"copy": len(p.tensors)}
    result = convert(tmp_path / "grouped", tmp_path / "again")
    assert result.noop and result.output == str(tmp_path / "again")
    assert sorted(os.listdir(tmp_path / "again")) == sorted(os.listdir(tmp_path / "grouped"))
    assert_same_tensors(read_tensors(tmp_path / "again"), read_tensors(tmp_path / "grouped"))
    # and the published checkpoint is a no-op in the reverse direction
    assert plan(src, direction="reverse").is_noop


def test_plan_reads_headers_only_and_describes_pieces(published):
    src, t = published
    p = plan(src)
    gu = next(x for x in p.tensors if x.name == "model.layers.1.mlp.experts.gate_up_proj")
    assert (gu.dtype, gu.shape, gu.how) == ("BF16", (12, 12, 8), "convert")
    # expert e of gate_up_proj = w1[e] bytes then w3[e] bytes: 24 pieces (some may coalesce, none are computed)
    assert gu.is_copy and len(gu.tensor.pieces) <= 24
    assert gu.sources[:2] == (
        "model.layers.1.block_sparse_moe.experts.0.w1.weight",
        "model.layers.1.block_sparse_moe.experts.1.w1.weight",
    )
    d = p.to_dict()
    json.dumps(d)  # serialisable as is
    assert d["tensors_in"] == len(t) and d["noop"] is False


def test_a_cast_is_recorded_beside_how_the_tensor_was_made(published):
    from converter.planner import How

    src, t = published
    p = plan(src, dtype="fp16")
    gu = next(x for x in p.tensors if x.name == "model.layers.1.mlp.experts.gate_up_proj")
    head = next(x for x in p.tensors if x.name == "lm_head.weight")
    assert (gu.how, gu.cast, head.how, head.cast) == (How.CONVERT, True, How.COPY, True)
    assert not head.kept and all(x.cast for x in p.tensors)
    # plans show them as before: how, "+cast"
    assert (gu.to_dict()["how"], head.to_dict()["how"]) == ("convert+cast", "copy+cast")
    assert p.counts() == {"copy": 4, "rename": 2, "convert": 4, "cast": len(p.tensors)}
    assert not p.is_noop and plan(src).counts() == {"copy": 4, "rename": 2, "convert": 4}


def test_sharding_and_index(published, tmp_path):
    src, t = published
    result = convert(src, tmp_path / "out", max_shard_size="2KB")
    idx = json.loads((tmp_path / "out" / INDEX_NAME).read_text())
    files = sorted(set(idx["weight_map"].values()))
    assert len(files) == len(result.shards) > 3
    assert files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert idx["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in t.values())
    ck = read_local_checkpoint(tmp_path / "out")
    assert all(ck.tensors[n].file == f for n, f in idx["weight_map"].items())
    # each shard within the limit unless a single tensor is bigger
    for s in result.plan.shards:
        assert s.nbytes <= 2000 or len(s.tensors) == 1


def test_single_shard_output_has_no_index(published, tmp_path):
    src, _ = published
    convert(src, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]


def test_dtype_cast_matches_torch(published, tmp_path):
    src, t = published
    convert(src, tmp_path / "out", dtype="fp16")
    want = {k: v.to(torch.float16) for k, v in expected_grouped(t, 2, 12).items()}
    assert_same_tensors(read_tensors(tmp_path / "out"), want)


def test_cast_keeps_transformers_fp32_params(tmp_path):
    g = torch.Generator().manual_seed(1)
    t = {
        "model.layers.0.mlp.gate.e_score_correction_bias": torch.randn(4, generator=g, dtype=torch.float32),
        "model.layers.0.mlp.gate.weight": torch.randn(4, 8, generator=g, dtype=torch.float32),
    }
    for e in range(4):
        for n in ("gate_proj", "up_proj"):
            t[f"model.layers.0.mlp.experts.{e}.{n}.weight"] = torch.randn(6, 8, generator=g)
        t[f"model.layers.0.mlp.experts.{e}.down_proj.weight"] = torch.randn(8, 6, generator=g)
    write_checkpoint(tmp_path / "src", t, config={"model_type": "deepseek_v3"})
    convert(tmp_path / "src", tmp_path / "out", dtype="bf16")
    got = read_tensors(tmp_path / "out")
    assert got["model.layers.0.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    assert torch.equal(
        got["model.layers.0.mlp.gate.e_score_correction_bias"],
        t["model.layers.0.mlp.gate.e_score_correction_bias"],
    )
    assert got["model.layers.0.mlp.gate.weight"].dtype == torch.bfloat16
    want = torch.cat(
        [
            torch.stack([t[f"model.layers.0.mlp.experts.{e}.{n}.weight"] for e in range(4)])
            for n in ("gate_proj", "up_proj")
        ],
        1,
    )
    assert torch.equal(got["model.layers.0.mlp.experts.gate_up_proj"], want.to(torch.bfloat16))


def test_overwrite_replaces_atomically(published, tmp_path):
    src, t = published
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    convert(src, tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "old.txt").exists()
    assert_same_tensors(read_tensors(tmp_path / "out"), expected_grouped(t, 2, 12))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "pub"]
