"""What a conversion job is, as one frozen, JSON-serialisable value: where from, where to, and how.

The service builds a :class:`JobSpec` once, when a request is submitted (resolving a Hub revision to its commit);
the worker receives it as is; the CLI builds one from its arguments. Everything downstream
(:func:`converter.storage.open_source`, :func:`converter.storage.open_sink`, :class:`converter.job.ConversionJob`)
takes it typed.

>>> spec = JobSpec.from_cli("org/model", "./out", dtype="bf16")                   # doctest: +SKIP
>>> spec.source, spec.destination.kind
(SourceSpec(kind='hub', location='org/model', revision=None, sha=None), 'local')
>>> JobSpec.from_dict(spec.to_dict()) == spec
True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import CheckpointError
from .safetensors_io import DTYPE_ALIASES

LOCAL, HUB = "local", "hub"
HUB_PREFIX = "hf://"
DIRECTIONS = ("forward", "reverse")
DEFAULT_MAX_SHARD_BYTES = 5_000_000_000


def is_hub_ref(value: str) -> bool:
    """``hf://...`` or an http(s) URL: always a Hub reference, never a local path."""
    return value.startswith(("hf://", "http://", "https://"))


REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
#: hosts whose model URLs name a Hub repo (besides the configured ``HF_ENDPOINT``)
HUB_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")


def parse_hub_path(path: str) -> tuple[str, str | None]:
    """``hf://org/name@rev`` -> (``org/name``, ``rev``); ``hf://org/name`` -> (``org/name``, None). A model URL
    (``https://huggingface.co/org/name/tree/rev``) is read the same way."""
    if path.startswith(("http://", "https://")):
        ref = parse_hub_url(path)
        if ref is None:
            raise CheckpointError(
                f"{path!r} is not a Hub model URL (https://huggingface.co/org/name)", file=path
            )
        return ref
    rest = path[len(HUB_PREFIX) :] if path.startswith(HUB_PREFIX) else path
    repo, _, rev = rest.partition("@")
    if not REPO_ID.fullmatch(repo):
        raise CheckpointError(f"{path!r} is not hf://org/name[@revision]", file=path)
    return repo, rev or None


def parse_hub_url(url: str, endpoint: str | None = None) -> tuple[str, str | None] | None:
    """``https://huggingface.co/org/name`` -> (``org/name``, None); ``.../org/name/tree/v1.0`` -> (``org/name``,
    ``v1.0``). Also hf.co and the configured endpoint (``HF_ENDPOINT``). None when it is no model repo URL (a
    dataset, a space, a single file, another host)."""
    from urllib.parse import unquote, urlsplit

    from huggingface_hub import constants

    u = urlsplit(url)
    bases = [urlsplit(e) for e in (endpoint, os.environ.get("HF_ENDPOINT"), constants.ENDPOINT) if e]
    ours = any(u.scheme == b.scheme and u.netloc == b.netloc for b in bases)
    if u.scheme not in ("http", "https") or not (u.hostname in HUB_HOSTS or ours):
        return None
    parts = [unquote(p) for p in u.path.split("/") if p]
    if len(parts) < 2 or parts[0] in ("datasets", "spaces", "api"):
        return None
    repo = f"{parts[0]}/{parts[1]}"
    if not REPO_ID.fullmatch(repo):
        return None
    rest = parts[2:]
    if not rest:
        return repo, None
    if rest[0] == "tree" and len(rest) >= 2:
        return repo, "/".join(rest[1:])
    return None  # blob/resolve/commit URLs name a file or a commit page, not a repo revision


def looks_like_repo_id(value: str) -> bool:
    """``org/name`` or ``org/name@rev`` as typed for ``from_pretrained`` (no leading ``.``/``/``)."""
    return bool(REPO_ID.fullmatch(value.partition("@")[0])) and not value.startswith((".", "/"))


@dataclass(frozen=True)
class SourceSpec:
    """A checkpoint to read: a local folder (``location`` = its absolute path) or a Hub repo (``location`` = its id,
    ``revision`` as asked, ``sha`` the commit it resolved to). ``sha`` of a local folder: a fingerprint of its files."""

    kind: str
    location: str
    revision: str | None = None
    sha: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in (LOCAL, HUB):
            raise ValueError(f"source kind must be 'local' or 'hub', not {self.kind!r}")

    @classmethod
    def parse(cls, value: str | os.PathLike[str]) -> SourceSpec:
        """A Hub repo (``hf://org/name[@rev]``, a model URL, or a bare ``org/name[@rev]`` as ``from_pretrained`` takes
        it when no such local path exists), else a local folder."""
        text = os.fspath(value)
        if is_hub_ref(text) or (not os.path.exists(text) and looks_like_repo_id(text)):
            repo, rev = parse_hub_path(text)
            return cls(HUB, repo, rev)
        return cls(LOCAL, os.path.abspath(text))

    def describe(self) -> str:
        if self.kind == LOCAL:
            return self.location
        return f"hf://{self.location}" + (
            f"@{self.sha or self.revision}" if self.sha or self.revision else ""
        )


@dataclass(frozen=True)
class DestinationSpec:
    """Where the output goes: a local folder (created atomically) or a Hub repo (one commit, or a pull request)."""

    kind: str
    location: str
    create_pr: bool = False
    private: bool = False
    overwrite: bool = False
    revision: str | None = None  # a Hub branch to commit to (default: main)

    def __post_init__(self) -> None:
        if self.kind not in (LOCAL, HUB):
            raise ValueError(f"destination kind must be 'local' or 'hub', not {self.kind!r}")

    @classmethod
    def parse(
        cls,
        value: str | os.PathLike[str],
        *,
        create_pr: bool = False,
        private: bool = False,
        overwrite: bool = False,
    ) -> DestinationSpec:
        """``hf://org/name`` or a model URL: a Hub repo; anything else: a local folder (a bare ``org/name`` is a
        folder here: an output that does not exist yet must not be mistaken for a repo)."""
        text = os.fspath(value)
        if is_hub_ref(text):
            repo, rev = parse_hub_path(text)
            return cls(HUB, repo, create_pr, private, overwrite, rev)
        return cls(LOCAL, os.path.abspath(text), create_pr, private, overwrite)


@dataclass(frozen=True)
class JobSpec:
    """One conversion: source, destination, and the options that decide the output's bytes."""

    source: SourceSpec
    destination: DestinationSpec
    model_type: str | None = None
    direction: str = "forward"
    dtype: str | None = None  # "bf16" | "fp16" | "fp32" (normalised), None = keep
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    dequantize: bool = False
    check_layout: bool = True
    #: per-destination options that do not change the output (kept out of :meth:`key`)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be 'forward' or 'reverse', not {self.direction!r}")
        if self.dtype is not None:
            d = DTYPE_ALIASES.get(self.dtype.lower())
            short = {"BF16": "bf16", "F16": "fp16", "F32": "fp32"}.get(d or "")
            if short is None:
                raise ValueError(f"dtype must be one of bf16, fp16, fp32, not {self.dtype!r}")
            object.__setattr__(self, "dtype", short)
        if type(self.max_shard_bytes) is not int or self.max_shard_bytes <= 0:
            raise ValueError("max_shard_bytes must be a positive integer")

    @classmethod
    def from_cli(
        cls, source: str | os.PathLike[str], output: str | os.PathLike[str], **options: Any
    ) -> JobSpec:
        """A spec from command-line style arguments: ``JobSpec.from_cli("org/model", "out", dtype="bf16")``.
        Options: ``model_type``, ``direction``, ``dtype``, ``max_shard_size`` (``"5GB"`` or bytes),
        ``dequantize``, ``check_layout``, ``create_pr``, ``private``, ``overwrite``."""
        from .safetensors_io import parse_size

        dest = DestinationSpec.parse(
            output,
            create_pr=bool(options.pop("create_pr", False)),
            private=bool(options.pop("private", False)),
            overwrite=bool(options.pop("overwrite", False)),
        )
        size = options.pop("max_shard_size", DEFAULT_MAX_SHARD_BYTES)
        return cls(SourceSpec.parse(source), dest, max_shard_bytes=parse_size(size), **options)

    def with_source(self, **changes: Any) -> JobSpec:
        """The same spec with the source resolved (``sha``) or otherwise changed."""
        return replace(self, source=replace(self.source, **changes))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobSpec:
        fields = dict(d)
        fields["source"] = SourceSpec(**fields["source"])
        fields["destination"] = DestinationSpec(**fields["destination"])
        return cls(**fields)

    def key(self) -> str:
        """The request key: the same conversion (same source commit or fingerprint, options) to the same destination
        has the same key, whichever job runs it (16 hex digits; the service's idempotency)."""
        d = self.to_dict()
        d.pop("extra")
        return _digest(d)

    def content_key(self) -> str:
        """The conversion key: what decides the output's bytes (source commit or fingerprint, model_type, options),
        not where it goes. Recorded in every output shard's metadata, so the same conversion writes the same bytes
        anywhere, and a destination that holds it is recognised."""
        d = self.to_dict()
        for k in ("extra", "destination"):
            d.pop(k)
        return _digest(d)


def _digest(d: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
