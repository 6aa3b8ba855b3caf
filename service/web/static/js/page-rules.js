/* The rules page (/ui/rules): every model type with a summary of its rules, searchable (the query stays in ?q=). */

import { ruleList } from "./api.js";
import { $, h, ruleUrl } from "./dom.js";

export function init() {
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

