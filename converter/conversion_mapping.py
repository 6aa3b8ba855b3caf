"""Drop-in names of NeMo AutoModel's ``nemo_automodel.components.checkpoint.conversion_mapping``.

Same function names and arguments; the return values are our rule objects (:class:`~converter.rules.Rename`,
:class:`~converter.rules.Convert`), which are precise (escaped, anchored), invertible and JSON-serialisable.
Unlike NeMo's, the merge list is derived from the rules, so it is right for every registered model type.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import UnsupportedError
from .rules import LEGACY, REGISTRY, compile_template
from .rules.core import Convert, RegexRename, Rename, Rule, applies, template_body
from .rules.quantization import fp8_renames, fp8_scale_converters

#: model types whose conversion needs tensor ops (stacking experts, concatenating, transposing), not only renames
MODELS_REQUIRING_TENSOR_MERGING: frozenset[str] = frozenset(
    t for t, e in REGISTRY.items() if e.requires_tensor_ops
)

#: NeMo's hand-written first-match key mappings for VLMs (``_VLM_KEY_MAPPINGS``), kept for parity
VLM_KEY_MAPPINGS: dict[str, dict[str, str]] = {
    "gemma3": {
        r"^language_model\.model\.": "model.language_model.",
        r"^vision_tower\.vision_model\.": "model.vision_tower.",
        r"^vision_tower\.": "model.vision_tower.",
        r"^multi_modal_projector\.": "model.multi_modal_projector.",
        r"^language_model\.lm_head\.": "lm_head.",
    },
}


def is_transformers_conversion_available() -> bool:
    """Always True: these rules need no transformers install (NeMo's version reports whether transformers has them)."""
    return True


def requires_tensor_merging(model_type: str) -> bool:
    """``requires_tensor_merging("mixtral")`` -> True; ``("granitemoe")`` -> False (renames only)."""
    return model_type in MODELS_REQUIRING_TENSOR_MERGING


def get_checkpoint_conversion_mapping(model_type: str) -> list[Rule] | None:
    """The rules registered for ``model_type`` (a new list each call), or None when there are none."""
    entry = REGISTRY.get(model_type)
    return list(entry.rules) if entry is not None else None


def rename_regex(rule: Rename) -> tuple[str, str]:
    """A rename as ``(regex, replacement)`` for ``re.sub(regex, replacement, name, count=1)`` (a scoped rename
    keeps the scope and what precedes the match in group 1)."""
    ct = compile_template(rule.source)
    rx, shift = ct.regex.pattern, 0
    if rule.scope:
        head = re.escape(rule.scope) + r"\."
        inner = rule.source.lstrip("^").startswith(".")
        rx = (
            f"^({head})" + ct.body.pattern
            if ct.anchored
            else f"^({head}(?:.*\\.){'' if inner else '?'})" + ct.body.pattern
        )
        shift = 1
    target = template_body(rule.target)
    n = shift

    def group(_: re.Match[str]) -> str:
        nonlocal n
        n += 1
        return f"\\{n}"

    repl = re.sub(r"\*", group, target)
    return rx, (r"\1" + repl if shift else repl)


def get_combined_key_mapping(
    model_type: str, model_key_mapping: Mapping[str, str] | None = None
) -> dict[str, str] | None:
    """Regex -> replacement dict of the renames for ``model_type`` (NeMo's contract), or None if there are none.

    As in NeMo: a VLM with a hand-written first-match mapping returns that alone; otherwise ``model_key_mapping``
    first, then every rename of the model type (converters are not key mappings), first one wins per regex.
    """
    if model_type in VLM_KEY_MAPPINGS:
        return dict(VLM_KEY_MAPPINGS[model_type])
    out: dict[str, str] = dict(model_key_mapping or {})
    for r in get_checkpoint_conversion_mapping(model_type) or []:
        if isinstance(r, Rename) and not r.index_offset:  # an index offset is no regex substitution
            rx, repl = rename_regex(r)
            out.setdefault(rx, repl)
    return out or None


def _config_of(model_or_config: Any) -> dict[str, Any]:
    if isinstance(model_or_config, Mapping):
        return dict(model_or_config)
    if isinstance(model_or_config, (str, os.PathLike)):
        p = Path(model_or_config)
        if p.is_dir():
            p = p / "config.json"
        return json.loads(p.read_text())
    config = getattr(model_or_config, "config", model_or_config)  # a transformers model, or its config
    if hasattr(config, "to_dict"):
        return config.to_dict()
    raise TypeError(
        f"expected a transformers model or config, a config dict or a config.json path, not {model_or_config!r}"
    )


def get_model_conversion_mapping(
    model_or_config: Any,
    key_mapping: Mapping[str, str] | None = None,
    hf_quantizer: Any = None,
    add_legacy: bool = True,
) -> list[Rule]:
    """All rules for a model, in transformers' order: ``key_mapping`` renames, the model type's rules (those
    whose conditions the config meets), then the legacy renames.

    ``model_or_config``: a transformers model or config, a ``config.json`` dict, or a path to one (or its folder).
    """
    config = _config_of(model_or_config)
    method, dequantize = _quantizer(hf_quantizer)
    rules: list[Rule] = list(fp8_renames(())) if method == "fp8" else []
    rules.extend(RegexRename(k, v) for k, v in (key_mapping or {}).items())
    entry = REGISTRY.get(config.get("model_type"))  # type: ignore[arg-type]
    if entry is not None:
        own = [r for r in entry.rules if applies(r, config)]
        if method == "fp8" and not dequantize:  # scale grids merged like their weights
            own = [x for r in own for x in (fp8_scale_converters([r]) if isinstance(r, Convert) else [r])]
        rules.extend(own)
    if add_legacy:
        rules.extend(LEGACY)
    return rules


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
