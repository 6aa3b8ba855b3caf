"""Pre-quantized checkpoints, both modes, against transformers 5.23 (SEMANTICS.md section 8).

FP8 block-scaled (deepseek_v3, qwen3_moe: float8 ``weight`` + float32 ``weight_scale_inv``) and MXFP4 (gpt_oss
``*_blocks``/``*_scales``), tiny models built by ``tiny_models.build_quantized``:

  keep        (default) FP8: our output == transformers' quantized load (fp8 experts fused, scale grids merged
              like the weights), transformers loads it quantized and dequantized to the same values, and it
              converts back to the published bytes; MXFP4: a no-op (the published layout is the model layout).
  dequantize  our output == ``from_pretrained(..., dequantize=True).state_dict()`` bit for bit, config.json
              without ``quantization_config`` (transformers loads it as a plain bf16 checkpoint).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
tm = pytest.importorskip("support.tiny_models")

from support.helpers import assert_same_tensors, read_tensors, write_checkpoint  # noqa: E402

from converter import convert, plan  # noqa: E402
from converter.errors import UnsupportedError  # noqa: E402
from converter.layout import Computed  # noqa: E402

KINDS = list(tm.QUANTIZED_KINDS)
FP8 = [k for k in KINDS if k.startswith("fp8")]
MXFP4 = [k for k in KINDS if k.startswith("mxfp4")]


def _model_type(kind: str) -> str:
    return kind.split("_", 1)[1]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    built = {}

    def get(kind):
        if kind not in built:
            root = tmp_path_factory.mktemp(kind)
            expected = tm.build_quantized(kind, root / "published")
            built[kind] = (root, expected)
        return built[kind]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_dequantize_equals_from_pretrained(quantized, kind):
    root, expected = quantized(kind)
    out = root / "dequantized"
    result = convert(root / "published", out, dequantize=True, overwrite=True)
    assert result.plan.dequantize and not result.noop
    assert_same_tensors(read_tensors(out), expected)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == _model_type(kind)
    # a plain bf16 checkpoint now: transformers loads it without any quantizer, to the same values
    assert_same_tensors(tm.load_state_dict(out, _model_type(kind)), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_dequantize_computes_one_expert_at_a_time(quantized, kind):
    """Each dequantized tensor is computed in slices of one block row / one expert, never whole."""
    root, _ = quantized(kind)
    p = plan(root / "published", dequantize=True)
    computed = [
        piece.source
        for t in p.tensors
        for piece in t.tensor.pieces
        if isinstance(piece.source, Computed) and piece.source.description["op"].endswith("dequantize")
    ]
    assert computed
    for node in computed:
        if node.description["op"] == "mxfp4_dequantize":
            assert node.slice_bytes * node.shape[0] == node.nbytes  # one expert per slice
        else:
            assert node.slice_bytes < node.nbytes or node.shape[0] <= 8  # one block row per slice


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_dequantize_to_dtype(quantized, kind, dtype):
    """``--dequantize --dtype X``: quantized tensors dequantized straight to X, exactly as transformers does; the
    others cast as ``from_pretrained(dtype=X)`` casts a plain checkpoint.

    (transformers 5.23 with the FP8 quantizer leaves the unquantized tensors -- norms, embeddings, router -- in the
    checkpoint's bf16 when dequantizing to another dtype; we cast them like any other checkpoint. MXFP4 agrees.)
    """
    root, _ = quantized(kind)
    mt = _model_type(kind)
    out = root / f"dequantized_{dtype}"
    convert(root / "published", out, dequantize=True, dtype=dtype, overwrite=True)
    torch_dtype = {"fp16": torch.float16, "fp32": torch.float32}[dtype]
    transformers_dequantized = tm.load_state_dict(root / "published", mt, torch_dtype)
    convert(root / "published", root / "deq_bf16", dequantize=True, overwrite=True)
    plain_cast = tm.load_state_dict(root / "deq_bf16", mt, torch_dtype)
    published = read_tensors(root / "published")
    quantized_names = {n for n, t in published.items() if t.dtype in (torch.float8_e4m3fn, torch.uint8)}
    expected = {}
    for k, t in plain_cast.items():
        w = transformers_dequantized[k]
        if w.dtype != t.dtype:  # the FP8 quirk: an unquantized tensor left in bf16
            assert kind.startswith("fp8") and w.dtype == torch.bfloat16 and k not in quantized_names, k
            expected[k] = t
        else:
            expected[k] = w
    assert_same_tensors(read_tensors(out), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_dequantized_output_reverses_to_the_published_layout(quantized, kind):
    root, expected = quantized(kind)
    convert(root / "published", root / "deq", dequantize=True, overwrite=True)
    convert(root / "deq", root / "deq_back", direction="reverse", overwrite=True, allow_noop=True)
    back = read_tensors(root / "deq_back")
    published = read_tensors(root / "published")
    companions = ("_scale_inv", "_scales")
    assert set(back) == {n.removesuffix("_blocks") for n in published if not n.endswith(companions)}, (
        "published names, scales dropped"
    )
    convert(root / "deq_back", root / "deq_again", overwrite=True, allow_noop=True)
    assert_same_tensors(read_tensors(root / "deq_again"), expected)


@pytest.mark.parametrize("kind", FP8)
def test_fp8_keep_equals_transformers_quantized_load(quantized, kind):
    root, expected = quantized(kind)
    mt = _model_type(kind)
    out = root / "kept"
    result = convert(root / "published", out, overwrite=True)
    assert result.plan.quantization == "fp8" and not result.plan.dequantize
    want = tm.load_state_dict(root / "published", mt, dequantize=False)
    assert any(k.endswith("experts.gate_up_proj_scale_inv") for k in want)
    assert_same_tensors(read_tensors(out), want)
    # still a quantized checkpoint, which transformers loads quantized as is
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "fp8"
    assert_same_tensors(tm.load_state_dict(out, mt, dequantize=False), want)
    # its fused experts (3-D scale grids) dequantize to the same values as the published per-expert weights
    # (transformers 5.23 cannot: dequantizing a fused FP8 checkpoint reports the fused scales as unexpected)
    convert(out, root / "kept_dequantized", dequantize=True, overwrite=True)
    assert_same_tensors(read_tensors(root / "kept_dequantized"), expected)
    # a byte copy: no arithmetic anywhere
    assert all(t.tensor.is_copy for t in result.plan.tensors)


@pytest.mark.parametrize("kind", FP8)
def test_fp8_keep_round_trip(quantized, kind):
    root, _ = quantized(kind)
    convert(root / "published", root / "kept2", overwrite=True)
    convert(root / "kept2", root / "kept_back", direction="reverse", overwrite=True)
    assert_same_tensors(read_tensors(root / "kept_back"), read_tensors(root / "published"))


@pytest.mark.parametrize("kind", FP8)
def test_fp8_keep_with_dtype_keeps_fp8_and_scales(quantized, kind):
    """``--dtype fp16`` on a kept FP8 checkpoint casts the unquantized tensors only, like transformers."""
    root, _ = quantized(kind)
    out = root / "kept_fp16"
    convert(root / "published", out, dtype="fp16", overwrite=True)
    want = tm.load_state_dict(root / "published", _model_type(kind), torch.float16, dequantize=False)
    assert_same_tensors(read_tensors(out), want)


@pytest.mark.parametrize("kind", MXFP4)
def test_mxfp4_keep_is_a_no_op(quantized, kind):
    root, _ = quantized(kind)
    p = plan(root / "published")
    assert p.quantization == "mxfp4" and p.is_noop
    convert(root / "published", root / "kept", allow_noop=True, overwrite=True)
    assert_same_tensors(read_tensors(root / "kept"), read_tensors(root / "published"))
    convert(root / "kept", root / "kept_back", direction="reverse", allow_noop=True, overwrite=True)
    assert_same_tensors(read_tensors(root / "kept_back"), read_tensors(root / "published"))


def test_fp8_keep_path_does_not_import_torch(quantized):
    root, _ = quantized("fp8_qwen3_moe")
    code = (
        "import sys; from converter import convert; "
        f"convert({str(root / 'published')!r}, {str(root / 'no_torch')!r}, overwrite=True); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dequantize_needs_a_quantized_checkpoint(tmp_path):
    write_checkpoint(
        tmp_path / "ckpt", {"model.norm.weight": torch.ones(4)}, shards=1, config={"model_type": "qwen3_moe"}
    )
    with pytest.raises(UnsupportedError, match="quantization_config"):
        plan(tmp_path / "ckpt", dequantize=True)


def test_other_quantization_methods_are_refused(tmp_path):
    config = {"model_type": "qwen3_moe", "quantization_config": {"quant_method": "gptq", "bits": 4}}
    write_checkpoint(tmp_path / "ckpt", {"model.norm.weight": torch.ones(4)}, shards=1, config=config)
    with pytest.raises(UnsupportedError, match="gptq"):
        plan(tmp_path / "ckpt")


def test_fp8_kept_tensor_whose_scale_cannot_follow_is_refused(tmp_path):
    """A fused FP8 expert tensor that a converter transposes (qwen3_vl_moe) would leave its scale grid behind."""
    e, h, i = 2, 16, 4
    weights = {
        "model.language_model.layers.0.mlp.experts.gate_up_proj": torch.zeros(e, h, 2 * i).to(
            torch.float8_e4m3fn
        ),
        "model.language_model.layers.0.mlp.experts.gate_up_proj_scale_inv": torch.ones(e, h // 8, 2 * i // 8),
    }
    config = {
        "model_type": "qwen3_vl_moe",
        "text_config": {"hidden_size": h, "moe_intermediate_size": i},
        "quantization_config": {"quant_method": "fp8", "weight_block_size": [8, 8]},
    }
    write_checkpoint(tmp_path / "ckpt", weights, shards=1, config=config)
    with pytest.raises(UnsupportedError, match="--dequantize"):
        plan(tmp_path / "ckpt")
    p = plan(tmp_path / "ckpt", dequantize=True)
    assert [t.shape for t in p.tensors] == [(e, 2 * i, h)]
