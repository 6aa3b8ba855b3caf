"""The few huggingface_hub internals the Hub sink relies on, in one place (tested against the installed version).

A sharded job's shards are pre-uploaded by several worker processes and committed by another one. huggingface_hub
has no public way to commit a file another process uploaded: ``create_commit`` uploads what its
``CommitOperationAdd`` operations say is not uploaded yet. So the committing process rebuilds each operation from
what the uploader recorded (sha256, size, first bytes) and marks it uploaded the way ``preupload_lfs_files`` does
(huggingface_hub 2.4: ``_upload_mode`` and ``_is_uploaded``). ``tests/test_hub.py`` checks that these attributes
still mean what this module assumes.
"""

from __future__ import annotations

import base64
from typing import Any


def upload_record(op: Any) -> dict[str, Any]:
    """What another process needs to commit ``op`` after ``preupload_lfs_files`` uploaded it:
    ``{"mode": "lfs" | "regular", "sha256", "size", "sample"}``."""
    return {
        "mode": getattr(op, "_upload_mode", None),
        "sha256": op.upload_info.sha256.hex(),
        "size": op.upload_info.size,
        "sample": base64.b64encode(op.upload_info.sample).decode(),
    }


def uploaded_addition(path_in_repo: str, record: dict[str, Any]) -> Any:
    """A ``CommitOperationAdd`` for a blob already uploaded (LFS) by another process, from :func:`upload_record`;
    ``create_commit`` then sends only its sha256 and size."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.lfs import UploadInfo

    op = CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=b"")
    op.upload_info = UploadInfo(
        size=int(record["size"]),
        sample=base64.b64decode(record["sample"]),
        sha256=bytes.fromhex(record["sha256"]),
    )
    op._upload_mode, op._is_uploaded = "lfs", True  # as preupload_lfs_files leaves an uploaded operation
    return op


def is_lfs(record: dict[str, Any] | None) -> bool:
    return bool(record) and record.get("mode") == "lfs"  # type: ignore[union-attr]
