"""Typed errors. Every error names the file and/or tensor it is about, and is raised before any byte is written.

Callers catch precisely (``except MissingExpertError``) or broadly (``except ConversionError``). The library knows
nothing of HTTP: the service maps each class to one status (``service/errors.py``).
"""

from __future__ import annotations


class ConversionError(Exception):
    """Base class of every error this library raises on purpose."""

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.file = file

    def to_dict(self) -> dict[str, str | None]:
        return {"type": type(self).__name__, "message": self.message, "key": self.key, "file": self.file}


# --- the checkpoint itself ---------------------------------------------------------------------------------------


class CheckpointError(ConversionError):
    """The source is not a usable checkpoint (no safetensors, unreadable config...)."""


class HeaderError(CheckpointError):
    """A safetensors header is malformed or disagrees with its file (length, JSON, dtype, shape, offsets)."""


class CheckpointIndexError(CheckpointError):
    """``model.safetensors.index.json`` is malformed, names a missing shard, or disagrees with the shards."""


class UnsafePathError(CheckpointError):
    """A file name would read or write outside the checkpoint / output folder."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled (``.bin``) checkpoint names something other than plain tensors: refused without running it."""


class DuplicateTensorError(CheckpointError):
    """The same tensor name appears in two shards."""


# --- the rules applied to the checkpoint ------------------------------------------------------------------------


class UnknownModelTypeError(ConversionError):
    """No rules are registered for this model_type."""

    def __init__(self, model_type: str, suggestions: list[str] | None = None) -> None:
        self.model_type = model_type
        self.suggestions = suggestions or []
        hint = f" Did you mean: {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"no conversion rules for model_type {model_type!r}.{hint}", key=model_type)


class UnsupportedError(ConversionError):
    """The checkpoint needs something we refuse to do rather than do wrong (an op we cannot run, ...)."""


class PlanError(ConversionError):
    """Base class of errors found while planning a conversion."""


class MissingExpertError(PlanError):
    """An expert index is missing (a gap in 0..E-1) or one projection has fewer experts than another."""


class DuplicateExpertError(PlanError):
    """Two source tensors claim the same expert index of the same merged tensor."""


class ExpertMismatchError(PlanError):
    """Tensors merged into one disagree in shape or dtype."""


class MissingSourceError(PlanError):
    """A merge needs several projections (e.g. gate and up) and one of them is absent."""


class TargetCollisionError(PlanError):
    """Two source tensors map to the same output name."""


class LayoutMismatchError(PlanError):
    """The checkpoint's tensor names are not where a model of this type keeps its weights, on either side of the
    rules (e.g. Mistral's native ``tok_embeddings``/``layers.N.attention.wq`` layout given as mixtral, or the original
    LLaVA codebase's ``model.mm_projector``): converting would publish names transformers ignores."""


class UnconvertedTensorError(PlanError):
    """A forward conversion would leave tensors that a rule of this model type converts (per-expert tensors not
    merged, e.g. a text model nested where its rules do not reach)."""


class ShapeError(PlanError):
    """An op cannot be applied to the shapes it receives (e.g. chunking an odd dimension in two)."""


# --- the output -------------------------------------------------------------------------------------------------


class OutputExistsError(ConversionError):
    """The output folder exists and is not empty; pass ``overwrite=True`` to replace it atomically."""


class CancelledError(ConversionError):
    """The conversion was cancelled by its caller; nothing was published."""


class InsufficientSpaceError(ConversionError):
    """The destination's filesystem has less free space than the output needs (plus a margin)."""


class OutputTooLargeError(ConversionError):
    """The planned output is larger than the configured cap (``CKPT_CONVERT_MAX_OUTPUT_BYTES``)."""


class SourceChangedError(CheckpointError):
    """The source's files changed between the job's submission and its run (it would convert something else)."""


class OverlappingPathsError(ConversionError):
    """The output folder is, contains or is inside the source folder."""


class DestinationBusyError(ConversionError):
    """Another job is writing the same destination right now."""


class VerificationError(ConversionError):
    """A written checkpoint does not match its plan (a tensor missing, or different bytes)."""


# --- the Hub ----------------------------------------------------------------------------------------------------


class HubError(ConversionError):
    """The Hub refused or failed a request (after retries), or answered something we cannot trust."""


class RepoNotFoundError(HubError):
    """The repository does not exist, or is not visible with this token."""


class RevisionNotFoundError(HubError):
    """The repository has no such branch, tag or commit."""


class GatedRepoError(HubError):
    """The repository is gated and this token has not been granted access."""
