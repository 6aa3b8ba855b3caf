"""CORS (``CKPT_CONVERT_CORS_ORIGINS``) as a dashboard on another origin meets it: pages served from two other
origins (other ports of 127.0.0.1) call the API from a real headless Chromium (Debian's ``chromium``, driven by
Playwright). The API has tokens, so every call carries ``Authorization``: the browser preflights each one.

The allowed origin lists and filters jobs, reads ``/metrics``, submits a conversion (``POST`` with JSON), reads
the exposed ``Location`` header, follows the job's event stream, and sees the API's errors (401, 413) as
responses, not as network failures. A page of an origin not listed can do none of it, and its ``POST`` never
reaches the API. Skipped only when Playwright or a chromium binary is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from support.servers import Service, free_port, start_api

from converter.demo import write_mixtral_checkpoint
from jobs.settings import parse_cors_origins

try:
    from playwright import sync_api
except ImportError:  # the browser tests skip; the others run
    sync_api = None
CHROMIUM = os.environ.get("CKPT_CONVERT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "cors-dash-s3cret"
PAGE = b"<!doctype html><html><head><title>a dashboard</title></head><body>dashboard</body></html>"


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origins() -> Iterator[tuple[str, str]]:
    """Two web servers, each serving an empty page: the allowed origin and one that is not listed."""
    servers = [ThreadingHTTPServer(("127.0.0.1", free_port()), _Page) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    allowed, other = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    yield allowed, other
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture(scope="module")
def svc(tmp_path_factory, origins):
    allowed, _ = origins
    env = {
        "CKPT_CONVERT_API_TOKENS": f"dash:submit:{TOKEN}",
        # a second entry, in upper case and repeated: browsers send origins in lower case
        "CKPT_CONVERT_CORS_ORIGINS": f"{allowed}, HTTP://DASH.EXAMPLE.COM,{allowed}",
        "CKPT_CONVERT_MAX_BODY_BYTES": "20000",
    }
    with Service(tmp_path_factory.mktemp("cors"), **env) as s:
        s.http.headers["Authorization"] = f"Bearer {TOKEN}"
        s.small = write_mixtral_checkpoint(s.root / "small")
        yield s


@pytest.fixture(scope="module")
def browser():
    if sync_api is None:
        pytest.skip("playwright is not installed (pip install -e .[dev])")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


@pytest.fixture
def page_at(browser):
    """``page_at(origin)``: a fresh browser context with a page loaded from ``origin``."""
    contexts = []

    def open_page(origin: str):  # type: ignore[no-untyped-def]
        ctx = browser.new_context()
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(20_000)
        page.goto(origin + "/")
        assert page.evaluate("location.origin") == origin
        return page

    yield open_page
    for ctx in contexts:
        ctx.close()


#: fetch from the page: {status, headers (what the page may read), body} or {error} when the browser blocks it
CALL = """async ([url, init]) => {
  try {
    const r = await fetch(url, init);
    const headers = {};
    r.headers.forEach((v, k) => { headers[k] = v; });
    return {status: r.status, headers, body: await r.text()};
  } catch (e) {
    return {error: String(e)};
  }
}"""


def call(page, url: str, **init) -> dict:  # type: ignore[no-untyped-def]
    return page.evaluate(CALL, [url, init])


def auth(**more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", **more}


def test_allowed_origin_lists_submits_and_follows(svc, origins, page_at):
    allowed, _ = origins
    page = page_at(allowed)
    # GET with Authorization: preflighted (a header beyond the CORS-safelisted ones), then read
    r = call(page, f"{svc.url}/jobs?status=queued&status=running&include=plan", headers=auth())
    assert r.get("status") == 200 and '"count":' in r["body"], r  # readable: the answer allowed this origin
    r = call(page, f"{svc.url}/metrics", headers=auth())
    assert r.get("status") == 200 and "ckpt_convert_queue_depth" in r["body"], r

    # POST with JSON and Authorization (and an Idempotency-Key): the preflight allows the method and headers
    body = {"source": str(svc.small), "destination": {"local_path": str(svc.root / "out-cors")}}
    r = call(page, f"{svc.url}/convert", method="POST", body=json.dumps(body),
             headers=auth(**{"Content-Type": "application/json", "Idempotency-Key": "cors-1"}))  # fmt: skip
    assert r.get("status") == 202, r
    job = json.loads(r["body"])
    assert r["headers"]["location"].endswith(f"/jobs/{job['id']}")  # exposed to the page
    done = svc.wait(job["id"])
    assert done["status"] == "succeeded" and done["owner"] == "dash"
    assert (svc.root / "out-cors" / "model.safetensors").exists()

    # the job's event stream, read with fetch (EventSource cannot send a token): the history, then its end
    r = call(page, f"{svc.url}/jobs/{job['id']}/events", headers=auth())
    assert r.get("status") == 200 and r["headers"]["content-type"].startswith("text/event-stream"), r
    assert "event: end" in r["body"] and '"succeeded"' in r["body"]

    # the dashboard's table: the job, filtered by status, model type and source
    url = f"{svc.url}/jobs?status=succeeded&model_type=mixtral&source={svc.small}"
    r = call(page, url, headers=auth())
    assert r.get("status") == 200 and job["id"] in r["body"] and '"count":1' in r["body"].replace(" ", ""), r


def test_allowed_origin_sees_errors_as_responses(svc, origins, page_at):
    """A dashboard must tell "wrong token" or "too large" from "API unreachable": the error answers carry the CORS
    headers too, so the page reads them (a page reads no ``Access-Control-*`` header itself: being able to read the
    answer at all is the proof)."""
    allowed, _ = origins
    page = page_at(allowed)
    r = call(page, f"{svc.url}/jobs", headers={"Authorization": "Bearer wrong"})
    assert r.get("status") == 403 and "invalid token" in r["body"], r
    r = call(page, f"{svc.url}/jobs")  # no token: a simple request, no preflight
    assert r.get("status") == 401, r
    r = call(page, f"{svc.url}/jobs?sice=2026-01-01", headers=auth())
    assert r.get("status") == 422 and '"unknown":["sice"]' in r["body"].replace(" ", ""), r
    # over CKPT_CONVERT_MAX_BODY_BYTES: refused by the body size limit, which the CORS middleware wraps
    big = json.dumps({"source": "x" * 30_000, "destination": {"local_path": "/nope"}})
    r = call(page, f"{svc.url}/convert", method="POST", body=big,
             headers=auth(**{"Content-Type": "application/json"}))  # fmt: skip
    assert r.get("status") == 413, r
    # a header the API does not allow: the browser refuses after the preflight, nothing is sent
    r = call(page, f"{svc.url}/jobs", headers=auth(**{"X-Debug": "1"}))
    assert "error" in r and "Failed to fetch" in r["error"], r


def test_other_origin_is_blocked(svc, origins, page_at):
    _, other = origins
    page = page_at(other)
    before = svc.http.get("/jobs").json()["count"]
    # with a token (preflighted), without one (a simple request: sent, but the page may not read the answer)
    for init in ({"headers": auth()}, {}):
        for path in ("/jobs", "/metrics", "/healthz"):
            r = call(page, svc.url + path, **init)
            assert "error" in r and "Failed to fetch" in r["error"], (path, init, r)
    body = {"source": str(svc.small), "destination": {"local_path": str(svc.root / "out-other")}}
    r = call(page, f"{svc.url}/convert", method="POST", body=json.dumps(body),
             headers=auth(**{"Content-Type": "application/json"}))  # fmt: skip
    assert "error" in r and "Failed to fetch" in r["error"], r
    # the preflight failed, so the POST itself was never sent: no job, no output
    assert svc.http.get("/jobs").json()["count"] == before
    assert not (svc.root / "out-other").exists()


def test_preflight_answers(svc, origins):
    """What the browser got, seen from outside: the allowed origin's preflight names the methods and headers;
    another origin's is refused and names no origin."""
    allowed, other = origins
    ask = {"Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type,idempotency-key"}  # fmt: skip
    r = httpx.options(f"{svc.url}/convert", headers={"Origin": allowed, **ask})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == allowed
    assert {"POST", "DELETE"} <= {m.strip() for m in r.headers["access-control-allow-methods"].split(",")}
    allowed_headers = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key", "last-event-id"} <= allowed_headers
    assert "access-control-allow-credentials" not in r.headers  # tokens are headers, not cookies
    assert r.headers["vary"].lower().count("origin") == 1
    r = httpx.options(f"{svc.url}/convert", headers={"Origin": "http://dash.example.com", **ask})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://dash.example.com"
    r = httpx.options(f"{svc.url}/convert", headers={"Origin": other, **ask})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = httpx.get(f"{svc.url}/healthz", headers={"Origin": other})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_without_the_setting_no_cors_headers(svc, origins):
    allowed, _ = origins
    env = {k: v for k, v in svc.env.items() if k != "CKPT_CONVERT_CORS_ORIGINS"}
    api, url = start_api(env, svc.root / "api-no-cors.log")
    try:
        r = httpx.options(
            f"{url}/convert", headers={"Origin": allowed, "Access-Control-Request-Method": "POST"}
        )
        assert r.status_code == 405 and "access-control-allow-origin" not in r.headers
        r = httpx.get(f"{url}/healthz", headers={"Origin": allowed})
        assert r.status_code == 200 and not any(h.startswith("access-control-") for h in r.headers)
    finally:
        api.stop()


@pytest.mark.parametrize(
    "value",
    [
        "*",
        "https://dash.example.com/",
        "https://dash.example.com/path",
        "dash.example.com",
        "https://*.example.com",
        "ftp://dash.example.com",
        "https://dash.example.com:99999x",
    ],
)
def test_origins_must_be_exact(value):
    with pytest.raises(ValueError, match="CKPT_CONVERT_CORS_ORIGINS"):
        parse_cors_origins(value)


def test_origins_parse():
    assert parse_cors_origins(
        " https://Dash.Example.com , http://127.0.0.1:3000,,https://dash.example.com"
    ) == [
        "https://dash.example.com",
        "http://127.0.0.1:3000",
    ]
    assert parse_cors_origins("") == []


def test_a_wildcard_stops_the_api_at_start(svc, tmp_path):
    env = {**svc.env, "CKPT_CONVERT_CORS_ORIGINS": "*"}
    with pytest.raises(AssertionError):
        start_api(env, tmp_path / "api-star.log")
    assert "CKPT_CONVERT_CORS_ORIGINS" in (tmp_path / "api-star.log").read_text()
