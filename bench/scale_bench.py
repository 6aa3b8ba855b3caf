"""One multi-shard job on 1 worker, then on 2 workers, side by side.

    python bench/scale_bench.py [--layers 6] [--shard-mb 100] [--dtype fp16]

Starts Valkey, the API and Celery workers (the commands of ``ckpt-convert serve`` / docker-compose.yml),
submits the same conversion of a synthetic bf16 Mixtral-shaped checkpoint (split into per-shard subtasks), and
times it from submission to ``succeeded`` with one worker and then with two. ``--dtype fp16`` makes every byte
computed (a cast) instead of copied, which is where more workers help most. On a 2-core machine that also runs
Valkey, the API and the benchmark, expect well under 2x.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from support.servers import Valkey, service_env, start_api, start_worker, wait_until  # noqa: E402

from converter.demo import MixtralShape, write_mixtral_checkpoint  # noqa: E402


def run_job(url: str, src: Path, out: Path, shard_mb: int, dtype: str | None) -> tuple[float, dict]:
    body = {"source": str(src), "destination": {"local_path": str(out)}, "max_shard_size": f"{shard_mb}MB"}
    if dtype:
        body["dtype"] = dtype
    t0 = time.perf_counter()
    job = httpx.post(url + "/convert", json=body).json()
    final = wait_until(
        lambda: (j := httpx.get(f"{url}/jobs/{job['id']}").json())["status"] in ("succeeded", "failed") and j,
        timeout=3600, every=0.05, what="job",
    )  # fmt: skip
    dt = time.perf_counter() - t0
    if final["status"] != "succeeded":
        raise SystemExit(f"job failed: {final['error']}")
    return dt, final


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6, help="6 layers = about 1.2 GB")
    ap.add_argument("--shard-mb", type=int, default=100)
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ckpt-scalebench-"))
    shape = MixtralShape(**{**MixtralShape.bench().__dict__, "layers": a.layers})
    src = write_mixtral_checkpoint(root / "src", shape, max_shard_bytes=500_000_000)
    size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    valkey = Valkey(root / "valkey")
    env = service_env(valkey.url, root)
    api, url = start_api(env, root / "api.log")
    workers = [start_worker(env, root / "w1.log", name="w1")]
    try:
        print(f"checkpoint {size / 1e9:.2f} GB; output shards of {a.shard_mb} MB; cast: {a.dtype or 'none'}")
        run_job(url, src, root / "warm-up", a.shard_mb, a.dtype)  # page cache, worker imports
        shutil.rmtree(root / "warm-up")

        def timed(tag: str) -> tuple[float, dict]:
            times, last = [], {}
            for i in range(a.repeat):
                t, last = run_job(url, src, root / f"{tag}{i}", a.shard_mb, a.dtype)
                times.append(t)
                shutil.rmtree(root / f"{tag}{i}")
            return sorted(times)[len(times) // 2], last

        t1, j1 = timed("one")
        n = len(j1["result"]["shards"])
        print(f"  1 worker : {t1:7.2f} s  ({n} shards, {size / t1 / 1e9:.2f} GB/s; median of {a.repeat})")
        workers.append(start_worker(env, root / "w2.log", name="w2"))
        t2, j2 = timed("two")
        by = {}
        for s in j2["result"]["subtasks"]:
            w = s["worker"].split("@")[0]
            by[w] = by.get(w, 0) + len(s["shards"])
        print(f"  2 workers: {t2:7.2f} s  (shards per worker: {by})")
        print(f"  speedup  : {t1 / t2:7.2f}x")
        return 0
    finally:
        for w in workers:
            w.stop()
        api.stop()
        valkey.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
