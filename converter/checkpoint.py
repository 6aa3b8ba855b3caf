"""A checkpoint folder's weight files: which ones make the checkpoint (as transformers chooses them), and every
shard's tensors as byte ranges, from safetensors headers or ``torch.save`` zip directories.

>>> index = read_local_checkpoint("Mixtral-8x7B/")                       # doctest: +SKIP
>>> index.format, len(index.shards)
('safetensors', 19)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, CheckpointIndexError
from .pytorch_bin import is_bin_checkpoint_name, local_ranges, read_bin_header
from .safetensors_io import (
    INDEX_NAME,
    SINGLE_NAME,
    CheckpointIndex,
    ShardHeader,
    assemble_index,
    check_member_name,
    parse_index_bytes,
    read_header,
)

#: PyTorch (``torch.save``) checkpoints, read when a folder has no safetensors weights (as transformers does)
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
BIN_SINGLE_NAME = "pytorch_model.bin"


@dataclass(frozen=True)
class WeightFiles:
    """Which files of a folder or repo are the checkpoint: an index (and the shards it names), one file, or the
    shards found by name. Chosen as transformers does: safetensors first, else PyTorch ``.bin``."""

    format: str  # "safetensors" | "pytorch"
    index: str | None
    files: tuple[str, ...]  # () when the index names them


def choose_weight_files(names: Iterable[str], *, where: str) -> WeightFiles:
    """``choose_weight_files(["config.json", "model.safetensors"], where="x")`` ->
    ``WeightFiles("safetensors", None, ("model.safetensors",))``. Only top-level file names count."""
    top = {n for n in names if "/" not in n}
    if INDEX_NAME in top:
        return WeightFiles("safetensors", INDEX_NAME, ())
    if SINGLE_NAME in top:
        return WeightFiles("safetensors", None, (SINGLE_NAME,))
    st = sorted(n for n in top if n.endswith(".safetensors"))
    if st:
        return WeightFiles("safetensors", None, tuple(st))
    if BIN_INDEX_NAME in top:
        return WeightFiles("pytorch", BIN_INDEX_NAME, ())
    if BIN_SINGLE_NAME in top:
        return WeightFiles("pytorch", None, (BIN_SINGLE_NAME,))
    bins = sorted(n for n in top if is_bin_checkpoint_name(n))
    if bins:
        return WeightFiles("pytorch", None, tuple(bins))
    other = sorted(n for n in top if n.endswith((".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")))
    found = f"; it has {', '.join(other[:5])}, which are not transformers checkpoint files" if other else ""
    raise CheckpointError(
        f"{where} has no weights transformers can load (no {INDEX_NAME}, {SINGLE_NAME}, *.safetensors, "
        f"{BIN_INDEX_NAME} or pytorch_model*.bin){found}",
        file=where,
    )


def read_local_checkpoint(folder: str | os.PathLike[str]) -> CheckpointIndex:
    """Headers of every shard of a local checkpoint folder: safetensors (index file, a single
    ``model.safetensors``, or ``*.safetensors``), else PyTorch ``pytorch_model*.bin`` (read as byte ranges)."""
    root = Path(folder)
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a folder", file=str(root))
    chosen = choose_weight_files((p.name for p in root.iterdir()), where=str(root))
    weight_map: dict[str, str] | None = None
    meta: dict[str, object] = {}
    files = list(chosen.files)
    if chosen.index is not None:
        path = check_member_name(root, chosen.index, what="index")
        weight_map, meta = parse_index_bytes(path.read_bytes(), chosen.index)
        files = list(dict.fromkeys(weight_map.values()))
    shards: dict[str, ShardHeader] = {}
    for name in files:
        path = check_member_name(root, name, what="shard")
        if not path.is_file():
            raise CheckpointIndexError(f"{chosen.index} names shard {name}, which does not exist", file=name)
        shards[name] = (
            read_header(path, name=name) if chosen.format == "safetensors" else _read_bin(path, name)
        )
    index = assemble_index(shards, weight_map, index_file=chosen.index or INDEX_NAME)
    index.index_metadata = meta
    index.format = chosen.format
    return index


def _read_bin(path: Path, name: str) -> ShardHeader:
    read_at, size, close = local_ranges(path)
    try:
        return read_bin_header(read_at, size, file=name)
    finally:
        close()
