"""Each op, applied to byte pieces, gives exactly the bytes torch gives; each inverse undoes it; each is JSON.

The arithmetic kernels (transpose, cast, dequantize) and devices are tested in test_kernels.py."""

from __future__ import annotations

import pytest
import torch
from support.helpers import evaluate

from converter.rules import (
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
from converter.rules.ops import OpContext


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


# --- ops that mirror transformers' own: compared with transformers' implementation -------------------------------


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("shape", [(24, 5), (24,)])
def test_permute_for_rope_is_transformers(vts, shape, inverse):
    ops = pytest.importorskip("transformers.core_model_loading")
    t = rand(*shape)
    vt, r = vts({"t": t})
    config = {"vision_config": {"num_attention_heads": 3}}
    ctx = OpContext("t", 1, config, ("attention.wq",), ("attention.q_proj",))
    (out,) = PermuteForRope("vision_config", (), inverse).apply([vt["t"]], ctx)
    assert out.is_copy  # a row permutation: pieces only

    class Cfg:
        class vision_config:  # noqa: N801 - a config stand-in
            num_attention_heads = 3

    want = ops.PermuteForRope("vision_config", None, inverse)._permute_for_rope(t.clone(), Cfg)
    assert torch.equal(evaluate(out, r), want)
    (back,) = PermuteForRope("vision_config", (), inverse).inverse.apply([out], ctx)
    assert torch.equal(evaluate(back, r), t)


def test_permute_for_rope_only_the_named_slots(vts):
    qkv = {n: rand(8, 4, seed=i) for i, n in enumerate("qkv")}
    vt, r = vts(qkv)
    ctx = OpContext(
        "t", 3, {"num_attention_heads": 2}, ("wqkv",), ("attn.q_proj", "attn.k_proj", "attn.v_proj")
    )
    q, k, v = PermuteForRope(None, ("q_proj", "k_proj")).apply([vt["q"], vt["k"], vt["v"]], ctx)
    assert v is vt["v"] and not torch.equal(evaluate(q, r), qkv["q"])
    with pytest.raises(Exception, match="num_attention_heads"):
        PermuteForRope("vision_config").apply(
            [vt["q"]], OpContext("t", 1, {"vision_config": {}}, ("a",), ("b",))
        )


def test_ernie_fuse_and_split_is_transformers(vts):
    ops = pytest.importorskip("transformers.core_model_loading")
    gate = [rand(6 if e < 2 else 4, 5, seed=e) for e in range(4)]  # 2 text experts (6 rows), 2 vision (4)
    up = [rand(6 if e < 2 else 4, 5, seed=10 + e) for e in range(4)]
    vt, r = vts({**{f"g{e}": t for e, t in enumerate(gate)}, **{f"u{e}": t for e, t in enumerate(up)}})
    op = ErnieFuseAndSplitTextVisionExperts(0, 1)
    slots = [[vt[f"g{e}"] for e in range(4)], [vt[f"u{e}"] for e in range(4)]]
    text, vision = op.apply(slots, OpContext("t", 2))
    want = ops.ErnieFuseAndSplitTextVisionExperts(0, 1).convert(
        {"g": gate, "u": up}, source_patterns=["g", "u"], target_patterns=["text", "vision"], config=None
    )
    assert text.is_copy and torch.equal(evaluate(text, r), want["text"])
    assert torch.equal(evaluate(vision, r), want["vision"])
    g, u = op.inverse.apply([text, vision], OpContext("t", 2))
    assert [torch.equal(evaluate(x, r), y) for x, y in zip(g + u, gate + up, strict=True)] == [True] * 8


def test_transpose_check_dims_decides_from_the_config(vts):
    vt, r = vts({"hub": rand(4, 8, 12), "model": rand(4, 12, 8), "square": rand(4, 8, 8)})
    op = Transpose(1, 2, check_dims=True, shape=("*", "2*moe_intermediate_size", "hidden_size"))
    config = {"text_config": {"hidden_size": 8, "moe_intermediate_size": 6}}
    (flipped,) = run(op, [vt["hub"]], config=config)
    assert flipped.shape == (4, 12, 8) and torch.equal(
        evaluate(flipped, r), evaluate(vt["hub"], r).transpose(1, 2)
    )
    (kept,) = run(op, [vt["model"]], config=config)
    assert kept is vt["model"]
    from converter.rules.ops import AmbiguousShapeError

    with pytest.raises(AmbiguousShapeError, match="square"):
        run(op, [vt["square"]], config={"hidden_size": 8, "moe_intermediate_size": 4})
    # the inverse writes the Hub's transposed layout back
    (back,) = run(op.inverse, [kept], config=config)
    assert back.shape == (4, 8, 12)
