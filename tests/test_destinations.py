"""Nothing lost, nobody in (issue 13), against the real service (Valkey, a worker process, the API over HTTP):
destinations are never clobbered, paths are confined when they are used (not only when submitted), the disk cannot
be filled, idempotency tells the truth, and hostile requests get typed 4xx errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from support.helpers import (
    MIXTRAL_CONFIG,
    assert_same_tensors,
    mixtral_tensors,
    read_tensors,
    write_checkpoint,
)
from support.servers import Service, start_worker, wait_until

from converter.safetensors_io import encode_header

SLOW = 200_000  # bytes/s: a ~40 KB checkpoint takes a few tenths of a second, a 2 MB one ~10 s


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    root = tmp_path_factory.mktemp("dest")
    with Service(root, workers=(), CKPT_CONVERT_MAX_BYTES_PER_SECOND=str(SLOW),
                 CKPT_CONVERT_MAX_OUTPUT_BYTES=str(50_000_000)) as s:  # fmt: skip
        s.outside = tmp_path_factory.mktemp("outside")  # not under the allowed root
        yield s


@pytest.fixture
def worker(svc):
    """A worker for one test (some tests change paths between submit and the worker's start)."""
    w = start_worker(svc.env, svc.root / "w.log", name="w")
    yield w
    w.stop()


def _ckpt(folder: Path, big: bool = False) -> Path:
    t = mixtral_tensors(layers=4, experts=8, hidden=64, inter=128) if big else mixtral_tensors()
    return write_checkpoint(folder, t, config=MIXTRAL_CONFIG)


def _post(svc, source, dest, **extra):
    return svc.http.post(
        "/convert", json={"source": str(source), "destination": {"local_path": str(dest)}, **extra}
    )


def _no_staging(folder: Path) -> bool:
    return not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.partial-")]


def test_a_file_put_into_the_destination_mid_job_survives(svc, worker):
    src, out = _ckpt(svc.root / "s1", big=True), svc.root / "o1"
    job = _post(svc, src, out).json()
    wait_until(lambda: svc.job(job["id"])["status"] == "running", what="running")
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    end = svc.wait(job["id"])
    assert end["status"] == "failed" and end["error"]["type"] == "OutputExistsError", end
    assert sorted(os.listdir(out)) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert _no_staging(out)


def test_two_jobs_to_one_destination_never_both_succeed(svc, worker):
    src, out = _ckpt(svc.root / "s2", big=True), svc.root / "o2"
    first = _post(svc, src, out, dtype="fp16")
    assert first.status_code == 202
    second = _post(svc, src, out, dtype="fp32")
    assert second.status_code == 409 and second.json()["detail"]["type"] == "DestinationBusyError", (
        second.text
    )
    assert svc.wait(first.json()["id"])["status"] == "succeeded"
    fp16 = read_tensors(out)
    # afterwards: without overwrite the finished output stays; with it, it is replaced (old removed after)
    third = svc.wait(_post(svc, src, out, dtype="fp32").json()["id"])
    assert third["status"] == "failed" and third["error"]["type"] == "OutputExistsError"
    assert_same_tensors(read_tensors(out), fp16)
    fourth = svc.wait(_post(svc, src, out, dtype="fp32", overwrite=True).json()["id"])
    assert fourth["status"] == "succeeded", fourth
    assert {str(t.dtype) for t in read_tensors(out).values()} == {"torch.float32"} and _no_staging(out)


def test_a_source_swapped_for_a_link_after_submit_reads_nothing_outside(svc):
    src, out = _ckpt(svc.root / "s3"), svc.root / "o3"
    elsewhere = _ckpt(svc.outside / "secret")
    job = _post(svc, src, out).json()  # checked and queued; no worker yet
    (svc.root / "s3-moved").mkdir()
    src.rename(svc.root / "s3-moved" / "ckpt")
    src.symlink_to(elsewhere)
    w = start_worker(svc.env, svc.root / "w3.log", name="w3")
    try:
        end = svc.wait(job["id"])
    finally:
        w.stop()
    assert end["status"] == "failed" and end["error"]["type"] == "UnsafePathError", end
    assert str(elsewhere) not in json.dumps(end)  # the error names the path as given, not where it points
    assert not out.exists() and _no_staging(out)


def test_a_destination_parent_swapped_for_a_link_writes_nothing_outside(svc):
    src, parent = _ckpt(svc.root / "s4"), svc.root / "p4"
    parent.mkdir()
    job = _post(svc, src, parent / "out").json()
    parent.rmdir()
    target = svc.outside / "p4-target"
    target.mkdir()
    parent.symlink_to(target)
    w = start_worker(svc.env, svc.root / "w4.log", name="w4")
    try:
        end = svc.wait(job["id"])
    finally:
        w.stop()
    assert end["status"] == "failed" and end["error"]["type"] == "UnsafePathError", end
    assert os.listdir(target) == []


def test_config_and_index_links_out_of_the_folder_are_refused(svc, worker):
    outside_cfg = svc.outside / "config.json"
    outside_cfg.write_text(json.dumps({"model_type": "mixtral", "secret": "s3cr3t-value"}))
    src = _ckpt(svc.root / "s5")
    (src / "config.json").unlink()
    (src / "config.json").symlink_to(outside_cfg)
    r = _post(svc, src, svc.root / "o5")
    assert r.status_code == 403 and r.json()["detail"]["type"] == "UnsafePathError", r.text
    assert "s3cr3t-value" not in r.text and str(outside_cfg) not in r.text
    src2 = _ckpt(svc.root / "s5b")
    idx = src2 / "model.safetensors.index.json"
    (svc.outside / "index.json").write_bytes(idx.read_bytes())
    idx.unlink()
    idx.symlink_to(svc.outside / "index.json")
    end = svc.wait(_post(svc, src2, svc.root / "o5b").json()["id"])
    assert end["status"] == "failed" and end["error"]["type"] == "UnsafePathError", end


def test_a_sparse_input_is_refused_before_writing(svc, worker):
    """A few KB on disk that claims 3 GB of tensors: refused by the output cap before any byte is written."""
    src = svc.root / "s6"
    src.mkdir()
    n = 3_000_000_000
    header, _ = encode_header([("model.embed_tokens.weight", "U8", (n,))])
    with open(src / "model.safetensors", "wb") as f:
        f.write(header)
        f.truncate(len(header) + n)
    assert os.stat(src / "model.safetensors").st_blocks * 512 < 1_000_000  # sparse
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    end = svc.wait(_post(svc, src, svc.root / "o6", dtype="fp32").json()["id"])
    assert end["status"] == "failed" and end["error"]["type"] == "OutputTooLargeError", end
    assert not (svc.root / "o6").exists() and _no_staging(svc.root / "o6")


def test_a_resubmission_after_the_output_was_deleted_runs_again(svc, worker):
    src, out = _ckpt(svc.root / "s7"), svc.root / "o7"
    first = svc.wait(_post(svc, src, out).json()["id"])
    assert first["status"] == "succeeded"
    again = _post(svc, src, out)
    assert again.status_code == 200 and again.json()["id"] == first["id"]  # output intact: the same job
    import shutil

    shutil.rmtree(out)
    fresh = _post(svc, src, out)
    assert fresh.status_code == 202 and fresh.json()["id"] != first["id"]
    assert svc.wait(fresh.json()["id"])["status"] == "succeeded" and out.is_dir()


def test_hostile_requests_get_typed_4xx(svc):
    src = _ckpt(svc.root / "s8")
    for body, status in [
        ({"max_shard_size": "9" * 400}, 422),
        ({"source": str(svc.root) + "/\ud800"}, 422),
    ]:
        payload = {"source": str(src), "destination": {"local_path": str(svc.root / "o8")}, **body}
        r = svc.http.post(
            "/convert", content=json.dumps(payload).encode(), headers={"content-type": "application/json"}
        )
        assert r.status_code == status, (body, r.status_code, r.text)
    loop = svc.root / "loop"
    loop.symlink_to(loop)
    r = _post(svc, loop, svc.root / "o8")
    assert 400 <= r.status_code < 500, r.text
    deep = _ckpt(svc.root / "s8b")
    (deep / "config.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    r = _post(svc, deep, svc.root / "o8b")
    assert r.status_code == 422 and "nested too deeply" in r.text, r.text


def test_hf_cache_layout_is_followed_exactly(svc, worker):
    """A huggingface_hub cache snapshot (files linking to ../../blobs/<sha>) converts; a link elsewhere does not."""
    repo = svc.root / "hub" / "models--org--mix"
    ckpt = _ckpt(svc.root / "s9")
    snap = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(ckpt.iterdir())):
        sha = f"{i:064x}"
        f.rename(repo / "blobs" / sha)
        (snap / f.name).symlink_to(f"../../blobs/{sha}")
    end = svc.wait(_post(svc, snap, svc.root / "o9").json()["id"])
    assert end["status"] == "succeeded", end
    (snap / "extra.txt").symlink_to("../../../../../outside.txt")
    (svc.root / "outside.txt").write_text("x")
    end = svc.wait(_post(svc, snap, svc.root / "o9b").json()["id"])
    assert end["status"] == "failed" and "extra.txt" in end["error"]["message"], end
    time.sleep(0)
