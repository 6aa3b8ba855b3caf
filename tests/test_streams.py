"""Event streams at scale, end to end: a real Valkey, a real worker, the API over HTTP, and up to 1,000 SSE clients
on raw sockets (``GET /jobs/{id}/events``).

Each stream used to hold one of the API's 100 pooled Redis connections for as long as it was open, so a few
hundred streams turned ``GET /jobs`` into 503s. Now one reader per API process serves them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time

import httpx
import pytest
from support.servers import Service, start_api, wait_until

from converter.demo import MixtralShape, write_mixtral_checkpoint
from jobs.store import events_key

RATE = 4_000_000  # bytes/s per job: the blocking job runs long enough to open every stream behind it
N = 1000


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    env = {
        "CKPT_CONVERT_MAX_BYTES_PER_SECOND": str(RATE),
        "CKPT_CONVERT_PROGRESS_INTERVAL": "0.1",
        # every client of this module comes from 127.0.0.1: one client as far as the per-client cap can tell
        "CKPT_CONVERT_MAX_STREAMS_PER_CLIENT": str(2 * N),
    }
    with Service(tmp_path_factory.mktemp("streams"), **env) as s:
        yield s


@pytest.fixture(scope="module", autouse=True)
def many_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 3 * N + 1000) if hard != resource.RLIM_INFINITY else 3 * N + 1000
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def local_job(source, dest, **kw):
    return {"source": str(source), "destination": {"local_path": str(dest)}, **kw}


class SseClient:
    """One SSE client on its own connection (raw asyncio socket: a thousand of them cost the test little)."""

    def __init__(self, url: str, path: str, headers: dict[str, str] | None = None) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port, self.path, self.headers = host, int(port), path, headers or {}
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self.events: list[tuple[str | None, str, object]] = []  # (id, event, data)
        self.ended = asyncio.Event()
        self.got_event = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> int:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        self.writer.write(f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n{extra}\r\n".encode())
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        self.status = int(lines[0].split()[1])
        self.response_headers = {
            k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        return self.status

    async def body(self) -> bytes:
        """The whole (non-streaming) body of an answer that is not a stream."""
        n = int(self.response_headers.get("content-length", "0"))
        return await self.reader.readexactly(n)

    async def run(self) -> None:
        """Read events (chunked transfer encoding, then SSE frames) until ``end`` or the server closes."""
        raw, text, last = b"", b"", False
        try:
            while not last and (chunk := await self.reader.read(65536)):
                raw += chunk
                while not last:  # de-chunk
                    eol = raw.find(b"\r\n")
                    if eol < 0:
                        break
                    size = int(raw[:eol].split(b";")[0], 16)
                    if len(raw) < eol + 2 + size + 2:
                        break
                    text += raw[eol + 2 : eol + 2 + size]
                    raw = raw[eol + 2 + size + 2 :]
                    last = size == 0  # the response's end
                *frames, text = text.split(b"\n\n")
                for f in frames:
                    self._frame(f.decode())
        finally:
            self.close()

    def _frame(self, frame: str) -> None:
        fields: dict[str, str] = {}
        for line in frame.split("\n"):
            if line and not line.startswith(":"):
                k, _, v = line.partition(": ")
                fields[k] = v
        if "event" in fields:
            data = json.loads(fields["data"]) if "data" in fields else None
            self.events.append((fields.get("id"), fields["event"], data))
            self.got_event.set()
            if fields["event"] == "end":
                self.ended.set()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def ids(self) -> list[str | None]:
        return [i for i, _, _ in self.events]


async def open_crowd(url: str, path: str, n: int, headers=None) -> tuple[list[SseClient], list[asyncio.Task]]:
    clients = [SseClient(url, path, headers) for _ in range(n)]
    sem = asyncio.Semaphore(100)  # a burst of 1,000 connects at once would only overflow the listen backlog

    async def one(c: SseClient) -> None:
        async with sem:
            await c.connect()

    await asyncio.gather(*(one(c) for c in clients))
    return clients, [asyncio.create_task(c.run()) for c in clients if c.status == 200]


def stream_ids(svc: Service, job_id: str) -> list[str]:
    return [eid for eid, _ in svc.store.r.xrange(events_key(job_id))]


# --- 1,000 streams -------------------------------------------------------------------------------------------------


def test_a_thousand_streams_leave_get_jobs_at_200_and_every_client_gets_every_event(svc):
    """1,000 clients follow a queued job; GET /jobs stays 200 while they are open; when the job runs, each client
    gets every event of it, in order, once, live, and then ``end``."""
    blocker_src = write_mixtral_checkpoint(
        svc.root / "blocker", MixtralShape(layers=4, experts=8, hidden=256, intermediate=1024, vocab=1024)
    )
    small_src = write_mixtral_checkpoint(
        svc.root / "small", MixtralShape(layers=2, experts=4, hidden=256, intermediate=512, vocab=1024)
    )
    blocker = svc.http.post("/convert", json=local_job(blocker_src, svc.root / "blocker-out")).json()
    wait_until(lambda: svc.job(blocker["id"])["status"] == "running", what="blocker running")
    job = svc.http.post("/convert", json=local_job(small_src, svc.root / "small-out")).json()
    assert job["status"] == "queued"  # the one worker is busy with the blocker

    async def scenario() -> tuple[list[SseClient], dict]:
        t0 = time.monotonic()
        clients, tasks = await open_crowd(svc.url, f"/jobs/{job['id']}/events", N)
        assert [c.status for c in clients] == [200] * N
        opened = time.monotonic() - t0
        # every client has the history (status: queued) before the job moves
        await asyncio.wait_for(asyncio.gather(*(c.got_event.wait() for c in clients)), 30)
        assert svc.job(job["id"])["status"] == "queued", "the job must start after every stream is open"
        async with httpx.AsyncClient(base_url=svc.url, timeout=30) as http:
            answers = await asyncio.gather(
                *(http.get("/jobs", params={"limit": 10}) for _ in range(100)),
                *(http.get(f"/jobs/{job['id']}") for _ in range(100)),
            )
            assert sorted({r.status_code for r in answers}) == [200], [
                r.text for r in answers if r.status_code != 200
            ][:3]
            status = (await http.get("/status")).json()
            ready = await http.get("/readyz")
            # the job starts: cancel the blocker
            assert (await http.delete(f"/jobs/{blocker['id']}")).status_code == 202
            await asyncio.wait_for(asyncio.gather(*(c.ended.wait() for c in clients)), 60)
            await asyncio.gather(*tasks)
            after = (await http.get("/status")).json()
        return clients, {"opened": opened, "status": status, "ready": ready, "after": after}

    clients, seen = asyncio.run(scenario())
    assert seen["status"]["streams"]["open"] == N and seen["status"]["streams"]["jobs_followed"] == 1
    assert seen["ready"].status_code == 200 and seen["ready"].json() == {"status": "ok"}
    assert seen["opened"] < 30, seen["opened"]
    final = svc.wait(job["id"])
    assert final["status"] == "succeeded"
    everything = stream_ids(svc, job["id"])
    assert len(everything) >= 6  # queued, running, progress..., succeeded, end
    for c in clients:
        assert c.ids() == everything  # each event once, in order, none missing
    kinds = [e for _, e, _ in clients[0].events]
    assert kinds[0] == "status" and kinds[-1] == "end" and "progress" in kinds
    assert [d["status"] for _, e, d in clients[0].events if e == "status"] == [
        "queued",
        "running",
        "succeeded",
    ]
    # every stream closed: nothing left in the hub
    wait_until(
        lambda: svc.http.get("/status").json()["streams"]["open"] == 0, timeout=10, what="streams closed"
    )
    assert svc.http.get("/status").json()["streams"]["jobs_followed"] == 0


# --- history, resume, a finished job ---------------------------------------------------------------------------


def test_a_finished_job_gets_its_history_and_end_at_once(svc):
    src = write_mixtral_checkpoint(svc.root / "tiny", MixtralShape())
    job = svc.http.post("/convert", json=local_job(src, svc.root / "tiny-out")).json()
    svc.wait(job["id"])
    everything = stream_ids(svc, job["id"])

    async def scenario():
        t0 = time.monotonic()
        full = SseClient(svc.url, f"/jobs/{job['id']}/events")
        assert await full.connect() == 200
        await asyncio.wait_for(full.run(), 10)
        # resumed: only what follows
        resumed = SseClient(svc.url, f"/jobs/{job['id']}/events", {"Last-Event-ID": everything[1]})
        assert await resumed.connect() == 200
        await asyncio.wait_for(resumed.run(), 10)
        # resumed after the end (a client that had everything): the end again, and the stream closes
        past = SseClient(svc.url, f"/jobs/{job['id']}/events", {"Last-Event-ID": everything[-1]})
        assert await past.connect() == 200
        await asyncio.wait_for(past.run(), 10)
        return full, resumed, past, time.monotonic() - t0

    full, resumed, past, took = asyncio.run(scenario())
    assert full.ids() == everything and full.events[-1][1] == "end"
    assert resumed.ids() == everything[2:]
    assert [e for _, e, _ in past.events] == ["end"] and past.ids() == everything[-1:]
    assert took < 5  # no keep-alive wait: history and end, no live subscription
    assert svc.http.get("/status").json()["streams"]["jobs_followed"] == 0


def test_bad_last_event_id_is_422(svc):
    job_id = svc.http.get("/jobs").json()["data"][0]["id"]
    r = svc.http.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": "0-0; DROP"})
    assert r.status_code == 422 and r.json()["detail"]["type"] == "InvalidRequestError"


def test_streams_survive_a_redis_restart(svc):
    """The reader reconnects and resumes where it stopped: events written after the restart reach every client."""
    job_id, _ = svc.store.create({"request": {}, "source": "x", "model_type": "mixtral", "destination": {}})

    async def scenario():
        clients, tasks = await open_crowd(svc.url, f"/jobs/{job_id}/events", 5)
        await asyncio.wait_for(asyncio.gather(*(c.got_event.wait() for c in clients)), 10)
        svc.valkey.stop()
        await asyncio.sleep(1)
        async with httpx.AsyncClient(base_url=svc.url, timeout=30) as http:
            assert (await http.get("/readyz")).json() == {"status": "not ok"}
            svc.valkey.start()
            await asyncio.sleep(0.5)
            await asyncio.to_thread(svc.store.transition, job_id, "queued", "running")
            await asyncio.to_thread(svc.store.progress, job_id, {"phase": "converting", "bytes_done": 1})
            await asyncio.to_thread(svc.store.transition, job_id, "running", "succeeded")
            await asyncio.wait_for(asyncio.gather(*(c.ended.wait() for c in clients)), 30)
            await asyncio.gather(*tasks)
            ready = await http.get("/readyz")
        return clients, ready

    clients, ready = asyncio.run(scenario())
    everything = stream_ids(svc, job_id)
    assert [e for _, e, _ in clients[0].events] == ["status", "status", "progress", "status", "end"]
    assert all(c.ids() == everything for c in clients)
    wait_until(lambda: svc.http.get("/readyz").status_code == 200, timeout=35, what="ready again")


# --- caps ------------------------------------------------------------------------------------------------------


def test_caps_per_client_429_and_per_process_503_and_readyz_saturation(svc):
    tokens = "a:read:tok-a,b:read:tok-b"
    env = {**svc.env, "CKPT_CONVERT_API_TOKENS": tokens, "CKPT_CONVERT_MAX_STREAMS_PER_CLIENT": "3",
           "CKPT_CONVERT_MAX_STREAMS": "4"}  # fmt: skip
    api, url = start_api(env, svc.root / "api-caps.log")
    job_id, _ = svc.store.create({"request": {}, "source": "x", "model_type": "mixtral", "destination": {}})
    path = f"/jobs/{job_id}/events"
    a, b = {"Authorization": "Bearer tok-a"}, {"Authorization": "Bearer tok-b"}

    async def scenario():
        out = {}
        held = [SseClient(url, path, a) for _ in range(3)]
        assert [await c.connect() for c in held] == [200] * 3
        fourth = SseClient(url, path, a)
        out["429"] = (await fourth.connect(), fourth.response_headers, json.loads(await fourth.body()))
        other = SseClient(url, path, b)
        assert await other.connect() == 200  # another token has its own share: 4 open, the process's maximum
        full = SseClient(url, path, b)
        out["503"] = (await full.connect(), full.response_headers, json.loads(await full.body()))
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            out["saturated"] = (await http.get("/readyz")).json()
            out["get"] = (await http.get("/jobs", headers=a)).status_code
            held[0].close()
            other.close()
            await asyncio.sleep(0.5)
            again = SseClient(url, path, a)
            out["again"] = await again.connect()
            out["ready"] = (await http.get("/readyz")).json()
            again.close()
        for c in held:
            c.close()
        return out

    try:
        out = asyncio.run(scenario())
    finally:
        api.stop()
    status, headers, body = out["429"]
    assert status == 429 and headers["retry-after"] and body["detail"]["type"] == "TooManyStreamsError"
    status, headers, body = out["503"]
    assert status == 503 and headers["retry-after"] and body["detail"]["type"] == "StreamsSaturatedError"
    assert out["saturated"] == {"status": "not ok"} and out["get"] == 200
    assert out["again"] == 200 and out["ready"] == {"status": "ok"}


def test_sigterm_ends_the_streams_and_the_api_stops_at_once(svc):
    """uvicorn stops only once its responses end: the streams end at SIGTERM (clients resume elsewhere)."""
    api, url = start_api(svc.env, svc.root / "api-term.log")
    job_id, _ = svc.store.create({"request": {}, "source": "x", "model_type": "mixtral", "destination": {}})

    async def scenario():
        clients, tasks = await open_crowd(url, f"/jobs/{job_id}/events", 50)
        await asyncio.wait_for(asyncio.gather(*(c.got_event.wait() for c in clients)), 10)
        t0 = time.monotonic()
        api.p.terminate()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)  # each response ended (its last chunk came)
        await asyncio.to_thread(api.p.wait, 10)
        return clients, time.monotonic() - t0

    try:
        clients, took = asyncio.run(scenario())
    finally:
        api.stop()
    assert took < 5 and api.p.returncode is not None
    assert all([e for _, e, _ in c.events] == ["status"] for c in clients)


# --- a client that does not read is dropped, not buffered without bound -----------------------------------------


def test_a_slow_client_is_dropped_and_resumes_with_last_event_id(svc):
    """In process, against the real Valkey: a subscriber whose queue is full is dropped (its stream ends after
    what it had), the others go on; reconnecting with Last-Event-ID gives the rest."""
    import redis.asyncio as aredis

    from service.streams import EventHub

    job_id, _ = svc.store.create({"request": {}, "source": "x", "model_type": "mixtral", "destination": {}})

    async def scenario():
        pool = aredis.Redis.from_url(svc.valkey.url, decode_responses=True)
        hub = EventHub(svc.valkey.url, pool, max_streams=10, max_per_client=10, queue_size=3, block_ms=500)
        await hub.start()
        try:
            slow, fast = hub.subscribe(job_id, "slow"), hub.subscribe(job_id, "fast")
            slow_body, fast_body = hub.follow(slow, None), hub.follow(fast, None)
            got_slow = [await anext(slow_body), await anext(slow_body)]  # retry, then the history (queued)
            got_fast = [await anext(fast_body), await anext(fast_body)]
            reading = asyncio.create_task(_drain(fast_body, got_fast))
            nxt = asyncio.create_task(anext(slow_body))  # the slow client goes live ...
            await asyncio.sleep(0.2)
            await asyncio.to_thread(svc.store.transition, job_id, "queued", "running")
            for i in range(20):
                await asyncio.to_thread(svc.store.progress, job_id, {"phase": "converting", "bytes_done": i})
            got_slow.append(await nxt)  # ... reads one batch, and then nothing while 20 events arrive
            await asyncio.sleep(1.5)
            await asyncio.to_thread(svc.store.transition, job_id, "running", "succeeded")
            await asyncio.wait_for(reading, 10)
            async for chunk in slow_body:  # what it had queued, then the stream ends
                got_slow.append(chunk)
            stats = hub.stats()
            hub.unsubscribe(slow)
            hub.unsubscribe(fast)
            return b"".join(got_slow), b"".join(got_fast), slow.dropped, stats
        finally:
            await hub.stop()
            await pool.aclose()

    slow, fast, dropped, stats = asyncio.run(scenario())
    assert dropped and stats["dropped_slow_clients"] == 1
    everything = stream_ids(svc, job_id)
    fast_ids = [ln[4:] for ln in fast.decode().split("\n") if ln.startswith("id: ")]
    assert fast_ids == everything
    slow_ids = [ln[4:] for ln in slow.decode().split("\n") if ln.startswith("id: ")]
    assert slow_ids == everything[: len(slow_ids)] and len(slow_ids) < len(everything)
    # it resumes where it stopped
    with httpx.stream("GET", f"{svc.url}/jobs/{job_id}/events", headers={"Last-Event-ID": slow_ids[-1]}) as r:
        rest = [ln[4:] for ln in r.iter_lines() if ln.startswith("id: ")]
    assert slow_ids + rest == everything


async def _drain(body, into: list) -> None:
    async for chunk in body:
        into.append(chunk)


@pytest.fixture(autouse=True)
def _no_leftover_streams(svc):
    yield
    with contextlib.suppress(Exception):
        wait_until(
            lambda: svc.http.get("/status").json()["streams"]["open"] == 0, timeout=10, what="no streams"
        )
