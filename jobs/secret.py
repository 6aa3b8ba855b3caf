"""Secrets at rest: the per-job Hub token is sealed (Fernet: AES-128-CBC + HMAC-SHA256) with a key only the API and
the workers hold (``CKPT_CONVERT_SECRET_KEY``), so the task message, and the broker's append-only file that keeps
it, carry only ciphertext; a worker unseals it in memory. A completion webhook's secret is sealed the same way into
the job store (``jobs.webhooks``). Secret files (the key and the embedded server's password, written by
``ckpt-convert serve``) are created 0600 and never rewritten."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from converter.errors import ConversionError

#: the task message header that carries a job's sealed Hub token
TOKEN_HEADER = "hf_token_sealed"


class SecretKeyError(ConversionError):
    """A job's Hub token could not be sealed or unsealed: ``CKPT_CONVERT_SECRET_KEY`` is unset, or differs between
    the API and this worker."""


def _fernet(secret: str) -> Fernet:
    # any high-entropy string is a key: SHA-256 makes it the 32 bytes Fernet wants
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))


def seal(token: str, secret: str | None, what: str = "a per-job Hub token") -> str:
    if not secret:
        raise SecretKeyError(f"{what} needs CKPT_CONVERT_SECRET_KEY (shared by the API and the workers)")
    return _fernet(secret).encrypt(token.encode()).decode()


def unseal(sealed: str, secret: str | None, what: str = "the job's Hub token") -> str:
    try:
        return _fernet(secret or "").decrypt(sealed.encode()).decode()
    except InvalidToken:
        raise SecretKeyError(
            f"cannot unseal {what}: this worker's CKPT_CONVERT_SECRET_KEY differs from the API's"
        ) from None


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def private_dir(path: Path) -> Path:
    """``path`` (and missing parents) as a folder only its owner can enter (0700, also when it existed)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def secret_file(path: Path) -> str:
    """The secret kept in ``path`` (0600), created with a new random one the first time."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        value = path.read_text().strip()
        if value:
            return value
        raise SecretKeyError(f"{path} is empty; remove it to have a new secret generated") from None
    value = new_secret()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value
