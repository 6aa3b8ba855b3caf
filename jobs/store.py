"""The job store: one Redis hash per job, sorted sets for listing, a stream of events per job.

Used by the API (create, list, cancel) and by the workers (status, progress, result). Every status change goes
through one Lua script, so a cancel and a finish cannot both win, and the per-status indexes never disagree with
the record. Keys (prefix ``ckc:``):

| key | type | what |
|---|---|---|
| ``job:{id}`` | hash | the record: status, request, spec, progress, phases, plan, result, error, timings |
| ``jobs`` / ``jobs:status:{s}`` / ``jobs:model_type:{t}`` / ``jobs:owner:{name}`` | zset | ids by creation time |
| ``job:{id}:events`` | stream | status and progress events (SSE replays them) |
| ``job:{id}:cancel`` | string | cancel flag, polled by the running task |
| ``job:{id}:lock`` | string | the delivery running the job; refreshed while it runs, so it is the job's heartbeat |
| ``job:{id}:notify`` | hash | completion webhooks' secrets, sealed, until delivered (their state: field ``notify``) |
| ``webhooks:leases`` | zset | ``{id}\\x1f{subscriber}`` -> when a webhook not settled is overdue (swept: sent again) |
| ``idem:{hash}`` / ``idemkey:{key}`` | string | idempotency: the job spec's key / ``Idempotency-Key`` -> job id (TTL) |
| ``dest:{key}`` | string | the live job writing a destination (released when it ends) |
| ``workers`` | zset | worker hostname -> last heartbeat |
| ``metrics:*`` | string/hash | bytes converted, job duration histogram |
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from converter.errors import DestinationBusyError

P = "ckc:"
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
EVENTS_MAXLEN = 2000
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
#: zset of ``{job id}\x1f{subscriber}`` -> when that webhook, waiting on an ended job or sending, is overdue
LEASES = P + "webhooks:leases"
JSON_FIELDS = ("request", "spec", "destination", "progress", "phases", "plan", "result", "error", "notify")

# A job that ends puts its waiting webhooks in the lease index, due when its on_end should have claimed them (so
# that none waits forever if the process ending the job dies first). Put before each script that ends a job.
_LEASE_WAITING = """
local function lease_waiting(job_key, id, due)
  local raw = redis.call('HGET', job_key, 'notify')
  if not raw then return end
  for sub, e in pairs(cjson.decode(raw)) do
    if e.state == 'waiting' then redis.call('ZADD', 'ckc:webhooks:leases', due, id .. '\\31' .. sub) end
  end
end
"""

# KEYS: job hash, status zset prefix. ARGV: allowed statuses (comma-separated, "*" = any non-terminal),
# new status, id, when its waiting webhooks are due, then field/value pairs to set with the change. Returns
# {status before, 1 if changed else 0}.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {false, 0} end
local ok = false
if ARGV[1] == '*' then
  ok = (cur == 'queued' or cur == 'running')
else
  for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur then ok = true end end
end
if not ok then return {cur, 0} end
local score = redis.call('HGET', KEYS[1], 'created_at')
redis.call('HSET', KEYS[1], 'status', ARGV[2])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREM', KEYS[2] .. cur, ARGV[3])
redis.call('ZADD', KEYS[2] .. ARGV[2], score, ARGV[3])
if ARGV[2] == 'succeeded' or ARGV[2] == 'failed' or ARGV[2] == 'cancelled' then
  -- a finished job gives its destination back
  local claim = redis.call('HGET', KEYS[1], 'dest_claim')
  if claim and redis.call('GET', claim) == ARGV[3] then redis.call('DEL', claim) end
  lease_waiting(KEYS[1], ARGV[3], ARGV[4])
end
return {cur, 1}
"""


# KEYS: idempotency key ("" = none), destination claim key ("" = none). ARGV: id, created_at, model_type, first
# event, events maxlen, idempotency TTL, owner ("" = none), then the record's field/value pairs. Returns {job id, 1 if
# created, 0 if a live job of the same request exists, 2 if a live job of another request is writing the
# destination}.
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
for i = 8, #ARGV do rec[#rec + 1] = ARGV[i] end
redis.call('HSET', 'ckc:job:' .. id, unpack(rec))
if KEYS[2] ~= '' then redis.call('HSET', 'ckc:job:' .. id, 'dest_claim', KEYS[2]) end
redis.call('ZADD', 'ckc:jobs', ARGV[2], id)
redis.call('ZADD', 'ckc:jobs:status:queued', ARGV[2], id)
if ARGV[3] ~= '' then redis.call('ZADD', 'ckc:jobs:model_type:' .. ARGV[3], ARGV[2], id) end
if ARGV[7] ~= '' then redis.call('ZADD', 'ckc:jobs:owner:' .. ARGV[7], ARGV[2], id) end
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
_CANCEL_ABANDONED = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('HGET', KEYS[1], 'fanout') then return 0 end
redis.call('HSET', KEYS[1], 'status', 'cancelled')
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local score = redis.call('HGET', KEYS[1], 'created_at')
redis.call('ZREM', KEYS[3] .. 'running', ARGV[1])
redis.call('ZADD', KEYS[3] .. 'cancelled', score, ARGV[1])
lease_waiting(KEYS[1], ARGV[1], ARGV[2])
return 1
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


def _list_keys(status: str | None, model_type: str | None, owner: str | None = None) -> list[str]:
    """The sorted set(s) whose intersection holds the matching job ids."""
    keys = []
    if status:
        keys.append(P + "jobs:status:" + status)
    if model_type:
        keys.append(P + "jobs:model_type:" + model_type)
    if owner:
        keys.append(P + "jobs:owner:" + owner)
    return keys or [P + "jobs"]


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
        self._transition = self.r.register_script(_LEASE_WAITING + _TRANSITION)
        self._create = self.r.register_script(_CREATE)
        self._part_progress = self.r.register_script(_PART_PROGRESS)
        self._cancel_abandoned = self.r.register_script(_LEASE_WAITING + _CANCEL_ABANDONED)
        self._refresh_lock = self.r.register_script(_REFRESH_LOCK)
        self._subscribe = self.r.register_script(_SUBSCRIBE)
        self._delivery = self.r.register_script(_DELIVERY)
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
        t = now()
        record = {"id": job_id, "status": "queued", "created_at": repr(t), "attempts": "0"}
        for k, v in fields.items():
            record[k] = _dump(v) if k in JSON_FIELDS else str(v)
        mt = str(fields.get("model_type") or "")
        owner = str(fields.get("owner") or "")
        args: list[str] = [job_id, repr(t), mt, _dump({"status": "queued"}), str(EVENTS_MAXLEN)]
        args += [str(self.idempotency_ttl), owner]
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
            status, mt, finished, owner, notify = self.r.hmget(
                P + "job:" + job_id, "status", "model_type", "finished_at", "owner", "notify"
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
            if owner:
                pipe.zrem(P + "jobs:owner:" + owner, job_id)
            if notify and (subs := json.loads(notify)):
                pipe.zrem(LEASES, *(f"{job_id}\x1f{sub}" for sub in subs))
            pipe.execute()
            gone += 1
        return gone

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(P + "job:" + job_id)
        return self._decode(raw) if raw else None

    def get_many(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(P + "job:" + i)
        return [self._decode(raw) for raw in pipe.execute() if raw]

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
        *,
        status: str | None = None,
        model_type: str | None = None,
        owner: str | None = None,
        skip: int = 0,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], int]:
        """Newest first, filtered (``owner``: only the jobs of that API token name); returns (page, total matching)."""
        keys = _list_keys(status, model_type, owner)
        if len(keys) == 1:
            count = self.r.zcard(keys[0])
            ids = self.r.zrevrange(keys[0], skip, skip + limit - 1)
        else:
            pairs = sorted(
                self.r.zinter(keys, withscores=True, aggregate="MAX"), key=lambda p: p[1], reverse=True
            )
            count, ids = len(pairs), [i for i, _ in pairs[skip : skip + limit]]
        return self.get_many(ids), count

    def counts_by_status(self) -> dict[str, int]:
        pipe = self.r.pipeline()
        for s in STATUSES:
            pipe.zcard(P + "jobs:status:" + s)
        return dict(zip(STATUSES, pipe.execute(), strict=True))

    # --- changes ---------------------------------------------------------------------------------------------

    def transition(self, job_id: str, allowed: str | Iterable[str], new: str, **fields: Any) -> bool:
        """Set ``status = new`` (and ``fields``) only if the current status is in ``allowed``; emit an event."""
        allowed_s = allowed if isinstance(allowed, str) else ",".join(allowed)
        args: list[str] = [allowed_s, new, job_id, repr(now() + self.webhook_grace)]
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

    def metrics(self) -> tuple[int, dict[str, float]]:
        pipe = self.r.pipeline()
        pipe.get(P + "metrics:bytes_converted")
        pipe.hgetall(P + "metrics:duration")
        b, d = pipe.execute()
        return int(b or 0), {k: float(v) for k, v in (d or {}).items()}


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
        *,
        status: str | None = None,
        model_type: str | None = None,
        owner: str | None = None,
        skip: int = 0,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], int]:
        keys = _list_keys(status, model_type, owner)
        if len(keys) == 1:
            count = await self.r.zcard(keys[0])
            ids = await self.r.zrevrange(keys[0], skip, skip + limit - 1)
        else:
            pairs = sorted(
                await self.r.zinter(keys, withscores=True, aggregate="MAX"), key=lambda p: p[1], reverse=True
            )
            count, ids = len(pairs), [i for i, _ in pairs[skip : skip + limit]]
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(P + "job:" + i)
        return [JobStore._decode(raw) for raw in await pipe.execute() if raw], count


def store_for(settings: Any) -> JobStore:
    """The job store of ``settings`` (a :class:`jobs.settings.Settings`): its Redis, TTL and retention."""
    return JobStore(
        settings.redis,
        idempotency_ttl=settings.idempotency_ttl,
        retention=settings.job_retention,
        webhook_grace=settings.webhook_lease_margin,
    )
