"""Conversion rules as data: ops, rule types, one module per family, and the registry keyed by model_type
(every model type of transformers 5.23's conversion mapping) plus class-keyed sub-model rules (``SUBMODELS``).

>>> from converter.rules import rules_for
>>> rules_for("qwen3_moe").converters[0].to_dict()["targets"]
['mlp.experts.gate_up_proj']

``from_transformers(model_type)`` translates the installed transformers' rules for a type not registered here;
``quantization.py`` adds what pre-quantized (FP8, MXFP4) checkpoints need. Importing this package imports no
family module: the registry imports each when one of its model types is first looked up (``index.py``).
"""

from .core import (
    Convert,
    Direction,
    RegexRename,
    Rename,
    RenameGroup,
    Rule,
    RuleSet,
    compile_template,
    prefix_change,
    rule_from_dict,
    scoped,
)
from .from_transformers import from_transformers
from .ops import (
    Cast,
    Chunk,
    Concat,
    Conv3dToLinear,
    ErnieFuseAndSplitTextVisionExperts,
    ErnieSplitAndDecoupleTextVisionExperts,
    Fp8Dequantize,
    Identity,
    Interleave,
    LinearToConv3d,
    Mxfp4Dequantize,
    Op,
    PermuteForRope,
    Reshape,
    Split,
    Stack,
    Transpose,
    Unstack,
    op_from_dict,
)
from .registry import (
    LEGACY,
    REGISTRY,
    SUBMODELS,
    ModelTypeEntry,
    Nested,
    build_ruleset,
    get_entry,
    model_types,
    rules_for,
)

#: version of the rules themselves, recorded in every converted checkpoint; bump when any rule's behaviour changes
RULES_VERSION = "2"
#: version of the rules' JSON format (docs/rules-format.md), in every rules response of the API; bump when a loader
#: written for the previous format would map a name differently (a new rule kind, op, field or matching semantics)
FORMAT_VERSION = "1"

__all__ = [
    "Cast",
    "Chunk",
    "Concat",
    "Conv3dToLinear",
    "Convert",
    "Direction",
    "ErnieFuseAndSplitTextVisionExperts",
    "ErnieSplitAndDecoupleTextVisionExperts",
    "FORMAT_VERSION",
    "Fp8Dequantize",
    "Identity",
    "Interleave",
    "LEGACY",
    "LinearToConv3d",
    "ModelTypeEntry",
    "Mxfp4Dequantize",
    "Op",
    "PermuteForRope",
    "REGISTRY",
    "RULES_VERSION",
    "SUBMODELS",
    "Nested",
    "RenameGroup",
    "RegexRename",
    "Rename",
    "Reshape",
    "Rule",
    "RuleSet",
    "Split",
    "Stack",
    "Transpose",
    "Unstack",
    "build_ruleset",
    "compile_template",
    "from_transformers",
    "get_entry",
    "model_types",
    "op_from_dict",
    "prefix_change",
    "rule_from_dict",
    "rules_for",
    "scoped",
]
