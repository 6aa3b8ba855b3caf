"""A drop-in for NeMo AutoModel 0.7's ``nemo_automodel.components.checkpoint.conversion_mapping``, built on our rules.

Swap it in before NeMo's checkpointing is imported::

    import sys, converter.conversion_mapping
    sys.modules["nemo_automodel.components.checkpoint.conversion_mapping"] = converter.conversion_mapping

Same names, signatures and return types as NeMo's module. With transformers installed, the rule lists are
transformers 5.23's own ``WeightRenaming`` / ``WeightConverter`` objects built from our rules
(:func:`~converter.rules.to_transformers.to_transformers`), so NeMo's and transformers' consumers take them as they
are; without transformers they are our rule objects (``Rename``, ``Convert``, ...), where NeMo returns ``None`` or
``[]``. ``docs/nemo.md`` lists every answer that differs from NeMo's, and why (transformers 5.23 is the authority).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UnsupportedError
from .rules import LEGACY, REGISTRY, SUBMODELS, rules_for
from .rules.core import Convert, RegexRename, Rename, RenameGroup, Rule, fill_stars, search
from .rules.quantization import fp8_renames
from .rules.tables import known_model_types
from .rules.to_transformers import END, GAP, GAP1, guard_regex, rename_regex, to_transformers

#: model types whose checkpoints need tensor ops (stacking experts, concatenating, transposing), not only renames:
#: derived from the rules (nested sub-models' included), so it agrees with transformers where NeMo's hand-written
#: list does not (see docs/nemo.md). A set, as NeMo's, read by :func:`requires_tensor_merging`.
MODELS_REQUIRING_TENSOR_MERGING: set[str] = {t for t, e in REGISTRY.items() if e.requires_tensor_ops}

#: NeMo's hand-written first-match key mappings for VLMs, verbatim (for gemma3 they give transformers' names)
_VLM_KEY_MAPPINGS: dict[str, dict[str, str]] = {
    "gemma3": {
        r"^language_model\.model\.": "model.language_model.",
        r"^vision_tower\.vision_model\.": "model.vision_tower.",
        r"^vision_tower\.": "model.vision_tower.",
        r"^multi_modal_projector\.": "model.multi_modal_projector.",
        r"^language_model\.lm_head\.": "lm_head.",
    },
}
VLM_KEY_MAPPINGS = _VLM_KEY_MAPPINGS


# --- transformers, optional ----------------------------------------------------------------------------------------


@functools.cache
def _transformers() -> tuple[Any, Any] | None:
    """``(WeightConverter, WeightRenaming)`` when transformers' conversion API imports (NeMo's test), else None."""
    try:
        from transformers.conversion_mapping import (  # noqa: F401
            get_checkpoint_conversion_mapping,
            get_model_conversion_mapping,
        )
        from transformers.core_model_loading import WeightConverter, WeightRenaming
    except ImportError:
        return None
    return WeightConverter, WeightRenaming


def __getattr__(name: str) -> Any:
    # NeMo's module-level names, resolved on first use so that importing converter never imports transformers
    if name == "_TRANSFORMERS_AVAILABLE":
        return _transformers() is not None
    if name in ("WeightConverter", "WeightRenaming"):
        found = _transformers()
        return None if found is None else found[name == "WeightRenaming"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_transformers_conversion_available() -> bool:
    """``is_transformers_conversion_available()`` -> True when transformers' conversion API imports."""
    return _transformers() is not None


# --- the API -------------------------------------------------------------------------------------------------------


def requires_tensor_merging(model_type: str) -> bool:
    """``requires_tensor_merging("mixtral")`` -> True; ``("granitemoe")`` -> False (renames only)."""
    return model_type in MODELS_REQUIRING_TENSOR_MERGING


def get_checkpoint_conversion_mapping(model_type: str) -> list[Any] | None:
    """The rules transformers keys by ``model_type`` (or class name, or ``"legacy"``), a new list each call.

    >>> get_checkpoint_conversion_mapping("mixtral")                         # doctest: +SKIP
    [WeightRenaming(...block_sparse_moe...), WeightConverter(...), WeightConverter(...)]
    >>> get_checkpoint_conversion_mapping("qwen2_vl") is None                # keyed by class in transformers
    True
    """
    rules = _registered_rules(model_type)
    if rules is None:
        return None
    return to_transformers(rules) if is_transformers_conversion_available() else list(rules)


def get_model_conversion_mapping(
    model: Any,
    key_mapping: Mapping[str, str] | None = None,
    hf_quantizer: Any = None,
    add_legacy: bool = True,
) -> list[Any]:
    """All rules for a model, in transformers' order: ``key_mapping``, the model's (nested sub-models' scoped to
    their module paths), the legacy renames, then the quantizer's changes.

    >>> get_model_conversion_mapping(MixtralForCausalLM(config))            # doctest: +SKIP
    [WeightRenaming(...), WeightConverter(...), ..., WeightRenaming(...LayerNorm.gamma...)]

    ``model``: a transformers model (or NeMo's), its config, a ``config.json`` dict, or a path to one (or its
    folder). ``hf_quantizer``: a transformers quantizer (with a model: its ``update_weight_conversions``), or a
    ``quantization_config`` (FP8 / MXFP4).
    """
    config, module = _config_and_model(model)
    quantizer_object = (
        hf_quantizer is not None
        and module is not None
        and hasattr(hf_quantizer, "update_weight_conversions")
        and is_transformers_conversion_available()
    )
    method, dequantize = (None, False) if quantizer_object else _quantizer(hf_quantizer)
    rules = _our_rules_for_config(
        str(config.get("model_type") or ""),
        config,
        key_mapping=key_mapping,
        add_legacy=add_legacy,
        fp8=method == "fp8",
        fp8_scales=method == "fp8" and not dequantize,
    )
    if not is_transformers_conversion_available():
        return rules
    out = to_transformers(rules, base_model_prefix=getattr(module, "base_model_prefix", None))
    if quantizer_object:
        out = hf_quantizer.update_weight_conversions(out, module)
    return out


def get_combined_key_mapping(
    model_type: str,
    model_key_mapping: Mapping[str, str] | None = None,
    *,
    model: Any = None,
) -> dict[str, str] | Callable[[str], str] | None:
    """The renames of ``model_type`` as NeMo's key mapping: a ``{regex: replacement}`` dict applied first-match
    (NeMo's ``_get_key_renaming_mapping``), a callable when ``model`` has nested sub-models with renames of their
    own, or None when there are no renames.

    >>> get_combined_key_mapping("qwen2_moe") is None                        # converters only
    True
    >>> km = get_combined_key_mapping("llava")
    >>> _get_key_renaming_mapping("language_model.model.layers.0.mlp.up_proj.weight", km)   # doctest: +SKIP
    'model.language_model.layers.0.mlp.up_proj.weight'

    A name already in the model layout is left unchanged. ``model_key_mapping`` entries come first and win.
    transformers' legacy renames (``LayerNorm.gamma``, ...) are not included, as in NeMo.
    For types that need tensor merging NeMo hands the dict to transformers as ``key_mapping``, ahead of
    transformers' own rules; there our entries match nothing (:data:`SKIP_IN_TRANSFORMERS`), so every key is
    renamed once, by transformers.
    """
    if model_type in _VLM_KEY_MAPPINGS:
        return dict(_VLM_KEY_MAPPINGS[model_type])
    config = _config_and_model(model)[0] if model is not None else None
    rules = _our_rules_for_config(model_type, config, add_legacy=False)  # as NeMo: the type's own renames
    renames = tuple(r for r in rules if not isinstance(r, Convert))
    if model is not None and any(_scope_of(r) for r in renames):
        return ChainRenamer(dict(model_key_mapping or {}), renames)
    examples = _model_examples(model, rules) if model is not None else ()
    result: dict[str, str] = dict(model_key_mapping or {})
    for pattern, replacement in first_match_entries(renames, examples):
        result.setdefault(pattern, replacement)
    return result or None


# --- our rules -----------------------------------------------------------------------------------------------------


def _registered_rules(key: str) -> tuple[Rule, ...] | None:
    """transformers' entry ``key`` as our rules: a model type's own rules, a class's, or the legacy renames."""
    if key == "legacy":
        return tuple(LEGACY)
    if key in SUBMODELS:
        return SUBMODELS[key].rules
    entry = REGISTRY.get(key)
    return entry.root_rules if entry is not None and entry.root_rules else None


def _our_rules_for_config(
    model_type: str,
    config: Mapping[str, Any] | None,
    *,
    key_mapping: Mapping[str, str] | None = None,
    add_legacy: bool = True,
    fp8: bool = False,
    fp8_scales: bool = False,
) -> list[Rule]:
    """The one place that turns a model type and its config into our rule list (renames, then converters): the
    type's rules with its nested sub-models' composed (conditions checked against ``config``; None = unknown,
    every rule applies), the caller's ``key_mapping`` first, the legacy renames last. A type we do not know gets
    only ``key_mapping`` and the legacy renames, as in transformers."""
    prepend = fp8_renames(()) if fp8 else ()
    if model_type in REGISTRY or model_type in known_model_types():
        rs = rules_for(
            model_type,
            config=config,
            add_legacy=add_legacy,
            key_mapping=key_mapping,
            prepend=prepend,
            fp8_scales=fp8_scales,
        )
        return list(rs.rules)
    rules: list[Rule] = [*prepend, *(RegexRename(k, v) for k, v in (key_mapping or {}).items())]
    return rules + (list(LEGACY) if add_legacy else [])


def _config_and_model(model_or_config: Any) -> tuple[dict[str, Any], Any]:
    """(config dict, the model or None) from a transformers model, a config, a dict or a config.json path."""
    if isinstance(model_or_config, Mapping):
        return dict(model_or_config), None
    if isinstance(model_or_config, (str, os.PathLike)):
        p = Path(model_or_config)
        if p.is_dir():
            p = p / "config.json"
        return json.loads(p.read_text()), None
    config = getattr(model_or_config, "config", None)
    module = model_or_config if config is not None else None
    config = model_or_config if config is None else config
    if hasattr(config, "to_dict"):
        return config.to_dict(), module
    raise TypeError(
        f"expected a transformers model or config, a config dict or a config.json path, not {model_or_config!r}"
    )


def _quantizer(hf_quantizer: Any) -> tuple[str | None, bool]:
    """(quant_method, dequantize) of a transformers quantizer (or its config, or a quantization_config dict)."""
    if hf_quantizer is None:
        return None, False
    qc = getattr(hf_quantizer, "quantization_config", hf_quantizer)
    get = qc.get if isinstance(qc, Mapping) else lambda k, d=None: getattr(qc, k, d)
    method = get("quant_method")
    method = getattr(method, "value", method)
    if method not in ("fp8", "mxfp4"):
        raise UnsupportedError(f"pre-quantized {method!r} checkpoints are not supported (fp8, mxfp4 are)")
    return str(method), bool(get("dequantize", False))


def _scope_of(rule: Rule) -> str:
    if isinstance(rule, RenameGroup):
        return next((r.scope for r in rule.renames if r.scope), "")
    return getattr(rule, "scope", "")


# --- key renaming ----------------------------------------------------------------------------------------------


class ChainRenamer:
    """NeMo's callable key mapping: ``model_key_mapping`` first-match, then every rename in order (chained, as
    transformers applies them). A rename group applies once a name has matched its first source, as transformers'
    ``GroupWeightRename`` does while loading keys in order."""

    def __init__(self, first: Mapping[str, str], renames: Iterable[Rule]) -> None:
        self.first = dict(first)
        self.renames = tuple(renames)
        self._active: set[int] = set()

    def __call__(self, key: str) -> str:
        for pattern, replacement in self.first.items():
            key, n = re.subn(pattern, replacement, key)
            if n:
                break
        for i, r in enumerate(self.renames):
            if isinstance(r, RenameGroup) and i not in self._active:
                if not r.guard_matches(key):
                    continue
                self._active.add(i)
            key = r.apply(key)  # type: ignore[union-attr]
        return key

    def __repr__(self) -> str:
        return f"ChainRenamer({len(self.renames)} renames)"


#: transformers rewrites ``*.`` in a ``key_mapping`` pattern to ``.*\.``; this look-ahead, always true as written,
#: then needs a NUL character and never holds. NeMo hands the dict to transformers as ``key_mapping`` for types
#: that need tensor merging, where transformers renames every key with its own rules right after: renaming them
#: twice would break the names its renames do not leave alone (axk1, laguna, mistral_large4, ...).
SKIP_IN_TRANSFORMERS = r"(?=\x00*.)"

_MARK = "\u00a7"  # placeholder components in witness names; never part of a name template
_TAIL = _MARK + "t"
_INDEX_BASE = 7001  # witness indices: 7001, 7002, ... (mapped back to groups)


@dataclass(frozen=True)
class _Entry:
    pattern: str
    replacement: str
    fired: tuple[int, ...]
    witness: tuple[str, ...]


def _chain(renames: Sequence[Rule], name: str) -> tuple[str, tuple[int, ...]]:
    fired = []
    for i, r in enumerate(renames):
        new = r.apply(name)  # type: ignore[union-attr]
        if new != name:
            fired.append(i)
        name = new
    return name, tuple(fired)


@functools.lru_cache(maxsize=256)
def first_match_entries(
    renames: tuple[Rule, ...], examples: tuple[tuple[str, ...], ...] = ()
) -> tuple[tuple[str, str], ...]:
    """A rename chain as ``(regex, replacement)`` pairs for first-match renaming (``re.subn`` with the first regex
    that matches, NeMo's ``_get_key_renaming_mapping``), in order.

    The chain is compiled from example names: every rename's source in its place (under its scope, after any
    name parts, or at the start), and the names that only become its source through the renames before it
    (found by undoing those). Each example is run through the chain and generalised (the name parts around the
    sources become groups, indices ``(\\d+)``), checked on variations, and the first rename's conditions become
    look-aheads. Entries for combinations (a wrapper prefix renamed twice, ``attention.dense`` -> ``self_attn.o_proj``)
    come before single renames. Names that need two renames of unrelated parts (an inner module under a renamed
    prefix) are renamed by the first only, unless ``examples`` (published names split in parts, e.g. a model's
    own, see :func:`get_combined_key_mapping`) contain them: each example's combination gets an entry too.
    """
    witnesses: list[tuple[int, tuple[str, ...]]] = []
    raw: list[tuple[int, str, str]] = []
    for j, r in enumerate(renames):
        if isinstance(r, RegexRename):
            if not r.scope:
                raw.append((j, r.pattern, r.replacement))
            continue
        members = r.renames if isinstance(r, RenameGroup) else (r,) if isinstance(r, Rename) else ()
        for m in members:
            if m.index_offset:
                continue  # an index offset is no regex substitution
            if not _template_parts(m.source) and not m.scope:  # "^" -> "^x": a prefix for every name
                rx = rename_regex(m)
                raw.append((j, rx.pattern, rx.replacement))
                continue
            for w in _single_witnesses(m):
                witnesses.append((j, w))
                pre = _preimage(renames[:j], w)
                if pre is not None:
                    witnesses.append((j, pre))
    witnesses += [(-1, w) for w in _overlap_witnesses(renames)]
    witnesses += [(-1, e) for e in examples]
    entries: dict[str, _Entry] = {}
    for _, w in witnesses:
        e = _generalise(renames, w)
        if e is not None and e.pattern not in entries:
            entries[e.pattern] = e
    ordered = sorted(entries.values(), key=lambda e: (e.fired[0], -len(e.fired)))
    ordered = _drop_redundant(renames, ordered)
    merged = [(e.fired[0], "^" + SKIP_IN_TRANSFORMERS + e.pattern[1:], e.replacement) for e in ordered]
    merged += [(j, SKIP_IN_TRANSFORMERS + p, rep) for j, p, rep in raw]
    merged.sort(key=lambda x: x[0])  # stable: a raw regex rename takes its place in the chain
    return tuple((p, rep) for _, p, rep in merged)


def _single_witnesses(rule: Rename) -> list[tuple[str, ...]]:
    """Example names for one rename: its source (indices numbered) under its scope, after a placeholder name
    part unless anchored, and at the start too when it may be there; a placeholder tail after it."""
    counter = iter(range(_INDEX_BASE, _INDEX_BASE + 100))
    body = rule.source.lstrip("^").strip(".")
    src = [p.replace("*", str(next(counter))) for p in body.split(".")] if body else []
    scope = rule.scope.split(".") if rule.scope else []
    anchored = rule.source.startswith("^")
    inner = rule.source.lstrip("^").startswith(".")
    out = []
    if anchored:
        out.append((*scope, *src, _TAIL))
    else:
        out.append((*scope, _MARK + "g0", *src, _TAIL))
        if not inner:
            out.append((*scope, *src, _TAIL))
    return [w for w in out if len(w) > 1]


def _members(renames: Sequence[Rule]) -> list[tuple[int, Rename]]:
    out = []
    for j, r in enumerate(renames):
        for m in r.renames if isinstance(r, RenameGroup) else (r,) if isinstance(r, Rename) else ():
            if not m.index_offset:
                out.append((j, m))
    return out


def _overlap_witnesses(renames: Sequence[Rule]) -> list[tuple[str, ...]]:
    """Names where a later rename's source overlaps the end (or the start) of an earlier rename's target and
    reaches past it into the name (``attn.k_sconv.weight``: ``attn.k_sconv`` -> ``self_attn.k_sconv``, then
    ``k_sconv.weight`` -> ``k_sconv.conv1d.weight``): the earlier source with the rest of the later one."""
    out = []
    members = _members(renames)
    for ja, a in members:
        tgt = _template_parts(a.target)
        for jb, b in members:
            if jb <= ja or (b.scope and b.scope != a.scope):
                continue
            src = _template_parts(b.source)
            for k in range(1, min(len(tgt), len(src) - 1) + 1):
                for w in _single_witnesses(a):
                    counter = iter(range(_INDEX_BASE + 50, _INDEX_BASE + 100))
                    if _same_parts(tgt[-k:], src[:k]):  # b reaches past the end of a's target
                        extra = [p.replace("*", str(next(counter))) for p in src[k:]]
                        out.append((*w[:-1], *extra, w[-1]))
                    if _same_parts(tgt[:k], src[-k:]) and not a.source.startswith("^"):  # past its start
                        extra = [p.replace("*", str(next(counter))) for p in src[:-k]]
                        at = 1 + (len(a.scope.split(".")) if a.scope else 0) if w[0].startswith(_MARK) else 0
                        out.append((*w[:at], *extra, *w[at:]))
    return out


def _template_parts(template: str) -> list[str]:
    body = template.lstrip("^").strip(".")
    return body.split(".") if body else []


def _same_parts(a: Sequence[str], b: Sequence[str]) -> bool:
    return len(a) == len(b) and all(x == y or "*" in x and "*" in y for x, y in zip(a, b, strict=True))


def _model_examples(model: Any, rules: Sequence[Rule]) -> tuple[tuple[str, ...], ...]:
    """The published form of ``model``'s parameter names, where it differs: a converter's target undone into
    its sources (``experts.gate_up_proj`` -> ``experts.7050.gate_proj.weight``, ...), then each rename undone,
    last first. Once with the indices as they are and once numbered to generalise (``layers.7001``), one name
    per layout."""
    try:
        keys = list(model.state_dict())
    except Exception:  # noqa: BLE001 - not a torch module after all: no examples
        return ()
    renames = [r for r in rules if isinstance(r, (Rename, RenameGroup)) and r.reversible]
    converters = [r for r in rules if isinstance(r, Convert)]
    undo = [r.reversed() for r in reversed(renames)]
    seen: set[str] = set()
    out: set[tuple[str, ...]] = set()
    for key in keys:
        counter = iter(range(_INDEX_BASE, _INDEX_BASE + 50))
        abstract = ".".join(str(next(counter)) if c.isdigit() else c for c in key.split("."))
        if abstract in seen:
            continue
        seen.add(abstract)
        for name in (key, abstract):
            for unconverted in _unconverted(name, converters):
                published = unconverted
                for r in undo:
                    published = r.apply(published)
                if published != name:
                    out.add(tuple(published.split(".")))
    return tuple(sorted(out))


def _unconverted(name: str, converters: Sequence[Convert]) -> list[str]:
    """``name`` and, where a converter's target matches it, the names of that converter's sources."""
    out = [name]
    for c in converters:
        for target in c.targets:
            m = search(target, name, c.scope)
            if m is None:
                continue
            for source in c.sources:
                filled = fill_stars(source, [str(_INDEX_BASE + 50 + i) for i in range(source.count("*"))])
                out.append(name[: m.start()] + filled + name[m.end() :])
    return out


def _preimage(before: Sequence[Rule], witness: tuple[str, ...]) -> tuple[str, ...] | None:
    """The name the renames ``before`` turn into ``witness`` (each undone, last first), if it differs."""
    name = ".".join(witness)
    x = name
    for r in reversed(before):
        if isinstance(r, RegexRename):
            continue
        try:
            x = r.reversed().apply(x)  # type: ignore[union-attr]
        except ValueError:
            continue
    return tuple(x.split(".")) if x != name else None


def _is_index(text: str) -> bool:
    return text.isdigit() and _INDEX_BASE <= int(text) < _INDEX_BASE + 100


def _generalise(renames: Sequence[Rule], witness: tuple[str, ...]) -> _Entry | None:
    out, fired = _chain(renames, ".".join(witness))
    if not fired:
        return None
    comps, ocomps = list(witness), out.split(".")
    if comps[-1] == _TAIL:
        if ocomps[-1] != _TAIL or ocomps.count(_TAIL) != 1:
            return None
        comps, ocomps = comps[:-1], ocomps[:-1]
    if not comps:
        return None
    groups: dict[str, int] = {}
    pieces: list[str] = []
    for k, c in enumerate(comps):
        if c.startswith(_MARK):
            groups[c] = len(groups) + 1
            pieces.append(f"({GAP})")
            continue
        piece = ""
        for text in _INDICES.split(c):
            if _is_index(text) and text in groups:
                piece += f"(?P={_group_name(groups[text])})"
            elif _is_index(text):
                groups[text] = len(groups) + 1
                piece += f"(?P<{_group_name(groups[text])}>\\d+)"
            else:
                piece += re.escape(text)
        pieces.append(piece)
        if k < len(comps) - 1:
            pieces.append(r"\.")
    rep = ""
    for k, c in enumerate(ocomps):
        if c.startswith(_MARK):
            if c not in groups:
                return None
            rep += f"\\g<{groups[c]}>"
            continue  # a gap group carries its own dots
        for text in _INDICES.split(c):
            if _is_index(text):
                if text not in groups:
                    return None
                rep += f"\\g<{groups[text]}>"
            elif _MARK in text:
                return None
            else:
                rep += text
        if k < len(ocomps) - 1:
            rep += "."
    first = renames[fired[0]]
    guards = "".join(guard_regex(g) for g in getattr(first, "_guards", ()))
    scope_n = len(first.scope.split(".")) if isinstance(first, Rename) and first.scope else 0
    head = "".join(pieces[: 2 * scope_n])  # the scope's parts and dots come first
    # nothing (or a placeholder, which ends with its dot) left before the tail: the dot before the tail goes too
    drop_dot = witness[-1] == _TAIL and (not rep or rep.endswith(">") and ocomps[-1].startswith(_MARK))
    end = r"\." if drop_dot else END
    pattern = "^" + head + guards + "".join(pieces[2 * scope_n :]) + end
    entry = _Entry(pattern, _plain_refs(rep), fired, witness)
    return _checked(renames, entry, comps, groups, needs_tail=drop_dot)


_INDICES = re.compile(r"(?<![0-9])(7[0-9]{3})(?![0-9])")


def _group_name(n: int) -> str:
    return f"i{n}"


def _plain_refs(replacement: str) -> str:
    r"""``\g<1>`` -> ``\1`` where no digit follows (easier to read)."""
    return re.sub(r"\\g<(\d+)>(?![0-9])", r"\\\1", replacement)


def _instances(comps: Sequence[str], fills: Mapping[str, str]) -> str:
    parts = [_INDICES.sub(lambda m: fills.get(m.group(1), m.group(1)), fills.get(c, c)) for c in comps]
    return ".".join(p for p in parts if p)


def _checked(
    renames: Sequence[Rule], entry: _Entry, comps: list[str], groups: dict[str, int], *, needs_tail: bool
) -> _Entry | None:
    """``entry`` if it renames like the chain on variations of its example (placeholder name parts left out or
    doubled, other indices, a tail or none) where it matches, and matches where the chain fires the same renames
    (other combinations are other entries'). Where the chain needs more: a placeholder that must not be empty
    becomes ``(?:[^.]+\\.)+?``, a source that must not end the name gets ``(?=\\.)``."""
    gaps = [c for c in comps if c.startswith(_MARK)]
    indices = [c for c in groups if not c.startswith(_MARK)]

    def failures(pattern: str) -> list[tuple[str | None, str]]:
        out = []
        for empty in (None, *gaps):
            for filler in ("qa", "qa.qb"):
                for tail in ("", ".qt", ".qt.qu")[needs_tail:]:
                    fills = {g: ("" if g == empty else filler) for g in gaps}
                    fills.update({d: str(3 + 9 * k) for k, d in enumerate(indices)})
                    name = _instances(comps, fills) + tail
                    want, fired = _chain(renames, name)
                    got, n = re.subn(pattern, entry.replacement, name)
                    # wrong where it matches, or missing where the chain does what the entry is for
                    if (n and got != want) or (not n and fired == entry.fired):
                        out.append((empty, tail))
        return out

    pattern = entry.pattern
    failed = failures(pattern)
    whole = [tail for empty, tail in failed if empty is None]
    if whole and all(tail == "" for tail in whole) and pattern.endswith(END):
        pattern = pattern[: -len(END)] + r"(?=\.)"
        failed = failures(pattern)
    if failed and all(empty is not None for empty, _ in failed):
        for gap in {empty for empty, _ in failed}:
            pattern = _nth_group_nonempty(pattern, groups[str(gap)])
        failed = failures(pattern)
    return None if failed else _Entry(pattern, entry.replacement, entry.fired, entry.witness)


def _nth_group_nonempty(pattern: str, n: int) -> str:
    """Make the ``n``-th placeholder group need at least one name part."""
    count = 0

    def repl(m: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"({GAP1})" if count == n else m.group(0)

    forms = (f"({GAP})", f"({GAP1})", r"(?P<i")
    return re.sub("|".join(re.escape(f) for f in forms), repl, pattern)


def _drop_redundant(renames: Sequence[Rule], entries: list[_Entry]) -> list[_Entry]:
    """Leave out an entry when the next entry for the same renames gives the same result on every example it
    would have been first for."""
    names = sorted({_instances(e.witness, _fills(e.witness)) for e in entries})
    compiled = [re.compile(e.pattern) for e in entries]
    kept = list(range(len(entries)))
    for i in range(len(entries) - 1, -1, -1):
        rest = [k for k in kept if k != i]
        ok = True
        for n in names:
            first = next((k for k in kept if compiled[k].search(n)), None)
            if first != i:
                continue
            alt = next((k for k in rest if compiled[k].search(n)), None)
            if alt is None or entries[alt].fired != entries[i].fired:
                ok = False
                break
            if compiled[alt].sub(entries[alt].replacement, n) != compiled[i].sub(entries[i].replacement, n):
                ok = False
                break
        if ok:
            kept = rest
    return [entries[k] for k in kept]


def _fills(witness: Sequence[str]) -> dict[str, str]:
    return {c: ("qa" if c != _TAIL else "qt") for c in witness if c.startswith(_MARK)}


__all__ = [
    "MODELS_REQUIRING_TENSOR_MERGING",
    "ChainRenamer",
    "first_match_entries",
    "get_checkpoint_conversion_mapping",
    "get_combined_key_mapping",
    "get_model_conversion_mapping",
    "is_transformers_conversion_available",
    "requires_tensor_merging",
]
