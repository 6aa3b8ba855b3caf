"""Convert-and-upload from the Hub vs a plain download of the same checkpoint, side by side.

    python bench/hub_bench.py [--layers 4] [--repeat 3]

Starts the local Hub stand-in (tests/support/hub_standin.py) as a separate process, uploads a synthetic bf16
Mixtral-shaped checkpoint to it (git-LFS mode), then times, in fresh processes:

* ``snapshot_download`` of the repo (the baseline: what any consumer of the checkpoint pays), and
* ``ckpt-convert convert hf://org/src hf://org/dst``: plan from range-read headers, stream every byte range,
  write each output shard, pre-upload it, delete it, and make one commit.

Prints both times and their ratio (target: within 2x), the conversion's peak RSS, and its peak local disk use
(sampled every 20 ms in its temporary folder; bounded by about one output shard, against the whole checkpoint for
the download).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from convert_bench import BUILD_SCRIPT, run  # noqa: E402
from support.hub_standin import StandInProcess  # noqa: E402

from converter.demo import MixtralShape  # noqa: E402

DOWNLOAD = """
import sys, os
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], cache_dir=sys.argv[2], endpoint=os.environ["HF_ENDPOINT"])
"""
UPLOAD = """
import sys, os
from huggingface_hub import HfApi
api = HfApi(endpoint=os.environ["HF_ENDPOINT"])
api.create_repo(sys.argv[1], exist_ok=True)
api.upload_folder(repo_id=sys.argv[1], folder_path=sys.argv[2])
"""


def disk_usage(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


class PeakDisk(threading.Thread):
    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.peak, self.stop = path, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, disk_usage(self.path))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="4 layers = about 0.8 GB")
    ap.add_argument("--shard-mb", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir")
    a = ap.parse_args()

    work = Path(a.workdir or tempfile.mkdtemp(prefix="ckpt-hubbench-"))
    shape = MixtralShape(**{**MixtralShape.bench().__dict__, "layers": a.layers})
    src = work / "published"
    if not src.exists():
        subprocess.run([sys.executable, "-c", BUILD_SCRIPT, str(src), repr(shape.__dict__), str(a.shard_mb * 1_000_000)],
                       check=True, cwd=ROOT)  # fmt: skip
    size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    hub = StandInProcess(work / "standin", upload_mode="lfs")
    endpoint = hub.start()
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "HF_HOME": str(work / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}  # fmt: skip
    env.pop("HF_TOKEN", None)
    os.environ.update(env)
    try:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", UPLOAD, "org/src", str(src)], env=env, check=True)
        print(f"checkpoint: {size / 1e9:.2f} GB in {len(list(src.glob('*.safetensors')))} shards, uploaded to the "
              f"stand-in in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        dl_times, cv_times, rss, peak_disk = [], [], 0, 0
        for i in range(a.repeat):
            cache = work / f"dl{i}"
            t, _ = run([sys.executable, "-c", DOWNLOAD, "org/src", str(cache)])
            dl_times.append(t)
            shutil.rmtree(cache, ignore_errors=True)
            tmp = work / f"tmp{i}"
            tmp.mkdir()
            os.environ["TMPDIR"] = str(tmp)
            watcher = PeakDisk(tmp)
            watcher.start()
            t, r = run([sys.executable, "-m", "converter.cli", "convert", "hf://org/src", f"hf://org/dst{i}", "-q",
                        "--max-shard-size", f"{a.shard_mb}MB"])  # fmt: skip
            watcher.stop.set()
            watcher.join()
            cv_times.append(t)
            rss, peak_disk = max(rss, r), max(peak_disk, watcher.peak)
            shutil.rmtree(tmp, ignore_errors=True)
        dl, cv = statistics.median(dl_times), statistics.median(cv_times)
        print("results (median; the stand-in, the client and the conversion share this machine's cores):")
        print(
            f"  snapshot_download                     {dl:7.2f} s   ({', '.join(f'{x:.2f}' for x in dl_times)})"
        )
        print(
            f"  ckpt-convert hf:// -> hf:// (+commit)  {cv:7.2f} s   ({', '.join(f'{x:.2f}' for x in cv_times)})"
        )
        print(
            f"  ratio convert / download              {cv / dl:7.2f}   target <= 2: {'OK' if cv / dl <= 2 else 'MISSED'}"
        )
        print(f"  conversion peak RSS                   {rss / 1e6:7.0f} MB")
        print(f"  conversion peak local disk            {peak_disk / 1e6:7.0f} MB  (one output shard: <= {a.shard_mb} MB;"
              f" the download keeps {size / 1e6:.0f} MB)")  # fmt: skip
        return 0 if cv / dl <= 2 else 1
    finally:
        hub.stop()
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
