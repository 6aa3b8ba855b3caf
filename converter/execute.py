"""The executor: runs a :class:`~converter.plan.Plan`, streaming bytes from a Source into a Sink.

Output shards are written in order, each header first (it is known from the plan), then each tensor's pieces:
file ranges are copied with ``copy_file_range`` (no bytes through Python, no torch import), computed pieces
(cast, transpose) are evaluated one slice at a time. Memory stays near one copy buffer / one expert.
Nothing is published unless every shard, the index and the copied files are complete.

>>> result = convert("Mixtral-8x7B/", "Mixtral-8x7B-grouped/")         # doctest: +SKIP
>>> result.shards[0]                                                   # doctest: +SKIP
('model-00001-of-00019.safetensors', 4998251264)
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from . import __version__
from .errors import CancelledError
from .layout import Computed, Piece, VirtualTensor
from .plan import DEFAULT_MAX_SHARD_SIZE, Plan, plan
from .rules import RULES_VERSION
from .safetensors_io import INDEX_NAME, encode_header
from .storage import Reader, Sink, Source, open_sink, open_source

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
        }


ProgressCallback = Callable[[Progress], None]


class _Streamer:
    """Writes pieces to an output file; evaluates computed pieces recursively in bounded chunks."""

    def __init__(self, reader: Reader, tick: Callable[[int], None], copy_chunk: int = COMPUTE_CHUNK) -> None:
        self.reader = reader
        self.tick = tick
        self.copy_chunk = copy_chunk

    def read_piece(self, p: Piece) -> bytes:
        if isinstance(p.source, str):
            return self.reader.read(p.source, p.offset, p.length)
        node: Computed = p.source
        return node.compute(
            lambda i, a, b: self.read_tensor(node.inputs[i], a, b), p.offset, p.offset + p.length
        )

    def read_tensor(self, vt: VirtualTensor, start: int, stop: int) -> bytes:
        return b"".join(self.read_piece(p) for p in vt.byte_range(start, stop))

    def write_shard(self, out: BinaryIO, tensors: list[VirtualTensor]) -> None:
        """Write the tensors' bytes in order. Runs of file pieces, across tensors, go to the reader together when it
        can take them (``copy_run``: a Hub reader coalesces adjacent ranges and keeps several requests in flight)."""
        copy_run = getattr(self.reader, "copy_run", None)
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


def execute(
    p: Plan,
    source: Source,
    sink: Sink,
    *,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    copy_files: bool = True,
    commit_message: str = "",
    metadata: Mapping[str, str] | None = None,
    max_bytes_per_second: float | None = None,
) -> ConversionResult:
    """Write every shard of plan ``p`` into ``sink``, then the index and the other files, then commit.

    ``metadata`` is added to every shard's safetensors ``__metadata__`` (the service records its job id there).
    ``max_bytes_per_second`` caps the write rate (a shared disk or network stays usable for others).

    ``should_cancel`` is polled between chunks; when it returns True the sink is aborted and
    :class:`~converter.errors.CancelledError` raised. Any failure aborts the sink: nothing is published.
    """
    started = time.monotonic()
    state = Progress("converting", 0, p.total_bytes, 0, len(p.tensors), started=started)
    last_report = [0.0]

    def report(force: bool = False) -> None:
        if progress is not None:
            now = time.monotonic()
            if force or now - last_report[0] >= 0.1:
                last_report[0] = now
                progress(state)

    def tick(n: int) -> None:
        state.bytes_done += n
        if should_cancel is not None and should_cancel():
            raise CancelledError("conversion cancelled; nothing was published")
        if max_bytes_per_second:
            ahead = state.bytes_done / max_bytes_per_second - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        report()

    copy, skipped = source.other_files() if copy_files else ([], [])
    shards: list[tuple[str, int]] = []
    sink.begin()
    try:
        report(force=True)
        meta = {**provenance(p), **(metadata or {})}
        with source.reader() as reader:
            chunk = COMPUTE_CHUNK
            if max_bytes_per_second:  # about ten rate checks (and progress reports) a second
                chunk = max(64 * 1024, min(chunk, int(max_bytes_per_second / 10)))
            streamer = _Streamer(reader, tick, chunk)
            for shard in p.shards:
                state.shard = shard.file
                header, _ = encode_header(((t.name, t.dtype, t.shape) for t in shard.tensors), meta)
                done_before = state.tensors_done
                streamer.tick = _counting_tick(state, [t.nbytes for t in shard.tensors], tick)
                with sink.open_shard(shard.file) as out:
                    out.write(header)
                    streamer.write_shard(out, [t.tensor for t in shard.tensors])
                state.tensors_done = done_before + len(shard.tensors)
                report()
                sink.finish_shard(shard.file)
                shards.append((shard.file, len(header) + shard.nbytes))
        if len(p.shards) > 1:
            state.phase = "writing index"
            report(force=True)
            sink.write_bytes(INDEX_NAME, index_json(p))
        state.phase = "copying files"
        report(force=True)
        for name in copy:
            if name == "config.json" and p.output_config is not None:
                continue  # rewritten below
            sink.copy_file(source, name)
        if p.output_config is not None:
            sink.write_bytes("config.json", (json.dumps(p.output_config, indent=2) + "\n").encode())
        state.phase = "publishing"
        report(force=True)
        where = sink.commit(commit_message or f"Convert {p.model_type} checkpoint ({p.direction})")
    except BaseException:
        sink.abort()
        raise
    state.phase = "done"
    report(force=True)
    return ConversionResult(where, p, shards, copy, skipped, time.monotonic() - started)


def index_json(p: Plan) -> bytes:
    doc = {
        "metadata": {"total_size": p.total_bytes},
        "weight_map": {t.name: s.file for s in p.shards for t in s.tensors},
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def convert(
    source: str | os.PathLike[str] | Source,
    output: str | os.PathLike[str] | Sink,
    *,
    model_type: str | None = None,
    direction: str = "forward",
    dtype: str | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    config: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    allow_noop: bool = False,
    dequantize: bool = False,
) -> ConversionResult:
    """Plan and run a conversion of ``source`` into ``output`` (a folder, created atomically).

    A checkpoint already in the target layout is a no-op: nothing is written (``result.noop``) unless
    ``allow_noop=True``, which copies it anyway. ``dequantize`` dequantizes a pre-quantized (FP8, MXFP4)
    checkpoint; by default it stays quantized.
    """
    src = open_source(source)
    p = plan(
        src,
        model_type=model_type,
        direction=direction,
        dtype=dtype,
        max_shard_size=max_shard_size,
        config=config,
        dequantize=dequantize,
    )
    sink: Sink = (
        open_sink(output, source=src, overwrite=overwrite, card=card_info(p))
        if isinstance(output, (str, os.PathLike))
        else output
    )
    if p.is_noop and not allow_noop:
        return ConversionResult(sink.description, p, [], [], [], 0.0, noop=True)
    return execute(p, src, sink, progress=progress, should_cancel=should_cancel)
