/* The JSON API, as the dashboard calls it.
 *
 * Every API call goes through api(): it adds `Authorization: Bearer <token>` when the user gave a token, and on
 * 401/403 from the auth check asks for one (kept in sessionStorage) and retries. Job progress is read from the
 * Server-Sent Events endpoint with fetch() and a stream reader (EventSource cannot send headers), falling back
 * to polling GET /jobs/{id} when the stream fails.
 */

import { $, fieldError, flash, url } from "./dom.js";

const TOKEN_KEY = "ckpt-convert-token";
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
export const ACTIVE = new Set(["queued", "running"]);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

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

export function initToken() {
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
      fieldError(input, err, "Enter a token.");
      input.focus();
      return;
    }
    fieldError(input, err, null);
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

export async function apiJson(path, opts) {
  const r = await api(path, opts);
  const body = await r.json().catch(() => null);
  return { ok: r.ok, status: r.status, body, headers: r.headers };
}

export function errorText(body, status) {
  const d = body && body.detail;
  if (d && typeof d === "object" && !Array.isArray(d)) return `${d.type}: ${d.message}`;
  if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
  return `HTTP ${status}`;
}

// --- following a job: SSE over fetch, polling as the fallback ------------------------------------------------

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
export async function followJob(id, { onProgress, onJob, signal }) {
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

// --- the model types, fetched once per page ------------------------------------------------------------------

let ruleListPromise = null;
export function ruleList() {
  if (!ruleListPromise) ruleListPromise = apiJson("/rules").then((r) => (r.ok ? r.body.data : []));
  return ruleListPromise;
}

