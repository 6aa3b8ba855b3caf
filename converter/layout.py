"""Tensors as lists of byte pieces: the planner's working representation.

A :class:`VirtualTensor` is a dtype, a shape and the ordered byte pieces that make up its row-major data. A piece
is a byte range of a source file, or of a :class:`Computed` tensor (one that needs arithmetic, such as a cast or
a transpose). Stacking experts or concatenating gate and up along a leading dimension only reorders pieces, so
most outputs of a plan are pure byte copies; see :mod:`converter.kernels` for how each op rearranges pieces.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .safetensors_io import DTYPE_BITS, dtype_nbytes


@dataclass(frozen=True)
class Strided:
    """``count`` byte ranges of ``length`` bytes each, ``stride`` apart, the first at ``start``: one band of a matrix
    (a few bytes of every row), kept compact however many rows it has.

    >>> list(Strided(10, 2, 8, 3))
    [(10, 12), (18, 20), (26, 28)]
    """

    start: int
    length: int
    stride: int
    count: int

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for k in range(self.count):
            a = self.start + k * self.stride
            yield a, a + self.length

    def __len__(self) -> int:
        return self.count


#: the byte ranges of one input that a step reads, concatenated in order
Ranges = tuple[tuple[int, int], ...] | Strided


def ranges_nbytes(r: Ranges) -> int:
    """Total bytes of some byte ranges."""
    if isinstance(r, Strided):
        return r.length * r.count
    return sum(b - a for a, b in r)


@dataclass(frozen=True)
class Step:
    """One bounded step of a computed tensor's arithmetic: the kernel works out output bytes ``[lo, hi)`` from the
    input byte ranges ``reads[i]`` of each input ``i`` (concatenated in order). ``arg`` tells the kernel which units
    those are. Steps are what the executor pipelines: read, compute and write overlap, one step each."""

    lo: int
    hi: int
    reads: tuple[Ranges, ...]
    arg: tuple[Any, ...] = ()

    @functools.cached_property
    def read_sizes(self) -> tuple[int, ...]:
        """Bytes of each input the step reads."""
        return tuple(ranges_nbytes(r) for r in self.reads)


class Kernel(Protocol):
    """The arithmetic of a :class:`Computed` tensor, cut into bounded :class:`Step` s.

    ``steps(start, stop, limit)`` covers output bytes ``[start, stop)`` in order, each step reading and writing
    about ``limit`` bytes at most (more only when one unit -- a row, a block row -- is larger); ``run(step,
    inputs, out)`` fills ``out`` (a uint8 tensor of ``hi - lo`` bytes) from ``inputs`` (uint8 tensors holding
    each input's ``reads``), on whatever device those tensors are on. Bytes are the same on any device.
    """

    @property
    def unit_bytes(self) -> int:
        """Bytes of one natural unit of work (one expert, one block row...)."""
        ...

    def steps(self, start: int, stop: int, limit: int) -> Iterator[Step]: ...

    def run(self, step: Step, inputs: Sequence[Any], out: Any) -> None: ...


@dataclass(eq=False)
class Computed:
    """A tensor produced by arithmetic (``kernel``) from input virtual tensors, evaluated in bounded steps, so
    that memory stays near one step whatever the tensor size (see :class:`Kernel`)."""

    dtype: str
    shape: tuple[int, ...]
    inputs: tuple[VirtualTensor, ...]
    kernel: Kernel
    description: dict[str, Any]

    @property
    def nbytes(self) -> int:
        return dtype_nbytes(self.dtype, self.shape)

    @property
    def slice_bytes(self) -> int:
        """Bytes of the kernel's natural unit (one expert, one block row): the granularity of its work."""
        return self.kernel.unit_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.description,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "inputs": [i.to_dict() for i in self.inputs],
        }


@dataclass(frozen=True)
class Piece:
    """``length`` bytes at ``offset`` of ``source``: a shard file name or a :class:`Computed` tensor."""

    source: str | Computed
    offset: int
    length: int

    def to_dict(self) -> dict[str, Any]:
        if isinstance(self.source, str):
            return {"file": self.source, "offset": self.offset, "length": self.length}
        return {"computed": self.source.to_dict(), "offset": self.offset, "length": self.length}


def coalesce(pieces: Iterable[Piece]) -> tuple[Piece, ...]:
    """Merge neighbours that are contiguous in the same source; drop empty pieces."""
    out: list[Piece] = []
    for p in pieces:
        if p.length == 0:
            continue
        if out:
            last = out[-1]
            if last.source is p.source and last.offset + last.length == p.offset:
                out[-1] = Piece(last.source, last.offset, last.length + p.length)
                continue
        out.append(p)
    return tuple(out)


@dataclass(eq=False)
class VirtualTensor:
    dtype: str
    shape: tuple[int, ...]
    pieces: tuple[Piece, ...]
    #: source tensor names this tensor's bytes come from (for reports and errors)
    origins: tuple[str, ...] = ()
    _ends: list[int] | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        return dtype_nbytes(self.dtype, self.shape)

    @property
    def is_copy(self) -> bool:
        """True when every byte comes straight from a source file."""
        return all(isinstance(p.source, str) for p in self.pieces)

    def byte_range(self, start: int, stop: int) -> list[Piece]:
        """Pieces covering bytes ``[start, stop)`` of this tensor."""
        if self._ends is None:
            ends, pos = [], 0
            for p in self.pieces:
                pos += p.length
                ends.append(pos)
            self._ends = ends
        ends = self._ends
        out: list[Piece] = []
        i = bisect.bisect_right(ends, start)
        while start < stop and i < len(self.pieces):
            p = self.pieces[i]
            p_start = ends[i] - p.length
            a = start - p_start
            n = min(p.length - a, stop - start)
            out.append(Piece(p.source, p.offset + a, n))
            start += n
            i += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "origins": list(self.origins),
            "pieces": [p.to_dict() for p in self.pieces],
        }


def from_file(
    name: str, dtype: str, shape: Sequence[int], file: str, offset: int, length: int
) -> VirtualTensor:
    return VirtualTensor(dtype, tuple(shape), (Piece(file, offset, length),), origins=(name,))


def row_bytes(vt: VirtualTensor, dim: int) -> int:
    """Bytes of one index along ``dim`` within one outer block (the contiguous unit of that dim)."""
    return DTYPE_BITS[vt.dtype] * math.prod(vt.shape[dim + 1 :]) // 8


def gather_blocks(vt: VirtualTensor, ranges: Iterable[tuple[int, int]]) -> tuple[Piece, ...]:
    """Pieces of ``vt`` for the byte ranges given, in that order (a reordering of its bytes)."""
    out: list[Piece] = []
    for a, b in ranges:
        out.extend(vt.byte_range(a, b))
    return coalesce(out)


def computed_tensor(
    dtype: str,
    shape: tuple[int, ...],
    inputs: Sequence[VirtualTensor],
    kernel: Kernel,
    description: dict[str, Any],
) -> VirtualTensor:
    """A tensor whose one piece is a :class:`Computed` node over ``inputs``."""
    node = Computed(dtype, tuple(shape), tuple(inputs), kernel, description)
    origins = tuple(o for i in inputs for o in i.origins)
    return VirtualTensor(dtype, node.shape, (Piece(node, 0, node.nbytes),), origins=origins)
