"""The executor: runs a :class:`~converter.planner.Plan`, streaming bytes from a Source into a Sink.

Output shards are written in order, each header first (it is known from the plan), then each tensor's pieces:
file ranges are copied with ``copy_file_range`` (no bytes through Python, no torch import). Computed pieces (cast,
transpose, dequantize) are cut into steps of at most :data:`STEP_BYTES` and pipelined across every shard of the
call: a reader thread reads each step's input bytes into a buffer (``preadv`` straight into it), a pool of compute
threads (one per core, each with its share of torch's threads; one on a GPU, with pinned buffers and asynchronous
copies) works the steps out in parallel, and the calling thread writes them in order, between the file copies. The
buffers in flight stay within :data:`PIPELINE_BYTES`, whatever the tensor or checkpoint size, so a compute
conversion stays under 300 MB with torch's own ~225 MB.
Nothing is published unless every shard, the index and the copied files are complete.

>>> result = execute(plan(src), src, open_sink("out/", source=src))     # doctest: +SKIP
>>> result.shards[0]                                                   # doctest: +SKIP
('model-00001-of-00019.safetensors', 4998251264)
"""

from __future__ import annotations

import ctypes
import itertools
import json
import mmap
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from ._version import __version__
from .errors import CancelledError, CheckpointError
from .kernels import check_device, release_scratch, resolve_device
from .layout import Computed, Piece, Ranges, Step, Strided, VirtualTensor
from .planner import Plan
from .rules import RULES_VERSION
from .safetensors_io import INDEX_NAME, encode_header
from .storage import LocalReader, Reader, RunReader, ShardWritten, Sink, Source

#: file ranges are copied in chunks of this many bytes (progress and cancellation between chunks)
COPY_CHUNK = 64 * 1024 * 1024
#: bytes a computed step writes (and reads) at most, unless one unit of its kernel is larger
STEP_BYTES = 4 * 1024 * 1024
#: bytes of step buffers in flight (read ahead, being computed, waiting to be written): with torch's own ~225 MB,
#: a compute conversion stays under 300 MB whatever the checkpoint size
PIPELINE_BYTES = 32 * 1024 * 1024
#: threads computing steps at once: None for one per core on the CPU (one on a GPU)
COMPUTE_WORKERS: int | None = None


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


# --- computed pieces: host buffers, one step at a time ----------------------------------------------------------


class _Stopped(Exception):
    """The pipeline is being torn down (an error or a cancellation elsewhere)."""


def _size_class(n: int) -> int:
    """Buffer sizes are rounded up to 4 KB, 6 KB, 8 KB, 12 KB, 16 KB... so that steps reuse buffers."""
    c = 4096
    while c < n:
        if c + c // 2 >= n:
            return c + c // 2
        c *= 2
    return c


class _Buf:
    """A host buffer as a uint8 tensor and a memoryview of the same bytes (for I/O): anonymous memory of its own
    (returned to the system when dropped, so the budget is what the process holds), or pinned when a GPU
    computes (asynchronous copies)."""

    def __init__(self, size: int, pinned: bool) -> None:
        import torch

        self.size = size
        if pinned:
            self.tensor = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            self.mv = memoryview((ctypes.c_char * size).from_address(self.tensor.data_ptr())).cast("B")
        else:
            self.mv = memoryview(mmap.mmap(-1, size))
            self.tensor = torch.frombuffer(self.mv, dtype=torch.uint8)
        self.refs = 0


class _Buffers:
    """Step buffers within a byte budget, reused: :meth:`take` blocks while the budget is spent (what bounds the
    pipeline's memory), except for a caller that holds everything in use (one step larger than the budget)."""

    def __init__(self, budget: int, pinned: bool) -> None:
        self.budget, self.pinned = budget, pinned
        self.in_use = 0
        self.cached = 0
        self.free: dict[int, list[_Buf]] = {}
        self.cond = threading.Condition()
        self.closed = False

    def take(self, n: int, own: int = 0) -> _Buf:
        """A buffer of at least ``n`` bytes; ``own``: bytes the caller itself holds (they cannot be waited for)."""
        c = _size_class(n)
        with self.cond:
            while not self.closed and self.in_use > own and self.in_use + c > self.budget:
                self.cond.wait()
            if self.closed:
                raise _Stopped()
            self.in_use += c
            pool = self.free.get(c)
            if pool:
                self.cached -= c
                buf = pool.pop()
                buf.refs = 1
                return buf
            self._trim(c)
        buf = _Buf(c, self.pinned)
        buf.refs = 1
        return buf

    def give(self, buf: _Buf) -> None:
        with self.cond:
            buf.refs -= 1
            if buf.refs > 0:
                return
            self.in_use -= buf.size
            self.free.setdefault(buf.size, []).append(buf)
            self.cached += buf.size
            self._trim(0)
            self.cond.notify_all()

    def _trim(self, coming: int) -> None:
        """Drop cached buffers while in use + cached + ``coming`` would pass the budget."""
        while self.cached and self.in_use + self.cached + coming > self.budget:
            size = max(k for k, v in self.free.items() if v)
            self.free[size].pop()
            self.cached -= size

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.free.clear()
            self.cached = 0
            self.cond.notify_all()


class _Into:
    """A file-like object that writes into a memoryview, for a :class:`RunReader`'s ``copy_run``."""

    def __init__(self, mv: memoryview) -> None:
        self.mv, self.pos = mv, 0

    def write(self, data: bytes) -> int:
        n = len(data)
        self.mv[self.pos : self.pos + n] = data
        self.pos += n
        return n


def _write_all(out: BinaryIO, mv: memoryview) -> None:
    while mv:
        n = out.write(mv)
        if n is None:  # a non-blocking file that could not take anything now
            raise OSError("output file refused the write")
        mv = mv[n:]


def _close_fds(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def _layout(sizes: tuple[int, ...]) -> tuple[list[tuple[int, int]], int]:
    """Where each input of a step lies in its one input buffer (64-byte aligned, so that any dtype views it)."""
    spans, pos = [], 0
    for n in sizes:
        spans.append((pos, n))
        pos += (n + 63) // 64 * 64
    return spans, pos


class _Streamer:
    """Writes pieces to an output file and evaluates computed pieces in bounded steps on ``device`` (``None``/
    ``"auto"``, ``"cpu"``, ``"cuda"``; resolved when the first computed step runs, so that byte copies never import
    torch). :meth:`write_shards` pipelines the steps: a reader thread reads each step's input bytes into a buffer, a
    pool of compute threads works them out, the calling thread writes them (and copies file ranges) in order; the
    buffers in flight stay within ``buffer_bytes``. :meth:`read_tensor` evaluates bytes synchronously."""

    def __init__(
        self,
        reader: Reader,
        tick: Callable[[int], None],
        copy_chunk: int = COPY_CHUNK,
        device: str | None = None,
        *,
        step_bytes: int | None = None,
        buffer_bytes: int | None = None,
        workers: int | None = None,
    ) -> None:
        self.reader = reader
        self.tick = tick
        self.copy_chunk = copy_chunk
        self.device = check_device(device)
        self.step_bytes = step_bytes or STEP_BYTES
        self._step_given = step_bytes is not None
        self.buffer_bytes = buffer_bytes or PIPELINE_BYTES
        self.workers = workers or COMPUTE_WORKERS
        self._resolved: str | None = None
        self._folder = reader.folder if isinstance(reader, LocalReader) else None
        self._fds: dict[str, int] = {}
        weakref.finalize(self, _close_fds, self._fds)
        self._streams = threading.local()

    @property
    def resolved_device(self) -> str:
        if self._resolved is None:
            self._resolved = resolve_device(self.device)
        return self._resolved

    def close(self) -> None:
        _close_fds(self._fds)

    # --- reading bytes into buffers ----------------------------------------------------------------------------

    def _read_files(self, ranges: list[tuple[str, int, int]], mv: memoryview) -> None:
        """File ranges, one after another, into ``mv``: ``preadv`` straight into it for a local folder."""
        if self._folder is not None:
            pos = 0
            for file, off, n in ranges:
                fd = self._fd(file)
                dst = mv[pos : pos + n]
                while dst:
                    got = os.preadv(fd, [dst], off)
                    if got == 0:
                        raise CheckpointError(
                            f"{file} ended at byte {off}; was it changed after planning?", file=file
                        )
                    dst, off = dst[got:], off + got
                pos += n
        elif isinstance(self.reader, RunReader):  # ranges fetched together, several in flight
            self.reader.copy_run(cast(BinaryIO, _Into(mv)), ranges, lambda n: None)
        else:
            pos = 0
            for file, off, n in ranges:
                mv[pos : pos + n] = self.reader.read(file, off, n)
                pos += n

    def read_into(self, vt: VirtualTensor, start: int, stop: int, mv: memoryview) -> None:
        """Bytes ``[start, stop)`` of ``vt`` into ``mv``: file pieces read, computed ones evaluated."""
        pos, run_at = 0, 0
        run: list[tuple[str, int, int]] = []
        for p in vt.byte_range(start, stop):
            if isinstance(p.source, str):
                if not run:
                    run_at = pos
                run.append((p.source, p.offset, p.length))
            else:
                if run:
                    self._read_files(run, mv[run_at:pos])
                    run = []
                self.compute_into(p.source, p.offset, p.offset + p.length, mv[pos : pos + p.length])
            pos += p.length
        if run:
            self._read_files(run, mv[run_at:pos])

    def _fill(self, node: Computed, step: Step, buf: _Buf) -> None:
        """Read a step's input ranges into ``buf``, laid out by :func:`_layout`."""
        spans, _ = _layout(step.read_sizes)
        for vt, ranges, (at, _n) in zip(node.inputs, step.reads, spans, strict=True):
            if len(ranges) > 1 and self._folder is not None and vt.is_copy and len(vt.pieces) == 1:
                self._pread_ranges(vt.pieces[0], ranges, buf.mv[at:])  # strided: many small reads, no lookups
                continue
            pos = at
            for a, b in ranges:
                self.read_into(vt, a, b, buf.mv[pos : pos + b - a])
                pos += b - a

    def _fd(self, file: str) -> int:
        fd = self._fds.get(file)
        if fd is None:
            assert self._folder is not None
            fd = self._fds[file] = self._folder.open(file, "shard")
        return fd

    def _pread_ranges(self, piece: Piece, ranges: Ranges, mv: memoryview) -> None:
        """Byte ranges of one file piece, one after another, into ``mv`` (a strided band of a matrix)."""
        assert isinstance(piece.source, str)
        fd, base, pos, preadv = self._fd(piece.source), piece.offset, 0, os.preadv
        if isinstance(ranges, Strided):
            n, at = ranges.length, base + ranges.start
            for _ in range(ranges.count):
                if preadv(fd, [mv[pos : pos + n]], at) != n:  # short: the careful way
                    self._read_files([(piece.source, at, n)], mv[pos : pos + n])
                pos, at = pos + n, at + ranges.stride
            return
        for a, b in ranges:
            if preadv(fd, [mv[pos : pos + b - a]], base + a) != b - a:  # short: the careful way
                self._read_files([(piece.source, base + a, b - a)], mv[pos : pos + b - a])
            pos += b - a

    # --- computing --------------------------------------------------------------------------------------------

    def _compute(self, node: Computed, step: Step, inp: _Buf, out: _Buf) -> None:
        """Run one step: ``out`` gets output bytes ``[step.lo, step.hi)`` (on a GPU: the inputs go up from pinned
        buffers and the result comes back asynchronously on this thread's stream, synchronised before returning)."""
        spans, _ = _layout(step.read_sizes)
        views = [inp.tensor[a : a + n] for a, n in spans]
        result = out.tensor[: step.hi - step.lo]
        device = self.resolved_device
        if device == "cpu":
            node.kernel.run(step, views, result)
            return
        import torch

        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = torch.cuda.Stream(device)
        with torch.cuda.stream(stream):
            ins = [v.to(device, non_blocking=True) for v in views]
            dev_out = torch.empty(result.numel(), dtype=torch.uint8, device=device)
            node.kernel.run(step, ins, dev_out)
            result.copy_(dev_out, non_blocking=True)
        stream.synchronize()

    def compute_into(self, node: Computed, start: int, stop: int, mv: memoryview) -> None:
        """Bytes ``[start, stop)`` of a computed tensor into ``mv``, step by step, synchronously."""
        pinned = self.resolved_device != "cpu"
        spare: dict[str, _Buf] = {}  # this call's two buffers, reused from step to step

        def buf(role: str, n: int) -> _Buf:
            b = spare.get(role)
            if b is None or b.size < n:
                b = spare[role] = _Buf(_size_class(n), pinned)
            return b

        for step in node.kernel.steps(start, stop, self.step_bytes):
            inp = buf("in", _layout(step.read_sizes)[1])
            out = buf("out", step.hi - step.lo)
            self._fill(node, step, inp)
            self._compute(node, step, inp, out)
            a, b = max(start, step.lo), min(stop, step.hi)
            mv[a - start : b - start] = out.mv[a - step.lo : b - step.lo]

    def read_piece(self, p: Piece) -> bytes:
        if isinstance(p.source, str):
            return self.reader.read(p.source, p.offset, p.length)
        buf = bytearray(p.length)
        try:
            self.compute_into(p.source, p.offset, p.offset + p.length, memoryview(buf))
        finally:
            release_scratch()
        return bytes(buf)

    def read_tensor(self, vt: VirtualTensor, start: int, stop: int) -> bytes:
        buf = bytearray(stop - start)
        try:
            self.read_into(vt, start, stop, memoryview(buf))
        finally:
            release_scratch()
        return bytes(buf)

    # --- writing ----------------------------------------------------------------------------------------------

    def write_shard(self, out: BinaryIO, tensors: list[VirtualTensor]) -> None:
        """Write the tensors' bytes in order, one step at a time (no pipeline). Runs of file pieces, across tensors,
        go to the reader together when it can take them (``copy_run``: a Hub reader coalesces adjacent ranges and
        keeps several requests in flight)."""
        run: list[tuple[str, int, int]] = []
        for vt in tensors:
            for p in vt.pieces:
                if isinstance(p.source, str):
                    run.append((p.source, p.offset, p.length))
                    continue
                if run:
                    self.copy_files(out, run)
                    run = []
                data = self.read_piece(p)
                _write_all(out, memoryview(data))
                self.tick(len(data))
        if run:
            self.copy_files(out, run)

    def copy_files(self, out: BinaryIO, run: list[tuple[str, int, int]]) -> None:
        """File ranges appended to ``out`` (in-kernel copies for a local folder), ticking as they go."""
        if isinstance(self.reader, RunReader):
            self.reader.copy_run(out, run, self.tick)
            return
        for file, off, left in run:
            while left:  # chunked so progress and cancellation stay responsive
                n = min(left, self.copy_chunk)
                self.reader.copy_to(out, file, off, n)
                self.tick(n)
                off += n
                left -= n

    def write_shards(self, shards: Sequence[_ShardJob]) -> list[ShardWritten]:
        """Write shards in order, computed steps pipelined (see the class). Any failure stops the threads and
        propagates; what the pipeline held is released."""
        device = self.resolved_device
        workers = self.workers or (1 if device != "cpu" else _cpu_count())
        if (
            not self._step_given
        ):  # room for every worker's step (input and output), one read ahead, one written
            self.step_bytes = min(STEP_BYTES, max(64 * 1024, self.buffer_bytes // (2 * (workers + 2))))
        buffers = _Buffers(self.buffer_bytes, pinned=device != "cpu")
        items: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        stop = threading.Event()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="ckpt-compute")
        producer = threading.Thread(
            target=self._produce, args=(shards, buffers, pool, items, stop), name="ckpt-read", daemon=True
        )
        with _torch_threads(device, workers):
            producer.start()
            try:
                return [self._consume(job, items, buffers) for job in shards]
            finally:
                stop.set()
                buffers.close()
                producer.join()
                pool.shutdown(wait=True, cancel_futures=True)

    def _produce(
        self,
        shards: Sequence[_ShardJob],
        buffers: _Buffers,
        pool: ThreadPoolExecutor,
        items: queue.SimpleQueue[tuple[Any, ...]],
        stop: threading.Event,
    ) -> None:
        """The reader thread: every shard's pieces in order, as copy runs and computed steps whose inputs it reads
        into buffers (a step that reads what the previous one read shares its buffer) and hands to the pool."""
        held: _Buf | None = None  # the last step's input, kept for a next step that reads the same bytes
        held_key: tuple[Any, ...] = ()

        def compute(node: Computed, step: Step, inp: _Buf, out: _Buf) -> None:
            try:
                self._compute(node, step, inp, out)
            finally:
                buffers.give(inp)

        try:
            for job in shards:
                run: list[tuple[str, int, int]] = []
                for vt in job.tensors:
                    for p in vt.pieces:
                        if isinstance(p.source, str):
                            run.append((p.source, p.offset, p.length))
                            continue
                        if run:
                            items.put(("copy", run))
                            run = []
                        node, end = p.source, p.offset + p.length
                        for step in node.kernel.steps(p.offset, end, self.step_bytes):
                            if stop.is_set():
                                return
                            key = (node, step.reads)
                            if held is not None and key != held_key:
                                buffers.give(held)
                                held = None
                            own = held.size if held is not None else 0
                            out = buffers.take(step.hi - step.lo, own)
                            if held is None:
                                inp = buffers.take(_layout(step.read_sizes)[1], out.size)
                                inp.refs += 1  # held here too, for the next step
                                self._fill(node, step, inp)
                                held, held_key = inp, key
                            else:
                                with buffers.cond:
                                    held.refs += 1
                            fut = pool.submit(compute, node, step, held, out)
                            a, b = max(p.offset, step.lo), min(end, step.hi)
                            items.put(("data", fut, out, a - step.lo, b - step.lo))
                if run:
                    items.put(("copy", run))
                items.put(("end",))
        except _Stopped:
            return
        except BaseException as e:  # handed to the writer, which raises it
            items.put(("error", e))
        finally:
            if held is not None:
                buffers.give(held)

    def _consume(
        self, job: _ShardJob, items: queue.SimpleQueue[tuple[Any, ...]], buffers: _Buffers
    ) -> ShardWritten:
        """The calling thread: one shard's header, then its items in order, then the sink's ``finish_shard``."""
        job.begin()
        with job.sink.open_shard(job.file) as out:
            out.write(job.header)
            while True:
                item = items.get()
                kind = item[0]
                if kind == "end":
                    break
                if kind == "error":
                    raise item[1]
                if kind == "copy":
                    self.copy_files(out, item[1])
                    continue
                _, fut, buf, a, b = item
                try:
                    fut.result()
                    _write_all(out, buf.mv[a:b])
                finally:
                    buffers.give(buf)
                self.tick(b - a)
        return job.finish()


@dataclass
class _ShardJob:
    """One output shard for :meth:`_Streamer.write_shards`: where it goes, its header, its tensors, and what to do
    before (progress counting) and after (``Sink.finish_shard``)."""

    sink: Sink
    file: str
    header: bytes
    tensors: list[VirtualTensor]
    begin: Callable[[], None]
    finish: Callable[[], ShardWritten]


def _cpu_count() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a container's ``--cpus``)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, n)


@contextmanager
def _torch_threads(device: str, workers: int) -> Iterator[None]:
    """On the CPU, each of ``workers`` compute threads runs its steps with an equal share of the cores as torch
    intra-op threads (steps in parallel rather than one op's OpenMP team, which stalls whenever a core is busy
    reading or writing); torch's setting is restored afterwards."""
    if device != "cpu":
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, _cpu_count() // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
            return max(64 * 1024, min(COPY_CHUNK, int(self.max_bps / 10)))
        return COPY_CHUNK

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

    Computed pieces are pipelined (:meth:`_Streamer.write_shards`): reading, arithmetic and writing overlap, in
    buffers of bounded size. Deterministic: the same plan writes the same bytes, so a shard written twice (a retried
    task) is identical."""
    meta = {**provenance(p), **(metadata or {})}
    with source.reader() as reader:
        streamer = _Streamer(reader, meter.tick, meter.copy_chunk, device)
        jobs = [_shard_job(p, i, sink, meter, streamer, meta) for i in indices]
        try:
            if any(not t.tensor.is_copy for i in indices for t in p.shards[i].tensors):
                return streamer.write_shards(jobs)
            written = []
            for job in jobs:  # byte copies only: no threads, no torch
                job.begin()
                with sink.open_shard(job.file) as out:
                    out.write(job.header)
                    streamer.write_shard(out, job.tensors)
                written.append(job.finish())
            return written
        finally:
            streamer.close()


def _shard_job(
    p: Plan, i: int, sink: Sink, meter: Meter, streamer: _Streamer, meta: Mapping[str, str]
) -> _ShardJob:
    shard = p.shards[i]
    header, _ = encode_header(((t.name, t.dtype, t.shape) for t in shard.tensors), meta)
    done_before = 0

    def begin() -> None:
        nonlocal done_before
        meter.state.shard = shard.file
        done_before = meter.state.tensors_done
        streamer.tick = _counting_tick(meter.state, [t.nbytes for t in shard.tensors], meter.tick)

    def finish() -> ShardWritten:
        meter.state.tensors_done = done_before + len(shard.tensors)
        meter.report()
        upload = sink.finish_shard(shard.file)
        return ShardWritten(shard.file, len(header) + shard.nbytes, upload)

    return _ShardJob(sink, shard.file, header, [t.tensor for t in shard.tensors], begin, finish)


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
