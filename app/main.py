"""The FastAPI app: notes API, probes, metrics. Built by create_app(settings); nothing runs at import."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

import psycopg
import redis.asyncio as aioredis
import structlog
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from app import __version__
from app.jobs import STREAM, STREAM_MAXLEN, event
from app.observability import Metrics, ObservabilityMiddleware
from app.settings import Settings

if TYPE_CHECKING:
    from app.tracing import Tracing

CACHE_TTL = 60
log = structlog.get_logger("app")


class NoteIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(default="", max_length=10_000)


class Note(NoteIn):
    id: int
    created_at: str
    # Written by the worker (app.worker); null until it has processed the note.
    words: int | None = None
    summary: str | None = None
    tags: list[str] | None = None
    processed_at: str | None = None


class DependencyDown(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def create_app(settings: Settings, tracing: Tracing | None = None) -> FastAPI:
    """The app; with `tracing` (app.tracing.start, None when tracing is off) its requests are traced."""
    metrics = Metrics(settings.git_sha)  # series labelled by revision: `deploy.bake` reads them
    # "seen": the dependencies answered once (readiness, below); "draining": SIGTERM arrived (app.__main__);
    # "inject": adds the trace context to a stream entry (tracing on).
    state: dict[str, Any] = {"started": False, "seen": False, "draining": False, "inject": None}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pool = AsyncConnectionPool(
            settings.database_url,
            min_size=1,
            max_size=10,
            open=False,
            timeout=settings.ready_timeout * 2,
            check=AsyncConnectionPool.check_connection,
            kwargs={"connect_timeout": max(1, int(settings.ready_timeout)), "row_factory": dict_row},
        )
        await pool.open(wait=False)
        cache = aioredis.from_url(
            settings.redis_url,
            socket_timeout=settings.ready_timeout,
            socket_connect_timeout=settings.ready_timeout,
        )
        state.update(pool=pool, cache=cache, started=True)
        log.info("started", git_sha=settings.git_sha, version=__version__)
        try:
            yield
        finally:
            # uvicorn has stopped accepting and drained in-flight requests before we get here.
            state["started"] = False
            await cache.aclose()
            await pool.close(timeout=5)
            log.info("stopped")

    app = FastAPI(title="conveyor-demo notes", version=__version__, lifespan=lifespan, docs_url=None)
    app.state.drain = lambda: state.update(draining=True)  # called on SIGTERM by the server
    app.state.draining = lambda: bool(state["draining"])
    trace_ids = None
    if tracing is not None:
        from app.tracing import current_ids, inject

        state["inject"], trace_ids = inject, current_ids
        tracing.instrument_app(app)
    app.add_middleware(
        ObservabilityMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        trace_ids=trace_ids,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"error": "invalid request", "details": errors}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(DependencyDown)
    async def unavailable(_: Request, exc: DependencyDown) -> JSONResponse:
        return JSONResponse(
            {"error": f"{exc.name} unavailable"}, status_code=503, headers={"Retry-After": "1"}
        )

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers. No dependency is called."""
        return {"status": "ok"}

    @app.get("/startup")
    async def startup() -> JSONResponse:
        return JSONResponse({"started": state["started"]}, status_code=200 if state["started"] else 503)

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness protects against a broken instance, not a shared dependency: it fails while the
        process drains (SIGTERM) and until Postgres and Redis have answered once (a release that cannot
        reach them never gets traffic). A later blip of either leaves every instance ready ("degraded"):
        taking them all out of rotation would turn a blip into an outage; the routes answer 503 with
        Retry-After meanwhile."""
        if state["draining"]:
            return JSONResponse({"status": "draining"}, status_code=503)
        checks = dict(
            zip(("postgres", "redis"), await asyncio.gather(_pg_ok(state), _redis_ok(state)), strict=True)
        )
        failed = [name for name, ok in checks.items() if not ok]
        state["seen"] = state["seen"] or not failed
        status = "ready" if not failed else "degraded" if state["seen"] else "not ready"
        body = {"status": status, "checks": checks, "failed": failed}
        return JSONResponse(body, status_code=503 if status == "not ready" else 200)

    async def _pg_ok(st: dict[str, Any]) -> bool:
        try:
            await asyncio.wait_for(_select_one(st["pool"]), settings.ready_timeout)
            return True
        except (
            asyncio.TimeoutError,
            PoolTimeout,
            psycopg.Error,
            OSError,
        ):  # asyncio's is not builtin on 3.10
            return False

    async def _redis_ok(st: dict[str, Any]) -> bool:
        try:
            return bool(await asyncio.wait_for(st["cache"].ping(), settings.ready_timeout))
        except (asyncio.TimeoutError, RedisError, OSError):
            return False

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"git_sha": settings.git_sha, "image_digest": settings.image_digest, "version": __version__}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/notes", status_code=201)
    async def create_note(note: NoteIn) -> Note:
        row = await _db(
            state,
            "INSERT INTO notes (title, body) VALUES (%s, %s)"
            " RETURNING id, title, body, created_at, words, summary, tags, processed_at",
            (note.title, note.body),
        )
        created = _note(row[0])
        await _publish(state, created.id)
        return created

    @app.get("/notes")
    async def list_notes(
        limit: Annotated[int, Query(ge=1, le=100)] = 20, offset: Annotated[int, Query(ge=0)] = 0
    ) -> list[Note]:
        rows = await _db(
            state,
            "SELECT id, title, body, created_at, words, summary, tags, processed_at FROM notes"
            " ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",
            (limit, offset),
        )
        return [_note(r) for r in rows]

    @app.get("/notes/{note_id}")
    async def get_note(note_id: Annotated[int, Path(ge=1, le=2**63 - 1)]) -> Note:
        key = f"note:{note_id}"
        cached = await _cache_get(state, key)
        if cached is not None:
            return Note.model_validate_json(cached)
        rows = await _db(
            state,
            "SELECT id, title, body, created_at, words, summary, tags, processed_at FROM notes WHERE id = %s",
            (note_id,),
        )
        if not rows:
            raise HTTPException(404, f"note {note_id} not found")
        note = _note(rows[0])
        if note.processed_at is not None:  # final: a copy cached before the worker ran would go stale
            await _cache_set(state, key, note.model_dump_json())
        return note

    return app


def _note(row: dict[str, Any]) -> Note:
    processed_at = row["processed_at"]
    return Note(
        id=row["id"],
        title=row["title"],
        body=row["body"],
        created_at=row["created_at"].isoformat(),
        words=row["words"],
        summary=row["summary"],
        tags=row["tags"],
        processed_at=processed_at.isoformat() if processed_at is not None else None,
    )


async def _select_one(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        await conn.execute("SELECT 1")


async def _db(state: dict[str, Any], sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    try:
        async with state["pool"].connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall() if cur.description else []
    except (PoolTimeout, psycopg.OperationalError):
        raise DependencyDown("postgres") from None


async def _publish(state: dict[str, Any], note_id: int) -> None:
    # The note is committed: a lost event only delays it (the worker's sweep finds unprocessed notes).
    fields = event(note_id)
    if state["inject"] is not None:
        state["inject"](fields)  # the request's trace continues in the worker's job
    try:
        await state["cache"].xadd(STREAM, fields, maxlen=STREAM_MAXLEN, approximate=True)
    except (RedisError, OSError):
        log.warning("event not published", stream=STREAM, note_id=note_id)


async def _cache_get(state: dict[str, Any], key: str) -> bytes | None:
    # The cache is an optimisation: when Redis is down, reads go to Postgres.
    try:
        value: bytes | None = await state["cache"].get(key)
        return value
    except (RedisError, OSError):
        log.warning("cache unavailable", op="get")
        return None


async def _cache_set(state: dict[str, Any], key: str, value: str) -> None:
    try:
        await state["cache"].set(key, value, ex=CACHE_TTL)
    except (RedisError, OSError):
        log.warning("cache unavailable", op="set")
