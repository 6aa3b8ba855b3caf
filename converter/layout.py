"""Tensors as lists of byte pieces: the planner's working representation.

A :class:`VirtualTensor` is a dtype, a shape and the ordered byte pieces that make up its row-major data. A piece
is a byte range of a source file, or of a :class:`Computed` tensor (one that needs arithmetic, such as a cast or
a transpose). Stacking experts or concatenating gate and up along a leading dimension only reorders pieces, so
most outputs of a plan are pure byte copies; see :mod:`converter.kernels` for how each op rearranges pieces.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .safetensors_io import DTYPE_BITS, dtype_nbytes

#: ``read(i, a, b)``: bytes ``[a, b)`` of input ``i`` of a computed tensor
ReadInput = Callable[[int, int, int], bytes]
#: ``compute(read, start, stop, device)``: bytes ``[start, stop)`` of a computed tensor, worked out on ``device``
#: (``"cpu"``, ``"cuda"``; the executor resolves it once, see :func:`converter.kernels.resolve_device`)
ComputeFn = Callable[[ReadInput, int, int, str], bytes]


@dataclass(eq=False)
class Computed:
    """A tensor produced by arithmetic (``compute``) from input virtual tensors, evaluated in bounded slices.

    ``compute(read_input, start, stop, device)`` returns bytes ``[start, stop)`` of the result, where
    ``read_input(i, a, b)`` returns bytes ``[a, b)`` of input ``i``. Implementations work one slice along
    dim 0 (one expert) at a time, so memory stays near one expert whatever the tensor size.
    """

    dtype: str
    shape: tuple[int, ...]
    inputs: tuple[VirtualTensor, ...]
    compute: ComputeFn
    description: dict[str, Any]
    #: preferred read granularity (bytes) so that callers do not recompute a slice several times
    slice_bytes: int = 0

    @property
    def nbytes(self) -> int:
        return dtype_nbytes(self.dtype, self.shape)

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
    compute: ComputeFn,
    description: dict[str, Any],
    slice_bytes: int = 0,
) -> VirtualTensor:
    """A tensor whose one piece is a :class:`Computed` node over ``inputs``."""
    node = Computed(dtype, shape, tuple(inputs), compute, description, slice_bytes)
    origins = tuple(o for i in inputs for o in i.origins)
    return VirtualTensor(dtype, shape, (Piece(node, 0, node.nbytes),), origins=origins)
