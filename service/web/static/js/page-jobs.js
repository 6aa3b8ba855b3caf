/* The jobs page (/): the table of jobs, newest first, filtered by status and model type and paged; the rows of
 * running jobs follow their event streams, the list refreshes every 2 s, and active jobs can be cancelled. */

import { ACTIVE, apiJson, errorText, followJob, TERMINAL } from "./api.js";
import { $, badge, h, jobUrl, nm, ruleUrl, setBadge, timeOrDash } from "./dom.js";
import { cancelJob, destText, fillModelTypes, progressView, sourceCell } from "./job-parts.js";

const MAX_STREAMS = 4; // browsers allow 6 connections per host: leave room for the other calls

export function init() {
  const form = $("#filters");
  const tbody = $("#jobs-table tbody");
  const params = new URLSearchParams(location.search);
  const PAGE = 25;
  let skip = Math.max(0, parseInt(params.get("skip") || "0", 10) || 0);
  $("#f-status").value = params.get("status") || "";
  $("#f-model").value = params.get("model_type") || "";
  fillModelTypes($("#model-types"));

  const rows = new Map(); // id -> {tr, job, progress, badge, started, finished, actions, stream}
  let timer = null;

  function filters() {
    const q = new URLSearchParams();
    const status = $("#f-status").value;
    const mt = $("#f-model").value.trim();
    if (status) q.set("status", status);
    if (mt) q.set("model_type", mt);
    return q;
  }

  function td(label, ...children) {
    return h("td", { "data-label": label }, ...children);
  }

  function makeRow(job) {
    const row = { job };
    row.badge = badge(job.status);
    row.progress = progressView(`Progress of job ${job.id.slice(0, 8)}`, false);
    row.started = td("Started");
    row.finished = td("Finished");
    row.actions = td("");
    row.actions.classList.add("actions");
    row.tr = h(
      "tr",
      { "data-job-id": job.id },
      h("th", { scope: "row", "data-label": "Job" }, h("a", { href: jobUrl(job.id), class: "job-link" }, h("code", {}, job.id.slice(0, 8)))),
      td("Status", row.badge),
      td("Source", sourceCell(job)),
      td("Model type", h("a", { href: ruleUrl(job.model_type) }, job.model_type)),
      td("Direction", job.direction),
      td("Destination", nm(destText(job.destination), "path")),
      h("td", { "data-label": "Progress", class: "col-progress" }, row.progress.root),
      row.started,
      row.finished,
      row.actions,
    );
    return row;
  }

  /** fromList: the periodic list refresh, whose progress may be older than the stream's of a followed row. */
  function updateRow(row, job, fromList) {
    row.job = job;
    setBadge(row.badge, job.status);
    if (!(fromList && row.stream) || TERMINAL.has(job.status)) row.progress.update(job.progress, job.status);
    row.started.replaceChildren(timeOrDash(job.started_at));
    row.finished.replaceChildren(timeOrDash(job.finished_at));
    const canCancel = ACTIVE.has(job.status);
    const existing = row.actions.querySelector("button");
    if (canCancel && !existing) {
      row.actions.append(
        h(
          "button",
          {
            type: "button",
            class: "button small danger",
            "aria-label": `Cancel job ${job.id.slice(0, 8)}`,
            onclick: async (e) => {
              const j = await cancelJob(job.id, e.currentTarget);
              if (j) updateRow(row, j, false);
            },
          },
          "Cancel",
        ),
      );
    } else if (!canCancel && existing) {
      if (document.activeElement === existing) row.tr.querySelector("a.job-link").focus();
      existing.remove();
    }
  }

  function follow(row) {
    if (row.stream || !ACTIVE.has(row.job.status)) return;
    const active = [...rows.values()].filter((r) => r.stream).length;
    if (active >= MAX_STREAMS) return; // the list refresh keeps the others up to date
    const ctl = new AbortController();
    row.stream = ctl;
    followJob(row.job.id, {
      signal: ctl.signal,
      onProgress: (p) => row.progress.update(p, row.job.status === "queued" ? "running" : row.job.status),
      onJob: (job) => updateRow(row, job, false),
    }).finally(() => {
      row.stream = null;
    });
  }

  async function load() {
    const q = filters();
    q.set("skip", String(skip));
    q.set("limit", String(PAGE));
    const r = await apiJson(`/jobs?${q}`);
    if (!r.ok) {
      $("#jobs-count").textContent = `Could not load jobs: ${errorText(r.body, r.status)}`;
      return;
    }
    const { data, count } = r.body;
    const seen = new Set();
    let prev = null;
    for (const job of data) {
      seen.add(job.id);
      let row = rows.get(job.id);
      if (!row) {
        row = makeRow(job);
        rows.set(job.id, row);
      }
      updateRow(row, job, true);
      // keep the DOM order = the list order, moving rows only when needed (moving a row drops its focus)
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (want !== row.tr) tbody.insertBefore(row.tr, want);
      prev = row.tr;
      follow(row);
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        if (row.stream) row.stream.abort();
        row.tr.remove();
        rows.delete(id);
      }
    }
    const text =
      count === 0
        ? "No jobs."
        : `${count} job${count === 1 ? "" : "s"}${count > PAGE ? `, showing ${skip + 1}–${skip + data.length}` : ""}, newest first.`;
    if ($("#jobs-count").textContent !== text) $("#jobs-count").textContent = text;
    $("#jobs-empty").hidden = count !== 0;
    $("#jobs-table").hidden = data.length === 0;
    $("#newer").hidden = skip === 0;
    $("#older").hidden = skip + data.length >= count;
  }

  function reloadSoon() {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      if (!document.hidden) await load().catch(() => {});
      reloadSoon();
    }, 2000);
  }

  function applyFilters() {
    const q = filters();
    if (skip) q.set("skip", String(skip));
    history.replaceState(null, "", `${location.pathname}${q.toString() ? `?${q}` : ""}`);
    for (const row of rows.values()) {
      if (row.stream) row.stream.abort();
      row.tr.remove();
    }
    rows.clear();
    load();
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    skip = 0;
    applyFilters();
  });
  $("#f-status").addEventListener("change", () => {
    skip = 0;
    applyFilters();
  });
  $("#f-clear").addEventListener("click", () => {
    form.reset();
    skip = 0;
    applyFilters();
  });
  $("#newer").addEventListener("click", () => {
    skip = Math.max(0, skip - PAGE);
    applyFilters();
  });
  $("#older").addEventListener("click", () => {
    skip += PAGE;
    applyFilters();
  });
  load().then(reloadSoon, reloadSoon);
}

