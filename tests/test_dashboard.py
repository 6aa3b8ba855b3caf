"""The web dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright) against the API, a
real worker and Valkey, as a person would use it: submit through the form, watch the progress bar, open the job,
browse the rules and preview names; the token prompt; cancelling from the table; polling when the stream fails.

Screenshots (desktop 1280x800 and phone 390x844) go to ``test-artifacts/screenshots/`` at the repo root.
Skipped only when Playwright or a chromium binary is missing (CI installs both: ``apt-get install chromium``,
``pip install -e .[dev]``).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest
from support.servers import ROOT, Service, start_api, wait_until

from converter import __version__
from converter.demo import MixtralShape, write_mixtral_checkpoint

try:
    from playwright import sync_api
except ImportError:  # the browser tests skip; the others run
    sync_api = None
CHROMIUM = os.environ.get("CKPT_CONVERT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

RATE = 50_000_000  # bytes/s per job: the ~199 MB checkpoint takes about 4 s, long enough to watch
SHOTS = ROOT / "test-artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TOKEN = "dash-s3cret"


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    with Service(root, CKPT_CONVERT_MAX_BYTES_PER_SECOND=str(RATE)) as s:
        s.big = write_mixtral_checkpoint(
            root / "big", MixtralShape(layers=4, experts=8, hidden=512, intermediate=1792, vocab=8000),
            max_shard_bytes=60_000_000,
        )  # fmt: skip
        s.small = write_mixtral_checkpoint(root / "small")
        yield s


@pytest.fixture(scope="module")
def browser():
    if sync_api is None:
        pytest.skip("playwright is not installed (pip install -e .[dev])")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


class Page:
    """A browser page that fails the test on any JavaScript error or console error but the ``expected`` ones
    (Chromium logs every non-2xx answer as "Failed to load resource: ... status of 404")."""

    def __init__(self, browser, viewport, expected=()):
        self.expected = expected
        self.ctx = browser.new_context(viewport=viewport)
        self.page = self.ctx.new_page()
        self.page.set_default_timeout(20_000)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))

    def __enter__(self):
        return self.page

    def __exit__(self, *exc):
        self.ctx.close()
        if exc[0] is None:
            real = [e for e in self.errors if not any(a in e for a in self.expected)]
            assert not real, real


def shot(page, name):
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def no_horizontal_scroll(page):
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"page is {width}px wide at {page.viewport_size['width']}px"


def watch_progress(page, timeout=30.0):
    """The job page's progress bar until the job is finished: the values it showed, in order."""
    bar = page.locator("#job-progress [role=progressbar]")
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = int(bar.get_attribute("aria-valuenow") or 0)
        if not seen or seen[-1] != v:
            seen.append(v)
        if page.locator("#job-status").text_content() in ("succeeded", "failed", "cancelled"):
            return seen + [int(bar.get_attribute("aria-valuenow") or 0)]
        time.sleep(0.05)
    raise AssertionError(f"job not finished after {timeout}s; progress seen {seen}")


# --- the acceptance flow -------------------------------------------------------------------------------------------


def test_submit_watch_job_rules_preview(svc, browser):
    out = svc.root / "out-form"
    with Page(browser, DESKTOP, expected=["status of 404"]) as page:  # the unknown model_type
        page.goto(svc.url + "/")
        assert page.locator("h1").text_content() == "Jobs"
        page.get_by_role("link", name="New conversion").first.click()
        page.wait_for_url("**/ui/new")

        # a typo in model_type: the API's UnknownModelTypeError shows next to the field, with its suggestions
        page.get_by_label("Source").fill(str(svc.big))
        page.get_by_label("Model type").fill("mixtrall")
        page.get_by_label("Output folder (absolute path)").fill(str(out))
        page.get_by_role("button", name="Start conversion").click()
        err = page.locator("#model_type-error")
        err.wait_for(state="visible")
        assert "no conversion rules for model_type 'mixtrall'" in err.text_content()
        assert page.get_by_label("Model type").get_attribute("aria-invalid") == "true"
        assert page.evaluate("document.activeElement.id") == "model_type"  # focus moved to the field
        shot(page, "desktop-submit-error")
        err.get_by_role("button", name="mixtral", exact=True).click()
        assert page.get_by_label("Model type").input_value() == "mixtral"

        page.get_by_role("button", name="Start conversion").click()
        page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f]{32}$"))
        job_id = page.url.rsplit("/", 1)[1]
        assert job_id in page.locator("h1").text_content()

        # the progress bar moves while the worker converts, reaches 100%, and the status turns succeeded
        page.locator("#job-status", has_text="running").wait_for()
        page.wait_for_function(
            "() => +document.querySelector('#job-progress [role=progressbar]').getAttribute('aria-valuenow') >= 20"
        )
        shot(page, "desktop-job-running")
        seen = watch_progress(page)
        assert page.locator("#job-status").text_content() == "succeeded"
        assert seen[-1] == 100 and seen == sorted(seen), seen
        assert len([v for v in seen if 0 < v < 100]) >= 3, f"the bar did not visibly move: {seen}"
        page.locator("#job-progress .progress-text", has_text="100%").wait_for()

        job = svc.http.get(f"/jobs/{job_id}").json()
        assert job["status"] == "succeeded" and job["model_type"] == "mixtral"
        assert job["result"]["output"] == str(out) and (out / "model.safetensors").exists()
        assert job["progress"]["bytes_done"] == job["progress"]["bytes_total"] > 150_000_000

        # the jobs table: the job, succeeded, its bar at 100%
        page.get_by_role("link", name="All jobs").click()
        row = page.locator(f"tr[data-job-id='{job_id}']")
        row.locator(".badge", has_text="succeeded").wait_for()
        assert row.locator("[role=progressbar]").get_attribute("aria-valuenow") == "100"
        assert str(svc.big) in row.text_content() and "mixtral" in row.text_content()
        page.select_option("#f-status", "failed")  # filter: the job disappears, then comes back
        row.wait_for(state="detached")
        page.get_by_role("button", name="Clear").click()
        row.wait_for()
        shot(page, "desktop-jobs")

        # the job page: phases, plan, rules and the result
        row.locator("a.job-link").click()
        page.wait_for_url(f"**/ui/jobs/{job_id}")
        page.locator("#job-outcome").get_by_text(str(out)).wait_for()
        phases = page.locator("#job-phases").text_content()
        assert all(p in phases for p in ("resolving", "planning", "converting", "publishing"))
        plan = page.locator("#job-plan").text_content()
        assert "127 in → 39 out" in plan and "4 in → 1 out" in plan
        rules = page.locator("#job-rules").text_content()
        assert "stack experts on dim 0, then concatenate w1 and w3 on dim 1" in rules
        assert "changed this checkpoint's names" in rules  # the rules that applied, not the whole set
        assert "LayerNorm.gamma" not in rules  # a legacy rename that matched nothing here
        shot(page, "desktop-job")

        # the rules browser: search, open mixtral, its rules both ways in words, and a name preview
        page.get_by_role("link", name="Rules", exact=True).click()
        page.get_by_label("Search model types").fill("mixt")
        # the list holds every model type transformers knows: wait for the filter to apply
        wait_until(lambda: page.locator("#rules-table tbody tr").count() < 10, timeout=20, what="the filter")
        page.get_by_role("link", name="mixtral", exact=True).wait_for()
        page.get_by_role("link", name="mixtral", exact=True).click()
        page.wait_for_url("**/ui/rules/mixtral")
        fwd = page.locator("#rules-forward")
        fwd.get_by_text("stack experts on dim 0, then concatenate w1 and w3 on dim 1").wait_for()
        assert "experts.*.w1.weight" in fwd.text_content() and "experts.gate_up_proj" in fwd.text_content()
        rev = page.locator("#rules-reverse").text_content()
        assert "split dim 1 into w1 and w3, then split dim 0 into one tensor per expert" in rev
        page.get_by_label("Tensor names, one per line").fill(
            "model.layers.0.block_sparse_moe.experts.3.w1.weight\nmodel.layers.0.block_sparse_moe.gate.weight\n"
            "lm_head.weight"
        )
        page.get_by_role("button", name="Preview").click()
        result = page.locator("#preview-result tbody tr")
        result.first.wait_for()
        assert result.count() == 3
        assert (
            result.nth(0).locator(".preview-target").text_content()
            == "model.layers.0.mlp.experts.gate_up_proj"
        )
        assert "convert" in result.nth(0).text_content()
        assert result.nth(1).locator(".preview-target").text_content() == "model.layers.0.mlp.gate.weight"
        assert "rename" in result.nth(1).text_content() and "copy" in result.nth(2).text_content()
        shot(page, "desktop-rules")

    # the same pages on a phone: no horizontal scrolling, everything reachable
    with Page(browser, PHONE, expected=["status of 403"]) as page:  # the source outside the allowed roots
        page.goto(svc.url + "/")
        page.locator(f"tr[data-job-id='{job_id}'] .badge", has_text="succeeded").wait_for()
        no_horizontal_scroll(page)
        shot(page, "phone-jobs")
        page.goto(f"{svc.url}/ui/jobs/{job_id}")
        page.locator("#job-outcome").get_by_text(str(out)).wait_for()
        no_horizontal_scroll(page)
        shot(page, "phone-job")
        page.goto(svc.url + "/ui/rules/mixtral")
        page.get_by_label("Tensor names, one per line").fill(
            "model.layers.1.block_sparse_moe.experts.7.w2.weight"
        )
        page.get_by_role("button", name="Preview").click()
        page.locator(".preview-target", has_text="model.layers.1.mlp.experts.down_proj").wait_for()
        no_horizontal_scroll(page)
        shot(page, "phone-rules")
        # keyboard only: type into the labelled fields, submit with Enter; a local path outside the allowed roots
        # is refused (403) and the message shows next to the source field
        page.goto(svc.url + "/ui/new")
        page.get_by_label("Source").focus()
        page.keyboard.type("/etc")
        page.get_by_label("Output folder (absolute path)").focus()
        page.keyboard.type(str(svc.root / "never"))
        page.keyboard.press("Enter")
        page.locator("#source-error", has_text="outside the allowed local roots").wait_for()
        assert page.evaluate("document.activeElement.id") == "source"
        no_horizontal_scroll(page)
        shot(page, "phone-submit-error")


def test_rules_json_describes_ops_in_words(svc):
    conv = [r for r in svc.http.get("/rules/mixtral").json()["rules"] if r["kind"] == "convert"]
    assert conv[0]["ops_described"] == ["stack experts on dim 0", "concatenate w1 and w3 on dim 1"]
    assert conv[0]["describe"] == "stack experts on dim 0, then concatenate w1 and w3 on dim 1"
    assert [o["op"] for o in conv[0]["ops"]] == ["stack", "concat"]  # the ops themselves are unchanged
    rev = svc.http.get("/rules/qwen3_moe", params={"direction": "reverse"}).json()["rules"]
    assert (
        rev[0]["describe"]
        == "split dim 1 into gate_proj and up_proj, then split dim 0 into one tensor per expert"
    )


def test_script_modules_are_served(svc):
    """The pages load one module script, js/main.js; it and every module it imports (statically or on demand) come
    from this server with status 200 as JavaScript, and they are all the modules there are. No inline script or
    eval (the CSP allows neither); the old single app.js is gone."""
    page = svc.http.get("/ui/new").text
    assert re.findall(r"<script[^>]*>", page) == [
        f'<script type="module" src="/ui/static/js/main.js?v={__version__}">'
    ]
    seen: set[str] = set()
    todo = ["main.js"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        r = svc.http.get(f"/ui/static/js/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].split(";")[0] == "text/javascript", (name, r.headers["content-type"])
        assert r.headers["cache-control"] == "no-cache", name  # revalidated: never a mix of two versions
        assert not re.search(r"\beval\(|new Function\(", r.text), name
        seen.add(name)
        todo += re.findall(r'(?:\bfrom|\bimport\()\s*"\./([\w-]+\.js)"', r.text)
    pages = {f"page-{p}.js" for p in ("jobs", "job", "rules", "rule", "new")}
    assert {"main.js", "api.js", "dom.js", "rules-table.js"} | pages <= seen
    assert seen == {f.name for f in (ROOT / "service" / "web" / "static" / "js").glob("*.js")}
    assert svc.http.get("/ui/static/app.js").status_code == 404
    assert not (ROOT / "service" / "web" / "static" / "app.js").exists()


def test_keyboard_order_and_labels(svc, browser):
    with Page(browser, DESKTOP) as page:
        page.goto(svc.url + "/ui/new")
        page.get_by_label("Source").wait_for()
        order = []
        for _ in range(9):
            page.keyboard.press("Tab")
            order.append(page.evaluate("(e => e.id || e.textContent.trim())(document.activeElement)"))
        assert order[:6] == ["Skip to content", "ckpt-convert", "Jobs", "New conversion", "Rules", "API docs"]
        assert order[6:] == ["source", "revision", "model_type"]
        # client-side checks name the empty required fields
        page.get_by_role("button", name="Start conversion").click()
        assert page.locator("#source-error").text_content() == "Enter a Hub repo id or an absolute folder."
        assert page.locator("#destination-error").text_content() == "Enter an output folder."
        # the Hub destination relabels the field and shows its options
        page.get_by_label("Hub repo", exact=True).check()
        page.get_by_label("Hub repo id (org/name)").wait_for()
        assert page.get_by_label("Open a pull request").is_visible()


def test_cancel_from_the_jobs_table(svc, browser):
    job = svc.http.post(
        "/convert", json={"source": str(svc.big), "max_shard_size": "70MB",
                          "destination": {"local_path": str(svc.root / "out-cancel")}},
    ).json()  # fmt: skip
    with Page(browser, DESKTOP) as page:
        page.goto(svc.url + "/")
        row = page.locator(f"tr[data-job-id='{job['id']}']")
        row.locator(".badge", has_text="running").wait_for()
        # the row's bar moves without a reload (the event stream), then the job is cancelled from the table
        bar = row.locator("[role=progressbar]")
        first = int(bar.get_attribute("aria-valuenow"))
        page.wait_for_function(
            f"() => +document.querySelector(\"tr[data-job-id='{job['id']}'] [role=progressbar]\")"
            f".getAttribute('aria-valuenow') >= {max(first, 10) + 10}"
        )
        shot(page, "desktop-jobs-running")
        row.get_by_role("button", name=f"Cancel job {job['id'][:8]}").click()
        row.locator(".badge", has_text="cancelled").wait_for()
        assert row.get_by_role("button").count() == 0
    final = wait_until(lambda: (j := svc.http.get(f"/jobs/{job['id']}").json())["status"] == "cancelled" and j,
                       what="cancelled")  # fmt: skip
    assert final["error"]["type"] == "CancelledError" and not (svc.root / "out-cancel").exists()


def test_progress_polls_when_the_stream_fails(svc, browser):
    job = svc.http.post(
        "/convert", json={"source": str(svc.big), "max_shard_size": "80MB",
                          "destination": {"local_path": str(svc.root / "out-poll")}},
    ).json()  # fmt: skip
    with Page(browser, DESKTOP, expected=["net::ERR_FAILED"]) as page:
        page.route("**/jobs/*/events", lambda route: route.abort())
        page.goto(f"{svc.url}/ui/jobs/{job['id']}")
        seen = watch_progress(page, timeout=40)
        assert page.locator("#job-status").text_content() == "succeeded"
        assert page.evaluate("document.body.dataset.followMode") == "polling"
        assert seen[-1] == 100 and any(0 < v < 100 for v in seen), seen


def test_token_prompt(svc, browser):
    """With CKPT_CONVERT_API_TOKENS set, the dashboard asks for the token, keeps it for the tab and sends it."""
    api, url = start_api({**svc.env, "CKPT_CONVERT_API_TOKENS": TOKEN}, svc.root / "api-auth.log")
    try:
        assert httpx.get(url + "/jobs").status_code == 401 and httpx.get(url + "/").status_code == 200
        with Page(browser, DESKTOP, expected=["status of 401", "status of 403"]) as page:
            page.goto(url + "/")
            panel = page.locator("#token-panel")
            panel.wait_for(state="visible")
            assert page.evaluate("document.activeElement.id") == "token-input"
            shot(page, "desktop-token-prompt")
            page.get_by_label("API token", exact=True).fill("wrong")
            page.get_by_role("button", name="Use token").click()
            page.locator("#token-msg", has_text="refused").wait_for()
            page.get_by_label("API token", exact=True).fill(TOKEN)
            page.keyboard.press("Enter")
            panel.wait_for(state="hidden")
            count = httpx.get(url + "/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).json()["count"]
            page.locator("#jobs-count", has_text=f"{count} job").wait_for()

            # the token stays for the tab: submit through the form and follow the job (stream with the header)
            page.goto(url + "/ui/new")
            page.get_by_label("Source").fill(str(svc.small))
            page.get_by_label("Output folder (absolute path)").fill(str(svc.root / "out-auth"))
            page.get_by_role("button", name="Start conversion").click()
            page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f]{32}$"))
            page.locator("#job-status", has_text="succeeded").wait_for()
            assert page.locator("#token-panel").is_hidden()
            assert page.locator("#job-progress [role=progressbar]").get_attribute("aria-valuenow") == "100"
            page.get_by_role("button", name="Forget token").click()
            assert page.evaluate("sessionStorage.length") == 0
    finally:
        api.stop()


def test_rules_pages_know_every_type_and_compose_a_config(svc, browser):
    """llama needs no conversion (200, said so); a llava whose text model is mixtral composes mixtral's rules
    under model.language_model, on the API and on the rule page, and the preview then merges its experts."""
    llama = svc.http.get("/rules/llama")
    assert llama.status_code == 200 and llama.json()["conversion"] == "none"
    assert svc.http.get("/rules/not_a_model").status_code == 404
    cfg = {
        "model_type": "llava",
        "text_config": {"model_type": "mixtral"},
        "vision_config": {"model_type": "clip_vision_model"},
    }
    r = svc.http.post("/rules/resolve", json={"config": cfg})
    assert r.status_code == 200 and r.json()["nested"] == [
        {"path": "model.language_model", "rules_of": "mixtral"}
    ]
    assert any(x["kind"] == "convert" and x.get("scope") == "model.language_model" for x in r.json()["rules"])
    with Page(browser, DESKTOP) as page:
        page.goto(svc.url + "/ui/rules?q=llama")
        row = page.locator("#rules-table tbody tr", has=page.get_by_role("link", name="llama", exact=True))
        assert "none needed" in row.text_content()
        page.goto(svc.url + "/ui/rules/llava")
        page.get_by_label("config.json", exact=True).fill(__import__("json").dumps(cfg))
        page.get_by_role("button", name="Compose").click()
        page.locator("#compose-result", has_text="under model.language_model").wait_for()
        assert "mixtral" in page.locator("#compose-result").text_content()
        page.get_by_label("Tensor names, one per line").fill(
            "language_model.model.layers.0.block_sparse_moe.experts.3.w1.weight"
        )
        page.get_by_role("button", name="Preview").click()
        page.locator(
            ".preview-target", has_text="model.language_model.layers.0.mlp.experts.gate_up_proj"
        ).wait_for()
        shot(page, "desktop-rules-compose")
