"""The service with Hub sources and destinations, end to end: the API and a Celery worker (real processes, real
Valkey) talk to the local Hub stand-in through the unmodified huggingface_hub client."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

pytest.importorskip("support.tiny_models")

from huggingface_hub import snapshot_download  # noqa: E402
from support.helpers import assert_same_tensors, read_tensors  # noqa: E402
from support.hubenv import isolated_hub, upload_tiny_mixtral  # noqa: E402
from support.servers import Service, wait_until  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
SRC = "org/tiny-mixtral"
PRIVATE = "org/private-mixtral"
SECRET = "hf_job_secret_token_5f1c"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubsvc")
    with isolated_hub(root) as hub:
        hub.want, hub.published = upload_tiny_mixtral(hub, SRC)
        upload_tiny_mixtral(hub, PRIVATE)
        hub.set_private(PRIVATE)
        hub.set_tokens(PRIVATE, [SECRET])
        with Service(root, HF_ENDPOINT=hub.endpoint, CKPT_CONVERT_LOCK_TTL="5") as e:
            e.hub = hub
            yield e


def run(e, body, headers=None, expect="succeeded"):
    r = e.http.post("/convert", json=body, headers=headers or {})
    assert r.status_code in (200, 202), r.text
    job = wait_until(
        lambda: (j := e.http.get(f"/jobs/{r.json()['id']}").json())["status"] in ("succeeded", "failed", "cancelled") and j,
        timeout=120, what="job end",
    )  # fmt: skip
    assert job["status"] == expect, job
    return job


def download(e, repo, revision="main", token=None):
    from pathlib import Path

    return Path(
        snapshot_download(
            repo, revision=revision, endpoint=e.hub.endpoint, cache_dir=e.root / "dl", token=token
        )
    )


def test_convert_job_publishes_one_commit(env):
    e = env
    e.hub.reset_requests()
    job = run(e, {"source": SRC, "destination": {"repo_id": "org/grouped"}, "max_shard_size": "150KB"})
    assert job["revision"] == "main" and len(job["source_sha"]) == 40
    assert job["result"]["output"].endswith(e.hub.commits("org/grouped")[0]["id"])
    assert len(e.hub.commits("org/grouped")) == 2  # the repo's initial commit, then ours
    assert_same_tensors(read_tensors(download(e, "org/grouped")), e.hub.want)
    # planning read only the headers: a few KB per source shard, no shard downloaded whole
    shard_gets = e.hub.requests(method="GET", path_regex=rf"^/{SRC}/resolve/.*\.safetensors$")
    sizes = {f: m["size"] for f, m in e.hub.files(SRC).items()}
    header_reads = [r for r in shard_gets if r["range"] and r["range"].startswith("bytes=0-")]
    assert header_reads and max(r["bytes_sent"] for r in header_reads) <= 4096
    assert all(r["range"] for r in shard_gets)  # streaming too: only range requests, never a whole-file GET
    assert (
        sum(r["bytes_sent"] for r in shard_gets)
        < sum(s for f, s in sizes.items() if f.endswith(".safetensors")) * 1.1
    )


def test_pull_request_job_and_idempotent_resubmission(env):
    e = env
    body = {"source": SRC, "destination": {"repo_id": SRC, "create_pr": True}}
    job = run(e, body)
    prs = e.hub.open_prs(SRC)
    assert len(prs) == 1 and job["result"]["output"].endswith(f"/discussions/{prs[0]['num']}")
    ref = f"refs/pr/{prs[0]['num']}"
    assert len(e.hub.commits(SRC, ref)) == len(e.hub.commits(SRC, "main")) + 1  # one commit on top of main
    assert_same_tensors(read_tensors(download(e, SRC, ref)), e.hub.want)
    again = e.http.post("/convert", json=body)
    assert again.status_code == 200 and again.json()["id"] == job["id"]


def test_failed_commit_leaves_destination_unchanged_and_retry_uploads_nothing_again(env):
    e = env
    dst = "org/retry-target"
    e.hub.api.create_repo(dst)
    before = e.hub.commits(dst)
    e.hub.add_fault(rf"/api/models/{dst}/commit/", method="POST", count=-1, status=500)
    body = {"source": SRC, "destination": {"repo_id": dst}, "max_shard_size": "100KB"}
    failed = run(e, body, expect="failed")
    assert failed["error"]["type"] == "HubError"
    assert e.hub.commits(dst) == before and set(e.hub.files(dst)) == {".gitattributes"}
    e.hub.clear_faults()
    uploads = e.hub.blob_uploads()
    e.hub.reset_requests()
    retried = run(e, body)  # the same request again: a new job, since the first one failed
    assert retried["id"] != failed["id"]
    assert e.hub.blob_uploads() == uploads and not e.hub.requests(method="PUT")  # every shard already there
    local = download(e, dst)
    assert_same_tensors(read_tensors(local), e.hub.want)
    for s in retried["result"]["shards"]:
        assert uploads[hashlib.sha256((local / s["file"]).read_bytes()).hexdigest()] == 1


def test_per_job_token_is_used_and_never_stored(env):
    e = env
    body = {"source": PRIVATE, "destination": {"repo_id": "org/private-grouped", "private": True}}
    # without the token the private repo is invisible: refused at submit time
    r = e.http.post("/convert", json=body)
    assert r.status_code == 404 and r.json()["detail"]["type"] == "RepoNotFoundError"
    job = run(e, body, headers={"X-HF-Token": SECRET})
    assert SECRET in e.hub.tokens_seen(rf"/{PRIVATE}/")
    assert_same_tensors(read_tensors(download(e, "org/private-grouped", token=SECRET)), e.hub.want)
    # the token is nowhere: Redis (every key and value), API responses, metrics, logs
    import redis

    r = redis.Redis.from_url(e.valkey.url)
    dump = []
    for key in r.scan_iter(count=1000):
        t = r.type(key).decode()
        dump.append(key)
        if t == "string":
            dump.append(r.get(key))
        elif t == "hash":
            dump.extend(v for kv in r.hgetall(key).items() for v in kv)
        elif t == "zset":
            dump.extend(m for m, _ in r.zrange(key, 0, -1, withscores=True))
        elif t == "stream":
            dump.extend(v for _, f in r.xrange(key) for kv in f.items() for v in kv)
        elif t == "list":
            dump.extend(r.lrange(key, 0, -1))
    blob = b"\n".join(x if isinstance(x, bytes) else str(x).encode() for x in dump)
    assert job["id"].encode() in blob and SECRET.encode() not in blob
    for path in ("/jobs", f"/jobs/{job['id']}", "/metrics", f"/jobs/{job['id']}/events"):
        assert SECRET not in e.http.get(path).text
    time.sleep(0.5)
    for log in ("w1.log", "api.log"):
        assert SECRET not in (e.root / log).read_text(errors="replace")


@pytest.mark.parametrize(
    "body,status,error",
    [
        ({"source": "org/does-not-exist", "destination": {"repo_id": "org/x"}}, 404, "RepoNotFoundError"),
        (
            {"source": SRC, "revision": "no-such-branch", "destination": {"repo_id": "org/x"}},
            404,
            "RevisionNotFoundError",
        ),
        ({"source": "org/gated-model", "destination": {"repo_id": "org/x"}}, 403, "GatedRepoError"),
    ],
)
def test_submit_time_hub_errors(env, body, status, error):
    e = env
    if body["source"] == "org/gated-model" and not e.hub.api.repo_exists("org/gated-model"):
        upload_tiny_mixtral(e.hub, "org/gated-model")
        e.hub.set_gated("org/gated-model")
    jobs_before = e.http.get("/jobs").json()["count"]
    r = e.http.post("/convert", json=body)
    assert r.status_code == status, r.text
    assert r.json()["detail"]["type"] == error
    assert e.http.get("/jobs").json()["count"] == jobs_before  # refused: no job recorded


def test_no_safetensors_fails_the_job_with_a_typed_error(env):
    e = env
    e.hub.api.create_repo("org/no-weights")
    e.hub.api.upload_file(
        repo_id="org/no-weights",
        path_in_repo="config.json",
        path_or_fileobj=json.dumps({"model_type": "mixtral"}).encode(),
    )
    job = run(e, {"source": "org/no-weights", "destination": {"repo_id": "org/x2"}}, expect="failed")
    assert (
        job["error"]["type"] == "CheckpointError"
        and "has no weights transformers can load" in job["error"]["message"]
    )
    assert not e.hub.api.repo_exists("org/x2")
