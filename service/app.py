"""The FastAPI app. ``uvicorn service.app:app`` (REDIS_URL must point at the Redis the workers use)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
import redis.asyncio as aredis
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from starlette.types import ASGIApp, Receive, Scope, Send

from converter import __version__
from converter.errors import ConversionError
from jobs.settings import Settings, get_settings
from jobs.store import AsyncJobReader, store_for

from .errors import ApiError, error_body
from .routes import health, jobs, pages, rules
from .routes.jobs import FinishedJobs
from .streams import EventHub, end_streams_on_signals

log = logging.getLogger(__name__)

DESCRIPTION = """
Converts model checkpoints between the layout they are published in on the Hugging Face Hub and the layout
transformers v5 / NeMo AutoModel load (experts stacked, gate and up fused), bit for bit, asynchronously.

* **CI** posts `POST /convert` and follows `GET /jobs/{id}` or its event stream.
* **Tooling** reads `GET /rules/{model_type}`: exactly the rules the planner applies, as data.
* **Dashboards** read `GET /jobs` (`{data, count}`, newest first) and `GET /metrics`.

Errors are typed: the body is `{"detail": {"type", "message", ...}}` and each type has one status.
"""

#: what a page on an allowed origin (CKPT_CONVERT_CORS_ORIGINS) may send and read: the dashboard's and CI's calls
CORS_METHODS = ["GET", "POST", "DELETE", "OPTIONS"]
CORS_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "X-HF-Token"]
CORS_EXPOSE = ["Location", "Retry-After"]


class BodySizeLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return await self._too_large(send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return msg

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        body = b'{"detail":{"type":"RequestTooLarge","message":"request body too large"}}'
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


async def _ensure_indexes(settings: Settings) -> None:
    """Records created before an index existed join it (once per index version; a no-op after that), retried while
    Redis is away: the API starts without waiting for it."""
    while True:
        store = store_for(settings)
        try:
            await asyncio.to_thread(store.ensure_indexes)
            return
        except redis.RedisError:
            log.warning("job store unavailable: indexing older jobs again in 5 s")
        finally:
            store.r.close()
        await asyncio.sleep(5)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    backfill = asyncio.create_task(_ensure_indexes(settings))
    # no request holds a connection for long (event streams share one reader), but a burst of them may need
    # more than redis-py's default 100 at once (a BlockingConnectionPool would queue them instead: measured, it
    # costs GET /jobs a third of its throughput)
    pool = aredis.ConnectionPool.from_url(
        settings.redis,
        max_connections=1000,
        decode_responses=True,
        retry=AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), 8),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_connect_timeout=5,
    )
    app.state.aredis = aredis.Redis.from_pool(pool)
    app.state.reader = AsyncJobReader(app.state.aredis)
    app.state.finished = FinishedJobs()
    # event streams: one Redis reader for all clients of this process (no pool connection per client)
    app.state.hub = EventHub(
        settings.redis,
        app.state.aredis,
        max_streams=settings.max_streams,
        max_per_client=settings.max_streams_per_client,
    )
    await app.state.hub.start()
    restore_signals = end_streams_on_signals(app.state.hub)
    # everything allocated so far lives as long as the process: keep it out of the collector's way, so that
    # collections (the main source of latency tails under load) only walk per-request garbage
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        backfill.cancel()
        restore_signals()
        await app.state.hub.stop()
        await app.state.aredis.aclose()


def create_app() -> FastAPI:
    settings = get_settings()
    settings.check_bind()  # never published beyond this host without API tokens
    app = FastAPI(
        title="ckpt-convert",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "jobs", "description": "conversion jobs: submit, follow, cancel"},
            {"name": "rules", "description": "the conversion rules per model_type, as data"},
            {"name": "health", "description": "liveness, readiness, Prometheus metrics"},
        ],
    )

    @app.exception_handler(redis.RedisError)
    async def store_down(request: Request, exc: Exception) -> JSONResponse:
        body = {
            "detail": {
                "type": "ServiceUnavailableError",
                "message": f"job store unavailable ({type(exc).__name__})",
            }
        }
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})

    @app.exception_handler(ApiError)
    @app.exception_handler(ConversionError)
    async def typed_error(request: Request, exc: Exception) -> JSONResponse:
        status, body = error_body(exc)
        return JSONResponse(body, status_code=status, headers=getattr(exc, "headers", None))

    pages.install(app)  # the dashboard at / (HTML + static assets)
    app.include_router(jobs.router)
    app.include_router(rules.router)
    app.include_router(health.router)
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    if origins := settings.cors_origin_list:
        # outermost, so that every answer (a 413 too) carries the headers. Bearer tokens are headers, not
        # credentials in the CORS sense (cookies): allow_credentials stays off, and origins are exact (never "*")
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=CORS_METHODS,
            allow_headers=CORS_HEADERS,
            expose_headers=CORS_EXPOSE,
            allow_credentials=False,
            max_age=600,
        )
    return app


app = create_app()
