"""Conversion speed and memory, side by side with a plain copy, the raw torch op and transformers, in one run.

    python bench/convert_bench.py                   # 2 GB and ~7 GB checkpoints, 3 rounds
    python bench/convert_bench.py --quick           # 2 GB, 1 round, raw ops on 0.5 GB, no transformers (~2 min)
    python bench/convert_bench.py --sizes 2 --repeat 5 --json out.json

For each size (GB of bf16 weights), three synthetic checkpoints (``bench/checkpoints.py``): a Mixtral-shaped bf16
one, its FP8 twin (float8_e4m3fn + 128x128 fp32 block scales, DeepSeek-V3 style) and a gpt_oss-shaped MXFP4 one.
Each case runs as a fresh process, as a user runs it (torch's import included), on a warm page cache after a
``sync``; the median of ``--repeat`` interleaved rounds is reported with the peak RSS:

  cp -r                      the bf16 folder (and the FP8 and MXFP4 folders, for their own ratios)
  byte-copy convert          ``ckpt-convert convert SRC OUT`` (stack and concat are byte copies)
  --dtype fp16 / fp32        the same with a cast
  FP8 / MXFP4 dequantize     ``--dequantize`` to bf16
  raw torch op               the equivalent single op on the same tensors, in memory (no I/O): ``t.to(dtype)``,
                             ``(w.float() * scale per block).to(bf16)``, transformers' ``convert_moe_packed_tensors``
  transformers load + save   ``from_pretrained(dtype=fp16)`` + ``save_pretrained`` (skipped when memory is short)
  from_pretrained            of the published checkpoint vs of our converted one (why the product exists)

and the ratios against the targets: ``--dtype fp16`` within 3x of ``cp -r``; compute-path peak RSS under 300 MB;
FP8 dequantize within 1.5x of (raw op + ``cp -r``); byte-copy peak RSS under 50 MB; ``plan`` under 0.25 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: a minimal launcher (python -S, ~10 MB): a child's ru_maxrss starts from the size of the process it was forked
#: from, so children are forked from this instead of from the bench itself
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status))
"""

BUILD_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[4])
from bench.checkpoints import WRITERS
WRITERS[sys.argv[1]](__import__("pathlib").Path(sys.argv[2]), float(sys.argv[3]))
"""

#: the raw op on the same tensors, in memory: prints JSON {bytes (output), seconds}
RAW_SCRIPT = """
import json, sys, time
import torch
from safetensors import safe_open
from pathlib import Path
kind, folder, limit = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]) * 1e9
files = sorted(folder.glob("*.safetensors"))
done = seconds = 0.0
def timed(fn):
    global seconds
    t0 = time.perf_counter(); out = fn(); seconds += time.perf_counter() - t0
    return out.numel() * out.element_size()
for f in files:
    with safe_open(str(f), "pt") as s:
        names = list(s.keys())
        for n in names:
            if done >= limit:
                break
            if kind in ("fp16", "fp32"):
                t = s.get_tensor(n)
                if t.dtype != torch.bfloat16:
                    continue
                to = torch.float16 if kind == "fp16" else torch.float32
                done += timed(lambda: t.to(to))
            elif kind == "fp8" and n.endswith("_scale_inv"):
                w, sc = s.get_tensor(n[: -len("_scale_inv")]), s.get_tensor(n)
                r, c = w.shape
                sr, scn = sc.shape
                if r % sr or c % scn:
                    continue
                f = lambda: (w.float().reshape(sr, r // sr, scn, c // scn) * sc[:, None, :, None]).to(torch.bfloat16)
                done += timed(f)
            elif kind == "mxfp4" and n.endswith("_blocks"):
                from transformers.integrations.mxfp4 import convert_moe_packed_tensors
                b, sc = s.get_tensor(n), s.get_tensor(n[: -len("_blocks")] + "_scales")
                done += timed(lambda: convert_moe_packed_tensors(b, sc, dtype=torch.bfloat16))
print(json.dumps({"bytes": done, "seconds": seconds}))
"""

TF_SAVE_SCRIPT = """
import sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float16)
m.save_pretrained(sys.argv[2], max_shard_size="500MB")
"""

TF_LOAD_SCRIPT = """
import sys, torch
from transformers import AutoModelForCausalLM
AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
"""

ENV = {
    **os.environ,
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def run(cmd: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes) and stdout of a child process."""
    with tempfile.NamedTemporaryFile("r") as rss_file:
        t0 = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-S", "-c", LAUNCHER, rss_file.name, *cmd],
            capture_output=True,
            text=True,
            env=ENV,
        )
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"command failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
        return dt, int(rss_file.read()), p.stdout


def convert_cmd(src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "converter.cli", "convert", str(src), str(out), "--quiet", *extra]


def warm(folder: Path) -> None:
    """Read a folder once, so that every case starts from a warm page cache."""
    for p in folder.iterdir():
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


class Case:
    def __init__(self, name: str, cmd: list[str], src: Path, out: Path | None) -> None:
        self.name, self.cmd, self.src, self.out = name, cmd, src, out
        self.times: list[float] = []  # the command
        self.synced: list[float] = []  # the command, then sync (its output on disk, as the issue times cp -r)
        self.rss = 0
        self.stdout = ""

    def once(self) -> None:
        if self.out is not None:
            shutil.rmtree(self.out, ignore_errors=True)
        os.sync()  # no write-back of the previous case pending
        warm(self.src)
        dt, rss, self.stdout = run(self.cmd)
        self.times.append(dt)
        t0 = time.perf_counter()
        if self.out is not None:
            os.sync()
        self.synced.append(dt + time.perf_counter() - t0)
        self.rss = max(self.rss, rss)
        if self.out is not None and not self.name.startswith("ckpt-convert convert (keep)"):
            shutil.rmtree(self.out, ignore_errors=True)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def median_synced(self) -> float:
        return statistics.median(self.synced)


def build(work: Path, kind: str, gb: float) -> Path:
    folder = work / f"{kind}-{gb:g}gb"
    if not (folder / "config.json").exists():
        t0 = time.perf_counter()
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-c", BUILD_SCRIPT, kind, str(folder), str(gb), str(ROOT)], check=True
        )
        print(
            f"  built {folder.name} ({folder_bytes(folder) / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s"
        )
    return folder


def raw_output_bytes(bf16: Path, fp8: Path, mx: Path) -> dict[str, int]:
    """Bytes each raw op produces on a whole checkpoint (from the headers): every bf16 tensor cast, every FP8 weight
    dequantized to bf16 (2 bytes per element), every MXFP4 block byte (two values) dequantized to bf16."""
    from converter.checkpoint import read_local_checkpoint

    def total(folder: Path, keep) -> int:
        return sum(t.length for n, t in read_local_checkpoint(folder).tensors.items() if keep(n, t))

    b = total(bf16, lambda n, t: t.dtype == "BF16")
    return {
        "fp16": b,
        "fp32": 2 * b,
        "fp8": 2 * total(fp8, lambda n, t: t.dtype == "F8_E4M3"),
        "mxfp4": 4 * total(mx, lambda n, t: n.endswith("_blocks")),
    }


def mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def bench_size(work: Path, gb: float, a: argparse.Namespace) -> dict:
    print(f"\n== {gb:g} GB ==")
    bf16, fp8, mx = build(work, "bf16", gb), build(work, "fp8", gb), build(work, "mxfp4", gb)
    out = work / "out"
    sizes = {k: folder_bytes(f) for k, f in (("bf16", bf16), ("fp8", fp8), ("mxfp4", mx))}
    print(
        f"  bf16 {sizes['bf16'] / 1e9:.2f} GB, FP8 {sizes['fp8'] / 1e9:.2f} GB, MXFP4 {sizes['mxfp4'] / 1e9:.2f} GB"
        f" (load average {os.getloadavg()[0]:.1f})"
    )
    cases = [
        Case("cp -r (bf16)", ["cp", "-r", str(bf16), str(out)], bf16, out),
        Case("ckpt-convert convert (byte copy)", convert_cmd(bf16, out), bf16, out),
        Case("ckpt-convert --dtype fp16", convert_cmd(bf16, out, "--dtype", "fp16"), bf16, out),
        Case("ckpt-convert --dtype fp32", convert_cmd(bf16, out, "--dtype", "fp32"), bf16, out),
        Case("cp -r (FP8)", ["cp", "-r", str(fp8), str(out)], fp8, out),
        Case("ckpt-convert --dequantize (FP8)", convert_cmd(fp8, out, "--dequantize"), fp8, out),
        Case("cp -r (MXFP4)", ["cp", "-r", str(mx), str(out)], mx, out),
        Case("ckpt-convert --dequantize (MXFP4)", convert_cmd(mx, out, "--dequantize"), mx, out),
    ]
    has_tf = importlib.util.find_spec("transformers") is not None
    tf_ok = has_tf and not a.no_transformers and mem_available() > 4 * sizes["bf16"]  # it peaks near 2.7x
    grouped = work / f"grouped-{gb:g}gb"
    if tf_ok:
        if not (grouped / "config.json").exists():
            subprocess.run(convert_cmd(bf16, grouped), check=True, env=ENV)
        tf_cmd = [sys.executable, "-c", TF_SAVE_SCRIPT, str(bf16), str(out)]
        cases.append(Case("transformers load(fp16) + save", tf_cmd, bf16, out))
        load = [sys.executable, "-c", TF_LOAD_SCRIPT]
        cases.append(Case("from_pretrained(published)", [*load, str(bf16)], bf16, None))
        cases.append(Case("from_pretrained(converted)", [*load, str(grouped)], grouped, None))
    elif not a.no_transformers:
        why = "not installed" if not has_tf else f"{mem_available() / 1e9:.0f} GB available, too little"
        print(f"  transformers cases skipped ({why})")
    for _ in range(a.repeat):
        for c in cases:
            c.once()
    raw = {}
    for kind, folder in (("fp16", bf16), ("fp32", bf16), ("fp8", fp8), ("mxfp4", mx)):
        if kind == "mxfp4" and not has_tf:
            continue
        warm(folder)
        _, rss, stdout = run([sys.executable, "-c", RAW_SCRIPT, kind, str(folder), str(a.raw_gb or 1e9)])
        r = json.loads(stdout.strip().splitlines()[-1])
        raw[kind] = {"rate": r["bytes"] / r["seconds"], "bytes": r["bytes"], "rss": rss}
    plan_times = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run(
            [*convert_cmd(bf16, out)[:3], "plan", str(bf16), "--json"], stdout=subprocess.DEVNULL, check=True
        )
        plan_times.append(time.perf_counter() - t0)

    print(f"  {'case':<38} {'median':>8}  {'+ sync':>7}   {'peak RSS':>9}   runs (+ sync)")
    for c in cases:
        runs = ", ".join(f"{t:.2f}" for t in c.times)
        runs_s = ", ".join(f"{t:.2f}" for t in c.synced)
        print(
            f"  {c.name:<38} {c.median:7.2f}s {c.median_synced:7.2f}s   {c.rss / 1e6:6.0f} MB   ({runs}) ({runs_s})"
        )
    by = {c.name: c for c in cases}
    out_bytes = raw_output_bytes(bf16, fp8, mx)
    for kind, r in raw.items():
        r["seconds_all"] = out_bytes[kind] / r["rate"]  # the raw op on the whole checkpoint
        print(
            f"  raw torch op {kind:<25} {r['seconds_all']:7.2f}s   {r['rss'] / 1e6:6.0f} MB   "
            f"({r['rate'] / 1e9:.2f} GB/s out, measured on {r['bytes'] / 1e9:.2f} GB of output)"
        )
    print(f"  ckpt-convert plan --json              {statistics.median(plan_times):7.2f}s")

    cp = by["cp -r (bf16)"].median
    res = {
        "gb": gb,
        "sizes": sizes,
        "load_average": os.getloadavg()[0],
        "cases": {
            c.name: {
                "median_s": c.median,
                "median_synced_s": c.median_synced,
                "runs_s": c.times,
                "runs_synced_s": c.synced,
                "peak_rss": c.rss,
            }
            for c in cases
        },
        "raw": raw,
        "plan_s": statistics.median(plan_times),
    }
    print("  ratios:")
    ok = True

    def line(label: str, value: float, target: str, good: bool | None) -> None:
        nonlocal ok
        ok &= good is not False
        verdict = "" if good is None else ("OK" if good else "MISSED")
        print(f"    {label:<44} {value:8.2f}   {target:<12} {verdict}")

    f16, byte = by["ckpt-convert --dtype fp16"], by["ckpt-convert convert (byte copy)"]
    cps = by["cp -r (bf16)"].median_synced
    line("byte copy / cp -r", byte.median / cp, "(info)", None)
    line("byte copy peak RSS (MB)", byte.rss / 1e6, "< 50", byte.rss < 50e6)
    line("--dtype fp16 / cp -r, both + sync", f16.median_synced / cps, "<= 3", f16.median_synced / cps <= 3)
    line("--dtype fp16 / cp -r, without sync", f16.median / cp, "(info)", None)
    line("--dtype fp16 / (raw op + cp -r)", f16.median / (raw["fp16"]["seconds_all"] + cp), "(info)", None)
    f32 = by["ckpt-convert --dtype fp32"]
    line("--dtype fp32 / (raw op + cp -r)", f32.median / (raw["fp32"]["seconds_all"] + cp), "(info)", None)
    fp8_case, cp8 = by["ckpt-convert --dequantize (FP8)"], by["cp -r (FP8)"]
    fp8_raw = raw["fp8"]["seconds_all"]
    r8 = fp8_case.median_synced / (fp8_raw + cp8.median_synced)
    line("FP8 dequantize / (raw op + cp -r FP8), + sync", r8, "<= 1.5", r8 <= 1.5)
    line("FP8 dequantize / (raw op + cp -r FP8)", fp8_case.median / (fp8_raw + cp8.median), "(info)", None)
    line("FP8 dequantize / raw op", fp8_case.median / fp8_raw, "(info)", None)
    if "mxfp4" in raw:
        mx_case, cpm = by["ckpt-convert --dequantize (MXFP4)"], by["cp -r (MXFP4)"].median
        mx_raw = raw["mxfp4"]["seconds_all"]
        line("MXFP4 dequantize / (raw op + cp -r MXFP4)", mx_case.median / (mx_raw + cpm), "(info)", None)
        line("MXFP4 dequantize / raw op", mx_case.median / mx_raw, "(info)", None)
    compute_rss = max(by[n].rss for n in by if n.startswith("ckpt-convert --d"))
    line("compute-path peak RSS, max of 4 (MB)", compute_rss / 1e6, "< 300", compute_rss < 300e6)
    if "transformers load(fp16) + save" in by:
        tf = by["transformers load(fp16) + save"]
        line("transformers load+save / --dtype fp16", tf.median / f16.median, "(info)", None)
        line("transformers / our peak RSS", tf.rss / f16.rss, "(info)", None)
        pub, conv = by["from_pretrained(published)"], by["from_pretrained(converted)"]
        line("from_pretrained published / converted (s)", pub.median / conv.median, "(info)", None)
    line(
        "plan --json wall time (s)",
        statistics.median(plan_times),
        "< 0.25",
        statistics.median(plan_times) < 0.25,
    )
    res["ok"] = ok
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--workdir", type=Path, help="where to build checkpoints (kept between runs); default: a temp folder"
    )
    ap.add_argument("--sizes", default="2,7", help="GB of bf16 weights, comma-separated (default 2,7)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--raw-gb", type=float, help="measure the raw ops on this many GB (default: all)")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--quick", action="store_true", help="2 GB, 1 round, raw ops on 0.5 GB, no transformers")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the temp work folder")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.repeat, a.raw_gb, a.no_transformers = "2", 1, a.raw_gb or 0.5, True
    work = a.workdir or Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    results = [bench_size(work, float(s), a) for s in a.sizes.split(",")]
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    if not a.workdir and not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
