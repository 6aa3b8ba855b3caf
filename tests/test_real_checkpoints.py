"""Real repo shapes, checked against transformers 5.23: ``.bin`` sources, ``--dtype`` in config.json, no-ops that
still publish, index leniency, skipped weight files, and Hub names as users type them.

The composite-model oracles (llava/mistral3/internvl with a converting text model) are in ``test_oracle.py``;
refusals of foreign layouts (Mistral native, LLaVA original) are in ``test_layouts.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
tm = pytest.importorskip("support.tiny_models")

from support.helpers import assert_same_tensors, read_tensors  # noqa: E402

from converter import convert, plan  # noqa: E402
from converter.checkpoint import BIN_INDEX_NAME, read_local_checkpoint  # noqa: E402
from converter.errors import CheckpointError, HeaderError, UnsafeCheckpointError, UnsupportedError  # noqa: E402
from converter.safetensors_io import INDEX_NAME  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    """A tiny random Mixtral in the published layout, and transformers' state dict of it."""
    root = tmp_path_factory.mktemp("mixtral")
    tm.save_published(tm.build_model("mixtral"), root / "published")
    return root / "published", tm.load_state_dict(root / "published", "mixtral")


def as_bin(published: Path, out: Path, *, sharded: bool) -> Path:
    """The same checkpoint as ``torch.save`` files: one ``pytorch_model.bin``, or one ``.bin`` per safetensors shard
    with ``pytorch_model.bin.index.json`` (what transformers 4 wrote with ``safe_serialization=False``)."""
    out.mkdir(parents=True)
    tensors = read_tensors(published)
    for f in published.iterdir():
        if f.suffix == ".json" and not f.name.startswith("model.safetensors"):
            shutil.copy(f, out / f.name)
    if not sharded:
        torch.save(tensors, out / "pytorch_model.bin")
        return out
    weight_map = json.loads((published / INDEX_NAME).read_text())["weight_map"]
    files = sorted(set(weight_map.values()))
    names = {f: f"pytorch_model-{i + 1:05d}-of-{len(files):05d}.bin" for i, f in enumerate(files)}
    for f, b in names.items():
        torch.save({k: tensors[k] for k, v in weight_map.items() if v == f}, out / b)
    index = {"metadata": {}, "weight_map": {k: names[v] for k, v in weight_map.items()}}
    (out / BIN_INDEX_NAME).write_text(json.dumps(index))
    return out


# --- .bin sources ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_bin_source_converts_bit_exactly(mixtral, tmp_path, sharded):
    published, want = mixtral
    src = as_bin(published, tmp_path / "bin", sharded=sharded)
    # transformers reads these .bin files as the same checkpoint
    assert_same_tensors(tm.load_state_dict(src, "mixtral"), want)
    p = plan(src)
    assert p.source_index.format == "pytorch" and not p.is_noop
    assert all(t.is_copy for t in p.tensors)  # byte ranges of the .bin files, no tensor loaded
    result = convert(src, tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(f.name for f in out.iterdir() if f.suffix in (".bin", ".safetensors")) == sorted(
        f.name for f in out.iterdir() if f.suffix == ".safetensors"
    )
    assert_same_tensors(read_tensors(out), want)
    assert_same_tensors(tm.load_state_dict(out, "mixtral"), want)
    assert result.summary()["source_format"] == "pytorch"
    # and back to the published layout, as safetensors
    convert(out, tmp_path / "back", direction="reverse")
    assert_same_tensors(read_tensors(tmp_path / "back"), read_tensors(published))


def test_bin_next_to_safetensors_is_skipped_and_reported(mixtral, tmp_path):
    published, want = mixtral
    src = tmp_path / "both"
    shutil.copytree(published, src)
    torch.save({"x": torch.zeros(2)}, src / "pytorch_model.bin")
    (src / "consolidated.safetensors").write_bytes((published / sorted(published.glob("*.safetensors"))[0].name)
                                                   .read_bytes())  # fmt: skip
    result = convert(src, tmp_path / "out")
    assert result.plan.source_index.format == "safetensors"
    assert {"pytorch_model.bin", "consolidated.safetensors"} <= set(result.skipped_files)
    assert {"pytorch_model.bin", "consolidated.safetensors"} <= set(result.plan.summary()["skipped_files"])
    assert not (tmp_path / "out" / "consolidated.safetensors").exists()
    assert_same_tensors(read_tensors(tmp_path / "out"), want)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _bin(tmp_path: Path, payload: object, name: str = "pytorch_model.bin") -> Path:
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    torch.save(payload, folder / name)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def test_hostile_pickle_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = _bin(tmp_path, {"model.embed_tokens.weight": torch.zeros(2, 2), "evil": _Boom()})
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system|os\.system"):
        plan(src)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"model.embed_tokens.weight": torch.zeros(2), "epoch": 3}, "'epoch' is int, not a tensor"),
        ({"model": {"w": torch.zeros(2)}}, "'model' is a nested dict"),
        ([torch.zeros(2)], "holds a list, not a state dict"),
    ],
    ids=["int", "nested", "list"],
)
def test_pickle_with_a_non_tensor_payload_is_refused(tmp_path, payload, match):
    with pytest.raises(UnsafeCheckpointError, match=match):
        plan(_bin(tmp_path, payload))


def test_bin_edge_cases(tmp_path):
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    with pytest.raises(UnsupportedError, match="non-contiguous"):
        plan(_bin(tmp_path, {"model.embed_tokens.weight": t.t()}))
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save(
        {"model.embed_tokens.weight": t}, legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False
    )
    with pytest.raises(UnsupportedError, match="legacy"):
        read_local_checkpoint(legacy)
    (legacy / "pytorch_model.bin").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(HeaderError, match="not a readable zip"):
        read_local_checkpoint(legacy)
    # shared storages (tied weights) and views at an offset are plain byte ranges
    ok = tmp_path / "ok"
    ok.mkdir()
    base = torch.arange(20, dtype=torch.bfloat16)
    torch.save({"a": base, "b": base, "c": base[5:9].view(2, 2)}, ok / "pytorch_model.bin")
    idx = read_local_checkpoint(ok)
    assert idx.tensors["c"].offset == idx.tensors["a"].offset + 10 and idx.tensors["c"].length == 8
    assert_same_tensors(read_tensors(ok), {"a": base, "b": base, "c": base[5:9].view(2, 2)})


def test_pickle_fuzz_never_runs_or_crashes(tmp_path):
    """Truncated and bit-flipped .bin files give typed errors only."""
    src = _bin(tmp_path, {"w": torch.arange(64, dtype=torch.float32)})
    raw = (src / "pytorch_model.bin").read_bytes()
    import random

    rng = random.Random(0)
    for i in range(300):
        data = bytearray(raw)
        if i % 3 == 0:
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        (src / "pytorch_model.bin").write_bytes(bytes(data))
        with contextlib.suppress(HeaderError, UnsafeCheckpointError, UnsupportedError):
            read_local_checkpoint(src)


# --- config.json dtype, no-ops ------------------------------------------------------------------------------------


def test_dtype_is_written_into_config(mixtral, tmp_path):
    published, _ = mixtral
    convert(published, tmp_path / "fp16", dtype="fp16")
    cfg = json.loads((tmp_path / "fp16" / "config.json").read_text())
    assert cfg["dtype"] == "float16"
    # from_pretrained(out) with no dtype argument gives fp16 weights (transformers reads config.json's dtype)
    model = tm._model_class("mixtral").from_pretrained(tmp_path / "fp16")
    dtypes = {v.dtype for v in model.state_dict().values() if v.is_floating_point()}
    assert dtypes == {torch.float16}
    assert_same_tensors(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        tm.load_state_dict(published, "mixtral", dtype=torch.float16),
    )


def test_dtype_of_nested_sub_configs(tmp_path):
    from converter.planner import config_with_dtype

    cfg = {"model_type": "llava", "torch_dtype": "bfloat16", "text_config": {"model_type": "mixtral",
           "dtype": "bfloat16"}, "vision_config": {"model_type": "clip_vision_model"}}  # fmt: skip
    out = config_with_dtype(cfg, "F16")
    assert out == {"model_type": "llava", "torch_dtype": "float16", "dtype": "float16",
                   "text_config": {"model_type": "mixtral", "dtype": "float16"},
                   "vision_config": {"model_type": "clip_vision_model"}}  # fmt: skip
    assert config_with_dtype(out, "F16") is None  # nothing to change


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gemma2"])
def test_no_conversion_types_publish_a_loadable_copy(tmp_path, model_type):
    """Types transformers loads without converting: exit 0, OUT holds the checkpoint (hard links), and
    transformers loads OUT with no missing or unexpected keys (load_state_dict raises on either)."""
    model = tm.build_model(model_type)
    tm.save_published(model, tmp_path / "published")
    want = tm.load_state_dict(tmp_path / "published", model_type)
    p = plan(tmp_path / "published")
    assert p.is_noop and p.ruleset.model_type == model_type
    r = subprocess.run(
        [sys.executable, "-m", "service.cli", "convert", str(tmp_path / "published"), str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "nothing to convert" in r.stdout
    assert_same_tensors(tm.load_state_dict(tmp_path / "out", model_type), want)
    shard = next((tmp_path / "out").glob("*.safetensors"))
    assert shard.stat().st_ino == (tmp_path / "published" / shard.name).stat().st_ino


# --- index leniency, as transformers loads it ---------------------------------------------------------------------


def test_index_leniency_loads_as_transformers_does(mixtral, tmp_path):
    published, want = mixtral
    src = tmp_path / "src"
    shutil.copytree(published, src)
    idx = json.loads((src / INDEX_NAME).read_text())
    unlisted = "model.layers.0.input_layernorm.weight"
    del idx["weight_map"][unlisted]  # in a shard, not in the index
    idx["weight_map"]["model.layers.0.not_a_tensor.weight"] = next(iter(idx["weight_map"].values()))
    (src / INDEX_NAME).write_text(json.dumps(idx))
    assert_same_tensors(tm.load_state_dict(src, "mixtral"), want)  # transformers: both tolerated
    result = convert(src, tmp_path / "out")
    assert_same_tensors(read_tensors(tmp_path / "out"), want)
    assert len(result.plan.warnings) == 2


# --- Hub names as users type them ----------------------------------------------------------------------------------


def test_hub_names_as_users_type_them(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from support.hubenv import isolated_hub, upload_tiny_mixtral

    with isolated_hub(tmp_path) as hub:
        want, _ = upload_tiny_mixtral(hub, "org/mix")
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        sha = hub.api.model_info("org/mix").sha
        monkeypatch.chdir(tmp_path)
        for i, name in enumerate(
            ["org/mix", f"org/mix@{sha}", f"{hub.endpoint}/org/mix", f"{hub.endpoint}/org/mix/tree/main",
             "https://huggingface.co/org/mix"]  # the public host is read as the configured endpoint's repo
        ):  # fmt: skip
            p = plan(name)
            assert p.source == f"hf://org/mix@{sha}", name
            if i < 2:
                convert(name, tmp_path / f"out{i}")
                assert_same_tensors(read_tensors(tmp_path / f"out{i}"), want)
        # a local folder of that name wins over the Hub
        (tmp_path / "org" / "mix").mkdir(parents=True)
        with pytest.raises(CheckpointError, match="org/mix has no config.json"):
            plan("org/mix")
        for bad in (
            "https://huggingface.co/datasets/org/mix",
            f"{hub.endpoint}/org/mix/blob/main/config.json",
        ):
            with pytest.raises(Exception, match="not a Hub model URL"):
                plan(bad)


def test_bin_source_and_noop_on_the_hub(mixtral, tmp_path, monkeypatch):
    """A .bin repo is planned and streamed with range requests (no file downloaded whole); a no-op publishes the
    files to another repo, and opens nothing as a pull request on the source repo itself."""
    from huggingface_hub import constants, snapshot_download
    from support.hubenv import isolated_hub

    published, want = mixtral
    with isolated_hub(tmp_path) as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        src = as_bin(published, tmp_path / "bin", sharded=False)
        hub.api.create_repo("org/bin")
        hub.api.upload_folder(repo_id="org/bin", folder_path=src)
        sizes = {f.name: f.stat().st_size for f in src.glob("*.bin")}
        hub.reset_requests()
        p = plan(f"{hub.endpoint}/org/bin")
        got = [r for r in hub.requests(method="GET", path_regex=r"/resolve/.*\.bin$")]
        assert got and sum(r["bytes_sent"] for r in got) < sum(sizes.values()) / 4  # headers only, by ranges
        assert p.source_index.format == "pytorch"
        convert("hf://org/bin", tmp_path / "out")
        assert_same_tensors(read_tensors(tmp_path / "out"), want)

        model = tm.build_model("llama")
        tm.save_published(model, tmp_path / "llama")
        hub.api.create_repo("org/llama")
        hub.api.upload_folder(repo_id="org/llama", folder_path=tmp_path / "llama")
        r = convert("hf://org/llama", "hf://org/llama-copy")
        assert r.noop and r.output.startswith(hub.endpoint)
        monkeypatch.undo()  # huggingface_hub builds download URLs from the endpoint it was imported with
        copy = tmp_path / "llama-copy"  # a plain folder (transformers treats a cache snapshot as a Hub repo)
        shutil.copytree(
            snapshot_download("org/llama-copy", endpoint=hub.endpoint, cache_dir=tmp_path / "dl"), copy
        )
        for f in (tmp_path / "llama").glob("*.safetensors"):
            assert (copy / f.name).read_bytes() == f.read_bytes()
        assert "base_model: org/llama" in (copy / "README.md").read_text()
        assert_same_tensors(
            tm.load_state_dict(copy, "llama"), tm.load_state_dict(tmp_path / "llama", "llama")
        )
        before = hub.api.list_repo_commits("org/llama")
        from converter.executor import execute
        from converter.storage.hub_sink import HubSink
        from converter.storage.hub_source import HubSource

        s = HubSource("org/llama", endpoint=hub.endpoint)
        r = execute(plan(s), s, HubSink("org/llama", create_pr=True, endpoint=hub.endpoint))
        assert r.noop and r.shards == []
        assert hub.api.list_repo_commits("org/llama") == before
        assert list(hub.api.get_repo_discussions("org/llama")) == []
