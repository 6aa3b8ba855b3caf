"""1,000 distinct ``POST /convert`` submissions from 50 concurrent clients: all accepted, none lost.

    python bench/load_bench.py [--jobs 1000] [--clients 50] [--no-wait]

Starts Valkey, the API (2 processes) and one worker (concurrency 2), then submits ``--jobs`` distinct
conversions of a tiny local checkpoint (each to its own destination) from ``--clients`` concurrent clients.
Prints the submission latency (p50/p99/max) and rate, checks that every submission got 202 with a distinct job,
that the store records exactly that many jobs, and (unless ``--no-wait``) that every job then succeeds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
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


async def submit_all(
    url: str, src: Path, out: Path, n: int, clients: int
) -> tuple[list[float], list[int], set[str]]:
    latencies: list[float] = []
    statuses: list[int] = []
    ids: set[str] = set()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as c:

        async def client() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = {"source": str(src), "destination": {"local_path": str(out / f"job-{i:05d}")}}
                t = time.perf_counter()
                r = await c.post("/convert", json=body)
                latencies.append(time.perf_counter() - t)
                statuses.append(r.status_code)
                if r.status_code in (200, 202):
                    ids.add(r.json()["id"])

        await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, statuses, ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--no-wait", action="store_true", help="do not wait for the jobs to run")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ckpt-loadbench-"))
    src = write_mixtral_checkpoint(
        root / "src", MixtralShape(layers=1, experts=2, hidden=32, intermediate=32, vocab=32)
    )
    valkey = Valkey(root / "valkey")
    env = service_env(valkey.url, root)
    api, url = start_api(env, root / "api.log", extra_args=["--workers", "2"])
    worker = start_worker(env, root / "worker.log", concurrency=2)
    try:
        t0 = time.perf_counter()
        lat, statuses, ids = asyncio.run(submit_all(url, src, root / "out", a.jobs, a.clients))
        dt = time.perf_counter() - t0
        lat.sort()
        accepted = sum(s == 202 for s in statuses)
        recorded = httpx.get(url + "/jobs", params={"limit": 1}).json()["count"]
        print(
            f"{a.jobs} distinct submissions from {a.clients} concurrent clients in {dt:.2f} s ({a.jobs / dt:.0f}/s)"
        )
        print(f"  latency p50 {lat[len(lat) // 2] * 1000:.1f} ms   p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.1f} ms   "
              f"max {lat[-1] * 1000:.1f} ms   mean {statistics.mean(lat) * 1000:.1f} ms")  # fmt: skip
        print(
            f"  accepted (202): {accepted}   distinct job ids: {len(ids)}   recorded by the store: {recorded}"
        )
        ok = accepted == a.jobs == len(ids) == recorded
        if not a.no_wait:
            t1 = time.perf_counter()

            def done() -> bool:
                counts = {s: httpx.get(url + "/jobs", params={"status": s, "limit": 1}).json()["count"]
                          for s in ("succeeded", "failed", "cancelled")}  # fmt: skip
                return sum(counts.values()) == a.jobs and counts

            counts = wait_until(done, timeout=3600, every=1.0, what="all jobs")
            print(f"  all {a.jobs} jobs ran in {time.perf_counter() - t1:.1f} s: {counts}")
            ok &= counts["succeeded"] == a.jobs
        print("nothing lost" if ok else "LOST OR REFUSED SUBMISSIONS")
        return 0 if ok else 1
    finally:
        worker.stop()
        api.stop()
        valkey.stop()


if __name__ == "__main__":
    sys.exit(main())
