"""Check a written checkpoint against its plan: every tensor present with the planned dtype and shape, nothing
else, and (``content=True``) every byte equal to what the plan says it should be, re-read from the source."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import read_local_checkpoint
from .errors import VerificationError
from .executor import _Streamer
from .planner import Plan
from .storage import LocalReader, Source

CHUNK = 64 * 1024 * 1024


@dataclass
class VerifyReport:
    tensors: int
    bytes_compared: int


def verify(p: Plan, source: Source, output: str | os.PathLike[str], *, content: bool = True) -> VerifyReport:
    """Raise :class:`VerificationError` naming the first tensor that differs from plan ``p``."""
    out = read_local_checkpoint(output)
    planned = {t.name: t for t in p.tensors}
    extra = sorted(set(out.tensors) - set(planned))
    if extra:
        raise VerificationError(f"output has {len(extra)} unplanned tensor(s), e.g. {extra[0]}", key=extra[0])
    compared = 0
    out_reader = LocalReader(Path(output))
    try:
        with source.reader() as src_reader:
            streamer = _Streamer(src_reader, lambda n: None)
            for name, t in planned.items():
                got = out.tensors.get(name)
                if got is None:
                    raise VerificationError(f"output lacks tensor {name}", key=name)
                if (got.dtype, got.shape) != (t.dtype, t.shape):
                    raise VerificationError(
                        f"{name}: output is {got.dtype} {list(got.shape)}, plan says {t.dtype} {list(t.shape)}",
                        key=name,
                    )
                if not content:
                    continue
                for a in range(0, t.nbytes, CHUNK):
                    b = min(a + CHUNK, t.nbytes)
                    if out_reader.read(got.file, got.offset + a, b - a) != streamer.read_tensor(
                        t.tensor, a, b
                    ):
                        raise VerificationError(f"{name}: bytes {a}..{b} differ from the plan", key=name)
                    compared += b - a
    finally:
        out_reader.close()
    return VerifyReport(len(planned), compared)
