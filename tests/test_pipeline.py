"""The pipelined compute path, bit for bit, with steps far smaller than the tensors.

Every computed tensor here spans many steps (:data:`converter.executor.STEP_BYTES` set to a few dozen bytes), the
pipeline holds about a kilobyte of buffers (:data:`~converter.executor.PIPELINE_BYTES`), so reading, computing and
writing overlap over hundreds of reused buffers: casts of every float dtype, transposes split across steps (bands
of a matrix read whole, and strided bands), FP8 with a block that is not a power of two (a scale grid that only
just divides the weight; one that does not is refused, as transformers refuses it), MXFP4 experts cut into bands.
Expected values come from torch, from transformers' own dequantizers, and from ``from_pretrained`` (the oracle).
A conversion's memory stays bounded however large the tensor (a subprocess, its peak RSS read from the kernel).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import threading

import pytest

torch = pytest.importorskip("torch")
tm = pytest.importorskip("support.tiny_models")

from support.helpers import (  # noqa: E402
    MIXTRAL_CONFIG,
    assert_same_tensors,
    mixtral_tensors,
    read_tensors,
    write_checkpoint,
)

import converter.executor as ex  # noqa: E402
from converter import convert, kernels, plan  # noqa: E402
from converter.errors import CancelledError, CheckpointError, ShapeError  # noqa: E402
from converter.executor import _Streamer  # noqa: E402
from converter.layout import Computed  # noqa: E402

DT = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


@pytest.fixture
def tiny_steps(monkeypatch):
    """Steps of 96 bytes, 1 KB of buffers in flight, two compute threads."""
    monkeypatch.setattr(ex, "STEP_BYTES", 96)
    monkeypatch.setattr(ex, "PIPELINE_BYTES", 1024)
    monkeypatch.setattr(ex, "COMPUTE_WORKERS", 2)


@pytest.fixture(params=["rows of a matrix read whole", "strided bands"])
def band_mode(request, monkeypatch):
    """Transposes and MXFP4 experts larger than a step: produced from the matrix read once, or from strided reads of
    just the band."""
    monkeypatch.setattr(kernels, "WHOLE_INPUT_FACTOR", 10**9 if request.param.startswith("rows") else 0)
    return request.param


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def _check_ranges(vt, reader, want: bytes, step_bytes: int, seed: int = 0) -> None:
    """The whole tensor and random sub-ranges (partial units at both ends), evaluated in steps of ``step_bytes``."""
    s = _Streamer(reader, lambda n: None, device="cpu", step_bytes=step_bytes)
    assert s.read_tensor(vt, 0, vt.nbytes) == want
    rng = random.Random(seed)
    for _ in range(20):
        a = rng.randrange(0, vt.nbytes)
        b = rng.randrange(a + 1, vt.nbytes + 1)
        assert s.read_tensor(vt, a, b) == want[a:b], (a, b)


def _kinds(vt) -> set[str]:
    """The kinds of step the kernel of ``vt`` takes with the current limits."""
    node = vt.pieces[0].source
    assert isinstance(node, Computed)
    return {st.arg[0] if st.arg else "elements" for st in node.kernel.steps(0, node.nbytes, ex.STEP_BYTES)}


# --- kernels on their own: any byte range, steps much smaller than a unit -------------------------------------------


@pytest.mark.parametrize("to", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("frm", [torch.float32, torch.bfloat16, torch.float16])
def test_cast_in_steps_is_torch_to(vts, frm, to, tiny_steps):
    # special values first: torch's whole-tensor op takes its vectorised path there (its scalar tail gives an
    # fp16 NaN another payload in fp32; the kernel always gives the vectorised one)
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), 1e-40, -1e-45, 65519.0, 70000.0, -0.0])
    t = torch.cat([special, torch.randn(997, generator=torch.Generator().manual_seed(1)) * 300]).to(frm)
    vt, r = vts({"t": t})
    out = kernels.cast(vt["t"], DT[to])
    if frm != to:
        assert _kinds(out) == {"elements"}
    _check_ranges(out, r, _bytes(t.to(to)), step_bytes=ex.STEP_BYTES)


@pytest.mark.parametrize(
    "shape,dims",
    [
        ((37, 53), (0, 1)),
        ((5, 19, 23), (1, 2)),
        ((6, 7, 9), (0, 2)),
        ((3, 4, 5, 6), (1, 3)),
        ((2, 40, 3), (2, 1)),
    ],
)
def test_transpose_split_across_steps(vts, shape, dims, band_mode, tiny_steps):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    vt, r = vts({"t": t})
    out = kernels.transpose(vt["t"], *dims, "t")
    kinds = _kinds(out)
    assert kinds == ({"rows of"} if band_mode.startswith("rows") else {"band"}), kinds
    _check_ranges(out, r, _bytes(t.transpose(*dims)), step_bytes=ex.STEP_BYTES)


def test_small_matrices_go_several_to_a_step(vts, tiny_steps):
    t = torch.randn(40, 3, 2, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    vt, r = vts({"t": t})
    out = kernels.transpose(vt["t"], 1, 2, "t")
    steps = list(out.pieces[0].source.kernel.steps(0, out.nbytes, ex.STEP_BYTES))
    assert {s.arg for s in steps} == {("whole", 8)} and len(steps) == 5  # 96 bytes = 8 matrices of 12
    _check_ranges(out, r, _bytes(t.transpose(1, 2)), step_bytes=ex.STEP_BYTES)


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize(
    "lead,rows,cols,grid",
    [
        ((), 300, 200, (3, 2)),  # DeepSeek's 128-blocks on a weight that is no multiple of 128: blocks of 100
        ((3,), 24, 36, (4, 3)),  # 6 x 12 blocks, three experts
        ((2,), 20, 16, (5, 1)),  # block rows of 4, one block column
    ],
)
def test_fp8_uneven_grid_in_steps_is_transformers(vts, lead, rows, cols, grid, scale_dtype, tiny_steps):
    fp8 = pytest.importorskip("transformers.integrations.finegrained_fp8")
    g = torch.Generator().manual_seed(4)
    w = (torch.randn(*lead, rows, cols, generator=g) * 50).to(torch.float8_e4m3fn)
    if scale_dtype == torch.uint8:
        s = torch.randint(110, 140, (*lead, *grid), generator=g, dtype=torch.uint8)
    else:
        s = torch.rand(*lead, *grid, generator=g) * 1e-2
    vt, r = vts({"w": w, "s": s})
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        out = kernels.fp8_dequantize(vt["w"], vt["s"], DT[dtype], "w")
        want = fp8.Fp8Dequantize(None)._dequantize_one(w, s, output_dtype=dtype)
        node = out.pieces[0].source
        steps = list(node.kernel.steps(0, node.nbytes, ex.STEP_BYTES))
        assert any(st.lo % node.slice_bytes for st in steps)  # steps (96 bytes) cut block rows
        _check_ranges(out, r, _bytes(want), step_bytes=ex.STEP_BYTES)


def test_fp8_grid_that_does_not_divide_is_refused_like_transformers(vts):
    """A 257-row weight with DeepSeek's ceil(257 / 128) = 3 scale rows: transformers refuses it, so do we (a typed
    error, before any byte is read)."""
    fp8 = pytest.importorskip("transformers.integrations.finegrained_fp8")
    w = torch.zeros(257, 200).to(torch.float8_e4m3fn)
    s = torch.ones(3, 2)
    with pytest.raises(ValueError, match="not divisible by scale grid"):
        fp8.Fp8Dequantize(None)._dequantize_one(w, s, output_dtype=torch.bfloat16)
    vt, _ = vts({"w": w, "s": s})
    with pytest.raises(ShapeError, match=r"does not match its scale grid \[3, 2\]"):
        kernels.fp8_dequantize(vt["w"], vt["s"], "BF16", "w")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_mxfp4_experts_in_bands_is_transformers(vts, dtype, band_mode, tiny_steps):
    mx = pytest.importorskip("transformers.integrations.mxfp4")
    g = torch.Generator().manual_seed(5)
    blocks = torch.randint(0, 256, (3, 12, 4, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(100, 150, (3, 12, 4), generator=g, dtype=torch.uint8)
    scales[0, 0, 0], scales[1, 1, 1] = 0, 255  # the extremes of E8M0: underflow and overflow in every dtype
    vt, r = vts({"b": blocks, "s": scales})
    out = kernels.mxfp4_dequantize(vt["b"], vt["s"], DT[dtype], "b")
    assert _kinds(out) == ({"groups of"} if band_mode.startswith("rows") else {"band"})
    want = mx.convert_moe_packed_tensors(blocks, scales, dtype=dtype)
    _check_ranges(out, r, _bytes(want), step_bytes=ex.STEP_BYTES)


def test_mxfp4_whole_experts_several_to_a_step(vts, monkeypatch):
    mx = pytest.importorskip("transformers.integrations.mxfp4")
    monkeypatch.setattr(ex, "STEP_BYTES", 4096)
    g = torch.Generator().manual_seed(6)
    blocks = torch.randint(0, 256, (5, 4, 2, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(110, 140, (5, 4, 2), generator=g, dtype=torch.uint8)
    vt, r = vts({"b": blocks, "s": scales})
    out = kernels.mxfp4_dequantize(vt["b"], vt["s"], "BF16", "b")
    assert _kinds(out) == {"whole"}
    _check_ranges(out, r, _bytes(mx.convert_moe_packed_tensors(blocks, scales)), step_bytes=4096)


# --- the pipeline, through convert(): against the oracle -----------------------------------------------------------


@pytest.mark.parametrize(
    "frm,to",
    [(torch.bfloat16, "fp16"), (torch.bfloat16, "fp32"), (torch.float32, "bf16"), (torch.float16, "fp32")],
)
def test_pipelined_cast_of_a_checkpoint(tmp_path, frm, to, tiny_steps):
    tensors = mixtral_tensors(layers=2, experts=3, hidden=24, inter=20, dtype=frm)
    tensors["model.embed_tokens.weight"][0, :4] = torch.tensor([float("inf"), float("nan"), -0.0, 1e-40]).to(
        frm
    )
    write_checkpoint(tmp_path / "src", tensors, config=MIXTRAL_CONFIG)
    convert(tmp_path / "src", tmp_path / "copy")  # byte copies only: the layout, trusted
    result = convert(tmp_path / "src", tmp_path / "cast", dtype=to)
    assert result.plan.computed_bytes == result.plan.total_bytes > 50 * ex.STEP_BYTES
    torch_to = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[to]
    assert_same_tensors(
        read_tensors(tmp_path / "cast"),
        {k: v.to(torch_to) for k, v in read_tensors(tmp_path / "copy").items()},
    )


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    built = {}

    def get(model_type):
        if model_type not in built:
            root = tmp_path_factory.mktemp(model_type)
            tm.save_published(tm.build_model(model_type), root / "published")
            built[model_type] = root
        return built[model_type]

    return get


@pytest.mark.parametrize("model_type", ["qwen3_vl_moe", "ernie4_5_vl_moe"])
@pytest.mark.parametrize("dtype", [None, "fp16"])
def test_pipelined_transposes_equal_from_pretrained(oracle, model_type, dtype, band_mode, tiny_steps):
    """Expert transposes (qwen3_vl_moe) and 2-D gate transposes (ernie4_5_vl_moe), cut in bands of 96 bytes, cast
    after (a computed tensor over computed pieces) with ``fp16``."""
    root = oracle(model_type)
    p = plan(root / "published", dtype=dtype)
    ops = {
        piece.source.description["op"]
        for t in p.tensors
        for piece in t.tensor.pieces
        if isinstance(piece.source, Computed)
    }
    assert ("cast" in ops) == (dtype is not None) and ("transpose" in ops or dtype is not None)
    out = root / f"out-{dtype}-{band_mode[:4]}"
    convert(root / "published", out, dtype=dtype, overwrite=True)
    want = tm.load_state_dict(root / "published", model_type, None if dtype is None else torch.float16)
    assert_same_tensors(read_tensors(out), want)


@pytest.mark.parametrize("kind", list(tm.QUANTIZED_KINDS))
def test_pipelined_dequantize_equals_from_pretrained(tmp_path, kind, band_mode, tiny_steps):
    expected = tm.build_quantized(kind, tmp_path / "published")
    convert(tmp_path / "published", tmp_path / "out", dequantize=True)
    assert_same_tensors(read_tensors(tmp_path / "out"), expected)


# --- failures stop the pipeline and publish nothing ----------------------------------------------------------------


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("ckpt-")}


def test_cancelling_mid_pipeline_publishes_nothing_and_stops_the_threads(tmp_path, tiny_steps):
    write_checkpoint(tmp_path / "src", mixtral_tensors(hidden=24, inter=20), config=MIXTRAL_CONFIG)
    ticks = 0

    def cancel() -> bool:
        nonlocal ticks
        ticks += 1
        return ticks > 20

    with pytest.raises(CancelledError):
        convert(tmp_path / "src", tmp_path / "out", dtype="fp32", should_cancel=cancel)
    assert not (tmp_path / "out").exists() and not _threads()


def test_a_read_error_in_the_reader_thread_reaches_the_caller(tmp_path, tiny_steps):
    write_checkpoint(tmp_path / "src", mixtral_tensors(hidden=24, inter=20), config=MIXTRAL_CONFIG, shards=1)
    p = plan(tmp_path / "src", dtype="fp32")
    shard = tmp_path / "src" / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # changed after planning
    from converter.executor import execute
    from converter.spec import DestinationSpec
    from converter.storage import open_sink, open_source

    src = open_source(tmp_path / "src")
    with pytest.raises(CheckpointError, match="was it changed after planning"):
        execute(p, src, open_sink(DestinationSpec.parse(tmp_path / "out"), source=src))
    assert not (tmp_path / "out").exists() and not _threads()


# --- memory: bounded by the pipeline's buffers, not by the tensor ---------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import converter.executor as ex
    from converter import convert

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    src, out, step, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ex.STEP_BYTES, ex.PIPELINE_BYTES, ex.COMPUTE_WORKERS = step, budget, 2
    convert(src, out + "-warm", dtype="fp32")  # the same code once on small data: torch's code pages, its pools
    base = status("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    convert(src, out, dtype="fp32")
    print(json.dumps({"base": base, "peak": status("VmHWM:")}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
def test_memory_stays_bounded_by_the_pipeline_not_the_tensor(tmp_path):
    """A 64 MB bf16 embedding cast to 128 MB of fp32, through 2 MB of buffers in steps of 256 KB: the process grows
    by the buffers, two threads' kernel temporaries and some slack (under 24 MB), never by the tensor.

    The peak is the kernel's own high-water mark (VmHWM, reset once torch is loaded and warm), not getrusage's: a
    child's ru_maxrss starts from the size of the pytest process it was forked from."""
    emb = torch.zeros(32 * 1024 * 1024 // 1024, 1024, dtype=torch.bfloat16)  # 64 MB
    write_checkpoint(
        tmp_path / "src",
        {"model.embed_tokens.weight": emb, "lm_head.weight": torch.zeros(8, 1024, dtype=torch.bfloat16)},
        config=MIXTRAL_CONFIG,
        shards=1,
    )
    write_checkpoint(
        tmp_path / "src-warm", {"model.embed_tokens.weight": emb[:64]}, config=MIXTRAL_CONFIG, shards=1
    )
    step, budget = 256 * 1024, 2 * 1024 * 1024
    # the warm-up converts the small checkpoint (same code), then the large one is measured
    script = MEMORY_SCRIPT.replace('convert(src, out + "-warm"', 'convert(src + "-warm", out + "-warm"')
    p = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "src"), str(tmp_path / "out"), str(step), str(budget)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    m = json.loads(p.stdout.strip().splitlines()[-1])
    grew = m["peak"] - m["base"]
    assert (tmp_path / "out" / "model.safetensors").stat().st_size > 128 * 1024 * 1024
    assert grew < 24 * 1024 * 1024, f"grew {grew / 2**20:.1f} MB while converting 192 MB of tensors"
