"""Hub sources and sinks against the local Hub stand-in, with the real huggingface_hub client.

A tiny random Mixtral is uploaded to the stand-in in the published layout; the converter plans it from range
requests only, streams it, and publishes the result in one commit (or a pull request). The destination is then
downloaded with huggingface_hub and compared, bit for bit, with transformers' ``from_pretrained``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

tm = pytest.importorskip("support.tiny_models")

from huggingface_hub import snapshot_download  # noqa: E402
from support.helpers import assert_same_tensors, read_tensors  # noqa: E402
from support.hubenv import isolated_hub, upload_tiny_mixtral  # noqa: E402

from converter import convert, plan  # noqa: E402
from converter.errors import (  # noqa: E402
    CheckpointError,
    ConversionError,
    GatedRepoError,
    HubError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from converter.storage.hub_sink import HubSink  # noqa: E402
from converter.storage.hub_source import HubSource  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
SRC = "org/tiny-mixtral"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """An LFS-mode stand-in holding SRC (a tiny random Mixtral in the published layout)."""
    root = tmp_path_factory.mktemp("hub")
    with isolated_hub(root) as h:
        h.want, h.published = upload_tiny_mixtral(h, SRC)
        yield h


def download(hub, repo, revision="main"):
    path = snapshot_download(repo, revision=revision, endpoint=hub.endpoint, cache_dir=hub.root / "dl")
    from pathlib import Path

    return Path(path)


def test_plan_from_headers_reads_a_few_kb_per_shard(hub):
    hub.reset_requests()
    src = HubSource(SRC, "main", endpoint=hub.endpoint)
    p = plan(src)
    assert p.model_type == "mixtral" and not p.is_noop
    shards = len(p.source_index.shards)
    assert shards >= 3
    ranged = [r for r in hub.requests(method="GET", path_regex=r"/resolve/.*\.safetensors$")]
    assert len(ranged) == shards and all(r["range"] for r in ranged)  # one range request per shard header
    per_shard = max(r["bytes_sent"] for r in ranged)
    assert per_shard <= 4096, per_shard
    shard_bytes = sum(src.sizes[f] for f in p.source_index.shards)
    total = hub.bytes_served(method="GET")  # + config.json and the index
    assert total <= 4096 * shards + 20_000 < shard_bytes / 5
    assert src.description.startswith(f"hf://{SRC}@") and len(src.sha) == 40


def test_convert_hub_to_hub_in_one_commit(hub):
    dst = "org/tiny-mixtral-grouped"
    before = hub.blob_uploads()
    card = {"source": f"{SRC}@x", "model_type": "mixtral"}
    result = convert(HubSource(SRC, "main", endpoint=hub.endpoint), HubSink(dst, endpoint=hub.endpoint, card=card),
                     max_shard_size="150KB")  # fmt: skip
    assert len(result.shards) >= 2
    commits = hub.commits(dst, "main")
    assert len(commits) == 2 and commits[0]["title"].startswith("Convert")  # initial commit + ours
    assert result.output.endswith(commits[0]["id"])
    local = download(hub, dst)
    assert_same_tensors(read_tensors(local), hub.want)
    card = (local / "README.md").read_text()
    assert (
        card.startswith("# tiny mixtral")
        and "Converted with ckpt-convert" in card
        and "| model_type | mixtral |" in card
    )
    assert json.loads((local / "config.json").read_text())["model_type"] == "mixtral"
    import hashlib

    uploads = hub.blob_uploads()
    for name, _ in result.shards:  # each shard uploaded exactly once, while the job ran
        sha = hashlib.sha256((local / name).read_bytes()).hexdigest()
        assert uploads[sha] == 1 and sha not in before
    assert (local / "model.safetensors.index.json").exists()


def test_pull_request_with_one_commit_then_reused(hub):
    src = HubSource(SRC, "main", endpoint=hub.endpoint)
    sink = HubSink(SRC, create_pr=True, endpoint=hub.endpoint, pr_key="key123")
    out = convert(src, sink).output
    prs = hub.open_prs(SRC)
    assert len(prs) == 1 and "key123" in prs[0]["title"] and out.endswith(f"/discussions/{prs[0]['num']}")
    ref = f"refs/pr/{prs[0]['num']}"
    main_head = hub.commits(SRC, "main")[0]["id"]
    assert [c["id"] for c in hub.commits(SRC, ref)][1] == main_head  # one commit on top of main
    assert_same_tensors(read_tensors(download(hub, SRC, ref)), hub.want)
    # the same conversion again: the open PR is reused, not a second one opened (and with nothing changed,
    # huggingface_hub makes no empty commit)
    pr_commits = hub.commits(SRC, ref)
    again = convert(
        HubSource(SRC, "main", endpoint=hub.endpoint),
        HubSink(SRC, create_pr=True, endpoint=hub.endpoint, pr_key="key123"),
    )
    assert len(hub.open_prs(SRC)) == 1 and again.output == out
    assert hub.commits(SRC, ref) == pr_commits
    assert hub.commits(SRC, "main")[0]["id"] == main_head  # main untouched


def test_failed_commit_publishes_nothing_and_retry_skips_uploaded_shards(hub):
    dst = "org/tiny-mixtral-retry"
    hub.api.create_repo(dst)
    head = hub.commits(dst, "main")[0]["id"]
    fault = hub.add_fault(rf"/api/models/{dst}/commit/", method="POST", count=-1, status=500)
    with pytest.raises(ConversionError):
        convert(HubSource(SRC, "main", endpoint=hub.endpoint), HubSink(dst, endpoint=hub.endpoint))
    assert hub.commits(dst, "main")[0]["id"] == head and set(hub.files(dst, "main")) == {".gitattributes"}
    assert fault is not None
    hub.clear_faults()
    uploads = hub.blob_uploads()
    hub.reset_requests()
    convert(HubSource(SRC, "main", endpoint=hub.endpoint), HubSink(dst, endpoint=hub.endpoint))
    assert hub.blob_uploads() == uploads  # every shard was already on the Hub: nothing uploaded again
    assert not hub.requests(method="PUT")
    assert_same_tensors(read_tensors(download(hub, dst)), hub.want)


def test_range_reads_survive_5xx_and_dropped_connections(hub):
    dst = "org/tiny-mixtral-faults"
    hub.add_fault(r"/resolve/.*\.safetensors$", method="GET", count=2, status=503, range_only=True)
    hub.add_fault(r"/resolve/.*\.safetensors$", method="GET", count=2, drop=True, range_only=True)
    convert(HubSource(SRC, "main", endpoint=hub.endpoint), HubSink(dst, endpoint=hub.endpoint))
    faults = hub.faults()
    assert all(f["remaining"] == 0 for f in faults), faults
    hub.clear_faults()
    assert_same_tensors(read_tensors(download(hub, dst)), hub.want)


def test_permanent_read_failure_fails_cleanly(hub, monkeypatch):
    import converter.storage.hub_source as ch

    monkeypatch.setattr(ch, "RETRIES", 1)
    dst = "org/tiny-mixtral-broken"
    hub.add_fault(r"/resolve/.*\.safetensors$", method="GET", count=-1, status=500, range_only=True)
    src = HubSource(SRC, "main", endpoint=hub.endpoint)
    try:
        with pytest.raises(HubError, match="failed after 2 attempts"):
            convert(src, HubSink(dst, endpoint=hub.endpoint))
    finally:
        hub.clear_faults()
    assert not hub.api.repo_exists(dst)  # failed while planning: nothing created, nothing published


def test_typed_errors(hub):
    with pytest.raises(RepoNotFoundError):
        HubSource("org/nope", "main", endpoint=hub.endpoint)
    with pytest.raises(RevisionNotFoundError):
        HubSource(SRC, "no-such-branch", endpoint=hub.endpoint)
    hub.api.create_repo("org/gated")
    hub.api.upload_folder(repo_id="org/gated", folder_path=hub.root / "published-org--tiny-mixtral")
    hub.set_gated("org/gated")
    with pytest.raises(GatedRepoError):
        plan(HubSource("org/gated", "main", endpoint=hub.endpoint))
    hub.api.create_repo("org/no-weights")
    hub.api.upload_file(
        repo_id="org/no-weights", path_or_fileobj=b'{"model_type": "mixtral"}', path_in_repo="config.json"
    )
    with pytest.raises(CheckpointError, match="has no weights transformers can load"):
        plan(HubSource("org/no-weights", "main", endpoint=hub.endpoint))


def test_cli_hub_paths(hub, tmp_path):
    """`ckpt-convert convert hf://org/name@rev OUT` and `... hf://org/name` as a user runs them (HF_ENDPOINT)."""
    import os
    import subprocess

    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_cli_user_token"}

    def cli(*args):
        r = subprocess.run(
            [sys.executable, "-m", "converter.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        return r

    cli("convert", f"hf://{SRC}@main", str(tmp_path / "local"), "-q")
    assert_same_tensors(read_tensors(tmp_path / "local"), hub.want)
    cli("convert", str(tmp_path / "local"), "hf://org/back-to-hub", "--reverse", "--private", "-q")
    assert hub.api.model_info("org/back-to-hub", token="hf_cli_user_token").private
    assert "hf_cli_user_token" in hub.tokens_seen(r"back-to-hub")  # HF_TOKEN from the environment was used
    back = snapshot_download(
        "org/back-to-hub", endpoint=hub.endpoint, cache_dir=hub.root / "dl2", token="hf_cli_user_token"
    )
    assert_same_tensors(read_tensors(Path(back)), hub.published)
    cli("convert", f"hf://{SRC}", f"hf://{SRC}", "--pr", "-q")  # a pull request on the source itself
    assert any("Convert mixtral" in p["title"] for p in hub.open_prs(SRC))


def test_hub_adapter_commits_a_blob_another_process_uploaded(hub, tmp_path):
    """The one place that relies on huggingface_hub internals: a CommitOperationAdd rebuilt from an upload record
    (as a sharded job's final task does) commits the blob without uploading it again."""
    from huggingface_hub import CommitOperationAdd

    from converter.storage.hub_adapter import is_lfs, upload_record, uploaded_addition

    repo = "org/adapter"
    hub.api.create_repo(repo)
    data = bytes(range(256)) * 4096
    (tmp_path / "blob.safetensors").write_bytes(data)
    op = CommitOperationAdd(
        path_in_repo="blob.safetensors", path_or_fileobj=str(tmp_path / "blob.safetensors")
    )
    hub.api.preupload_lfs_files(repo, additions=[op])
    record = upload_record(op)
    assert is_lfs(record) and record["size"] == len(data)
    hub.reset_requests()
    hub.api.create_commit(
        repo, operations=[uploaded_addition("blob.safetensors", record)], commit_message="x"
    )
    assert not [r for r in hub.requests(method="PUT")], "the blob was uploaded again"
    path = hub.api.hf_hub_download(repo, "blob.safetensors", cache_dir=tmp_path / "dl")
    assert Path(path).read_bytes() == data
