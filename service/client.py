"""``ckpt-convert submit``: post a job from CI and (``--wait``) follow it to the end, in one line.

The exit code says how it ended (``service.exit_codes``: succeeded, failed, refused, unreachable, cancelled,
unauthorized, timed out, left running). ``--json`` puts the job's last record on stdout and nothing else;
people's messages go to stderr, unwrapped. Ctrl-C or SIGTERM while waiting, or ``--timeout`` expiring, cancels
the job and waits (at most ``CANCEL_WAIT_SECONDS``) until the service confirms it, or with ``--detach`` leaves it
running and says where it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape

from converter.cli import progress_bar

from .exit_codes import Exit

# soft_wrap: CI logs are not terminals; a URL or an error must stay whole on one line, whatever the width.
err = Console(stderr=True, soft_wrap=True, highlight=False)
DEFAULT_SERVER = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")
#: how long a cancel (after Ctrl-C, SIGTERM or --timeout) may take to be confirmed before submit gives up waiting
CANCEL_WAIT_SECONDS = 30.0
#: the API's error types of a missing or wrong API token (``service.deps.require_token``); any other 403 (a path
#: outside the allowed roots, a gated Hub repo) is a refused request
AUTH_ERRORS = frozenset({"Unauthorized", "Forbidden"})
RETRY_DELAYS = (1.0, 2.0)  # between attempts of a request that could not reach the server or got a 5xx
STREAM_FAILURES = 30  # consecutive failures of the event stream (1 s apart) before the server counts as gone


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
    overwrite: bool = False,
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
    if overwrite:
        body["overwrite"] = True
    return body


# --- talking to the API ----------------------------------------------------------------------------------------


class ClientError(Exception):
    """The API refused a request, or could not be reached: ``code`` is what submit exits with."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _error_detail(r: httpx.Response) -> Any:
    try:
        return r.json().get("detail")
    except (ValueError, AttributeError):
        return None


def _describe_error(r: httpx.Response) -> str:
    d = _error_detail(r)
    if isinstance(d, dict):
        s = f"{d.get('type', 'Error')}: {d.get('message', '')}"
        if d.get("suggestions"):
            s += f" (close: {', '.join(d['suggestions'])})"
        return s
    if isinstance(d, list):  # pydantic validation errors
        return "invalid request: " + "; ".join(
            f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in d
        )
    return f"HTTP {r.status_code}: {d if d is not None else r.text[:300]}"


def response_error(r: httpx.Response) -> ClientError:
    """The exit code of an error answer: the API token (401, or 403 of type Forbidden) is ``unauthorized``,
    5xx ``unreachable``, every other refusal ``refused``."""
    d = _error_detail(r)
    kind = d.get("type") if isinstance(d, dict) else None
    if r.status_code == 401 or (r.status_code == 403 and kind in AUTH_ERRORS):
        code = Exit.UNAUTHORIZED
    elif r.status_code >= 500:
        code = Exit.UNREACHABLE
    else:
        code = Exit.REFUSED
    return ClientError(code, f"HTTP {r.status_code} {_describe_error(r)}")


class Api:
    """The job endpoints of one server, with retries where a retry is safe (``POST /convert`` is idempotent on
    the normalised request, and on ``Idempotency-Key``)."""

    def __init__(self, server: str, headers: dict[str, str]) -> None:
        self.server = server.rstrip("/")
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=httpx.Timeout(30, connect=10))

    def close(self) -> None:
        self.http.close()

    def page(self, job_id: str) -> str:
        return f"{self.server}/ui/jobs/{job_id}"

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        delays = list(RETRY_DELAYS)
        while True:
            try:
                r = self.http.request(method, path, **kw)
            except httpx.TransportError as e:
                if not delays:
                    raise ClientError(Exit.UNREACHABLE, f"cannot reach {self.server}: {e}") from None
            else:
                if r.status_code < 500 or not delays:
                    return r
            time.sleep(delays.pop(0))

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        r = self._request("POST", "/convert", json=body)
        if r.status_code not in (200, 202):
            raise response_error(r)
        return r.json()

    def job(self, job_id: str) -> dict[str, Any]:
        r = self._request("GET", f"/jobs/{job_id}")
        if r.status_code != 200:
            raise response_error(r)
        return r.json()

    def cancel(self, job_id: str) -> None:
        """Ask for a cancel; a job that already finished (409) is fine: its record says how it ended."""
        r = self._request("DELETE", f"/jobs/{job_id}")
        if r.status_code not in (202, 409):
            raise response_error(r)

    @contextlib.contextmanager
    def events(self, job_id: str, last_id: str | None) -> Iterator[Iterator[tuple[str | None, str, Any]]]:
        """The job's Server-Sent Events from ``last_id`` on, as ``(id, event, data)``."""
        headers = {"Last-Event-ID": last_id} if last_id else {}
        with self.http.stream("GET", f"/jobs/{job_id}/events", headers=headers) as r:
            if r.status_code in (429, 503):  # too many streams open: poll instead, as the server asks
                r.read()
                raise StreamBusy(_retry_after(r))
            if r.status_code != 200:
                r.read()
                raise response_error(r)
            yield _parse_events(r.iter_lines())


class StreamBusy(Exception):
    """The server has no room for another event stream now; ``retry_after`` seconds until it may."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"event stream refused; retry after {retry_after:g} s")
        self.retry_after = retry_after


def _retry_after(r: httpx.Response) -> float:
    try:
        return min(30.0, max(1.0, float(r.headers.get("Retry-After", "2"))))
    except ValueError:
        return 2.0


def _parse_events(lines: Iterator[str]) -> Iterator[tuple[str | None, str, Any]]:
    event_id, event = None, None
    for line in lines:
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event:
            yield event_id, event, json.loads(line[6:])
            event = None
        elif line.startswith(":"):
            yield None, "keep-alive", None


# --- stopping: a signal or the deadline ------------------------------------------------------------------------


class Stopped(BaseException):
    """Waiting stopped: a signal, or --timeout. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way (httpx's included) swallows it."""

    def __init__(self, why: str, *, timed_out: bool = False) -> None:
        super().__init__(why)
        self.why, self.timed_out = why, timed_out


class StopSignals:
    """While active, SIGINT and SIGTERM do not kill submit; they are recorded, and inside ``interrupting()`` the
    first one is raised as :class:`Stopped` to break out of a blocking read. Submit then cancels the job (or
    detaches) itself, so a signal never leaves a job publishing behind an exit that says it did not."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: list[int] = []
        self._raise = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self._raise:
            self._raise = False
            raise Stopped(self.why())

    def why(self) -> str:
        return f"{signal.Signals(self.received[0]).name} received" if self.received else ""

    @contextlib.contextmanager
    def interrupting(self) -> Iterator[None]:
        if self.received:
            raise Stopped(self.why())
        self._raise = True
        try:
            yield
        finally:
            self._raise = False


class Deadline:
    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.at = None if seconds is None else time.monotonic() + seconds

    def check(self) -> None:
        if self.at is not None and time.monotonic() >= self.at:
            raise Stopped(f"timed out after {self.seconds:g} s", timed_out=True)

    def sleep(self, seconds: float) -> None:
        if self.at is not None:
            seconds = max(0.0, min(seconds, self.at - time.monotonic()))
        time.sleep(seconds)
        self.check()


# --- following a job -------------------------------------------------------------------------------------------


def follow(api: Api, job: dict[str, Any], deadline: Deadline, *, quiet: bool = False) -> dict[str, Any]:
    """Show progress from the job's event stream until it ends and return its final record (reconnecting, then
    polling, if the stream drops). Raises :class:`Stopped` at the deadline (checked at every event: running
    jobs report progress several times a second, a queued one gets a keep-alive every 5 s)."""
    job_id = job["id"]
    last_id: str | None = None
    failures = 0
    bar = progress_bar(quiet, err)
    with bar:
        task = bar.add_task(job["status"], total=None)
        while True:
            deadline.check()
            try:
                with api.events(job_id, last_id) as events:
                    for event_id, event, data in events:
                        last_id, failures = event_id or last_id, 0
                        if event == "progress":
                            total, done = data.get("bytes_total") or None, data.get("bytes_done", 0)
                            bar.update(task, description=data.get("phase", ""), total=total, completed=done)
                        elif event == "status":
                            bar.update(task, description=data.get("status", ""))
                        elif event == "end":
                            return api.job(job_id)
                        deadline.check()
            except StreamBusy as e:  # poll the job meanwhile (the server asked us to wait for a stream)
                deadline.sleep(e.retry_after)
            except httpx.TransportError as e:
                failures += 1
                if failures > STREAM_FAILURES:
                    raise ClientError(Exit.UNREACHABLE, f"lost {api.server}: {e}") from None
                deadline.sleep(1)
            j = api.job(job_id)
            if j["status"] in TERMINAL:
                return j


def await_cancel(api: Api, job: dict[str, Any], stop: StopSignals) -> dict[str, Any]:
    """The job's record once it is finished, or after ``CANCEL_WAIT_SECONDS``, or at a second signal."""
    signals, until = len(stop.received), time.monotonic() + CANCEL_WAIT_SECONDS
    while job["status"] not in TERMINAL and time.monotonic() < until:
        if len(stop.received) > signals:  # asked again: stop waiting
            break
        time.sleep(0.2)
        with contextlib.suppress(ClientError):
            job = api.job(job["id"])
    return job


# --- what submit prints and exits with -------------------------------------------------------------------------


@dataclass
class Outcome:
    """How submit ends: the exit code, and the job's last known record (printed with --json)."""

    code: Exit
    job: dict[str, Any] | None


def say(message: str) -> None:
    err.print(message)


def finished(job: dict[str, Any]) -> Outcome:
    """A finished job: report it and map its status to the exit code."""
    if job["status"] == "succeeded":
        res = job.get("result") or {}
        what = (
            "nothing to convert (already in the target layout)" if res.get("noop") else res.get("output", "")
        )
        say(f"[green]succeeded[/] {escape(str(what))}")
        return Outcome(Exit.SUCCEEDED, job)
    error = job.get("error") or {}
    say(
        f"[red]{job['status']}[/] {escape(str(error.get('type', '')))}: {escape(str(error.get('message', '')))}"
    )
    return Outcome(Exit.CANCELLED if job["status"] == "cancelled" else Exit.FAILED, job)


def stop_job(api: Api, job: dict[str, Any], stop: StopSignals, why: Stopped, *, detach: bool) -> Outcome:
    """Waiting was stopped (a signal, or --timeout): cancel the job and wait until that is confirmed, or with
    ``detach`` leave it running. The message and the exit code say which happened."""
    job_id, page = job["id"], api.page(job["id"])
    gave_up = Exit.TIMED_OUT if why.timed_out else Exit.LEFT_RUNNING
    if detach:
        with contextlib.suppress(ClientError):
            job = api.job(job_id)
        say(f"[yellow]{why.why}[/]: left job {job_id} running ({job['status']}): {page}")
        return Outcome(gave_up, job)
    try:
        api.cancel(job_id)
    except ClientError as e:
        say(
            f"[red]{why.why}[/]: could not cancel job {job_id} ({escape(e.message)}); it may still publish: {page}"
        )
        return Outcome(gave_up, job)
    job = await_cancel(api, job, stop)
    if job["status"] == "cancelled":
        say(f"[yellow]{why.why}[/]: cancelled job {job_id}; nothing was published")
        return Outcome(Exit.TIMED_OUT if why.timed_out else Exit.CANCELLED, job)
    if job["status"] in TERMINAL:
        say(f"[yellow]{why.why}[/]: job {job_id} had already {job['status']} before the cancel took effect")
        return finished(job)
    say(f"[red]{why.why}[/]: cancel of job {job_id} requested but it is still {job['status']}; it may still "
        f"publish: {page}")  # fmt: skip
    return Outcome(gave_up, job)


def run_submit(
    api: Api,
    body: dict[str, Any],
    stop: StopSignals,
    *,
    wait: bool,
    timeout: float | None,
    detach: bool,
    quiet: bool,
    print_id: bool,
) -> Outcome:
    try:
        job = api.submit(body)  # a signal meanwhile is only recorded: the job is stopped once its id is known
    except ClientError as e:
        say(f"[red]{'error' if e.code == Exit.UNREACHABLE else 'refused'}[/] {escape(e.message)}")
        return Outcome(e.code, None)
    if print_id:
        print(job["id"], flush=True)
    say(f"job {job['id']} {job['status']}: {api.page(job['id'])} (API: {api.server}/jobs/{job['id']})")
    deadline = Deadline(timeout)
    try:
        if not wait:
            if stop.received:
                raise Stopped(stop.why())
            return Outcome(Exit.SUCCEEDED, job)
        with stop.interrupting():
            job = follow(api, job, deadline, quiet=quiet)
    except Stopped as why:
        return stop_job(api, job, stop, why, detach=detach)
    except ClientError as e:
        say(f"[red]error[/] {escape(e.message)}")
        return Outcome(e.code, job)
    return finished(job)


def submit(
    body: dict[str, Any],
    *,
    server: str,
    token: str | None,
    hf_token: str | None = None,
    idempotency_key: str | None = None,
    wait: bool = False,
    timeout: float | None = None,
    detach: bool = False,
    quiet: bool = False,
    as_json: bool = False,
) -> int:
    """Submit ``body`` (see :func:`build_request`) and return the exit code (:class:`~service.exit_codes.Exit`).
    With ``as_json`` the job's last record is printed on stdout, otherwise its id."""
    api = Api(server, _headers(token, hf_token, idempotency_key))
    try:
        with StopSignals() as stop:
            outcome = run_submit(api, body, stop, wait=wait, timeout=timeout, detach=detach, quiet=quiet,
                                 print_id=not as_json)  # fmt: skip
    finally:
        api.close()
    if as_json and outcome.job is not None:
        print(json.dumps(outcome.job, indent=2), flush=True)
    return int(outcome.code)


def main_submit(a: Any) -> int:
    try:
        body = build_request(
            a.source, a.to, revision=a.revision, model_type=a.model_type, reverse=a.reverse, dtype=a.dtype,
            dequantize=a.dequantize, max_shard_size=a.max_shard_size, pr=a.pr, private=a.private,
            overwrite=a.overwrite,
        )  # fmt: skip
    except ValueError as e:
        say(f"[red]error[/]: {escape(str(e))}")
        return int(Exit.REFUSED)
    server = a.server or os.environ.get("CKPT_CONVERT_SERVER") or DEFAULT_SERVER
    token = os.environ.get("CKPT_CONVERT_TOKEN")
    hf_token = a.hf_token or os.environ.get("CKPT_CONVERT_HF_TOKEN")
    return submit(body, server=server, token=token, hf_token=hf_token, idempotency_key=a.idempotency_key,
                  wait=a.wait, timeout=a.timeout, detach=a.detach, quiet=a.quiet, as_json=a.json)  # fmt: skip
