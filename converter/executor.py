"""The executor: runs a :class:`~converter.planner.Plan`, streaming bytes from a Source into a Sink.

Output shards are written in order, each header first (it is known from the plan), then each tensor's pieces:
file ranges are copied with ``copy_file_range`` (no bytes through Python, no torch import), computed pieces
(cast, transpose) are evaluated one slice at a time, on the ``device`` asked for (default: a GPU when torch sees
one). Memory stays near one copy buffer / one expert.
Nothing is published unless every shard, the index and the copied files are complete.

>>> result = execute(plan(src), src, open_sink("out/", source=src))     # doctest: +SKIP
>>> result.shards[0]                                                   # doctest: +SKIP
('model-00001-of-00019.safetensors', 4998251264)
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ._version import __version__
from .errors import CancelledError
from .kernels import check_device, resolve_device
from .layout import Computed, Piece, VirtualTensor
from .planner import Plan
from .rules import RULES_VERSION
from .safetensors_io import INDEX_NAME, encode_header
from .storage import Reader, RunReader, ShardWritten, Sink, Source

#: computed pieces are produced in chunks of about this many bytes
COMPUTE_CHUNK = 64 * 1024 * 1024


@dataclass
class Progress:
    phase: str  # "converting", "writing index", "copying files", "publishing", "done"
    bytes_done: int
    bytes_total: int
    tensors_done: int
    tensors_total: int
    shard: str = ""
    started: float = field(default_factory=time.monotonic)

    @property
    def eta_seconds(self) -> float | None:
        elapsed = time.monotonic() - self.started
        if self.bytes_done <= 0 or elapsed <= 0:
            return None
        return (self.bytes_total - self.bytes_done) / (self.bytes_done / elapsed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "tensors_done": self.tensors_done,
            "tensors_total": self.tensors_total,
            "shard": self.shard,
            "eta_seconds": self.eta_seconds,
        }


@dataclass
class ConversionResult:
    output: str
    plan: Plan
    shards: list[tuple[str, int]]  # (file name, file size)
    copied_files: list[str]
    skipped_files: list[str]
    seconds: float
    noop: bool = False

    @property
    def bytes_written(self) -> int:
        return sum(n for _, n in self.shards)

    def summary(self) -> dict[str, Any]:
        return {
            **self.plan.summary(),
            "output": self.output,
            "shards": [{"file": f, "size": n} for f, n in self.shards],
            "copied_files": self.copied_files,
            "skipped_files": self.skipped_files,
            "seconds": round(self.seconds, 3),
            "bytes_written": self.bytes_written,
            "noop": self.noop,
        }


ProgressCallback = Callable[[Progress], None]


class _Streamer:
    """Writes pieces to an output file; evaluates computed pieces recursively in bounded chunks on ``device``
    (``None``/``"auto"``, ``"cpu"``, ``"cuda"``; resolved when the first computed piece runs, so that byte copies
    never import torch)."""

    def __init__(
        self,
        reader: Reader,
        tick: Callable[[int], None],
        copy_chunk: int = COMPUTE_CHUNK,
        device: str | None = None,
    ) -> None:
        self.reader = reader
        self.tick = tick
        self.copy_chunk = copy_chunk
        self.device = check_device(device)
        self._resolved: str | None = None

    def read_piece(self, p: Piece) -> bytes:
        if isinstance(p.source, str):
            return self.reader.read(p.source, p.offset, p.length)
        node: Computed = p.source
        if self._resolved is None:
            self._resolved = resolve_device(self.device)
        return node.compute(
            lambda i, a, b: self.read_tensor(node.inputs[i], a, b),
            p.offset,
            p.offset + p.length,
            self._resolved,
        )

    def read_tensor(self, vt: VirtualTensor, start: int, stop: int) -> bytes:
        return b"".join(self.read_piece(p) for p in vt.byte_range(start, stop))

    def write_shard(self, out: BinaryIO, tensors: list[VirtualTensor]) -> None:
        """Write the tensors' bytes in order. Runs of file pieces, across tensors, go to the reader together when it
        can take them (``copy_run``: a Hub reader coalesces adjacent ranges and keeps several requests in flight)."""
        copy_run = self.reader.copy_run if isinstance(self.reader, RunReader) else None
        run: list[tuple[str, int, int]] = []
        for vt in tensors:
            for p in vt.pieces:
                if isinstance(p.source, str):
                    if copy_run is None:
                        self._copy(out, p.source, p.offset, p.length)
                    else:
                        run.append((p.source, p.offset, p.length))
                    continue
                if copy_run is not None and run:
                    copy_run(out, run, self.tick)
                    run = []
                self._write_computed(out, p)
        if copy_run is not None and run:
            copy_run(out, run, self.tick)

    def _copy(self, out: BinaryIO, file: str, off: int, left: int) -> None:
        while left:  # chunked so progress and cancellation stay responsive
            n = min(left, self.copy_chunk)
            self.reader.copy_to(out, file, off, n)
            self.tick(n)
            off += n
            left -= n

    def _write_computed(self, out: BinaryIO, p: Piece) -> None:
        assert isinstance(p.source, Computed)
        step = p.source.slice_bytes or COMPUTE_CHUNK
        if step < COMPUTE_CHUNK:  # whole slices, about COMPUTE_CHUNK bytes at a time
            step *= COMPUTE_CHUNK // step
        a, end = p.offset, p.offset + p.length
        while a < end:
            b = min((a // step + 1) * step, end)
            data = self.read_piece(Piece(p.source, a, b - a))
            out.write(data)
            self.tick(len(data))
            a = b


def _counting_tick(state: Progress, sizes: list[int], tick: Callable[[int], None]) -> Callable[[int], None]:
    """A tick that also counts a shard's tensors as done when the bytes written pass their end."""
    ends = list(itertools.accumulate(sizes))
    base, written = state.tensors_done, 0

    def shard_tick(n: int) -> None:
        nonlocal written
        written += n
        while state.tensors_done - base < len(ends) and written >= ends[state.tensors_done - base]:
            state.tensors_done += 1
        tick(n)

    return shard_tick


def card_info(p: Plan) -> dict[str, str]:
    """What a Hub model card section says about a conversion."""
    return {
        "source": p.source,
        "model_type": p.model_type,
        "direction": p.direction,
        "rules version": RULES_VERSION,
        "tool": f"ckpt-convert {__version__}",
    }


def provenance(p: Plan) -> dict[str, str]:
    """safetensors ``__metadata__`` of every output shard: how it was made."""
    return {
        "format": "pt",
        "converted_by": f"ckpt-convert {__version__}",
        "model_type": p.model_type,
        "direction": p.direction,
        "rules_version": RULES_VERSION,
    }


class Meter:
    """Progress, cancellation and the optional rate cap, shared by everything that writes bytes for one run."""

    def __init__(
        self,
        p: Plan,
        progress: ProgressCallback | None,
        should_cancel: Callable[[], bool] | None,
        max_bytes_per_second: float | None,
        total_bytes: int | None = None,
        total_tensors: int | None = None,
    ) -> None:
        self.started = time.monotonic()
        total_bytes = p.total_bytes if total_bytes is None else total_bytes
        total_tensors = len(p.tensors) if total_tensors is None else total_tensors
        self.state = Progress("converting", 0, total_bytes, 0, total_tensors, started=self.started)
        self.progress, self.should_cancel, self.max_bps = progress, should_cancel, max_bytes_per_second
        self.last_report = 0.0

    @property
    def copy_chunk(self) -> int:
        if self.max_bps:  # about ten rate checks (and progress reports) a second
            return max(64 * 1024, min(COMPUTE_CHUNK, int(self.max_bps / 10)))
        return COMPUTE_CHUNK

    def report(self, force: bool = False) -> None:
        if self.progress is not None:
            now = time.monotonic()
            if force or now - self.last_report >= 0.1:
                self.last_report = now
                self.progress(self.state)

    def phase(self, name: str) -> None:
        self.state.phase = name
        self.report(force=True)

    def tick(self, n: int) -> None:
        self.state.bytes_done += n
        if self.should_cancel is not None and self.should_cancel():
            raise CancelledError("conversion cancelled; nothing was published")
        if self.max_bps:
            ahead = self.state.bytes_done / self.max_bps - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(ahead)
        self.report()


def write_shards(
    p: Plan,
    source: Source,
    sink: Sink,
    indices: list[int],
    meter: Meter,
    metadata: Mapping[str, str] | None = None,
    device: str | None = None,
) -> list[ShardWritten]:
    """Write shards ``indices`` of plan ``p`` into ``sink``: each header (known from the plan), then its tensors'
    bytes; then hand the finished shard to the sink (a Hub sink pre-uploads it and frees the local copy).

    Deterministic: the same plan writes the same bytes, so a shard written twice (a retried task) is identical."""
    meta = {**provenance(p), **(metadata or {})}
    out_shards: list[ShardWritten] = []
    with source.reader() as reader:
        streamer = _Streamer(reader, meter.tick, meter.copy_chunk, device)
        for i in indices:
            shard = p.shards[i]
            meter.state.shard = shard.file
            header, _ = encode_header(((t.name, t.dtype, t.shape) for t in shard.tensors), meta)
            done_before = meter.state.tensors_done
            streamer.tick = _counting_tick(meter.state, [t.nbytes for t in shard.tensors], meter.tick)
            with sink.open_shard(shard.file) as out:
                out.write(header)
                streamer.write_shard(out, [t.tensor for t in shard.tensors])
            meter.state.tensors_done = done_before + len(shard.tensors)
            meter.report()
            upload = sink.finish_shard(shard.file)
            out_shards.append(ShardWritten(shard.file, len(header) + shard.nbytes, upload))
    return out_shards


def publish(
    p: Plan, source: Source, sink: Sink, meter: Meter, commit_message: str = ""
) -> tuple[str, list[str], list[str]]:
    """After every shard is written: the index, the other files (config, tokenizer...), then the one commit.
    Returns (where it was published, files copied, files skipped)."""
    copy, skipped = p.copy_files, p.skipped_files
    if len(p.shards) > 1:
        meter.phase("writing index")
        sink.write_bytes(INDEX_NAME, index_json(p))
    meter.phase("copying files")
    for name in copy:
        if name == "config.json" and p.output_config is not None:
            continue  # rewritten below
        sink.copy_file(source, name)
    if p.output_config is not None:
        sink.write_bytes("config.json", (json.dumps(p.output_config, indent=2) + "\n").encode())
    meter.phase("publishing")
    where = sink.commit(commit_message or f"Convert {p.model_type} checkpoint ({p.direction})")
    return where, copy, skipped


def execute(
    p: Plan,
    source: Source,
    sink: Sink,
    *,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    commit_message: str = "",
    metadata: Mapping[str, str] | None = None,
    max_bytes_per_second: float | None = None,
    device: str | None = None,
) -> ConversionResult:
    """Write every shard of plan ``p`` into ``sink``, then the index and the other files, then commit.

    ``metadata`` is added to every shard's safetensors ``__metadata__`` (the service records its conversion key
    there). ``max_bytes_per_second`` caps the write rate (a shared disk or network stays usable for others).
    ``device`` is where computed tensors (cast, transpose, dequantize) are worked out: ``"cpu"``, ``"cuda"``
    (``"cuda:N"``), or ``None``/``"auto"`` for a GPU when torch sees one; the bytes are the same on any device.

    ``should_cancel`` is polled between chunks; when it returns True the sink is aborted and
    :class:`~converter.errors.CancelledError` raised. Any failure aborts the sink: nothing is published.
    """
    check_device(device)  # a bad name is refused before anything is written
    meter = Meter(p, progress, should_cancel, max_bytes_per_second)
    if p.is_noop:
        return publish_unchanged(p, source, sink, meter, commit_message)
    sink.begin()
    try:
        meter.report(force=True)
        shards = write_shards(p, source, sink, list(range(len(p.shards))), meter, metadata, device)
        where, copy, skipped = publish(p, source, sink, meter, commit_message)
    except BaseException:
        sink.abort()
        raise
    meter.phase("done")
    written = [(s.file, s.size) for s in shards]
    return ConversionResult(where, p, written, copy, skipped, time.monotonic() - meter.started)


def publish_unchanged(
    p: Plan, source: Source, sink: Sink, meter: Meter, commit_message: str = ""
) -> ConversionResult:
    """A no-op plan (already in the target layout): the destination still ends up holding the checkpoint, as the
    source's files unchanged (hard links for a local folder, an upload the Hub deduplicates for a repo), so that a
    finished conversion always means "the destination loads in the target layout". Nothing is written when the
    destination is the source itself (a pull request on a repo already in the target layout)."""
    if sink.holds(source):
        meter.phase("done")
        return ConversionResult(source.description, p, [], [], p.skipped_files, 0.0, noop=True)
    files = p.source_index.files
    sizes = {f: h.file_size for f, h in p.source_index.shards.items()}
    sink.begin()
    try:
        meter.phase("linking files")
        for name in files:
            sink.link_file(source, name, sizes.get(name))
            meter.tick(sizes.get(name, 0))
        meter.phase("copying files")
        for name in p.copy_files:
            sink.copy_file(source, name)
        meter.phase("publishing")
        where = sink.commit(
            commit_message or f"Copy {p.model_type} checkpoint (already in the {p.direction} layout)"
        )
    except BaseException:
        sink.abort()
        raise
    meter.phase("done")
    linked = [(f, sizes[f]) for f in files if f in sizes]
    return ConversionResult(
        where, p, linked, p.copy_files, p.skipped_files, time.monotonic() - meter.started, noop=True
    )


def index_json(p: Plan) -> bytes:
    doc = {
        "metadata": {"total_size": p.total_bytes},
        "weight_map": {t.name: s.file for s in p.shards for t in s.tensors},
    }
    return (json.dumps(doc, indent=2) + "\n").encode()
