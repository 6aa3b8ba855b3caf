"""Each op, applied to byte pieces, gives exactly the bytes torch gives; each inverse undoes it."""

from __future__ import annotations

import pytest
import torch
from helpers import write_checkpoint

from converter.execute import _Streamer
from converter.layout import VirtualTensor, from_file
from converter.rules import (
    Cast,
    Chunk,
    Concat,
    Conv3dToLinear,
    ErnieFuseAndSplitTextVisionExperts,
    Fp8Dequantize,
    Interleave,
    LinearToConv3d,
    Mxfp4Dequantize,
    PermuteForRope,
    Split,
    Stack,
    Transpose,
    Unstack,
    op_from_dict,
)
from converter.rules.ops import OpContext, to_tensor
from converter.safetensors_io import read_local_checkpoint
from converter.storage import LocalReader

DT = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16", torch.int32: "I32"}


@pytest.fixture
def vts(tmp_path):
    """Write tensors to a checkpoint and return VirtualTensors over them plus a reader to evaluate pieces."""
    readers = []

    def make(tensors: dict[str, torch.Tensor]):
        folder = write_checkpoint(tmp_path / f"ck{len(readers)}", tensors, shards=2)
        idx = read_local_checkpoint(folder)
        r = LocalReader(folder)
        readers.append(r)
        vt = {n: from_file(n, i.dtype, i.shape, i.file, i.offset, i.length) for n, i in idx.tensors.items()}
        return vt, r

    yield make
    for r in readers:
        r.close()


def evaluate(vt: VirtualTensor, reader) -> torch.Tensor:
    return to_tensor(_Streamer(reader, lambda n: None).read_tensor(vt, 0, vt.nbytes), vt.dtype, vt.shape)


def run(op, slots, n_targets=1, config=None):
    return op.apply(slots, OpContext(key="t", n_targets=n_targets, config=config))


def rand(*shape, dtype=torch.bfloat16, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_stack_and_unstack(vts, dim):
    ts = {f"e{i}": rand(3, 5, seed=i) for i in range(4)}
    vt, r = vts(ts)
    (stacked,) = run(Stack(dim), [[vt[f"e{i}"] for i in range(4)]])
    want = torch.stack([ts[f"e{i}"] for i in range(4)], dim)
    assert torch.equal(evaluate(stacked, r), want)
    (parts,) = run(Unstack(dim), [stacked])
    assert [torch.equal(evaluate(p, r), ts[f"e{i}"]) for i, p in enumerate(parts)] == [True] * 4


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_concat_and_chunk(vts, dim):
    a, b = rand(4, 6, 8, seed=1), rand(4, 6, 8, seed=2)
    vt, r = vts({"a": a, "b": b})
    (cat,) = run(Concat(dim), [vt["a"], vt["b"]])
    assert torch.equal(evaluate(cat, r), torch.cat([a, b], dim))
    x, y = run(Chunk(dim), [cat], n_targets=2)
    assert torch.equal(evaluate(x, r), a) and torch.equal(evaluate(y, r), b)


def test_stack_then_concat_is_gate_up(vts):
    gate = {f"g{i}": rand(6, 4, seed=i) for i in range(3)}
    up = {f"u{i}": rand(6, 4, seed=10 + i) for i in range(3)}
    vt, r = vts({**gate, **up})
    slots = run(Stack(0), [[vt[f"g{i}"] for i in range(3)], [vt[f"u{i}"] for i in range(3)]])
    (gu,) = run(Concat(1), slots)
    want = torch.cat([torch.stack(list(gate.values())), torch.stack(list(up.values()))], 1)
    assert gu.is_copy and torch.equal(evaluate(gu, r), want)
    assert len(gu.pieces) <= 6


def test_split_by_config_sizes(vts):
    qkv = rand(4 + 2 + 2, 5)
    vt, r = vts({"qkv": qkv})
    q, k, v = run(Split(0, ("q", 2, 2)), [vt["qkv"]], n_targets=3, config={"text_config": {"q": 4}})
    assert [tuple(evaluate(x, r).shape) for x in (q, k, v)] == [(4, 5), (2, 5), (2, 5)]
    assert torch.equal(torch.cat([evaluate(x, r) for x in (q, k, v)]), qkv)


@pytest.mark.parametrize("dim", [0, 1])
def test_interleave_matches_transformers_definition(vts, dim):
    t = rand(6, 8, 4)
    vt, r = vts({"t": t})
    (out,) = run(Interleave(dim), [vt["t"]])
    shape = list(t.shape)
    shape[dim : dim + 1] = [shape[dim] // 2, 2]
    want = t.reshape(shape).transpose(dim, dim + 1).reshape(t.shape)
    assert torch.equal(evaluate(out, r), want)
    (back,) = run(Interleave(dim).inverse, [out])
    assert torch.equal(evaluate(back, r), t)


@pytest.mark.parametrize("dims", [(1, 2), (0, 1), (0, 2), (2, 1)])
def test_transpose(vts, dims):
    t = rand(3, 4, 5)
    vt, r = vts({"t": t})
    (out,) = run(Transpose(*dims), [vt["t"]])
    assert not out.is_copy
    assert torch.equal(evaluate(out, r), t.transpose(*dims).contiguous())
    (back,) = run(Transpose(*dims).inverse, [out])
    assert torch.equal(evaluate(back, r), t)


def test_transpose_of_a_size_one_dim_moves_no_bytes(vts):
    vt, r = vts({"t": rand(1, 4, 5)})
    (out,) = run(Transpose(0, 1), [vt["t"]])
    assert out.is_copy and out.shape == (4, 1, 5)


@pytest.mark.parametrize("to", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("frm", [torch.float32, torch.bfloat16, torch.float16])
def test_cast_is_torch_to(vts, frm, to):
    t = torch.cat(
        [
            rand(1000, dtype=torch.float32) * 1e4,
            torch.tensor([float("inf"), float("-inf"), 1e-40, 65519.0, 70000.0]),
        ]
    )
    t = t.to(frm)
    vt, r = vts({"t": t})
    (out,) = run(Cast(DT[to]), [vt["t"]])
    assert torch.equal(evaluate(out, r).view(torch.uint8), t.to(to).view(torch.uint8))


def test_conv3d_reshape_is_a_view(vts):
    k = rand(8, 3, 2, 4, 4)
    vt, r = vts({"k": k})
    (lin,) = run(Conv3dToLinear(3, (2, 4, 4)), [vt["k"]])
    assert lin.is_copy and torch.equal(evaluate(lin, r), k.reshape(8, -1))
    (back,) = run(Conv3dToLinear(3, (2, 4, 4)).inverse, [lin])
    assert torch.equal(evaluate(back, r), k)


ALL_OPS = [
    Stack(0),
    Unstack(1),
    Concat(1),
    Chunk(0, "num_experts"),
    Split(0, ("a", 3)),
    Transpose(1, 2, check_dims=True),
    Interleave(1),
    Conv3dToLinear(3, (2, 14, 14)),
    LinearToConv3d(3, (2, 14, 14)),
    PermuteForRope("vision_config", ("q_proj", "k_proj")),
    ErnieFuseAndSplitTextVisionExperts(0, 1),
    Fp8Dequantize(),
    Mxfp4Dequantize(),
]


@pytest.mark.parametrize("op", ALL_OPS, ids=lambda o: o.op_name)
def test_every_op_is_json_and_has_an_inverse(op):
    assert op_from_dict(op.to_dict()) == op
    inv = op.inverse
    assert op_from_dict(inv.to_dict()) == inv
    # dequantize ops invert to identity; Split inverts to Concat, whose inverse is an equal Chunk (as transformers)
    if op.op_name not in ("fp8_dequantize", "mxfp4_dequantize", "split"):
        assert inv.inverse == op
    assert op.describe()
