"""Who may do what, end to end (real Valkey, a real worker, the API over HTTP with CKPT_CONVERT_API_TOKENS set):
API tokens with scopes, job owners, job ids that reach other Redis keys, and what public endpoints reveal."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from pydantic import ValidationError
from support.servers import ROOT, Service, start_api, wait_until

from converter.demo import MixtralShape, write_mixtral_checkpoint
from jobs.settings import Settings

TOKENS = {
    "alice": "tok-alice-3f9a",  # submit
    "bob": "tok-bob-77c1",  # submit
    "viewer": "tok-viewer-a0b2",  # read
    "ops": "tok-ops-5d5e",  # admin
}
LEGACY = "legacy-plain-token-91"  # the old form: a plain token, admin
ENV_TOKENS = (
    f"alice:submit:{TOKENS['alice']}, bob:submit:{TOKENS['bob']},viewer:read:{TOKENS['viewer']},"
    f"ops:admin:{TOKENS['ops']},{LEGACY}"
)


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    env = {"CKPT_CONVERT_API_TOKENS": ENV_TOKENS, "CKPT_CONVERT_MAX_BYTES_PER_SECOND": "5000000"}
    with Service(tmp_path_factory.mktemp("scopes"), **env) as s:
        s.src = write_mixtral_checkpoint(
            s.root / "src", MixtralShape(layers=2, experts=4, hidden=256, intermediate=512, vocab=1024)
        )
        yield s


def client(svc, who: str | None) -> httpx.Client:
    token = LEGACY if who == "legacy" else TOKENS.get(who or "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=svc.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def as_(svc):
    clients = {who: client(svc, who) for who in (*TOKENS, "legacy", None)}
    yield clients
    for c in clients.values():
        c.close()


def body(svc, out: str, **kw) -> dict:
    return {"source": str(svc.src), "destination": {"local_path": str(svc.root / out)}, **kw}


def wait_done(c: httpx.Client, job_id: str) -> dict:
    return wait_until(lambda: (j := c.get(f"/jobs/{job_id}").json())["status"] in ("succeeded", "failed", "cancelled") and j,
                      timeout=120, what=f"job {job_id}")  # fmt: skip


def not_found(r: httpx.Response) -> bool:
    return r.status_code == 404 and r.json()["detail"]["type"] == "JobNotFoundError"


# --- a submit token sees and cancels its own jobs only ---------------------------------------------------------


def test_a_submit_token_cannot_see_or_cancel_another_tokens_job(svc, as_):
    alice, bob, viewer, ops = as_["alice"], as_["bob"], as_["viewer"], as_["ops"]
    r = alice.post("/convert", json=body(svc, "out-alice", max_shard_size="1MB"))
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["owner"] == "alice"
    jid = job["id"]
    # bob: the job does not exist, whichever way he asks
    assert not_found(bob.get(f"/jobs/{jid}"))
    assert not_found(bob.delete(f"/jobs/{jid}"))
    assert not_found(bob.get(f"/jobs/{jid}/events"))
    assert jid not in [j["id"] for j in bob.get("/jobs", params={"limit": 500}).json()["data"]]
    assert bob.get("/jobs").json()["count"] == 0
    # alice sees it, in her list too
    assert alice.get(f"/jobs/{jid}").json()["owner"] == "alice"
    mine = alice.get("/jobs", params={"limit": 500}).json()
    assert [j["id"] for j in mine["data"]] == [jid] and mine["count"] == 1
    # filters combine with it
    assert alice.get("/jobs", params={"model_type": "mixtral"}).json()["count"] == 1
    assert bob.get("/jobs", params={"model_type": "mixtral"}).json()["count"] == 0
    # read and admin tokens see everything
    assert viewer.get(f"/jobs/{jid}").status_code == 200
    assert jid in [j["id"] for j in viewer.get("/jobs").json()["data"]]
    assert ops.get(f"/jobs/{jid}").status_code == 200
    with viewer.stream("GET", f"/jobs/{jid}/events") as s:
        assert s.status_code == 200
    final = wait_done(alice, jid)
    assert final["status"] == "succeeded"
    # a finished job (cached by the API) is just as invisible to bob
    assert not_found(bob.get(f"/jobs/{jid}")) and alice.get(f"/jobs/{jid}").status_code == 200
    # the record keeps the token's name, never the token
    rec = svc.store.r.hgetall(f"ckc:job:{jid}")
    assert rec["owner"] == "alice" and not any(t in str(rec) for t in TOKENS.values())


def test_cancel_by_scope(svc, as_):
    alice, bob, viewer = as_["alice"], as_["bob"], as_["viewer"]
    slow = write_mixtral_checkpoint(
        svc.root / "slow", MixtralShape(layers=4, experts=8, hidden=256, intermediate=1024, vocab=1024)
    )
    jid = alice.post("/convert", json={**body(svc, "out-cancel"), "source": str(slow)}).json()["id"]
    r = viewer.delete(f"/jobs/{jid}")  # a read token cancels nothing
    assert r.status_code == 403 and r.json()["detail"]["type"] == "Forbidden"
    assert not_found(bob.delete(f"/jobs/{jid}"))  # another submit token: no such job
    assert alice.get(f"/jobs/{jid}").json()["status"] in ("queued", "running")
    assert alice.delete(f"/jobs/{jid}").status_code == 202  # its owner may
    assert wait_done(alice, jid)["status"] == "cancelled"
    # an admin cancels anyone's job; a plain (old-form) token is an admin
    for admin in ("ops", "legacy"):
        jid = alice.post("/convert", json={**body(svc, f"out-cancel-{admin}"), "source": str(slow)}).json()[
            "id"
        ]
        assert as_[admin].delete(f"/jobs/{jid}").status_code == 202
        assert wait_done(alice, jid)["status"] == "cancelled"


def test_submit_needs_a_submit_or_admin_token(svc, as_):
    r = as_["viewer"].post("/convert", json=body(svc, "out-viewer"))
    assert r.status_code == 403 and "read" in r.json()["detail"]["message"]
    ops = as_["ops"].post("/convert", json=body(svc, "out-ops"))
    assert ops.status_code == 202 and ops.json()["owner"] == "ops"
    legacy = as_["legacy"].post("/convert", json=body(svc, "out-legacy"))
    assert legacy.status_code == 202 and legacy.json()["owner"].startswith("token-")
    for r in (ops, legacy):
        wait_done(as_["ops"], r.json()["id"])


def test_a_duplicate_is_found_among_the_tokens_own_jobs_only(svc, as_):
    """The same normalised request (or Idempotency-Key) from another submit token is that token's own job: no
    token is handed a job it may not see."""
    alice, bob = as_["alice"], as_["bob"]
    a1 = alice.post("/convert", json=body(svc, "out-dup"))
    a2 = alice.post("/convert", json=body(svc, "out-dup"))
    assert (a1.status_code, a2.status_code) == (202, 200) and a1.json()["id"] == a2.json()["id"]
    # bob's same request is not alice's job: while hers writes the folder, his is refused (without naming hers)
    busy = bob.post("/convert", json=body(svc, "out-dup"))
    assert busy.status_code == 409 and busy.json()["detail"]["type"] == "DestinationBusyError", busy.text
    assert a1.json()["id"] not in busy.text
    b1 = bob.post("/convert", json=body(svc, "out-dup-bob"))
    assert b1.status_code == 202 and b1.json()["id"] != a1.json()["id"] and b1.json()["owner"] == "bob"
    key = {"Idempotency-Key": "ci-run-1"}
    ka = alice.post("/convert", json=body(svc, "out-key-a"), headers=key)
    kb = bob.post("/convert", json=body(svc, "out-key-b"), headers=key)  # same key, another body: not a 422
    assert (ka.status_code, kb.status_code) == (202, 202) and ka.json()["id"] != kb.json()["id"]
    assert alice.post("/convert", json=body(svc, "out-key-a"), headers=key).json()["id"] == ka.json()["id"]
    for c, r in ((alice, a1), (bob, b1), (alice, ka), (bob, kb)):
        wait_done(c, r.json()["id"])


def test_metrics_and_status(svc, as_):
    for who in TOKENS:  # /metrics as before: any valid token
        assert as_[who].get("/metrics").status_code == 200, who
    assert as_[None].get("/metrics").status_code == 401
    # the details behind readiness: admin only
    st = as_["ops"].get("/status")
    assert st.status_code == 200 and st.json()["workers"][0].startswith("w1@") and st.json()["ready"] is True
    assert as_["legacy"].get("/status").status_code == 200
    for who in ("alice", "viewer"):
        assert as_[who].get("/status").status_code == 403, who
    assert as_[None].get("/status").status_code == 401


# --- what public endpoints say ---------------------------------------------------------------------------------


def test_public_readyz_says_only_ok_or_not_ok(svc, as_):
    r = as_[None].get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert "w1@" not in r.text
    # no worker alive (another Redis database: no heartbeats there): 503, and still nothing else
    env = {**svc.env, "REDIS_URL": svc.valkey.url.rsplit("/", 1)[0] + "/1"}
    api, url = start_api(env, svc.root / "api-noworker.log")
    try:
        r = httpx.get(url + "/readyz")
        assert r.status_code == 503 and r.json() == {"status": "not ok"}
        st = httpx.get(url + "/status", headers={"Authorization": f"Bearer {TOKENS['ops']}"}).json()
        assert st["ready"] is False and st["workers"] == [] and st["redis"] == "ok"
    finally:
        api.stop()


# --- job ids that reach other keys -----------------------------------------------------------------------------


def test_job_ids_that_reach_other_keys_are_404_not_500(svc, as_):
    """``<id>:parts`` (a hash of a sharded job), ``<id>:events`` (a stream), ``<id>:cancel``, ``<id>:headers``...
    used to reach those keys (500, 503); a job id is 32 hex digits and anything else is 404 before Redis."""
    ops = as_["ops"]
    r = ops.post("/convert", json=body(svc, "out-sharded", max_shard_size="1MB"))
    jid = r.json()["id"]
    assert wait_done(ops, jid)["status"] == "succeeded"
    assert len(ops.get(f"/jobs/{jid}").json()["result"]["shards"]) > 1  # fanned out: it has a :parts hash
    assert svc.store.r.exists(f"ckc:job:{jid}:parts", f"ckc:job:{jid}:events") == 2
    svc.store.request_cancel(jid)  # and a :cancel string
    for suffix in (":parts", ":events", ":cancel", ":headers", ":lock", "%3Aparts"):
        for method, path in (("GET", f"/jobs/{jid}{suffix}"), ("DELETE", f"/jobs/{jid}{suffix}"),
                             ("GET", f"/jobs/{jid}{suffix}/events")):  # fmt: skip
            r = ops.request(method, path)
            assert not_found(r), (method, path, r.status_code, r.text)
    for bad in (jid.upper(), jid[:-1], jid + "0", "0" * 31 + "g", "*", "%2A", "%20" + jid):
        assert not_found(ops.get(f"/jobs/{bad}")), bad
        assert not_found(ops.get(f"/jobs/{bad}/events")), bad
    assert ops.get(f"/jobs/{jid}").status_code == 200  # the real one still answers


# --- configuration ---------------------------------------------------------------------------------------------


def test_token_entries():
    from jobs.settings import parse_api_tokens

    assert [(t.name, t.scope, t.token) for t in parse_api_tokens(ENV_TOKENS)][:4] == [
        (n, s, TOKENS[n])
        for n, s in (("alice", "submit"), ("bob", "submit"), ("viewer", "read"), ("ops", "admin"))
    ]
    legacy = parse_api_tokens(ENV_TOKENS)[4]
    assert legacy.scope == "admin" and legacy.token == LEGACY and legacy.name.startswith("token-")
    assert LEGACY not in repr(legacy)
    assert parse_api_tokens("ci:submit:a:b:c")[0].token == "a:b:c"  # the token is everything after the scope
    assert parse_api_tokens("a,b") and parse_api_tokens("") == []
    for bad in (
        "ci:write:s3cret-1",
        "ci:s3cret-2",
        "bad name:read:s3cret-3",
        "ci:read:",
        "x:read:t,y:read:t",
    ):
        with pytest.raises(ValidationError) as e:
            Settings(api_tokens=bad)
        assert "s3cret" not in str(e.value)  # a malformed entry never prints the tokens


def test_bind_beyond_loopback_needs_tokens():
    Settings(bind="127.0.0.1").check_bind()
    Settings(bind="::1").check_bind()
    Settings(bind="0.0.0.0", api_tokens="ops:admin:x").check_bind()
    for bind in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        with pytest.raises(RuntimeError, match="CKPT_CONVERT_API_TOKENS"):
            Settings(bind=bind).check_bind()


def test_the_api_refuses_to_start_on_all_interfaces_without_tokens(svc):
    env = {**svc.env, "CKPT_CONVERT_BIND": "0.0.0.0", "CKPT_CONVERT_API_TOKENS": ""}
    p = subprocess.run([sys.executable, "-c", "import service.app"], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert p.returncode != 0 and "CKPT_CONVERT_API_TOKENS" in p.stderr
