"""Job event streams at scale: one Redis reader per API process, fanned out to any number of SSE clients.

A client of ``GET /jobs/{id}/events`` first gets the job's history from its Redis stream (``XRANGE`` pages on
the shared pool: short commands, no connection held), then live events from the process's :class:`EventHub`.
The hub is one background task doing one ``XREAD BLOCK`` over the streams of every job that has clients, on a
connection of its own, re-issued when that set changes (a per-process wake stream interrupts the blocking read).
Each event is encoded once and put into the bounded queue of every client of its job. So an open stream costs
no Redis connection: 1,000 clients leave the pool to ``GET /jobs``.

- A client that does not keep up (its queue full) is dropped; it resumes with ``Last-Event-ID``, like any other.
- A finished job: the client gets the history and ``end``, and the hub never reads for it.
- Caps (per API process): ``max_streams_per_client`` (429 with ``Retry-After``) and ``max_streams`` (503);
  :attr:`EventHub.ready` is false from 90 % of ``max_streams`` on, or while the reader cannot reach Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import redis
import redis.asyncio as aredis
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from jobs.store import P, events_key

from .errors import ApiError

log = logging.getLogger(__name__)

#: a Redis stream entry id, as numbers (``"1700000000000-3"`` -> ``(1700000000000, 3)``), so that ids compare
StreamId = tuple[int, int]
#: one event as a client gets it: its id, the encoded SSE frame, whether it is the last (``end``); id None: a
#: keep-alive (a comment line) or, with an empty body, the wake-up of a client the hub closed
Frame = tuple[StreamId | None, bytes, bool]

EVENT_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
KEEPALIVE = b": keep-alive\n\n"
PING: Frame = (None, KEEPALIVE, False)
CLOSE: Frame = (None, b"", False)
PAGE = 500  # entries per XRANGE page (history) and per stream per XREAD (live)
SATURATED = 0.9  # ready is false from this share of max_streams on
SLICE = 50  # clients woken per event loop iteration when an event fans out


def parse_id(event_id: str) -> StreamId:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


def encode(event_id: str, fields: Mapping[str, str]) -> Frame:
    kind = fields.get("type", "message")
    body = f"id: {event_id}\nevent: {kind}\ndata: {fields.get('data', '{}')}\n\n".encode()
    return parse_id(event_id), body, kind == "end"


class TooManyStreamsError(ApiError):
    """This client (API token, or address without auth) already holds its share of event streams."""

    status = 429
    headers = {"Retry-After": "5"}


class StreamsSaturatedError(ApiError):
    """This API process serves as many event streams as it may (``CKPT_CONVERT_MAX_STREAMS``)."""

    status = 503
    headers = {"Retry-After": "5"}


class Subscriber:
    """One client's place in the hub: its job, who it counts against, and its bounded queue of frames."""

    __slots__ = ("job_id", "client", "queue", "dropped", "closed")

    def __init__(self, job_id: str, client: str, size: int) -> None:
        self.job_id, self.client = job_id, client
        self.queue: asyncio.Queue[Frame] = asyncio.Queue(size)
        self.dropped = False  # fell behind: ends after what it has, the client resumes with Last-Event-ID
        self.closed = False

    def end(self) -> None:
        """Stop after what is queued (the client resumes with Last-Event-ID)."""
        self.dropped = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(CLOSE)

    def push(self, frames: list[Frame]) -> bool:
        """Queue ``frames``; False (and dropped) when the queue is full."""
        try:
            for f in frames:
                self.queue.put_nowait(f)
        except asyncio.QueueFull:
            self.dropped = True
            return False
        return True


class Feed:
    """The clients of one job, and where the hub reads its stream from (None: no client is live yet)."""

    __slots__ = ("subscribers", "cursor")

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self.cursor: StreamId | None = None


class EventHub:
    """Fans job events out to SSE clients with one Redis reader per API process (see the module docstring).

    ``url``: Redis, for the reader's own connection; ``pool``: the app's client, for history and wake-ups."""

    def __init__(
        self,
        url: str,
        pool: aredis.Redis,
        *,
        max_streams: int,
        max_per_client: int,
        queue_size: int = 1000,
        block_ms: int = 5000,
        keepalive: float = 5.0,
    ) -> None:
        self.url, self.pool = url, pool
        self.max_streams, self.max_per_client = max_streams, max_per_client
        self.queue_size, self.block_ms, self.keepalive = queue_size, block_ms, keepalive
        self.feeds: dict[str, Feed] = {}
        self.per_client: Counter[str] = Counter()
        self.open = 0
        self.dropped = 0  # clients dropped for falling behind, since start
        self.healthy = False  # the reader's last XREAD succeeded
        self.wake_key = P + f"api:{uuid.uuid4().hex}:wake"
        self._wake_cursor = "0-0"
        self._reading = False
        self._wake_pending = False
        self._stopping = False
        self.closing = False  # the process is stopping: every stream ends, no new one starts
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._conn: aredis.Redis | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # --- lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._conn = self._connect()
        self._task = asyncio.create_task(self._run(), name="event-hub")
        self._ticker = asyncio.create_task(self._keepalives(), name="event-hub-keepalive")

    def close_all(self) -> None:
        """End every stream now (clients reconnect, to another process or after a restart, with Last-Event-ID)
        and refuse new ones: the server stops only once its responses end, and a stream would not."""
        self.closing = True
        for feed in self.feeds.values():
            for sub in feed.subscribers:
                sub.end()

    def _connect(self) -> aredis.Redis:
        # socket_timeout: a silent network is noticed, and a blocked XREAD is not cut short
        return aredis.Redis.from_url(
            self.url,
            decode_responses=True,
            single_connection_client=True,
            socket_connect_timeout=5,
            socket_timeout=self.block_ms / 1000 + 10,
        )

    async def stop(self) -> None:
        """End the reader: woken out of its blocking read, it returns (cancelling a blocked XREAD instead can
        leave the task waiting on its connection)."""
        self._stopping = True
        if self._ticker is not None:
            self._ticker.cancel()
        task = self._task
        if task is not None and not task.done():
            self._wake()
            await asyncio.wait({task}, timeout=self.block_ms / 1000 + 2)
            if not task.done():
                task.cancel()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.aclose()
        if task is not None:
            await asyncio.wait({task}, timeout=2)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: no "never retrieved" noise at shutdown
        with contextlib.suppress(Exception):
            await self.pool.delete(self.wake_key)

    @property
    def ready(self) -> bool:
        """The reader runs and reaches Redis, and this process is below 90 % of its stream cap."""
        running = self._task is not None and not self._task.done()
        return running and self.healthy and not self.closing and self.open < SATURATED * self.max_streams

    def stats(self) -> dict[str, Any]:
        return {
            "open": self.open,
            "max": self.max_streams,
            "max_per_client": self.max_per_client,
            "jobs_followed": len(self.feeds),
            "clients": len(self.per_client),
            "dropped_slow_clients": self.dropped,
            "reader": "ok" if self.healthy else "unavailable",
        }

    # --- clients -------------------------------------------------------------------------------------------------

    def subscribe(self, job_id: str, client: str) -> Subscriber:
        """Register a client of ``job_id`` (before its history is read, so that no event falls in between).
        Raises :class:`StreamsSaturatedError` / :class:`TooManyStreamsError` at the caps."""
        if self.closing:
            raise StreamsSaturatedError("this API process is stopping")
        if self.open >= self.max_streams:
            raise StreamsSaturatedError(f"this API process serves {self.open} event streams, its maximum")
        if self.per_client[client] >= self.max_per_client:
            raise TooManyStreamsError(
                f"this client holds {self.per_client[client]} event streams, the most one client may; "
                "close one, or poll GET /jobs/{id}"
            )
        sub = Subscriber(job_id, client, self.queue_size)
        self.per_client[client] += 1
        self.open += 1
        self.feeds.setdefault(job_id, Feed()).subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub.closed:
            return
        sub.closed = True
        self.open -= 1
        self.per_client[sub.client] -= 1
        if self.per_client[sub.client] <= 0:
            del self.per_client[sub.client]
        feed = self.feeds.get(sub.job_id)
        if feed is not None:
            feed.subscribers.discard(sub)
            if not feed.subscribers:
                del self.feeds[sub.job_id]

    async def follow(
        self, sub: Subscriber, after: str | None, terminal: str | None = None
    ) -> AsyncIterator[bytes]:
        """The SSE body of one client: its job's history after ``after`` (a ``Last-Event-ID``), then live events,
        until ``end``. ``terminal``: the job's status when it was looked up, if finished (an ``end`` then follows
        the history at once; should the stream lack it, one is made from the status). Redis going away while
        the history is read ends the stream (the client reconnects with ``Last-Event-ID``)."""
        yield b"retry: 2000\n\n"
        try:
            async for chunk in self._follow(sub, after, terminal):
                yield chunk
        except redis.RedisError as e:
            log.warning("event stream of job %s ended: Redis unavailable (%s)", sub.job_id, type(e).__name__)

    async def _follow(self, sub: Subscriber, after: str | None, terminal: str | None) -> AsyncIterator[bytes]:
        key = events_key(sub.job_id)
        last = parse_id(after) if after else (0, 0)
        start = "(" + after if after else "-"
        replayed, tail = False, []
        while True:  # history, page by page; the first page with the stream's last entry, atomically
            if not replayed:
                async with self.pool.pipeline(transaction=True) as pipe:
                    pipe.xrange(key, start, "+", count=PAGE)
                    pipe.xrevrange(key, "+", "-", count=1)
                    page, tail = await pipe.execute()
            else:
                page = await self.pool.xrange(key, start, "+", count=PAGE)
            frames = [encode(eid, fields) for eid, fields in page]
            if frames:
                replayed, last = True, parse_id(page[-1][0])
                ended = next((i for i, f in enumerate(frames) if f[2]), None)
                if ended is not None:
                    yield b"".join(f[1] for f in frames[: ended + 1])
                    return
                yield b"".join(f[1] for f in frames)
            if len(page) < PAGE:
                break
            start = "(" + page[-1][0]
        if not replayed:
            end_id = parse_id(tail[0][0]) if tail else (0, 0)
            if tail and tail[0][1].get("type") == "end":  # the client has had everything, end included
                yield encode(*tail[0])[1]
                return
            last = min(last, end_id)  # a Last-Event-ID beyond the stream's end means its end
        self._go_live(sub, last)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 2.0 if terminal else None
        q = sub.queue
        while True:
            if give_up is None:  # (the hub's ticker puts a keep-alive into an idle queue every few seconds)
                first = await q.get()
            else:
                try:
                    async with asyncio.timeout(max(0.0, give_up - loop.time())):
                        first = await q.get()
                except TimeoutError:  # finished, and the stream has no end
                    yield b"event: end\ndata: " + json.dumps({"status": terminal}).encode() + b"\n\n"
                    return
            batch = [first]
            while not q.empty():
                batch.append(q.get_nowait())
            out, end, ping = [], False, False
            for sid, body, is_end in batch:
                if sid is None:  # a keep-alive, or the wake-up of a client closed by the hub
                    ping = ping or bool(body)
                    continue
                if sid <= last:  # already sent (history, or a re-read after a rewind)
                    continue
                last = sid
                out.append(body)
                if is_end:
                    end = True
                    break
            if out:
                yield b"".join(out)
            elif ping:
                yield KEEPALIVE
            if end or (sub.dropped and q.empty()):
                return

    def _go_live(self, sub: Subscriber, covered: StreamId) -> None:
        """The client has every event up to ``covered``: make sure the hub reads its job from there on."""
        feed = self.feeds.get(sub.job_id)
        if feed is None or sub.closed:
            return
        # a rewind (a client whose history ends before the cursor) re-reads a little; clients skip what they had
        if feed.cursor is None or covered < feed.cursor:
            feed.cursor = covered
            self._wake()

    # --- the reader ----------------------------------------------------------------------------------------------

    async def _keepalives(self) -> None:
        """Every ``keepalive`` seconds, a keep-alive to each idle client: one timer for all, not one per client."""
        while True:
            await asyncio.sleep(self.keepalive)
            for feed in list(self.feeds.values()):
                for sub in feed.subscribers:
                    if sub.queue.empty():
                        sub.queue.put_nowait(PING)

    def _wake(self) -> None:
        """Interrupt the reader's blocking XREAD so that it re-reads with the new set of streams."""
        if not self._reading or self._wake_pending:
            return
        self._wake_pending = True
        task = asyncio.create_task(self._send_wake())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_wake(self) -> None:
        try:
            async with self.pool.pipeline(transaction=False) as pipe:
                pipe.xadd(self.wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.expire(self.wake_key, 3600)
                await pipe.execute()
        except redis.RedisError:  # the read ends at its block timeout anyway
            pass

    async def _run(self) -> None:
        delay = 0.1
        while not self._stopping:
            streams: dict[str, str] = {self.wake_key: self._wake_cursor}
            issued: dict[str, tuple[Feed, StreamId]] = {}
            for job_id, feed in self.feeds.items():
                if feed.cursor is not None:
                    streams[events_key(job_id)] = format_id(feed.cursor)
                    issued[job_id] = (feed, feed.cursor)
            self._reading = True
            try:
                assert self._conn is not None
                if not self.healthy:  # (re)connected: say so now, not when the first blocking read returns
                    await self._conn.ping()
                    self.healthy = True
                reply = await self._conn.xread(streams, count=PAGE, block=self.block_ms)  # type: ignore[arg-type]
            except Exception as e:  # noqa: BLE001 - Redis away, or the client in a bad state: a new connection
                if self._stopping:
                    return
                if self.healthy or delay == 0.1:
                    log.warning("event reader: Redis unavailable (%s); retrying", type(e).__name__)
                self.healthy = False
                with contextlib.suppress(Exception):
                    await self._conn.aclose()  # type: ignore[union-attr]
                self._conn = self._connect()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            finally:
                self._reading = False
                self._wake_pending = False
            if self._stopping:
                return
            self.healthy, delay = True, 0.1
            items: Any = reply.items() if isinstance(reply, dict) else (reply or [])
            for key, entries in items:
                if key == self.wake_key:
                    self._wake_cursor = entries[-1][0] if entries else self._wake_cursor
                    continue
                await self._dispatch(key[len(P) + 4 : -len(":events")], entries, issued)

    async def _dispatch(
        self, job_id: str, entries: list[Any], issued: dict[str, tuple[Feed, StreamId]]
    ) -> None:
        feed = self.feeds.get(job_id)
        if not entries or job_id not in issued or issued[job_id][0] is not feed or feed is None:
            return  # the job's clients left (or came back as a new feed) while the read was out
        frames = [encode(eid, fields) for eid, fields in entries]
        if feed.cursor == issued[job_id][1]:  # not rewound meanwhile by a new client
            feed.cursor = frames[-1][0]
        subscribers = list(feed.subscribers)
        for i, sub in enumerate(subscribers):
            if i and i % SLICE == 0:
                # each woken client is a send: let the loop serve other requests between slices, so that an
                # event for 1,000 clients is not one stall of the whole process
                await asyncio.sleep(0)
            if sub.closed:
                continue
            if not sub.push(frames):
                feed.subscribers.discard(sub)
                self.dropped += 1
                log.info("event stream of job %s: a client fell behind and was dropped", job_id)


class EventStreamResponse(StreamingResponse):
    """The SSE response of one subscriber: whatever ends it (``end``, a disconnect, an error), the subscriber
    leaves the hub."""

    def __init__(self, hub: EventHub, sub: Subscriber, body: AsyncIterator[bytes]) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.hub, self.sub = hub, sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hub.unsubscribe(self.sub)
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


def end_streams_on_signals(hub: EventHub) -> Callable[[], None]:
    """On SIGTERM / SIGINT, end every event stream before the server's own handler runs: uvicorn stops only once
    its open responses end, and an event stream would not (``docker compose stop`` would wait for its kill).
    Chains the handler the server installed (if any); returns what restores it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(sig)
        if not callable(prev):  # not under a server that handles it: leave the default alone
            continue

        def handler(signum: int, frame: Any, prev: Callable[..., Any] = prev) -> None:
            loop.call_soon_threadsafe(hub.close_all)
            prev(signum, frame)

        previous[sig] = prev
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, prev in previous.items():
            signal.signal(sig, prev)

    return restore
