"""What ``ckpt-convert submit`` exits with, and the environment it reads: one table that the client, its
``--help``, the README and the tests all use.

Kept apart from ``service.client`` so that building the command-line parser does not import httpx.
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    SUCCEEDED = 0
    FAILED = 1
    REFUSED = 2
    UNREACHABLE = 3
    CANCELLED = 4
    UNAUTHORIZED = 5
    TIMED_OUT = 6
    LEFT_RUNNING = 7

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


EXIT_CODES: dict[Exit, str] = {
    Exit.SUCCEEDED: "the job succeeded (without --wait: it was accepted)",
    Exit.FAILED: "the job failed; its error is printed (and is in the --json record)",
    Exit.REFUSED: "bad arguments, or the request was refused as invalid (HTTP 400, 404, 409, 413, 422; "
    "403 for a path outside the allowed roots or a gated repo)",
    Exit.UNREACHABLE: "the server could not be reached, or answered 5xx, after retries",
    Exit.CANCELLED: "the job was cancelled (by Ctrl-C or SIGTERM while waiting, once the service confirmed it; "
    "or by someone else)",
    Exit.UNAUTHORIZED: "the API refused the token: missing (401) or wrong (403); see CKPT_CONVERT_TOKEN",
    Exit.TIMED_OUT: "--timeout expired; the job was then cancelled, or left running with --detach "
    "(the message says which)",
    Exit.LEFT_RUNNING: "Ctrl-C or SIGTERM with --detach: the job was left running; also a cancel that was not "
    "confirmed in time",
}

#: Every environment variable ``submit`` reads (a flag, where there is one, wins).
ENVIRONMENT: dict[str, str] = {
    "CKPT_CONVERT_SERVER": "the API's URL (--server; default http://127.0.0.1:8000)",
    "CKPT_CONVERT_TOKEN": "bearer token for the API, when the service sets CKPT_CONVERT_API_TOKENS "
    "(no flag: a token on the command line ends up in logs)",
    "CKPT_CONVERT_HF_TOKEN": "Hub token for this job only, sent as X-HF-Token and never stored (--hf-token)",
    "HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY": "proxies (read by httpx)",
    "SSL_CERT_FILE, SSL_CERT_DIR": "CA certificates for an https:// server (read by httpx)",
    "NO_COLOR, FORCE_COLOR": "colour on stderr (read by rich)",
}


def help_epilog() -> str:
    """The end of ``submit --help``: the environment and the exit codes."""
    width = len("CKPT_CONVERT_HF_TOKEN")  # longer names get a line of their own
    env = "\n".join(
        f"  {k.ljust(width)}  {v}" if len(k) <= width else f"  {k}\n  {'':{width}}  {v}"
        for k, v in ENVIRONMENT.items()
    )
    codes = "\n".join(f"  {int(c)}  {c.label}: {what}" for c, what in EXIT_CODES.items())
    return f"environment:\n{env}\n\nexit codes:\n{codes}"


def markdown_table() -> str:
    """The exit codes as the README's table."""
    rows = "\n".join(f"| {int(c)} | {c.label} | {what} |" for c, what in EXIT_CODES.items())
    return f"| code | meaning | when |\n|---|---|---|\n{rows}"
