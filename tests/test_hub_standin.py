"""The Hub stand-in (tests/support/hub_standin.py) against the real, unmodified huggingface_hub client.

huggingface_hub reads its environment once, when it is imported (``huggingface_hub.constants``), which
happens at collection time here. So the fixtures set the variables (for child processes) *and* patch the
module attributes the client reads at call time: ``constants.HF_HUB_DISABLE_XET`` (read by
``is_xet_available()``), ``HF_HUB_CACHE``, ``HF_TOKEN_PATH``, ``HF_HUB_OFFLINE``, and the progress-bar switch
copied into ``huggingface_hub.utils.tqdm``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
import numpy as np
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    HfFileSystem,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.community import DiscussionCommit
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFolder
from huggingface_hub.utils._runtime import is_xet_available
from safetensors.numpy import save as save_safetensors
from support.hub_standin import HubStandIn, StandInProcess, git_blob_sha1, parse_range

REPO = "standin-org/tiny-model"
# huggingface_hub 2.4's own LFS PUT passes a file object as data=..., which httpx2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")
TQDM_MODULE = sys.modules["huggingface_hub.utils.tqdm"]


# ------------------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolate huggingface_hub: HF_HOME, cache and token file under tmp_path; no ambient token, no bars."""
    home = tmp_path / "hf_home"
    cache = home / "hub"
    env = {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    # Already read at import time: patch what the client looks up at call time.
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(TQDM_MODULE, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    return cache


def disable_xet(monkeypatch: pytest.MonkeyPatch) -> None:
    """LFS uploads need the legacy git-LFS path: hf_xet is installed, so Xet would be used (and fail)."""
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")  # child processes
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # this process: is_xet_available() reads it
    assert not is_xet_available()


def start_hub(tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    if mode == "lfs":
        disable_xet(monkeypatch)  # "regular" runs with the client's default settings (Xet available)
    with HubStandIn(tmp_path / f"hub-{mode}", upload_mode=mode) as hub:
        yield hub


@pytest.fixture(params=["lfs", "regular"])
def hub(
    request: pytest.FixtureRequest, tmp_path: Path, hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HubStandIn]:
    """A stand-in in each upload mode."""
    yield from start_hub(tmp_path, request.param, monkeypatch)


@pytest.fixture
def lfs_hub(tmp_path: Path, hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    yield from start_hub(tmp_path, "lfs", monkeypatch)


@pytest.fixture
def regular_hub(tmp_path: Path, hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    yield from start_hub(tmp_path, "regular", monkeypatch)


def tiny_safetensors() -> bytes:
    tensors: dict[str, np.ndarray] = {
        "model.embed.weight": np.arange(64, dtype=np.float32).reshape(8, 8),
        "model.norm.weight": np.ones(8, dtype=np.float16),
    }
    return save_safetensors(tensors, metadata={"format": "pt"})


def make_repo(api: HfApi, files: dict[str, bytes], repo: str = REPO) -> str:
    """Create ``repo`` (if needed) and commit ``files`` to main; returns the commit id."""
    api.create_repo(repo, exist_ok=True)
    ops = [CommitOperationAdd(path, data) for path, data in files.items()]
    return api.create_commit(repo, ops, commit_message="add files").oid


# ------------------------------------------------------------------------------------------------------------
# Protocol coverage with the real client, in both upload modes
# ------------------------------------------------------------------------------------------------------------


def test_upload_then_read_back_with_every_client_entry_point(hub: HubStandIn, hf_cache: Path) -> None:
    lfs = hub.health()["upload_mode"] == "lfs"
    api = HfApi(endpoint=hub.endpoint)
    url = api.create_repo(REPO, private=False)
    assert url.repo_id == REPO and url.endpoint == hub.endpoint
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo(REPO)
    assert conflict.value.response.status_code == 409

    blob = os.urandom(50_000)
    files = {
        "config.json": b'{"model_type": "tiny"}',
        "README.md": b"---\nlicense: mit\n---\n# tiny\n",
        "model.safetensors": tiny_safetensors(),
        "sub/dir/blob.bin": blob,
        "empty.txt": b"",
    }
    sha = make_repo(api, files)

    # what the server stored, and how it got there
    stored = hub.files(REPO)
    assert set(stored) == {".gitattributes", *files}
    for path, data in files.items():
        assert stored[path]["lfs"] == (lfs and len(data) > 0), path
        assert stored[path]["size"] == len(data)
        assert hub.read_file(REPO, "main", path) == data
    puts = hub.requests(method="PUT", path_regex=r"^/lfs-upload/")
    assert len(puts) == (4 if lfs else 0)
    assert len(hub.requests(method="POST", path_regex=r"\.git/info/lfs/objects/batch$")) == (1 if lfs else 0)
    assert hub.requests(method="POST", path_regex=r"^/api/validate-yaml$")
    assert [c["title"] for c in hub.commits(REPO)] == ["add files", "initial commit"]

    info = api.model_info(REPO, files_metadata=True)
    assert info.sha == sha and info.private is False
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert siblings["sub/dir/blob.bin"].size == len(blob)
    assert (siblings["sub/dir/blob.bin"].lfs is not None) == lfs
    if lfs:
        lfs_info = siblings["model.safetensors"].lfs
        assert lfs_info is not None and lfs_info.sha256 == stored["model.safetensors"]["sha256"]
    else:
        assert siblings["config.json"].blob_id == git_blob_sha1(files["config.json"])
    assert api.model_info(REPO, revision=sha).sha == sha
    assert api.repo_exists(REPO) and not api.repo_exists("standin-org/nope")

    assert sorted(api.list_repo_files(REPO)) == sorted([".gitattributes", *files])
    tree = {e.path: e for e in api.list_repo_tree(REPO, recursive=True)}
    assert isinstance(tree["sub"], RepoFolder) and isinstance(tree["sub/dir"], RepoFolder)
    assert tree["sub/dir/blob.bin"].size == len(blob)  # type: ignore[union-attr]
    assert [e.path for e in api.list_repo_tree(REPO, path_in_repo="sub")] == ["sub/dir"]
    assert [e.path for e in api.get_paths_info(REPO, ["config.json", "sub", "missing"])] == [
        "config.json",
        "sub",
    ]
    assert api.file_exists(REPO, "config.json") and not api.file_exists(REPO, "nope.json")

    for path, data in files.items():
        assert (
            Path(hf_hub_download(REPO, path, endpoint=hub.endpoint, cache_dir=hf_cache)).read_bytes() == data
        )
    snapshot = Path(snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=hf_cache / "snap"))
    assert snapshot.name == sha
    for path, data in files.items():
        assert (snapshot / path).read_bytes() == data
    assert hub.bytes_served(r"/resolve/") >= 2 * sum(map(len, files.values()))

    meta = api.get_safetensors_metadata(REPO)
    assert set(meta.files_metadata["model.safetensors"].tensors) == {
        "model.embed.weight",
        "model.norm.weight",
    }
    assert any(
        r["range"] == "bytes=0-100000" and r["status"] == 206
        for r in hub.requests("GET", r"/resolve/main/model\.safetensors$")
    )

    hub.reset_requests()
    fs = HfFileSystem(endpoint=hub.endpoint)
    with fs.open(f"{REPO}/sub/dir/blob.bin", "rb", block_size=4096) as f:
        f.seek(12_345)
        assert f.read(1000) == blob[12_345:13_345]
        f.seek(49_990)
        assert f.read() == blob[49_990:]
    ranged = hub.requests("GET", r"/resolve/")
    assert ranged and all(r["status"] == 206 and r["range"] for r in ranged)


def test_resolve_answers_ranges_byte_for_byte(hub: HubStandIn) -> None:
    lfs = hub.health()["upload_mode"] == "lfs"
    data = os.urandom(10_000)
    sha = make_repo(HfApi(endpoint=hub.endpoint), {"data.bin": data})
    url = f"{hub.endpoint}/{REPO}/resolve/main/data.bin"
    entry = hub.files(REPO)["data.bin"]

    with httpx.Client(timeout=10) as client:
        head = client.head(url)
        assert head.status_code == 200
        assert head.headers["X-Repo-Commit"] == sha
        assert head.headers["Content-Length"] == "10000"
        assert head.headers["ETag"] == f'"{entry["sha256"] if lfs else git_blob_sha1(data)}"'
        assert (head.headers.get("X-Linked-Size"), head.headers.get("X-Linked-Etag")) == (
            ("10000", f'"{entry["sha256"]}"') if lfs else (None, None)
        )
        full = client.get(url)
        assert full.status_code == 200 and full.content == data and "Content-Range" not in full.headers

        for header, (start, end) in {
            "bytes=0-99": (0, 99),
            "bytes=1234-5677": (1234, 5677),
            "bytes=9990-": (9990, 9999),
            "bytes=-25": (9975, 9999),
            "bytes=-20000": (0, 9999),
            "bytes=9000-20000": (9000, 9999),
            "bytes=9999-9999": (9999, 9999),
        }.items():
            r = client.get(url, headers={"Range": header})
            assert r.status_code == 206, header
            assert r.headers["Content-Range"] == f"bytes {start}-{end}/10000", header
            assert r.headers["Content-Length"] == str(end - start + 1), header
            assert r.content == data[start : end + 1], header

        for header in ("bytes=10000-", "bytes=20000-30000", "bytes=-0"):
            r = client.get(url, headers={"Range": header})
            assert r.status_code == 416, header
            assert r.headers["Content-Range"] == "bytes */10000" and r.content == b""

    assert parse_range("bytes=5-2", 10) is None and parse_range("bytes=0-1,4-5", 10) is None  # ignored -> 200


def test_typed_errors(regular_hub: HubStandIn, hf_cache: Path) -> None:
    hub = regular_hub
    api = HfApi(endpoint=hub.endpoint)
    make_repo(api, {"config.json": b"{}"})

    with pytest.raises(RepositoryNotFoundError):
        api.model_info("standin-org/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("standin-org/missing", "config.json", endpoint=hub.endpoint)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch", endpoint=hub.endpoint)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.json", endpoint=hub.endpoint)
    no_exist = hf_cache / "models--standin-org--tiny-model" / ".no_exist"
    # X-Repo-Commit on EntryNotFound lets the client cache the miss
    assert any(no_exist.rglob("missing.json"))

    hub.set_gated(REPO)
    with pytest.raises(GatedRepoError):
        hf_hub_download(REPO, "config.json", endpoint=hub.endpoint)
    with pytest.raises(GatedRepoError):
        api.file_exists(REPO, "config.json")
    assert api.model_info(REPO).gated == "manual"  # metadata stays visible, like on the Hub
    hub.set_gated(REPO, False)
    assert Path(hf_hub_download(REPO, "config.json", endpoint=hub.endpoint)).read_bytes() == b"{}"


def test_per_repo_tokens_private_repos_and_seen_authorization(
    regular_hub: HubStandIn, hf_cache: Path
) -> None:
    hub = regular_hub
    anonymous = HfApi(endpoint=hub.endpoint)
    for repo in ("standin-org/job-a", "standin-org/job-b"):
        make_repo(anonymous, {"config.json": repo.encode()}, repo=repo)
    hub.set_tokens("standin-org/job-a", ["token-a"])
    hub.set_tokens("standin-org/job-b", ["token-b"])
    hub.reset_requests()

    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("standin-org/job-a")
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.endpoint, token="token-b").model_info("standin-org/job-a")
    path = hf_hub_download("standin-org/job-a", "config.json", endpoint=hub.endpoint, token="token-a")
    assert Path(path).read_bytes() == b"standin-org/job-a"
    HfApi(endpoint=hub.endpoint, token="token-b").list_repo_files("standin-org/job-b")

    assert hub.tokens_seen(r"/job-a(/|$)") == [None, "token-b", "token-a"]
    assert hub.tokens_seen(r"/job-b(/|$)") == ["token-b"]

    # gated + token list: the listed tokens are granted access
    hub.set_gated("standin-org/job-a")
    assert hf_hub_download("standin-org/job-a", "config.json", endpoint=hub.endpoint, token="token-a")
    hub.set_tokens("standin-org/job-a", None)
    with pytest.raises(
        GatedRepoError
    ):  # (a fresh cache: with the file cached, the client would fall back to it)
        hf_hub_download(
            "standin-org/job-a", "config.json", endpoint=hub.endpoint, cache_dir=hf_cache / "fresh"
        )

    # private repos need a token (any one here), like the Hub for anonymous users
    anonymous.create_repo("standin-org/private", private=True)
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("standin-org/private")
    assert HfApi(endpoint=hub.endpoint, token="whoever").model_info("standin-org/private").private is True


def test_pull_requests_refs_and_commits(hub: HubStandIn, hf_cache: Path) -> None:
    api = HfApi(endpoint=hub.endpoint)
    base = make_repo(api, {"config.json": b'{"v": 1}', "model.safetensors": tiny_safetensors()})

    first = api.create_commit(
        REPO,
        [CommitOperationAdd("converted/model.safetensors", tiny_safetensors())],
        commit_message="Convert checkpoint",
        commit_description="made by ckpt-convert",
        create_pr=True,
    )
    assert first.pr_num == 1 and first.pr_revision == "refs/pr/1"
    assert first.pr_url == f"{hub.endpoint}/{REPO}/discussions/1"
    assert hub.refs(REPO) == {"refs/heads/main": base, "refs/pr/1": first.oid}

    second = api.create_commit(
        REPO,
        [CommitOperationAdd("converted/config.json", b"{}")],
        commit_message="add config",
        revision="refs/pr/1",
    )
    assert second.pr_url is None
    assert hub.refs(REPO)["refs/pr/1"] == second.oid
    assert [c["id"] for c in hub.commits(REPO, "refs/pr/1")][:3] == [second.oid, first.oid, base]

    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", base)]
    assert [(p.ref, p.target_commit) for p in refs.pull_requests or []] == [("refs/pr/1", second.oid)]
    commits = api.list_repo_commits(REPO, revision="refs/pr/1")
    assert [c.commit_id for c in commits] == [second.oid, first.oid, base, commits[-1].commit_id]
    assert commits[-1].title == "initial commit"

    (pr,) = api.get_repo_discussions(REPO, discussion_type="pull_request", discussion_status="open")
    assert (pr.num, pr.title, pr.status, pr.is_pull_request, pr.git_reference) == (
        1, "Convert checkpoint", "open", True, "refs/pr/1",
    )  # fmt: skip
    details = api.get_discussion_details(REPO, 1)
    assert details.target_branch == "refs/heads/main" and details.conflicting_files == []
    commit_events = [e for e in details.events if isinstance(e, DiscussionCommit)]
    assert [e.oid for e in commit_events] == [first.oid, second.oid]
    (open_pr,) = hub.open_prs(REPO)
    assert (open_pr["num"], open_pr["head"], open_pr["base_commit"]) == (1, second.oid, base)

    pr_file = hf_hub_download(REPO, "converted/config.json", revision="refs/pr/1", endpoint=hub.endpoint)
    assert Path(pr_file).read_bytes() == b"{}"
    assert not api.file_exists(REPO, "converted/config.json")  # main is untouched

    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit(
            REPO,
            [CommitOperationAdd("x.txt", b"x")],
            commit_message="stale",
            parent_commit=commits[-1].commit_id,
        )
    assert stale.value.response.status_code == 412

    api.create_branch(REPO, branch="dev")
    assert hub.refs(REPO)["refs/heads/dev"] == base
    draft = api.create_pull_request(REPO, title="Empty draft")
    assert (draft.num, draft.status) == (2, "draft")

    api.merge_pull_request(REPO, 1)
    assert set(hub.files(REPO)) >= {"converted/config.json", "converted/model.safetensors"}
    assert [p["num"] for p in hub.open_prs(REPO)] == []
    assert api.get_discussion_details(REPO, 1).status == "merged"


def test_preuploaded_blob_is_not_uploaded_again(lfs_hub: HubStandIn) -> None:
    hub = lfs_hub
    weights = os.urandom(200_000)
    api = HfApi(endpoint=hub.endpoint)
    api.create_repo(REPO)

    # a job pre-uploads its LFS file, then dies before committing
    op = CommitOperationAdd("model.safetensors", weights)
    api.preupload_lfs_files(REPO, additions=[op])
    sha256 = op.upload_info.sha256.hex()
    assert hub.blob_uploads() == {sha256: 1}
    assert "model.safetensors" not in hub.files(REPO)

    # the retry, from another client: the batch answer has no actions for the stored blob, so no PUT
    hub.reset_requests()
    retry = HfApi(endpoint=hub.endpoint)
    retry.create_commit(REPO, [CommitOperationAdd("model.safetensors", weights)], commit_message="retry")
    assert hub.blob_uploads() == {sha256: 1}
    assert hub.requests(method="PUT") == []
    assert len(hub.requests(method="POST", path_regex=r"/objects/batch$")) == 1
    committed = hub.files(REPO)["model.safetensors"]
    assert (committed["sha256"], committed["size"], committed["lfs"]) == (sha256, len(weights), True)

    # an lfsFile line must name an uploaded blob
    payload = [
        {"key": "header", "value": {"summary": "bogus", "description": ""}},
        {"key": "lfsFile", "value": {"path": "ghost.bin", "algo": "sha256", "oid": "0" * 64, "size": 3}},
    ]
    body = "".join(json.dumps(line) + "\n" for line in payload)
    r = httpx.post(f"{hub.endpoint}/api/models/{REPO}/commit/main", content=body)
    assert r.status_code == 400 and "never uploaded" in r.json()["error"]


# ------------------------------------------------------------------------------------------------------------
# Fault injection, as the client sees it
# ------------------------------------------------------------------------------------------------------------


def test_5xx_is_retried_by_http_backoff(lfs_hub: HubStandIn) -> None:
    hub = lfs_hub
    api = HfApi(endpoint=hub.endpoint)
    api.create_repo(REPO)
    hub.add_fault(r"^/lfs-upload/", method="PUT", status=500)
    hub.add_fault(r"/tree/main$", method="GET", status=503)

    api.upload_file(path_or_fileobj=os.urandom(1000), path_in_repo="w.bin", repo_id=REPO)
    assert [r["status"] for r in hub.requests(method="PUT")] == [500, 200]
    assert list(hub.blob_uploads().values()) == [1]

    assert "w.bin" in api.list_repo_files(REPO)
    assert [r["status"] for r in hub.requests("GET", r"/tree/main$")] == [503, 200]
    assert [(f["hits"], f["remaining"]) for f in hub.faults()] == [(1, 0), (1, 0)]


def test_dropped_connection_is_a_network_error(
    regular_hub: HubStandIn, hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = regular_hub
    api = HfApi(endpoint=hub.endpoint)
    data = os.urandom(300_000)
    make_repo(api, {"data.bin": data})

    # cut mid-body once: hf_hub_download resumes with a Range request (its 64 KiB chunks reach the file
    # before the cut)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    hub.add_fault(r"/resolve/", method="GET", drop=True, drop_after=150_000)
    assert Path(hf_hub_download(REPO, "data.bin", endpoint=hub.endpoint)).read_bytes() == data
    cut, resumed = hub.requests("GET", r"/resolve/")
    assert (cut["status"], cut["bytes_sent"], cut["dropped"]) == (200, 150_000, True)
    assert (resumed["range"], resumed["status"]) == ("bytes=131072-", 206)

    # a permanent drop on a call without retries surfaces as httpx2's protocol (network) error
    hub.add_fault(r"^/api/models/", method="GET", drop=True, count=-1)
    with pytest.raises(httpx2.RemoteProtocolError):
        api.model_info(REPO)
    # a HEAD (no body) is dropped before the headers
    hub.add_fault(r"/resolve/", method="HEAD", drop=True)
    with pytest.raises(httpx2.RemoteProtocolError):
        hf_hub_download(REPO, "data.bin", endpoint=hub.endpoint, force_download=True)
    head = hub.requests("HEAD")[-1]
    assert (head["status"], head["bytes_sent"], head["dropped"]) == (None, 0, True)


def test_delay_and_range_only_faults(regular_hub: HubStandIn) -> None:
    hub = regular_hub
    api = HfApi(endpoint=hub.endpoint)
    make_repo(api, {"data.bin": b"0123456789"})

    hub.add_fault(r"^/api/models/", method="GET", delay=0.4)
    start = time.monotonic()
    api.model_info(REPO)
    assert time.monotonic() - start >= 0.4
    hub.add_fault(r"^/api/models/", method="GET", delay=0.6)
    with pytest.raises(httpx2.ReadTimeout):
        api.model_info(REPO, timeout=0.15)

    hub.add_fault(r"/resolve/", status=503, range_only=True, count=-1)
    url = f"{hub.endpoint}/{REPO}/resolve/main/data.bin"
    assert httpx.get(url).status_code == 200
    assert httpx.get(url, headers={"Range": "bytes=0-1"}).status_code == 503
    assert hub.faults()[-1]["hits"] == 1


# ------------------------------------------------------------------------------------------------------------
# Runners: state on disk, separate process
# ------------------------------------------------------------------------------------------------------------


def test_state_survives_a_restart_on_the_same_root(tmp_path: Path, hf_cache: Path) -> None:
    root = tmp_path / "hub"
    with HubStandIn(root, upload_mode="regular") as hub:
        api = HfApi(endpoint=hub.endpoint)
        sha = make_repo(api, {"config.json": b"{}"})
        pr = api.create_commit(REPO, [CommitOperationAdd("a.txt", b"a")], commit_message="pr", create_pr=True)
    assert (root / "repos" / "models" / REPO / "repo.json").is_file()
    with HubStandIn(root, upload_mode="regular") as hub:
        assert hub.refs(REPO) == {"refs/heads/main": sha, "refs/pr/1": pr.oid}
        assert hub.read_file(REPO, "refs/pr/1", "a.txt") == b"a"
        assert [p["num"] for p in hub.open_prs(REPO)] == [1]
        assert HfApi(endpoint=hub.endpoint).model_info(REPO).sha == sha


def test_separate_process_is_controlled_the_same_way(tmp_path: Path, hf_cache: Path) -> None:
    with StandInProcess(tmp_path / "hub", upload_mode="regular", log=tmp_path / "standin.log") as hub:
        api = HfApi(endpoint=hub.endpoint)
        make_repo(api, {"config.json": b'{"a": 1}'})
        assert hub.files(REPO)["config.json"]["lfs"] is False
        hub.add_fault(r"^/api/models/", method="GET", status=404, count=1)
        with pytest.raises(HfHubHTTPError):
            api.model_info(REPO)
        assert api.model_info(REPO).sha == hub.refs(REPO)["refs/heads/main"]
        assert [r["status"] for r in hub.requests("GET", r"^/api/models/")] == [404, 200]
        path = hf_hub_download(REPO, "config.json", endpoint=hub.endpoint)
        assert Path(path).read_bytes() == b'{"a": 1}'
        hub.set_upload_mode("lfs")
        assert hub.health()["upload_mode"] == "lfs"
    assert hub.proc is None
