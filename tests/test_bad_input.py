"""Every bad input is refused before anything is written, with a typed error naming the key or file."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from support.helpers import MIXTRAL_CONFIG, mixtral_tensors, raw_safetensors, write_checkpoint

from converter import convert, plan
from converter.errors import (
    CheckpointError,
    CheckpointIndexError,
    DuplicateExpertError,
    DuplicateTensorError,
    ExpertMismatchError,
    HeaderError,
    MissingExpertError,
    MissingSourceError,
    OutputExistsError,
    OverlappingPathsError,
    TargetCollisionError,
    UnknownModelTypeError,
    UnsafePathError,
)
from converter.safetensors_io import INDEX_NAME, MAX_HEADER_SIZE


def _convert_fails(src, tmp_path, error, match=None, **kw):
    """Convert must raise ``error`` and leave nothing behind: no output, no temporary folder."""
    before = set(os.listdir(tmp_path))
    with pytest.raises(error, match=match) as info:
        convert(src, tmp_path / "out", **kw)
    assert set(os.listdir(tmp_path)) == before, "something was written"
    return info.value


def _mixtral(tmp_path, edit=None, **kw):
    t = mixtral_tensors(layers=1, experts=4)
    if edit:
        edit(t)
    return write_checkpoint(tmp_path / "src", t, config=MIXTRAL_CONFIG, **kw)


# --- rules-level problems -------------------------------------------------------------------------------------


def test_missing_expert(tmp_path):
    src = _mixtral(
        tmp_path,
        lambda t: [
            t.pop(f"model.layers.0.block_sparse_moe.experts.2.{w}.weight") for w in ("w1", "w2", "w3")
        ],
    )
    e = _convert_fails(src, tmp_path, MissingExpertError, "expert 2 is missing")
    assert e.key == "model.layers.0.mlp.experts.2.w1.weight"


def test_one_projection_has_fewer_experts(tmp_path):
    src = _mixtral(tmp_path, lambda t: t.pop("model.layers.0.block_sparse_moe.experts.3.w3.weight"))
    e = _convert_fails(src, tmp_path, MissingExpertError)
    assert e.key == "model.layers.0.mlp.experts.3.w3.weight"


def test_duplicate_expert(tmp_path):
    def edit(t):
        t["model.layers.0.block_sparse_moe.experts.01.w1.weight"] = t[
            "model.layers.0.block_sparse_moe.experts.1.w1.weight"
        ].clone()

    e = _convert_fails(_mixtral(tmp_path, edit), tmp_path, DuplicateExpertError, "expert 1")
    assert "experts.01.w1.weight" in e.key or "experts.1.w1.weight" in e.key


def test_experts_with_different_shapes(tmp_path):
    def edit(t):
        t["model.layers.0.block_sparse_moe.experts.3.w2.weight"] = torch.zeros(8, 7, dtype=torch.bfloat16)

    e = _convert_fails(_mixtral(tmp_path, edit), tmp_path, ExpertMismatchError, r"\[8, 7\]")
    assert e.key == "model.layers.0.block_sparse_moe.experts.3.w2.weight"


def test_experts_with_different_dtypes(tmp_path):
    def edit(t):
        k = "model.layers.0.block_sparse_moe.experts.1.w1.weight"
        t[k] = t[k].to(torch.float16)

    _convert_fails(_mixtral(tmp_path, edit), tmp_path, ExpertMismatchError, "F16")


def test_gate_without_up(tmp_path):
    def edit(t):
        for e in range(4):
            t.pop(f"model.layers.0.block_sparse_moe.experts.{e}.w3.weight")

    e = _convert_fails(_mixtral(tmp_path, edit), tmp_path, MissingSourceError)
    assert e.key == "model.layers.0.mlp.experts.*.w3.weight"


def test_two_sources_map_to_one_output(tmp_path):
    def edit(t):
        t["model.layers.0.mlp.gate.weight"] = t["model.layers.0.block_sparse_moe.gate.weight"].clone()

    e = _convert_fails(
        _mixtral(tmp_path, edit),
        tmp_path,
        TargetCollisionError,
        "both map to output model.layers.0.mlp.gate.weight",
    )
    assert e.key == "model.layers.0.mlp.gate.weight"


def test_unknown_model_type_suggests_close_names(tmp_path):
    src = _mixtral(tmp_path)
    e = _convert_fails(src, tmp_path, UnknownModelTypeError, model_type="mixtrall")
    assert "mixtral" in e.suggestions


def test_model_type_disagreeing_with_config(tmp_path):
    _convert_fails(
        _mixtral(tmp_path), tmp_path, CheckpointError, "disagrees with config.json", model_type="qwen2_moe"
    )


def test_no_config_and_no_model_type(tmp_path):
    write_checkpoint(tmp_path / "src", mixtral_tensors(layers=1))
    _convert_fails(tmp_path / "src", tmp_path, CheckpointError, "pass --model-type")


# --- the files themselves -------------------------------------------------------------------------------------

HEADER_CASES = {
    "truncated": (b"\x05\x00", None, "too short"),
    "length_past_end": (struct.pack("<Q", 10_000) + b"{}", None, "runs past the end"),
    "length_near_2_64": (struct.pack("<Q", 2**64 - 8) + b"{}", None, "exceeds"),
    "invalid_json": ({}, b"{not json", "not valid JSON"),
    "not_an_object": ({}, b"[1, 2]", "not a JSON object"),
    "unknown_dtype": ({"a": {"dtype": "F7", "shape": [1], "data_offsets": [0, 1]}}, None, "unknown dtype"),
    "negative_shape": ({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 1]}}, None, "invalid shape"),
    "offsets_out_of_range": ({"a": {"dtype": "U8", "shape": [64], "data_offsets": [0, 64]}}, None, "outside"),
    "negative_offset": ({"a": {"dtype": "U8", "shape": [1], "data_offsets": [-1, 0]}}, None, "outside"),
    "size_mismatch": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, None, "needs 8 bytes"),
    "overlap": (
        {
            "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
            "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
        },
        None,
        "overlap",
    ),
    "huge_shape": ({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, None, "needs"),
    "bad_metadata": ({"__metadata__": {"a": 1}}, None, "__metadata__"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_malformed_header(tmp_path, case):
    header, raw, match = HEADER_CASES[case]
    (tmp_path / "src").mkdir()
    path = tmp_path / "src" / "model.safetensors"
    if isinstance(header, bytes):
        path.write_bytes(header)
    elif raw is not None:
        raw_safetensors(path, raw)
    else:
        raw_safetensors(path, header, b"\x00" * 16)
    (tmp_path / "src" / "config.json").write_text(json.dumps(MIXTRAL_CONFIG))
    e = _convert_fails(tmp_path / "src", tmp_path, HeaderError, match)
    assert e.file == "model.safetensors"


def test_header_cap_is_checked_before_reading(tmp_path):
    (tmp_path / "src").mkdir()
    p = tmp_path / "src" / "model.safetensors"
    with open(p, "wb") as f:  # a sparse file whose header length is just above the cap
        f.write(struct.pack("<Q", MAX_HEADER_SIZE + 1))
        f.truncate(MAX_HEADER_SIZE + 100)
    with pytest.raises(HeaderError, match="exceeds"):
        plan(tmp_path / "src", model_type="mixtral")


def test_index_names_missing_shard(tmp_path):
    src = _mixtral(tmp_path)
    os.remove(src / "model-00002-of-00002.safetensors")
    _convert_fails(src, tmp_path, CheckpointIndexError, "does not exist")


@pytest.mark.parametrize("bad", ["../escape.safetensors", "/etc/passwd", "sub/dir.safetensors", ".."])
def test_index_shard_name_escaping_folder(tmp_path, bad):
    src = _mixtral(tmp_path)
    idx = json.loads((src / INDEX_NAME).read_text())
    first = next(iter(idx["weight_map"]))
    idx["weight_map"][first] = bad
    (src / INDEX_NAME).write_text(json.dumps(idx))
    _convert_fails(src, tmp_path, UnsafePathError)


def test_shard_symlink_out_of_folder(tmp_path):
    src = _mixtral(tmp_path)
    outside = tmp_path / "elsewhere.safetensors"
    os.rename(src / "model-00001-of-00002.safetensors", outside)
    os.symlink(outside, src / "model-00001-of-00002.safetensors")
    _convert_fails(src, tmp_path, UnsafePathError, "link out of the checkpoint folder")


def test_index_disagrees_with_shards_is_tolerated_like_transformers(tmp_path):
    """A tensor in a shard but not in the index still counts; an index entry pointing to no tensor is a warning
    (transformers 5.23 loads both); the oracle check is in test_real_checkpoints.py."""
    src = _mixtral(tmp_path)
    idx = json.loads((src / INDEX_NAME).read_text())
    name = "model.layers.0.input_layernorm.weight"
    del idx["weight_map"][name]
    idx["weight_map"]["model.not.there"] = "model-00001-of-00002.safetensors"
    (src / INDEX_NAME).write_text(json.dumps(idx))
    result = convert(src, tmp_path / "out")
    p = result.plan
    assert name in {t.name for t in p.tensors} and "model.not.there" not in {t.name for t in p.tensors}
    assert any("missing from" in w and name in w for w in p.warnings)
    assert any("no shard holds" in w and "model.not.there" in w for w in p.warnings)
    assert result.summary()["warnings"] == p.warnings


def test_index_entry_pointing_to_nothing_that_a_merge_needs_is_refused(tmp_path):
    # the last expert is gone from its shard but still in the index: stacking 3 of 4 would go unnoticed
    missing = "model.layers.0.block_sparse_moe.experts.3.w2.weight"
    src = _mixtral(tmp_path, lambda t: t.pop(missing))
    idx = json.loads((src / INDEX_NAME).read_text())
    idx["weight_map"][missing] = "model-00001-of-00002.safetensors"
    (src / INDEX_NAME).write_text(json.dumps(idx))
    e = _convert_fails(src, tmp_path, MissingExpertError, "no shard holds it")
    assert e.key == missing and "experts.down_proj" in e.message


def test_index_is_not_json(tmp_path):
    src = _mixtral(tmp_path)
    (src / INDEX_NAME).write_text("{")
    _convert_fails(src, tmp_path, CheckpointIndexError, "not valid JSON")


def test_same_tensor_in_two_shards(tmp_path):
    t = mixtral_tensors(layers=1)
    src = write_checkpoint(tmp_path / "src", t, shards=1, config=MIXTRAL_CONFIG)
    from safetensors.torch import save_file

    save_file({"lm_head.weight": t["lm_head.weight"]}, str(src / "extra.safetensors"))
    os.rename(src / "model.safetensors", src / "a.safetensors")
    _convert_fails(src, tmp_path, DuplicateTensorError, "lm_head.weight")


def test_no_safetensors_at_all(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps(MIXTRAL_CONFIG))
    _convert_fails(tmp_path / "src", tmp_path, CheckpointError, "no model.safetensors.index.json")


def test_source_does_not_exist(tmp_path):
    _convert_fails(tmp_path / "nope", tmp_path, CheckpointError, "does not exist")


# --- the output -----------------------------------------------------------------------------------------------


def test_output_not_empty_is_refused(tmp_path):
    src = _mixtral(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        convert(src, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path / "out")) == ["keep.txt"]


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_output_overlapping_source_is_refused(tmp_path, where):
    src = _mixtral(tmp_path)
    out = {"same": src, "inside": src / "converted", "parent": tmp_path}[where]
    before = sorted(os.listdir(src))
    with pytest.raises(OverlappingPathsError):
        convert(src, out, overwrite=True)
    assert sorted(os.listdir(src)) == before


def test_failure_midway_publishes_nothing(tmp_path):
    """A shard truncated after planning: the executor fails and removes its temporary folder."""
    src = _mixtral(tmp_path)
    from converter.executor import execute
    from converter.storage import LocalSink, LocalSource

    p = plan(src)
    with open(src / "model-00002-of-00002.safetensors", "r+b") as f:
        f.truncate(200)
    with pytest.raises(CheckpointError, match="changed after planning"):
        execute(p, LocalSource(src), LocalSink(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["src"]
