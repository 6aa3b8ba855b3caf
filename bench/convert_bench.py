"""Conversion speed and memory, side by side with a plain copy and with transformers, in one run.

    python bench/convert_bench.py                 # ~2 GB bf16 Mixtral-shaped checkpoint, ~500 MB shards
    python bench/convert_bench.py --layers 2      # smaller
    python bench/convert_bench.py --no-transformers

Prints, for the same checkpoint: ``cp -r`` time; our conversion's time and peak RSS (a fresh process, as a user
runs it); transformers' ``from_pretrained`` + ``save_pretrained(save_original_format=False)`` time and peak RSS;
the wall time of ``ckpt-convert plan SRC --json > /dev/null`` (process start to exit: the fixed cost every
conversion pays before it reads a header); and the ratios against the targets (conversion within 1.5x of the
copy, peak RSS under 400 MB, at least 3x faster than transformers, ``plan`` under 0.25 s). Each command runs
``--repeat`` times on a warm page cache, after a ``sync``; the median is reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from converter.demo import MixtralShape  # noqa: E402

BUILD_SCRIPT = """
import sys
from converter.demo import MixtralShape, write_mixtral_checkpoint
write_mixtral_checkpoint(sys.argv[1], MixtralShape(**eval(sys.argv[2])), max_shard_bytes=int(sys.argv[3]))
"""


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


def run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of a child process."""
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    with tempfile.NamedTemporaryFile("r") as rss_file:
        t0 = time.perf_counter()
        rc = subprocess.call(
            [sys.executable, "-S", "-c", LAUNCHER, rss_file.name, *cmd], stdout=subprocess.DEVNULL, env=env
        )
        dt = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"command failed: {' '.join(cmd)}")
        return dt, int(rss_file.read())


def ckpt_convert() -> list[str]:
    """The ``ckpt-convert`` command as installed next to this Python (else run as a module)."""
    script = Path(sys.executable).parent / "ckpt-convert"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


def measure(commands: dict[str, tuple[list[str], Path]], repeat: int) -> dict[str, tuple[float, int]]:
    """Run the commands in turn, ``repeat`` rounds (interleaved, so disk noise hits all alike); median time, max RSS."""
    times: dict[str, list[float]] = {k: [] for k in commands}
    rss = dict.fromkeys(commands, 0)
    for _ in range(repeat):
        for name, (cmd, out) in commands.items():
            shutil.rmtree(out, ignore_errors=True)
            os.sync()  # start each run with no write-back of the previous one pending
            dt, r = run(cmd)
            times[name].append(dt)
            rss[name] = max(rss[name], r)
    result = {}
    for name in commands:
        med = statistics.median(times[name])
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"  {name:<38} {med:8.2f} s   peak RSS {rss[name] / 1e6:8.0f} MB   (runs: {runs})")
        result[name] = (med, rss[name])
    return result


def wall(label: str, cmd: list[str], repeat: int) -> float:
    """Median wall seconds of ``cmd`` from process start to exit, its stdout discarded (as ``> /dev/null``)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"  {label:<38} {med:8.2f} s   (runs: {', '.join(f'{t:.2f}' for t in times)})")
    return med


TRANSFORMERS_SCRIPT = """
import sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
m.save_pretrained(sys.argv[2], save_original_format=False, max_shard_size="500MB")
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", help="where to build the checkpoint (default: a temp folder)")
    ap.add_argument("--layers", type=int, default=10, help="10 layers = about 1.96 GB")
    ap.add_argument("--shard-mb", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    a = ap.parse_args()

    work = Path(a.workdir or tempfile.mkdtemp(prefix="ckpt-bench-"))
    src = work / "published"
    shape = MixtralShape.bench()
    shape = MixtralShape(**{**shape.__dict__, "layers": a.layers})
    if not src.exists():
        t0 = time.perf_counter()
        root = str(Path(__file__).resolve().parents[1])
        subprocess.run(
            [sys.executable, "-c", BUILD_SCRIPT, str(src), repr(shape.__dict__), str(a.shard_mb * 1_000_000)],
            check=True,
            cwd=root,
        )
        print(f"built {src} in {time.perf_counter() - t0:.1f} s")
    size = sum(p.stat().st_size for p in src.iterdir())
    shards = len(list(src.glob("*.safetensors")))
    print(f"checkpoint: {size / 1e9:.3f} GB, {shards} shards, {shape}")
    run(["cat", *map(str, src.iterdir())])  # warm the page cache once for everyone

    print("results (median of runs, warm page cache):")
    commands = {
        "cp -r (baseline)": (["cp", "-r", str(src), str(work / "copy")], work / "copy"),
        "ckpt-convert convert": (
            [
                sys.executable,
                "-m",
                "converter.cli",
                "convert",
                str(src),
                str(work / "ours"),
                "--quiet",
                "--max-shard-size",
                f"{a.shard_mb}MB",
            ],
            work / "ours",
        ),
    }
    has_tf = False
    if not a.no_transformers:
        if importlib.util.find_spec("transformers") is not None:
            has_tf = True
            tf_cmd = [sys.executable, "-c", TRANSFORMERS_SCRIPT, str(src), str(work / "tf")]
            commands["transformers load + save (grouped)"] = (tf_cmd, work / "tf")
        else:
            print("  transformers not installed: skipped")
    res = measure(commands, a.repeat)
    plan_cmd = [*ckpt_convert(), "plan", str(src), "--json"]
    # a fraction of a second, so more rounds: start-up time is noisy
    plan_t = wall("ckpt-convert plan --json > /dev/null", plan_cmd, max(a.repeat, 5))
    cp_t = res["cp -r (baseline)"][0]
    ours_t, ours_rss = res["ckpt-convert convert"]
    tf_t, tf_rss = res["transformers load + save (grouped)"] if has_tf else (None, None)

    print("ratios:")
    ok = True

    def line(label: str, value: float, target: str, good: bool) -> None:
        nonlocal ok
        ok &= good
        print(f"  {label:<38} {value:8.2f}   target {target:<10} {'OK' if good else 'MISSED'}")

    line("ours / cp time", ours_t / cp_t, "<= 1.5", ours_t / cp_t <= 1.5)
    line("our peak RSS (MB)", ours_rss / 1e6, "< 400", ours_rss < 400e6)
    line("plan wall time (s)", plan_t, "< 0.25", plan_t < 0.25)
    if tf_t is not None and tf_rss is not None:
        line("transformers / ours time", tf_t / ours_t, ">= 3", tf_t / ours_t >= 3)
        line("transformers / ours peak RSS", tf_rss / ours_rss, "(info)", True)
    if not a.keep and not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
