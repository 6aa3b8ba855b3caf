"""A Hub stand-in with huggingface_hub isolated around it, shared by the Hub tests."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants

from support.helpers import read_tensors
from support.hub_standin import HubStandIn


@contextmanager
def isolated_hub(root: Path, upload_mode: str = "lfs") -> Iterator[HubStandIn]:
    """A stand-in; huggingface_hub in a temp HF_HOME with no ambient token, Xet off (the stand-in speaks git-LFS).

    huggingface_hub reads its environment at import: the variables are set for child processes (workers, the
    API) and the module constants patched for this process."""
    mp = pytest.MonkeyPatch()
    home = root / "hf_home"
    env = {"HF_HOME": home, "HF_HUB_CACHE": home / "hub", "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # fmt: skip
    for k, v in env.items():
        mp.setenv(k, str(v))
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
        mp.delenv(k, raising=False)
    mp.setattr(constants, "HF_HOME", str(home))
    mp.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    mp.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    mp.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
    mp.setattr(importlib.import_module("huggingface_hub.utils.tqdm"), "HF_HUB_DISABLE_PROGRESS_BARS", True)
    try:
        with HubStandIn(root / "standin", upload_mode=upload_mode) as h:
            h.root = root  # type: ignore[attr-defined]
            h.api = HfApi(endpoint=h.endpoint)  # type: ignore[attr-defined]
            yield h
    finally:
        mp.undo()


def upload_tiny_mixtral(hub: HubStandIn, repo: str, *, token: str | None = None) -> tuple[dict, dict]:
    """A tiny random Mixtral, saved in the published layout (several shards) and uploaded to ``repo``.
    Returns (transformers' from_pretrained state dict, the published tensors)."""
    from support import tiny_models as tm

    folder = hub.root / f"published-{repo.replace('/', '--')}"  # type: ignore[attr-defined]
    tm.save_published(tm.build_model("mixtral"), folder, max_shard_bytes=60_000)
    (folder / "README.md").write_text("# tiny mixtral\n\nA test model.\n")
    hub.api.create_repo(repo, token=token)  # type: ignore[attr-defined]
    hub.api.upload_folder(repo_id=repo, folder_path=folder, token=token)  # type: ignore[attr-defined]
    return tm.load_state_dict(folder, "mixtral"), read_tensors(folder)
