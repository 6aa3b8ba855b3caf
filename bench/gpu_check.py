"""On a GPU node: the compute path gives the same bytes on the GPU as on the CPU, and how fast each is.

    python bench/gpu_check.py --quick --out gpu.json     # < 3 minutes on an H200-class machine
    python bench/gpu_check.py --gb 4 --out gpu.json      # larger checkpoints, two rounds

Self-contained (the repository and its installed dependencies; nothing downloaded). Two parts:

1. Kernels: tensors of about ``--mb`` MB in one safetensors file, evaluated through the converter's own computed
   pieces (``_Streamer.read_tensor``, the executor's steps) on ``cpu`` and ``cuda``: casts bf16 -> fp16, fp32 ->
   bf16, fp16 -> fp32, an expert transpose, a 2-D transpose (bands), FP8 block dequantize (128 blocks, and a grid
   that only just divides), MXFP4 dequantize. Byte-identical or not, both times, the ratio; and the raw torch op
   on the GPU for reference.
2. Conversions: the synthetic bf16, FP8 and MXFP4 checkpoints of ``bench/checkpoints.py`` (``--gb`` GB each),
   converted by ``ckpt-convert convert`` in a fresh process with ``--device cpu`` and ``--device cuda``
   (``--dtype fp16``, ``--dtype fp32``, ``--dequantize``): wall time, peak RSS, the ratio to ``cp -r``, and whether
   every output tensor is byte-identical between the two devices.

Prints a table, writes everything to ``--out`` (JSON), exits 1 on any byte difference. Without a CUDA device it runs
the CPU half and says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from bench.checkpoints import WRITERS  # noqa: E402
from bench.convert_bench import run as run_child  # noqa: E402
from converter import kernels  # noqa: E402
from converter.checkpoint import read_local_checkpoint  # noqa: E402
from converter.executor import _Streamer  # noqa: E402
from converter.layout import VirtualTensor, from_file  # noqa: E402
from converter.storage import LocalReader  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --- 1. kernels ---------------------------------------------------------------------------------------------------


def build_tensors(folder: Path, mb: int) -> dict[str, VirtualTensor]:
    g = torch.Generator().manual_seed(0)
    e = 8
    n = int((mb * 2**20 / 2 / e) ** 0.5) // 128 * 128 or 128  # bf16 [E, n, n] of about `mb` MB
    t = {
        "bf16": torch.randn(e, n, n, generator=g).to(torch.bfloat16),
        "f32": torch.randn(e, n, n // 2, generator=g),
        "f16": torch.randn(e, n, n // 2, generator=g).to(torch.float16),
        "mat": torch.randn(n * 2, n * 2, generator=g).to(torch.bfloat16),
        "fp8": (torch.randn(e, n, n, generator=g) * 4).to(torch.float8_e4m3fn),
        "fp8_scale": torch.rand(e, n // 128, n // 128, generator=g) + 0.5,
        "fp8_odd": (torch.randn(n + 44, n - 56, generator=g) * 4).to(
            torch.float8_e4m3fn
        ),  # no multiple of 128
        "fp8_odd_scale": torch.rand(-(-(n + 44) // 128), -(-(n - 56) // 128), generator=g),
        "mx_blocks": torch.randint(0, 256, (e, n, n // 32, 16), generator=g, dtype=torch.uint8),
        "mx_scales": torch.randint(118, 134, (e, n, n // 32), generator=g, dtype=torch.uint8),
    }
    # the odd FP8 grid must divide the weight (else transformers and we refuse it): trim the weight to fit
    r, c = t["fp8_odd"].shape
    sr, sc = t["fp8_odd_scale"].shape
    t["fp8_odd"] = t["fp8_odd"][: r // sr * sr, : c // sc * sc].contiguous()
    save_file(t, str(folder / "model.safetensors"))
    idx = read_local_checkpoint(folder)
    return {k: from_file(k, i.dtype, i.shape, i.file, i.offset, i.length) for k, i in idx.tensors.items()}


def evaluate(vt: VirtualTensor, folder: Path, device: str) -> tuple[str, float]:
    reader = LocalReader(folder)
    try:
        s = _Streamer(reader, lambda n: None, device=device)
        h = hashlib.sha256()
        sync()
        t0 = time.perf_counter()
        step = 64 * 2**20
        for a in range(0, vt.nbytes, step):
            h.update(s.read_tensor(vt, a, min(a + step, vt.nbytes)))
        sync()
        return h.hexdigest(), time.perf_counter() - t0
    finally:
        reader.close()


def raw_gpu_rate(vt: VirtualTensor, folder: Path, op: str) -> float | None:
    """GB/s of output of the single torch op on the GPU, tensors already there (no transfer)."""
    if not torch.cuda.is_available():
        return None
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt", device="cuda") as f:
        x = f.get_tensor(vt.origins[0])
        fn = {
            "cast bf16 -> fp16": lambda: x.to(torch.float16),
            "cast fp32 -> bf16": lambda: x.to(torch.bfloat16),
            "cast fp16 -> fp32": lambda: x.to(torch.float32),
            "transpose experts (1, 2)": lambda: x.transpose(1, 2).contiguous(),
            "transpose 2-D (bands)": lambda: x.t().contiguous(),
        }.get(op)
        if fn is None:
            return None
        fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(5):
            out = fn()
        sync()
        return 5 * out.numel() * out.element_size() / (time.perf_counter() - t0) / 1e9


def check_kernels(work: Path, mb: int, has_cuda: bool) -> tuple[list[dict], bool]:
    folder = work / "kernels"
    folder.mkdir()
    v = build_tensors(folder, mb)
    cases = {
        "cast bf16 -> fp16": kernels.cast(v["bf16"], "F16"),
        "cast fp32 -> bf16": kernels.cast(v["f32"], "BF16"),
        "cast fp16 -> fp32": kernels.cast(v["f16"], "F32"),
        "transpose experts (1, 2)": kernels.transpose(v["bf16"], 1, 2, "check"),
        "transpose 2-D (bands)": kernels.transpose(v["mat"], 0, 1, "check"),
        "fp8 dequantize 128x128": kernels.fp8_dequantize(v["fp8"], v["fp8_scale"], "BF16", "check"),
        "fp8 dequantize odd grid": kernels.fp8_dequantize(v["fp8_odd"], v["fp8_odd_scale"], "BF16", "check"),
        "mxfp4 dequantize": kernels.mxfp4_dequantize(v["mx_blocks"], v["mx_scales"], "BF16", "check"),
    }
    rows, ok = [], True
    print(f"kernels (~{mb} MB tensors, through the executor's steps):")
    for name, vt in cases.items():
        cpu_hash, cpu_t = evaluate(vt, folder, "cpu")
        row: dict = {"case": name, "mb": vt.nbytes / 1e6, "cpu_s": cpu_t}
        line = f"  {name:<26} {vt.nbytes / 1e6:7.0f} MB   cpu {cpu_t:7.2f} s"
        if has_cuda:
            evaluate(vt, folder, "cuda")  # warm-up (context, kernels)
            gpu_hash, gpu_t = evaluate(vt, folder, "cuda")
            same = gpu_hash == cpu_hash
            ok &= same
            raw = raw_gpu_rate(vt, folder, name)
            row.update(cuda_s=gpu_t, speedup=cpu_t / gpu_t, identical=same, raw_gpu_gbps=raw)
            line += f"   cuda {gpu_t:7.2f} s   x{cpu_t / gpu_t:5.1f}   {'identical' if same else 'DIFFERENT'}"
            if raw:
                line += f"   (raw op on GPU {raw:.0f} GB/s)"
        print(line)
        rows.append(row)
    shutil.rmtree(folder)
    return rows, ok


# --- 2. whole conversions ------------------------------------------------------------------------------------------


def run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS of a fresh process (``bench/convert_bench.py``'s launcher)."""
    dt, rss, _ = run_child(cmd)
    return dt, rss


def tensor_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every tensor's bytes (the shards' metadata names the destination, so files differ)."""
    idx = read_local_checkpoint(folder)
    r = LocalReader(folder)
    try:
        return {
            n: hashlib.sha256(r.read(t.file, t.offset, t.length)).hexdigest() for n, t in idx.tensors.items()
        }
    finally:
        r.close()


def check_conversions(work: Path, gb: float, repeat: int, has_cuda: bool) -> tuple[list[dict], bool]:
    srcs = {}
    for kind in ("bf16", "fp8", "mxfp4"):
        t0 = time.perf_counter()
        srcs[kind] = WRITERS[kind](work / kind, gb)
        print(
            f"  built {kind} ({sum(p.stat().st_size for p in srcs[kind].iterdir()) / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s"
        )
    cases = [
        ("--dtype fp16", "bf16", ["--dtype", "fp16"]),
        ("--dtype fp32", "bf16", ["--dtype", "fp32"]),
        ("FP8 --dequantize", "fp8", ["--dequantize"]),
        ("MXFP4 --dequantize", "mxfp4", ["--dequantize"]),
    ]
    devices = ["cpu", *(["cuda"] if has_cuda else [])]
    rows, ok = [], True
    out = work / "out"
    print(f"conversions (~{gb:g} GB checkpoints, fresh processes, best of {repeat}):")
    cp: dict[str, float] = {}
    for kind, src in srcs.items():
        times = []
        for _ in range(repeat):
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            times.append(run(["cp", "-r", str(src), str(out)])[0])
        cp[kind] = min(times)
        print(f"  cp -r {kind:<21} {cp[kind]:7.2f} s")
    for name, kind, extra in cases:
        row: dict = {"case": name, "cp_s": cp[kind]}
        hashes = {}
        for device in devices:
            best, rss = float("inf"), 0
            for _ in range(repeat):
                shutil.rmtree(out, ignore_errors=True)
                os.sync()
                cmd = [sys.executable, "-m", "converter.cli", "convert", str(srcs[kind]), str(out), "--quiet"]
                dt, r = run([*cmd, *extra, "--device", device])
                best, rss = min(best, dt), max(rss, r)
            hashes[device] = tensor_hashes(out)
            row[f"{device}_s"], row[f"{device}_rss"] = best, rss
        line = f"  {name:<27} cpu {row['cpu_s']:7.2f} s ({row['cpu_s'] / cp[kind]:4.1f}x cp, {row['cpu_rss'] / 1e6:4.0f} MB)"
        if has_cuda:
            same = hashes["cuda"] == hashes["cpu"]
            ok &= same
            row.update(identical=same, speedup=row["cpu_s"] / row["cuda_s"])
            line += (
                f"   cuda {row['cuda_s']:7.2f} s ({row['cuda_s'] / cp[kind]:4.1f}x cp, {row['cuda_rss'] / 1e6:4.0f} MB)"
                f"   {'identical' if same else 'DIFFERENT'}"
            )
        print(line)
        rows.append(row)
    shutil.rmtree(out, ignore_errors=True)
    return rows, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="256 MB kernels, 1 GB checkpoints, one round (< 3 min)"
    )
    ap.add_argument("--mb", type=int, default=512, help="size of the kernel test tensors (MB)")
    ap.add_argument("--gb", type=float, default=4.0, help="size of the test checkpoints (GB of bf16)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the results here (JSON)")
    ap.add_argument("--workdir", type=Path, help="where to write test files (default: a temp folder)")
    a = ap.parse_args()
    if a.quick:
        a.mb, a.gb, a.repeat = 256, 1.0, 1
    has_cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if has_cuda else None
    print(f"torch {torch.__version__}; CUDA: {gpu or 'none'}; {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=a.workdir))
    try:
        kernel_rows, ok1 = check_kernels(work, a.mb, has_cuda)
        conv_rows, ok2 = check_conversions(work, a.gb, a.repeat, has_cuda)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "gpu": gpu,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "host": platform.node(),
        "quick": a.quick,
        "kernels": kernel_rows,
        "conversions": conv_rows,
        "identical": ok1 and ok2,
        "seconds": time.perf_counter() - t0,
    }
    if a.out:
        a.out.write_text(json.dumps(result, indent=2))
    if not has_cuda:
        print("no CUDA device here: only the CPU path was measured")
    print(
        f"done in {result['seconds']:.0f} s; {'all identical' if result['identical'] else 'DIFFERENCES FOUND'}"
    )
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
