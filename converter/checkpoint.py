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

from .confine import Folder, check_name
from .errors import CheckpointError, CheckpointIndexError
from .pytorch_bin import fd_reader, is_bin_checkpoint_name, read_bin_header
from .safetensors_io import (
    INDEX_NAME,
    SINGLE_NAME,
    CheckpointIndex,
    ShardHeader,
    assemble_index,
    parse_index_bytes,
    read_header_at,
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


def read_local_checkpoint(folder: str | os.PathLike[str] | Folder) -> CheckpointIndex:
    """Headers of every shard of a local checkpoint folder: safetensors (index file, a single
    ``model.safetensors``, or ``*.safetensors``), else PyTorch ``pytorch_model*.bin`` (read as byte ranges). Every
    file is opened through the folder's descriptor, following no link out of it (:class:`converter.confine.Folder`)."""
    if not isinstance(folder, Folder):
        if not Path(folder).is_dir():
            raise CheckpointError(f"{folder} is not a folder", file=str(folder))
        with Folder(folder) as f:
            return read_local_checkpoint(f)
    names = [n for n in folder.names() if not n.endswith("/")]
    chosen = choose_weight_files(names, where=folder.shown)
    weight_map: dict[str, str] | None = None
    meta: dict[str, object] = {}
    files = list(chosen.files)
    if chosen.index is not None:
        weight_map, meta = parse_index_bytes(folder.read(chosen.index, what="index"), chosen.index)
        files = list(dict.fromkeys(weight_map.values()))
    shards: dict[str, ShardHeader] = {}
    for name in files:
        check_name(name, "shard")
        if not folder.exists(name):
            raise CheckpointIndexError(f"{chosen.index} names shard {name}, which does not exist", file=name)
        fd = folder.open(name, "shard")
        try:
            size = os.fstat(fd).st_size
            read_at = fd_reader(fd)
            if chosen.format == "safetensors":
                shards[name] = read_header_at(read_at, size, file=name)
            else:
                shards[name] = read_bin_header(read_at, size, file=name)
        finally:
            os.close(fd)
    index = assemble_index(shards, weight_map, index_file=chosen.index or INDEX_NAME)
    index.index_metadata = meta
    index.format = chosen.format
    return index
