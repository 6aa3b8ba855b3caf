"""The compute kernels (transpose, cast, FP8/MXFP4 dequantize) give exactly the bytes torch / transformers give, on
the device asked for; a bad device is a clear error before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from support.helpers import MIXTRAL_CONFIG, evaluate, mixtral_tensors, read_tensors, write_checkpoint

from converter import kernels
from converter.errors import UnsupportedError
from converter.job import convert
from converter.rules import Cast, Fp8Dequantize, Mxfp4Dequantize, Transpose
from converter.rules.ops import OpContext

DT = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16", torch.int32: "I32"}
#: the devices this machine has: the CPU, and a GPU when torch sees one
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def run(op, slots, n_targets=1, config=None):
    return op.apply(slots, OpContext(key="t", n_targets=n_targets, config=config))


def rand(*shape, dtype=torch.bfloat16, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dims", [(1, 2), (0, 1), (0, 2), (2, 1)])
def test_transpose(vts, dims, device):
    t = rand(3, 4, 5)
    vt, r = vts({"t": t})
    (out,) = run(Transpose(*dims), [vt["t"]])
    assert not out.is_copy
    assert torch.equal(evaluate(out, r, device), t.transpose(*dims).contiguous())
    (back,) = run(Transpose(*dims).inverse, [out])
    assert torch.equal(evaluate(back, r, device), t)


def test_transpose_of_a_size_one_dim_moves_no_bytes(vts):
    vt, r = vts({"t": rand(1, 4, 5)})
    out = kernels.transpose(vt["t"], 0, 1, "t")
    assert out.is_copy and out.shape == (4, 1, 5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("to", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("frm", [torch.float32, torch.bfloat16, torch.float16])
def test_cast_is_torch_to(vts, frm, to, device):
    t = torch.cat(
        [
            rand(1000, dtype=torch.float32) * 1e4,
            torch.tensor([float("inf"), float("-inf"), 1e-40, 65519.0, 70000.0]),
        ]
    )
    t = t.to(frm)
    vt, r = vts({"t": t})
    (out,) = run(Cast(DT[to]), [vt["t"]])
    assert torch.equal(evaluate(out, r, device).view(torch.uint8), t.to(to).view(torch.uint8))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("lead", [(), (3,)])
def test_fp8_dequantize_is_transformers(vts, lead, scale_dtype, device):
    fp8 = pytest.importorskip("transformers.integrations.finegrained_fp8")
    w = (rand(*lead, 16, 24, dtype=torch.float32) * 4).to(torch.float8_e4m3fn)
    if scale_dtype == torch.uint8:
        s = torch.randint(
            118, 130, (*lead, 2, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
        )
    else:
        s = rand(*lead, 2, 3, dtype=torch.float32).abs()
    vt, r = vts({"w": w, "s": s})
    (out,) = run(Fp8Dequantize("BF16"), [vt["w"], vt["s"]])
    want = fp8.Fp8Dequantize(None)._dequantize_one(w, s, output_dtype=torch.bfloat16)
    assert torch.equal(evaluate(out, r, device).view(torch.int16), want.view(torch.int16))
    assert out.pieces[0].source.slice_bytes < out.nbytes  # one block row at a time


@pytest.mark.parametrize("device", DEVICES)
def test_mxfp4_dequantize_is_transformers(vts, device):
    mx = pytest.importorskip("transformers.integrations.mxfp4")
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 8, 2, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(110, 140, (3, 8, 2), generator=g, dtype=torch.uint8)
    vt, r = vts({"b": blocks, "s": scales})
    (out,) = run(Mxfp4Dequantize("BF16"), [vt["b"], vt["s"]])
    want = mx.convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)
    assert out.shape == tuple(want.shape) == (3, 64, 8)
    assert torch.equal(evaluate(out, r, device).view(torch.int16), want.view(torch.int16))


# --- the device: an argument of the executor, never an environment variable in the library ---------------------


def test_device_names():
    assert [kernels.check_device(d) for d in (None, "auto", "CPU", "cuda", "cuda:1")] == [
        "auto",
        "auto",
        "cpu",
        "cuda",
        "cuda:1",
    ]
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N', not 'tpu'"):
        kernels.check_device("tpu")
    assert kernels.resolve_device("cpu") == "cpu"
    assert kernels.resolve_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedError, match="no CUDA device"):
            kernels.resolve_device("cuda")


def _cast_checkpoint(tmp_path):
    write_checkpoint(tmp_path / "src", mixtral_tensors(dtype=torch.float32), config=MIXTRAL_CONFIG)
    return tmp_path / "src"


def _files(folder):
    """Every tensor's bytes and every other file (the shards' metadata names the destination: not compared)."""
    tensors = {k: v.contiguous().view(-1).view(torch.uint8) for k, v in read_tensors(folder).items()}
    others = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix != ".safetensors"}
    return others, tensors


def _same(a, b):
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def test_every_device_gives_the_same_bytes(tmp_path, monkeypatch):
    src = _cast_checkpoint(tmp_path)
    # the library ignores the variable (only the command line reads it)
    monkeypatch.setenv("CKPT_CONVERT_DEVICE", "not a device")
    outs = {}
    for device in (None, *DEVICES):
        r = convert(src, tmp_path / f"out-{device}", dtype="bf16", device=device)
        assert r.plan.computed_bytes > 0  # the cast runs on the device
        outs[device] = _files(tmp_path / f"out-{device}")
    assert all(_same(o, outs[None]) for o in outs.values())


def test_an_invalid_device_is_refused_before_anything_is_written(tmp_path):
    src = _cast_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="device must be"):
        convert(src, tmp_path / "out", dtype="bf16", device="tpu")
    assert not (tmp_path / "out").exists()
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedError, match="no CUDA device"):
            convert(src, tmp_path / "out", dtype="bf16", device="cuda")
        assert not (tmp_path / "out").exists()
        # a plan of byte copies needs no device: it converts anyway, without looking for a GPU
        assert convert(src, tmp_path / "copy", device="cuda").plan.computed_bytes == 0


def test_the_command_line_takes_the_device_from_its_option_or_the_environment(tmp_path):
    src = _cast_checkpoint(tmp_path)

    def cli(*args, env=None):
        return subprocess.run(
            [sys.executable, "-m", "converter.cli", "convert", src, *map(str, args), "--dtype", "bf16"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **(env or {})},
        )

    p = cli(tmp_path / "a", "--device", "tpu")
    assert p.returncode == 2 and "device must be" in p.stderr and not (tmp_path / "a").exists()
    p = cli(tmp_path / "b", env={"CKPT_CONVERT_DEVICE": "tpu"})
    assert p.returncode == 2 and "'tpu'" in p.stderr
    p = cli(tmp_path / "c", "--device", "cpu", env={"CKPT_CONVERT_DEVICE": "tpu"})
    assert p.returncode == 0, p.stderr
    convert(src, tmp_path / "d", dtype="bf16")
    assert _same(_files(tmp_path / "c"), _files(tmp_path / "d"))
