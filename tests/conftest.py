import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402


@pytest.fixture
def vts(tmp_path):
    """Write tensors to a checkpoint and return VirtualTensors over them plus a reader to evaluate pieces."""
    from support.helpers import write_checkpoint

    from converter.checkpoint import read_local_checkpoint
    from converter.layout import from_file
    from converter.storage import LocalReader

    readers = []

    def make(tensors):
        folder = write_checkpoint(tmp_path / f"ck{len(readers)}", tensors, shards=2)
        idx = read_local_checkpoint(folder)
        r = LocalReader(folder)
        readers.append(r)
        vt = {n: from_file(n, i.dtype, i.shape, i.file, i.offset, i.length) for n, i in idx.tensors.items()}
        return vt, r

    yield make
    for r in readers:
        r.close()
