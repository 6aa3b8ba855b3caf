"""ckpt-convert: convert checkpoints between the published (Hub) layout and the layout transformers v5 loads.

>>> from converter import plan, convert, rules_for
>>> p = plan("Mixtral-8x7B/")                      # headers only          # doctest: +SKIP
>>> convert("Mixtral-8x7B/", "Mixtral-8x7B-grouped/")                      # doctest: +SKIP
>>> convert("Mixtral-8x7B-grouped/", "back/", direction="reverse")         # doctest: +SKIP
"""

from ._version import __version__  # noqa: E402
from .conversion_mapping import (  # noqa: E402
    MODELS_REQUIRING_TENSOR_MERGING,
    get_checkpoint_conversion_mapping,
    get_combined_key_mapping,
    get_model_conversion_mapping,
    is_transformers_conversion_available,
    requires_tensor_merging,
)
from .errors import ConversionError  # noqa: E402
from .executor import ConversionResult, Progress, execute  # noqa: E402
from .job import ConversionJob, convert  # noqa: E402
from .planner import Plan, PlannedTensor, plan  # noqa: E402
from .rules import RuleSet, model_types, rules_for  # noqa: E402
from .spec import JobSpec  # noqa: E402
from .verifier import verify  # noqa: E402

__all__ = [
    "MODELS_REQUIRING_TENSOR_MERGING",
    "ConversionError",
    "ConversionJob",
    "JobSpec",
    "ConversionResult",
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
