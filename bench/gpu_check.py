"""On a GPU node: the arithmetic ops give the same bytes on the GPU as on the CPU, and how much faster they are.

    python bench/gpu_check.py [--mb 256]

Builds one safetensors file with random tensors, then evaluates, through the converter's own computed pieces
(``converter.kernels``), a bf16 -> fp16 cast, an fp32 -> bf16 cast, an expert transpose, a block-scaled FP8
dequantize and an MXFP4 dequantize, once with ``device="cpu"`` and once with ``device="cuda"``. Prints, per op,
whether the outputs are byte-identical, and both times. Exits 1 on any difference. Without a CUDA device it
reports the CPU times and says so.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from converter import kernels  # noqa: E402
from converter.checkpoint import read_local_checkpoint  # noqa: E402
from converter.executor import _Streamer  # noqa: E402
from converter.layout import VirtualTensor, from_file  # noqa: E402
from converter.storage import LocalReader  # noqa: E402


def build(folder: Path, mb: int) -> dict[str, VirtualTensor]:
    g = torch.Generator().manual_seed(0)
    e = 8
    n = int((mb * 2**20 / 2 / e) ** 0.5) // 64 * 64 or 64  # bf16 [E, n, n] of about `mb` MB
    t = {
        "bf16": torch.randn(e, n, n, generator=g).to(torch.bfloat16),
        "f32": torch.randn(e, n, n // 2, generator=g),
        "fp8": (torch.randn(e, n, n, generator=g) * 4).to(torch.float8_e4m3fn),
        "fp8_scale": torch.rand(e, n // 128 or 1, n // 128 or 1, generator=g) + 0.5,
        "mx_blocks": torch.randint(0, 256, (e, n, n // 32, 16), generator=g, dtype=torch.uint8),
        "mx_scales": torch.randint(120, 134, (e, n, n // 32), generator=g, dtype=torch.uint8),
    }
    save_file(t, str(folder / "model.safetensors"))
    idx = read_local_checkpoint(folder)
    return {k: from_file(k, i.dtype, i.shape, i.file, i.offset, i.length) for k, i in idx.tensors.items()}


def evaluate(vt: VirtualTensor, folder: Path, device: str) -> tuple[str, float]:
    reader = LocalReader(folder)
    try:
        s = _Streamer(reader, lambda n: None, device=device)
        h = hashlib.sha256()
        t0 = time.perf_counter()
        step = 64 * 2**20
        for a in range(0, vt.nbytes, step):
            h.update(s.read_tensor(vt, a, min(a + step, vt.nbytes)))
        if device == "cuda":
            torch.cuda.synchronize()
        return h.hexdigest(), time.perf_counter() - t0
    finally:
        reader.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=256, help="size of the largest test tensor")
    a = ap.parse_args()
    has_cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}; CUDA: {torch.cuda.get_device_name(0) if has_cuda else 'none'}")
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        v = build(folder, a.mb)
        cases = {
            "cast bf16 -> fp16": kernels.cast(v["bf16"], "F16"),
            "cast fp32 -> bf16": kernels.cast(v["f32"], "BF16"),
            "transpose experts (1, 2)": kernels.transpose(v["bf16"], 1, 2, "check"),
            "fp8 block dequantize": kernels.fp8_dequantize(v["fp8"], v["fp8_scale"], "BF16", "check"),
            "mxfp4 dequantize": kernels.mxfp4_dequantize(v["mx_blocks"], v["mx_scales"], "BF16", "check"),
        }
        ok = True
        for name, vt in cases.items():
            cpu_hash, cpu_t = evaluate(vt, folder, "cpu")
            line = f"  {name:<28} {vt.nbytes / 1e6:8.0f} MB   cpu {cpu_t:7.2f} s"
            if has_cuda:
                evaluate(vt, folder, "cuda")  # warm-up (kernels, context)
                gpu_hash, gpu_t = evaluate(vt, folder, "cuda")
                same = gpu_hash == cpu_hash
                ok &= same
                line += (
                    f"   cuda {gpu_t:7.2f} s   x{cpu_t / gpu_t:5.1f}   {'identical' if same else 'DIFFERENT'}"
                )
            print(line)
    if not has_cuda:
        print("no CUDA device here: only the CPU path was measured")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
