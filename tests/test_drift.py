"""Drift detection: our registry against the installed transformers' ``conversion_mapping``, entry by entry.

Our rules are precise name templates where transformers' are regexes, so they are compared by what they do: for
every entry (a model_type or a class name), names are made from every pattern on both sides (each alternative of a
regex, in a few contexts), run through transformers' own renaming (``rename_source_key``: all renames in order,
then at most one converter) and through ours, and must come out the same, with the same ops on converted tensors.
A difference is allowed only where :data:`EXPLAINED` says why (and every explanation must still be needed).

Where transformers can build a model (the tiny models, and most model types' default configs on the meta device),
the nesting is checked too: each sub-model whose class or model_type has rules sits at the same module path, with
the same rules, as in our entry.
"""

from __future__ import annotations

import copy
import re
import warnings
from functools import cache
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")

from transformers.conversion_mapping import _build_checkpoint_conversion_mapping  # noqa: E402
from transformers.core_model_loading import WeightConverter, rename_source_key  # noqa: E402

from converter.errors import UnknownModelTypeError, UnsupportedError  # noqa: E402
from converter.rules import LEGACY, REGISTRY, Convert, Rename, from_transformers  # noqa: E402
from converter.rules.core import _meets, config_get, fill_stars, template_body  # noqa: E402
from converter.rules.registry import SUBMODELS, build_ruleset, nested_rules  # noqa: E402

try:  # Python 3.11+
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_parse  # type: ignore[no-redef]

MAPPING = _build_checkpoint_conversion_mapping()
KEYS = sorted(k for k in MAPPING if k != "legacy")

#: (entry, the pattern whose example names differ) -> why our rule deliberately differs from transformers'
EXPLAINED: dict[tuple[str, str], str] = {
    (
        "deepseek_v4",
        r"\.norm\.",
    ): "`.norm.` -> `.kv_norm.` is meant for the attention norms; transformers also "
    "hits `model.norm` and falls back to the original name when the result is no parameter. We name the three "
    "attention norms (self_attn, compressor, indexer) instead.",
    (
        "hy_v4",
        r"\.hc_pre\.hc_",
    ): "a partial name (`.hc_pre.hc_` -> `.hc_`); written per hyper-connection block "
    "(`hc_pre.hc_head`, `hc_pre.hc_attn_layer`, `hc_pre.hc_mlp_layer`), which is every name it meets.",
    (
        "inkling2",
        r"vision_tower\.embeddings\.position_embedding",
    ): "transformers renames a name that already ends "
    "in `.weight` again (`position_embedding.weight.weight`); a rename never re-applies to its own output here.",
    **{
        (
            "inkling2_text",
            p,
        ): "transformers matches names that end in `convolution`/`sconv`; Inkling's are exactly "
        "post_attention_convolution, post_mlp_convolution, k_sconv and v_sconv, written out."
        for p in (
            r"(convolution|sconv)\.weight(?!_)",
            r"(convolution|sconv)\.static_w",
            r"(convolution|sconv)\.weight_proj",
        )
    },
    **{
        (
            "inkling2_text",
            f"{c}.weight_proj",
        ): "transformers renames `weight_proj` to `weight_proj.weight` even when "
        "the name already has it; a rename never re-applies to its own output here."
        for c in ("post_attention_convolution", "post_mlp_convolution", "k_sconv", "v_sconv")
    },
    **{
        (
            k,
            "tracker_model.(.+)",
        ): "`tracker_model.` is dropped at the start of the name, where the published "
        "tracker weights have it; transformers drops it anywhere."
        for k in ("sam3_tracker", "sam3_tracker_video")
    },
    **{
        ("step3p5_vision", p): "transformers' converter matches `attn.in_proj_*` inside the renamed "
        "`self_attn.in_proj_*`; ours names `self_attn.in_proj_*` (the renames run first). A name *starting* with "
        "`attn.` (never in these checkpoints) is renamed by ours and not by transformers."
        for p in (r"attn\.in_proj_weight", r"attn\.in_proj_bias")
    },
    **{
        (
            "cohere_asr",
            f".{part}.{a}",
        ): "transformers requires `encoder.`/`decoder.` and any name parts before "
        "(`encoder\\.(.+)\\.self_attn\\.linear_q`); only the encoder's / decoder's layers have these names, so "
        "ours renames them wherever they are."
        for part, names in (
            (
                "self_attn",
                ("linear_q", "linear_k", "linear_v", "linear_out", "linear_pos", "pos_bias_u", "pos_bias_v"),
            ),
            ("first_sub_layer", ("query_net", "key_net", "value_net", "out_projection")),
        )
        for a in names
    },
}


# --- example names from patterns -------------------------------------------------------------------------------


def _gen(items: Any) -> list[str]:
    """Strings matching a parsed regex (one per alternative, capped), with realistic fillers."""
    outs = [""]
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            alts = [chr(av)]
        elif name == "ANY":
            alts = ["."]
        elif name == "IN":
            alts = [_in(av)]
        elif name in ("MAX_REPEAT", "MIN_REPEAT"):
            lo, _, sub = av
            inner = _gen(sub)
            if len(sub) == 1 and str(sub[0][0]) == "ANY":
                inner = ["3"]  # `.*` / `.+`: an expert or layer index in practice
            alts = [x * max(lo, 1) for x in inner]
        elif name == "SUBPATTERN":
            alts = _gen(av[-1])
        elif name == "BRANCH":
            alts = [s for branch in av[1] for s in _gen(branch)]
        elif name in ("AT", "ASSERT", "ASSERT_NOT", "GROUPREF"):
            alts = [""]
        elif name == "CATEGORY":
            alts = ["7" if "DIGIT" in str(av) else "x"]
        else:
            alts = [""]
        outs = [o + a for o in outs for a in alts][:8]
    return outs


def _in(items: Any) -> str:
    for op, av in items:
        if str(op) == "CATEGORY":
            return "7" if "DIGIT" in str(av) else "x"
        if str(op) == "RANGE":
            return chr(av[0])
        if str(op) == "LITERAL":
            return chr(av)
    return "x"


def _names(example: str, *, start: bool, inside: bool, bare: bool) -> list[str]:
    """Whole tensor names around an example: at the start of the name and/or inside one (after ``x.h.1.``),
    followed by a parameter name (``.weight``), and also ending there when ``bare``."""
    leaf = example.rsplit(".", 1)[-1]
    if leaf in ("weight", "bias") or leaf.endswith(("_weight", "_bias")):  # already a parameter's name
        ends = [""]
    else:
        ends = ["weight" if example.endswith(".") else ".weight"] + (
            [""] if bare and not example.endswith(".") else []
        )
    heads = ([""] if start else []) + (["x.h.1" if example.startswith(".") else "x.h.1."] if inside else [])
    out = []
    for h in heads:
        for e in ends:
            name = re.sub(r"\.{2,}", ".", h + example + e).strip(".")
            if name:
                out.append(name)
    return out


def transformers_probes(pattern: str) -> list[str]:
    """Names a transformers pattern is written for: its examples where the pattern may match (at the start only
    when anchored; inside a name; at the start too when it does not begin with a dot), with a parameter name after
    it and, when the pattern may end a name, without."""
    pattern = pattern.replace("*.", r".*\.")
    anchored = pattern.startswith("^")
    try:
        examples = _gen(sre_parse.parse(pattern))
    except re.error:
        return []
    return [
        n
        for e in examples
        for n in _names(e, start=anchored or not e.startswith("."), inside=not anchored, bare=True)
    ]


def our_probes(template: str) -> list[str]:
    anchored = template.startswith("^")
    body = fill_stars(template, [3] * template.count("*"))
    lead = "." if template.lstrip("^").startswith(".") else ""
    return _names(lead + body, start=anchored, inside=not anchored, bare=False)


def _patterns(t: Any) -> list[str]:
    return [p for p in t._original_source_patterns if p]


def _templates(rules: Any) -> list[str]:
    out = []
    for r in rules:
        if isinstance(r, Rename):
            out.append(r.source)
        elif isinstance(r, Convert):
            out.extend(r.sources)
        elif hasattr(r, "renames"):
            out.extend(m.source for m in r.renames)
    return out


# --- running both sides ------------------------------------------------------------------------------------------


def _op_sig(op: Any) -> tuple[Any, ...]:
    """An op as (transformers class name, its meaningful arguments), for transformers' ops and ours alike."""
    name = getattr(op, "transformers_name", "") or type(op).__name__
    keys = {
        "MergeModulelist": ("dim",),
        "SplitModulelist": ("dim",),
        "Concatenate": ("dim", "num_shards_attribute"),
        "Chunk": ("dim", "num_shards_attribute"),
        "Interleave": ("dim", "inverse"),
        "Transpose": ("dim0", "dim1", "check_dims"),
        "PermuteForRope": ("subconfig_key", "permute_layer_names", "inverse"),
        "ErnieFuseAndSplitTextVisionExperts": ("stack_dim", "concat_dim"),
        "Split": ("dim",),
    }.get(name, ())
    vals = []
    for k in keys:
        v = (
            getattr(op, "inverse_", None)
            if k == "inverse" and hasattr(op, "inverse_")
            else getattr(op, k, None)
        )
        if isinstance(v, (list, tuple)):
            v = tuple(v) or None
        vals.append(v)
    return (name, *vals)


def run_transformers(key: str, names: list[str]) -> dict[str, tuple[str, tuple[Any, ...] | None]]:
    rules = copy.deepcopy(MAPPING[key])
    renamings = [r for r in rules if not isinstance(r, WeightConverter)]
    converters = [r for r in rules if isinstance(r, WeightConverter)]
    out = {}
    for name in sorted(names):  # GroupWeightRename activates on its guard, as when loading in key order
        new, src = rename_source_key(name, renamings, converters)
        ops = None
        if src is not None:
            conv = next(c for c in converters if src in c.source_patterns)
            ops = tuple(_op_sig(o) for o in conv.operations)
        out[name] = (new, ops)
    return out


def run_ours(key: str, rules: Any, names: list[str]) -> dict[str, tuple[str, tuple[Any, ...] | None]]:
    rs = build_ruleset(key, rules).bind(names)
    out = {}
    for name in names:
        renamed = rs.rename(name)
        hit = rs.find_converter(renamed)
        if hit is None:
            out[name] = (renamed, None)
            continue
        ci, _, m = hit
        conv = rs.converters[ci]
        stars = [int(x) for x in m.groups()]
        target = (
            fill_stars(conv.targets[0], stars) if "*" in conv.targets[0] else template_body(conv.targets[0])
        )
        out[name] = (renamed[: m.start()] + target + renamed[m.end() :], tuple(_op_sig(o) for o in conv.ops))
    return out


def our_rules(key: str) -> tuple[Any, ...]:
    if key in REGISTRY:
        return REGISTRY[key].root_rules
    return SUBMODELS[key].rules


def differences(key: str) -> dict[str, tuple[str, Any, Any]]:
    """probe -> (origin pattern, transformers' result, ours) for every probe where they differ."""
    mine = our_rules(key)
    origin: dict[str, str] = {}
    for t in MAPPING[key]:
        for p in _patterns(t):
            for n in transformers_probes(p):
                origin.setdefault(n, p)
    for tpl in _templates(mine):
        for n in our_probes(tpl):
            origin.setdefault(n, tpl)
    names = sorted(origin)
    theirs, ours = run_transformers(key, names), run_ours(key, mine, names)
    return {n: (origin[n], theirs[n], ours[n]) for n in names if theirs[n] != ours[n]}


# --- the tests ---------------------------------------------------------------------------------------------------


def test_every_transformers_entry_is_registered():
    missing = [k for k in KEYS if k not in REGISTRY and k not in SUBMODELS]
    assert missing == []


@pytest.mark.parametrize("key", KEYS)
def test_rules_behave_like_transformers(key):
    diffs = differences(key)
    unexplained = {n: d for n, d in diffs.items() if (key, d[0]) not in EXPLAINED}
    assert not unexplained, "\n".join(
        f"{n}  (from {d[0]!r}): transformers {d[1]}, ours {d[2]}" for n, d in sorted(unexplained.items())[:10]
    )


def test_explanations_are_still_needed():
    stale = []
    for key, pattern in EXPLAINED:
        if not any(d[0] == pattern for d in differences(key).values()):
            stale.append((key, pattern))
    assert stale == []


def test_legacy_renames_behave_like_transformers():
    names = sorted({n for t in MAPPING["legacy"] for p in _patterns(t) for n in transformers_probes(p)})
    assert run_transformers("legacy", names) == run_ours("legacy", LEGACY, names)


# --- nesting: which sub-models bring rules, at which module path ---------------------------------------------------


def transformers_nesting(model: Any) -> list[tuple[str, str]]:
    """(module path, rules key) of every sub-model that brings rules, as ``get_model_conversion_mapping`` walks."""
    from transformers import PreTrainedModel
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    seen: dict[str, list[str]] = {}
    out = []
    for name, sub in model.named_modules():
        if not isinstance(sub, PreTrainedModel):
            continue
        cls, mt = type(sub).__name__, sub.config.model_type

        def claimed(ident: str, name: str = name) -> bool:
            return any(s == "" or name.startswith(s + ".") for s in seen.get(ident, []))

        if claimed(cls):
            continue
        key: str | None = cls if get_checkpoint_conversion_mapping(cls) is not None else None
        if key is None:
            if mt and claimed(mt):
                continue
            key = mt if mt and get_checkpoint_conversion_mapping(mt) is not None else None
            if key is not None:
                seen.setdefault(mt, []).append(name)
        if key is None:
            continue
        seen.setdefault(cls, []).append(name)
        out.append((name, key))
    return out


def _rules_of(key: str) -> tuple[Any, ...] | None:
    try:
        return nested_rules(key)
    except KeyError:
        return None


@cache
def _model(model_type: str) -> Any:
    """The model transformers builds for ``model_type``: a tiny one where tiny_models can, else the default config's
    on the meta device; None when neither builds."""
    import torch

    try:
        from support import tiny_models as tm

        if model_type in tm.MODEL_TYPES:
            return tm.build_model(model_type)
    except ImportError:  # pragma: no cover
        pass
    entry = REGISTRY[model_type]
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cls_name = entry.root_class or ARCHITECTURES.get(model_type) or _auto_class(model_type)
    cls = getattr(transformers, cls_name, None) if cls_name else None
    if cls is None or model_type not in CONFIG_MAPPING:
        return None
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            return cls(CONFIG_MAPPING[model_type]())
    except Exception:  # noqa: BLE001 - a default config that does not build: nothing to check
        return None


def _auto_class(model_type: str) -> str | None:
    """The class transformers' auto mappings give a model type: a generative head first, else the base model."""
    from transformers.models.auto import modeling_auto

    for mapping in (
        "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
        "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
        "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
        "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES",
        "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
        "MODEL_MAPPING_NAMES",
    ):
        found = getattr(modeling_auto, mapping, {}).get(model_type)
        if found:
            return found if isinstance(found, str) else found[0]
    return None


#: the class checkpoints of a model type are published for, where its default config builds on the meta device
ARCHITECTURES = {
    "altclip": "AltCLIPModel",
    "aria": "AriaForConditionalGeneration",
    "audioflamingo3": "AudioFlamingo3ForConditionalGeneration",
    "colqwen2": "ColQwen2ForRetrieval",
    "fuyu": "FuyuForCausalLM",
    "glmasr": "GlmAsrForConditionalGeneration",
    "got_ocr2": "GotOcr2ForConditionalGeneration",
    "granite_speech": "GraniteSpeechForConditionalGeneration",
    "granite_speech_plus": "GraniteSpeechPlusForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
    "jev": "JevForDecision",
    "llava_next_video": "LlavaNextVideoForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "maskformer": "MaskFormerModel",
    "molmo2": "Molmo2ForConditionalGeneration",
    "musicflamingo": "MusicFlamingoForConditionalGeneration",
    "nemo_speechlm": "Nemotron3_5TranscribeModel",
    "pi0": "PI0ForConditionalGeneration",
    "pp_chart2table": "GotOcr2ForConditionalGeneration",
    "qwen2_audio": "Qwen2AudioForConditionalGeneration",
    "shieldgemma2": "Gemma3ForConditionalGeneration",
    "tipsv2": "Tipsv2Model",
    "unlimited_ocr": "UnlimitedOcrForConditionalGeneration",
    "vibevoice_asr": "VibeVoiceAsrForConditionalGeneration",
    "video_llava": "VideoLlavaForConditionalGeneration",
    "vipllava": "VipLlavaForConditionalGeneration",
    "voxtral": "VoxtralForConditionalGeneration",
    "voxtral_realtime": "VoxtralRealtimeForConditionalGeneration",
}


@pytest.mark.parametrize("model_type", sorted(REGISTRY))
def test_nesting_matches_transformers(model_type):
    model = _model(model_type)
    if model is None:
        pytest.skip("transformers cannot build this model type here")
    entry = REGISTRY[model_type]
    theirs = transformers_nesting(model)
    root = [k for path, k in theirs if path == ""]
    if entry.root_class:
        assert root == [entry.root_class]
    else:  # the root is looked up by model_type (or has no rules)
        assert root in ([], [model_type]) or _rules_of(root[0]) == entry.root_rules, root
    nested_theirs = sorted((p, k) for p, k in theirs if p)
    config = model.config.to_dict()
    ours = sorted(
        (n.path, n.key) for n in entry.submodels if all(_meets(config_get(config, k), v) for k, v in n.when)
    )
    assert [p for p, _ in ours] == [p for p, _ in nested_theirs]
    for (path, mine), (_, key) in zip(ours, nested_theirs, strict=True):
        assert nested_rules(mine) == _rules_of(key), (path, mine, key)


# --- from_transformers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_type", ["mixtral", "qwen2_moe", "llava", "kimi_k25", "inkling2_text", "rt_detr"]
)
def test_from_transformers_translates_like_our_registry(model_type):
    entry = from_transformers(model_type)
    names = sorted({n for tpl in _templates(entry.rules) for n in our_probes(tpl)})
    names += sorted({n for t in MAPPING[model_type] for p in _patterns(t) for n in transformers_probes(p)})
    assert run_ours(model_type, entry.rules, names) == run_transformers(model_type, names)


def test_from_transformers_refuses_what_it_cannot_execute():
    with pytest.raises(UnsupportedError, match="Split"):
        from_transformers("Molmo2TextModel")
    with pytest.raises(UnsupportedError, match="check_dims"):
        from_transformers("qwen3_vl_moe")
    with pytest.raises(UnknownModelTypeError):
        from_transformers("no_such_model_type")


def test_from_transformers_keeps_unexpressible_renames_one_way():
    entry = from_transformers("molmo2")
    regex = [r for r in entry.rules if type(r).__name__ == "RegexRename"]
    assert regex and all(not r.reversible for r in regex)
    assert "(?<!image_vit" in regex[0].pattern


def test_from_transformers_with_a_model_scopes_nested_rules():
    from support import tiny_models as tm

    entry = from_transformers("llava", model=tm.build_model("llava"))
    scoped = {(getattr(r, "scope", ""), getattr(r, "source", "")) for r in entry.rules}
    assert ("model", "^language_model.model") in scoped
    assert ("model.vision_tower", "^vision_model") in scoped
