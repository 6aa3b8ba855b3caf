"""`ckpt-convert submit` as CI runs it: the real command in a subprocess against a real service (Valkey, a Celery
worker, the API over HTTP). Each exit code, `--json`, `--timeout`, Ctrl-C / SIGTERM (the job is cancelled) and
`--detach` (it is not), each checked against the job's final state in the API.

The worker caps write speed (CKPT_CONVERT_MAX_BYTES_PER_SECOND) so that the ~21 MB "slow" checkpoint runs for
about 4 s: long enough to interrupt; the tiny checkpoints finish at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.helpers import MIXTRAL_CONFIG, mixtral_tensors, write_checkpoint
from support.servers import ROOT, Service, free_port, start_api, wait_until

from converter.demo import MixtralShape, write_mixtral_checkpoint
from service.exit_codes import ENVIRONMENT, EXIT_CODES, Exit, markdown_table

RATE = 5_000_000
TOKEN = "ci-secret-token"


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    with Service(tmp_path_factory.mktemp("submitci"), CKPT_CONVERT_MAX_BYTES_PER_SECOND=str(RATE)) as s:
        yield s


@pytest.fixture(scope="module")
def tiny(svc) -> Path:
    return write_checkpoint(svc.root / "tiny", mixtral_tensors(), config=MIXTRAL_CONFIG)


@pytest.fixture(scope="module")
def slow(svc) -> Path:
    """About 21 MB: ~4 s at the capped rate."""
    shape = MixtralShape(layers=2, experts=4, hidden=256, intermediate=1024, vocab=8000)
    return write_mixtral_checkpoint(svc.root / "slow", shape)


@pytest.fixture(scope="module")
def auth_url(svc):
    """A second API process on the same Valkey and worker, requiring a bearer token."""
    api, url = start_api({**svc.env, "CKPT_CONVERT_API_TOKENS": TOKEN}, svc.root / "api-auth.log")
    yield url
    api.stop()


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPT_CONVERT_")}
    return {**env, **extra}


def command(url: str, source: Path, to: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "service.cli",
        "submit",
        str(source),
        "--to",
        str(to),
        "--server",
        url,
        *args,
    ]


def submit(url: str, source: Path, to: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(url, source, to, *args), env=cli_env(**env), cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


class Running:
    """`submit --wait` in the background; ``job_id`` is read from its first line on stderr."""

    def __init__(self, url: str, source: Path, to: Path, *args: str) -> None:
        self.p = subprocess.Popen(command(url, source, to, *args), env=cli_env(), cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert self.p.stderr is not None
        self.first_line = self.p.stderr.readline()
        assert self.first_line.startswith("job "), self.first_line + self.p.stderr.read()
        self.job_id = self.first_line.split()[1]

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        out, rest = self.p.communicate(timeout=timeout)
        return self.p.returncode, out, self.first_line + rest


def running(svc: Service, job_id: str) -> None:
    """Until the job is converting (bytes written), so that a cancel must stop a running task."""
    wait_until(lambda: (svc.job(job_id).get("progress") or {}).get("bytes_done", 0) > 0, timeout=30,
               what=f"job {job_id} converting")  # fmt: skip


def json_record(stdout: str) -> dict:
    """--json: stdout is exactly one JSON document, the job's record."""
    return json.loads(stdout)


# --- how a job ended ---------------------------------------------------------------------------------------------


def test_succeeded_json_and_unwrapped_messages(svc, tiny):
    # a destination path far longer than 80 columns: the success line must still hold it whole
    to = svc.root / ("a-destination-folder-with-a-long-name-" * 3) / "out"
    r = submit(svc.url, tiny, to, "--wait", "--json")
    assert r.returncode == Exit.SUCCEEDED, r.stderr
    job = json_record(r.stdout)
    assert job["status"] == "succeeded" and job["result"]["output"] == str(to)
    assert job == svc.job(job["id"])  # the API's GET /jobs/{id} body, nothing else on stdout
    lines = r.stderr.splitlines()
    assert f"{svc.url}/ui/jobs/{job['id']}" in lines[0]
    assert any(line.endswith(f"succeeded {to}") for line in lines), r.stderr
    assert "\x1b[" not in r.stderr  # no colour codes in a log
    assert (to / "config.json").exists()


def test_without_wait_prints_the_accepted_job(svc, tiny):
    r = submit(svc.url, tiny, svc.root / "nowait", "--json")
    assert r.returncode == Exit.SUCCEEDED, r.stderr
    job = json_record(r.stdout)
    assert job["status"] in ("queued", "running", "succeeded")
    assert svc.wait(job["id"])["status"] == "succeeded"
    # without --json stdout is the job id alone (the same request: the same job)
    r = submit(svc.url, tiny, svc.root / "nowait")
    assert (r.returncode, r.stdout) == (Exit.SUCCEEDED, job["id"] + "\n")


def test_failed(svc):
    t = mixtral_tensors()
    del t["model.layers.1.block_sparse_moe.experts.2.w1.weight"]
    src = write_checkpoint(svc.root / "broken", t, config=MIXTRAL_CONFIG)
    r = submit(svc.url, src, svc.root / "broken-out", "--wait", "--json")
    assert r.returncode == Exit.FAILED, r.stderr
    job = json_record(r.stdout)
    assert job["status"] == "failed" and job["error"]["type"] == "MissingExpertError"
    assert svc.job(job["id"])["status"] == "failed"
    assert "MissingExpertError" in r.stderr and not (svc.root / "broken-out").exists()


@pytest.mark.parametrize(
    "args,to,error",
    [
        (["--model-type", "mixtrall"], "{root}/o", "UnknownModelTypeError"),  # 404, with close names
        ([], "/etc/ckpt-out", "ForbiddenPathError"),  # 403, but not about the token
        (["--max-shard-size", "huge"], "{root}/o", "InvalidRequestError"),  # 422
    ],
)
def test_refused(svc, tiny, args, to, error):
    r = submit(svc.url, tiny, Path(to.replace("{root}", str(svc.root))), "--wait", "--json", *args)
    assert r.returncode == Exit.REFUSED, r.stderr
    assert r.stdout == ""  # no job, no record
    assert error in r.stderr


def test_bad_arguments_exit_like_a_refused_request(svc, tiny):
    r = submit(svc.url, tiny, svc.root / "o", "--timeout", "-5")
    assert r.returncode == Exit.REFUSED == 2 and "positive number of seconds" in r.stderr


def test_unauthorized(svc, tiny, auth_url):
    for env in ({}, {"CKPT_CONVERT_TOKEN": "wrong"}):
        r = submit(auth_url, tiny, svc.root / "auth-out", "--wait", "--json", **env)
        assert r.returncode == Exit.UNAUTHORIZED, (env, r.stderr)
        assert r.stdout == "" and ("401" if not env else "403") in r.stderr
    # the right token: through; a 403 that is not about the token stays "refused"
    r = submit(auth_url, tiny, Path("/etc/ckpt-out"), "--wait", CKPT_CONVERT_TOKEN=TOKEN)
    assert r.returncode == Exit.REFUSED and "ForbiddenPathError" in r.stderr, r.stderr
    r = submit(auth_url, tiny, svc.root / "auth-out", "--wait", "--json", CKPT_CONVERT_TOKEN=TOKEN)
    assert r.returncode == Exit.SUCCEEDED and json_record(r.stdout)["status"] == "succeeded", r.stderr


def test_unreachable(svc, tiny):
    r = submit(f"http://127.0.0.1:{free_port()}", tiny, svc.root / "nowhere", "--wait", "--json")
    assert r.returncode == Exit.UNREACHABLE, r.stderr
    assert r.stdout == "" and "cannot reach" in r.stderr


# --- stopping a job: someone else, --timeout, Ctrl-C, SIGTERM, --detach -------------------------------------------


def test_cancelled_through_the_api(svc, slow):
    run = Running(svc.url, slow, svc.root / "cancelled-out", "--wait", "--json")
    running(svc, run.job_id)
    assert svc.http.delete(f"/jobs/{run.job_id}").status_code == 202
    code, out, err = run.finish()
    assert code == Exit.CANCELLED, err
    assert json_record(out)["status"] == "cancelled" == svc.job(run.job_id)["status"]
    assert not (svc.root / "cancelled-out").exists()


def test_timeout_cancels_the_job(svc, slow):
    t0 = time.monotonic()
    r = submit(
        svc.url, slow, svc.root / "timeout-out", "--json", "--timeout", "1.5"
    )  # --timeout implies --wait
    assert r.returncode == Exit.TIMED_OUT, r.stderr
    assert time.monotonic() - t0 < 15
    job = json_record(r.stdout)
    assert job["status"] == "cancelled" == svc.job(job["id"])["status"]
    assert f"timed out after 1.5 s: cancelled job {job['id']}; nothing was published" in r.stderr
    assert not (svc.root / "timeout-out").exists()


def test_timeout_with_detach_leaves_the_job_running(svc, slow):
    r = submit(
        svc.url, slow, svc.root / "timeout-detach-out", "--wait", "--json", "--timeout", "1", "--detach"
    )
    assert r.returncode == Exit.TIMED_OUT, r.stderr
    job = json_record(r.stdout)
    assert job["status"] in ("queued", "running")
    assert f"left job {job['id']} running" in r.stderr and f"{svc.url}/ui/jobs/{job['id']}" in r.stderr
    assert svc.wait(job["id"], timeout=60)["status"] == "succeeded"
    assert (svc.root / "timeout-detach-out" / "config.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_signal_cancels_the_job(svc, slow, sig):
    out_dir = svc.root / f"signal-{sig.name}-out"
    run = Running(svc.url, slow, out_dir, "--wait", "--json")
    running(svc, run.job_id)
    run.p.send_signal(sig)
    code, out, err = run.finish()
    assert code == Exit.CANCELLED, err
    job = json_record(out)
    assert job["status"] == "cancelled" == svc.job(run.job_id)["status"]
    assert f"{sig.name} received: cancelled job {run.job_id}; nothing was published" in err
    time.sleep(0.5)  # nothing appears later either
    assert not out_dir.exists()


def test_signal_with_detach_leaves_the_job_running(svc, slow):
    out_dir = svc.root / "detach-out"
    run = Running(svc.url, slow, out_dir, "--wait", "--json", "--detach")
    running(svc, run.job_id)
    run.p.send_signal(signal.SIGTERM)
    code, out, err = run.finish()
    assert code == Exit.LEFT_RUNNING, err
    assert json_record(out)["status"] == "running"
    assert f"SIGTERM received: left job {run.job_id} running (running): {svc.url}/ui/jobs/{run.job_id}" in err
    assert svc.wait(run.job_id, timeout=60)["status"] == "succeeded"
    assert (out_dir / "config.json").exists()


# --- documentation: --help, README, the example workflow --------------------------------------------------------


def test_help_lists_environment_and_exit_codes():
    r = subprocess.run([sys.executable, "-m", "service.cli", "submit", "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)  # fmt: skip
    assert r.returncode == 0
    for name in ENVIRONMENT:
        assert name in r.stdout
    for code, what in EXIT_CODES.items():
        assert f"  {int(code)}  {code.label}: {what}" in r.stdout
    for flag in ("--json", "--timeout", "--detach", "--wait"):
        assert flag in r.stdout


def test_readme_documents_use_from_ci():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Use from CI") :]
    assert markdown_table() in section  # the same table as --help and the client
    for word in ("--json", "--timeout", "--detach", "SIGTERM", "examples/github-actions-convert.yml"):
        assert word in section


def test_example_workflow():
    wf = yaml.safe_load((ROOT / "examples" / "github-actions-convert.yml").read_text())
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    run = "\n".join(s.get("run", "") for s in steps)
    assert "ckpt-convert submit" in run
    for flag in ("--wait", "--json", "--timeout"):
        assert flag in run
    env = {k: v for s in steps for k, v in (s.get("env") or {}).items()}
    assert "secrets." in env["CKPT_CONVERT_TOKEN"] and "CKPT_CONVERT_SERVER" in env
    assert any("upload-artifact" in s.get("uses", "") for s in steps)


def test_wait_polls_when_the_server_has_no_room_for_another_stream(tmp_path):
    """With this client's share of event streams taken (429 + Retry-After), --wait follows the job by polling and
    still ends with the job's own exit code."""
    import threading

    import httpx

    env = {"CKPT_CONVERT_MAX_STREAMS_PER_CLIENT": "1", "CKPT_CONVERT_MAX_BYTES_PER_SECOND": "100000"}
    with Service(tmp_path, workers=("w1", "w2"), **env) as s:
        src = write_checkpoint(
            tmp_path / "src", mixtral_tensors(), config=MIXTRAL_CONFIG
        )  # ~0.1 s at the cap
        big = mixtral_tensors(layers=8, experts=8, hidden=64, inter=128)  # ~30 s: its stream stays open
        slow = write_checkpoint(tmp_path / "slow", big, config=MIXTRAL_CONFIG)
        held = s.http.post(
            "/convert", json={"source": str(slow), "destination": {"local_path": str(tmp_path / "a")}}
        )
        held_id = held.json()["id"]
        stop = threading.Event()

        def hold() -> None:  # this client's one stream, kept open
            with (
                httpx.Client(base_url=s.url, timeout=None) as c,
                c.stream("GET", f"/jobs/{held_id}/events") as r,
            ):
                for _ in r.iter_lines():
                    if stop.is_set():
                        return

        threading.Thread(target=hold, daemon=True).start()
        wait_until(lambda: s.http.get("/status").json()["streams"]["open"] == 1, what="the share used")
        r = submit(s.url, src, tmp_path / "b", "--wait", "--json", "--timeout", "120")
        stop.set()
        s.http.delete(f"/jobs/{held_id}")
        assert r.returncode == Exit.SUCCEEDED, r.stderr
        assert json.loads(r.stdout)["status"] == "succeeded"
