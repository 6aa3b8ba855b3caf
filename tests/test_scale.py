"""One job across several workers: per-shard subtasks (a Celery chord) on two worker processes.

The workers' write rate is capped so that each subtask lasts a moment and both workers get some; the visibility
timeout is short so that a killed worker's subtask is delivered again within seconds.
"""

from __future__ import annotations

import time

import pytest
from support.helpers import assert_same_tensors, read_tensors
from support.servers import Service, wait_until

from converter import plan
from converter.demo import MixtralShape, write_mixtral_checkpoint
from converter.storage import LocalSource
from converter.verifier import verify


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Service(tmp_path_factory.mktemp("scale"), workers=("w1", "w2"), CKPT_CONVERT_MAX_BYTES_PER_SECOND="8000000",
                 CKPT_CONVERT_VISIBILITY_TIMEOUT="6", CKPT_CONVERT_LOCK_TTL="6") as c:  # fmt: skip
        yield c


def wait_job(c, job_id, timeout=120):
    return c.wait(job_id, timeout=timeout)


def test_one_job_spreads_over_two_workers_bit_exact(cluster):
    tm = pytest.importorskip("support.tiny_models")
    c = cluster
    src = c.root / "tiny"
    tm.save_published(tm.build_model("qwen3_moe"), src)
    body = {
        "source": str(src),
        "destination": {"local_path": str(c.root / "tiny_out")},
        "max_shard_size": "24KB",
    }
    job = wait_job(c, c.http.post("/convert", json=body).json()["id"])
    assert job["status"] == "succeeded", job
    shards = job["result"]["shards"]
    assert len(shards) >= 8
    subtasks = job["result"]["subtasks"]
    assert len(subtasks) == len(shards)
    assert {s["worker"].split("@")[0] for s in subtasks} == {"w1", "w2"}  # both workers wrote shards
    assert_same_tensors(read_tensors(c.root / "tiny_out"), tm.load_state_dict(src, "qwen3_moe"))
    assert job["progress"]["bytes_done"] == job["progress"]["bytes_total"] == job["plan"]["bytes_out"]


def test_killing_a_worker_mid_job_still_succeeds(cluster):
    c = cluster
    src = write_mixtral_checkpoint(
        c.root / "big", MixtralShape(layers=4, experts=8, hidden=256, intermediate=512, vocab=2048)
    )
    body = {
        "source": str(src),
        "destination": {"local_path": str(c.root / "big_out")},
        "max_shard_size": "4MB",
    }
    job_id = c.http.post("/convert", json=body).json()["id"]
    # kill w2 while it is writing a shard of this job
    wait_until(lambda: (c.http.get(f"/jobs/{job_id}").json().get("progress") or {}).get("bytes_done", 0) > 4_000_000,
               what="job under way")  # fmt: skip
    time.sleep(0.3)
    c.workers["w2"].kill()  # and not restarted until the job is done
    job = wait_job(c, job_id, timeout=180)
    assert job["status"] == "succeeded", job
    assert len(job["result"]["shards"]) >= 8
    p = plan(src, max_shard_size="4MB")
    assert verify(p, LocalSource(src), c.root / "big_out").tensors == len(p.tensors)  # every byte as planned
    leftovers = [x.name for x in c.root.iterdir() if x.name.startswith(".big_out")]
    assert leftovers == []
    c.restart_worker("w2")  # for later tests
