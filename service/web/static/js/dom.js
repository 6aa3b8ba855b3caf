/* Building the page: the h() element helper, names and paths in <code>, links into the dashboard, the formatting
 * of bytes, durations, ETAs and times, status badges, the flash line and fact lists. */

const BASE = document.body.dataset.base || "";

export const $ = (sel, root = document) => root.querySelector(sel);

/** h("a", {href: "/x", class: "y"}, "text", child) -> element. Props starting with "on" are listeners. */
export function h(tag, props, ...children) {
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
export function nm(text, cls) {
  const parts = String(text).split(/(?<=[./])/);
  const c = h("code", { class: cls || null });
  parts.forEach((part, i) => {
    if (i) c.append(h("wbr"));
    c.append(part);
  });
  return c;
}

export const url = (path) => BASE + path;
export const jobUrl = (id) => url(`/ui/jobs/${encodeURIComponent(id)}`);
export const ruleUrl = (mt) => url(`/ui/rules/${encodeURIComponent(mt)}`);

export function fmtBytes(n) {
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

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 0.001) return "<1 ms";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function fmtEta(s) {
  if (s === null || s === undefined || !isFinite(s)) return null;
  if (s < 1) return "<1 s";
  if (s < 60) return `${Math.round(s)} s`;
  return fmtSeconds(s);
}

export function fmtTime(iso) {
  if (!iso) return null;
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  const opts = { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
  const text = today
    ? d.toLocaleTimeString(undefined, opts)
    : d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", ...opts });
  return h("time", { datetime: iso, title: d.toString() }, text);
}

export const timeOrDash = (iso) => fmtTime(iso) || h("span", { class: "muted" }, "–");

export function flash(message, kind = "info") {
  const f = $("#flash");
  f.className = `flash ${kind}`;
  f.textContent = message;
}

/** Shows `message` in a field's error box and marks the field invalid; null clears both. */
export function fieldError(field, box, message) {
  box.hidden = message === null;
  if (message === null) field.removeAttribute("aria-invalid");
  else {
    box.textContent = message;
    field.setAttribute("aria-invalid", "true");
  }
}

export function badge(status) {
  return h("span", { class: `badge ${status}` }, status);
}

export function setBadge(node, status) {
  node.className = `badge ${status}`;
  node.textContent = status;
}

/** Fills a <dl> with [term, value] pairs, leaving out the empty values. */
export function facts(dl, pairs) {
  dl.replaceChildren(
    ...pairs.filter(([, v]) => v !== null && v !== undefined && v !== "").flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
  );
}

