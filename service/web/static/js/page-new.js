/* The new conversion page (/ui/new): the form, checked here for empty fields, then by the API, whose errors show
 * next to the field they are about (with suggestions as buttons); on success, the job's page. */

import { apiJson } from "./api.js";
import { $, h, jobUrl } from "./dom.js";
import { fillModelTypes } from "./job-parts.js";

const FIELDS = ["source", "revision", "model_type", "direction", "dtype", "max_shard_size", "destination"];

export function init() {
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

