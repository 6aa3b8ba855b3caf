"""``ckpt-convert submit``: post a job from CI and (``--wait``) follow it to the end, in one line.

Exit codes: 0 succeeded, 1 the job failed / was cancelled / was refused (the message says why), 2 bad arguments,
3 the server could not be reached.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

err = Console(stderr=True)
DEFAULT_SERVER = "http://127.0.0.1:8000"


def _headers(token: str | None, hf_token: str | None, idempotency_key: str | None) -> dict[str, str]:
    h = {"Accept": "application/json"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    if hf_token:
        h["X-HF-Token"] = hf_token
    if idempotency_key:
        h["Idempotency-Key"] = idempotency_key
    return h


def build_request(
    source: str,
    to: str | None,
    *,
    revision: str,
    model_type: str | None,
    reverse: bool,
    dtype: str | None,
    dequantize: bool,
    max_shard_size: str,
    pr: bool,
    private: bool,
) -> dict[str, Any]:
    if to is None:
        if not pr or source.startswith("/"):
            raise ValueError(
                "--to is required (a folder, or hf://org/name; or --pr for a pull request on the source)"
            )
        dest: dict[str, Any] = {"repo_id": source.removeprefix("hf://"), "create_pr": True}
    elif to.startswith("hf://") or (not to.startswith("/") and to.count("/") == 1):
        dest = {"repo_id": to.removeprefix("hf://"), "create_pr": pr, "private": private}
    else:
        dest = {"local_path": os.path.abspath(to)}
    if source.startswith(("./", "../")) or source == ".":
        source = os.path.abspath(source)
    body: dict[str, Any] = {
        "source": source,
        "revision": revision,
        "direction": "reverse" if reverse else "forward",
        "max_shard_size": max_shard_size,
        "dequantize": dequantize,
        "destination": dest,
    }
    if model_type:
        body["model_type"] = model_type
    if dtype:
        body["dtype"] = dtype
    return body


def _describe_error(r: httpx.Response) -> str:
    try:
        d = r.json().get("detail")
    except (ValueError, AttributeError):
        return f"HTTP {r.status_code}: {r.text[:300]}"
    if isinstance(d, dict):
        s = f"{d.get('type', 'Error')}: {d.get('message', '')}"
        if d.get("suggestions"):
            s += f" (close: {', '.join(d['suggestions'])})"
        return s
    if isinstance(d, list):  # pydantic validation errors
        return "invalid request: " + "; ".join(
            f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in d
        )
    return f"HTTP {r.status_code}: {d}"


def submit(
    body: dict[str, Any],
    *,
    server: str,
    token: str | None,
    hf_token: str | None = None,
    idempotency_key: str | None = None,
    wait: bool = False,
    quiet: bool = False,
) -> int:
    server = server.rstrip("/")
    try:
        with httpx.Client(
            base_url=server, headers=_headers(token, hf_token, idempotency_key), timeout=60
        ) as c:
            r = c.post("/convert", json=body)
            if r.status_code not in (200, 202):
                err.print(f"[red]refused[/] {_describe_error(r)}", highlight=False)
                return 1
            job = r.json()
            print(job["id"])
            err.print(
                f"job {job['id']} {job['status']}: {server}/ui/jobs/{job['id']} (API: /jobs/{job['id']})",
                highlight=False,
            )
            if not wait:
                return 0
            job = follow(c, job, quiet=quiet)
    except httpx.TransportError as e:
        err.print(f"[red]error[/]: cannot reach {server}: {e}", highlight=False)
        return 3
    if job["status"] == "succeeded":
        res = job.get("result") or {}
        what = (
            "nothing to convert (already in the target layout)" if res.get("noop") else res.get("output", "")
        )
        err.print(f"[green]succeeded[/] {what}", highlight=False)
        return 0
    error = job.get("error") or {}
    err.print(f"[red]{job['status']}[/] {error.get('type', '')}: {error.get('message', '')}", highlight=False)
    return 1


def follow(c: httpx.Client, job: dict[str, Any], *, quiet: bool = False) -> dict[str, Any]:
    """Show progress from the job's event stream until it ends (reconnecting, then polling, if the stream drops)."""
    job_id = job["id"]
    last_id: str | None = None
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=err, disable=quiet or not err.is_terminal,
    )  # fmt: skip
    with bar:
        task = bar.add_task(job["status"], total=None)
        deadline_errors = 0
        while True:
            try:
                headers = {"Last-Event-ID": last_id} if last_id else {}
                with c.stream(
                    "GET", f"/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(60, read=30)
                ) as s:
                    event = None
                    for line in s.iter_lines():
                        if line.startswith("id: "):
                            last_id = line[4:]
                        elif line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: ") and event:
                            data = json.loads(line[6:])
                            if event == "progress":
                                bar.update(
                                    task,
                                    description=data.get("phase", ""),
                                    total=data.get("bytes_total") or None,
                                    completed=data.get("bytes_done", 0),
                                )
                            elif event == "status":
                                bar.update(task, description=data.get("status", ""))
                            elif event == "end":
                                return c.get(f"/jobs/{job_id}").json()
            except (httpx.TransportError, httpx.HTTPStatusError):
                deadline_errors += 1
                if deadline_errors > 30:
                    raise
                time.sleep(1)
            j = c.get(f"/jobs/{job_id}").json()
            if j["status"] in ("succeeded", "failed", "cancelled"):
                return j


def main_submit(a: Any) -> int:
    try:
        body = build_request(
            a.source, a.to, revision=a.revision, model_type=a.model_type, reverse=a.reverse, dtype=a.dtype,
            dequantize=a.dequantize, max_shard_size=a.max_shard_size, pr=a.pr, private=a.private,
        )  # fmt: skip
    except ValueError as e:
        err.print(f"[red]error[/]: {e}", highlight=False)
        return 2
    server = a.server or os.environ.get("CKPT_CONVERT_SERVER") or DEFAULT_SERVER
    token = os.environ.get("CKPT_CONVERT_TOKEN")
    hf_token = a.hf_token or os.environ.get("CKPT_CONVERT_HF_TOKEN")
    return submit(body, server=server, token=token, hf_token=hf_token, idempotency_key=a.idempotency_key,
                  wait=a.wait, quiet=a.quiet)  # fmt: skip
