#!/usr/bin/env python3
"""Write ``converter/rules/data/*.json``: facts only transformers knows, for a converter that runs without it.

Run with the dev venv (imports transformers and torch)::

    .venv/bin/python tools/gen_transformers_tables.py             # all model types, 2 processes
    .venv/bin/python tools/gen_transformers_tables.py --jobs 4 --timeout 60

Tables (``converter/rules/tables.py`` reads them):

* ``model_types.json``  every ``CONFIG_MAPPING_NAMES`` key: config class, sub-config attribute names.
* ``auto_classes.json`` ``MODEL_MAPPING_NAMES``: model_type -> the class ``AutoModel.from_config`` builds.
* ``submodels.json``    per model type with a model class: the head class checkpoints are published for (and the
  ``MODEL_MAPPING_NAMES`` class as ``base`` where different), its ``base_model_prefix`` and every nested
  ``PreTrainedModel`` (path, config attribute path, class, model_type) in ``named_modules()`` order.
* ``layouts.json``      per model type: the module-path prefixes (depth <= 2, digits as ``*``) its checkpoints may
  have over all its classes (as named, and with ``base_model_prefix`` stripped) and over config options that
  add modules, top-level parameter names, the base class's own prefixes (for nesting), the classes'
  ``_keys_to_ignore_on_load_unexpected`` and the classes that did not build.

Every class is built on the meta device from its default config (layer counts shrunk to 2: indices collapse to
``*`` anyway; ``--check-shrink`` verifies that on a sample); where that fails, from the default config as it is,
then with gaps filled (:func:`_fill_default`). A class that still fails is recorded with its error. About 3 to 5
minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import multiprocessing as mp
import os
import re
import signal
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OUT = Path(__file__).resolve().parent.parent / "converter" / "rules" / "data"

#: where the head class (the class published checkpoints of a type are for) is looked up, in order
HEAD_MAPPINGS = (
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
    "MODEL_FOR_TEXT_TO_WAVEFORM_MAPPING_NAMES",
    "MODEL_FOR_TEXT_TO_SPECTROGRAM_MAPPING_NAMES",
    "MODEL_FOR_CTC_MAPPING_NAMES",
    "MODEL_FOR_RNNT_MAPPING_NAMES",
    "MODEL_FOR_TDT_MAPPING_NAMES",
    "MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES",
    "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES",
    "MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES",
    "MODEL_FOR_INSTANCE_SEGMENTATION_MAPPING_NAMES",
    "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES",
    "MODEL_FOR_MASK_GENERATION_MAPPING_NAMES",
    "MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES",
    "MODEL_FOR_KEYPOINT_MATCHING_MAPPING_NAMES",
    "MODEL_FOR_TEXT_RECOGNITION_MAPPING_NAMES",
    "MODEL_FOR_TABLE_RECOGNITION_MAPPING_NAMES",
    "MODEL_FOR_TIME_SERIES_PREDICTION_MAPPING_NAMES",
    "MODEL_FOR_PRETRAINING_MAPPING_NAMES",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_MAPPING_NAMES",
)

#: config attributes that count repeated blocks: shrunk to 2 (indices become ``*``, so prefixes do not change)
LAYER_COUNTS = re.compile(
    r"^(num_(hidden_)?layers|n_layers?|num_(encoder|decoder)_layers|(encoder|decoder)_layers|n_layer|num_blocks"
    r"|num_(global|local)_layers|depth)$"
)
SHRUNK = 2

#: config attributes never flipped when looking for optional modules (generic, or change nothing structural)
_GENERIC_BOOLS = frozenset(
    {
        "return_dict",
        "output_hidden_states",
        "output_attentions",
        "torchscript",
        "use_cache",
        "is_encoder_decoder",
        "is_decoder",
        "add_cross_attention",
        "tie_encoder_decoder",
        "chunk_size_feed_forward",
        "gradient_checkpointing",
        "use_return_dict",
        "_output_attentions",
        "_attn_implementation_autoset",
        "problem_type",
        "tie_word_embeddings",
    }
)
MAX_FLIPS = 32


def _silence() -> None:
    """Quiet the generator's processes (not used in-process by the tests: it is global)."""
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# ---------------------------------------------------------------------------------------------------------------
# tables that need no model


def model_types_table(only: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{"llava": {"config": "LlavaConfig", "sub_configs": ["text_config", "vision_config"]}, ...}``; an alias
    key whose config class has another ``model_type`` also names it (``"gpt-sw3": {..., "model_type": "gpt2"}``)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES

    table: dict[str, dict[str, Any]] = {}
    for model_type in sorted(CONFIG_MAPPING_NAMES if only is None else only):
        entry: dict[str, Any] = {"config": CONFIG_MAPPING_NAMES[model_type]}
        try:
            config_class = CONFIG_MAPPING[model_type]
            sub = getattr(config_class, "sub_configs", None) or {}
            if getattr(config_class, "model_type", model_type) != model_type:
                entry["model_type"] = config_class.model_type  # an alias: gpt-sw3 -> GPT2Config -> "gpt2"
        except Exception:  # noqa: BLE001 - a config class that does not import: name only
            sub = {}
        if sub:
            entry["sub_configs"] = sorted(sub)
        table[model_type] = entry
    return table


def auto_classes_table() -> dict[str, str]:
    """``{"clip_vision_model": "CLIPVisionModel", ...}``: the first class when transformers lists several."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    return {t: _first(v) for t, v in sorted(MODEL_MAPPING_NAMES.items())}


def _first(value: str | Iterable[str]) -> str:
    return value if isinstance(value, str) else next(iter(value))


def _all(value: str | Iterable[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def mapping_names() -> list[str]:
    """Every ``MODEL_*_MAPPING_NAMES`` dict in ``modeling_auto``, head mappings first."""
    from transformers.models.auto import modeling_auto

    rest = sorted(n for n in dir(modeling_auto) if n.startswith("MODEL_") and n.endswith("_MAPPING_NAMES"))
    present = [n for n in HEAD_MAPPINGS if hasattr(modeling_auto, n)]
    return present + [n for n in rest if n not in present]


def classes_of(model_type: str) -> list[tuple[str, str]]:
    """``[(class name, mapping it came from), ...]`` for every class transformers' auto mappings list for a type."""
    from transformers.models.auto import modeling_auto

    found: dict[str, str] = {}
    for name in mapping_names():
        value = getattr(modeling_auto, name).get(model_type)
        if value:
            for cls in _all(value):
                found.setdefault(cls, name)
    return list(found.items())


def head_class(model_type: str) -> tuple[str, str] | None:
    """``("LlavaForConditionalGeneration", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES")`` for ``"llava"``: the
    first class of :data:`HEAD_MAPPINGS` made for the type's own config (``MusicgenForCausalLM``, listed for
    ``musicgen`` but made for its decoder config, is passed over for ``MusicgenForConditionalGeneration``); the
    first class listed when none is."""
    from transformers.models.auto import modeling_auto

    found = []
    for (
        name
    ) in mapping_names():  # HEAD_MAPPINGS, then any other (a type listed only for image classification)
        value = getattr(modeling_auto, name).get(model_type)
        if value:
            found.append((_first(value), name))
    for cls_name, mapping in found:
        if _takes_own_config(model_type, cls_name):
            return cls_name, mapping
    return found[0] if found else None


def _takes_own_config(model_type: str, cls_name: str) -> bool:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        wanted = getattr(getattr(transformers, cls_name), "config_class", None)
        return wanted is None or issubclass(CONFIG_MAPPING[model_type], wanted)
    except Exception:  # noqa: BLE001 - a class needing a missing backend: assume it does
        return True


# ---------------------------------------------------------------------------------------------------------------
# building models


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Timeout(f"timeout after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _short(exc: BaseException) -> str:
    """``"TypeError: unsupported operand ..."``: the type and the first non-empty line of the message, cut."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__)[:160]


def _configs(config: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted attribute path, config)`` for every config nested in ``config`` (breadth-first, itself excluded)."""
    from transformers import PreTrainedConfig

    level = [(path, config)]
    seen = {id(config)}
    while level:
        nxt = []
        for base, cfg in level:
            for attr, value in sorted(vars(cfg).items()):
                if isinstance(value, PreTrainedConfig) and id(value) not in seen:
                    seen.add(id(value))
                    p = f"{base}.{attr}" if base else attr
                    yield p, value
                    nxt.append((p, value))
        level = nxt


def shrink(config: Any) -> Any:
    """A copy of ``config`` (and its sub-configs) with every layer count above 2 set to 2."""
    config = copy.deepcopy(config)
    for cfg in [config, *(c for _, c in _configs(config))]:
        for attr, value in list(vars(cfg).items()):
            if (
                LAYER_COUNTS.match(attr)
                and isinstance(value, int)
                and not isinstance(value, bool)
                and value > SHRUNK
            ):
                with contextlib.suppress(Exception):
                    setattr(cfg, attr, SHRUNK)
    return config


def _fill_default(cfg: Any) -> dict[str, Any]:
    """The values :func:`fixed` sets on one config: gaps in transformers' default configs that stop a build."""
    get = vars(cfg).get
    heads, hidden, layers = get("num_attention_heads"), get("hidden_size"), get("num_hidden_layers")
    out: dict[str, Any] = {}
    if (
        "head_dim" in vars(cfg)
        and get("head_dim") is None
        and isinstance(heads, int)
        and isinstance(hidden, int)
    ):
        out["head_dim"] = hidden // heads
    if "num_key_value_heads" in vars(cfg) and get("num_key_value_heads") is None and isinstance(heads, int):
        out["num_key_value_heads"] = heads
    for attr, value in (("n_routed_experts", 4), ("num_experts", 4), ("num_local_experts", 4)):
        if attr in vars(cfg) and get(attr) is None:
            out[attr] = value  # MoE counts left None (dots1): experts are one tensor each, prefixes unchanged
    if "n_shared_experts" in vars(cfg) and get("n_shared_experts") is None:
        out["n_shared_experts"] = 1
    if "num_experts_per_tok" in vars(cfg) and get("num_experts_per_tok") is None:
        out["num_experts_per_tok"] = 2
    if "vocab_size" in vars(cfg) and get("vocab_size") is None:
        out["vocab_size"] = 64
    if "layer_types" in vars(cfg) and get("layer_types") is None and isinstance(layers, int):
        out["layer_types"] = ["full_attention"] * layers
    if "vocabulary_map" in vars(cfg) and get("vocabulary_map") is None:
        out["vocabulary_map"] = {}
    if "prediction_length" in vars(cfg) and get("prediction_length") is None:
        out["prediction_length"] = 8
        if "context_length" in vars(cfg) and get("context_length") is None:
            out["context_length"] = 8
    for attr, value in vars(cfg).items():  # a tuple default where the model concatenates lists (convnext)
        if isinstance(value, tuple) and not attr.startswith("_"):
            out[attr] = list(value)
    if getattr(get("backbone_config"), "model_type", None) == "timm_backbone":
        # timm is no dev dependency (it pulls a CUDA torch); a transformers ResNet nests at the same path
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        out["backbone_config"] = CONFIG_MAPPING["resnet"](
            out_features=["stage1", "stage2", "stage3", "stage4"]
        )
    return out


def fixed(config: Any) -> tuple[Any, list[str]] | None:
    """A copy of ``config`` with :func:`_fill_default`'s values set everywhere, and what was set; None when
    there is nothing to set."""
    config = copy.deepcopy(config)
    notes = []
    for path, cfg in [("", config), *_configs(config)]:
        for attr, value in _fill_default(cfg).items():
            with contextlib.suppress(Exception):
                setattr(cfg, attr, value)
                notes.append(f"{path}.{attr}" if path else attr)
    return (config, notes) if notes else None


def for_class(cls: Any, config: Any) -> tuple[str | None, Any]:
    """The config ``cls`` is built from, as ``AutoModel.from_config`` picks it: a class made for a sub-config
    (``Llama4ForCausalLM`` listed for ``llama4``) gets that sub-config. Returns (its attribute path, config)."""
    wanted = getattr(cls, "config_class", None)
    if wanted is None or isinstance(config, wanted):
        return None, config
    for path, sub in _configs(config):
        if isinstance(sub, wanted):
            return path, sub
    return None, config


def build(cls_name: str, config: Any, timeout: float) -> Any:
    """``cls_name`` built from ``config`` (which it may change: pass a copy) on the meta device; raises on failure
    or timeout."""
    import torch
    import transformers

    cls = getattr(transformers, cls_name)
    sink = io.StringIO()
    with _time_limit(timeout), torch.device("meta"), contextlib.redirect_stdout(sink):
        return cls._from_config(config)


def module_prefix(key: str, depth: int = 2) -> str:
    """``"model.layers.0.mlp.experts.gate_up_proj"`` -> ``"model.layers"``; ``"layers.3.norm.weight"`` ->
    ``"layers.*"``; ``"logit_scale"`` -> ``""``."""
    parts = key.split(".")[:-1]
    return ".".join("*" if p.isdigit() else p for p in parts[:depth])


def prefixes_of(keys: Iterable[str], base_model_prefix: str) -> tuple[set[str], set[str]]:
    """The prefixes and top-level parameter names of ``keys``, as themselves and with ``base_model_prefix.``
    stripped (the names of a base-model checkpoint that transformers loads into this class)."""
    prefixes: set[str] = set()
    params: set[str] = set()
    strip = f"{base_model_prefix}." if base_model_prefix else None
    for key in keys:
        names = [key]
        if strip and key.startswith(strip):
            names.append(key[len(strip) :])
        for name in names:
            prefixes.add(module_prefix(name))
            if "." not in name:
                params.add(name)
    return prefixes, params


def submodel_slots(model: Any, root: Any) -> list[dict[str, Any]]:
    """Every nested ``PreTrainedModel`` of ``model`` in ``named_modules()`` order, with the attribute path within
    ``root`` (the model type's config ``model`` was built from, or from a sub-config of) of the config it holds
    (None: ``root`` itself, or one not reachable from it)."""
    from transformers import PreTrainedModel

    by_id = {id(cfg): path for path, cfg in _configs(root)}
    slots = []
    for path, sub in model.named_modules():
        if path and isinstance(sub, PreTrainedModel):
            slots.append(
                {
                    "path": path,
                    "config": by_id.get(id(sub.config)),
                    "class": type(sub).__name__,
                    "model_type": getattr(sub.config, "model_type", None) or None,
                }
            )
    return slots


def _flip_candidates(config: Any) -> list[tuple[str, str, Any]]:
    """``(config path, attribute, other value)`` for the model-specific options of ``config`` (root and
    sub-configs) that may add or rename a module: booleans flipped, counts that are 0 set to 1, sizes equal to
    ``hidden_size`` halved (a projection appears when they differ: OPT's ``word_embed_proj_dim``)."""
    from transformers import PreTrainedConfig

    generic = set(vars(PreTrainedConfig())) | _GENERIC_BOOLS
    out = []
    for path, cfg in [("", config), *_configs(config)]:
        hidden = vars(cfg).get("hidden_size")
        for attr, value in sorted(vars(cfg).items()):
            if attr in generic or attr.startswith("_") or "token" in attr:
                continue
            if isinstance(value, bool):
                out.append((path, attr, not value))
            elif type(value) is int and value == 0:
                out.append((path, attr, 1))
            elif type(value) is int and value == hidden and attr != "hidden_size" and value >= 2:
                out.append((path, attr, value // 2))
    return out[:MAX_FLIPS]


def _with(config: Any, path: str, attr: str, value: Any) -> Any:
    config = copy.deepcopy(config)
    target = config
    for part in filter(None, path.split(".")):
        target = getattr(target, part)
    setattr(target, attr, value)
    return config


def inspect_model_type(
    model_type: str, *, timeout: float = 120.0, shrink_layers: bool = True, flips: bool = True
) -> dict[str, Any]:
    """Everything the tables need about one model type, from models built on the meta device.

    Returns ``{"classes": {name: {...}}, "config_error": str | None, "options": {...}, "seconds": float}``; each
    class entry has ``mapping``, and either ``error`` or ``prefixes``/``params``/``own``/``base_model_prefix``/
    ``slots`` (and maybe ``via``, ``config``, ``ignore_unexpected``, ``option_params``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _inspect(model_type, timeout, shrink_layers, flips)


def _inspect(model_type: str, timeout: float, shrink_layers: bool, flips: bool) -> dict[str, Any]:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    start = time.monotonic()
    result: dict[str, Any] = {"classes": {}, "config_error": None, "options": {}}
    classes = classes_of(model_type)
    try:
        with _time_limit(timeout), contextlib.redirect_stdout(io.StringIO()):
            default = CONFIG_MAPPING[model_type]()
    except BaseException as exc:  # noqa: BLE001 - a config that cannot be built: every class fails with it
        if isinstance(exc, KeyboardInterrupt):
            raise
        result["config_error"] = _short(exc)
        for cls_name, mapping in classes:
            result["classes"][cls_name] = {"mapping": mapping, "error": "config: " + _short(exc)}
        result["seconds"] = round(time.monotonic() - start, 2)
        return result

    # the default config with layer counts shrunk; then as it is; then with gaps filled (see _fill_default)
    attempts: list[tuple[str, Any]] = []
    if shrink_layers:
        attempts.append(("", shrink(default)))
    attempts.append(("unshrunk" if shrink_layers else "", default))
    filled = fixed(default)
    if filled is not None:
        attempts.append(("set " + ", ".join(filled[1]), filled[0]))

    working: dict[str, Any] = {}  # class name -> the root config it built from
    for cls_name, mapping in classes:
        entry: dict[str, Any] = {"mapping": mapping}
        result["classes"][cls_name] = entry
        cls = getattr(transformers, cls_name, None)
        if cls is None:
            entry["error"] = "not exported by transformers"
            continue
        errors = []
        for _note, default_root in attempts:
            try:
                root = copy.deepcopy(default_root)
                sub_path, config = for_class(cls, root)
                model = build(cls_name, config, timeout)
                keys = list(model.state_dict().keys())
            except BaseException as exc:  # noqa: BLE001 - record and carry on
                if isinstance(exc, KeyboardInterrupt):
                    raise
                errors.append(_short(exc))
                continue
            break
        else:
            entry["error"] = errors[0]
            continue
        if _note:
            entry["via"] = _note
        if sub_path:
            entry["config"] = sub_path
        bmp = getattr(model, "base_model_prefix", "") or ""
        prefixes, params = prefixes_of(keys, bmp)
        entry.update(prefixes=sorted(prefixes), params=sorted(params), base_model_prefix=bmp)
        entry["own"] = sorted(
            prefixes_of(keys, "")[0]
        )  # as this class names them (nested, it is not stripped)
        entry["slots"] = submodel_slots(model, root)
        ignore = getattr(cls, "_keys_to_ignore_on_load_unexpected", None)
        if ignore:
            entry["ignore_unexpected"] = sorted(set(ignore))  # a set on some classes: sorted to be stable
        working[cls_name] = default_root
        del model

    # optional modules: flip each model-specific boolean option, rebuild the classes that built, keep new prefixes
    if flips and working:
        seen = set().union(*(set(result["classes"][c]["prefixes"]) for c in working))
        option_params: dict[str, set[str]] = {c: set() for c in working}
        first = next(iter(working.values()))
        for path, attr, value in _flip_candidates(first):
            added: set[str] = set()
            for cls_name, root in working.items():
                try:
                    variant = _with(root, path, attr, value)
                    model = build(cls_name, for_class(getattr(transformers, cls_name), variant)[1], timeout)
                    keys = list(model.state_dict().keys())
                except BaseException as exc:  # noqa: BLE001 - an invalid combination: nothing learnt
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    continue
                new, new_params = prefixes_of(keys, getattr(model, "base_model_prefix", "") or "")
                added |= new - seen
                option_params[cls_name] |= new_params
                del model
            if added:
                name = f"{path}.{attr}" if path else attr
                result["options"][f"{name}={json.dumps(value)}"] = sorted(added)
                seen |= added
        for cls_name, extra in option_params.items():
            entry = result["classes"][cls_name]
            if extra - set(entry["params"]):
                entry["option_params"] = sorted(extra - set(entry["params"]))
    result["seconds"] = round(time.monotonic() - start, 2)
    return result


# ---------------------------------------------------------------------------------------------------------------
# assembling the tables


def submodels_entry(model_type: str, inspected: dict[str, Any]) -> dict[str, Any] | None:
    """The ``submodels.json`` entry of a type: its head class (and base class where different), each with the
    sub-models it nests (maybe none); None when transformers lists no class for the type."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    head = head_class(model_type)
    if head is None:
        return None

    def describe(cls_name: str, mapping: str) -> dict[str, Any] | None:
        info = inspected["classes"].get(cls_name, {})
        if "slots" not in info:
            return None
        out = {
            "class": cls_name,
            "mapping": mapping,
            "base_model_prefix": info["base_model_prefix"],
            "submodels": info["slots"],
        }
        if info.get("config"):
            out["config"] = info["config"]  # built from this sub-config, as AutoModel.from_config does
        return out

    entry = describe(*head)
    base_name = MODEL_MAPPING_NAMES.get(model_type)
    base = None
    if base_name and _first(base_name) != head[0]:
        base = describe(_first(base_name), "MODEL_MAPPING_NAMES")
    out: dict[str, Any] = entry or {
        "class": head[0],
        "mapping": head[1],
        "error": inspected["classes"].get(head[0], {}).get("error", "not built"),
    }
    if base is not None:
        out["base"] = base
    return out


def layout_entry(model_type: str, inspected: dict[str, Any]) -> dict[str, Any]:
    """The ``layouts.json`` entry of a type."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    prefixes: set[str] = set()
    params: set[str] = set()
    classes, failed, ignore, fallback = [], {}, {}, {}
    for cls_name, info in inspected["classes"].items():
        if "error" in info:
            failed[cls_name] = info["error"]
            continue
        classes.append(cls_name)
        prefixes.update(info["prefixes"])
        params.update(info["params"])
        params.update(info.get("option_params", ()))
        if info.get("ignore_unexpected"):
            ignore[cls_name] = info["ignore_unexpected"]
        if info.get("via"):
            fallback[cls_name] = info["via"]
    for added in inspected["options"].values():
        prefixes.update(added)
    entry: dict[str, Any] = {
        "prefixes": sorted(prefixes),
        "params": sorted(params),
        "classes": sorted(classes),
    }
    auto_name = MODEL_MAPPING_NAMES.get(model_type)
    auto = inspected["classes"].get(_first(auto_name), {}) if auto_name else {}
    if "own" in auto:
        entry["base"] = auto["own"]  # what AutoModel.from_config nests for a sub-config of this type
    if inspected["options"]:
        entry["options"] = inspected["options"]
    if ignore:
        entry["ignore_unexpected"] = ignore
    if fallback:
        entry["fallback"] = fallback  # built only from a changed default config ("unshrunk", "set head_dim")
    if failed:
        entry["failed"] = failed
    return entry


def _worker(model_type: str, timeout: float, flips: bool) -> tuple[str, dict[str, Any]]:
    try:
        return model_type, inspect_model_type(model_type, timeout=timeout, flips=flips)
    except Exception as exc:  # noqa: BLE001 - a bug here must not lose the other types
        error = "generator: " + _short(exc)
        classes = {c: {"mapping": m, "error": error} for c, m in classes_of(model_type)}
        return model_type, {"classes": classes, "config_error": error, "options": {}, "seconds": 0.0}


def _init_worker() -> None:
    _silence()


def inspect_all(model_types: list[str], jobs: int, timeout: float, flips: bool) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    done = 0
    ctx = mp.get_context("fork")
    with ctx.Pool(jobs, initializer=_init_worker, maxtasksperchild=50) as pool:
        tasks = [(t, timeout, flips) for t in model_types]
        for model_type, result in pool.imap_unordered(_star, tasks, chunksize=1):
            results[model_type] = result
            done += 1
            if done % 50 == 0 or result["seconds"] > 20:
                print(f"  {done}/{len(model_types)} {model_type} {result['seconds']} s", file=sys.stderr)
    return results


def _star(args: tuple[str, float, bool]) -> tuple[str, dict[str, Any]]:
    return _worker(*args)


def dump(path: Path, table: dict[str, Any]) -> None:
    """Sorted keys, one top-level entry per line (diffs stay one line per model type)."""
    lines = [
        f"{json.dumps(k)}: {json.dumps(v, sort_keys=True, separators=(',', ':'))}"
        for k, v in sorted(table.items())
    ]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def check_shrink(model_types: list[str], timeout: float) -> int:
    """Compare prefixes (and nesting) built from default vs shrunk configs; returns the number of differences."""
    bad = 0
    for t in model_types:
        a = inspect_model_type(t, timeout=timeout, shrink_layers=False, flips=False)
        b = inspect_model_type(t, timeout=timeout, shrink_layers=True, flips=False)
        for cls_name, info in a["classes"].items():
            other = b["classes"][cls_name]
            if "error" in info or "error" in other:
                if ("error" in info) != ("error" in other):
                    print(f"{t} {cls_name}: builds differently: {info.get('error')} / {other.get('error')}")
                continue
            same = all(info[k] == other[k] for k in ("prefixes", "params", "slots", "own"))
            if not same:
                bad += 1
                print(f"{t} {cls_name}: shrinking changes {set(info['prefixes']) ^ set(other['prefixes'])}")
        print(f"{t}: default {a['seconds']} s, shrunk {b['seconds']} s", file=sys.stderr)
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per config or class build")
    ap.add_argument("--only", help="comma-separated model types: print their inspection, write nothing")
    ap.add_argument("--no-options", action="store_true", help="do not flip boolean config options")
    ap.add_argument("--check-shrink", help="comma-separated model types: compare default and shrunk configs")
    args = ap.parse_args(argv)
    _silence()

    if args.check_shrink:
        return 1 if check_shrink(args.check_shrink.split(","), args.timeout) else 0
    if args.only:
        for t in args.only.split(","):
            print(
                json.dumps(
                    {t: inspect_model_type(t, timeout=args.timeout, flips=not args.no_options)}, indent=1
                )
            )
        return 0

    start = time.monotonic()
    types = model_types_table()
    inspected = inspect_all(list(types), args.jobs, args.timeout, not args.no_options)
    layouts = {t: layout_entry(t, inspected[t]) for t in types}
    submodels = {t: e for t in types if (e := submodels_entry(t, inspected[t])) is not None}
    args.out.mkdir(parents=True, exist_ok=True)
    dump(args.out / "model_types.json", types)
    dump(args.out / "auto_classes.json", auto_classes_table())
    dump(args.out / "submodels.json", submodels)
    dump(args.out / "layouts.json", layouts)

    n_classes = sum(len(i["classes"]) for i in inspected.values())
    n_failed = sum("error" in c for i in inspected.values() for c in i["classes"].values())
    slots = {t: e.get("submodels", []) + e.get("base", {}).get("submodels", []) for t, e in submodels.items()}
    nested = sum(bool(v) for v in slots.values())
    composite = sum(any(s["config"] or s["model_type"] != t for s in v) for t, v in slots.items())
    slow = sorted(inspected.items(), key=lambda kv: -kv[1]["seconds"])[:5]
    print(
        f"{len(types)} model types ({len(submodels)} with a head class, {nested} nesting a PreTrainedModel, "
        f"{composite} composite), {n_classes} classes ({n_failed} failed), {time.monotonic() - start:.0f} s; "
        "slowest: " + ", ".join(f"{t} {i['seconds']} s" for t, i in slow),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
