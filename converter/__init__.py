"""ckpt-convert: convert checkpoints between the published (Hub) layout and the layout transformers v5 loads.

>>> from converter import plan, convert, rules_for
>>> p = plan("Mixtral-8x7B/")                      # headers only          # doctest: +SKIP
>>> convert("Mixtral-8x7B/", "Mixtral-8x7B-grouped/")                      # doctest: +SKIP
>>> convert("Mixtral-8x7B-grouped/", "back/", direction="reverse")         # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

#: public name -> the module that defines it, imported on first use: ``import converter.rules`` (or the
#: ``ckpt-convert plan`` command) then pays for no more than it uses
_EXPORTS = {
    "MODELS_REQUIRING_TENSOR_MERGING": "conversion_mapping",
    "get_checkpoint_conversion_mapping": "conversion_mapping",
    "get_combined_key_mapping": "conversion_mapping",
    "get_model_conversion_mapping": "conversion_mapping",
    "is_transformers_conversion_available": "conversion_mapping",
    "requires_tensor_merging": "conversion_mapping",
    "ConversionError": "errors",
    "ConversionResult": "executor",
    "Progress": "executor",
    "ConversionJob": "job",
    "convert": "job",
    "execute": "executor",
    "JobSpec": "spec",
    "Plan": "planner",
    "PlannedTensor": "planner",
    "plan": "planner",
    "Direction": "rules",
    "RuleSet": "rules",
    "model_types": "rules",
    "rules_for": "rules",
    "verify": "verifier",
}

if TYPE_CHECKING:
    from .conversion_mapping import (
        MODELS_REQUIRING_TENSOR_MERGING,
        get_checkpoint_conversion_mapping,
        get_combined_key_mapping,
        get_model_conversion_mapping,
        is_transformers_conversion_available,
        requires_tensor_merging,
    )
    from .errors import ConversionError
    from .executor import ConversionResult, Progress, execute
    from .job import ConversionJob, convert
    from .planner import Plan, PlannedTensor, plan
    from .rules import Direction, RuleSet, model_types, rules_for
    from .spec import JobSpec
    from .verifier import verify


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'converter' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "MODELS_REQUIRING_TENSOR_MERGING",
    "ConversionError",
    "ConversionJob",
    "ConversionResult",
    "Direction",
    "JobSpec",
    "Plan",
    "PlannedTensor",
    "Progress",
    "RuleSet",
    "__version__",
    "convert",
    "execute",
    "get_checkpoint_conversion_mapping",
    "get_combined_key_mapping",
    "get_model_conversion_mapping",
    "is_transformers_conversion_available",
    "model_types",
    "plan",
    "requires_tensor_merging",
    "rules_for",
    "verify",
]
