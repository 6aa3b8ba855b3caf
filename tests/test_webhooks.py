"""Completion webhooks (``notify`` in ``POST /convert``): signed deliveries checked by an independent receiver, retries
after a receiver's failures, and the guard that keeps the service from reaching internal hosts.

Only loopback is ever connected to. The guard's refusals are proven in this process with every socket connect
trapped (a test fails if one is attempted) and DNS answered by a stub (no lookup leaves the machine); the service
under test may reach 127.0.0.1 because its ``CKPT_CONVERT_WEBHOOK_ALLOW`` says so.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import os
import secrets
import socket
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from standardwebhooks import Webhook, WebhookVerificationError
from support.helpers import MIXTRAL_CONFIG, mixtral_tensors, write_checkpoint
from support.servers import Service, Valkey, descendants, free_port, wait_until

from converter.demo import MixtralShape, write_mixtral_checkpoint
from jobs.settings import Settings
from jobs.store import LEASES, JobStore, now
from jobs.webhooks import (
    Destination,
    WebhookDestinationError,
    attempt,
    message,
    on_end,
    sign,
    subscription,
    sweep,
    vet,
)

#: every webhook secret this module uses: none may show up in a log, a record, a response or the store's files
SECRETS: list[str] = []


def new_secret() -> str:
    s = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    SECRETS.append(s)
    return s


# --- a receiver that verifies every delivery with the standardwebhooks library ------------------------------------


class Receiver(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 recording each POST (path, headers, body); ``script[path]`` lists the statuses to
    answer in turn (the last one then stays), 200 by default; ``hang[path]``, an event, holds the next POST to that path
    (recorded first) until it is set."""

    daemon_threads = True

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], bytes]] = []
        self.script: dict[str, list[int]] = {}
        self.times: dict[str, list[float]] = {}  # path -> when each POST arrived (time.monotonic)
        self.hang: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def at(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for p, h, b in self.got if p == path]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with self.server.lock:
            self.server.got.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.server.times.setdefault(self.path, []).append(time.monotonic())
            script = self.server.script.get(self.path, [200])
            status = script.pop(0) if len(script) > 1 else script[0]
            gate = self.server.hang.pop(self.path, None)
        if gate is not None:
            gate.wait(60)
        self.send_response(status)
        if status in (301, 302, 307, 308):
            self.send_header("location", self.server.script.get("redirect-to", ["http://127.0.0.1:9/"])[0])
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def verified(secret: str, headers: dict[str, str], body: bytes) -> dict:
    """The payload, verified by the standardwebhooks library, and by hand from the spec (HMAC-SHA256 over
    ``id.timestamp.body`` with the base64-decoded secret) as a second, independent check."""
    payload = Webhook(secret).verify(body, headers)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    assert (
        headers["webhook-signature"] == "v1," + base64.b64encode(hmac.digest(key, signed, "sha256")).decode()
    )
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    return payload


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.shutdown()
    r.server_close()


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    env = {
        "CKPT_CONVERT_WEBHOOK_ALLOW": "127.0.0.1/32",
        "CKPT_CONVERT_WEBHOOK_ATTEMPTS": "4",
        "CKPT_CONVERT_WEBHOOK_RETRY_DELAY": "0.2",
        "CKPT_CONVERT_WEBHOOK_RETRY_MAX_DELAY": "0.5",
        "CKPT_CONVERT_WEBHOOK_TIMEOUT": "3",
        # a webhook whose worker died is sent again about 3 + 1 s after its attempt started, swept every 0.3 s
        "CKPT_CONVERT_WEBHOOK_LEASE_MARGIN": "1",
        "CKPT_CONVERT_WEBHOOK_SWEEP_INTERVAL": "0.3",
        "CKPT_CONVERT_MAX_BYTES_PER_SECOND": "20000000",
    }
    with Service(tmp_path_factory.mktemp("hooks"), **env) as s:
        yield s


@pytest.fixture(scope="module")
def small(svc):
    return write_checkpoint(svc.root / "small", mixtral_tensors(), config=MIXTRAL_CONFIG)


@pytest.fixture(scope="module")
def slow(svc):
    """About 55 MB: three seconds of work at the capped rate, so that a job can be cancelled while it runs."""
    shape = MixtralShape(layers=4, experts=8, hidden=256, intermediate=1024, vocab=4000)
    return write_mixtral_checkpoint(svc.root / "slow", shape, max_shard_bytes=20_000_000)


def submit(svc, source, out: str, url: str | None, secret: str | None = None, **kw) -> dict:
    body = {"source": str(source), "destination": {"local_path": str(svc.root / out)}, **kw}
    if url is not None:
        body["notify"] = {"url": url, "secret": secret or new_secret()}
    r = svc.http.post("/convert", json=body)
    assert r.status_code in (200, 202), r.text
    return r.json()


def deliveries(svc, job_id: str, settled: bool = True) -> list[dict]:
    """The job's webhooks once each is delivered or failed."""
    return wait_until(
        lambda: (
            (n := svc.job(job_id)["notify"]) and all(d["state"] in ("delivered", "failed") for d in n) and n
        ),
        timeout=30,
        what=f"webhooks of {job_id} settled",
    )


# --- end to end: a real worker, the API over HTTP, a receiver on loopback ------------------------------------------


def test_succeeded_job_is_delivered_once_signed_with_the_job_as_the_api_shows_it(svc, receiver, small):
    secret = new_secret()
    job = submit(svc, small, "ok-out", receiver.url + "/ok", secret)
    assert job["notify"] == [
        {"url": receiver.url + "/ok", "state": "waiting", "attempts": 0, "last_status": None, "last_error": None,
         "delivered_at": None}
    ]  # fmt: skip
    assert svc.wait(job["id"])["status"] == "succeeded"
    [d] = deliveries(svc, job["id"])
    assert d["state"] == "delivered" and d["attempts"] == 1 and d["last_status"] == 200 and d["delivered_at"]
    [(headers, body)] = receiver.at("/ok")
    payload = verified(secret, headers, body)
    final = svc.job(job["id"])
    assert payload["type"] == "job.succeeded" and payload["timestamp"] == final["finished_at"]
    assert payload["data"] == {k: v for k, v in final.items() if k != "notify"}  # the job as GET shows it
    assert headers["webhook-id"] == f"msg_{job['id']}_succeeded"
    assert headers["content-type"] == "application/json"
    time.sleep(1)
    assert len(receiver.at("/ok")) == 1  # once


def test_tampered_or_foreign_deliveries_fail_verification(svc, receiver, small):
    secret = new_secret()
    job = submit(svc, small, "tamper-out", receiver.url + "/tamper", secret)
    deliveries(svc, job["id"])
    [(headers, body)] = receiver.at("/tamper")
    verified(secret, headers, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b'"succeeded"', b'"failed"', 1), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": headers["webhook-id"] + "x"})
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_failed_job_is_notified_with_its_error(svc, receiver):
    t = mixtral_tensors()
    del t["model.layers.1.block_sparse_moe.experts.2.w1.weight"]
    src = write_checkpoint(svc.root / "broken", t, config=MIXTRAL_CONFIG)
    secret = new_secret()
    job = submit(svc, src, "broken-out", receiver.url + "/failed", secret)
    assert svc.wait(job["id"])["status"] == "failed"
    assert deliveries(svc, job["id"])[0]["state"] == "delivered"
    [(headers, body)] = receiver.at("/failed")
    payload = verified(secret, headers, body)
    assert payload["type"] == "job.failed" and payload["data"]["error"]["type"] == "MissingExpertError"
    assert headers["webhook-id"] == f"msg_{job['id']}_failed"


def test_cancelled_jobs_are_notified_queued_by_the_api_running_by_the_worker(svc, receiver, slow):
    s_running, s_queued = new_secret(), new_secret()
    running = submit(svc, slow, "cancel-running", receiver.url + "/cancel-running", s_running)
    queued = submit(svc, slow, "cancel-queued", receiver.url + "/cancel-queued", s_queued)
    wait_until(lambda: svc.job(running["id"])["status"] == "running", what="running")
    assert svc.job(queued["id"])["status"] == "queued"  # one worker, one job at a time
    assert svc.http.delete(f"/jobs/{queued['id']}").json()["status"] == "cancelled"  # ended by the API
    assert svc.http.delete(f"/jobs/{running['id']}").status_code == 202  # ended by its worker
    for job, path, secret in ((queued, "/cancel-queued", s_queued), (running, "/cancel-running", s_running)):
        assert svc.wait(job["id"])["status"] == "cancelled"
        assert deliveries(svc, job["id"])[0]["state"] == "delivered"
        [(headers, body)] = receiver.at(path)
        payload = verified(secret, headers, body)
        assert payload["type"] == "job.cancelled" and payload["data"]["id"] == job["id"]
        assert payload["data"]["error"]["type"] == "CancelledError"


def test_receiver_failing_twice_gets_the_third_attempt(svc, receiver, small):
    receiver.script["/flaky"] = [500, 500, 200]
    secret = new_secret()
    job = submit(svc, small, "flaky-out", receiver.url + "/flaky", secret)
    [d] = deliveries(svc, job["id"])
    assert (d["state"], d["attempts"], d["last_status"], d["last_error"]) == ("delivered", 3, 200, None)
    got = receiver.at("/flaky")
    assert len(got) == 3
    payloads = [verified(secret, h, b) for h, b in got]
    assert (
        len({h["webhook-id"] for h, _ in got}) == 1 and len({b for _, b in got}) == 1
    )  # a retry is the same
    assert payloads[0]["data"]["status"] == "succeeded"


def test_receiver_never_answering_2xx_exhausts_the_attempts_and_the_job_stays_as_it_ended(
    svc, receiver, small
):
    receiver.script["/down"] = [503]
    job = submit(svc, small, "down-out", receiver.url + "/down")
    [d] = deliveries(svc, job["id"])
    assert (d["state"], d["attempts"], d["last_status"], d["last_error"]) == ("failed", 4, 503, "HTTP 503")
    time.sleep(1.5)
    assert len(receiver.at("/down")) == 4  # CKPT_CONVERT_WEBHOOK_ATTEMPTS, no more
    # backoff: 0.2 s, then doubled, capped at 0.5 s (CKPT_CONVERT_WEBHOOK_RETRY_DELAY, _MAX_DELAY)
    t = receiver.times["/down"]
    gaps = [b - a for a, b in zip(t, t[1:], strict=False)]
    assert [round(g, 1) >= want for g, want in zip(gaps, (0.2, 0.4, 0.5), strict=True)] == [True] * 3, gaps
    final = svc.job(job["id"])
    assert final["status"] == "succeeded" and final["error"] is None


def test_unreachable_receiver_is_retried_then_given_up(svc, small):
    job = submit(svc, small, "refused-out", f"http://127.0.0.1:{free_port()}/nobody")
    [d] = deliveries(svc, job["id"])
    assert (d["state"], d["attempts"], d["last_status"]) == ("failed", 4, None)
    assert d["last_error"].startswith("ConnectError")


def test_duplicate_submissions_add_their_webhooks_to_the_one_job(svc, receiver, slow):
    a, b = new_secret(), new_secret()
    first = submit(svc, slow, "dup-out", receiver.url + "/dup-a", a)
    again = submit(
        svc, slow, "dup-out", receiver.url + "/dup-a", new_secret()
    )  # same URL: one webhook, first secret
    second = submit(svc, slow, "dup-out", receiver.url + "/dup-b", b)  # another URL: a second webhook
    assert first["id"] == again["id"] == second["id"]
    assert [d["url"] for d in second["notify"]] == [receiver.url + "/dup-a", receiver.url + "/dup-b"]
    assert svc.wait(first["id"])["status"] == "succeeded"
    assert [d["state"] for d in deliveries(svc, first["id"])] == ["delivered", "delivered"]
    [(ha, ba)], [(hb, bb)] = receiver.at("/dup-a"), receiver.at("/dup-b")
    assert verified(a, ha, ba) == verified(b, hb, bb)  # the same message to each, each signed with its secret
    # the job succeeded: the same request now gets it back finished, and its response is the news (no webhook)
    late = submit(svc, slow, "dup-out", receiver.url + "/dup-late")
    assert late["id"] == first["id"] and late["status"] == "succeeded"
    assert [d["url"] for d in late["notify"]] == [receiver.url + "/dup-a", receiver.url + "/dup-b"]
    time.sleep(1)
    assert receiver.at("/dup-late") == []


@pytest.mark.parametrize("kill", ["pool process", "whole worker"])
def test_worker_killed_during_the_attempt_the_webhook_is_still_delivered(svc, receiver, small, kill):
    """The first attempt (made inline by the task that ended the job) hangs at the receiver; the worker is SIGKILLed
    meanwhile, so nothing records the attempt or sends the next: the sweep of a worker (the surviving main process, or
    a new worker) takes the webhook over once its lease runs out and delivers it, with the same webhook-id."""
    path, gate, secret = f"/killed-{kill.split()[0]}", threading.Event(), new_secret()
    receiver.hang[path] = gate
    job = submit(svc, small, f"killed-{kill.split()[0]}-out", receiver.url + path, secret)
    wait_until(lambda: receiver.at(path), what="the first attempt")
    [d] = svc.job(job["id"])["notify"]
    assert (d["state"], d["attempts"]) == ("sending", 1)
    if kill == "whole worker":
        svc.restart_worker()  # SIGKILL of the worker and its pool, then a new worker
    else:
        pool = descendants(svc.worker.p.pid)
        assert pool
        for pid in pool:
            os.kill(pid, 9)
    killed = time.monotonic()
    try:
        [d] = deliveries(svc, job["id"])
    finally:
        gate.set()
    print(f"\n{kill} SIGKILLed mid-attempt -> delivered {time.monotonic() - killed:.1f} s later")
    assert (d["state"], d["attempts"], d["last_status"], d["last_error"]) == ("delivered", 2, 200, None)
    got = receiver.at(path)
    assert (
        len(got) == 2
    )  # at least once: the cut-short attempt reached the receiver, then the one that counted
    assert [verified(secret, h, b)["data"]["id"] for h, b in got] == [job["id"]] * 2
    assert (
        len({h["webhook-id"] for h, _ in got}) == 1 and got[0][1] == got[1][1]
    )  # the receiver drops the repeat
    sub = next(iter(svc.store.get(job["id"])["notify"]))
    assert svc.store.r.zscore(LEASES, f"{job['id']}\x1f{sub}") is None  # settled: out of the lease index
    time.sleep(1)
    assert len(receiver.at(path)) == 2 and svc.job(job["id"])["notify"][0]["state"] == "delivered"


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/hook",
        "http://192.168.1.10/hook",
        "http://172.16.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.2:8080/hook",  # loopback, but not the allowed 127.0.0.1/32
        "http://[::1]/hook",
        "http://0.0.0.0/hook",
        "http://[fd00::1]/hook",
        "http://user:pass@127.0.0.1/hook",
        "ftp://127.0.0.1/hook",
        "file:///etc/passwd",
    ],
)
def test_api_refuses_internal_destinations_before_creating_a_job(svc, small, url):
    before = svc.store.list_jobs(limit=1)[1]
    body = {"source": str(small), "destination": {"local_path": str(svc.root / "nope")}}
    r = svc.http.post("/convert", json={**body, "notify": {"url": url, "secret": new_secret()}})
    assert r.status_code == 422, r.text
    assert r.json()["detail"]["type"] == "WebhookDestinationError"
    assert svc.store.list_jobs(limit=1)[1] == before


def test_a_bad_secret_is_refused_without_being_quoted(svc, small):
    body = {"source": str(small), "destination": {"local_path": str(svc.root / "nope")}}
    for bad in ("not-whsec", "whsec_" + base64.b64encode(b"short").decode(), "whsec_!!!notbase64!!!"):
        SECRETS.append(bad)
        r = svc.http.post("/convert", json={**body, "notify": {"url": "http://127.0.0.1:9/", "secret": bad}})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "notify", "secret"], r.text
        assert bad not in r.text
    # nor does any other validation error of a request carrying a secret quote it
    r = svc.http.post("/convert", json={"source": str(small), "notify": {"url": 5, "secret": new_secret()}})
    assert r.status_code == 422 and SECRETS[-1] not in r.text and "**********" in r.text


def test_signature_matches_the_spec_example_and_the_library():
    """The Standard Webhooks spec's example (the one its reference libraries test with), and the library's own
    ``sign`` on a random message: the service signs from the spec, without the library."""
    body = b'{"test": 2432232314}'
    assert (
        sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    secret, at = new_secret(), datetime.now(UTC)
    rec = {"id": "0" * 32, "status": "succeeded", "model_type": "mixtral", "source": "/x", "created_at": now(),
           "finished_at": now(), "revision": "local"}  # fmt: skip
    body, headers = message(rec, secret, at)
    assert headers["webhook-signature"] == Webhook(secret).sign(headers["webhook-id"], at, body.decode())
    assert Webhook(secret).verify(body, headers)["type"] == "job.succeeded"


# --- the guard, in this process: refused before any connection, DNS answered by a stub -----------------------------

DNS = {
    "hooks.example": ["93.184.216.34"],
    "internal.example": ["10.1.2.3"],
    "mixed.example": ["93.184.216.34", "192.168.7.7"],  # one private address is enough to refuse
    "ula.example": ["fd12:3456::1"],
    "localhost": ["127.0.0.1", "::1"],
    "pinned.example": ["127.0.0.1"],
}


@pytest.fixture
def net(monkeypatch):
    """Every connect recorded and refused unless to 127.0.0.1 (``net.loopback_ok``), and a stub resolver: IP literals
    parsed without DNS, names from :data:`DNS` (counted), anything else unknown."""

    class Net:
        connects: list = []
        lookups: list[str] = []
        loopback_ok = False
        dns = dict(DNS)
        always: set = set()  # the test's own connections (the job store): allowed, not recorded

    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        try:
            return real_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        except socket.gaierror:
            pass
        Net.lookups.append(host)
        if host not in Net.dns:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in Net.dns[host]
        ]

    def connect(self, address):
        if tuple(address[:2]) in Net.always:
            return real_connect(self, address)
        Net.connects.append(address)
        if not (Net.loopback_ok and address[0] == "127.0.0.1"):
            raise AssertionError(f"a connection to {address} was attempted")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, a: connect(self, a))
    return Net


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/h",
        "http://192.168.0.1/h",
        "http://172.16.5.4/h",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://127.0.0.1/h",
        "http://127.1/h",  # short and numeric spellings of loopback
        "http://2130706433/h",
        "http://0x7f000001/h",
        "http://[::1]/h",
        "http://localhost/h",
        "http://0.0.0.0/h",
        "http://[::]/h",
        "http://[fd00::1]/h",  # IPv6 unique local
        "http://[fe80::1]/h",  # link-local
        "http://[::ffff:10.0.0.1]/h",  # IPv4-mapped
        "http://[64:ff9b::a00:1]/h",  # NAT64 to 10.0.0.1
        "http://[2002:c0a8:101::1]/h",  # 6to4 of 192.168.1.1
        "http://100.64.0.1/h",  # carrier-grade NAT
        "http://224.0.0.1/h",  # multicast
        "http://240.0.0.1/h",  # reserved
        "http://internal.example/h",  # a name resolving to a private address
        "http://ula.example/h",
        "http://mixed.example/h",
        "http://nowhere.example/h",  # does not resolve
        "http://user:pass@hooks.example/h",  # credentials
        "http://user@hooks.example/h",
        "ftp://hooks.example/h",  # other schemes
        "file:///etc/passwd",
        "gopher://hooks.example:70/_",
        "javascript:alert(1)",
        "hooks.example/h",
        "http:///h",
        "http://hooks.example:99999/h",
        "http://hooks.example/h h",
        "http://hooks.example/\r\nX-Injected: 1",
        "",
    ],
)
def test_guard_refuses_before_any_connection(net, url):
    with pytest.raises(WebhookDestinationError):
        vet(url, "")
    with pytest.raises(WebhookDestinationError):
        subscription(url, new_secret(), Settings(secret_key="k"))
    assert net.connects == []


def test_guard_passes_public_hosts_and_what_the_setting_allows(net):
    d = vet("https://hooks.example/h?x=1#frag", "")
    assert d == Destination("https", "hooks.example", 443, "/h?x=1", ipaddress.ip_address("93.184.216.34"))
    assert d.host_header == "hooks.example"
    assert vet("http://internal.example:8080/", "10.1.0.0/16").address == ipaddress.ip_address("10.1.2.3")
    assert vet("http://internal.example/", "internal.example").host == "internal.example"
    assert vet("http://[fd00::1]:9000/", "fd00::/8").host_header == "[fd00::1]:9000"
    with pytest.raises(WebhookDestinationError):
        vet("http://internal.example/", "10.2.0.0/16")
    with pytest.raises(WebhookDestinationError):
        vet("http://mixed.example/", "93.184.216.0/24")  # every address must pass
    with pytest.raises(ValueError):
        Settings(webhook_allow="10.0.0.0/8,not a host!")
    assert net.connects == []


@pytest.fixture
def store(svc, net):
    net.always.add(("127.0.0.1", svc.valkey.port))
    return JobStore(svc.valkey.url)


def ended_job(store: JobStore, url: str, secret: str, settings: Settings) -> tuple[str, str]:
    """A job with a webhook to ``url``, then succeeded, its webhook claimed: ready for :func:`attempt`."""
    job_id, _ = store.create(
        {"model_type": "mixtral", "source": "/x", "revision": "local", "destination": {}}
    )
    hook = subscription(url, secret, settings)
    assert store.subscribe(job_id, hook)
    assert store.transition(job_id, "queued", "succeeded", finished_at=now(), result={"output": "/x/out"})
    claimed = []
    on_end(store, job_id, lambda j, s, c: claimed.append(s), settings)
    return job_id, claimed[0]


def test_delivery_checks_dns_again_and_refuses_a_rebound_name_without_connecting(net, store):
    settings = Settings(secret_key="k", webhook_allow="127.0.0.1/32")
    job_id, sub = ended_job(store, "http://pinned.example:9/h", new_secret(), settings)
    net.dns["pinned.example"] = ["10.9.9.9"]  # the name now points inside
    assert attempt(store, job_id, sub, settings) is None  # given up: no retry
    [d] = store.get(job_id)["notify"].values()
    assert (d["state"], d["attempts"]) == ("failed", 1) and "10.9.9.9 is private" in d["last_error"]
    assert store.webhook_secret(job_id, sub) is None  # a settled delivery's secret is removed
    assert net.connects == []


def test_delivery_connects_to_the_address_it_vetted_and_follows_no_redirect(net, store, receiver):
    net.loopback_ok = True
    settings = Settings(secret_key="k", webhook_allow="127.0.0.1/32", webhook_retry_delay=7)
    port = receiver.server_address[1]
    secret = new_secret()
    job_id, sub = ended_job(store, f"http://pinned.example:{port}/pinned", secret, settings)
    receiver.script["/pinned"] = [302, 200]
    receiver.script["redirect-to"] = [f"http://127.0.0.1:{port}/elsewhere"]
    net.lookups.clear()
    assert attempt(store, job_id, sub, settings) == 7  # a redirect is a failure: tried again later
    [d] = store.get(job_id)["notify"].values()
    assert (d["state"], d["last_status"]) == ("sending", 302) and "redirects are not followed" in d[
        "last_error"
    ]
    assert receiver.at("/elsewhere") == []
    assert net.lookups == ["pinned.example"]  # resolved once per attempt: the connection went to that address
    assert store.webhook_secret(job_id, sub).startswith("gAAAA")  # sealed (Fernet) while it is needed
    assert attempt(store, job_id, sub, settings) is None
    [d] = store.get(job_id)["notify"].values()
    assert (d["state"], d["attempts"], d["last_status"]) == ("delivered", 2, 200)
    (h1, b1), (h2, b2) = receiver.at("/pinned")
    assert h1["host"] == h2["host"] == f"pinned.example:{port}"
    assert verified(secret, h2, b2)["data"]["id"] == job_id and b1 == b2
    assert {a[0] for a in net.connects} == {"127.0.0.1"}
    assert (
        attempt(store, job_id, sub, settings) is None and len(receiver.at("/pinned")) == 2
    )  # settled: no more


@pytest.fixture(scope="module")
def lone(tmp_path_factory):
    """A job store no worker sweeps: the sweeps here are this test's only."""
    v = Valkey(tmp_path_factory.mktemp("lone") / "valkey")
    yield v
    v.stop()


def race(store_url: str, settings: Settings, sweepers: int = 8) -> list[tuple[str, str, int]]:
    """``sweepers`` threads, each with its own connection, sweep at the same moment: what they sent."""
    sent: list[tuple[str, str, int]] = []
    stores = [JobStore(store_url) for _ in range(sweepers)]
    start = threading.Barrier(sweepers)

    def one(s: JobStore) -> None:
        start.wait()
        sweep(s, settings, lambda j, sub, c: sent.append((j, sub, c)))

    threads = [threading.Thread(target=one, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent


def test_an_overdue_webhook_is_taken_over_by_exactly_one_sweeper_and_an_older_claim_does_nothing(
    net, lone, receiver
):
    net.loopback_ok = True
    net.always.add(("127.0.0.1", lone.port))
    store = JobStore(lone.url)
    settings = Settings(secret_key="k", webhook_allow="127.0.0.1/32", webhook_timeout=0.3,
                        webhook_lease_margin=0.3)  # fmt: skip
    secret = new_secret()
    job_id, _ = store.create(
        {"model_type": "mixtral", "source": "/x", "revision": "local", "destination": {}}
    )
    assert store.subscribe(job_id, subscription(receiver.url + "/swept", secret, settings))
    assert store.transition(job_id, "queued", "succeeded", finished_at=now(), result={"output": "/x/out"})

    def broker_away(j: str, sub: str, claim: int) -> None:
        raise ConnectionError("broker away")

    on_end(store, job_id, broker_away, settings)  # claimed, its task never sent
    [(sub, d)] = store.get(job_id)["notify"].items()
    assert (d["state"], d["claim"], d["attempts"]) == ("sending", 1, 0)
    assert store.r.zscore(LEASES, f"{job_id}\x1f{sub}") == pytest.approx(d["lease_until"])
    assert race(lone.url, settings) == []  # not overdue yet
    time.sleep(0.7)
    for claim in (2, 3, 4):  # each time the lease runs out, one sweeper of eight takes it over
        assert race(lone.url, settings) == [(job_id, sub, claim)]
        assert store.get(job_id)["notify"][sub]["claim"] == claim
        assert race(lone.url, settings) == []
        time.sleep(0.7)
    assert store.reclaim(job_id, sub, now() + 60) == 5
    for stale in (None, 1, 4):  # the tasks of older claims do nothing (None: a task from before claims: any)
        if stale is not None:
            assert attempt(store, job_id, sub, settings, stale) is None
    assert receiver.at("/swept") == [] and store.get(job_id)["notify"][sub]["attempts"] == 0
    assert attempt(store, job_id, sub, settings, 5) is None  # the current claim delivers
    d = store.get(job_id)["notify"][sub]
    assert (d["state"], d["attempts"], d["last_status"]) == ("delivered", 1, 200) and "lease_until" not in d
    [(h, b)] = receiver.at("/swept")
    assert verified(secret, h, b)["data"]["id"] == job_id
    assert store.r.zscore(LEASES, f"{job_id}\x1f{sub}") is None and store.webhook_secret(job_id, sub) is None
    time.sleep(0.7)
    assert race(lone.url, settings) == []


def test_a_job_that_ended_without_its_on_end_has_its_webhooks_swept(net, lone, receiver):
    """The process that ended the job died before claiming its webhooks (or Redis was away then): the ending indexed
    them, due ``webhook_lease_margin`` later, and a sweep claims them."""
    net.always.add(("127.0.0.1", lone.port))
    settings = Settings(secret_key="k", webhook_allow="127.0.0.1/32", webhook_lease_margin=0.3)
    store = JobStore(lone.url, webhook_grace=settings.webhook_lease_margin)
    ids = []
    for end in ("transition", "cancel_abandoned"):
        job_id, _ = store.create(
            {"model_type": "mixtral", "source": "/x", "revision": "local", "destination": {}}
        )
        assert store.subscribe(job_id, subscription(receiver.url + f"/orphan-{end}", new_secret(), settings))
        assert store.subscribe(job_id, subscription(receiver.url + f"/orphan2-{end}", new_secret(), settings))
        if end == "transition":
            assert store.transition(job_id, "queued", "failed", finished_at=now())
        else:  # running, its worker gone (no lock): cancelled by the API
            assert store.transition(job_id, "queued", "running")
            assert store.cancel_abandoned(job_id, finished_at=now())
        ids.append(job_id)
    assert race(lone.url, settings) == []  # on_end may still be on its way
    time.sleep(0.4)
    sent = race(lone.url, settings)
    assert sorted((j, c) for j, _, c in sent) == sorted([(i, 1) for i in ids for _ in range(2)])
    for job_id in ids:
        assert [d["state"] for d in store.get(job_id)["notify"].values()] == ["sending", "sending"]
    on_end(store, ids[0], lambda *a: pytest.fail("claimed twice"), settings)  # a late on_end finds them taken


def test_the_retention_sweep_removes_a_deleted_jobs_leases(lone):
    store = JobStore(lone.url, retention=3600, webhook_grace=60)
    settings = Settings(secret_key="k", webhook_allow="127.0.0.1/32")
    job_id, _ = store.create(
        {"model_type": "mixtral", "source": "/x", "revision": "local", "destination": {}}
    )
    assert store.subscribe(job_id, subscription("http://127.0.0.1:9/gone", new_secret(), settings))
    assert store.transition(job_id, "queued", "succeeded", finished_at=now() - 7200)
    member = f"{job_id}\x1f{next(iter(store.get(job_id)['notify']))}"
    assert store.r.zscore(LEASES, member) is not None
    store.r.zadd("ckc:jobs", {job_id: now() - 7200})  # created long ago
    assert store.sweep() >= 1 and store.get(job_id) is None and store.r.zscore(LEASES, member) is None


# --- the secret stays secret ------------------------------------------------------------------------------------


def test_no_secret_in_records_responses_events_logs_or_the_stores_files(svc):
    """Runs last: every secret this module used, searched for everywhere the service writes."""
    assert len(SECRETS) > 10
    needles = [s.encode() for s in SECRETS] + [
        s.removeprefix("whsec_").encode() for s in SECRETS if len(s) > 20
    ]
    seen = [svc.http.get("/jobs", params={"limit": 500}).content]
    for job in svc.http.get("/jobs", params={"limit": 500}).json()["data"]:
        seen.append(svc.http.get(f"/jobs/{job['id']}").content)
        seen.append(svc.http.get(f"/jobs/{job['id']}/events", timeout=10).content if job["status"] in (
            "succeeded", "failed", "cancelled") else b"")  # fmt: skip
    r = svc.store.r
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        value = {"string": r.get, "hash": r.hgetall, "list": lambda k: r.lrange(k, 0, -1),
                 "stream": lambda k: r.xrange(k), "zset": lambda k: r.zrange(k, 0, -1)}.get(kind, lambda k: "")(key)  # fmt: skip
        seen.append(json.dumps(value, default=str).encode())
    r.bgrewriteaof()
    time.sleep(1)
    for folder, _, files in os.walk(svc.root):
        if "valkey" in folder or folder == str(svc.root):
            seen += [Path(folder, f).read_bytes() for f in files if not f.endswith(".safetensors")]
    blob = b"\n".join(seen)
    assert [n for n in needles if n in blob] == []


def test_readme_documents_webhooks():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Webhooks") :]
    section = section[: section.index("\n## ")]
    settings = [f"CKPT_CONVERT_{f.upper()}" for f in Settings.model_fields if f.startswith("webhook_")]
    assert len(settings) == 7
    for word in [
        *settings,
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "standardwebhooks",
        "notify",
    ]:
        assert word in section, word
