"""`ckpt-convert serve` on the embedded default (no REDIS_URL): Valkey + API + worker from one command;
`ckpt-convert submit --wait` runs a job through it; Ctrl-C stops all three; the jobs survive a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
from support.helpers import MIXTRAL_CONFIG, mixtral_tensors, read_tensors, write_checkpoint
from support.servers import alive, descendants, free_port, wait_until


def start_serve(tmp_path, port):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        {"CKPT_CONVERT_DATA_DIR": str(tmp_path / "data"), "CKPT_CONVERT_ALLOWED_LOCAL_ROOTS": str(tmp_path)}
    )
    log = open(tmp_path / f"serve-{port}.log", "ab")  # noqa: SIM115
    p = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env,
                         stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(url + "/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return p.poll() is not None

    wait_until(ready, timeout=90, what="serve ready")
    assert p.poll() is None, (tmp_path / f"serve-{port}.log").read_text()
    return p, url


def test_serve_submit_stop_restart(tmp_path):
    t = mixtral_tensors()
    src = write_checkpoint(tmp_path / "src", t, config=MIXTRAL_CONFIG)
    port = free_port()
    p, url = start_serve(tmp_path, port)
    procs = descendants(p.pid)
    assert len(procs) >= 3  # valkey, uvicorn, celery (and their workers)
    r = subprocess.run(
        [sys.executable, "-m", "service.cli", "submit", str(src), "--to", str(tmp_path / "out"), "--wait",
         "--server", url], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    assert "succeeded" in r.stderr
    assert read_tensors(tmp_path / "out")["model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 12, 8)
    # a request the service refuses: submit --wait exits 2 (refused) with the reason
    r = subprocess.run(
        [sys.executable, "-m", "service.cli", "submit", str(src), "--to", str(tmp_path / "out2"), "--model-type",
         "qwen2_moe", "--wait", "--server", url], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "disagrees with config.json" in r.stderr  # refused at submit time
    # Ctrl-C stops all three cleanly
    p.send_signal(signal.SIGINT)
    assert p.wait(60) == 0
    wait_until(lambda: not any(alive(x) for x in procs), timeout=30, what="children gone")
    # the jobs survive a restart (Valkey's append-only file in the data folder)
    p, url = start_serve(tmp_path, free_port())
    try:
        jobs = httpx.get(url + "/jobs").json()
        assert job_id in [j["id"] for j in jobs["data"]]
        assert httpx.get(f"{url}/jobs/{job_id}").json()["status"] == "succeeded"
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(60)
