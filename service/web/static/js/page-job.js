/* One job's page (/ui/jobs/{id}): status, progress, request, result or error, phase timings, plan and rules,
 * kept current from the job's event stream until it is finished. */

import { ACTIVE, apiJson, errorText, followJob, TERMINAL } from "./api.js";
import { $, facts, flash, fmtBytes, fmtSeconds, fmtTime, h, nm, ruleUrl, setBadge, timeOrDash } from "./dom.js";
import { cancelJob, destText, progressView, sourceCell } from "./job-parts.js";
import { rulesTable } from "./rules-table.js";

export function init() {
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

// --- the sections of the page, each from the job alone -------------------------------------------------------

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
  const show = (which, rules, caption) =>
    box.replaceChildren(
      h("p", { class: "hint" }, `The ${job.direction} rules of `, h("a", { href: ruleUrl(job.model_type) }, job.model_type), which),
      rulesTable(rules, job.direction, caption),
    );
  const applied = job.plan && job.plan.rules_applied;
  if (applied) {
    show(
      ` that changed this checkpoint's names or merged its tensors, in the order they apply.`,
      applied,
      `Rules applied to this job, ${job.direction}`,
    );
    return;
  }
  const r = await apiJson(`/rules/${encodeURIComponent(job.model_type)}?direction=${job.direction}`);
  if (!r.ok) {
    box.replaceChildren(h("p", { class: "muted" }, errorText(r.body, r.status)));
    return;
  }
  show(
    " that the planner matched this checkpoint's names against, in order (the plan counts what they did).",
    r.body.rules,
    `Rules of ${job.model_type}, ${job.direction}`,
  );
}
