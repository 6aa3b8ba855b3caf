"""Completion webhooks: ``notify: {url, secret}`` in ``POST /convert`` asks for a POST to ``url`` when the job ends,
signed as the Standard Webhooks spec says (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``: HMAC-SHA256
with the ``whsec_`` secret), retried with backoff, each attempt recorded on the job.

Destinations are vetted so that the service cannot be used to reach internal hosts: ``http``/``https`` only, no
credentials in the URL, and every address the host resolves to must be public (not private, loopback, link-local,
multicast, reserved or unspecified, IPv4 inside IPv6 included) unless ``CKPT_CONVERT_WEBHOOK_ALLOW`` allows it. The
check runs at submit (refused with :class:`WebhookDestinationError`, 422) and again at each delivery, which then
connects to the address it vetted (DNS is not asked twice) and follows no redirect.

A job's subscribers are in its record (field ``notify``: ``{subscriber: {url, state, attempts, last_status,
last_error, delivered_at}}``, state ``waiting`` -> ``sending`` -> ``delivered`` | ``failed``); their secrets are
sealed (:mod:`jobs.secret`) under ``job:{id}:notify`` and removed once a delivery is settled. Nothing here knows
Celery: the caller says how to send (:func:`on_end`, :func:`sweep`) and schedules the retry :func:`attempt` asks for.

Nothing is lost if a process dies at any line, or Redis or the broker are away at any moment. A ``sending`` entry holds
a claim (a number, the fencing token of the one task allowed to make its next attempt) and a lease (``lease_until``:
when that attempt should have started, plus ``webhook_timeout``, plus ``webhook_lease_margin``), renewed with each
claim, attempt and scheduled retry and indexed in ``webhooks:leases``; a job that ends indexes its ``waiting`` entries
in the same step, due ``webhook_lease_margin`` later. Each worker sweeps that index (:func:`sweep`) every
``webhook_sweep_interval``: an overdue entry is taken over with a new claim (one Lua script; of several sweepers exactly
one wins) and its attempt sent again; a task holding an older claim then does nothing. Delivery is at least once: an
attempt whose worker died after the receiver got it is made again, with the same ``webhook-id`` (``msg_<job
id>_<status>``, the job's final status) and the same body, so that a receiver drops the repeat.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from converter.errors import ConversionError

from .secret import SecretKeyError, seal, unseal
from .settings import Settings, get_settings, parse_webhook_allow
from .store import TERMINAL, JobStore, now
from .view import job_from_record

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SETTLED = frozenset({"delivered", "failed"})
SECRET_PREFIX = "whsec_"
#: IPv6 prefixes that carry an IPv4 address a gateway would connect to (NAT64), checked as that IPv4 address
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_WHAT = "a completion webhook's secret"


class WebhookDestinationError(ConversionError):
    """A notify URL the service will not call: not ``http``/``https``, credentials in it, a host that does not
    resolve, or an address that is not public (private, loopback, link-local, multicast, reserved, unspecified) and
    not allowed by ``CKPT_CONVERT_WEBHOOK_ALLOW``."""


def check_secret(secret: str) -> None:
    """``whsec_`` + base64 of 24 to 64 bytes (the Standard Webhooks secret format), else ``ValueError`` (which never
    quotes the secret)."""
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw, validate=True) if secret.startswith(SECRET_PREFIX) else b""
    except (binascii.Error, ValueError):
        key = b""
    if not 24 <= len(key) <= 64:
        raise ValueError("must be 'whsec_' followed by the base64 of 24 to 64 random bytes")


# --- where a webhook may go ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """A vetted notify URL: where to connect (``address``, ``port``) and what to say there (scheme, host, target)."""

    scheme: str
    host: str  # ASCII (IDNA), lower case, no brackets
    port: int
    target: str  # path and query
    address: IPAddress

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address a webhook may reach (None: it is)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and any(ip in n for n in _NAT64):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and (why := refusal(embedded)):
            return f"{why} (inside {ip})"
    for what in ("unspecified", "loopback", "private", "link_local", "multicast", "reserved"):
        if getattr(ip, f"is_{what}"):
            return f"{ip} is {what.replace('_', '-')}"
    return None if ip.is_global else f"{ip} is not a public address"


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal: itself, without asking DNS)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise WebhookDestinationError(f"webhook host {host!r} does not resolve ({e})") from None
    return list(dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos))


def vet(url: str, allow: str) -> Destination:
    """``url`` as a :class:`Destination` pinned to an address it resolves to, if every such address may be reached,
    else :class:`WebhookDestinationError`. Nothing is connected to; only DNS is asked (not for an IP literal)."""
    if not url or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise WebhookDestinationError("the webhook URL is empty or holds spaces or control characters")
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        raise WebhookDestinationError(f"the webhook URL is malformed ({e})") from None
    if u.scheme not in ("http", "https"):
        raise WebhookDestinationError(f"the webhook URL must be http or https, not {u.scheme or 'none'!r}")
    if "@" in u.netloc:
        raise WebhookDestinationError("no credentials in the webhook URL: the secret signs every delivery")
    if not u.hostname:
        raise WebhookDestinationError("the webhook URL has no host")
    try:
        host = u.hostname.encode("idna").decode("ascii").lower().rstrip(".")
    except UnicodeError:
        raise WebhookDestinationError(f"the webhook host {u.hostname!r} is not a valid name") from None
    port = port or (443 if u.scheme == "https" else 80)
    addresses = resolve(host, port)
    nets, hosts = parse_webhook_allow(allow)
    if host not in hosts:
        for ip in addresses:
            why = refusal(ip)
            if why and not any(ip.version == n.version and ip in n for n in nets):
                raise WebhookDestinationError(
                    f"webhook host {host} resolves to {why}: refused (CKPT_CONVERT_WEBHOOK_ALLOW lists what may be "
                    "reached anyway)"
                )
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    return Destination(u.scheme, host, port, target, addresses[0])


# --- subscribing ------------------------------------------------------------------------------------------------


def subscriber(url: str) -> str:
    """A subscriber's id in its job: the same URL is the same subscriber."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Subscription:
    """A vetted webhook URL and its secret, sealed, ready to add to a job (:meth:`JobStore.subscribe`)."""

    subscriber: str
    sealed: str
    entry: dict[str, Any]


def subscription(url: str, secret: str, settings: Settings) -> Subscription:
    """Check ``url`` (:func:`vet`) and seal ``secret``; the same URL is the same subscriber of a job."""
    vet(url, settings.webhook_allow)
    entry = {"url": url, "state": "waiting", "attempts": 0, "last_status": None, "last_error": None,
             "delivered_at": None, "subscribed_at": now()}  # fmt: skip
    return Subscription(subscriber(url), seal(secret, settings.secret, what=_WHAT), entry)


def settled(rec: dict[str, Any]) -> bool:
    """The job ended and each of its webhooks was delivered or given up: its record never changes again."""
    return rec["status"] in TERMINAL and all(
        e["state"] in SETTLED for e in (rec.get("notify") or {}).values()
    )


# --- delivering -------------------------------------------------------------------------------------------------

#: ``send(job_id, subscriber, claim)``: make (or queue) the attempt of that claim
Send = Callable[[str, str, int], None]


def lease(settings: Settings, delay: float = 0.0) -> float:
    """When a webhook whose next attempt starts in ``delay`` seconds is overdue."""
    return now() + delay + settings.webhook_timeout + settings.webhook_lease_margin


def on_end(store: JobStore, job_id: str, send: Send, settings: Settings | None = None) -> None:
    """Job ``job_id`` ended: each subscriber still ``waiting`` is claimed (once, whoever calls this: the worker that
    ended the job, the API that cancelled it, a redelivery) and handed to ``send(job_id, subscriber, claim)``. If
    that fails (the broker is away), the lease taken with the claim runs out and a worker's :func:`sweep` sends it."""
    settings = settings or get_settings()
    rec = store.get(job_id)
    if rec is None or rec["status"] not in TERMINAL:
        return
    for sub in rec.get("notify") or {}:
        entry = store.delivery(
            job_id, sub, "waiting", state="sending", new_claim=True, lease_until=lease(settings)
        )
        if entry is None:
            continue
        try:
            send(job_id, sub, entry["claim"])
        except Exception as e:  # noqa: BLE001 - the broker (or Redis) is away: the sweep sends it when it is back
            log.warning("job %s: webhook %s not sent (%s); a sweep will", job_id, sub, type(e).__name__)


def sweep(store: JobStore, settings: Settings, send: Send, limit: int = 100) -> int:
    """Take over the webhooks that are overdue (their lease ran out, or they wait on a job that ended
    ``webhook_lease_margin`` ago) and ``send`` each again with its new claim. Returns how many this call took."""
    taken = 0
    for job_id, sub in store.overdue_webhooks(limit):
        claim = store.reclaim(job_id, sub, lease(settings))
        if not claim:
            continue  # another sweeper won, or it was renewed or settled meanwhile
        taken += 1
        log.warning("job %s: webhook %s overdue; sent again (claim %d)", job_id, sub, claim)
        try:
            send(job_id, sub, claim)
        except Exception as e:  # noqa: BLE001 - the broker is away: the lease runs out again, the next sweep sends
            log.warning("job %s: webhook %s not sent (%s)", job_id, sub, type(e).__name__)
    return taken


def message(rec: dict[str, Any], secret: str, at: datetime | None = None) -> tuple[bytes, dict[str, str]]:
    """The body (``{"type": "job.<status>", "timestamp", "data": <the job as GET /jobs/{id} shows it, without its
    webhooks>}``) and the signed headers of job ``rec``'s webhook. ``webhook-id`` is the same on every attempt (a
    receiver drops repeats by it); the body too; ``webhook-timestamp`` is the attempt's."""
    data = job_from_record(rec).model_dump(mode="json", exclude={"notify"})
    payload = {"type": f"job.{rec['status']}", "timestamp": data["finished_at"], "data": data}
    body = json.dumps(payload, separators=(",", ":"))
    msg_id, at = f"msg_{rec['id']}_{rec['status']}", at or datetime.now(UTC)
    headers = {
        "content-type": "application/json",
        "user-agent": "ckpt-convert-webhooks",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": sign(secret, msg_id, int(at.timestamp()), body.encode()),
    }
    return body.encode(), headers


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` of the Standard Webhooks spec: ``v1,`` + base64 of HMAC-SHA256 over
    ``{webhook-id}.{webhook-timestamp}.{body}``, keyed with the base64-decoded part of the ``whsec_`` secret. Written
    from the spec, not with the library the tests verify it with (``standardwebhooks``)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def post(dest: Destination, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST to the vetted address itself (the ``Host`` header and TLS name are the URL's host); no redirect is
    followed, no proxy or netrc from the environment is used, the response body is not read. Returns the status."""
    import httpx

    ip = f"[{dest.address}]" if dest.address.version == 6 else str(dest.address)
    url = f"{dest.scheme}://{ip}:{dest.port}{dest.target}"
    extensions = {"sni_hostname": dest.host} if dest.scheme == "https" else {}
    with (
        httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client,
        client.stream(
            "POST", url, content=body, headers={**headers, "host": dest.host_header}, extensions=extensions
        ) as r,  # fmt: skip
    ):
        return r.status_code


def attempt(
    store: JobStore, job_id: str, sub: str, settings: Settings, claim: int | None = None
) -> float | None:
    """One attempt to deliver job ``job_id``'s webhook to ``sub``, recorded on the job, if ``claim`` is still its
    claim (None: any, a task sent before claims existed). Returns the seconds to wait before the next attempt (the
    lease now covers them: send it with the same claim), or None: delivered, given up (attempts used, or the
    destination now refused), or nothing to do (settled, or taken over by a sweep). Never raises for the receiver's
    failures."""
    rec = store.get(job_id)
    entry = ((rec or {}).get("notify") or {}).get(sub)
    if rec is None or entry is None or entry["state"] != "sending":
        return None
    if claim is not None and entry.get("claim", 0) != claim:
        return None  # a sweep took it over after this task's lease ran out: the newer claim makes the attempt
    mine = {"claim": claim}
    if entry["attempts"] >= settings.webhook_attempts:  # the last one's worker died before recording it
        store.delivery(job_id, sub, "sending", **mine, state="failed",
                       last_error=entry.get("last_error") or "attempts used; the last one did not finish")  # fmt: skip
        return None
    try:
        secret = unseal(store.webhook_secret(job_id, sub) or "", settings.secret, what=_WHAT)
        dest = vet(entry["url"], settings.webhook_allow)  # again: DNS may have changed since the submit
    except (SecretKeyError, WebhookDestinationError) as e:
        log.warning("job %s: webhook %s given up: %s", job_id, sub, e.message)
        store.delivery(job_id, sub, "sending", **mine, attempt=True, state="failed", last_error=e.message)
        return None
    started = store.delivery(job_id, sub, "sending", **mine, attempt=True, lease_until=lease(settings))
    if started is None:
        return None  # settled or taken over meanwhile
    n = started["attempts"]
    body, headers = message(rec, secret)
    status: int | None = None
    try:
        status = post(dest, body, headers, settings.webhook_timeout)
        error = (
            None
            if 200 <= status < 300
            else f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
        )
    except Exception as e:  # noqa: BLE001 - connection refused, timeout, TLS: the receiver's failure, retried
        error = f"{type(e).__name__}: {e}"[:300]
    if error is None:  # whatever the claim: the receiver has it
        store.delivery(job_id, sub, "sending", state="delivered", last_status=status, last_error=None,
                       delivered_at=now())  # fmt: skip
        log.info("job %s: webhook %s delivered (attempt %d, HTTP %s)", job_id, sub, n, status)
        return None
    last = n >= settings.webhook_attempts
    delay = min(settings.webhook_retry_delay * 2 ** (n - 1), settings.webhook_retry_max_delay)
    recorded = store.delivery(job_id, sub, "sending", **mine, state="failed" if last else "sending",
                              last_status=status, last_error=error, lease_until=lease(settings, delay))  # fmt: skip
    log.warning(
        "job %s: webhook %s attempt %d failed: %s%s", job_id, sub, n, error, "; given up" if last else ""
    )
    return None if last or recorded is None else delay
