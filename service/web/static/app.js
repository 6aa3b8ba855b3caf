/* ckpt-convert dashboard: renders the JSON API in the browser. No framework, no build step.
 *
 * Every API call goes through api(): it adds `Authorization: Bearer <token>` when the user gave a token, and on
 * 401/403 from the auth check asks for one (kept in sessionStorage) and retries. Job progress is read from the
 * Server-Sent Events endpoint with fetch() and a stream reader (EventSource cannot send headers), falling back
 * to polling GET /jobs/{id} when the stream fails.
 */
"use strict";

(() => {
  const BASE = document.body.dataset.base || "";
  const TOKEN_KEY = "ckpt-convert-token";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const ACTIVE = new Set(["queued", "running"]);

  // --- small helpers -------------------------------------------------------------------------------------------

  const $ = (sel, root = document) => root.querySelector(sel);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  /** h("a", {href: "/x", class: "y"}, "text", child) -> element. Props starting with "on" are listeners. */
  function h(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  /** A tensor name or path in <code>, breakable after each "." and "/" (never inside a component). */
  function nm(text, cls) {
    const parts = String(text).split(/(?<=[./])/);
    const c = h("code", { class: cls || null });
    parts.forEach((part, i) => {
      if (i) c.append(h("wbr"));
      c.append(part);
    });
    return c;
  }

  const url = (path) => BASE + path;
  const jobUrl = (id) => url(`/ui/jobs/${encodeURIComponent(id)}`);
  const ruleUrl = (mt) => url(`/ui/rules/${encodeURIComponent(mt)}`);

  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let i = 0;
    let v = n;
    while (v >= 1000 && i < units.length - 1) {
      v /= 1000;
      i++;
    }
    return i === 0 ? `${v} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 0.001) return "<1 ms";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function fmtEta(s) {
    if (s === null || s === undefined || !isFinite(s)) return null;
    if (s < 1) return "<1 s";
    if (s < 60) return `${Math.round(s)} s`;
    return fmtSeconds(s);
  }

  function fmtTime(iso) {
    if (!iso) return null;
    const d = new Date(iso);
    const today = new Date().toDateString() === d.toDateString();
    const opts = { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
    const text = today
      ? d.toLocaleTimeString(undefined, opts)
      : d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", ...opts });
    return h("time", { datetime: iso, title: d.toString() }, text);
  }

  const timeOrDash = (iso) => fmtTime(iso) || h("span", { class: "muted" }, "–");

  function flash(message, kind = "info") {
    const f = $("#flash");
    f.className = `flash ${kind}`;
    f.textContent = message;
  }

  function destText(d) {
    if (!d) return "–";
    if (d.local_path) return d.local_path;
    if (d.repo_id) {
      const extra = [d.create_pr && "pull request", d.private && "private"].filter(Boolean);
      return `hf://${d.repo_id}${extra.length ? ` (${extra.join(", ")})` : ""}`;
    }
    return JSON.stringify(d);
  }

  function sourceCell(job) {
    const rev = job.revision && job.revision !== "local" ? `@${job.revision}` : "";
    const title = job.source_sha ? `${job.revision === "local" ? "fingerprint" : "commit"} ${job.source_sha}` : null;
    return h(
      "span",
      { title },
      nm(job.source, "path"),
      rev ? h("span", { class: "muted" }, rev) : job.revision === "local" ? h("span", { class: "muted" }, " (local)") : null,
    );
  }

  function badge(status) {
    return h("span", { class: `badge ${status}` }, status);
  }

  function setBadge(node, status) {
    node.className = `badge ${status}`;
    node.textContent = status;
  }

  // --- the API, with the token ---------------------------------------------------------------------------------

  let tokenWaiter = null;
  let tokenResolve = null;

  function authHeaders() {
    const t = sessionStorage.getItem(TOKEN_KEY);
    return t ? { Authorization: `Bearer ${t}` } : {};
  }

  function askToken(message) {
    const panel = $("#token-panel");
    $("#token-msg").textContent = message;
    panel.hidden = false;
    $("#token-input").focus();
    if (!tokenWaiter) tokenWaiter = new Promise((resolve) => (tokenResolve = resolve));
    return tokenWaiter;
  }

  function initToken() {
    const form = $("#token-form");
    const forget = $("#forget-token");
    const show = () => (forget.hidden = !sessionStorage.getItem(TOKEN_KEY));
    show();
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("#token-input");
      const err = $("#token-error");
      const value = input.value.trim();
      if (!value) {
        err.textContent = "Enter a token.";
        err.hidden = false;
        input.setAttribute("aria-invalid", "true");
        input.focus();
        return;
      }
      err.hidden = true;
      input.removeAttribute("aria-invalid");
      sessionStorage.setItem(TOKEN_KEY, value);
      input.value = "";
      $("#token-panel").hidden = true;
      show();
      const resolve = tokenResolve;
      tokenWaiter = tokenResolve = null;
      if (resolve) resolve();
    });
    forget.addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      show();
      flash("Token forgotten.");
    });
  }

  /** fetch() against the API; asks for a token and retries when the auth check refuses the request. */
  async function api(path, opts = {}) {
    for (;;) {
      const headers = { Accept: "application/json", ...(opts.headers || {}), ...authHeaders() };
      const r = await fetch(url(path), { ...opts, headers });
      if (r.status === 401 || r.status === 403) {
        const body = await r.clone().json().catch(() => null);
        const type = body && body.detail && body.detail.type;
        if (type === "Unauthorized" || type === "Forbidden") {
          const had = !!sessionStorage.getItem(TOKEN_KEY);
          await askToken(
            type === "Forbidden" || had
              ? "The API refused that token. Enter a valid API token."
              : "This service needs an API token to show and submit jobs.",
          );
          continue;
        }
      }
      return r;
    }
  }

  async function apiJson(path, opts) {
    const r = await api(path, opts);
    const body = await r.json().catch(() => null);
    return { ok: r.ok, status: r.status, body, headers: r.headers };
  }

  function errorText(body, status) {
    const d = body && body.detail;
    if (d && typeof d === "object" && !Array.isArray(d)) return `${d.type}: ${d.message}`;
    if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
    return `HTTP ${status}`;
  }

  // --- following a job: SSE over fetch, polling as the fallback --------------------------------------------------

  function parseEvent(block) {
    const ev = { data: "" };
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "data") ev.data += (ev.data ? "\n" : "") + value;
      else if (field === "event" || field === "id") ev[field] = value;
    }
    return ev;
  }

  /** Reads /jobs/{id}/events until `end`. Returns true when it saw the end (or was aborted), false on failure. */
  async function streamEvents(id, onEvent, signal) {
    let last = null;
    for (let failures = 0; failures < 3; ) {
      try {
        const headers = { Accept: "text/event-stream" };
        if (last) headers["Last-Event-ID"] = last;
        const r = await api(`/jobs/${encodeURIComponent(id)}/events`, { headers, signal });
        if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value.replace(/\r\n?/g, "\n");
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const ev = parseEvent(buf.slice(0, i));
            buf = buf.slice(i + 2);
            if (ev.id) last = ev.id;
            if (!ev.event) continue;
            let data = null;
            try {
              data = ev.data ? JSON.parse(ev.data) : null;
            } catch {
              data = null;
            }
            onEvent(ev.event, data);
            if (ev.event === "end") {
              reader.cancel().catch(() => {});
              return true;
            }
          }
        }
        failures++; // closed without `end`: resume from the last event id
      } catch (e) {
        if (signal && signal.aborted) return true;
        failures++;
      }
      await sleep(500 * failures);
    }
    return false;
  }

  /** Calls onProgress(progress) and onJob(job) until the job is finished (or the signal aborts). */
  async function followJob(id, { onProgress, onJob, signal }) {
    const refresh = async () => {
      const r = await apiJson(`/jobs/${encodeURIComponent(id)}`, { signal });
      if (r.ok) onJob(r.body);
      return r.ok ? r.body : null;
    };
    let phase = null;
    try {
      const streamed = await streamEvents(
        id,
        (event, data) => {
          if (event === "progress" && data) {
            onProgress(data);
            if (phase !== null && data.phase !== phase) refresh().catch(() => {}); // new phase timings
            phase = data.phase;
          } else if (event === "status") refresh().catch(() => {});
        },
        signal,
      );
      if (!streamed) document.body.dataset.followMode = "polling";
      // after the stream (or when it failed): poll until the job is finished
      for (;;) {
        if (signal && signal.aborted) return;
        const job = await refresh().catch(() => null);
        if (job && TERMINAL.has(job.status)) return;
        await sleep(1000);
      }
    } catch (e) {
      if (!(signal && signal.aborted)) console.warn("following job", id, e);
    }
  }

  // --- the progress bar ----------------------------------------------------------------------------------------

  /** A progress bar with its text. live: also announce milestones (every quarter, the end) to screen readers. */
  function progressView(label, live) {
    const fill = h("div", { class: "fill" });
    const bar = h(
      "div",
      {
        class: "bar",
        role: "progressbar",
        "aria-valuemin": "0",
        "aria-valuemax": "100",
        "aria-valuenow": "0",
        "aria-label": label,
      },
      fill,
    );
    const text = h("div", { class: "progress-text" });
    const announce = live ? h("div", { class: "visually-hidden", "aria-live": "polite" }) : null;
    const root = h("div", { class: "progress" }, bar, text, announce);
    let said = null;
    return {
      root,
      /** p: the job's progress (or null); status: the job's status. */
      update(p, status) {
        const done = (p && p.bytes_done) || 0;
        const total = (p && p.bytes_total) || 0;
        let pct = total > 0 ? Math.floor((done / total) * 100) : 0;
        if (status === "succeeded" && total === 0) pct = 100;
        pct = Math.max(0, Math.min(100, pct));
        fill.style.width = `${pct}%`;
        bar.setAttribute("aria-valuenow", String(pct));
        root.className = `progress ${status || ""}`;
        const parts = [];
        if (status === "queued") parts.push("waiting in the queue");
        else if (total > 0) parts.push(`${pct}%`, `${fmtBytes(done)} / ${fmtBytes(total)}`);
        else if (status === "succeeded") parts.push("100%");
        if (status === "running" && p) {
          if (p.bytes_per_second) parts.push(`${fmtBytes(p.bytes_per_second)}/s`);
          const eta = fmtEta(p.eta_seconds);
          if (eta) parts.push(`ETA ${eta}`);
        }
        if (p && p.phase && status !== "queued") parts.push(p.phase);
        const value = parts.join(" · ");
        bar.setAttribute("aria-valuetext", value || `${pct}%`);
        text.textContent = value;
        if (announce) {
          const milestone = `${status} ${TERMINAL.has(status) ? "" : Math.floor(pct / 25) * 25}`;
          if (milestone !== said) {
            said = milestone;
            announce.textContent = TERMINAL.has(status) ? `Job ${status}.` : `${pct}% done, ${status}.`;
          }
        }
      },
    };
  }

  async function cancelJob(id, button) {
    button.disabled = true;
    const r = await apiJson(`/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
    if (r.ok) flash(`Job ${id.slice(0, 8)} cancelled.`);
    else flash(`Could not cancel job ${id.slice(0, 8)}: ${errorText(r.body, r.status)}`, "error");
    return r.ok ? r.body : null;
  }

  // --- model types (datalists) ---------------------------------------------------------------------------------

  let ruleListPromise = null;
  function ruleList() {
    if (!ruleListPromise) ruleListPromise = apiJson("/rules").then((r) => (r.ok ? r.body.data : []));
    return ruleListPromise;
  }

  async function fillModelTypes(datalist) {
    const rows = await ruleList();
    datalist.replaceChildren(...rows.map((r) => h("option", { value: r.model_type })));
  }

  // --- page: jobs ----------------------------------------------------------------------------------------------

  const MAX_STREAMS = 4; // browsers allow 6 connections per host: leave room for the other calls

  function initJobs() {
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

  // --- page: one job -------------------------------------------------------------------------------------------

  function facts(dl, pairs) {
    dl.replaceChildren(
      ...pairs.filter(([, v]) => v !== null && v !== undefined && v !== "").flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
    );
  }

  function initJob() {
    const id = document.body.dataset.jobId;
    const statusBadge = $("#job-status");
    const progress = progressView("Conversion progress", true);
    $("#job-progress").append(progress.root);
    const cancel = $("#job-cancel");
    let current = null;
    let rulesShown = null;

    cancel.addEventListener("click", async () => {
      const job = await cancelJob(id, cancel);
      if (job) render(job);
    });

    function render(job) {
      current = job;
      document.title = `Job ${job.id.slice(0, 8)} (${job.status}) · ckpt-convert`;
      setBadge(statusBadge, job.status);
      progress.update(job.progress, job.status);
      cancel.hidden = !ACTIVE.has(job.status);
      cancel.disabled = false;
      facts($("#job-request"), [
        ["Source", sourceCell(job)],
        ["Revision", job.revision],
        [job.revision === "local" ? "Fingerprint" : "Commit", job.source_sha ? h("code", {}, job.source_sha) : null],
        ["Model type", h("a", { href: ruleUrl(job.model_type) }, job.model_type)],
        ["Direction", job.direction === "forward" ? "forward (published → model)" : "reverse (model → published)"],
        ["dtype", job.dtype || "kept"],
        ["Dequantize", job.dequantize ? "yes" : null],
        ["Largest shard", job.max_shard_size],
        ["Destination", nm(destText(job.destination), "path")],
        ["Created", fmtTime(job.created_at)],
        ["Started", timeOrDash(job.started_at)],
        ["Finished", timeOrDash(job.finished_at)],
        ["Attempts", String(job.attempts)],
      ]);
      renderOutcome(job);
      renderPhases(job);
      renderPlan(job);
      if (rulesShown !== `${job.model_type}/${job.direction}`) {
        rulesShown = `${job.model_type}/${job.direction}`;
        renderJobRules(job);
      }
      $("#job-body").hidden = false;
    }

    function renderOutcome(job) {
      const box = $("#job-outcome-body");
      const section = $("#job-outcome");
      if (job.result) {
        const r = job.result;
        const out = /^https?:\/\//.test(r.output)
          ? h("a", { href: r.output, rel: "noreferrer" }, r.output)
          : nm(r.output, "path");
        const dl = h("dl", { class: "facts" });
        facts(dl, [
          ["Output", out],
          ["No-op", r.noop ? "the source was already in the target layout; nothing was written" : null],
          ["Bytes written", fmtBytes(r.bytes_written)],
          ["Time", fmtSeconds(r.seconds)],
          ["Copied files", r.copied_files.length ? r.copied_files.join(", ") : null],
          ["Skipped files", r.skipped_files.length ? r.skipped_files.join(", ") : null],
        ]);
        const parts = [h("h3", { class: "visually-hidden" }, "Output"), dl];
        if (r.shards.length) {
          parts.push(
            h(
              "div",
              { class: "table-wrap" },
              h(
                "table",
                { class: "data compact" },
                h("caption", {}, `${r.shards.length} shard${r.shards.length === 1 ? "" : "s"}`),
                h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "File"), h("th", { scope: "col", class: "num" }, "Size"))),
                h(
                  "tbody",
                  {},
                  r.shards.map((s) => h("tr", {}, h("td", {}, nm(s.file)), h("td", { class: "num" }, fmtBytes(s.size)))),
                ),
              ),
            ),
          );
        }
        $("#h-outcome").textContent = "Result";
        box.replaceChildren(...parts);
        section.hidden = false;
      } else if (job.error) {
        const e = job.error;
        $("#h-outcome").textContent = job.status === "cancelled" ? "Cancelled" : "Error";
        box.replaceChildren(
          h(
            "div",
            { class: `alert ${job.status === "cancelled" ? "warn" : "error"}` },
            h("p", {}, h("strong", { class: "error-type" }, e.type)),
            h("p", { class: "error-message" }, e.message),
            e.key ? h("p", {}, "Tensor: ", h("code", {}, e.key)) : null,
            e.file ? h("p", {}, "File: ", h("code", {}, e.file)) : null,
          ),
        );
        section.hidden = false;
      } else {
        section.hidden = true;
      }
    }

    function renderPhases(job) {
      const names = Object.keys(job.phases || {});
      if (!names.length) {
        $("#job-phases").replaceChildren(h("p", { class: "muted" }, job.status === "queued" ? "Not started yet." : "No phases recorded."));
        return;
      }
      const total = names.reduce((a, n) => a + (job.phases[n].seconds || 0), 0) || 1;
      $("#job-phases").replaceChildren(
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "data compact phases" },
            h("caption", { class: "visually-hidden" }, "Phase timings"),
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                h("th", { scope: "col" }, "Phase"),
                h("th", { scope: "col" }, "Started"),
                h("th", { scope: "col", class: "col-finished" }, "Finished"),
                h("th", { scope: "col", class: "num" }, "Duration"),
                h("th", { scope: "col", class: "share" }, h("span", { class: "visually-hidden" }, "Share of the job")),
              ),
            ),
            h(
              "tbody",
              {},
              names.map((n) => {
                const p = job.phases[n];
                const share = h("div", { class: "share-fill" });
                share.style.width = `${Math.max(1, ((p.seconds || 0) / total) * 100)}%`;
                return h(
                  "tr",
                  {},
                  h("th", { scope: "row" }, n),
                  h("td", {}, fmtTime(p.started)),
                  h("td", { class: "col-finished" }, p.finished ? fmtTime(p.finished) : h("span", { class: "muted" }, "running")),
                  h("td", { class: "num" }, p.seconds === null ? "–" : fmtSeconds(p.seconds)),
                  h("td", { class: "share", "aria-hidden": "true" }, h("div", { class: "share-bar" }, share)),
                );
              }),
            ),
          ),
        ),
      );
    }

    function renderPlan(job) {
      const p = job.plan;
      if (!p) {
        $("#job-plan").replaceChildren(h("p", { class: "muted" }, TERMINAL.has(job.status) ? "No plan was made." : "Not planned yet."));
        return;
      }
      const counts = p.counts ? Object.entries(p.counts).map(([k, v]) => `${v} ${k === "copy" ? "copied" : k === "rename" ? "renamed" : k === "convert" ? "converted" : k}`) : [];
      const dl = h("dl", { class: "facts" });
      facts(dl, [
        ["Tensors", `${p.tensors_in} in → ${p.tensors_out} out`],
        ["Outputs by kind", counts.length ? counts.join(", ") : null],
        ["Shards", `${p.source_shards} in → ${p.output_shards} out`],
        ["Bytes", `${fmtBytes(p.bytes_in)} in → ${fmtBytes(p.bytes_out)} out`],
        ["Computed bytes", p.bytes_computed ? `${fmtBytes(p.bytes_computed)} (cast or transposed)` : "none: byte copies only"],
        ["dtype", p.dtype || null],
        ["Quantization", p.quantization ? JSON.stringify(p.quantization) : null],
        ["No-op", p.noop ? "already in the target layout" : null],
      ]);
      $("#job-plan").replaceChildren(dl);
    }

    async function renderJobRules(job) {
      const box = $("#job-rules");
      const applied = job.plan && job.plan.rules_applied;
      if (applied) {
        box.replaceChildren(
          h(
            "p",
            { class: "hint" },
            `The ${job.direction} rules of `,
            h("a", { href: ruleUrl(job.model_type) }, job.model_type),
            ` that changed this checkpoint's names or merged its tensors, in the order they apply.`,
          ),
          rulesTable(applied, job.direction, `Rules applied to this job, ${job.direction}`),
        );
        return;
      }
      const r = await apiJson(`/rules/${encodeURIComponent(job.model_type)}?direction=${job.direction}`);
      if (!r.ok) {
        box.replaceChildren(h("p", { class: "muted" }, errorText(r.body, r.status)));
        return;
      }
      box.replaceChildren(
        h(
          "p",
          { class: "hint" },
          `The ${job.direction} rules of `,
          h("a", { href: ruleUrl(job.model_type) }, job.model_type),
          " that the planner matched this checkpoint's names against, in order (the plan counts what they did).",
        ),
        rulesTable(r.body.rules, job.direction, `Rules of ${job.model_type}, ${job.direction}`),
      );
    }

    (async () => {
      const r = await apiJson(`/jobs/${encodeURIComponent(id)}`);
      if (!r.ok) {
        const box = $("#job-missing");
        box.textContent = r.status === 404 ? `There is no job ${id}.` : `Could not load the job: ${errorText(r.body, r.status)}`;
        box.hidden = false;
        setBadge(statusBadge, "unknown");
        return;
      }
      render(r.body);
      if (new URLSearchParams(location.search).get("existing")) {
        flash("The same conversion was submitted before: this is that job.");
      }
      if (!TERMINAL.has(r.body.status)) {
        await followJob(id, {
          onProgress: (p) => progress.update(p, current && current.status === "queued" ? "running" : current && current.status),
          onJob: render,
        });
      }
    })();
  }

  // --- rules tables --------------------------------------------------------------------------------------------

  function templates(list) {
    return h("div", { class: "templates" }, list.map((t) => nm(t)));
  }

  function scopeNotes(rule) {
    const notes = [];
    if (rule.scope) notes.push(`under ${rule.scope}.`);
    if (rule.when) notes.push(`when ${Object.entries(rule.when).map(([k, v]) => `${k} ∈ {${v.join(", ")}}`).join(" and ")}`);
    if (rule.note) notes.push(rule.note);
    return notes;
  }

  /** Rows for one rule: [source templates, target templates, what happens, notes]. */
  function ruleRows(rule) {
    if (rule.kind === "rename") {
      const notes = scopeNotes(rule);
      if (rule.unless) notes.push(`not when the name matches ${rule.unless.join(", ")}`);
      if (rule.reversible === false) notes.push("one-way (not reversed)");
      if (rule.index_offset) notes.push(`expert index ${rule.index_offset > 0 ? "+" : ""}${rule.index_offset}`);
      return [[[rule.source], [rule.target], "rename", notes]];
    }
    if (rule.kind === "rename_group") {
      return rule.renames.map((r, i) => [
        [r.source],
        [r.target],
        "rename (applied together, leftmost match first)",
        i === 0 ? [...scopeNotes(rule), "active when a name matches the first"] : scopeNotes(r),
      ]);
    }
    if (rule.kind === "regex_rename") {
      return [[[rule.pattern], [rule.replacement], "regex substitution", [...scopeNotes(rule), "one-way (not reversed)"]]];
    }
    if (rule.kind === "convert") {
      const what = rule.describe || (rule.ops || []).map((o) => o.op).join(", then ");
      return [[rule.sources, rule.targets, what, scopeNotes(rule)]];
    }
    return [[["?"], ["?"], JSON.stringify(rule), []]];
  }

  function rulesTable(rules, direction, caption) {
    if (!rules.length) return h("p", { class: "muted" }, "No rules: names are kept as they are.");
    const [from, to] = direction === "forward" ? ["Published name", "Model name"] : ["Model name", "Published name"];
    return h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "data stack rules" },
        h("caption", { class: "visually-hidden" }, caption),
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { scope: "col" }, from),
            h("th", { scope: "col", class: "arrow" }, h("span", { class: "visually-hidden" }, "becomes")),
            h("th", { scope: "col" }, to),
            h("th", { scope: "col" }, "What happens"),
          ),
        ),
        h(
          "tbody",
          {},
          rules.flatMap((rule) =>
            ruleRows(rule).map(([src, tgt, what, notes]) =>
              h(
                "tr",
                { class: `kind-${rule.kind}` },
                h("td", { "data-label": from }, templates(src)),
                h("td", { class: "arrow", "aria-hidden": "true" }, h("span", { class: "wide" }, "→"), h("span", { class: "narrow" }, "↓")),
                h("td", { "data-label": to }, templates(tgt)),
                h(
                  "td",
                  { "data-label": "What happens" },
                  h("span", { class: "ops-words" }, what),
                  notes.length ? h("ul", { class: "notes" }, notes.map((n) => h("li", {}, n))) : null,
                ),
              ),
            ),
          ),
        ),
      ),
    );
  }

  // --- page: rules list ----------------------------------------------------------------------------------------

  function initRules() {
    const input = $("#rules-search");
    const tbody = $("#rules-table tbody");
    input.value = new URLSearchParams(location.search).get("q") || "";
    $("#rules-search-form").addEventListener("submit", (e) => e.preventDefault());
    let rows = [];

    function render() {
      const q = input.value.trim().toLowerCase();
      const shown = rows.filter((r) => !q || r.model_type.includes(q) || r.family.toLowerCase().includes(q) || (r.alias_of || "").includes(q));
      tbody.replaceChildren(
        ...shown.map((r) =>
          h(
            "tr",
            {},
            h(
              "th",
              { scope: "row", "data-label": "Model type" },
              h("a", { href: ruleUrl(r.model_type) }, r.model_type),
              r.alias_of ? h("span", { class: "alias" }, `alias of ${r.alias_of}`) : null,
            ),
            h("td", { "data-label": "Family" }, r.family),
            h("td", { "data-label": "Renames", class: "num" }, String(r.renames)),
            h("td", { "data-label": "Converters", class: "num" }, String(r.converters)),
            h("td", { "data-label": "Ops" }, r.ops.length ? r.ops.join(", ") : h("span", { class: "muted" }, "none")),
            h("td", { "data-label": "Merges tensors" }, r.requires_tensor_merging ? "yes" : "no"),
            h(
              "td",
              { "data-label": "Conversion" },
              r.conversion === "refused"
                ? [h("span", { class: "refused" }, "refused"), h("span", { class: "reason" }, r.unsupported_reason || "")]
                : r.conversion === "none"
                  ? h("span", { class: "muted" }, "none needed")
                  : "converts",
            ),
          ),
        ),
      );
      $("#rules-count").textContent = q ? `${shown.length} of ${rows.length} model types match “${input.value.trim()}”.` : `${rows.length} model types.`;
    }

    input.addEventListener("input", () => {
      const q = input.value.trim();
      history.replaceState(null, "", q ? `?q=${encodeURIComponent(q)}` : location.pathname);
      render();
    });
    ruleList().then((data) => {
      rows = data;
      render();
    });
  }

  // --- page: one model type's rules ----------------------------------------------------------------------------

  function initRule() {
    const mt = document.body.dataset.modelType;
    const rulesets = {};

    (async () => {
      const [fwd, rev] = await Promise.all([
        apiJson(`/rules/${encodeURIComponent(mt)}`),
        apiJson(`/rules/${encodeURIComponent(mt)}?direction=reverse`),
      ]);
      if (!fwd.ok) {
        const box = $("#rule-missing");
        const d = fwd.body && fwd.body.detail;
        box.replaceChildren(
          h("p", {}, d && d.message ? d.message : errorText(fwd.body, fwd.status)),
          d && d.suggestions && d.suggestions.length
            ? h("p", {}, "Did you mean: ", d.suggestions.map((s, i) => [i ? ", " : "", h("a", { href: ruleUrl(s) }, s)]), "?")
            : null,
        );
        box.hidden = false;
        return;
      }
      const s = fwd.body;
      rulesets.forward = fwd.body.rules;
      rulesets.reverse = rev.ok ? rev.body.rules : [];
      const quant = s.quantized ? Object.entries(s.quantized).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(" or ") : v}`) : [];
      facts($("#rule-summary"), [
        ["Family", s.family],
        ["Alias of", s.alias_of ? h("a", { href: ruleUrl(s.alias_of) }, s.alias_of) : null],
        ["Rules", `${s.renames} rename${s.renames === 1 ? "" : "s"}, ${s.converters} converter${s.converters === 1 ? "" : "s"}`],
        ["Ops", s.ops.length ? s.ops.join(", ") : "none"],
        ["Merges tensors", s.requires_tensor_merging ? "yes" : "no"],
        ["Pre-quantized", quant.length ? quant.join("; ") : null],
        ["Sub-models", s.submodels && s.submodels.length ? s.submodels.map((x) => (typeof x === "string" ? x : `${x.rules_of} under ${x.path || "(root)"}${x.when ? " (when the config says so)" : ""}`)).join(", ") : null],
        ["Kept in fp32", s.keep_fp32 && s.keep_fp32.length ? s.keep_fp32.join(", ") : null],
        [
          "Conversion",
          s.conversion === "none"
            ? "none needed: transformers loads this type as published (legacy renames only)"
            : s.conversion === "refused"
              ? `refused: ${s.unsupported_reason}`
              : "converts",
        ],
      ]);
      $("#rules-forward").replaceChildren(rulesTable(rulesets.forward, "forward", `Forward rules of ${mt}`));
      $("#rules-reverse").replaceChildren(
        rev.ok ? rulesTable(rulesets.reverse, "reverse", `Inverse rules of ${mt}`) : h("p", { class: "muted" }, errorText(rev.body, rev.status)),
      );
      $("#rule-body").hidden = false;
    })();

    const converterWords = (rule, direction) => {
      if (!rule) return null;
      const key = JSON.stringify([rule.sources, rule.targets]);
      const found = (rulesets[direction] || []).find((r) => r.kind === "convert" && JSON.stringify([r.sources, r.targets]) === key);
      return (found && found.describe) || (rule.ops || []).map((o) => o.op).join(", then ");
    };

    // a pasted config.json: the rules composed for it (nested sub-models), also used by the preview
    let composeConfig = null;
    $("#compose-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const area = $("#compose-config");
      const err = $("#compose-error");
      err.hidden = true;
      area.removeAttribute("aria-invalid");
      let config;
      try {
        config = JSON.parse(area.value);
        if (!config || typeof config !== "object" || Array.isArray(config)) throw new Error("not a JSON object");
      } catch (x) {
        err.textContent = `Not a config.json: ${x.message}`;
        err.hidden = false;
        area.setAttribute("aria-invalid", "true");
        area.focus();
        return;
      }
      const r = await apiJson("/rules/resolve", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ config, model_type: mt }),
      });
      if (!r.ok) {
        err.textContent = errorText(r.body, r.status);
        err.hidden = false;
        area.setAttribute("aria-invalid", "true");
        return;
      }
      composeConfig = config;
      const nested = r.body.nested || [];
      $("#compose-result").replaceChildren(
        h(
          "p",
          {},
          nested.length
            ? ["Nested sub-models with rules of their own: ", nested.map((n, i) => [i ? ", " : "", h("code", {}, n.rules_of), " under ", h("code", {}, n.path)])]
            : "No nested sub-model brings rules of its own.",
        ),
        rulesTable(r.body.rules, "forward", `Forward rules of ${mt} for this config`),
      );
    });

    $("#preview-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const area = $("#preview-names");
      const err = $("#preview-error");
      const names = area.value.split("\n").map((s) => s.trim()).filter(Boolean);
      const direction = document.querySelector('input[name="preview-direction"]:checked').value;
      err.hidden = true;
      area.removeAttribute("aria-invalid");
      if (!names.length) {
        err.textContent = "Paste at least one tensor name.";
        err.hidden = false;
        area.setAttribute("aria-invalid", "true");
        area.focus();
        return;
      }
      const r = await apiJson(`/rules/${encodeURIComponent(mt)}/preview`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(composeConfig ? { names, direction, config: composeConfig } : { names, direction }),
      });
      if (!r.ok) {
        err.textContent = errorText(r.body, r.status);
        err.hidden = false;
        area.setAttribute("aria-invalid", "true");
        return;
      }
      $("#preview-result").replaceChildren(
        h("p", { class: "muted" }, `${r.body.data.length} name${r.body.data.length === 1 ? "" : "s"}, ${direction}:`),
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "data stack preview" },
            h("caption", { class: "visually-hidden" }, "What each name becomes"),
            h(
              "thead",
              {},
              h("tr", {}, h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "Becomes"), h("th", { scope: "col" }, "How")),
            ),
            h(
              "tbody",
              {},
              r.body.data.map((row) =>
                h(
                  "tr",
                  {},
                  h("td", { "data-label": "Name" }, nm(row.source)),
                  h("td", { "data-label": "Becomes", class: "preview-target" }, templates(row.targets)),
                  h(
                    "td",
                    { "data-label": "How" },
                    h("span", { class: `how ${row.how}` }, row.how),
                    row.rule ? h("span", { class: "ops-words" }, `: ${converterWords(row.rule, direction)}`) : null,
                  ),
                ),
              ),
            ),
          ),
        ),
      );
    });
  }

  // --- page: submit --------------------------------------------------------------------------------------------

  const FIELDS = ["source", "revision", "model_type", "direction", "dtype", "max_shard_size", "destination"];

  function initNew() {
    const form = $("#convert-form");
    fillModelTypes($("#model-types"));
    const params = new URLSearchParams(location.search);
    for (const f of ["source", "revision", "model_type"]) if (params.get(f)) $(`#${f}`).value = params.get(f);

    function destKind() {
      return form.querySelector('input[name="dest_kind"]:checked').value;
    }
    function syncDest() {
      const hub = destKind() === "hub";
      $("#destination-label").textContent = hub ? "Hub repo id (org/name)" : "Output folder (absolute path)";
      $("#destination").placeholder = hub ? "my-org/model-grouped" : "/data/out/model-grouped";
      $("#destination-hint").textContent = hub
        ? "Created when missing; the conversion is one commit (or a pull request)."
        : "Must not exist or be empty, under one of the allowed local roots.";
      $("#hub-options").hidden = !hub;
    }
    form.querySelectorAll('input[name="dest_kind"]').forEach((r) => r.addEventListener("change", syncDest));
    syncDest();

    function control(field) {
      if (field === "direction") return form.querySelector('input[name="direction"]:checked');
      return $(`#${field}`);
    }

    function clearErrors() {
      $("#form-error").hidden = true;
      for (const f of FIELDS) {
        const box = $(`#${f}-error`);
        box.hidden = true;
        box.replaceChildren();
        const c = control(f);
        if (c) c.removeAttribute("aria-invalid");
      }
    }

    function showError(field, message, suggestions) {
      const box = $(`#${field}-error`);
      if (!box) return false;
      if (box.hidden) box.replaceChildren();
      // the suggestions become buttons: drop the message's own "Did you mean: ..." list
      const text = suggestions && suggestions.length ? message.replace(/\s*Did you mean:.*$/s, "") : message;
      box.append(h("span", {}, box.childNodes.length ? ` ${text}` : text));
      if (suggestions && suggestions.length) {
        box.append(
          h(
            "span",
            { class: "suggestions" },
            " Did you mean: ",
            suggestions.map((s, i) => [
              i ? " " : "",
              h(
                "button",
                {
                  type: "button",
                  class: "button small secondary suggestion",
                  onclick: () => {
                    $(`#${field}`).value = s;
                    box.hidden = true;
                    $(`#${field}`).removeAttribute("aria-invalid");
                    $(`#${field}`).focus();
                  },
                },
                s,
              ),
            ]),
          ),
        );
      }
      box.hidden = false;
      const c = control(field);
      if (c) c.setAttribute("aria-invalid", "true");
      return true;
    }

    function formError(message) {
      const box = $("#form-error");
      box.textContent = message;
      box.hidden = false;
    }

    /** Which field a typed API error is about. */
    function fieldOf(detail) {
      const m = (detail.message || "").toLowerCase();
      if (detail.type === "UnknownModelTypeError" || /model_type/.test(m)) return "model_type";
      if (/^destination|output folder/.test(m)) return "destination";
      if (/revision/.test(m)) return "revision";
      if (/size/.test(m)) return "max_shard_size";
      if (/idempotency/.test(m)) return null;
      if (/^source|source folder/.test(m)) return "source";
      if (["SourceNotFoundError", "RepoNotFoundError", "RevisionNotFoundError", "GatedRepoError"].includes(detail.type)) return "source";
      if (detail.type === "ConflictError") return "destination";
      return null;
    }

    function focusFirstError() {
      for (const f of FIELDS) {
        if (!$(`#${f}-error`).hidden) {
          const c = control(f);
          if (c) c.focus();
          return;
        }
      }
      $("#form-error").focus();
    }

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      clearErrors();
      const source = $("#source").value.trim();
      const dest = $("#destination").value.trim();
      let bad = false;
      if (!source) bad = showError("source", "Enter a Hub repo id or an absolute folder.") || true;
      if (!dest) bad = showError("destination", destKind() === "hub" ? "Enter a Hub repo id (org/name)." : "Enter an output folder.") || true;
      if (bad) {
        focusFirstError();
        return;
      }
      const body = {
        source,
        revision: $("#revision").value.trim() || "main",
        direction: control("direction").value,
        dequantize: $("#dequantize").checked,
        max_shard_size: $("#max_shard_size").value.trim() || "5GB",
        destination:
          destKind() === "hub"
            ? { repo_id: dest, create_pr: $("#create_pr").checked, private: $("#private").checked }
            : { local_path: dest },
      };
      const mt = $("#model_type").value.trim();
      if (mt) body.model_type = mt;
      if ($("#dtype").value) body.dtype = $("#dtype").value;
      const headers = { "Content-Type": "application/json" };
      const hf = $("#hf_token").value.trim();
      if (destKind() === "hub" && hf) headers["X-HF-Token"] = hf;
      const button = $("#submit");
      button.disabled = true;
      button.textContent = "Submitting…";
      let r;
      try {
        r = await apiJson("/convert", { method: "POST", headers, body: JSON.stringify(body) });
      } catch (err) {
        r = { ok: false, status: 0, body: { detail: { type: "NetworkError", message: String(err) } } };
      }
      button.disabled = false;
      button.textContent = "Start conversion";
      if (r.ok) {
        location.assign(jobUrl(r.body.id) + (r.status === 200 ? "?existing=1" : ""));
        return;
      }
      const d = r.body && r.body.detail;
      if (Array.isArray(d)) {
        for (const item of d) {
          const loc = (item.loc || []).filter((x) => x !== "body");
          const field = FIELDS.includes(loc[0]) ? loc[0] : null;
          const msg = field === "destination" && loc.length > 2 ? `${loc.slice(2).join(".")}: ${item.msg}` : item.msg;
          if (!field || !showError(field, msg)) formError(`${loc.join(".")}: ${item.msg}`);
        }
      } else if (d && typeof d === "object") {
        const field = fieldOf(d);
        if (!field || !showError(field, d.message, d.suggestions)) formError(`${d.type}: ${d.message}`);
      } else {
        formError(`The service answered HTTP ${r.status}.`);
      }
      focusFirstError();
    });
  }

  // --- start ---------------------------------------------------------------------------------------------------

  initToken();
  const pages = { jobs: initJobs, job: initJob, rules: initRules, rule: initRule, new: initNew };
  const init = pages[document.body.dataset.page];
  if (init) init();
})();
