"""All settings of the API and the workers in one place, from the environment (pydantic-settings).

| variable | meaning |
|---|---|
| ``REDIS_URL`` | broker, result backend and job store; unset = ``ckpt-convert serve`` starts an embedded server |
| ``CKPT_CONVERT_ALLOWED_LOCAL_ROOTS`` | ``:``-separated folders local sources/destinations may be under; empty = none |
| ``CKPT_CONVERT_DATA_DIR`` | where the embedded server keeps its data (default: the user data folder) |
| ``CKPT_CONVERT_SECRET_KEY`` | seals per-job Hub tokens in task messages; the API and every worker need the same one |
| ``CKPT_CONVERT_MAX_ATTEMPTS`` | how many times a job may be started (a killed worker means a redelivery) |
| ``CKPT_CONVERT_VISIBILITY_TIMEOUT`` | seconds after its worker's last sign of life that a task is delivered again |
| ``CKPT_CONVERT_LOCK_TTL`` | a running job's heartbeat (its lock) expires this long after its worker's last beat |
| ``CKPT_CONVERT_MAX_BYTES_PER_SECOND`` | cap on each job's write rate (0 = none) |
| ``CKPT_CONVERT_PROGRESS_INTERVAL`` | seconds between progress reports of a running job |
| ``CKPT_CONVERT_MAX_OUTPUT_BYTES`` | refuse a job whose output would be larger (0 = no cap) |
| ``CKPT_CONVERT_IDEMPOTENCY_TTL`` | seconds the same request returns the same job (default 24 h) |
| ``CKPT_CONVERT_JOB_RETENTION`` | seconds a finished job's record is kept (default 30 days) |
| ``CKPT_CONVERT_DEVICE`` | where workers run arithmetic ops: ``auto`` (a GPU when torch sees one), ``cpu``, ``cuda`` |
| ``CKPT_CONVERT_API_TOKENS`` | API tokens, comma-separated: ``name:scope:token`` (scope ``read``, ``submit`` or ``admin``), or a
  plain token (admin); empty = no auth |
| ``CKPT_CONVERT_MAX_STREAMS`` | event streams one API process serves at most (503 beyond; ``/readyz`` is not ok near it) |
| ``CKPT_CONVERT_MAX_STREAMS_PER_CLIENT`` | event streams per client (API token name, or address without auth) per
  API process (429 beyond) |
| ``CKPT_CONVERT_BIND`` | the address the API is published on (docker-compose.yml); the API refuses to start on a
  non-loopback address without API tokens |
| ``CKPT_CONVERT_WEBHOOK_ALLOW`` | networks (CIDR) and host names completion webhooks may reach although they are not
  public addresses, comma-separated (default: none, only public addresses) |
| ``CKPT_CONVERT_WEBHOOK_ATTEMPTS`` | attempts to deliver a completion webhook (default 6) |
| ``CKPT_CONVERT_WEBHOOK_RETRY_DELAY`` / ``_MAX_DELAY`` | seconds before its 2nd attempt (default 20), doubling each
  time up to the maximum (default 320): 6 attempts span about 10 minutes |
| ``CKPT_CONVERT_WEBHOOK_TIMEOUT`` | seconds to connect, send and read the status of one attempt (default 10) |
| ``CKPT_CONVERT_CORS_ORIGINS`` | web origins (``https://dash.example.com``, comma-separated, exact) whose pages may call
  the API from the browser; empty = none (no CORS headers at all) |
| ``CKPT_CONVERT_WEBHOOK_LEASE_MARGIN`` | seconds a webhook being sent may be late (its next attempt not started, or
  not finished within the timeout) before a worker's sweep sends it again (default 30) |
| ``CKPT_CONVERT_WEBHOOK_SWEEP_INTERVAL`` | seconds between each worker's sweeps for overdue webhooks (default 10) |
| ``HF_TOKEN`` / ``HF_ENDPOINT`` | the workers' Hub token and endpoint |
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Scope = Literal["read", "submit", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "submit", "admin")
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
#: a web origin as browsers send it: scheme, host, optional port; no path, no trailing slash, no wildcard
_ORIGIN = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$", re.IGNORECASE)


def parse_cors_origins(value: str) -> list[str]:
    """``"https://dash.example.com, http://localhost:3000"`` -> the two origins. Raises ``ValueError`` for anything
    that is not an exact origin (``*``, a path, a trailing slash): a page of any origin must never be allowed."""
    out = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        if not _ORIGIN.match(entry):
            raise ValueError(
                f"CKPT_CONVERT_CORS_ORIGINS: {entry[:100]!r} is not an origin like https://dash.example.com "
                "(scheme://host[:port], no path, no wildcard)"
            )
        out.append(entry.lower())  # browsers send scheme and host in lower case
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class ApiToken:
    """One entry of ``CKPT_CONVERT_API_TOKENS``. ``name`` is what job records keep as their owner (never the
    token); ``read`` may look, ``submit`` may also submit and sees and cancels only its own jobs, ``admin`` all."""

    name: str
    scope: Scope
    token: str

    def __repr__(self) -> str:  # the secret stays out of logs and tracebacks
        return f"ApiToken(name={self.name!r}, scope={self.scope!r})"


def parse_api_tokens(value: str) -> list[ApiToken]:
    """``"ci:submit:s3cret,ops:admin:t0ken"`` -> two tokens; a plain entry (no ``:``) is an admin token named
    ``token-`` + the first 8 hex digits of its SHA-256 (the old form). Raises ``ValueError`` on a malformed entry."""
    out: list[ApiToken] = []
    for i, entry in enumerate((e.strip() for e in value.split(",")), 1):
        if not entry:
            continue
        if ":" not in entry:
            name = "token-" + hashlib.sha256(entry.encode()).hexdigest()[:8]
            out.append(ApiToken(name, "admin", entry))
            continue
        parts = entry.split(":", 2)
        if len(parts) != 3 or not parts[2]:
            raise ValueError(f"API token entry {i}: expected name:scope:token")  # (never the entry: a secret)
        name, scope, token = parts
        if not _TOKEN_NAME.match(name):
            raise ValueError(f"API token entry {i}: the name must be 1-64 characters of A-Z a-z 0-9 _ . @ -")
        if scope not in SCOPES:
            raise ValueError(f"API token entry {i}: the scope must be one of {', '.join(SCOPES)}")
        out.append(ApiToken(name, scope, token))
    tokens = [t.token for t in out]
    if len(set(tokens)) != len(tokens):
        raise ValueError("the same API token is listed twice")
    return out


@lru_cache
def parse_webhook_allow(
    value: str,
) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], frozenset[str]]:
    """``CKPT_CONVERT_WEBHOOK_ALLOW`` -> (networks, host names): ``"10.1.0.0/16,hooks.internal"``. Raises
    ``ValueError`` on an entry that is neither."""
    nets, hosts = [], set()
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            name = entry.lower().rstrip(".")
            if not name or not all(c.isalnum() or c in "-." for c in name):
                raise ValueError(
                    f"webhook allow entry {entry!r} is neither a network nor a host name"
                ) from None
            hosts.add(name)
    return tuple(nets), frozenset(hosts)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "ckpt-convert"


class Settings(BaseSettings):
    # hide_input_in_errors: a malformed CKPT_CONVERT_API_TOKENS must not print the tokens in the error
    model_config = SettingsConfigDict(env_prefix="CKPT_CONVERT_", extra="ignore", hide_input_in_errors=True)

    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "CKPT_CONVERT_REDIS_URL")
    )
    allowed_local_roots: str = ""
    data_dir: Path = Field(default_factory=default_data_dir)
    #: seals per-job Hub tokens in task messages (any long random string; ``serve`` generates one in the data dir)
    secret_key: SecretStr | None = None
    max_attempts: int = 3
    #: Redis delivers a task again when it has not been acknowledged and its worker has not vouched for it for this
    #: many seconds. Every live worker vouches for the tasks it holds every quarter of this (at most every 5 s), so
    #: a task of any length runs once, and the task of a worker that died is delivered again within about this
    #: long plus 5 s. Keep it above ``lock_ttl``, so that the redelivered task finds the dead run's lock expired.
    visibility_timeout: int = 30
    #: a job with at least this many output shards is spread over subtasks (0: always one task)
    fanout_min_shards: int = 2
    #: output shards per subtask
    shards_per_task: int = 1
    #: a running job's lock is its heartbeat: refreshed every quarter of this, it expires this long after its worker
    #: died (seconds); a cancel of a running job without one ends it at once (no worker will see the flag)
    lock_ttl: int = 20
    #: how often running jobs report progress (seconds)
    progress_interval: float = 0.25
    #: bearer tokens accepted by the API: comma-separated ``name:scope:token`` (or plain tokens: admin); empty = no auth
    api_tokens: str = ""
    #: event streams (GET /jobs/{id}/events) one API process serves at once; beyond: 503, and /readyz is not ok
    #: from 90 % of it
    max_streams: int = Field(default=5000, ge=1)
    #: event streams one client (API token name; client address without auth) may hold per API process (429 beyond)
    max_streams_per_client: int = Field(default=200, ge=1)
    #: the address the API is published on (docker-compose.yml's port binding); not loopback needs API tokens
    bind: str = "127.0.0.1"
    #: origins of web pages that may call the API from a browser (CORS), comma-separated, exact; empty = none
    cors_origins: str = ""
    hf_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("HF_ENDPOINT", "CKPT_CONVERT_HF_ENDPOINT")
    )
    #: cap on each job's write rate in bytes/s (0 = none), so a shared disk or network stays usable
    max_bytes_per_second: float = 0
    #: largest accepted request body (bytes)
    max_body_bytes: int = 1_000_000
    #: where arithmetic ops (cast, transpose, dequantize) run: auto = a GPU when torch sees one
    device: str = "auto"
    #: refuse a job whose output would be larger than this many bytes (0 = no cap), before writing
    max_output_bytes: int = 0
    #: how long the same request returns the same job (and an Idempotency-Key stays taken), seconds
    idempotency_ttl: int = 24 * 3600
    #: how long a finished job's record is kept, seconds
    job_retention: int = 30 * 24 * 3600
    #: networks (CIDR) and host names completion webhooks may reach although not public, comma-separated
    webhook_allow: str = ""
    #: attempts to deliver a completion webhook; the delay before the next doubles from ``webhook_retry_delay`` up to
    #: ``webhook_retry_max_delay`` (20, 40, ... 320 s: 6 attempts span about 10 minutes)
    webhook_attempts: int = Field(default=6, ge=1, le=100)
    webhook_retry_delay: float = Field(default=20.0, ge=0)
    webhook_retry_max_delay: float = Field(default=320.0, ge=0)
    #: seconds to connect, send and read the status of one attempt
    webhook_timeout: float = Field(default=10.0, gt=0)
    #: a webhook being sent holds a lease: until its next attempt should have started, plus ``webhook_timeout``, plus
    #: this margin (seconds). A lease that runs out (its worker died, Redis or the broker were away) is taken over by
    #: a worker's sweep, which sends the attempt again; a webhook still waiting this long after its job ended too
    webhook_lease_margin: float = Field(default=30.0, gt=0)
    #: how often each worker sweeps for overdue webhooks (seconds)
    webhook_sweep_interval: float = Field(default=10.0, gt=0)

    @field_validator("allowed_local_roots")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()

    @field_validator("webhook_allow")
    @classmethod
    def _webhook_allow(cls, v: str) -> str:
        parse_webhook_allow(v)  # a malformed entry stops the API and the workers at start
        return v

    @field_validator("api_tokens")
    @classmethod
    def _tokens(cls, v: str) -> str:
        parse_api_tokens(v)  # a malformed entry stops the API at start, not at the first request
        return v

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: str) -> str:
        parse_cors_origins(v)  # a malformed origin stops the API at start
        return v

    @property
    def cors_origin_list(self) -> list[str]:
        return parse_cors_origins(self.cors_origins)

    @property
    def local_roots(self) -> list[Path]:
        """The allowed roots as configured (absolute, ``..`` folded; a root that is itself a link is trusted: local
        paths must be given under the root as written here)."""
        return [
            Path(os.path.normpath(os.path.abspath(p)))
            for p in self.allowed_local_roots.split(":")
            if p.strip()
        ]

    @property
    def token_list(self) -> list[str]:
        return [t.token for t in self.api_token_entries]

    @cached_property
    def api_token_entries(self) -> list[ApiToken]:
        return parse_api_tokens(self.api_tokens)

    def check_bind(self) -> None:
        """Refuse to serve the API on a non-loopback address without API tokens (``RuntimeError``)."""
        try:
            loopback = ipaddress.ip_address(self.bind.strip("[]")).is_loopback
        except ValueError:
            loopback = self.bind == "localhost"
        if not loopback and not self.api_tokens.strip():
            raise RuntimeError(
                f"CKPT_CONVERT_BIND={self.bind} publishes the API beyond this host, and CKPT_CONVERT_API_TOKENS is "
                "empty: anyone could submit and cancel jobs. Set API tokens, or bind 127.0.0.1."
            )

    @property
    def secret(self) -> str | None:
        return self.secret_key.get_secret_value() if self.secret_key else None

    @property
    def redis(self) -> str:
        """The one policy for a missing ``REDIS_URL``: only ``ckpt-convert serve`` starts without it (it starts an
        embedded server and sets it for the processes it runs); everything else refuses to guess."""
        if not self.redis_url:
            raise RuntimeError("REDIS_URL is not set; start the service with `ckpt-convert serve`")
        return self.redis_url


@lru_cache
def get_settings() -> Settings:
    return Settings()
