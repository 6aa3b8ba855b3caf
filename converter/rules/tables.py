"""Facts about transformers 5.23's models, as data: read from ``converter/rules/data/*.json``, which
``tools/gen_transformers_tables.py`` writes from the installed transformers (no transformers needed here).

>>> from converter.rules import tables
>>> tables.auto_class("clip_vision_model")
'CLIPVisionModel'
>>> [(s.path, s.config) for s in tables.submodels("llava")][1:]
[('model.vision_tower', 'vision_config'), ('model.language_model', 'text_config')]
>>> tables.layout("mixtral").admits("tok_embeddings.weight")
False

Every accessor raises :class:`KeyError` for a model_type transformers 5.23 does not know
(see :func:`known_model_types`) and returns ``None`` (or ``()``) where a fact is missing for a known one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any

__all__ = [
    "Head",
    "Layout",
    "SubmodelSlot",
    "auto_class",
    "base_model_prefix",
    "config_class",
    "config_model_type",
    "head",
    "head_class",
    "known_model_types",
    "layout",
    "layout_for",
    "module_prefix",
    "sub_configs",
    "submodels",
]


@dataclass(frozen=True)
class SubmodelSlot:
    """A ``PreTrainedModel`` nested in a model: where, of which class and model_type, holding which config.

    ``config`` is the dotted attribute path of its config within the root config (``"text_config"``,
    ``"thinker_config.text_config"``), None when it holds the root config itself or one not reachable from it.
    """

    path: str
    config: str | None
    class_name: str
    model_type: str | None

    @property
    def built_by_auto_model(self) -> bool:
        """Whether the class is what ``AutoModel.from_config`` builds for its config, so that a checkpoint whose
        sub-config has another model_type nests ``auto_class(that type)`` here instead: True for llava's
        ``model.vision_tower`` (``CLIPVisionModel``), False for blip-2's ``language_model`` (``OPTForCausalLM``)."""
        if self.model_type not in known_model_types():
            return False
        return auto_class(self.model_type) == self.class_name


@dataclass(frozen=True)
class Head:
    """The class a model type's checkpoints are built into, and the sub-models it nests.

    ``head("llava")`` -> ``Head(class_name='LlavaForConditionalGeneration',
    mapping='MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES', base_model_prefix='model', submodels=(...), error=None)``
    """

    class_name: str
    #: the ``transformers.models.auto.modeling_auto`` dict that named the class
    mapping: str
    base_model_prefix: str | None
    submodels: tuple[SubmodelSlot, ...]
    #: why transformers could not build the class from the default config (``submodels`` is then empty)
    error: str | None = None
    #: the sub-config the class is built from, as ``AutoModel.from_config`` picks it; None: the root config
    config: str | None = None

    def scope_of(self, slot: SubmodelSlot) -> str:
        """``slot.path`` minus the base_model_prefix, as transformers scopes nested rules:
        ``head("llava").scope_of(<model.vision_tower>)`` -> ``"vision_tower"``."""
        prefix = self.base_model_prefix or ""
        return slot.path.removeprefix(prefix).removeprefix(".")


@dataclass(frozen=True)
class Layout:
    """The module paths a model type's checkpoints may have (transformers' model layout), over all its classes.

    ``prefixes`` are module paths cut to 2 components, indices as ``*`` (``"model.layers"``, ``"layers.*"``,
    ``"lm_head"``; ``""`` when there are top-level parameters, named in ``params``), both as the head classes name
    them and as a base-model checkpoint does (``base_model_prefix`` removed).
    """

    prefixes: frozenset[str]
    params: frozenset[str]
    #: the classes built from the default config (and config variants) that the prefixes come from
    classes: tuple[str, ...]
    #: transformers' ``_keys_to_ignore_on_load_unexpected`` regexes of those classes (re.search semantics)
    ignore_unexpected: tuple[str, ...] = ()
    #: config option -> the prefixes only it adds (``{"word_embed_proj_dim=384": ("decoder.project_in", ...)}``)
    options: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    #: classes transformers lists for the type that did not build here, with the error
    failed: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: classes built only from a changed default config, and how (``"unshrunk"``, ``"set head_dim"``)
    fallback: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: the prefixes of the class ``AutoModel.from_config`` builds, as it names them: what a sub-model of this
    #: type nested in another model has under its path (see :func:`layout_for`)
    base: frozenset[str] = frozenset()
    #: module paths under which any name is admitted (a nested sub-model whose own layout is unknown)
    open: frozenset[str] = frozenset()

    def admits(self, name: str) -> bool:
        """Whether a tensor name fits this layout: ``layout("llama").admits("model.layers.3.mlp.up_proj.weight")``
        -> True; ``admits("tok_embeddings.weight")`` -> False. Names transformers ignores when loading are not
        admitted here: check :meth:`ignored` for those."""
        if any(name.startswith(f"{path}.") for path in self.open):
            return True
        return module_prefix(name) in self.prefixes if "." in name else name in self.params

    def ignored(self, name: str) -> bool:
        """Whether transformers drops ``name`` silently when loading (``mtp.0.x`` for qwen3_next)."""
        return any(re.search(p, name) for p in self.ignore_unexpected)


def module_prefix(name: str, depth: int = 2) -> str:
    """The module path of a tensor name cut to ``depth`` components, indices as ``*``:
    ``module_prefix("model.layers.0.mlp.experts.gate_up_proj")`` -> ``"model.layers"``,
    ``module_prefix("layers.3.norm.weight")`` -> ``"layers.*"``, ``module_prefix("logit_scale")`` -> ``""``."""
    parts = name.split(".")[:-1][:depth]
    return ".".join("*" if p.isdigit() else p for p in parts)


@cache
def _load(table: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        resources.files(__package__).joinpath("data", f"{table}.json").read_text()
    )
    return data


def _entry(table: str, model_type: str) -> Any:
    if model_type not in _load("model_types"):
        raise KeyError(f"model_type {model_type!r} is not known to transformers 5.23")
    return _load(table).get(model_type)


@cache
def known_model_types() -> frozenset[str]:
    """Every model_type of transformers 5.23's ``CONFIG_MAPPING``: ``len(known_model_types())`` -> 804."""
    return frozenset(_load("model_types"))


def config_class(model_type: str) -> str:
    """The config class name: ``config_class("llava")`` -> ``"LlavaConfig"``."""
    return str(_entry("model_types", model_type)["config"])


def config_model_type(model_type: str) -> str:
    """The ``model_type`` its config class writes to config.json, which differs for 3 alias keys:
    ``config_model_type("gpt-sw3")`` -> ``"gpt2"``."""
    return str(_entry("model_types", model_type).get("model_type", model_type))


def sub_configs(model_type: str) -> tuple[str, ...]:
    """The config's sub-config attributes: ``sub_configs("llava")`` -> ``("text_config", "vision_config")``."""
    return tuple(_entry("model_types", model_type).get("sub_configs", ()))


def auto_class(model_type: str) -> str | None:
    """The class ``AutoModel.from_config`` builds for a config of this type (transformers' ``MODEL_MAPPING_NAMES``):
    ``auto_class("clip_vision_model")`` -> ``"CLIPVisionModel"``; None when it has none."""
    found = _entry("auto_classes", model_type)
    return str(found) if found is not None else None


def _slot(d: Mapping[str, Any]) -> SubmodelSlot:
    return SubmodelSlot(path=d["path"], config=d["config"], class_name=d["class"], model_type=d["model_type"])


def _head(d: Mapping[str, Any]) -> Head:
    return Head(
        class_name=d["class"],
        mapping=d["mapping"],
        base_model_prefix=d.get("base_model_prefix"),
        submodels=tuple(_slot(s) for s in d.get("submodels", ())),
        error=d.get("error"),
        config=d.get("config"),
    )


@cache
def head(model_type: str, *, base: bool = False) -> Head | None:
    """The head class of a model type (the class its published checkpoints are for; auto mappings tried from
    image-text-to-text down to ``MODEL_MAPPING_NAMES``), or with ``base=True`` its ``MODEL_MAPPING_NAMES`` class
    when that differs (else the head). None when transformers lists no class for the type:
    ``head("llava", base=True).class_name`` -> ``"LlavaModel"``."""
    entry = _entry("submodels", model_type)
    if entry is None:
        return None
    if base and "base" in entry:
        return _head(entry["base"])
    return _head(entry)


def head_class(model_type: str) -> str | None:
    """``head_class("llava")`` -> ``"LlavaForConditionalGeneration"``."""
    found = head(model_type)
    return found.class_name if found else None


def base_model_prefix(model_type: str) -> str | None:
    """The head class's ``base_model_prefix``: ``base_model_prefix("llava")`` -> ``"model"``; None when it did not
    build."""
    found = head(model_type)
    return found.base_model_prefix if found else None


def submodels(model_type: str, *, base: bool = False) -> tuple[SubmodelSlot, ...]:
    """The nested ``PreTrainedModel`` sub-modules of the head class (or the base class), in ``named_modules()``
    order: ``[s.path for s in submodels("llava")]`` -> ``["model", "model.vision_tower", "model.language_model"]``;
    ``()`` when there are none or the class did not build."""
    found = head(model_type, base=base)
    return found.submodels if found else ()


@cache
def layout(model_type: str) -> Layout | None:
    """The layout of a model type's checkpoints, None when no class of it built:
    ``"model.layers" in layout("llama").prefixes`` -> True."""
    entry = _entry("layouts", model_type)
    if not entry or not entry.get("classes"):
        return None
    ignore = dict.fromkeys(p for patterns in entry.get("ignore_unexpected", {}).values() for p in patterns)
    return Layout(
        prefixes=frozenset(entry["prefixes"]),
        params=frozenset(entry["params"]),
        classes=tuple(entry["classes"]),
        ignore_unexpected=tuple(ignore),
        options={k: tuple(v) for k, v in entry.get("options", {}).items()},
        failed=dict(entry.get("failed", {})),
        fallback=dict(entry.get("fallback", {})),
        base=frozenset(entry.get("base", ())),
    )


def layout_for(model_type: str, config: Mapping[str, Any]) -> Layout | None:
    """The layout of one checkpoint, given its config.json: :func:`layout`, plus, for each nested sub-model whose
    sub-config names another model_type than the default one (llava with a pixtral vision tower, blip-2 with a
    T5), that type's layout under the sub-model's path (and that path less ``base_model_prefix``).

    ``layout_for("llava", {"vision_config": {"model_type": "pixtral"}}).admits("vision_tower.patch_conv.weight")``
    -> True (``layout("llava")`` knows only the default CLIP tower). A sub-model built by ``AutoModel`` gets the
    other type's base class layout; any other class (blip-2's ``AutoModelForCausalLM`` language model) the union
    of all its classes'. Where that type's layout is unknown, anything under the path is admitted (``open``).
    """
    found = layout(model_type)
    if found is None:
        return None
    added: set[str] = set()
    opened: set[str] = set()
    for nest in (head(model_type), head(model_type, base=True)):
        for slot in nest.submodels if nest else ():
            sub_type = _config_at(config, slot.config).get("model_type") if slot.config else None
            if not sub_type or sub_type == slot.model_type:
                continue
            prefix = nest.base_model_prefix if nest else None
            paths = {slot.path}
            if prefix and slot.path.startswith(f"{prefix}."):
                paths.add(slot.path[len(prefix) + 1 :])
            entry = _load("layouts").get(sub_type) if sub_type in known_model_types() else None
            own = (entry or {}).get("base" if slot.built_by_auto_model else "prefixes")
            if not own:
                opened |= paths
                continue
            for path in paths:
                added |= {module_prefix(f"{path}.{p}.x" if p else f"{path}.x") for p in own}
    if not added and not opened:
        return found
    return replace(found, prefixes=found.prefixes | added, open=found.open | opened)


def _config_at(config: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """The sub-config dict at a dotted attribute path (``"thinker_config.text_config"``); {} when absent."""
    node: Any = config
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node if isinstance(node, Mapping) else {}
