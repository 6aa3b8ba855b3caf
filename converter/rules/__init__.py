"""Conversion rules as data: ops, rule types, one module per family, and the registry keyed by model_type.

>>> from converter.rules import rules_for
>>> rules_for("qwen3_moe").converters[0].to_dict()["targets"]
['mlp.experts.gate_up_proj']
"""

from . import feed_forward_moe, granitemoe, legacy, mixtral, qwen2_moe, vlm  # noqa: F401  (register families)
from .core import Convert, RegexRename, Rename, Rule, RuleSet, compile_template, prefix_change, rule_from_dict
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
from .registry import LEGACY, REGISTRY, ModelTypeEntry, build_ruleset, get_entry, model_types, rules_for

#: rules format version, recorded in every converted checkpoint; bump when any rule's behaviour changes
RULES_VERSION = "1"

__all__ = [
    "Cast",
    "Chunk",
    "Concat",
    "Conv3dToLinear",
    "Convert",
    "ErnieFuseAndSplitTextVisionExperts",
    "ErnieSplitAndDecoupleTextVisionExperts",
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
    "get_entry",
    "model_types",
    "op_from_dict",
    "prefix_change",
    "rule_from_dict",
    "rules_for",
]
