/* A model type's rules as a table of name templates (published -> model, or the inverse) with what happens in
 * words: the rule page shows every rule, the job page the ones that applied. */

import { h, nm } from "./dom.js";

/** A converter's ops in words, when the API gave no description: "stack, then concat". */
export const opsWords = (ops) => (ops || []).map((o) => o.op).join(", then ");

/** Name templates, one per line. */
export function templates(list) {
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
    const what = rule.describe || opsWords(rule.ops);
    return [[rule.sources, rule.targets, what, scopeNotes(rule)]];
  }
  return [[["?"], ["?"], JSON.stringify(rule), []]];
}

export function rulesTable(rules, direction, caption) {
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

