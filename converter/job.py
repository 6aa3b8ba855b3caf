"""The one job path: what the CLI runs in one process and the workers run in one task or several.

>>> job = ConversionJob(JobSpec.from_cli("org/Mixtral-8x7B", "./grouped"))   # doctest: +SKIP
>>> job.run().output                                                         # doctest: +SKIP
'/abs/grouped'

A job plans from the checkpoint's headers (read once: :attr:`ConversionJob.headers`, which can be handed to other
processes), then either runs whole (:meth:`ConversionJob.run`), or in parts: :meth:`begin` prepares the
destination, :meth:`write_part` writes some output shards (in any process, any number of times: the same shard is
written with the same bytes), and :meth:`finish` writes the index and the other files and makes the one commit.
Every way out of a failed run publishes nothing. :meth:`already_published` recognises a destination that already
holds this very conversion (a run that died after publishing).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConversionError, InsufficientSpaceError, OutputTooLargeError, SourceChangedError
from .executor import ConversionResult, Meter, ProgressCallback, card_info, execute, publish, write_shards
from .planner import Plan, plan
from .safetensors_io import CheckpointIndex
from .spec import LOCAL, DestinationSpec, JobSpec, SourceSpec
from .storage import (
    CachedSource,
    LocalSource,
    PartsSink,
    ShardWritten,
    Sink,
    Source,
    SpaceAware,
    open_sink,
    open_source,
)


@dataclass(frozen=True)
class CheckpointHeaders:
    """What planning reads from a source (its shard headers and config.json), JSON-serialisable so that a sharded
    job's tasks plan the same checkpoint without reading it again."""

    index: CheckpointIndex
    config: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index.to_dict(), "config": self.config}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckpointHeaders:
        return cls(CheckpointIndex.from_dict(d["index"]), d.get("config"))


class ConversionJob:
    """A :class:`JobSpec` being run. ``token``/``endpoint``: the Hub's; ``tag`` names a local destination's staging
    folder after the job (so a re-run replaces what a lost run left); ``max_bytes_per_second`` caps the write
    rate; ``device`` is where arithmetic ops run (None: a GPU if torch sees one); ``roots``: local paths must be
    beneath one of them, checked when each file is opened (the workers pass their allowed roots);
    ``max_output_bytes`` refuses a larger output before anything is written."""

    def __init__(
        self,
        spec: JobSpec,
        *,
        token: str | None = None,
        endpoint: str | None = None,
        tag: str | None = None,
        max_bytes_per_second: float | None = None,
        device: str | None = None,
        headers: CheckpointHeaders | None = None,
        roots: Sequence[Path] | None = None,
        max_output_bytes: int | None = None,
    ) -> None:
        self.spec, self.token, self.endpoint, self.tag, self.roots = spec, token, endpoint, tag, roots
        self.max_bytes_per_second, self.device = max_bytes_per_second, device
        self.max_output_bytes = max_output_bytes
        self.key = spec.content_key()
        self.source: Source = open_source(spec.source, token=token, endpoint=endpoint, roots=roots)
        self._headers = headers
        self._plan: Plan | None = None

    # --- planning --------------------------------------------------------------------------------------------------

    @property
    def headers(self) -> CheckpointHeaders:
        if self._headers is None:
            self._check_unchanged()
            self._headers = CheckpointHeaders(self.source.read_index(), self.source.read_config())
        return self._headers

    def _check_unchanged(self) -> None:
        """A local source fingerprinted at submit must still be the same files (what the job was keyed on)."""
        src = self.spec.source
        if src.kind == LOCAL and src.sha and isinstance(self.source, LocalSource):
            now = self.source.folder.fingerprint()
            if now != src.sha:
                raise SourceChangedError(
                    f"source {src.location} changed since the job was submitted; submit it again",
                    file=src.location,
                )

    @property
    def planned_source(self) -> Source:
        """The source, with its headers as already read."""
        return CachedSource(self.source, self.headers.index, self.headers.config)

    def plan(self) -> Plan:
        if self._plan is None:
            s = self.spec
            self._plan = plan(
                self.planned_source,
                model_type=s.model_type,
                direction=s.direction,
                dtype=s.dtype,
                max_shard_size=s.max_shard_bytes,
                dequantize=s.dequantize,
                check_layout=s.check_layout,
            )
        return self._plan

    # --- the destination ----------------------------------------------------------------------------------------------

    def sink(self, pr_revision: str | None = None) -> PartsSink:
        return open_sink(
            self.spec.destination,
            source=self.source,
            card=card_info(self.plan()),
            token=self.token,
            endpoint=self.endpoint,
            key=self.key,
            tag=self.tag,
            pr_revision=pr_revision,
            roots=self.roots,
        )

    def already_published(self) -> str | None:
        """Where this very conversion was published already (by a run that died before recording it), or None."""
        return open_sink(
            self.spec.destination,
            source=self.source,
            token=self.token,
            endpoint=self.endpoint,
            key=self.key,
            roots=self.roots,
        ).already_published()

    @property
    def commit_message(self) -> str:
        p = self.plan()
        return f"Convert {self.spec.source.describe()} ({p.model_type}, {p.direction}) with ckpt-convert [{self.key}]"

    @property
    def metadata(self) -> dict[str, str]:
        """Recorded in every output shard: the conversion key (a retry writes the same bytes)."""
        return {"conversion": self.key}

    # --- whole, in one process ------------------------------------------------------------------------------------

    def run(
        self,
        *,
        progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> ConversionResult:
        """Write everything and publish (or, for a no-op, hand the destination the source's files)."""
        sink = self.sink()
        self.check_room(sink)
        return execute(
            self.plan(),
            self.planned_source,
            sink,
            progress=progress,
            should_cancel=should_cancel,
            commit_message=self.commit_message,
            metadata=self.metadata,
            max_bytes_per_second=self.max_bytes_per_second,
            device=self.device,
        )

    # --- in parts, across processes ---------------------------------------------------------------------------------

    def begin(self) -> str | None:
        """Prepare the destination for parts written elsewhere (a staging folder, the repo and pull request);
        returns the pull request's revision for :meth:`write_part` / :meth:`finish` (None if there is none)."""
        sink = self.sink()
        self.check_room(sink)
        sink.begin()
        return getattr(sink, "pr_revision", None)

    def write_part(
        self,
        indices: Iterable[int],
        *,
        pr_revision: str | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> list[ShardWritten]:
        """Write (and for the Hub, pre-upload) output shards ``indices``; safe to run again."""
        p = self.plan()
        sink = self.sink(pr_revision)
        sink.attach()
        meter = Meter(p, progress, should_cancel, self.max_bytes_per_second)
        written = write_shards(p, self.planned_source, sink, list(indices), meter, self.metadata, self.device)
        meter.report(force=True)
        return written

    def finish(
        self,
        parts: Iterable[ShardWritten],
        *,
        pr_revision: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> ConversionResult:
        """After every shard is written: the index, the other files, and the one commit."""
        p = self.plan()
        sink = self.sink(pr_revision)
        sink.attach()
        written = {s.file: s for s in parts}
        try:
            missing = [s.file for s in p.shards if s.file not in written]
            if missing:
                raise ConversionError(f"shard {missing[0]} was never written", file=missing[0])
            for s in p.shards:
                sink.add_written(written[s.file])
            meter = Meter(p, progress, None, None)
            meter.state.bytes_done, meter.state.tensors_done = p.total_bytes, len(p.tensors)
            where, copied, skipped = publish(p, self.planned_source, sink, meter, self.commit_message)
        except BaseException:
            sink.abort()
            raise
        shards = [(written[s.file].file, written[s.file].size) for s in p.shards]
        return ConversionResult(where, p, shards, copied, skipped, 0.0)

    def check_room(self, sink: Sink) -> None:
        """Refuse before writing: an output over ``max_output_bytes``, or more than the destination has room for
        (plus a margin of 1% or 64 MB, whichever is larger). A no-op (hard links) needs no room."""
        p = self.plan()
        if p.is_noop:
            return
        sizes = [s.nbytes for s in p.shards]
        total = sum(sizes)
        if self.max_output_bytes is not None and total > self.max_output_bytes:
            raise OutputTooLargeError(
                f"the output would be {total} bytes, over the {self.max_output_bytes}-byte cap "
                "(CKPT_CONVERT_MAX_OUTPUT_BYTES)"
            )
        if isinstance(sink, SpaceAware):
            need = sink.bytes_needed(sizes)
            need += max(64 * 1024 * 1024, need // 100)
            free = sink.free_bytes()
            if free < need:
                raise InsufficientSpaceError(
                    f"{sink.description} has {free} bytes free; the output needs {need} (with a margin)",
                    file=sink.description,
                )

    def abort(self, pr_revision: str | None = None) -> None:
        """Remove what the parts wrote (a cancelled or failed sharded job); publishes nothing."""
        sink = self.sink(pr_revision)
        try:
            sink.attach()
        except ConversionError:
            return
        sink.abort()


def convert(
    source: str | os.PathLike[str] | Source,
    output: str | os.PathLike[str] | Sink,
    *,
    model_type: str | None = None,
    direction: str = "forward",
    dtype: str | None = None,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    config: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    allow_noop: bool = False,
    dequantize: bool = False,
    create_pr: bool = False,
    private: bool = False,
    check_layout: bool = True,
    device: str | None = None,
) -> ConversionResult:
    """Plan and run a conversion of ``source`` into ``output`` (a folder, created atomically, or ``hf://org/name``).

    >>> convert("Mixtral-8x7B/", "Mixtral-8x7B-grouped/", dtype="bf16").shards[0]      # doctest: +SKIP
    ('model-00001-of-00019.safetensors', 4998251264)

    A checkpoint already in the target layout is a no-op (``result.noop``): ``output`` gets the source's files
    unchanged (hard links where possible). ``dequantize`` dequantizes a pre-quantized (FP8, MXFP4) checkpoint; by
    default it stays quantized. Source and output may also be Source / Sink objects. ``allow_noop`` is accepted for
    compatibility and has no effect. ``device`` is where computed tensors are worked out (``"cpu"``, ``"cuda"``,
    None: a GPU when torch sees one); the bytes are the same on any device.
    """
    from .safetensors_io import parse_size

    if isinstance(source, (str, os.PathLike)) and isinstance(output, (str, os.PathLike)) and config is None:
        spec = JobSpec(
            SourceSpec.parse(source),
            DestinationSpec.parse(output, create_pr=create_pr, private=private, overwrite=overwrite),
            model_type=model_type,
            direction=direction,
            dtype=dtype,
            max_shard_bytes=parse_size(max_shard_size),
            dequantize=dequantize,
            check_layout=check_layout,
        )
        return ConversionJob(spec, device=device).run(progress=progress, should_cancel=should_cancel)
    src = open_source(source)
    p = plan(
        src,
        model_type=model_type,
        direction=direction,
        dtype=dtype,
        max_shard_size=max_shard_size,
        config=config,
        dequantize=dequantize,
        check_layout=check_layout,
    )
    sink = (
        open_sink(
            DestinationSpec.parse(output, create_pr=create_pr, private=private, overwrite=overwrite),
            source=src,
            card=card_info(p),
        )
        if isinstance(output, (str, os.PathLike))
        else output
    )
    return execute(p, src, sink, progress=progress, should_cancel=should_cancel, device=device)


__all__ = ["CheckpointHeaders", "ConversionJob", "convert"]
