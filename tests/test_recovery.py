"""Nothing lost, nobody in: `ckpt-convert serve` on the embedded default (real Valkey with its password, the API over
HTTP, a supervised Celery worker), with the default timeouts (visibility 30 s, job heartbeat 20 s).

- the embedded Valkey refuses clients without its password; the data folder is its owner's only;
- a per-job Hub token is nowhere under the data folder (append-only file, snapshot, logs) nor in serve's output;
- a worker killed mid-job is started again by serve and its job delivered again within 60 s, bit-exact;
- cancelling a job whose worker is gone ends it cancelled (and what the lost run wrote is removed);
- SIGTERM of serve mid-job puts the job back to queued with its task on the queue; the next serve finishes it;
- with Valkey stopped for a while mid-job, the conversion keeps its speed and the job ends right.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from support.servers import Service, Valkey, descendants, free_port, wait_until

from converter import plan
from converter.demo import MixtralShape, write_mixtral_checkpoint
from converter.storage import LocalSource
from converter.verifier import verify
from jobs.running import Outbox, job_lock
from jobs.secret import SecretKeyError, new_secret, seal, secret_file, unseal
from jobs.settings import Settings
from jobs.store import JobStore
from service.launcher import start_valkey

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
SECRET = "hf_job_secret_token_9d2e41"
PRIVATE = "org/private-recovery"
RATE = 2_000_000  # bytes/s: a job of the ~13 MB checkpoint takes about 6.5 s
SHAPE = MixtralShape(layers=2, experts=8, hidden=256, intermediate=512, vocab=2048)
FINISHED = ("succeeded", "failed", "cancelled")


class Served:
    """`ckpt-convert serve` as a user runs it: no REDIS_URL, a data folder, its output in a log file."""

    def __init__(self, root: Path, **env: str) -> None:
        self.root, self.data, self.runs = root, root / "data", 0
        self.env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CKPT_CONVERT_SECRET_KEY")}
        self.env.update({"CKPT_CONVERT_DATA_DIR": str(self.data), "CKPT_CONVERT_ALLOWED_LOCAL_ROOTS": str(root),
                         "CKPT_CONVERT_MAX_BYTES_PER_SECOND": str(RATE), **env})  # fmt: skip
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.runs += 1
        self.log = self.root / f"serve-{self.runs}.log"
        port = free_port()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

        def ready() -> bool:
            try:
                return self.http.get("/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return self.proc is not None and self.proc.poll() is not None

        wait_until(ready, timeout=90, what="serve ready")
        assert self.proc.poll() is None, self.log.read_text()
        self.valkey_port = int(re.findall(r"embedded Valkey on 127\.0\.0\.1:(\d+)", self.log.read_text())[-1])

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.http.close()
        return code

    @property
    def password(self) -> str:
        return (self.data / "valkey" / "password").read_text().strip()

    def store(self) -> JobStore:
        return JobStore(f"redis://:{self.password}@127.0.0.1:{self.valkey_port}/0")

    def worker_pid(self) -> int:
        """The Celery worker serve runs (its main process)."""
        assert self.proc is not None
        for pid in descendants(self.proc.pid):
            try:
                cmd, stat = Path(f"/proc/{pid}/cmdline").read_bytes(), Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if b"celery" in cmd and int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                return pid
        raise AssertionError("no worker under serve")

    def kill_worker(self) -> int:
        """SIGKILL the worker and its pool (no warm shutdown, no acknowledgement)."""
        pid = self.worker_pid()
        os.killpg(pid, signal.SIGKILL)
        return pid

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.root.glob("serve-*.log")))

    def submit(self, body: dict, headers: dict | None = None) -> str:
        r = self.http.post("/convert", json=body, headers=headers or {})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/jobs/{job_id}").json()

    def wait(self, job_id: str, pred, timeout: float = 120, what: str = "job"):  # type: ignore[no-untyped-def]
        return wait_until(lambda: j if pred(j := self.job(job_id)) else None, timeout=timeout, every=0.1,
                          what=what)  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from support.hubenv import isolated_hub, upload_tiny_mixtral

    root = tmp_path_factory.mktemp("recovery")
    with isolated_hub(root) as hub:
        upload_tiny_mixtral(hub, PRIVATE)
        hub.set_private(PRIVATE)
        hub.set_tokens(PRIVATE, [SECRET])
        s = Served(root, HF_ENDPOINT=hub.endpoint)
        s.hub = hub  # type: ignore[attr-defined]
        s.src = write_mixtral_checkpoint(root / "src", SHAPE)  # type: ignore[attr-defined]
        s.start()
        try:
            yield s
        finally:
            if s.proc is not None and s.proc.poll() is None:
                s.stop()


def local_job(s: Served, name: str, shard: str = "100MB") -> tuple[str, Path]:
    out = s.root / name
    return s.submit(
        {"source": str(s.src), "destination": {"local_path": str(out)}, "max_shard_size": shard}
    ), out


def assert_bit_exact(src: Path, out: Path, shard: str = "100MB") -> None:
    p = plan(src, max_shard_size=shard)
    assert verify(p, LocalSource(src), out).tensors == len(p.tensors)  # every byte as planned


def staging(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.partial-*"))


def under_way(s: Served, job_id: str, nbytes: int = 1_000_000) -> dict:
    return s.wait(
        job_id, lambda j: (j.get("progress") or {}).get("bytes_done", 0) > nbytes, what="job under way"
    )


# --- secrets at rest ---------------------------------------------------------------------------------------------


def test_token_sealing_and_secret_files(tmp_path):
    key = new_secret()
    sealed = seal(SECRET, key)
    assert unseal(sealed, key) == SECRET
    assert (
        not any(n in sealed.encode() for n in encodings(SECRET)) and seal(SECRET, key) != sealed
    )  # random IV
    with pytest.raises(SecretKeyError, match="differs from the API's"):
        unseal(sealed, new_secret())
    with pytest.raises(SecretKeyError, match="CKPT_CONVERT_SECRET_KEY"):
        seal(SECRET, None)  # no key: the API refuses the job rather than send the token in the clear
    f = tmp_path / "private" / "secret-key"
    value = secret_file(f)
    assert secret_file(f) == value and f.stat().st_mode & 0o777 == 0o600  # created once, then kept
    assert f.parent.stat().st_mode & 0o777 == 0o700


def test_outbox_never_blocks_while_redis_is_away():
    """Progress writes and cancel checks while nothing answers on the job store's port: each call returns at once."""
    box = Outbox(JobStore(f"redis://127.0.0.1:{free_port()}/0"), "job")
    t = time.monotonic()
    for i in range(20_000):
        box.put("progress", "progress", "job", {"bytes_done": i})
        assert box.should_cancel() is False
    assert time.monotonic() - t < 1.0
    t = time.monotonic()
    box.close(flush=0.5)  # what is waiting is given up after the flush time
    assert time.monotonic() - t < 3.0


def test_embedded_valkey_has_a_password_and_the_data_folder_is_private(served):
    s = served
    with socket.create_connection(("127.0.0.1", s.valkey_port), timeout=5) as c:
        c.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert c.recv(100).startswith(b"-NOAUTH")  # a local user without the password gets nothing
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=s.valkey_port, protocol=2).get("ckc:jobs")
    assert s.store().r.ping()
    assert s.data.stat().st_mode & 0o777 == 0o700 and (s.data / "valkey").stat().st_mode & 0o777 == 0o700
    for secret in (s.data / "valkey" / "password", s.data / "secret-key"):
        assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) >= 32
    exposed = [p for p in s.data.rglob("*") if p.stat().st_mode & 0o077]
    assert exposed == []  # the append-only file, the snapshot, the config (it holds the password): owner only
    assert s.password not in s.output()  # serve prints where the password is, never the password


def encodings(secret: str) -> list[bytes]:
    """The token as bytes, hex, and base64 (standard and URL-safe) at each of the three alignments it can have
    inside a longer base64 text (a kombu message body is base64 JSON)."""
    raw = secret.encode()
    out = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for shift in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\0" * shift + raw)
            out.append(text[(8 * shift + 5) // 6 : -4])  # the characters only the token's bits decide
    return out


def test_per_job_hub_token_never_reaches_disk(served):
    s = served
    body = {"source": PRIVATE, "destination": {"repo_id": "org/private-recovery-grouped", "private": True}}
    job_id = s.submit(body, headers={"X-HF-Token": SECRET})
    job = s.wait(job_id, lambda j: j["status"] in FINISHED, what="hub job end")
    assert job["status"] == "succeeded", job
    assert SECRET in s.hub.tokens_seen(rf"/{PRIVATE}/")  # the worker used the token
    r = s.store().r
    time.sleep(1.5)  # appendfsync everysec: what the job wrote is in the append-only file
    r.save()  # and the snapshot of everything Valkey holds now
    found = scan(s, SECRET)
    assert found == [], found
    aof = b"".join(p.read_bytes() for p in (s.data / "valkey").rglob("appendonly*") if p.is_file())
    assert job_id.encode() in aof and b"hf_token_sealed" in aof  # the message went through the disk, sealed
    r.bgrewriteaof()
    wait_until(lambda: r.info("persistence")["aof_rewrite_in_progress"] == 0
               and r.info("persistence")["aof_rewrite_scheduled"] == 0, what="AOF rewrite")  # fmt: skip
    assert scan(s, SECRET) == []


def scan(s: Served, secret: str) -> list[str]:
    """Files under the data folder, and serve's output (API, worker, Valkey), holding the token in any encoding."""
    needles = encodings(secret)
    files = [p for p in s.data.rglob("*") if p.is_file()] + sorted(s.root.glob("serve-*.log"))
    assert any("appendonly" in p.name for p in files) and any(p.suffix == ".rdb" for p in files)
    return [f"{p}: {n!r}" for p in files for n in needles if n in p.read_bytes()]


# --- no stranded jobs --------------------------------------------------------------------------------------------


def test_killed_worker_is_restarted_and_its_job_delivered_again_within_60s(served):
    s = served
    job_id, out = local_job(s, "after-kill")
    under_way(s, job_id)
    old = s.kill_worker()
    killed = time.monotonic()
    again = s.wait(
        job_id, lambda j: j["attempts"] >= 2 or j["status"] in FINISHED, timeout=90, what="redelivery"
    )
    redelivered = time.monotonic() - killed
    job = s.wait(job_id, lambda j: j["status"] in FINISHED, what="job end")
    print(f"\nSIGKILL of the worker -> job started again after {redelivered:.1f} s")
    assert again["status"] != "failed" and redelivered < 60
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    assert_bit_exact(s.src, out)
    assert staging(out) == []
    assert s.worker_pid() != old and re.search(
        r"worker \(pid \d+\) exited with -9; starting it again", s.output()
    )


def test_cancel_of_a_job_whose_worker_is_gone(served):
    s = served
    job_id, out = local_job(s, "cancel-gone")
    under_way(s, job_id)
    s.kill_worker()
    killed = time.monotonic()
    store = s.store()
    # the job's heartbeat (its lock) expires; the job still says running, and no worker will ever see a cancel flag
    wait_until(lambda: not store.r.exists(f"ckc:job:{job_id}:lock"), timeout=30, what="heartbeat expired")
    assert s.job(job_id)["status"] == "running" and staging(out)
    r = s.http.delete(f"/jobs/{job_id}")
    assert r.status_code == 202 and r.json()["status"] == "cancelled", r.text
    assert r.json()["error"]["type"] == "CancelledError" and "gone" in r.json()["error"]["message"]
    # its task is delivered again (the restarted worker): it finds the job cancelled and removes the lost run's files
    wait_until(lambda: staging(out) == [], timeout=60, what="lost run's staging removed")
    print(f"\nworker gone -> cancelled at {r.elapsed.total_seconds():.2f} s, staging removed after "
          f"{time.monotonic() - killed:.1f} s from the kill")  # fmt: skip
    job = s.job(job_id)
    assert job["status"] == "cancelled" and job["attempts"] == 1 and not out.exists()


@pytest.mark.parametrize("shard", ["100MB", "4MB"], ids=["one-task", "per-shard-subtasks"])
def test_sigterm_requeues_the_running_job_and_the_next_serve_finishes_it(served, shard):
    s = served
    job_id, out = local_job(s, f"after-restart-{shard}", shard)
    under_way(s, job_id, 2_000_000)
    t = time.monotonic()
    assert s.stop(signal.SIGTERM, timeout=60) == 0
    print(f"\nserve stopped {time.monotonic() - t:.1f} s after SIGTERM")
    task = rf"convert\[{job_id}\]" if shard == "100MB" else r"write_part\[[-0-9a-f]+\]"
    assert re.search(
        task + " reject requeue=True: worker shutting down", s.output()
    )  # stopped mid-conversion
    # what serve left on disk: the running task back on the queue (not acknowledged), and the job queued again (that
    # start not counted), or for a job in subtasks, still running with its remaining parts queued
    v = start_valkey(s.data / "valkey", port=free_port(), password=s.password)
    try:
        store = JobStore(v.url)
        rec = store.get(job_id)
        messages = [json.loads(m) for m in store.r.lrange("ckpt-convert", 0, -1)]
        assert store.r.hlen("unacked") == 0 and messages
        if shard == "100MB":
            assert rec is not None and rec["status"] == "queued" and rec["attempts"] == 0, rec
            assert [m["headers"]["id"] for m in messages] == [job_id]
            assert staging(out) == [] and not out.exists()  # what the stopped run wrote was discarded
        else:
            assert rec is not None and rec["status"] == "running" and rec.get("fanout") == "1", rec
            assert {m["headers"]["task"] for m in messages} == {"ckpt_convert.write_part"}
            assert {json.loads(base64.b64decode(m["body"]))[0][0] for m in messages} == {job_id}
    finally:
        v.stop()
    t = time.monotonic()
    s.start()
    job = s.wait(job_id, lambda j: j["status"] in FINISHED, timeout=90, what="job end after restart")
    took = time.monotonic() - t
    print(f"serve started again -> job succeeded {took:.1f} s later")
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    assert took < 60
    assert_bit_exact(s.src, out, shard)
    assert staging(out) == []


# --- Redis away ----------------------------------------------------------------------------------------------------


def test_job_lock_is_a_heartbeat_taken_again_after_an_outage_or_given_up_to_another_delivery(tmp_path):
    v = Valkey(tmp_path / "valkey")
    try:
        store, key = JobStore(v.url), "ckc:job:j1:lock"
        with job_lock(store, "j1", Settings(redis_url=v.url, lock_ttl=2), "w1") as lost:
            owner = store.r.get(key)
            assert owner.startswith("w1:") and 0 < store.r.ttl(key) <= 2
            store.r.delete(key)  # expired while Redis was away, and nobody took it: the run takes it again
            wait_until(lambda: store.r.get(key) == owner, timeout=5, what="lock taken again")
            store.r.set(key, "w2:other-delivery")  # another delivery took the job: this run stops
            wait_until(lost.is_set, timeout=5, what="lock lost")
            assert Outbox(store, "j1", lost=lost).should_cancel()
        assert store.r.get(key) == "w2:other-delivery"  # and leaves the other's lock alone
    finally:
        v.stop()


def staged_bytes(out: Path) -> int:
    return sum(f.stat().st_size for d in staging(out) for f in d.iterdir() if f.is_file())


def test_valkey_away_mid_job_does_not_slow_the_conversion(tmp_path):
    """The job's progress writes and cancel checks wait in a background thread while Valkey is stopped; the bytes
    keep flowing at the same rate, and the job ends right once Valkey is back."""
    rate = 4_000_000
    shape = MixtralShape(layers=4, experts=8, hidden=256, intermediate=1024, vocab=2048)
    src = write_mixtral_checkpoint(tmp_path / "src", shape)
    with Service(tmp_path, CKPT_CONVERT_MAX_BYTES_PER_SECOND=str(rate)) as svc:
        out = tmp_path / "out"
        body = {"source": str(src), "destination": {"local_path": str(out)}, "max_shard_size": "500MB"}
        job_id = svc.http.post("/convert", json=body).json()["id"]
        wait_until(lambda: staged_bytes(out) > 2_000_000, timeout=60, what="bytes written")

        def rate_over(seconds: float) -> float:
            b0, t0 = staged_bytes(out), time.monotonic()
            time.sleep(seconds)
            return (staged_bytes(out) - b0) / (time.monotonic() - t0)

        up = rate_over(2.0)
        svc.valkey.stop()
        try:
            down = rate_over(5.0)  # Valkey stopped for the middle of the job
        finally:
            svc.valkey.start()
        job = svc.wait(job_id, timeout=120)
        print(f"\nwrite rate with Valkey up {up / 1e6:.2f} MB/s, stopped {down / 1e6:.2f} MB/s (cap {rate / 1e6} MB/s); "
              f"job {job['result']['seconds'] if job.get('result') else '-'} s for {job['plan']['bytes_out'] / 1e6:.1f} MB")  # fmt: skip
        assert job["status"] == "succeeded", job
        assert down > 0.8 * up and up > 0.8 * rate
        assert job["result"]["seconds"] < 1.2 * job["plan"]["bytes_out"] / rate + 2
        p = plan(src, max_shard_size="500MB")
        assert verify(p, LocalSource(src), out).tensors == len(p.tensors)
