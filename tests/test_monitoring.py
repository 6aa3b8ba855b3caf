"""What dashboards rely on: the ``GET /jobs`` filters and summaries, the metrics ``/metrics`` exports (labels by model
type and error type, queue depth, phase durations), and ``deploy/``: every query of the Grafana dashboard names a
metric (and labels) the live service exports, and the Prometheus config and the compose profile fit the services
they point at (checked statically: no Docker engine runs here).

The live part runs a real Valkey, a worker and the API, with jobs in every state: succeeded, failed with two error
types and two model types, running with one queued behind it (the queue depth), and both cancelled.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support.helpers import MIXTRAL_CONFIG, mixtral_tensors, write_checkpoint
from support.servers import ROOT, Service, Valkey, start_api
from test_deploy import compose, interpolate

from converter.demo import MixtralShape, write_mixtral_checkpoint
from jobs.store import JobQuery, JobStore, P

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "ckpt-convert.json"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
READ_TOKEN = "metrics-read-4c1e"


# --- the job store's list queries (a Valkey, no worker) ---------------------------------------------------------


@pytest.fixture(scope="module")
def valkey(tmp_path_factory):
    v = Valkey(tmp_path_factory.mktemp("valkey-list"))
    yield v
    v.stop()


def _make(store: JobStore, n: int) -> list[str]:
    """``n`` jobs, created 2 ms apart: model types alternate (mixtral, qwen3_moe), sources cycle over 3, the first
    half is ci's and the rest ops'."""
    ids = []
    for i in range(n):
        fields = {"model_type": ("mixtral", "qwen3_moe")[i % 2], "source": f"org/model-{i % 3}",
                  "owner": "ci" if i < n // 2 else "ops", "request": {"direction": "forward"},
                  "plan": {"tensors_out": i}}  # fmt: skip
        ids.append(store.create(fields)[0])
        time.sleep(0.002)
    return ids


def test_list_queries_union_intersection_and_time_range(valkey):
    store = JobStore(valkey.url)
    store.r.flushdb()
    ids = _make(store, 12)
    recs = {i: store.get(i) for i in ids}
    # statuses: 0, 1 failed; 2, 3 succeeded; 4 cancelled; 5 running; the rest queued
    for i in (0, 1):
        store.transition(ids[i], "*", "running")
        store.transition(
            ids[i], "*", "failed", error={"type": ("MissingExpertError", "LayoutMismatchError")[i]}
        )
    for i in (2, 3):
        store.transition(ids[i], "*", "running")
        store.transition(ids[i], "*", "succeeded")
    store.transition(ids[4], "*", "cancelled")
    store.transition(ids[5], "*", "running")

    def ids_of(q: JobQuery, skip: int = 0, limit: int = 50) -> tuple[list[str], int]:
        recs, count = store.list_jobs(q, skip=skip, limit=limit, fields=("id", "status"))
        return [r["id"] for r in recs], count

    newest_first = ids[::-1]
    assert ids_of(JobQuery()) == (newest_first, 12)
    # a union of statuses, newest first
    assert ids_of(JobQuery(statuses=("failed", "succeeded"))) == ([ids[3], ids[2], ids[1], ids[0]], 4)
    # statuses x model types: the per status and model type sets
    assert ids_of(JobQuery(statuses=("failed", "succeeded"), model_types=("mixtral",))) == (
        [ids[2], ids[0]],
        2,
    )
    assert ids_of(JobQuery(model_types=("mixtral", "qwen3_moe"))) == (newest_first, 12)
    # a source, intersected with an owner and a model type
    assert ids_of(JobQuery(source="org/model-0")) == ([ids[9], ids[6], ids[3], ids[0]], 4)
    assert ids_of(JobQuery(source="org/model-0", owners=("ci",))) == ([ids[3], ids[0]], 2)
    assert ids_of(JobQuery(source="org/model-0", owners=("ci",), model_types=("qwen3_moe",))) == ([ids[3]], 1)
    # a submit token asking for another owner's jobs: both owners must match, so none does
    assert ids_of(JobQuery(owners=("ci", "ops"))) == ([], 0)
    # since <= created_at < until, with paging over the range
    t = [recs[i]["created_at"] for i in ids]
    assert ids_of(JobQuery(since=t[4], until=t[8])) == ([ids[7], ids[6], ids[5], ids[4]], 4)
    assert ids_of(JobQuery(since=t[4], until=t[8]), skip=1, limit=2) == ([ids[6], ids[5]], 4)
    assert ids_of(JobQuery(statuses=("queued",), since=t[10])) == ([ids[11], ids[10]], 2)
    assert ids_of(JobQuery(until=t[0])) == ([], 0)
    # the old keyword form still works
    assert store.list_jobs(status="running")[1] == 1
    # only the fields asked for are read; no temporary set is left behind
    rec = store.list_jobs(JobQuery(statuses=("succeeded",)), fields=("id", "status", "model_type"))[0][0]
    assert set(rec) == {"id", "status", "model_type", "attempts"}
    assert store.r.keys(P + "tmp:*") == []


def test_indexes_follow_every_change_and_older_records_join_them(valkey):
    store = JobStore(valkey.url, retention=0)
    store.r.flushdb()
    a, b = _make(store, 2)
    assert store.cancel_abandoned(a) is False  # not running
    store.transition(a, "*", "running")
    assert store.cancel_abandoned(a, finished_at=time.time()) is True  # its worker is gone: no lock
    snap = store.metrics_snapshot()
    assert snap.by_status_model_type == {("cancelled", "mixtral"): 1, ("queued", "qwen3_moe"): 1}
    assert snap.finished == {("cancelled", "mixtral"): 1} and snap.failures == {}
    # a finished job swept after its retention leaves every index (the counters stay: they count what happened)
    assert store.sweep() == 1
    assert store.r.zcard(P + "jobs:source:org/model-0") == 0
    assert store.r.zcard(P + "jobs:status:cancelled:model_type:mixtral") == 0
    assert store.metrics_snapshot().finished == {("cancelled", "mixtral"): 1}
    # a record written before the per-source and per status and model type indexes existed
    old = "0123456789abcdef0123456789abcdef"
    store.r.hset(P + "job:" + old, mapping={"id": old, "status": "failed", "model_type": "dbrx", "source": "org/old",
                                            "created_at": "1000.0", "attempts": "1"})  # fmt: skip
    for k in ("jobs", "jobs:status:failed", "jobs:model_type:dbrx"):
        store.r.zadd(P + k, {old: 1000.0})
    assert store.list_jobs(JobQuery(source="org/old"))[1] == 0
    store.r.delete(P + "index_version")
    assert store.ensure_indexes(batch=1) == 2 and store.ensure_indexes() == 0  # once per index version
    assert store.list_jobs(JobQuery(source="org/old"))[1] == 1
    assert store.list_jobs(JobQuery(statuses=("failed",), model_types=("dbrx",)))[1] == 1
    assert store.metrics_snapshot().by_status_model_type[("failed", "dbrx")] == 1


# --- the service, with jobs in every state ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitoring")
    with Service(root, CKPT_CONVERT_MAX_BYTES_PER_SECOND="20000000") as s:
        yield s


QWEN3_MOE_CONFIG = {"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"]}


def qwen3_moe_tensors() -> dict[str, torch.Tensor]:
    """The tiny Mixtral state dict under Qwen3-MoE's published names (``mlp.experts.N.gate_proj`` ...).

    Not mixtral's names under a qwen3_moe config: the planner's layout check admits names by their first two
    components (``model.layers``), so such a checkpoint converts, as a no-op, and succeeds."""
    renames = {"block_sparse_moe.": "mlp.", ".w1.": ".gate_proj.", ".w2.": ".down_proj.", ".w3.": ".up_proj."}
    out = {}
    for name, t in mixtral_tensors().items():
        for a, b in renames.items():
            name = name.replace(a, b)
        out[name] = t
    return out


def _post(svc, source: Path, out: str, **kw) -> dict:
    r = svc.http.post(
        "/convert", json={"source": str(source), "destination": {"local_path": str(svc.root / out)}, **kw}
    )
    assert r.status_code == 202, r.text
    return r.json()


@pytest.fixture(scope="module")
def jobs(svc):
    """Jobs in every state, and /metrics scraped while one runs and another waits in the queue."""
    small = write_mixtral_checkpoint(svc.root / "small")
    t = mixtral_tensors()
    del t["model.layers.1.block_sparse_moe.experts.2.w1.weight"]
    broken = write_checkpoint(svc.root / "broken", t, config=MIXTRAL_CONFIG)
    # a qwen3_moe checkpoint with one expert of another shape: refused by the planner (a second model and error type)
    q = qwen3_moe_tensors()
    q["model.layers.1.mlp.experts.2.up_proj.weight"] = torch.zeros(5, 8, dtype=torch.bfloat16)
    mismatched = write_checkpoint(svc.root / "mismatched", q, config=QWEN3_MOE_CONFIG)
    big = write_mixtral_checkpoint(
        svc.root / "big", MixtralShape(layers=4, experts=8, hidden=512, intermediate=1024, vocab=4000),
        max_shard_bytes=30_000_000,
    )  # fmt: skip
    out: dict = {"small": small, "broken": broken, "mismatched_src": mismatched}
    out["ok"] = _post(svc, small, "out-ok")
    out["missing"] = _post(svc, broken, "out-missing")
    out["mismatched"] = _post(svc, mismatched, "out-mismatched")
    for k in ("ok", "missing", "mismatched"):
        out[k] = svc.wait(out[k]["id"])
    out["running"] = _post(svc, big, "out-running")
    out["waiting"] = _post(svc, big, "out-waiting", max_shard_size="20MB")
    svc.wait(out["running"]["id"], ("running",))
    out["metrics_busy"] = scrape(svc.http)
    # both cancelled: the queued one at once, the running one within seconds
    for k in ("waiting", "running"):
        assert svc.http.delete(f"/jobs/{out[k]['id']}").status_code == 202
        out[k] = svc.wait(out[k]["id"])
    out["metrics"] = scrape(svc.http)
    return out


def scrape(http: httpx.Client, **kw) -> dict[str, list]:
    """``/metrics`` parsed by prometheus_client: sample name -> [(labels, value)]."""
    r = http.get("/metrics", **kw)
    assert r.status_code == 200, r.text
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(m: dict[str, list], name: str, **labels: str) -> float:
    found = [v for lab, v in m.get(name, []) if all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (name, labels, m.get(name))
    return found[0]


def test_jobs_end_as_expected(jobs):
    assert jobs["ok"]["status"] == "succeeded"
    assert jobs["missing"]["status"] == "failed" and jobs["missing"]["error"]["type"] == "MissingExpertError"
    assert jobs["mismatched"]["status"] == "failed" and jobs["mismatched"]["model_type"] == "qwen3_moe"
    assert jobs["mismatched"]["error"]["type"] == "ExpertMismatchError"
    assert jobs["running"]["status"] == jobs["waiting"]["status"] == "cancelled"
    assert jobs["running"]["started_at"] and not jobs["waiting"]["started_at"]


def test_metrics_by_model_type_error_type_queue_and_phase(jobs):
    busy, m = jobs["metrics_busy"], jobs["metrics"]
    # while one job ran and the other waited: one task message in the queue, one delivered and not acknowledged
    assert value(busy, "ckpt_convert_queue_depth") == 1 and value(busy, "ckpt_convert_queue_unacked") >= 1
    assert value(busy, "ckpt_convert_jobs_by_model_type", status="running", model_type="mixtral") == 1
    assert value(busy, "ckpt_convert_jobs_by_model_type", status="queued", model_type="mixtral") == 1
    assert value(m, "ckpt_convert_queue_depth") == 0
    # jobs now, by status and model type; the old metric by status alone is unchanged
    assert value(m, "ckpt_convert_jobs", status="cancelled") == 2
    by_type = {(lab["status"], lab["model_type"]): v for lab, v in m["ckpt_convert_jobs_by_model_type"]}
    assert by_type == {("succeeded", "mixtral"): 1, ("failed", "mixtral"): 1, ("failed", "qwen3_moe"): 1,
                       ("cancelled", "mixtral"): 2}  # fmt: skip
    assert value(m, "ckpt_convert_jobs_finished_total", status="failed", model_type="qwen3_moe") == 1
    assert value(m, "ckpt_convert_jobs_finished_total", status="cancelled", model_type="mixtral") == 2
    # failures by the job's error type
    failures = {(lab["error_type"], lab["model_type"]): v for lab, v in m["ckpt_convert_job_failures_total"]}
    assert failures == {
        ("MissingExpertError", "mixtral"): 1,
        ("ExpertMismatchError", "qwen3_moe"): 1,
    }
    # phase durations, by the job's final status: the succeeded job's phases, the cancelled one's conversion
    ok_phases = jobs["ok"]["phases"]
    for phase in ("resolving", "planning", "converting", "publishing"):
        assert value(m, "ckpt_convert_phase_duration_seconds_count", phase=phase, status="succeeded") == 1
        total = value(m, "ckpt_convert_phase_duration_seconds_sum", phase=phase, status="succeeded")
        assert total == pytest.approx(ok_phases[phase]["seconds"], abs=1e-3)
    assert value(m, "ckpt_convert_phase_duration_seconds_count", phase="converting", status="cancelled") == 1
    assert value(m, "ckpt_convert_phase_duration_seconds_bucket", phase="converting", status="cancelled",
                 le="+Inf") == 1  # fmt: skip
    assert not [lab for lab, _ in m["ckpt_convert_phase_duration_seconds_count"] if lab["phase"] == "done"]
    assert value(m, "ckpt_convert_bytes_converted_total") == jobs["ok"]["result"]["bytes_written"]
    # no label holds a job id or a path
    for samples in m.values():
        for lab, _ in samples:
            assert not any(re.fullmatch(r"[0-9a-f]{32}", v) or "/" in v for v in lab.values()), lab


def test_jobs_filters_over_http(svc, jobs):
    ids = {k: jobs[k]["id"] for k in ("ok", "missing", "mismatched", "running", "waiting")}

    def listed(**params) -> tuple[list[str], int]:
        r = svc.http.get("/jobs", params=params)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["data"]], r.json()["count"]

    newest = [ids[k] for k in ("waiting", "running", "mismatched", "missing", "ok")]
    assert listed() == (newest, 5)
    # status repeats (a union); every filter combines with the others
    assert listed(status=["succeeded", "failed"]) == ([ids["mismatched"], ids["missing"], ids["ok"]], 3)
    assert listed(status=["failed"], model_type="qwen3_moe") == ([ids["mismatched"]], 1)
    assert listed(model_type=["qwen3_moe", "mixtral"], limit=2) == (newest[:2], 5)
    assert listed(source=str(jobs["small"])) == ([ids["ok"]], 1)
    assert listed(source=str(jobs["mismatched_src"]), status="failed") == ([ids["mismatched"]], 1)
    assert listed(source=str(jobs["mismatched_src"]), status="succeeded") == ([], 0)
    assert listed(source="org/not-submitted") == ([], 0)
    # since/until on created_at: ISO 8601 (Z, an offset, none = UTC) or epoch seconds; since <= t < until
    t = {k: jobs[k]["created_at"] for k in ids}
    iso = t["missing"]  # as the API shows it: ...Z
    epoch = datetime.fromisoformat(iso).timestamp()
    assert listed(since=iso) == (newest[:4], 4)
    assert listed(since=str(epoch), until=t["running"]) == ([ids["mismatched"], ids["missing"]], 2)
    plus_one = (
        datetime.fromtimestamp(epoch, UTC).astimezone().isoformat()
    )  # the same instant with a local offset
    assert listed(since=plus_one)[1] == 4
    naive = datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None).isoformat()
    assert listed(since=naive)[1] == 4
    assert (
        svc.http.get(f"/jobs?since={iso.replace('Z', '+00:00')}").json()["count"] == 4
    )  # "+" not URL-encoded


def test_jobs_list_items_are_summaries(svc, jobs):
    full = svc.http.get("/jobs", params={"status": "succeeded"})
    (item,) = full.json()["data"]
    assert "plan" not in item and "phases" not in item
    assert item["result"] == {"output": str(svc.root / "out-ok"), "noop": False,
                              "bytes_written": jobs["ok"]["result"]["bytes_written"]}  # fmt: skip
    job = jobs["ok"]
    for k in ("id", "status", "owner", "source", "revision", "source_sha", "model_type", "direction", "dtype",
              "destination", "created_at", "started_at", "finished_at", "progress", "attempts"):  # fmt: skip
        assert item[k] == job[k], k
    failed = svc.http.get("/jobs", params={"status": "failed", "model_type": "mixtral"}).json()["data"][0]
    assert failed["error"]["type"] == "MissingExpertError" and failed["result"] is None
    # include= adds what a table does not show: repeatable or comma-separated
    r = svc.http.get("/jobs", params={"status": "succeeded", "include": ["plan", "phases,result"]})
    (rich,) = r.json()["data"]
    assert rich["plan"] == job["plan"] and rich["phases"] == job["phases"] and rich["result"] == job["result"]
    assert len(full.content) < len(r.content)
    # the list is much smaller than the jobs it shows
    listed = svc.http.get("/jobs").json()["data"]
    whole = sum(len(svc.http.get(f"/jobs/{j['id']}").content) for j in listed)
    assert len(svc.http.get("/jobs").content) < whole / 2, whole


@pytest.mark.parametrize(
    "query,key,expect",
    [
        ("since=yesterday", "parameter", "since"),
        ("until=1e999", "parameter", "until"),
        ("sice=2026-01-01", "unknown", ["sice"]),
        ("status=failed&offset=3&order=asc", "unknown", ["offset", "order"]),
        ("source=a&source=b", "repeated", ["source"]),
        ("skip=1&skip=2", "repeated", ["skip"]),
        ("include=plan,everything", "unknown", ["everything"]),
    ],
)
def test_jobs_refuses_unknown_repeated_and_bad_parameters(svc, query, key, expect):
    r = svc.http.get("/jobs?" + query)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail["type"] == "InvalidRequestError" and detail[key] == expect, detail
    if key == "unknown" and "include" not in query:
        assert detail["allowed"] == ["status", "model_type", "source", "owner", "since", "until", "include",
                                     "skip", "limit"]  # fmt: skip


def test_jobs_validates_values(svc):
    assert svc.http.get("/jobs", params={"status": ["failed", "nope"]}).status_code == 422
    assert svc.http.get("/jobs", params={"model_type": "x" * 101}).status_code == 422
    assert svc.http.get("/jobs", params={"limit": 501}).status_code == 422


# --- the dashboard's queries name what the service exports -------------------------------------------------------

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset", "inf", "nan"}  # fmt: skip
TARGET_LABELS = {"instance", "job"}  # added by Prometheus at scrape time


def promql_selectors(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The metric names of a PromQL expression, each with the label names its matchers use, and the labels of its
    ``by``/``without``/``on``/``ignoring`` clauses. A tokenizer, not a parser: strings, ranges and Grafana's
    variables are dropped, and an identifier not followed by ``(`` that is no keyword is a metric.

    >>> promql_selectors('histogram_quantile(0.9, sum by (le) (rate(x_bucket{phase="a"}[5m])))')
    ({'x_bucket': {'phase'}}, {'le'})
    """
    assert "__name__" not in expr, f"name the metric before its matchers: {expr!r}"
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings may hold anything: [, {, (
    grouping: set[str] = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        grouping |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    rest = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)  # ranges: [5m], [$__rate_interval]
    out: dict[str, set[str]] = {}
    for m in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", rest):  # selectors with matchers
        out.setdefault(m.group(1), set()).update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", m.group(2)))
    rest = re.sub(r"\{[^}]*\}", " ", rest.replace('""', " "))
    rest = re.sub(r"\$\w+", " ", rest)
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)\b(?!\s*\()", rest):
        if m.group(1).lower() not in PROMQL_KEYWORDS:
            out.setdefault(m.group(1), set())
    return out, grouping


def dashboard_queries(dash: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target (rows and their collapsed panels too) and every query variable."""
    out = []

    def panels(ps: list[dict]) -> None:
        for p in ps:
            panels(p.get("panels", []))
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"panel {p.get('title')!r} {t.get('refId')}", t["expr"]))

    panels(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = (
                v["query"]["query"]
                if isinstance(v.get("query"), dict)
                else v.get("query") or v.get("definition")
            )
            m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", q)
            assert m, f"variable {v['name']}: only label_values(selector, label) is checked here, not {q!r}"
            out.append((f"variable {v['name']}", f"{m.group(1)} by ({m.group(2)}) "))
    return out


def test_the_promql_tokenizer():
    sels, grouping = promql_selectors(
        'sum by (phase) (rate(a_sum{status="x",model_type=~"$model_type"}[$__rate_interval])) / '
        "sum without (le) (rate(a_count[5m])) * 60 + on (instance) group_left b_total offset 5m"
    )
    assert sels == {"a_sum": {"status", "model_type"}, "a_count": set(), "b_total": set()}
    assert grouping == {"phase", "le", "instance"}
    assert promql_selectors('c{x!="1", y=~"[a-z]{2}(b|c)"}')[0] == {"c": {"x", "y"}}
    with pytest.raises(AssertionError, match="name the metric"):
        promql_selectors('{__name__="c"}')
    assert promql_selectors("topk(15, max(d) > bool 1 and e)")[0] == {"d": set(), "e": set()}
    assert promql_selectors('label_replace(f, "dst", "$1", "src", "(.*)")')[0] == {"f": set()}


def test_every_dashboard_query_names_an_exported_metric_and_its_labels(jobs):
    """The series of a live scrape (jobs succeeded, failed with two error types, cancelled, a job queued): every
    metric each query names, and every label it matches or groups by, exist there."""
    exported: dict[str, set[str]] = {}
    for name, samples in jobs["metrics"].items():
        for lab, _ in samples:
            exported.setdefault(name, set()).update(lab)
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 15
    named: set[str] = set()
    for where, expr in queries:
        sels, grouping = promql_selectors(expr)
        assert sels, f"{where}: no metric in {expr!r}"
        for name, labels in sels.items():
            assert name in exported, f"{where}: {name} is not exported (query {expr!r})"
            assert labels <= exported[name], f"{where}: {name} has no label {labels - exported[name]}"
        have = set().union(*(exported[n] for n in sels)) | TARGET_LABELS
        assert grouping <= have, f"{where}: no metric of {expr!r} has the labels {grouping - have}"
        named |= set(sels)
    # and the dashboard shows what it was made for
    for needed in ("ckpt_convert_jobs", "ckpt_convert_bytes_converted_total", "ckpt_convert_job_duration_seconds_bucket",
                   "ckpt_convert_phase_duration_seconds_bucket", "ckpt_convert_job_failures_total",
                   "ckpt_convert_queue_depth", "ckpt_convert_workers_alive", "ckpt_convert_event_streams"):  # fmt: skip
        assert needed in named, needed


def test_a_wrong_metric_or_label_in_the_dashboard_would_fail():
    exported = {"ckpt_convert_jobs": {"status"}}
    sels, _ = promql_selectors('sum(ckpt_convert_job{status="queued"})')
    assert set(sels) - set(exported) == {"ckpt_convert_job"}
    sels, _ = promql_selectors('sum(ckpt_convert_jobs{state="queued"})')
    assert sels["ckpt_convert_jobs"] - exported["ckpt_convert_jobs"] == {"state"}


def test_prometheus_scrapes_with_the_token_file_the_way_it_is_configured(svc, jobs):
    """The scrape config's path and Authorization header (``Bearer`` + the file's content) against an API with
    tokens: a `read` token is enough; the default empty file is refused there (and ignored without tokens)."""
    job = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"][0]
    auth = job["authorization"]
    api, url = start_api(
        {**svc.env, "CKPT_CONVERT_API_TOKENS": f"prom:read:{READ_TOKEN}"}, svc.root / "api-tok.log"
    )
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            got = scrape(c, headers={"Authorization": f"{auth['type']} {READ_TOKEN}"})
            assert value(got, "ckpt_convert_jobs", status="succeeded") == 1
            empty = (ROOT / "deploy" / "api-token.empty").read_text().strip()
            assert empty == ""
            # "Bearer " + nothing: HTTP drops the trailing space
            r = c.get(job["metrics_path"], headers={"Authorization": f"{auth['type']} {empty}".strip()})
            assert r.status_code == 401
    finally:
        api.stop()
    assert svc.http.get(job["metrics_path"], headers={"Authorization": "Bearer"}).status_code == 200


# --- deploy/, statically ----------------------------------------------------------------------------------------


def mounts(service: dict) -> dict[str, str]:
    """Container path -> host path of a compose service's bind mounts (defaults of ``${VAR:-default}`` taken)."""
    out = {}
    for v in service.get("volumes", []):
        host, container, *_ = interpolate(v, {}).split(":")
        out[container] = host
    return out


def test_monitoring_profile_in_compose():
    s = compose()["services"]
    monitoring = {n for n, svc in s.items() if "monitoring" in svc.get("profiles", [])}
    assert monitoring == {"prometheus", "grafana"}
    assert {n for n, svc in s.items() if not svc.get("profiles")} == {"redis", "api", "worker"}
    for name in monitoring:
        svc = s[name]
        assert svc["profiles"] == ["monitoring"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", svc["image"]), (
            f"{name}: pin the image: {svc['image']}"
        )
        for port in svc["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name} must publish on loopback only: {port}"
        for container, host in mounts(svc).items():
            if host.startswith("./"):
                assert (ROOT / host).exists(), f"{name}: {host} (mounted at {container}) is missing"
        assert svc["healthcheck"]["test"][0] == "CMD"
    assert s["prometheus"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert s["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_prometheus_config_targets_the_api():
    s = compose()["services"]
    doc = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = doc["scrape_configs"]
    (static,) = job["static_configs"]
    host, port = static["targets"][0].split(":")
    api_cmd = s["api"]["command"]
    assert host in s and host == "api" and port == api_cmd[api_cmd.index("--port") + 1]
    assert job["metrics_path"] == "/metrics"
    from service.app import app

    assert "get" in app.openapi()["paths"]["/metrics"]
    # the config file and the token file are where compose mounts them
    prom = s["prometheus"]
    config = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    m = mounts(prom)
    assert m[config] == "./deploy/prometheus.yml"
    assert job["authorization"]["type"] == "Bearer"
    assert m[job["authorization"]["credentials_file"]] == "./deploy/api-token.empty"
    token_mount = next(v for v in prom["volumes"] if job["authorization"]["credentials_file"] in v)
    assert interpolate(token_mount, {"CKPT_CONVERT_METRICS_TOKEN_FILE": "/run/tok"}).startswith("/run/tok:")


def test_grafana_provisioning_matches_the_dashboard():
    s = compose()["services"]
    m = mounts(s["grafana"])
    assert m["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    (ds,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    prom_port = s["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert ds["type"] == "prometheus" and ds["url"] == f"http://prometheus:{prom_port}"
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "ckpt-convert.yml").read_text())["providers"]
    folder = provider["options"]["path"]
    assert m[folder] == "./deploy/grafana/dashboards" and (ROOT / m[folder] / DASHBOARD.name).exists()
    home = s["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{folder}/{DASHBOARD.name}"
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "ckpt-convert"
    uses = {json.dumps(p["datasource"], sort_keys=True) for p in dash["panels"]}
    uses |= {json.dumps(t["datasource"], sort_keys=True) for p in dash["panels"] for t in p["targets"]}
    uses |= {json.dumps(v["datasource"], sort_keys=True) for v in dash["templating"]["list"]}
    assert uses == {json.dumps({"type": "prometheus", "uid": ds["uid"]}, sort_keys=True)}
    titles = {p["title"] for p in dash["panels"]}
    assert {"Jobs by status", "Throughput", "Job duration p50 / p95", "Phase duration p95 (succeeded jobs)",
            "Failures by error type", "Queue depth", "Live workers", "Event streams"} <= titles  # fmt: skip
    # panels do not overlap on the 24-column grid
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine
