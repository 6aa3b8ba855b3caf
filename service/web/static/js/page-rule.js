/* One model type's rules (/ui/rules/{model_type}): the summary, the rules both ways, the rules composed for a
 * pasted config.json, and a preview of what tensor names become. */

import { apiJson, errorText } from "./api.js";
import { $, facts, fieldError, h, nm, ruleUrl } from "./dom.js";
import { opsWords, rulesTable, templates } from "./rules-table.js";

export function init() {
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
    return (found && found.describe) || opsWords(rule.ops);
  };

  // a pasted config.json: the rules composed for it (nested sub-models), also used by the preview
  let composeConfig = null;
  $("#compose-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const area = $("#compose-config");
    const err = $("#compose-error");
    fieldError(area, err, null);
    let config;
    try {
      config = JSON.parse(area.value);
      if (!config || typeof config !== "object" || Array.isArray(config)) throw new Error("not a JSON object");
    } catch (x) {
      fieldError(area, err, `Not a config.json: ${x.message}`);
      area.focus();
      return;
    }
    const r = await apiJson("/rules/resolve", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ config, model_type: mt }),
    });
    if (!r.ok) {
      fieldError(area, err, errorText(r.body, r.status));
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
    fieldError(area, err, null);
    if (!names.length) {
      fieldError(area, err, "Paste at least one tensor name.");
      area.focus();
      return;
    }
    const r = await apiJson(`/rules/${encodeURIComponent(mt)}/preview`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(composeConfig ? { names, direction, config: composeConfig } : { names, direction }),
    });
    if (!r.ok) {
      fieldError(area, err, errorText(r.body, r.status));
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

