/* What the jobs list and the job page share: a job's source and destination, its progress bar, cancelling it,
 * and the model types offered in the job forms. */

import { apiJson, errorText, ruleList, TERMINAL } from "./api.js";
import { flash, fmtBytes, fmtEta, h, nm } from "./dom.js";

// --- a job's request -----------------------------------------------------------------------------------------

export function destText(d) {
  if (!d) return "–";
  if (d.local_path) return d.local_path;
  if (d.repo_id) {
    const extra = [d.create_pr && "pull request", d.private && "private"].filter(Boolean);
    return `hf://${d.repo_id}${extra.length ? ` (${extra.join(", ")})` : ""}`;
  }
  return JSON.stringify(d);
}

export function sourceCell(job) {
  const rev = job.revision && job.revision !== "local" ? `@${job.revision}` : "";
  const title = job.source_sha ? `${job.revision === "local" ? "fingerprint" : "commit"} ${job.source_sha}` : null;
  return h(
    "span",
    { title },
    nm(job.source, "path"),
    rev ? h("span", { class: "muted" }, rev) : job.revision === "local" ? h("span", { class: "muted" }, " (local)") : null,
  );
}

// --- the progress bar ----------------------------------------------------------------------------------------

/** A progress bar with its text. live: also announce milestones (every quarter, the end) to screen readers. */
export function progressView(label, live) {
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

export async function cancelJob(id, button) {
  button.disabled = true;
  const r = await apiJson(`/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
  if (r.ok) flash(`Job ${id.slice(0, 8)} cancelled.`);
  else flash(`Could not cancel job ${id.slice(0, 8)}: ${errorText(r.body, r.status)}`, "error");
  return r.ok ? r.body : null;
}

// --- model types (datalists) ---------------------------------------------------------------------------------

export async function fillModelTypes(datalist) {
  const rows = await ruleList();
  datalist.replaceChildren(...rows.map((r) => h("option", { value: r.model_type })));
}

