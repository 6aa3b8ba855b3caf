"""The job store: one Redis hash per job, sorted sets for listing, a stream of events per job.

Used by the API (create, list, cancel) and by the workers (status, progress, result). Every status change goes
through one Lua script, so a cancel and a finish cannot both win, and the per-status indexes never disagree with
the record. Keys (prefix ``ckc:``):

| key | type | what |
|---|---|---|
| ``job:{id}`` | hash | the record: status, request, spec, progress, phases, plan, result, error, timings |
| ``jobs`` / ``jobs:status:{s}`` / ``jobs:model_type:{t}`` / ``jobs:owner:{name}`` | zset | ids by creation time |
| ``jobs:source:{source}`` | zset | ids by creation time, per source as stored (Hub repo id or absolute path) |
| ``jobs:status:{s}:model_type:{t}`` | zset | ids by creation time, per status and model type (metrics, filters) |
| ``model_types`` | set | every model type that has had a job (bounded by the registry) |
| ``job:{id}:events`` | stream | status and progress events (SSE replays them) |
| ``job:{id}:cancel`` | string | cancel flag, polled by the running task |
| ``job:{id}:lock`` | string | the delivery running the job; refreshed while it runs, so it is the job's heartbeat |
| ``job:{id}:notify`` | hash | completion webhooks' secrets, sealed, until delivered (their state: field ``notify``) |
| ``webhooks:leases`` | zset | ``{id}\\x1f{subscriber}`` -> when a webhook not settled is overdue (swept: sent again) |
| ``idem:{hash}`` / ``idemkey:{key}`` | string | idempotency: the job spec's key / ``Idempotency-Key`` -> job id (TTL) |
| ``dest:{key}`` | string | the live job writing a destination (released when it ends) |
| ``workers`` | zset | worker hostname -> last heartbeat |
| ``metrics:*`` | string/hash | bytes converted, job duration and phase duration histograms, jobs finished by status and
  model type, failures by error type and model type |
| ``index_version`` | string | the version of the indexes above that every record is in (:meth:`JobStore.ensure_indexes`) |
| ``tmp:{uuid}`` | zset | a list query's intermediate set (created and deleted within one transaction) |
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from converter.errors import DestinationBusyError

from .queue import QUEUE, UNACKED

P = "ckc:"
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
EVENTS_MAXLEN = 2000
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
PHASE_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
#: the indexes every record is in; bumped when one is added (the API adds old records to it at start)
INDEX_VERSION = "2"
#: kombu's priority steps on Redis: a queue is one list per step (``{queue}``, ``{queue}\x06\x163``, ...)
_PRIORITY_STEPS = (0, 3, 6, 9)
#: zset of ``{job id}\x1f{subscriber}`` -> when that webhook, waiting on an ended job or sending, is overdue
LEASES = P + "webhooks:leases"
JSON_FIELDS = ("request", "spec", "destination", "progress", "phases", "plan", "result", "error", "notify")

# A status change moves the job between the per-status indexes (and per status and model type); a terminal one gives
# the destination back, counts the job finished (by status and model type) and, failed, by its error type, and puts
# its waiting webhooks in the lease index, due when its on_end should have claimed them (so that none waits forever
# if the process ending the job dies first). Shared by the scripts that change a status. ``err``: the error type of
# a failure ("" otherwise); ``due``: when the waiting webhooks are overdue.
_REINDEX_FN = """
local function reindex(job_key, prefix, id, cur, new, err, due)
  local score = redis.call('HGET', job_key, 'created_at')
  local mt = redis.call('HGET', job_key, 'model_type') or ''
  redis.call('ZREM', prefix .. cur, id)
  redis.call('ZADD', prefix .. new, score, id)
  if mt ~= '' then
    redis.call('ZREM', prefix .. cur .. ':model_type:' .. mt, id)
    redis.call('ZADD', prefix .. new .. ':model_type:' .. mt, score, id)
  end
  if new == 'succeeded' or new == 'failed' or new == 'cancelled' then
    local claim = redis.call('HGET', job_key, 'dest_claim')
    if claim and redis.call('GET', claim) == id then redis.call('DEL', claim) end
    redis.call('HINCRBY', 'ckc:metrics:finished', new .. '|' .. mt, 1)
    if err ~= '' then redis.call('HINCRBY', 'ckc:metrics:failures', err .. '|' .. mt, 1) end
    local raw = redis.call('HGET', job_key, 'notify')
    if raw then
      for sub, e in pairs(cjson.decode(raw)) do
        if e.state == 'waiting' then redis.call('ZADD', 'ckc:webhooks:leases', due, id .. '\\31' .. sub) end
      end
    end
  end
end
"""

# KEYS: job hash, status zset prefix. ARGV: allowed statuses (comma-separated, "*" = any non-terminal),
# new status, id, error type of a failure ("" = none), when its waiting webhooks are due, then field/value pairs to
# set with the change. Returns {status before, 1 if changed else 0}.
_TRANSITION = (
    _REINDEX_FN
    + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {false, 0} end
local ok = false
if ARGV[1] == '*' then
  ok = (cur == 'queued' or cur == 'running')
else
  for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
end
if not ok then return {cur, 0} end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
reindex(KEYS[1], KEYS[2], ARGV[3], cur, ARGV[2], ARGV[4], ARGV[5])
return {cur, 1}
"""
)


# KEYS: idempotency key ("" = none), destination claim key ("" = none). ARGV: id, created_at, model_type, first
# event, events maxlen, idempotency TTL, owner ("" = none), source ("" = none), then the record's field/value pairs.
# Returns {job id, 1 if created, 0 if a live job of the same request exists, 2 if a live job of another request is
# writing the destination}.
_CREATE = """
local id = ARGV[1]
local function live(job, with_succeeded)
  local st = redis.call('HGET', 'ckc:job:' .. job, 'status')
  return st == 'queued' or st == 'running' or (with_succeeded and st == 'succeeded')
end
if KEYS[1] ~= '' then
  local old = redis.call('GET', KEYS[1])
  if old and live(old, true) then return {old, 0} end
end
if KEYS[2] ~= '' then
  local holder = redis.call('GET', KEYS[2])
  if holder and live(holder, false) then return {holder, 2} end
  redis.call('SET', KEYS[2], id)
end
if KEYS[1] ~= '' then redis.call('SET', KEYS[1], id, 'EX', ARGV[6]) end
local rec = {}
for i = 9, #ARGV do rec[#rec + 1] = ARGV[i] end
redis.call('HSET', 'ckc:job:' .. id, unpack(rec))
if KEYS[2] ~= '' then redis.call('HSET', 'ckc:job:' .. id, 'dest_claim', KEYS[2]) end
redis.call('ZADD', 'ckc:jobs', ARGV[2], id)
redis.call('ZADD', 'ckc:jobs:status:queued', ARGV[2], id)
if ARGV[3] ~= '' then
  redis.call('ZADD', 'ckc:jobs:model_type:' .. ARGV[3], ARGV[2], id)
  redis.call('ZADD', 'ckc:jobs:status:queued:model_type:' .. ARGV[3], ARGV[2], id)
  redis.call('SADD', 'ckc:model_types', ARGV[3])
end
if ARGV[7] ~= '' then redis.call('ZADD', 'ckc:jobs:owner:' .. ARGV[7], ARGV[2], id) end
if ARGV[8] ~= '' then redis.call('ZADD', 'ckc:jobs:source:' .. ARGV[8], ARGV[2], id) end
redis.call('XADD', 'ckc:job:' .. id .. ':events', 'MAXLEN', '~', ARGV[5], '*', 'type', 'status', 'data', ARGV[4])
return {id, 1}
"""


# Progress of a job whose shards are written by several tasks. KEYS: parts hash, job hash, events stream.
# ARGV: part, bytes done, tensors done (of that part), bytes total, tensors total, phase, now. The sums over parts
# only ever grow in the record (a redelivered part restarting from 0 does not move the bar back).
_PART_PROGRESS = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
local b, t = 0, 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local sep = string.find(v, ':')
  b = b + tonumber(string.sub(v, 1, sep - 1))
  t = t + tonumber(string.sub(v, sep + 1))
end
local prev = tonumber(redis.call('HGET', KEYS[2], 'parts_bytes') or '-1')
if b <= prev then return 0 end
redis.call('HSET', KEYS[2], 'parts_bytes', b)
local total = tonumber(ARGV[4])
local started = tonumber(redis.call('HGET', KEYS[2], 'started_at') or ARGV[7])
local elapsed = tonumber(ARGV[7]) - started
local rate, eta = cjson.null, cjson.null
if elapsed > 0 and b > 0 then
  rate = b / elapsed
  eta = (total - b) / rate
end
local p = cjson.encode({phase = ARGV[6], bytes_done = b, bytes_total = total, tensors_done = t,
                        tensors_total = tonumber(ARGV[5]), eta_seconds = eta, bytes_per_second = rate})
redis.call('HSET', KEYS[2], 'progress', p)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 2000, '*', 'type', 'progress', 'data', p)
return 1
"""


# A running job whose worker is gone (no lock: its heartbeat expired) is cancelled at once, since no worker will see
# the flag; a job handed to subtasks (fanout) is left to them: their messages are delivered again.
# KEYS: job hash, lock, status zset prefix. ARGV: id, when its waiting webhooks are due, then field/value pairs.
# Returns 1 if cancelled.
_CANCEL_ABANDONED = (
    _REINDEX_FN
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('HGET', KEYS[1], 'fanout') then return 0 end
redis.call('HSET', KEYS[1], 'status', 'cancelled')
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
reindex(KEYS[1], KEYS[3], ARGV[1], 'running', 'cancelled', '', ARGV[2])
return 1
"""
)

# Records created before an index existed are added to it (each record read and indexed in one step, so a status
# change cannot slip between). ARGV: job ids.
_BACKFILL = """
for _, id in ipairs(ARGV) do
  local f = redis.call('HMGET', 'ckc:job:' .. id, 'status', 'model_type', 'source', 'created_at')
  local st, mt, src, score = f[1], f[2], f[3], f[4]
  if st and score then
    if mt and mt ~= '' then
      redis.call('SADD', 'ckc:model_types', mt)
      redis.call('ZADD', 'ckc:jobs:status:' .. st .. ':model_type:' .. mt, score, id)
    end
    if src and src ~= '' then redis.call('ZADD', 'ckc:jobs:source:' .. src, score, id) end
  end
end
return #ARGV
"""

# A completion webhook for a job that has not ended (jobs.webhooks). KEYS: job hash, its webhook secrets hash. ARGV:
# subscriber, sealed secret, its entry (JSON). Returns 1 if subscribed, 2 if that subscriber was already (its first
# secret is kept), 0 if the job ended, -1 if there is no such job.
_SUBSCRIBE = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= 'queued' and st ~= 'running' then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 2 end
local raw = redis.call('HGET', KEYS[1], 'notify')
local subs = raw and cjson.decode(raw) or {}
subs[ARGV[1]] = cjson.decode(ARGV[3])
redis.call('HSET', KEYS[1], 'notify', cjson.encode(subs))
return 1
"""

# One webhook's delivery state, changed only if it is in an expected state (and, given one, holds the expected claim:
# the fencing token of the task allowed to make its next attempt). KEYS: job hash, its webhook secrets hash, the lease
# index. ARGV: subscriber, expected state, 1 to count an attempt, fields to set (JSON), expected claim ("" = any), the
# lease's new end ("" = unchanged), 1 to take a new claim, the lease index member. Returns the entry (JSON), or nil. A
# settled delivery's secret and lease are removed; a sending one's lease is indexed.
_DELIVERY = """
local raw = redis.call('HGET', KEYS[1], 'notify')
if not raw then return false end
local subs = cjson.decode(raw)
local e = subs[ARGV[1]]
if not e or e.state ~= ARGV[2] then return false end
if ARGV[5] ~= '' and tonumber(e.claim or 0) ~= tonumber(ARGV[5]) then return false end
if ARGV[3] == '1' then e.attempts = (tonumber(e.attempts) or 0) + 1 end
for k, v in pairs(cjson.decode(ARGV[4])) do e[k] = v end
if ARGV[7] == '1' then e.claim = (tonumber(e.claim) or 0) + 1 end
if ARGV[6] ~= '' then e.lease_until = tonumber(ARGV[6]) end
if e.state == 'delivered' or e.state == 'failed' then
  e.lease_until = nil
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[8])
elseif e.state == 'sending' and e.lease_until then
  redis.call('ZADD', KEYS[3], e.lease_until, ARGV[8])
end
redis.call('HSET', KEYS[1], 'notify', cjson.encode(subs))
return cjson.encode(e)
"""

# The sweep: take over a webhook whose lease ran out (sending, its worker died or the next task was never sent) or
# that waits on a job that ended long enough ago (its on_end never ran), with a new claim, in one step with those
# checks, so that of several sweepers exactly one wins. KEYS: job hash, lease index. ARGV: lease index member,
# subscriber, now, the new lease's end. Returns the new claim, or 0 (not overdue; a stale index member is fixed).
_RECLAIM = """
local raw = redis.call('HGET', KEYS[1], 'notify')
local subs = raw and cjson.decode(raw) or {}
local e = subs[ARGV[2]]
if not e or e.state == 'delivered' or e.state == 'failed' then redis.call('ZREM', KEYS[2], ARGV[1]) return 0 end
if e.state == 'waiting' then
  local st = redis.call('HGET', KEYS[1], 'status')
  if st ~= 'succeeded' and st ~= 'failed' and st ~= 'cancelled' then redis.call('ZREM', KEYS[2], ARGV[1]) return 0 end
  local due = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if due and tonumber(due) > tonumber(ARGV[3]) then return 0 end
elseif tonumber(e.lease_until or 0) > tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[2], e.lease_until, ARGV[1])
  return 0
end
e.state = 'sending'
e.claim = (tonumber(e.claim) or 0) + 1
e.lease_until = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'notify', cjson.encode(subs))
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return e.claim
"""

# Keep a job's lock: refreshed if ours, taken again if it expired meanwhile (Redis was away). KEYS: lock.
# ARGV: owner, ttl. Returns 1 if we hold it, 0 if another delivery does.
_REFRESH_LOCK = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('EXPIRE', KEYS[1], ARGV[2]) return 1 end
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end
return 0
"""


def now() -> float:
    return time.time()


def _dump(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))


#: client options: a Redis restart (a second or two) is retried through instead of failing the caller
RESILIENT: dict[str, Any] = {
    "health_check_interval": 30,
    "socket_connect_timeout": 5,
    "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 8),
    "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
}
#: for a running job's background writes: fail fast while Redis is away (they are retried with newer values)
QUICK: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 2, "retry": Retry(NoBackoff(), 0)}


def events_key(job_id: str) -> str:
    return P + f"job:{job_id}:events"


def queue_keys() -> list[str]:
    """The broker's lists of task messages waiting in the queue (kombu keeps one per priority step)."""
    return [QUEUE if not pri else f"{QUEUE}\x06\x16{pri}" for pri in _PRIORITY_STEPS]


#: the fields of a record a job list shows (GET /jobs without ``include``): no spec, plan or phases
SUMMARY_FIELDS = ("id", "status", "owner", "source", "revision", "source_sha", "model_type", "request",
                  "destination", "created_at", "started_at", "finished_at", "attempts", "progress", "error",
                  "result")  # fmt: skip


@dataclass(frozen=True)
class JobQuery:
    """Which jobs a list shows: a job matches when its status is one of ``statuses``, its model type one of
    ``model_types``, its source is ``source`` (as stored: a Hub repo id or an absolute path), its owner each of
    ``owners`` (a submit token's own name, and the owner asked for) and ``since <= created_at < until``; an empty
    filter matches every job.

    Answered from the sorted sets alone (unions, then an intersection, into a temporary set within one transaction,
    then a range by score): no record is read but the page's."""

    statuses: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    source: str | None = None
    owners: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None

    def groups(self) -> list[list[str]]:
        """The sorted sets whose intersection holds the matching ids, each given as the keys of a union."""
        out: list[list[str]] = []
        if self.statuses and self.model_types:
            out.append(
                [P + f"jobs:status:{s}:model_type:{t}" for s in self.statuses for t in self.model_types]
            )
        elif self.statuses:
            out.append([P + "jobs:status:" + s for s in self.statuses])
        elif self.model_types:
            out.append([P + "jobs:model_type:" + t for t in self.model_types])
        if self.source:
            out.append([P + "jobs:source:" + self.source])
        out += [[P + "jobs:owner:" + o] for o in dict.fromkeys(self.owners)]
        return out or [[P + "jobs"]]

    def queue(self, pipe: Any, skip: int, limit: int) -> int:
        """Queue the query on a transaction ``pipe``; returns where its replies start (count, then the page)."""
        lo = "-inf" if self.since is None else repr(float(self.since))
        hi = "+inf" if self.until is None else "(" + repr(float(self.until))
        keys, tmp = [], []
        for group in self.groups():
            if len(group) == 1:
                keys.append(group[0])
                continue
            tmp.append(P + "tmp:" + uuid.uuid4().hex)
            pipe.zunionstore(tmp[-1], group, aggregate="MAX")  # every set scores a job by its created_at
            keys.append(tmp[-1])
        if len(keys) > 1:
            tmp.append(P + "tmp:" + uuid.uuid4().hex)
            pipe.zinterstore(tmp[-1], keys, aggregate="MAX")
            keys = [tmp[-1]]
        pipe.zcount(keys[0], lo, hi)
        pipe.zrevrangebyscore(keys[0], hi, lo, start=skip, num=limit)
        if tmp:
            pipe.delete(*tmp)
        return len(tmp)

    @staticmethod
    def page(replies: list[Any], start: int) -> tuple[list[str], int]:
        """(ids of the page, number of matching jobs) from the transaction's replies."""
        return list(replies[start + 1]), int(replies[start])


def _query(query: JobQuery | None, status: str | None, model_type: str | None, owner: str | None) -> JobQuery:
    """A query from the keyword filters of the old signature (one status, one model type, one owner)."""
    if query is not None:
        return query
    return JobQuery(
        statuses=(status,) if status else (),
        model_types=(model_type,) if model_type else (),
        owners=(owner,) if owner else (),
    )


def _hmget_pipe(pipe: Any, ids: Iterable[str], fields: tuple[str, ...] | None) -> None:
    for i in ids:
        if fields is None:
            pipe.hgetall(P + "job:" + i)
        else:
            pipe.hmget(P + "job:" + i, list(fields))


def _records(replies: list[Any], fields: tuple[str, ...] | None) -> list[dict[str, Any]]:
    """Decoded records from HGETALL or HMGET replies; a record deleted meanwhile (swept) is left out."""
    out = []
    for raw in replies:
        if fields is not None:
            raw = {k: v for k, v in zip(fields, raw, strict=True) if v is not None}
        if raw and "id" in raw:
            out.append(JobStore._decode(raw))
    return out


@dataclass
class MetricsSnapshot:
    """What ``GET /metrics`` reports from the job store, read in two round trips."""

    by_status: dict[str, int]
    #: (status, model_type) -> jobs in the store now
    by_status_model_type: dict[tuple[str, str], int]
    #: (status, model_type) -> jobs that ended so, ever
    finished: dict[tuple[str, str], int]
    #: (error type, model_type) -> jobs that failed so, ever
    failures: dict[tuple[str, str], int]
    bytes_converted: int
    #: the job duration histogram: bucket ("1", ..., "+Inf") or "sum" -> value
    duration: dict[str, float]
    #: (phase, status) -> bucket or "sum" -> value
    phases: dict[tuple[str, str], dict[str, float]]
    queue_depth: int
    unacked: int
    workers_alive: int


def _pairs(h: Mapping[str, str]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for k, v in h.items():
        a, _, b = k.partition("|")
        out[(a, b)] = int(v)
    return out


class JobStore:
    def __init__(
        self,
        url_or_client: str | redis.Redis,
        *,
        idempotency_ttl: int = 24 * 3600,
        retention: int = 30 * 24 * 3600,
        webhook_grace: float = 30.0,
        **options: Any,
    ) -> None:
        """``idempotency_ttl``: how long the same request (or Idempotency-Key) returns the same job;
        ``retention``: how long a finished job's record is kept (swept as new jobs are created); ``webhook_grace``:
        how long after a job ended its waiting webhooks are overdue (:meth:`overdue_webhooks`); ``options``: the
        Redis client's (default: retried through a restart)."""
        self.url = url_or_client if isinstance(url_or_client, str) else None
        self._quick: JobStore | None = None
        if isinstance(url_or_client, str):
            self.r = redis.Redis.from_url(url_or_client, decode_responses=True, **(options or RESILIENT))
        else:
            self.r = url_or_client
        self.idempotency_ttl, self.retention, self.webhook_grace = idempotency_ttl, retention, webhook_grace
        self._transition = self.r.register_script(_TRANSITION)
        self._create = self.r.register_script(_CREATE)
        self._part_progress = self.r.register_script(_PART_PROGRESS)
        self._cancel_abandoned = self.r.register_script(_CANCEL_ABANDONED)
        self._refresh_lock = self.r.register_script(_REFRESH_LOCK)
        self._subscribe = self.r.register_script(_SUBSCRIBE)
        self._delivery = self.r.register_script(_DELIVERY)
        self._backfill = self.r.register_script(_BACKFILL)
        self._reclaim = self.r.register_script(_RECLAIM)

    def quick(self) -> JobStore:
        """The same store on a client that fails fast instead of retrying (for background writes); one per store."""
        if self._quick is None:
            self._quick = (
                JobStore(
                    self.url,
                    idempotency_ttl=self.idempotency_ttl,
                    retention=self.retention,
                    webhook_grace=self.webhook_grace,
                    **QUICK,
                )
                if self.url
                else self
            )
        return self._quick

    # --- records ---------------------------------------------------------------------------------------------

    def create(
        self, fields: Mapping[str, Any], *, idem_hash: str | None = None, destination: str | None = None
    ) -> tuple[str, bool]:
        """Create a queued job; with ``idem_hash``, return ``(existing_id, False)`` if a live job (queued,
        running or succeeded) has that hash. ``destination`` (a key naming where the job writes) is claimed until
        the job ends: :class:`DestinationBusyError` if another live job holds it. A job with an ``owner`` field (the
        name of the API token that submitted it) is listed under ``jobs:owner:{owner}``. One round trip (a Lua
        script), so duplicates are cheap."""
        self.sweep()
        job_id = uuid.uuid4().hex
        # in microseconds, as the API shows it: since=<a job's created_at> includes that job
        t = round(now(), 6)
        record = {"id": job_id, "status": "queued", "created_at": repr(t), "attempts": "0"}
        for k, v in fields.items():
            record[k] = _dump(v) if k in JSON_FIELDS else str(v)
        mt = str(fields.get("model_type") or "")
        owner = str(fields.get("owner") or "")
        source = str(fields.get("source") or "")
        args: list[str] = [job_id, repr(t), mt, _dump({"status": "queued"}), str(EVENTS_MAXLEN)]
        args += [str(self.idempotency_ttl), owner, source]
        for k, v in record.items():
            args += [k, v]
        keys = [
            P + "idem:" + idem_hash if idem_hash else "",
            P + "dest:" + destination if destination else "",
        ]
        existing, code = self._create(keys=keys, args=args)
        if int(code) == 2:
            # not naming the job: it may belong to another token
            raise DestinationBusyError("another job is writing that destination now; wait for it to end")
        return str(existing), bool(int(code))

    def forget_request(self, idem_hash: str, job_id: str) -> None:
        """Let the same request create a new job (its earlier one succeeded but its output is gone or changed)."""
        key = P + "idem:" + idem_hash
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                if pipe.get(key) == job_id:
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
            except redis.WatchError:
                pass  # someone else changed it meanwhile: their job is the one to find

    def sweep(self, limit: int = 50) -> int:
        """Delete records of jobs that finished more than ``retention`` seconds ago (a few per call)."""
        cutoff = now() - self.retention
        ids = self.r.zrangebyscore(P + "jobs", "-inf", cutoff, start=0, num=limit)
        gone = 0
        for job_id in ids:
            status, mt, finished, owner, source, notify = self.r.hmget(
                P + "job:" + job_id, "status", "model_type", "finished_at", "owner", "source", "notify"
            )
            if status is not None and (status not in TERMINAL or float(finished or now()) > cutoff):
                continue
            pipe = self.r.pipeline()
            pipe.delete(*(P + f"job:{job_id}{suffix}" for suffix in ("", ":events", ":parts", ":cancel", ":lock",
                                                                      ":headers", ":notify")))  # fmt: skip
            pipe.zrem(P + "jobs", job_id)
            for st in STATUSES:
                pipe.zrem(P + "jobs:status:" + st, job_id)
            if mt:
                pipe.zrem(P + "jobs:model_type:" + mt, job_id)
                for st in STATUSES:
                    pipe.zrem(P + f"jobs:status:{st}:model_type:{mt}", job_id)
            if owner:
                pipe.zrem(P + "jobs:owner:" + owner, job_id)
            if source:
                pipe.zrem(P + "jobs:source:" + source, job_id)
            if notify and (subs := json.loads(notify)):
                pipe.zrem(LEASES, *(f"{job_id}\x1f{sub}" for sub in subs))
            pipe.execute()
            gone += 1
        return gone

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(P + "job:" + job_id)
        return self._decode(raw) if raw else None

    def get_many(self, ids: Iterable[str], fields: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """The records of ``ids`` that exist (only ``fields`` of each, when given), in that order."""
        pipe = self.r.pipeline(transaction=False)
        _hmget_pipe(pipe, ids, fields)
        return _records(pipe.execute(), fields)

    @staticmethod
    def _decode(raw: Mapping[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = dict(raw)
        for k in JSON_FIELDS:
            if k in out:
                out[k] = json.loads(out[k])
        for k in ("created_at", "started_at", "finished_at"):
            if k in out:
                out[k] = float(out[k])
        out["attempts"] = int(out.get("attempts", 0))
        return out

    def list_jobs(
        self,
        query: JobQuery | None = None,
        *,
        status: str | None = None,
        model_type: str | None = None,
        owner: str | None = None,
        skip: int = 0,
        limit: int = 50,
        fields: tuple[str, ...] | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """Newest first, filtered by ``query`` (or the keywords: one status, model type, owner); returns (the page's
        records, only ``fields`` of each when given; the number of matching jobs)."""
        q = _query(query, status, model_type, owner)
        pipe = self.r.pipeline(transaction=True)
        start = q.queue(pipe, skip, limit)
        ids, count = q.page(pipe.execute(), start)
        return self.get_many(ids, fields), count

    def ensure_indexes(self, batch: int = 500) -> int:
        """Add records created before an index existed (the per status and model type sets, the source sets) to it,
        once per :data:`INDEX_VERSION`; the API calls it at start. Returns how many records were looked at."""
        if self.r.get(P + "index_version") == INDEX_VERSION:
            return 0
        seen, start = 0, 0
        while ids := self.r.zrange(P + "jobs", start, start + batch - 1):
            self._backfill(keys=[], args=ids)
            seen, start = seen + len(ids), start + batch
        self.r.set(P + "index_version", INDEX_VERSION)
        return seen

    def counts_by_status(self) -> dict[str, int]:
        pipe = self.r.pipeline()
        for s in STATUSES:
            pipe.zcard(P + "jobs:status:" + s)
        return dict(zip(STATUSES, pipe.execute(), strict=True))

    # --- changes ---------------------------------------------------------------------------------------------

    def transition(self, job_id: str, allowed: str | Iterable[str], new: str, **fields: Any) -> bool:
        """Set ``status = new`` (and ``fields``) only if the current status is in ``allowed``; emit an event."""
        allowed_s = allowed if isinstance(allowed, str) else ",".join(allowed)
        error_type = ((fields.get("error") or {}).get("type") or "InternalError") if new == "failed" else ""
        args: list[str] = [allowed_s, new, job_id, str(error_type), repr(now() + self.webhook_grace)]
        for k, v in fields.items():
            args += [k, _dump(v) if k in JSON_FIELDS else str(v)]
        _, changed = self._transition(keys=[P + "job:" + job_id, P + "jobs:status:"], args=args)
        if changed:
            self._announce(job_id, new, fields)
        return bool(changed)

    def _announce(self, job_id: str, new: str, fields: Mapping[str, Any]) -> None:
        payload = {"status": new, **{k: v for k, v in fields.items() if k in ("error", "result")}}
        self.event(job_id, "status", payload)
        if new in TERMINAL:
            self.event(job_id, "end", {"status": new})

    def cancel_abandoned(self, job_id: str, **fields: Any) -> bool:
        """Cancel a ``running`` job whose worker is gone (its lock, the job's heartbeat, expired), in one step with
        that check; a job handed to subtasks is left to them. True if it was cancelled."""
        args: list[str] = [job_id, repr(now() + self.webhook_grace)]
        for k, v in fields.items():
            args += [k, _dump(v) if k in JSON_FIELDS else str(v)]
        keys = [P + "job:" + job_id, P + f"job:{job_id}:lock", P + "jobs:status:"]
        done = bool(self._cancel_abandoned(keys=keys, args=args))
        if done:
            self._announce(job_id, "cancelled", fields)
        return done

    def update(self, job_id: str, **fields: Any) -> None:
        self.r.hset(
            P + "job:" + job_id,
            mapping={k: _dump(v) if k in JSON_FIELDS else str(v) for k, v in fields.items()},
        )

    def incr_attempts(self, job_id: str) -> int:
        return int(self.r.hincrby(P + "job:" + job_id, "attempts", 1))

    def progress(self, job_id: str, progress: Mapping[str, Any]) -> None:
        pipe = self.r.pipeline()
        pipe.hset(P + "job:" + job_id, "progress", _dump(progress))
        pipe.xadd(
            P + f"job:{job_id}:events",
            {"type": "progress", "data": _dump(progress)},
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )
        pipe.execute()

    def part_progress(
        self, job_id: str, part: int, bytes_done: int, tensors_done: int, totals: tuple[int, int], phase: str
    ) -> None:
        """A sharded job's task reports its part; the job's progress is the sum over parts (never decreasing)."""
        keys = [P + f"job:{job_id}:parts", P + "job:" + job_id, events_key(job_id)]
        args = [
            str(part),
            str(bytes_done),
            str(tensors_done),
            str(totals[0]),
            str(totals[1]),
            phase,
            repr(now()),
        ]
        self._part_progress(keys=keys, args=args)

    def put_blob(self, job_id: str, name: str, data: bytes, ttl: int = 7 * 24 * 3600) -> None:
        """A job's working data for its tasks (e.g. the checkpoint's headers, so they are read only once)."""
        self.r.set(P + f"job:{job_id}:{name}", base64.b64encode(zlib.compress(data)).decode(), ex=ttl)

    def get_blob(self, job_id: str, name: str) -> bytes | None:
        raw = self.r.get(P + f"job:{job_id}:{name}")
        return None if raw is None else zlib.decompress(base64.b64decode(raw))

    def event(self, job_id: str, kind: str, data: Mapping[str, Any]) -> None:
        self.r.xadd(
            P + f"job:{job_id}:events",
            {"type": kind, "data": _dump(data)},
            maxlen=EVENTS_MAXLEN,
            approximate=True,
        )

    def events_key(self, job_id: str) -> str:
        return events_key(job_id)

    # --- cancel --------------------------------------------------------------------------------------------------

    def request_cancel(self, job_id: str) -> None:
        self.r.set(P + f"job:{job_id}:cancel", "1", ex=7 * 24 * 3600)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.r.exists(P + f"job:{job_id}:cancel"))

    # --- completion webhooks (jobs.webhooks) ---------------------------------------------------------------------

    def subscribe(self, job_id: str, hook: Any) -> bool:
        """Add a webhook (a :class:`jobs.webhooks.Subscription`) to a job that has not ended; False if it ended, or
        the same URL is subscribed already (its first secret is kept)."""
        keys = [P + "job:" + job_id, P + f"job:{job_id}:notify"]
        return int(self._subscribe(keys=keys, args=[hook.subscriber, hook.sealed, _dump(hook.entry)])) == 1

    def delivery(
        self,
        job_id: str,
        sub: str,
        expected: str,
        *,
        attempt: bool = False,
        claim: int | None = None,
        lease_until: float | None = None,
        new_claim: bool = False,
        **fields: Any,
    ) -> dict[str, Any] | None:
        """Set ``fields`` of subscriber ``sub``'s delivery (and with ``attempt``, count one) if its state is
        ``expected`` and, given ``claim``, its claim is that one; ``lease_until`` renews its lease (indexed while it
        is sending, removed once settled); ``new_claim`` takes the next claim (the entry returned says which).
        Returns the entry, or None if it was not in that state or claim."""
        keys = [P + "job:" + job_id, P + f"job:{job_id}:notify", LEASES]
        args = [sub, expected, "1" if attempt else "0", _dump(fields), "" if claim is None else str(claim),
                "" if lease_until is None else repr(lease_until), "1" if new_claim else "0", f"{job_id}\x1f{sub}"]  # fmt: skip
        out = self._delivery(keys=keys, args=args)
        return None if out is None else json.loads(out)

    def overdue_webhooks(self, limit: int = 100) -> list[tuple[str, str]]:
        """(job id, subscriber) of webhooks whose lease ran out, or that wait on a job that ended ``webhook_grace``
        ago: the oldest first, at most ``limit``."""
        members = self.r.zrangebyscore(LEASES, "-inf", now(), start=0, num=limit)
        return [tuple(m.split("\x1f", 1)) for m in members if "\x1f" in m]  # type: ignore[misc]

    def reclaim(self, job_id: str, sub: str, lease_until: float) -> int:
        """Take over an overdue webhook (:meth:`overdue_webhooks`) with a new claim leased until ``lease_until``, if
        it is still overdue: the new claim, or 0 (another sweeper won, or it was renewed or settled meanwhile)."""
        keys, member = [P + "job:" + job_id, LEASES], f"{job_id}\x1f{sub}"
        return int(self._reclaim(keys=keys, args=[member, sub, repr(now()), repr(lease_until)]))

    def webhook_secret(self, job_id: str, sub: str) -> str | None:
        """The sealed secret of subscriber ``sub`` (removed once its delivery settled)."""
        return self.r.hget(P + f"job:{job_id}:notify", sub)

    # --- idempotency keys --------------------------------------------------------------------------------------

    def idempotency_key(
        self, key: str, request_hash: str, job_id: str | None = None
    ) -> tuple[str, str] | None:
        """Look up (and with ``job_id``, claim) an ``Idempotency-Key``: returns (job id, request hash) if taken."""
        k = P + "idemkey:" + key
        if job_id is None:
            v = self.r.get(k)
        else:
            v = (
                None
                if self.r.set(k, f"{job_id}:{request_hash}", nx=True, ex=self.idempotency_ttl)
                else self.r.get(k)
            )
        if v is None:
            return None
        jid, _, h = v.partition(":")
        return jid, h

    # --- locks, workers, metrics ---------------------------------------------------------------------------------

    def lock(self, job_id: str, owner: str, ttl: int) -> bool:
        return bool(self.r.set(P + f"job:{job_id}:lock", owner, nx=True, ex=ttl))

    def refresh_lock(self, job_id: str, owner: str, ttl: int) -> bool:
        """Keep ``owner``'s lock (taken again if it expired meanwhile); False if another delivery holds it."""
        return bool(self._refresh_lock(keys=[P + f"job:{job_id}:lock"], args=[owner, str(ttl)]))

    def unlock(self, job_id: str, owner: str) -> None:
        key = P + f"job:{job_id}:lock"
        if self.r.get(key) == owner:
            self.r.delete(key)

    def heartbeat(self, worker: str) -> None:
        self.r.zadd(P + "workers", {worker: now()})

    def vouch(self, index_key: str, delivery_tags: Iterable[str]) -> None:
        """Re-date the broker's record of messages a live worker holds (only those still recorded), so that they
        are not delivered again while it works on them (see ``jobs.queue``)."""
        tags = {t: now() for t in delivery_tags}
        if tags:
            self.r.zadd(index_key, tags, xx=True)

    def workers_alive(self, within: float = 30.0) -> list[str]:
        return list(self.r.zrangebyscore(P + "workers", now() - within, "+inf"))

    def record_finished(self, nbytes: int, seconds: float) -> None:
        pipe = self.r.pipeline()
        pipe.incrby(P + "metrics:bytes_converted", nbytes)
        for b in DURATION_BUCKETS:
            if seconds <= b:
                pipe.hincrby(P + "metrics:duration", str(b), 1)
        pipe.hincrby(P + "metrics:duration", "+Inf", 1)
        pipe.hincrbyfloat(P + "metrics:duration", "sum", seconds)
        pipe.execute()

    def record_phases(self, phases: Mapping[str, Mapping[str, float]], status: str) -> None:
        """Add a finished job's phase timings (``{phase: {started, finished}}``) to the phase duration histograms of
        its final ``status``; the closing ``done`` phase is not work and is left out."""
        pipe = self.r.pipeline()
        for name, p in phases.items():
            if name == "done" or not p.get("finished") or not p.get("started"):
                continue
            seconds, key = max(0.0, float(p["finished"]) - float(p["started"])), f"{name}|{status}|"
            for b in PHASE_BUCKETS:
                if seconds <= b:
                    pipe.hincrby(P + "metrics:phase_duration", key + str(b), 1)
            pipe.hincrby(P + "metrics:phase_duration", key + "+Inf", 1)
            pipe.hincrbyfloat(P + "metrics:phase_duration", key + "sum", seconds)
        pipe.execute()

    def metrics(self) -> tuple[int, dict[str, float]]:
        pipe = self.r.pipeline()
        pipe.get(P + "metrics:bytes_converted")
        pipe.hgetall(P + "metrics:duration")
        b, d = pipe.execute()
        return int(b or 0), {k: float(v) for k, v in (d or {}).items()}

    def metrics_snapshot(self, workers_within: float = 30.0) -> MetricsSnapshot:
        """Everything ``GET /metrics`` reports from Redis, in two round trips (no record is read)."""
        pipe = self.r.pipeline(transaction=False)
        for st in STATUSES:
            pipe.zcard(P + "jobs:status:" + st)
        pipe.smembers(P + "model_types")
        pipe.get(P + "metrics:bytes_converted")
        for h in ("duration", "finished", "failures", "phase_duration"):
            pipe.hgetall(P + "metrics:" + h)
        queues = queue_keys()
        for k in queues:
            pipe.llen(k)
        pipe.hlen(UNACKED)
        pipe.zcount(P + "workers", now() - workers_within, "+inf")
        r = pipe.execute()
        n = len(STATUSES)
        by_status = dict(zip(STATUSES, map(int, r[:n]), strict=True))
        types, nbytes, duration, finished, failures, phase_raw = sorted(r[n]), *r[n + 1 : n + 6]
        depth, unacked, workers = sum(r[n + 6 : n + 6 + len(queues)]), *r[n + 6 + len(queues) :]
        pipe = self.r.pipeline(transaction=False)
        pairs = [(st, mt) for mt in types for st in STATUSES]
        for st, mt in pairs:
            pipe.zcard(P + f"jobs:status:{st}:model_type:{mt}")
        by_type = {pair: int(c) for pair, c in zip(pairs, pipe.execute() if pairs else [], strict=True) if c}
        phases: dict[tuple[str, str], dict[str, float]] = {}
        for k, v in phase_raw.items():
            phase, status, le = k.split("|", 2)
            phases.setdefault((phase, status), {})[le] = float(v)
        return MetricsSnapshot(
            by_status=by_status,
            by_status_model_type=by_type,
            finished=_pairs(finished),
            failures=_pairs(failures),
            bytes_converted=int(nbytes or 0),
            duration={k: float(v) for k, v in duration.items()},
            phases=phases,
            queue_depth=int(depth),
            unacked=int(unacked),
            workers_alive=int(workers),
        )


class AsyncJobReader:
    """The API's read path (GET /jobs, GET /jobs/{id}) on an asyncio client: no thread hop per request."""

    def __init__(self, client: Any) -> None:
        self.r = client

    async def get(self, job_id: str) -> dict[str, Any] | None:
        raw = await self.r.hgetall(P + "job:" + job_id)
        return JobStore._decode(raw) if raw else None

    async def workers_alive(self, within: float = 30.0) -> list[str]:
        return list(await self.r.zrangebyscore(P + "workers", now() - within, "+inf"))

    async def list_jobs(
        self,
        query: JobQuery | None = None,
        *,
        status: str | None = None,
        model_type: str | None = None,
        owner: str | None = None,
        skip: int = 0,
        limit: int = 50,
        fields: tuple[str, ...] | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """:meth:`JobStore.list_jobs`, on the asyncio client."""
        q = _query(query, status, model_type, owner)
        pipe = self.r.pipeline(transaction=True)
        start = q.queue(pipe, skip, limit)
        ids, count = q.page(await pipe.execute(), start)
        pipe = self.r.pipeline(transaction=False)
        _hmget_pipe(pipe, ids, fields)
        return _records(await pipe.execute(), fields), count


def store_for(settings: Any) -> JobStore:
    """The job store of ``settings`` (a :class:`jobs.settings.Settings`): its Redis, TTL and retention."""
    return JobStore(
        settings.redis,
        idempotency_ttl=settings.idempotency_ttl,
        retention=settings.job_retention,
        webhook_grace=settings.webhook_lease_margin,
    )
