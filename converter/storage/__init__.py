"""Where checkpoints are read from and written to: one factory pair, typed protocols, local and Hub backends.

>>> src = open_source("org/model")                      # a Hub repo, resolved to one commit   # doctest: +SKIP
>>> sink = open_sink("./out", source=src)               # a local folder, published atomically # doctest: +SKIP

``base.py`` has the protocols (:class:`Source`, :class:`Reader`, :class:`Sink`), ``local.py`` folders on this
machine, ``hub_source.py`` / ``hub_sink.py`` Hub repos, ``hub_adapter.py`` the huggingface_hub internals the sink
needs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import CheckpointError
from ..spec import HUB, DestinationSpec, SourceSpec
from .base import (
    CachedSource,
    PartsSink,
    Reader,
    RunReader,
    ShardWritten,
    Sink,
    Source,
    SpaceAware,
    split_other_files,
    unwrap,
)
from .local import LocalReader, LocalSink, LocalSource


def open_source(
    source: str | os.PathLike[str] | SourceSpec | Source,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    roots: Sequence[Path] | None = None,
) -> Source:
    """A Source for a :class:`SourceSpec`, or for a string as the CLI takes it (:meth:`SourceSpec.parse`: a Hub
    repo ``hf://org/name[@rev]``, a model URL, a bare ``org/name`` when no such local path exists, else a local
    folder). A Hub source is resolved to one commit (the spec's ``sha`` when it has one). A local folder is held
    open by descriptor, beneath one of ``roots`` when given (no link followed on the way). A Source is returned as
    is."""
    if isinstance(source, (str, os.PathLike)):
        source = SourceSpec.parse(source)
    if not isinstance(source, SourceSpec):
        return source
    if source.kind == HUB:
        from .hub_source import HubSource

        return HubSource(
            source.location, source.sha or source.revision or "main", token=token, endpoint=endpoint
        )
    if roots is None and not os.path.isdir(source.location):
        raise CheckpointError(f"source {source.location} does not exist", file=source.location)
    return LocalSource(source.location, roots=roots)


def open_sink(
    destination: str | os.PathLike[str] | DestinationSpec,
    *,
    source: Source | None = None,
    card: dict[str, str] | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    key: str | None = None,
    tag: str | None = None,
    pr_revision: str | None = None,
    roots: Sequence[Path] | None = None,
) -> PartsSink:
    """A Sink for a :class:`DestinationSpec` (or a string: ``hf://org/name`` / a model URL is a Hub repo, anything
    else a folder). ``key``: the conversion key, by which a sink recognises its own earlier output
    (:meth:`Sink.already_published`) and a Hub sink its open pull request; ``tag``: a fixed name for a local
    staging folder (a re-run of the same job replaces what a lost run left); ``pr_revision``: the pull request a
    sharded job's first task opened; ``roots``: a local destination's parent must be beneath one of them (opened
    without following links, and everything written relative to it)."""
    if isinstance(destination, (str, os.PathLike)):
        destination = DestinationSpec.parse(destination)
    if destination.kind == HUB:
        from .hub_sink import HubSink

        return HubSink(
            destination.location,
            revision=destination.revision or "main",
            create_pr=destination.create_pr,
            private=destination.private,
            token=token,
            endpoint=endpoint,
            pr_key=key,
            card=card,
            pr_revision=pr_revision,
            base_model=getattr(unwrap(source), "repo_id", None) if source is not None else None,
            overwrite=destination.overwrite,
        )
    inner = unwrap(source) if source is not None else None
    root = inner.root if isinstance(inner, LocalSource) else None
    return LocalSink(
        destination.location, overwrite=destination.overwrite, source_root=root, tag=tag, key=key, roots=roots
    )


__all__ = [
    "CachedSource",
    "LocalReader",
    "LocalSink",
    "LocalSource",
    "PartsSink",
    "Reader",
    "RunReader",
    "ShardWritten",
    "Sink",
    "Source",
    "SpaceAware",
    "open_sink",
    "open_source",
    "split_other_files",
    "unwrap",
]
