"""The rules format as a contract (docs/rules-format.md), tested over the real API (HTTP):

* an independent loader, written from docs/rules-format.md alone (its logic uses nothing of ``converter``: it reads
  rules only as JSON from the API), maps names exactly as the service's preview does and names the same rules as
  having applied: on the names of every tiny-model oracle checkpoint (published and grouped layouts, both
  directions, with the type's own rules and with those composed for the checkpoint's config.json), on names
  generated from the templates of every model type's rules, and on the document's own worked examples;
* the same loader converts the oracle checkpoints' tensors (torch ops written from the document's op table): the
  published checkpoint gives transformers' own model-layout save bit for bit, and back;
* the JSON Schema that ``/openapi.json`` publishes for ``GET /rules``, ``GET /rules/{model_type}``,
  ``POST /rules/resolve`` and the preview validates the real responses, for every model type transformers knows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.servers import Valkey, service_env, start_api

DOC = Path(__file__).resolve().parents[1] / "docs" / "rules-format.md"


# --- the independent loader: written from docs/rules-format.md only ------------------------------------------------


class Template:
    """A name template: `^` anchor, boundary dots, dotted components (`*` = a run of decimal digits)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.anchored = text.startswith("^")
        body = text[1:] if self.anchored else text
        self.lead = body.startswith(".")
        self.trail = body.endswith(".") and len(body) > 1
        body = body[1:] if self.lead else body
        body = body[:-1] if self.trail else body
        self.parts = body.split(".") if body else []
        self.body = body

    def fill(self, indices: list[str], offset: int = 0) -> str:
        out = self.body
        for k, i in enumerate(indices):
            out = out.replace("*", str(int(i) + offset) if k == 0 and offset else i, 1)
        return out


def _digits_then(pieces: list[str], comp: str) -> list[str] | None:
    """`comp` as pieces[0] + digits + pieces[1] + digits + ... (greedy runs, backtracking); the runs or None."""
    if len(pieces) == 1:
        return [] if comp == pieces[0] else None
    if not comp.startswith(pieces[0]):
        return None
    rest = comp[len(pieces[0]) :]
    n = 0
    while n < len(rest) and rest[n].isdecimal():
        n += 1
    for take in range(n, 0, -1):
        tail = _digits_then(pieces[1:], rest[take:])
        if tail is not None:
            return [rest[:take], *tail]
    return None


def find(t: Template, name: str, scope: str = "") -> tuple[int, int, list[str]] | None:
    """The first match of `t` in `name` (under `scope`): (first component, end component, indices)."""
    comps = name.split(".")
    start = 0
    if scope:
        if not name.startswith(scope + "."):
            return None
        start = len(scope.split("."))
    k = len(t.parts)
    for i in [start] if t.anchored else range(start, len(comps) - k + 1):
        if i + k > len(comps) or (t.lead and i == 0) or (t.trail and i + k >= len(comps)):
            continue
        indices: list[str] = []
        for tp, comp in zip(t.parts, comps[i : i + k], strict=True):
            got = _digits_then(tp.split("*"), comp)
            if got is None:
                break
            indices += got
        else:
            return i, i + k, indices
    return None


def config_value(config: dict[str, Any], path: str) -> Any:
    v: Any = config
    for key in path.split("."):
        v = v.get(key) if isinstance(v, dict) else None
    return v


def applies(rule: dict[str, Any], config: dict[str, Any] | None) -> bool:
    if config is None:
        return True
    for path, allowed in (rule.get("when") or {}).items():
        v = config_value(config, path)
        if not (any(x in allowed for x in v) if isinstance(v, list) else v in allowed):
            return False
    return True


class RenameRule:
    def __init__(self, d: dict[str, Any]) -> None:
        self.source, self.target = Template(d["source"]), Template(d["target"])
        self.scope, self.offset = d.get("scope", ""), d.get("index_offset", 0)
        unless = d.get("unless", [])
        self.guards = [Template(u) for u in unless]
        own = self.target.body.replace("*", "0")
        probes = [p for p in (own, own + ".x", "x." + own + ".x") if p.strip(".")]
        if d["target"] not in unless and any(find(self.source, p) for p in probes):
            self.guards.append(Template(d["target"] if self.target.anchored else self.target.body))

    def match(self, name: str) -> tuple[int, int, list[str]] | None:
        m = find(self.source, name, self.scope)
        if m is None or any(find(g, name, self.scope) for g in self.guards):
            return None
        return m

    def replace(self, name: str, m: tuple[int, int, list[str]]) -> str:
        comps = name.split(".")
        new = self.target.fill(m[2], self.offset)
        out = comps[: m[0]] + (new.split(".") if new else []) + comps[m[1] :]
        return ".".join(out) if out else name

    def apply(self, name: str) -> str:
        m = self.match(name)
        return name if m is None else self.replace(name, m)


class GroupRule:
    def __init__(self, d: dict[str, Any]) -> None:
        self.renames = [RenameRule(r) for r in d["renames"]]

    def apply(self, name: str) -> str:
        hits = [(m[0], i, r, m) for i, r in enumerate(self.renames) if (m := r.match(name)) is not None]
        if not hits:
            return name
        _, _, r, m = min(hits, key=lambda h: h[:2])
        return r.replace(name, m)


class RegexRule:
    def __init__(self, d: dict[str, Any]) -> None:
        self.pattern, self.replacement, self.scope = d["pattern"], d["replacement"], d.get("scope", "")

    def apply(self, name: str) -> str:
        if not self.scope:
            return re.sub(self.pattern, self.replacement, name, count=1)
        head = self.scope + "."
        if not name.startswith(head):
            return name
        return head + re.sub(self.pattern, self.replacement, name[len(head) :], count=1)


class Loader:
    """A rules document applied to one checkpoint's names: `run(name)` -> (targets, how, rules that applied)."""

    def __init__(self, doc: dict[str, Any], names: list[str], config: dict[str, Any] | None = None) -> None:
        assert doc["format_version"] == "1", doc["format_version"]
        self.forward = doc["direction"] == "forward"
        kept = [(i, r) for i, r in enumerate(doc["rules"]) if applies(r, config)]
        renames = [(i, self._rename(r)) for i, r in kept if r["kind"] != "convert"]
        self.converters = [(i, r) for i, r in kept if r["kind"] == "convert"]
        self.renames: list[tuple[int, Any]] = []  # rename groups activated over the checkpoint's names
        current = list(names)
        for i, r in renames:
            if isinstance(r, GroupRule) and not any(r.renames[0].match(n) for n in current):
                continue
            self.renames.append((i, r))
            current = [r.apply(n) for n in current]

    @staticmethod
    def _rename(d: dict[str, Any]) -> Any:
        return {"rename": RenameRule, "rename_group": GroupRule, "regex_rename": RegexRule}[d["kind"]](d)

    def rename(self, name: str, fired: set[int]) -> str:
        for i, r in self.renames:
            new = r.apply(name)
            if new != name:
                fired.add(i)
                name = new
        return name

    def converter(self, name: str) -> tuple[int, dict[str, Any], str, str, int, list[str]] | None:
        """The converter that takes `name`: (position, rule, prefix, suffix, source slot, indices)."""
        for i, c in self.converters:
            for slot, s in enumerate(c["sources"]):
                m = find(Template(s), name, c.get("scope", ""))
                if m is not None:
                    comps = name.split(".")
                    prefix = ".".join(comps[: m[0]]) + "." if m[0] else ""
                    suffix = "." + ".".join(comps[m[1] :]) if m[1] < len(comps) else ""
                    return i, c, prefix, suffix, slot, m[2]
        return None

    def run(self, name: str) -> tuple[list[str], str, list[int]]:
        fired: set[int] = set()
        renamed = self.rename(name, fired) if self.forward else name
        hit = self.converter(renamed)
        if hit is None:
            out = renamed if self.forward else self.rename(name, fired)
            return [out], "copy" if out == name else "rename", sorted(fired)
        i, c, prefix, suffix, _, _ = hit
        fired.add(i)
        targets = [prefix + Template(t).body + suffix for t in c["targets"]]
        if not self.forward:
            for t in c[
                "targets"
            ]:  # per expert the names are filled, then renamed: the `*` template must agree
                for k in ("0", "3", "11"):
                    filled = prefix + Template(t).fill([k]) + suffix
                    shown = self.rename(prefix + Template(t).body + suffix, set())
                    assert self.rename(filled, set()) == shown.replace("*", k), (filled, shown)
            targets = [self.rename(t, fired) for t in targets]
        return targets, "convert", sorted(fired)

    def convert(self, tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
        """The whole conversion of a checkpoint's tensors (torch), from the document alone."""
        out: dict[str, Any] = {}
        groups: dict[tuple[int, str, str], dict[int, dict[int | None, Any]]] = {}
        for name, t in tensors.items():
            renamed = self.rename(name, set()) if self.forward else name
            hit = self.converter(renamed)
            if hit is None:
                out[renamed if self.forward else self.rename(name, set())] = t
                continue
            i, c, prefix, suffix, slot, indices = hit
            assert len(indices) <= 1
            group = groups.setdefault((i, prefix, suffix), {})
            group.setdefault(slot, {})[int(indices[0]) if indices else None] = t
        for (i, prefix, suffix), group in groups.items():
            c = dict(self.converters)[i]
            slots: list[Any] = []
            for k, s in enumerate(c["sources"]):
                found = group[k]
                slots.append([found[e] for e in range(len(found))] if "*" in s else found[None])
            for op in c["ops"]:
                slots = OPS[op["op"]](op, slots, config, c)
            assert len(slots) == len(c["targets"])
            for target, slot in zip(c["targets"], slots, strict=True):
                items = list(enumerate(slot)) if isinstance(slot, list) else [(None, slot)]
                for e, t in items:
                    name = prefix + (
                        Template(target).fill([str(e)]) if e is not None else Template(target).body
                    )
                    name += suffix
                    out[name if self.forward else self.rename(name, set())] = t
        return out


# --- its ops (torch), from the table in docs/rules-format.md#ops


def shape_value(expr: int | str, config: dict[str, Any]) -> int | None:
    if isinstance(expr, int):
        return expr
    if expr == "*":
        return None
    n = 1
    for f in expr.split("*"):
        n *= int(f) if f.isdigit() else int(attribute(f, config))
    return n


def attribute(name: str, config: dict[str, Any]) -> Any:
    text = config.get("text_config")
    return text[name] if isinstance(text, dict) and name in text else config[name]


def _each(fn):  # an op applied to each slot on its own
    return lambda op, slots, config, rule: [fn(op, s, config) for s in slots]


def _stack(op, slots, config, rule):
    import torch

    return [torch.stack(s, op["dim"]) if isinstance(s, list) else s for s in slots]


def _concat(op, slots, config, rule):
    import torch

    return [torch.cat([t for s in slots for t in (s if isinstance(s, list) else [s])], op["dim"])]


def _chunk(op, slots, config, rule):
    (t,) = slots
    n = (
        len(rule["targets"])
        if op["num_shards_attribute"] is None
        else attribute(op["num_shards_attribute"], config)
    )
    assert t.shape[op["dim"]] % n == 0
    parts = list(t.split(t.shape[op["dim"]] // n, op["dim"]))
    return parts if op["num_shards_attribute"] is None else [parts]


def _split(op, slots, config, rule):
    return list(slots[0].split([shape_value(x, config) for x in op["sizes"]], op["dim"]))


def _reorder(t, dim: int, perm: list[int]):
    import torch

    return t.index_select(dim, torch.tensor(perm))


def _interleave(op, t, config):
    n = t.shape[op["dim"]]
    half = n // 2
    if op["inverse"]:
        return _reorder(t, op["dim"], [(k % 2) * half + k // 2 for k in range(n)])
    return _reorder(t, op["dim"], [2 * (k % half) + k // half for k in range(n)])


def _transpose(op, t, config):
    swapped = list(t.shape)
    swapped[op["dim0"]], swapped[op["dim1"]] = swapped[op["dim1"]], swapped[op["dim0"]]
    if op["check_dims"]:
        want = [shape_value(x, config) for x in op["shape"]]

        def fits(shape: list[int]) -> bool:
            return len(shape) == len(want) and all(
                w is None or w == x for w, x in zip(want, shape, strict=True)
            )

        keep, flip = fits(list(t.shape)), fits(swapped)
        assert keep != flip, (list(t.shape), want)
        if keep:
            return t
    return t.transpose(op["dim0"], op["dim1"]).contiguous()


def _permute_for_rope(op, slots, config, rule):
    targets, sources = rule["targets"], rule["sources"]
    names = targets if len(slots) == len(targets) and len(targets) > 1 else sources
    assert len(names) == len(slots)
    sub = config.get(op["subconfig_key"]) if op["subconfig_key"] else None
    heads = (sub if isinstance(sub, dict) else config)["num_attention_heads"]
    out = []
    for name, t in zip(names, slots, strict=True):
        if op["permute_layer_names"] and not any(x in name for x in op["permute_layer_names"]):
            out.append(t)
            continue
        per = t.shape[0] // heads
        half = per // 2
        if op["inverse"]:
            perm = [h * per + (k % 2) * half + k // 2 for h in range(heads) for k in range(per)]
        else:
            perm = [h * per + 2 * (k % half) + k // half for h in range(heads) for k in range(per)]
        out.append(_reorder(t, 0, perm))
    return out


def _ernie_fuse(op, slots, config, rule):
    import torch

    n = len(rule["targets"])
    per_target: list[list[Any]] = [[] for _ in range(n)]
    for s in slots:
        experts = s if isinstance(s, list) else [s]
        size = -(-len(experts) // n)
        for j in range(n):
            run = experts[j * size : (j + 1) * size]
            assert run
            per_target[j].append(torch.stack(run, op["stack_dim"]))
    return [ts[0] if len(ts) == 1 else torch.cat(ts, op["concat_dim"]) for ts in per_target]


def _ernie_split(op, slots, config, rule):
    n = len(rule["targets"])
    parts = [s.split(s.shape[op["concat_dim"]] // n, op["concat_dim"]) for s in slots]
    return [[e for p in parts for e in p[j].unbind(op["stack_dim"])] for j in range(n)]


OPS = {
    "stack": _stack,
    "unstack": lambda op, slots, config, rule: [list(s.unbind(op["dim"])) for s in slots],
    "concat": _concat,
    "chunk": _chunk,
    "split": _split,
    "interleave": _each(_interleave),
    "transpose": _each(_transpose),
    "permute_for_rope": _permute_for_rope,
    "reshape": _each(lambda op, t, config: t.reshape(op["shape"])),
    "conv3d_to_linear": lambda op, slots, config, rule: [slots[0].reshape(slots[0].shape[0], -1)],
    "linear_to_conv3d": lambda op, slots, config, rule: [
        slots[0].reshape(slots[0].shape[0], op["in_channels"], *op["kernel_size"])
    ],
    "ernie_fuse_and_split_text_vision_experts": _ernie_fuse,
    "ernie_split_and_decouple_text_vision_experts": _ernie_split,
    "identity": lambda op, slots, config, rule: slots,
}


# --- the service over HTTP --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("rulesfmt")
    valkey = Valkey(root / "valkey")
    proc, url = start_api(service_env(valkey.url, root), root / "api.log")
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client
    finally:
        proc.stop()
        valkey.stop()


def fetch(api: httpx.Client, method: str, path: str, **kw: Any) -> dict[str, Any]:
    r = api.request(method, path, **kw)
    assert r.status_code == 200, (path, r.status_code, r.text[:500])
    return r.json()


def disagreements(
    api: httpx.Client,
    model_type: str,
    names: list[str],
    direction: str,
    config: dict[str, Any] | None,
    doc: dict[str, Any],
    loader_config: dict[str, Any] | None = None,
) -> list[str]:
    """Where the loader (on `doc`, evaluating `when` against `loader_config`) and the service's preview (with
    `config`) disagree on these names: outputs, how, or which rules applied (compared as rules, not positions)."""
    body: dict[str, Any] = {"names": names, "direction": direction}
    if config is not None:
        body["config"] = config
    shown = fetch(api, "POST", f"/rules/{model_type}/preview", json=body)
    loader = Loader(doc, names, loader_config)
    out = []
    for name, e in zip(names, shown["data"], strict=True):
        targets, how, fired = loader.run(name)
        want = (e["targets"], e["how"], [shown["rules"][i] for i in e["rules"]])
        got = (targets, how, [doc["rules"][i] for i in fired])
        if got != want:
            out.append(f"{model_type} {direction} {name}: loader {got[:2]}, preview {want[:2]}")
        elif how == "convert":
            conv = next(r for r in got[2] if r["kind"] == "convert")
            conv = {k: v for k, v in conv.items() if k not in ("ops_described", "describe")}  # words
            if e["rule"] != conv:
                out.append(f"{model_type} {direction} {name}: deprecated `rule` {e['rule']} is not {conv}")
        elif e["rule"] is not None:
            out.append(f"{model_type} {direction} {name}: `rule` set on a {how}")
    return out


# --- the document's worked examples ---------------------------------------------------------------------------


def doc_examples() -> list[tuple[str, str, dict[str, Any] | None, list[tuple[str, list[str]]]]]:
    out = []
    for block in re.findall(r"```names\n(.*?)```", DOC.read_text(), re.S):
        head, *lines = block.strip().splitlines()
        model_type, direction, *cfg = head.split(" ", 2)
        pairs = [(a, b.split(", ")) for a, b in (line.split(" -> ") for line in lines)]
        out.append((model_type, direction, json.loads(cfg[0]) if cfg else None, pairs))
    return out


@pytest.mark.parametrize(
    "model_type,direction,config,pairs",
    doc_examples(),
    ids=[f"{t}-{d}-{i}" for i, (t, d, _, _) in enumerate(doc_examples())],
)
def test_worked_examples_hold(api, model_type, direction, config, pairs):
    names = [n for n, _ in pairs]
    body = {"names": names, "direction": direction, **({"config": config} if config else {})}
    shown = fetch(api, "POST", f"/rules/{model_type}/preview", json=body)
    assert [e["targets"] for e in shown["data"]] == [t for _, t in pairs]
    if config is None:
        doc = fetch(api, "GET", f"/rules/{model_type}", params={"direction": direction})
    else:
        doc = fetch(api, "POST", "/rules/resolve", json={"config": config, "direction": direction})
    loader = Loader(doc, names, config)
    assert [loader.run(n)[0] for n in names] == [t for _, t in pairs]
    # GET /rules/{t} with `when` evaluated by the loader gives the same names (no sub-model composed in here)
    if config is not None and not doc["nested"]:
        plain = fetch(api, "GET", f"/rules/{model_type}", params={"direction": direction})
        assert [Loader(plain, names, config).run(n)[0] for n in names] == [t for _, t in pairs]


# --- every oracle checkpoint's names ----------------------------------------------------------------------------


class Oracle:
    """A tiny_models case saved in both layouts: ``published/`` (the Hub's) and ``grouped/`` (transformers' own
    model-layout save)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = json.loads((root / "published" / "config.json").read_text())

    def names(self, layout: str) -> list[str]:
        return sorted(
            json.loads((self.root / layout / "model.safetensors.index.json").read_text())["weight_map"]
        )

    def tensors(self, layout: str) -> dict[str, Any]:
        from safetensors.torch import load_file

        return {
            k: v for f in sorted((self.root / layout).glob("*.safetensors")) for k, v in load_file(f).items()
        }


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """case -> :class:`Oracle`, built on first use (a fraction of a second each)."""
    tm = pytest.importorskip("support.tiny_models")  # needs transformers (a dev dependency)
    built: dict[str, Oracle] = {}

    def get(case: str) -> Oracle:
        if case not in built:
            root = tmp_path_factory.mktemp(case.replace("+", "_"))
            model = tm.build_model(case)
            tm.save_published(model, root / "published")
            tm.save_grouped(model, root / "grouped")
            built[case] = Oracle(root)
        return built[case]

    return get


def _oracle_cases() -> list[str]:
    try:
        from support import tiny_models as tm
    except ImportError:
        return []
    return [*tm.MODEL_TYPES, *tm.COMPOSITES]


@pytest.mark.parametrize("case", _oracle_cases())
def test_independent_loader_agrees_on_oracle_names(api, oracle, case):
    """Both layouts, both directions; the type's own rules (GET, no config) and the rules composed for the
    checkpoint's config.json (POST /rules/resolve, preview with the config); and GET with `when` evaluated by the
    loader where the config composes nothing in."""
    ck = oracle(case)
    config = ck.config
    model_type = config["model_type"]
    supported = fetch(api, "GET", f"/rules/{model_type}")["supported"]
    problems: list[str] = []
    for layout in ("published", "grouped"):
        names = ck.names(layout)
        for direction in ("forward", "reverse"):
            plain = fetch(api, "GET", f"/rules/{model_type}", params={"direction": direction})
            problems += disagreements(api, model_type, names, direction, None, plain)
            if not supported:  # refused: /rules/resolve says 422 (the planner never converts it)
                r = api.post("/rules/resolve", json={"config": config, "direction": direction})
                assert r.status_code == 422 and r.json()["detail"]["type"] == "UnsupportedError"
                continue
            composed = fetch(api, "POST", "/rules/resolve", json={"config": config, "direction": direction})
            problems += disagreements(api, model_type, names, direction, config, composed, config)
            if not composed["nested"]:
                problems += disagreements(api, model_type, names, direction, config, plain, config)
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize("case", _oracle_cases())
def test_independent_loader_converts_oracle_checkpoints(api, oracle, case):
    """The loader converts the tensors too, from the rules JSON alone (POST /rules/resolve with the checkpoint's
    config.json): the published checkpoint forward gives transformers' own model-layout save, bit for bit, and
    that save in reverse gives the published checkpoint."""
    import torch

    ck = oracle(case)
    r = api.post("/rules/resolve", json={"config": ck.config})
    if r.status_code == 422:  # a type we refuse: nothing to convert
        assert r.json()["detail"]["type"] == "UnsupportedError"
        return
    layouts = {layout: ck.tensors(layout) for layout in ("published", "grouped")}
    for direction, src, dst in (("forward", "published", "grouped"), ("reverse", "grouped", "published")):
        doc = fetch(api, "POST", "/rules/resolve", json={"config": ck.config, "direction": direction})
        got = Loader(doc, list(layouts[src]), ck.config).convert(layouts[src], ck.config)
        want = layouts[dst]
        assert sorted(got) == sorted(want), (direction, sorted(set(got) ^ set(want))[:10])
        for name, t in want.items():
            same = got[name].dtype == t.dtype and got[name].shape == t.shape and torch.equal(got[name], t)
            assert same, (direction, name, got[name].dtype, list(got[name].shape), t.dtype, list(t.shape))


# --- names generated from every type's templates ----------------------------------------------------------------


def _templates(rule: dict[str, Any]) -> list[tuple[str, str]]:
    if rule["kind"] == "rename":
        return [(t, rule.get("scope", "")) for t in (rule["source"], rule["target"], *rule.get("unless", []))]
    if rule["kind"] == "rename_group":
        return [x for r in rule["renames"] for x in _templates(r)]
    if rule["kind"] == "convert":
        return [(t, rule.get("scope", "")) for t in (*rule["sources"], *rule["targets"])]
    return []


def names_from(docs: list[dict[str, Any]]) -> list[str]:
    """Tensor names the templates of these documents are written for: each template filled (indices 0, 1, 11),
    under its scope, at the start of a name and inside one, followed by a parameter name and bare."""
    out: set[str] = set()
    for doc in docs:
        for rule in doc["rules"]:
            for text, scope in _templates(rule):
                t = Template(text)
                for k in ("0", "1", "11"):
                    body = t.fill([k] * text.count("*"))
                    heads = (
                        [""]
                        if t.anchored
                        else ["x.", "model.layers.2."]
                        if t.lead
                        else ["", "model.layers.2."]
                    )
                    tails = [".weight"] if t.trail else ["", ".weight"]
                    for h in heads:
                        for tail in tails:
                            name = (scope + "." if scope else "") + h + body + tail
                            if "" not in name.split("."):  # a tensor name: no empty component
                                out.add(name)
            if rule["kind"] == "rename_group":  # a later rename of the group matching left of an earlier one
                for a, b in zip(rule["renames"][1:], rule["renames"], strict=False):
                    scope = a.get("scope", "")
                    pair = Template(a["source"]).fill(["1"] * 9) + "." + Template(b["source"]).fill(["2"] * 9)
                    out.add((scope + "." if scope else "") + pair)
    return sorted(out)


def test_independent_loader_agrees_on_every_types_template_names(api):
    """Every model type transformers knows (types with identical rules checked once), both directions, on names
    generated from the templates of its forward and reverse rules, as one checkpoint (so its rename groups are
    active) and, for a type with rename groups, as one without the names that would activate them."""
    types = [row["model_type"] for row in fetch(api, "GET", "/rules")["data"]]
    assert len(types) > 800
    seen: set[str] = set()
    problems: list[str] = []
    checked = 0
    for t in types:
        docs = [fetch(api, "GET", f"/rules/{t}", params={"direction": d}) for d in ("forward", "reverse")]
        sig = json.dumps([d["rules"] for d in docs], sort_keys=True)
        if sig in seen:
            continue
        seen.add(sig)
        names = names_from(docs)
        for doc in docs:
            problems += disagreements(api, t, names, doc["direction"], None, doc)
            checked += len(names)
            # and as a checkpoint without the names that activate its rename groups
            firsts = [
                Template(r["renames"][0]["source"]) for r in doc["rules"] if r["kind"] == "rename_group"
            ]
            if firsts:
                rest = [n for n in names if not any(find(f, n) for f in firsts)]
                problems += disagreements(api, t, rest, doc["direction"], None, doc)
                checked += len(rest)
    assert not problems, "\n".join(problems[:20])
    assert len(seen) >= 100 and checked > 20_000, (len(seen), checked)


# --- the JSON Schema in /openapi.json against real responses ------------------------------------------------------


@pytest.fixture(scope="module")
def schemas(api):
    """A validator per (path, method): the 200 response schema `/openapi.json` publishes, its `$ref`s resolved
    within the document."""
    from jsonschema import Draft202012Validator

    spec = fetch(api, "GET", "/openapi.json")

    def validator(path: str, method: str, status: str = "200") -> Draft202012Validator:
        schema = spec["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        root = {"$schema": "https://json-schema.org/draft/2020-12/schema", "components": spec["components"]}
        return Draft202012Validator({**root, **schema})

    return validator


def _valid(v, doc: Any) -> None:
    errors = sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors[:5]]


def test_rules_schema_validates_every_types_rules(api, schemas):
    v_list, v_doc = schemas("/rules", "get"), schemas("/rules/{model_type}", "get")
    listing = fetch(api, "GET", "/rules")
    _valid(v_list, listing)
    _valid(v_list, fetch(api, "GET", "/rules", params={"q": "moe"}))
    assert listing["count"] == len(listing["data"]) > 800 and listing["format_version"] == "1"
    for row in listing["data"]:
        for direction in ("forward", "reverse"):
            doc = fetch(api, "GET", f"/rules/{row['model_type']}", params={"direction": direction})
            _valid(v_doc, doc)
            assert {k: doc[k] for k in row} == row  # the summary is the listing's row


def test_schema_validates_resolve_preview_and_errors(api, schemas, oracle):
    v_resolve, v_preview = schemas("/rules/resolve", "post"), schemas("/rules/{model_type}/preview", "post")
    v_error = schemas("/rules/{model_type}", "get", "404")
    for case in _oracle_cases():
        ck = oracle(case)
        config = ck.config
        for direction in ("forward", "reverse"):
            r = api.post("/rules/resolve", json={"config": config, "direction": direction})
            if r.status_code == 200:
                _valid(v_resolve, r.json())
            body = {"names": ck.names("published"), "direction": direction, "config": config}
            _valid(v_preview, fetch(api, "POST", f"/rules/{config['model_type']}/preview", json=body))
    r = api.get("/rules/mixtrall")
    assert r.status_code == 404
    _valid(v_error, r.json())


def test_schema_is_strict(api, schemas):
    """The schema is not vacuous: an unknown rule kind, op, field, or a malformed template or shape is invalid."""
    v = schemas("/rules/{model_type}", "get")
    good = fetch(api, "GET", "/rules/qwen3_vl_moe")
    _valid(v, good)
    conv = next(i for i, r in enumerate(good["rules"]) if r["kind"] == "convert")
    transpose = next(
        (i, j) for i, r in enumerate(good["rules"]) if r["kind"] == "convert"
        for j, o in enumerate(r["ops"]) if o["op"] == "transpose" and o["check_dims"]
    )  # fmt: skip

    def bad(edit) -> bool:
        doc = json.loads(json.dumps(good))
        edit(doc)
        return not v.is_valid(doc)

    assert bad(lambda d: d["rules"][0].update(kind="rename_all"))
    assert bad(lambda d: d["rules"][0].update(priority=1))
    assert bad(lambda d: d["rules"][0].update(source="a..b"))
    assert bad(lambda d: d["rules"][0].update(source="^.a"))
    assert bad(lambda d: d["rules"][conv]["ops"][0].update(op="shuffle"))
    assert bad(lambda d: d["rules"][conv]["ops"].clear())
    assert bad(lambda d: d["rules"][transpose[0]]["ops"][transpose[1]]["shape"].append("2*"))
    assert bad(lambda d: d.update(format_version="2"))
    assert bad(lambda d: d.pop("direction"))
