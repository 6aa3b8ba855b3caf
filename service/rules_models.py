"""The rules contract: the bodies of ``GET /rules``, ``GET /rules/{model_type}``, ``POST /rules/resolve`` and the
name preview as pydantic models, so ``/openapi.json`` carries their JSON Schema. docs/rules-format.md says what
every field means and how to apply a rules document.

The routes serialise rules straight from ``converter``'s dataclasses (cached bytes, no model in the hot path); these
models are the schema of those documents, and tests/test_rules_format.py validates real responses of every model
type against the schema the API publishes. Every object forbids unknown fields (``additionalProperties: false``):
a field the converter starts emitting without a schema (and format version) change fails that test.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from converter.rules import FORMAT_VERSION

Direction = Literal["forward", "reverse"]

#: a name template: optional `^`, optional boundary dots, dotted components (`*` = an index inside one)
TEMPLATE_PATTERN = r"^(?:\^(?:[^.][^.]*(?:\.[^.]+)*\.?)?|(?:\.[^.]+|[^.^][^.]*)(?:\.[^.]+)*\.?)$"
#: a shape expression: `*`, or a product of non-negative ints and config attribute names
SHAPE_EXPR_PATTERN = r"^(?:\*|(?:[0-9]+|[A-Za-z_][A-Za-z0-9_]*)(?:\*(?:[0-9]+|[A-Za-z_][A-Za-z0-9_]*))*)$"
#: a module path (a scope): dotted components, or empty for the whole name
PATH_PATTERN = r"^(?:[^.]+(?:\.[^.]+)*)?$"

Template = Annotated[
    str,
    Field(
        pattern=TEMPLATE_PATTERN,
        description="name template (docs/rules-format.md#name-templates): whole dotted components, `*` = an "
        "index (digits), leading `^` = start of the name, leading/trailing `.` = not the first/last component",
        examples=["block_sparse_moe", "experts.*.w1.weight", "^model.vision_tower", ".ln1"],
    ),
]
ShapeExpr = Annotated[
    int | Annotated[str, Field(pattern=SHAPE_EXPR_PATTERN)],
    Field(
        description="a dimension: an int, `*` (any), or a product of ints and config attribute names looked up in "
        "config.json's text_config, then its root (docs/rules-format.md#shape-expressions)",
        examples=["hidden_size", "2*moe_intermediate_size", "num_key_value_heads*head_dim", 64],
    ),
]
ModulePath = Annotated[str, Field(pattern=PATH_PATTERN)]
When = Annotated[
    dict[str, list[str]],
    Field(
        description="conditions on config.json, all of which must hold: a dotted config path -> allowed values "
        "(a list-valued entry such as `architectures` matches when one of its items is allowed). Absent: "
        "always applies. docs/rules-format.md#conditions-when",
        examples=[{"vision_config.model_type": ["clip_vision_model", "siglip_vision_model"]}],
    ),
]
Scope = Annotated[
    ModulePath,
    Field(
        description="a nested sub-model's module path: the rule only touches names under `scope.`, and its "
        "templates are matched after that prefix (`^` = right after it). Empty/absent: the whole name",
        examples=["model.vision_tower", "model.language_model"],
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- ops (docs/rules-format.md#ops) -------------------------------------------------------------------------------


class StackOp(_Strict):
    """Each slot's per-expert list -> one tensor with a new dim `dim` (experts in index order)."""

    op: Literal["stack"]
    dim: int


class UnstackOp(_Strict):
    """Each slot -> one tensor per index of dim `dim` (the target's `*`)."""

    op: Literal["unstack"]
    dim: int


class ConcatOp(_Strict):
    """All slots, in source order (a list slot's tensors in index order), concatenated on `dim` into one."""

    op: Literal["concat"]
    dim: int
    num_shards_attribute: str | None = Field(description="kept for the inverse (chunk); no effect here")


class ChunkOp(_Strict):
    """One slot split on `dim` into equal parts: one slot per target, or (`num_shards_attribute`) one slot
    holding `config.<num_shards_attribute>` parts, indexed like experts (the target's `*`)."""

    op: Literal["chunk"]
    dim: int
    num_shards_attribute: str | None


class SplitOp(_Strict):
    """The first slot split on `dim` into pieces of `sizes` (shape expressions), one slot each."""

    op: Literal["split"]
    dim: int
    sizes: list[ShapeExpr]


class InterleaveOp(_Strict):
    """Rows of `dim` `[g0, u0, g1, u1, ...]` -> `[g0, g1, ..., u0, u1, ...]`; `inverse`: back."""

    op: Literal["interleave"]
    dim: int
    inverse: bool


class ReshapeOp(_Strict):
    """The same bytes viewed with `shape` (one -1 allowed)."""

    op: Literal["reshape"]
    shape: list[int]


class Conv3dToLinearOp(_Strict):
    """`[out, in_channels, *kernel_size]` -> `[out, in_channels * prod(kernel_size)]` (same bytes)."""

    op: Literal["conv3d_to_linear"]
    in_channels: int
    kernel_size: list[int]


class LinearToConv3dOp(_Strict):
    """`[out, n]` -> `[out, in_channels, *kernel_size]` (same bytes)."""

    op: Literal["linear_to_conv3d"]
    in_channels: int
    kernel_size: list[int]


class TransposeOp(_Strict):
    """Swap dims `dim0` and `dim1` of every slot; with `check_dims`, only a tensor whose transpose (and not
    itself) has the expected `shape`."""

    op: Literal["transpose"]
    dim0: int
    dim1: int
    check_dims: bool
    shape: list[ShapeExpr] = Field(
        description="expected output shape (shape expressions); [] without check_dims"
    )


class CastOp(_Strict):
    """Every slot converted to `dtype` (safetensors dtype name), round to nearest even."""

    op: Literal["cast"]
    dtype: str


class PermuteForRopeOp(_Strict):
    """Per head, q/k rows from interleaved RoPE pairs to rotate-half (`inverse`: back)."""

    op: Literal["permute_for_rope"]
    subconfig_key: str | None = Field(
        description="config.json key holding num_attention_heads; null: the root"
    )
    permute_layer_names: list[str] = Field(
        description="only slots whose template contains one of these; []: all"
    )
    inverse: bool


class ErnieFuseOp(_Strict):
    """Ernie-4.5-VL: each source's experts split into one equal run per target, each run stacked on
    `stack_dim`, the sources of a target then concatenated on `concat_dim`."""

    op: Literal["ernie_fuse_and_split_text_vision_experts"]
    stack_dim: int
    concat_dim: int


class ErnieSplitOp(_Strict):
    """Inverse of `ernie_fuse_and_split_text_vision_experts`."""

    op: Literal["ernie_split_and_decouple_text_vision_experts"]
    stack_dim: int
    concat_dim: int


class Fp8DequantizeOp(_Strict):
    """Slots `[weight, weight_scale_inv]` -> `[weight]` in `dtype` (block-scaled FP8)."""

    op: Literal["fp8_dequantize"]
    dtype: str


class Mxfp4DequantizeOp(_Strict):
    """Slots `[blocks, scales]` -> `[E, in, out]` in `dtype` (MXFP4)."""

    op: Literal["mxfp4_dequantize"]
    dtype: str


class IdentityOp(_Strict):
    """Slots passed through unchanged."""

    op: Literal["identity"]


Op = Annotated[
    StackOp
    | UnstackOp
    | ConcatOp
    | ChunkOp
    | SplitOp
    | InterleaveOp
    | ReshapeOp
    | Conv3dToLinearOp
    | LinearToConv3dOp
    | TransposeOp
    | CastOp
    | PermuteForRopeOp
    | ErnieFuseOp
    | ErnieSplitOp
    | Fp8DequantizeOp
    | Mxfp4DequantizeOp
    | IdentityOp,
    Field(discriminator="op"),
]


# --- rules (docs/rules-format.md#rules) ---------------------------------------------------------------------------


class RenameRule(_Strict):
    """Replace the first match of `source` with `target` (`*` indices carried over in order); not on a name
    an `unless` template matches, nor on its own output (the self-guard)."""

    kind: Literal["rename"]
    source: Template
    target: Template
    unless: list[Template] = Field([], description="templates (matched like source) that disable the rule")
    reversible: bool = Field(
        True, description="false: one-way (legacy fix-ups); left out of the reverse rules"
    )
    index_offset: int = Field(0, description="added to the first `*` index")
    note: str = ""
    scope: Scope = ""
    when: When = {}


class RenameGroupRule(_Strict):
    """Renames applied at once (the leftmost match wins; they do not chain), active only for a checkpoint with a
    name matching the first rename."""

    kind: Literal["rename_group"]
    renames: list[RenameRule] = Field(min_length=2)
    note: str = ""
    when: When = {}


class RegexRenameRule(_Strict):
    """A Python `re.sub(pattern, replacement, name, count=1)` (after `scope.` when scoped); one-way."""

    kind: Literal["regex_rename"]
    pattern: str
    replacement: str
    scope: Scope = ""
    when: When = {}


class ConvertRule(_Strict):
    """Tensors matching `sources` (one slot per source; `*` = expert index), grouped by what surrounds the
    match, run through `ops` in order, named by `targets`."""

    kind: Literal["convert"]
    sources: list[Template] = Field(min_length=1)
    targets: list[Template] = Field(min_length=1)
    ops: list[Op] = Field(min_length=1)
    note: str = ""
    scope: Scope = ""
    when: When = {}
    ops_described: list[str] | None = Field(None, description="each op in words (not part of the semantics)")
    describe: str | None = Field(None, description="the ops in words, joined (not part of the semantics)")


Rule = Annotated[RenameRule | RenameGroupRule | RegexRenameRule | ConvertRule, Field(discriminator="kind")]


# --- documents -------------------------------------------------------------------------------------------------------


class NestedRef(_Strict):
    """A nested sub-model with rules of its own: `rules_of` (a class or model type) under `path`."""

    path: str
    rules_of: str
    when: When = {}


class RuleSummary(_Strict):
    model_type: str
    conversion: Literal["converts", "none", "refused"] = Field(
        description="converts: names change or tensors merge; none: transformers loads this type as published "
        "(legacy renames only); refused: see unsupported_reason"
    )
    family: str
    alias_of: str | None
    renames: int = Field(description="rename rules of this type (legacy renames not counted)")
    converters: int
    ops: list[str]
    requires_tensor_merging: bool = Field(
        description="some rule is a converter (renaming keys is not enough)"
    )
    merges_tensors: bool = Field(description="several source tensors become one (stack, concat)")
    submodels: list[NestedRef] = Field(
        description="nested sub-models whose rules this type always composes in"
    )
    quantized: dict[str, list[Literal["keep", "dequantize"]]] = Field(
        description='pre-quantized formats converted, and how (`{"fp8": ["keep", "dequantize"]}`)'
    )
    supported: bool
    unsupported_reason: str | None


class RuleList(_Strict):
    format_version: Literal[FORMAT_VERSION] = Field(description="version of the rules JSON format")  # type: ignore[valid-type]
    data: list[RuleSummary]
    count: int


class RulesDocument(RuleSummary):
    """One model type's rules in one direction, in application order (docs/rules-format.md)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model_type": "mixtral",
                    "format_version": FORMAT_VERSION,
                    "direction": "forward",
                    "rules": [
                        {"kind": "rename", "source": "block_sparse_moe", "target": "mlp"},
                        {
                            "kind": "convert",
                            "sources": ["experts.*.w1.weight", "experts.*.w3.weight"],
                            "targets": ["experts.gate_up_proj"],
                            "ops": [
                                {"op": "stack", "dim": 0},
                                {"op": "concat", "dim": 1, "num_shards_attribute": None},
                            ],
                        },
                    ],
                }
            ]
        },
    )
    format_version: Literal[FORMAT_VERSION] = Field(  # type: ignore[valid-type]
        description="version of this JSON format (docs/rules-format.md); a loader refuses one it does not know"
    )
    direction: Direction
    rules: list[Rule] = Field(
        description="forward: the renames in application order, then the converters; reverse: the converters, "
        "then the renames (already inverted, in application order)"
    )
    keep_fp32: list[Template] = Field(description="output names kept in float32 under a bf16/fp16 cast")
    keep_fp32_for_fp16: list[Template] = Field(description="output names kept in float32 under an fp16 cast")
    nested: list[NestedRef] = Field(
        description="sub-models composed in from the config (POST /rules/resolve)"
    )


class PreviewEntry(_Strict):
    source: str
    targets: list[str] = Field(
        description="output name(s); a template with * for per-expert outputs of a split"
    )
    how: Literal["copy", "rename", "convert"]
    rules: list[int] = Field(
        description="the rules that applied to this name, in application order: indices into the response's "
        "`rules` (renames that changed the name, and the converter that took it; reverse: the converter, then the "
        "renames that changed its outputs)"
    )
    rule: ConvertRule | None = Field(
        None,
        deprecated=True,
        description="deprecated, use `rules`: the converter that applies, without its words",
    )


class PreviewResponse(_Strict):
    model_type: str
    direction: Direction
    format_version: Literal[FORMAT_VERSION]  # type: ignore[valid-type]
    rules: list[Rule] = Field(
        description="the rules applied, as in GET /rules/{model_type} (POST /rules/resolve with a config)"
    )
    data: list[PreviewEntry]
