"""A Hub repo as a Sink: one commit (new repo, branch or pull request) publishes everything, or nothing is seen.

:class:`HubSink` writes each output shard to a local temporary file, pre-uploads it (LFS) as soon as it is
complete and deletes the local copy, so local disk holds about one shard. One commit at the end publishes the
shards, the index, the copied files and a model card section (with ``base_model:`` front matter), and deletes the
weights it replaces. An open pull request of the same conversion (same ``pr_key``) is reused instead of opening
another; a commit of the same conversion already made is found (:meth:`HubSink.already_published`).

>>> convert(src, HubSink("my-org/Mixtral-8x7B-grouped", private=True))     # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ..checkpoint import BIN_INDEX_NAME
from ..errors import OutputExistsError
from ..pytorch_bin import is_bin_checkpoint_name
from ..safetensors_io import INDEX_NAME
from .base import ShardWritten, Source, file_size, unwrap
from .hub_adapter import is_lfs, upload_record, uploaded_addition
from .hub_source import HUB_PREFIX, _api, _map_hub_error

CARD_MARK = "<!-- ckpt-convert -->"


def card_section(info: dict[str, str]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in info.items())
    return (
        f"\n\n{CARD_MARK}\n## Converted with ckpt-convert\n\n"
        "This checkpoint was converted by ckpt-convert; the tensors are bit-identical to what the conversion rules "
        "produce from the source.\n\n| | |\n|---|---|\n" + rows + "\n"
    )


class HubSink:
    """Publishes to ``repo_id`` (created when missing) in ONE commit: on ``revision``, or a pull request."""

    def __init__(
        self,
        repo_id: str,
        *,
        create_pr: bool = False,
        private: bool = False,
        revision: str = "main",
        token: str | None = None,
        endpoint: str | None = None,
        pr_key: str | None = None,
        card: dict[str, str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        pr_revision: str | None = None,
        base_model: str | None = None,
        overwrite: bool = False,
    ) -> None:
        """``pr_revision`` (``refs/pr/N``): the pull request found by :meth:`begin` in another process.
        ``base_model``: the source repo, recorded in the model card's front matter (``base_model:``) so the Hub
        links the two."""
        self.repo_id, self.create_pr, self.private, self.revision = repo_id, create_pr, private, revision
        self.token, self.endpoint, self.pr_key, self.card = token, endpoint, pr_key, card or {}
        self.workdir = workdir
        self.description = f"{HUB_PREFIX}{repo_id}" + (" (pull request)" if create_pr else f"@{revision}")
        self.api = _api(token, endpoint)
        self.tmp: Path | None = None
        self.ops: list[Any] = []
        self.pr_revision: str | None = pr_revision
        self.base_model = base_model if base_model != repo_id else None
        self.overwrite = overwrite

    def begin(self) -> None:
        from huggingface_hub import errors as hf

        try:
            self.api.create_repo(self.repo_id, private=self.private, exist_ok=True)
            if not self.create_pr and not self.overwrite and self._weights_at(self.revision):
                raise OutputExistsError(
                    f"{self.repo_id}@{self.revision} already holds weights; pass overwrite to replace them (or "
                    "publish as a pull request)",
                    file=self.repo_id,
                )
            if self.create_pr and self.pr_key:
                for d in self.api.get_repo_discussions(
                    self.repo_id, discussion_type="pull_request", discussion_status="open"
                ):
                    if self.pr_key in d.title:
                        self.pr_revision = f"refs/pr/{d.num}"
                        break
        except hf.HfHubHTTPError as e:
            raise _map_hub_error(e, self.repo_id, self.revision) from None
        self.tmp = Path(tempfile.mkdtemp(prefix="ckpt-convert-upload-", dir=self.workdir))

    def attach(self) -> None:
        """Join a publication :meth:`begin` prepared in another process: only a local folder for shard files."""
        self.tmp = Path(tempfile.mkdtemp(prefix="ckpt-convert-upload-", dir=self.workdir))

    def add_written(self, shard: ShardWritten) -> None:
        """A shard another process pre-uploaded: the commit needs only its sha256, size and first bytes."""
        from ..errors import UnsupportedError

        if not is_lfs(shard.upload):
            raise UnsupportedError(
                f"the Hub asked for {shard.file} inline (not LFS): a job whose shards are written by several "
                "workers needs LFS uploads", file=shard.file,
            )  # fmt: skip
        assert shard.upload is not None
        self.ops.append(uploaded_addition(shard.file, shard.upload))

    def already_published(self) -> str | None:
        """The URL of a commit of this same conversion (``pr_key`` in its message) at the target: a run that died
        after committing, before recording it. Publishing it again would only duplicate it."""
        if not self.pr_key:
            return None
        revision, _ = self._target
        if self.create_pr and not self.pr_revision:
            return None
        try:
            for c in self.api.list_repo_commits(self.repo_id, revision=revision):
                if f"[{self.pr_key}]" in (c.title or "") + (c.message or ""):
                    return f"{self.api.endpoint}/{self.repo_id}/commit/{c.commit_id}"
        except Exception:  # noqa: BLE001 - an empty repo has no commits to find
            return None
        return None

    @property
    def _target(self) -> tuple[str, bool]:
        """(revision, create_pr) for preupload and commit."""
        if self.pr_revision:
            return self.pr_revision, False
        return self.revision, self.create_pr

    @contextmanager
    def open_shard(self, name: str) -> Iterator[BinaryIO]:
        assert self.tmp is not None, "begin() first"
        with open(self.tmp / name, "wb", buffering=0) as f:
            yield f

    def finish_shard(self, name: str) -> dict[str, Any] | None:
        """Pre-upload the finished shard now and free its local disk (LFS); a blob the Hub already holds is
        skipped. Returns what another process needs to commit it (:meth:`add_written`)."""
        from huggingface_hub import CommitOperationAdd

        assert self.tmp is not None
        path = self.tmp / name
        op = CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
        revision, create_pr = self._target
        try:
            self.api.preupload_lfs_files(self.repo_id, additions=[op], revision=revision, create_pr=create_pr)
        except Exception as e:  # noqa: BLE001
            raise _map_hub_error(e, self.repo_id, revision) from None
        info = upload_record(op)
        if is_lfs(info):
            path.unlink()  # uploaded: the commit only needs its sha256 and size
        self.ops.append(op)
        return info

    def free_bytes(self) -> int:
        """Free space where shards are written before they are uploaded."""
        st = os.statvfs(self.workdir or tempfile.gettempdir())
        return st.f_bavail * st.f_frsize

    def bytes_needed(self, shard_sizes: list[int]) -> int:
        """A shard is deleted once pre-uploaded: about one at a time."""
        return max(shard_sizes, default=0)

    def write_bytes(self, name: str, data: bytes) -> None:
        from huggingface_hub import CommitOperationAdd

        self.ops.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=data))

    def copy_file(self, source: Source, name: str) -> None:
        with source.open_file(name) as f:
            data = f.read()
        if name == "README.md" and self.card:
            text = data.decode("utf-8", errors="replace").split(CARD_MARK)[0].rstrip()
            data = (self._front_matter(text) + card_section(self.card)).encode()
            self.card = {}
        self.write_bytes(name, data)

    def _front_matter(self, text: str) -> str:
        """``text`` with ``base_model: <source repo>`` in its YAML front matter (added if there is none)."""
        if not self.base_model:
            return text
        from huggingface_hub import ModelCard
        from huggingface_hub.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "metadata block was not found" is expected for a bare README
        try:
            card = ModelCard(text, ignore_metadata_errors=True)
        finally:
            hf_logging.set_verbosity(level)
        card.data.base_model = self.base_model  # type: ignore[attr-defined]  # CardData holds any key
        return str(card).rstrip()

    def link_file(self, source: Source, name: str, size: int | None = None) -> None:
        """A weight file of ``source`` unchanged: streamed into a local file and pre-uploaded like a shard (the Hub
        skips a blob it already holds)."""
        assert self.tmp is not None, "begin() first"
        if size is None:
            size = file_size(source, name)
        with source.reader() as reader, self.open_shard(name) as out:
            reader.copy_to(out, name, 0, size)
        self.finish_shard(name)

    def holds(self, source: Source) -> bool:
        """True when this destination is ``source``'s own repo (a no-op there publishes nothing)."""
        return getattr(unwrap(source), "repo_id", None) == self.repo_id

    def commit(self, message: str) -> str:
        from huggingface_hub import errors as hf

        if self.card:  # the source had no README.md
            self.write_bytes(
                "README.md", (self._front_matter("") + card_section(self.card)).lstrip().encode()
            )
            self.card = {}
        revision, create_pr = self._target
        if self.pr_key and f"[{self.pr_key}]" not in message:
            # the key in the commit message (and so in a new PR's title): the same conversion finds its PR, or
            # its commit if a run died after making it
            message = f"{message} [{self.pr_key}]"
        try:
            self.ops.extend(self._stale_weights(revision))
            info = self.api.create_commit(
                self.repo_id,
                operations=self.ops,
                commit_message=message,
                revision=revision,
                create_pr=create_pr,
            )
        except hf.HfHubHTTPError as e:
            raise _map_hub_error(e, self.repo_id, revision) from None
        finally:
            self._cleanup()
        if (
            self.pr_revision
        ):  # an existing PR of the same conversion got the commit (or already had these files)
            return f"{self.api.endpoint}/{self.repo_id}/discussions/{self.pr_revision.rsplit('/', 1)[1]}"
        return str(info.pr_url or info.commit_url)

    def _stale_weights(self, revision: str) -> list[Any]:
        """Deletions for the safetensors weights already at ``revision`` that this commit does not rewrite (the
        source's own shards when converting in a pull request on it, or an earlier conversion's extra shards):
        the result must hold one consistent checkpoint, not two layouts mixed."""
        from huggingface_hub import CommitOperationDelete

        written = {op.path_in_repo for op in self.ops}
        return [CommitOperationDelete(path_in_repo=f) for f in self._weights_at(revision) if f not in written]

    def _weights_at(self, revision: str) -> list[str]:
        """The transformers checkpoint files at ``revision`` (safetensors or ``.bin``, with their index)."""
        from huggingface_hub import errors as hf

        try:
            existing = self.api.list_repo_files(self.repo_id, revision=revision)
        except (hf.RevisionNotFoundError, hf.RepositoryNotFoundError):
            return []
        return [
            f
            for f in existing
            if "/" not in f
            and (f.endswith(".safetensors") or f in (INDEX_NAME, BIN_INDEX_NAME) or is_bin_checkpoint_name(f))
        ]

    def abort(self) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
