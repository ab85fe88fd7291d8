"""`python -m app worker`: a Redis Streams consumer that analyses new notes and writes the result to Postgres.

Delivery is at least once and the job is idempotent (a note already processed is skipped):

- an entry is XACKed only after the note's UPDATE committed; an entry whose worker died before that stays
  pending, and a live worker claims it (XAUTOCLAIM) once it has been idle for WORKER_CLAIM_IDLE seconds;
- on start, and after losing Redis or Postgres, a worker first re-reads its own pending entries (a
  restarted container keeps its hostname, and so its consumer name, when its pid is the same);
- every WORKER_SWEEP_INTERVAL seconds it also processes the notes Postgres still has unprocessed: their
  event never reached the stream (Redis was down when the note was created) or was trimmed away.

SIGTERM or SIGINT: the job in hand is finished, no new entry is read, the process exits 0. A liveness file
(app.heartbeat) is touched on every loop once Postgres is reachable with the migrated schema, about once a
second when idle; it is removed when the worker stops.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import psycopg
import redis
import structlog
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from app import heartbeat
from app.jobs import GROUP, STREAM, analyse, note_id, trace_context
from app.settings import Settings

if TYPE_CHECKING:
    from app.tracing import Tracing

log = structlog.get_logger("app.worker")

BLOCK_MS = 1000  # longest wait for a new entry: also the longest a stop waits for the read in flight
SWEEP_BATCH = 100
SWEEP_BATCHES = 10  # per round; a longer backlog (the notes written before the worker existed) takes
# several rounds, back to back, with new events read in between
BACKOFF = (0.5, 1.0, 2.0, 4.0, 5.0)  # seconds between attempts while Redis or Postgres is down
DEAD_CONSUMER_IDLE_MS = 3_600_000  # a consumer idle this long with nothing pending is gone: forget it
SCHEMA_PROBE = "SELECT words, summary, tags, processed_at FROM notes LIMIT 0"


class StartupError(Exception):
    """The worker cannot start; the message is one line for the operator."""


class Stop:
    """A stop flag that a signal handler may set.

    Not a threading.Event: its set() takes a lock, which a handler running while the main thread holds
    that lock (inside wait()) would wait for forever. Sleeps are sliced so a stop is seen within 0.1 s.
    """

    def __init__(self) -> None:
        self._stopped = False

    def set(self, *_: object) -> None:
        self._stopped = True

    def is_set(self) -> bool:
        return self._stopped

    def wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self._stopped and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(0.1, left))
        return self._stopped


class Worker:
    """One consumer of GROUP. Nothing connects before it is used (run() or process())."""

    def __init__(
        self,
        settings: Settings,
        *,
        stop: Stop,
        consumer: str | None = None,
        sweep_age: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        # app.tracing.start(); None when tracing is off. On, each entry is handled in a consumer span,
        # child of the span of the request that created the note.
        self.tracing = tracing
        self.stop = stop
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        # The sweep leaves notes younger than this to their event (processing twice is harmless, only
        # wasted work).
        self.sweep_age = sweep_age
        self.clock = clock
        self._pg: psycopg.Connection[tuple[Any, ...]] | None = None
        self._redis = redis.Redis.from_url(  # connects on first use
            settings.redis_url,
            socket_timeout=BLOCK_MS / 1000 + 5,
            socket_connect_timeout=max(1.0, settings.ready_timeout),
            retry=Retry(NoBackoff(), 1),  # once, for a pooled connection Redis closed; then back off
        )
        self._group_ready = False
        self._backlog_from: str | None = "0"  # own pending entries from this id; None: read new ones

    # --- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Process jobs until stopped. StartupError when Postgres is not usable within startup_timeout."""
        if self.tracing is None:
            self._run()
            return
        with self.tracing.untraced():  # only the jobs are traced (_handle), not the polling around them
            self._run()

    def _run(self) -> None:
        # The beat starts with the loop: fresh means working, not merely started. A file left by the
        # container before this one (an emptyDir outlives a container restart) must not vouch for us.
        self._forget_beat()
        try:
            if not self._wait_for_postgres():
                return
            log.info("worker started", consumer=self.consumer, stream=STREAM, group=GROUP)
            failures = 0
            next_sweep = self.clock()
            while not self.stop.is_set():
                self._beat()
                try:
                    if self.clock() >= next_sweep:
                        next_sweep = self.clock() + self.settings.worker_sweep_interval
                        if self._sweep():
                            next_sweep = self.clock()
                        self._claim_abandoned()
                    self._step()
                    failures = 0
                except (RedisError, OSError) as exc:
                    failures += 1
                    self._lost("redis", exc)
                    if "NOGROUP" in str(exc):  # the stream or group is gone (a Redis without persistence)
                        self._group_ready = False
                    self.stop.wait(BACKOFF[min(failures, len(BACKOFF)) - 1])
                except psycopg.OperationalError as exc:
                    failures += 1
                    self._lost("postgres", exc)
                    self._close_pg()
                    self.stop.wait(BACKOFF[min(failures, len(BACKOFF)) - 1])
                except Exception:  # a bug in a job: its entry stays pending and is retried when claimed
                    failures += 1
                    log.exception("job failed")
                    self.stop.wait(BACKOFF[min(failures, len(BACKOFF)) - 1])
            log.info("worker stopped", consumer=self.consumer)
        finally:
            self.close()
            self._forget_beat()  # a stopped worker is not alive

    def close(self) -> None:
        self._close_pg()
        self._redis.close()

    def _step(self) -> None:
        """Handle one entry: the next of our own pending ones while there are any, else a new one."""
        if self.stop.is_set():  # it may have come during the sweep
            return
        self._ensure_group()
        if self._backlog_from is not None:
            entry = self._read(self._backlog_from, block_ms=None)
            if entry is None:
                self._backlog_from = None
                return
            self._backlog_from = entry[0].decode()
        else:
            entry = self._read(">", block_ms=BLOCK_MS)
            if entry is None:
                return
        # An entry read while the stop arrived is already ours: finishing it (milliseconds) beats leaving
        # it pending until another worker's claim.
        self._handle(*entry)

    def _lost(self, name: str, exc: BaseException) -> None:
        log.warning(f"{name} unavailable", error=_one_line(exc))
        self._backlog_from = "0"  # what we read may not have been acknowledged

    def _forget_beat(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.settings.worker_heartbeat_file)

    def _beat(self) -> None:
        try:
            heartbeat.beat(self.settings.worker_heartbeat_file)
        except OSError as exc:  # the probe will say so; the work itself can go on
            log.warning("heartbeat not written", path=self.settings.worker_heartbeat_file, error=str(exc))

    # --- jobs --------------------------------------------------------------------------------------

    def _handle(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        if self.tracing is None:
            self._handle_entry(entry_id, fields)
            return
        attributes = {
            "messaging.system": "redis",
            "messaging.operation.type": "process",
            "messaging.destination.name": STREAM,
            "messaging.consumer.group.name": GROUP,
            "messaging.message.id": entry_id.decode(),
        }
        with self.tracing.job(f"process {STREAM}", trace_context(fields), attributes):
            self._handle_entry(entry_id, fields)

    def _handle_entry(self, entry_id: bytes, fields: dict[bytes, bytes] | None) -> None:
        nid = note_id(fields)
        if nid is None:
            log.warning("event skipped", entry=entry_id.decode(), reason="malformed or trimmed")
        else:
            self.process(nid)
        self._redis.xack(STREAM, GROUP, entry_id)

    def process(self, nid: int) -> bool:
        """Analyse note `nid` and store the result; False when it is gone or was already processed."""
        started = time.perf_counter()
        conn = self._db()
        with conn.transaction():
            row = conn.execute(
                "SELECT title, body, processed_at FROM notes WHERE id = %s FOR UPDATE", (nid,)
            ).fetchone()
            if row is None or row[2] is not None:
                log.info("note skipped", note_id=nid, reason="not found" if row is None else "processed")
                return False
            words = self._store(conn, nid, row[0], row[1])
        self._forget([nid])
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        log.info("note processed", note_id=nid, words=words, duration_ms=elapsed_ms)
        return True

    def _sweep(self) -> bool:
        """Process notes left unprocessed (their event was lost), a batch per transaction; True when
        there may be more."""
        conn = self._db()
        for _ in range(SWEEP_BATCHES):
            if self.stop.is_set():
                return False
            self._beat()
            with conn.transaction():
                rows = conn.execute(
                    "SELECT id, title, body FROM notes"
                    " WHERE processed_at IS NULL AND created_at <= now() - make_interval(secs => %s)"
                    " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                    (self.sweep_age, SWEEP_BATCH),
                ).fetchall()
                for nid, title, body in rows:
                    self._store(conn, nid, title, body)
            if rows:
                self._forget([r[0] for r in rows])
                log.info("notes swept", count=len(rows), first_id=rows[0][0], last_id=rows[-1][0])
            if len(rows) < SWEEP_BATCH:
                return False
        return True

    @staticmethod
    def _store(conn: psycopg.Connection[tuple[Any, ...]], nid: int, title: str, body: str) -> int:
        result = analyse(title, body)
        conn.execute(
            "UPDATE notes SET words = %s, summary = %s, tags = %s, processed_at = now() WHERE id = %s",
            (result.words, result.summary, result.tags, nid),
        )
        return result.words

    def _forget(self, ids: Iterable[int]) -> None:
        """Drop cached copies written before the note was processed (by an older web version)."""
        try:
            self._redis.delete(*(f"note:{i}" for i in ids))
        except (RedisError, OSError):
            log.warning("cache unavailable", op="delete")

    # --- Redis -------------------------------------------------------------------------------------

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From the stream's start: events the API added before any worker existed are work too.
            self._redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
            log.info("consumer group created", stream=STREAM, group=GROUP)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _read(self, after: str, *, block_ms: int | None) -> tuple[bytes, dict[bytes, bytes] | None] | None:
        reply = self._redis.xreadgroup(GROUP, self.consumer, {STREAM: after}, count=1, block=block_ms)
        for _stream, entries in cast("list[list[Any]]", reply or []):  # RESP2: [[stream, [(id, fields)]]]
            for entry_id, fields in entries:
                return entry_id, fields
        return None

    def _claim_abandoned(self) -> None:
        """Take over entries that workers read but never acknowledged (they died), then drop consumers long
        gone (a consumer left in the group costs memory and clutters XINFO, nothing else)."""
        self._ensure_group()
        client = self._redis
        idle_ms = int(self.settings.worker_claim_idle * 1000)
        cursor: bytes | str = "0-0"
        while not self.stop.is_set():
            self._beat()
            reply = client.xautoclaim(STREAM, GROUP, self.consumer, idle_ms, start_id=cursor, count=1)
            cursor, entries = reply[0], reply[1]
            for entry_id, fields in entries:
                if entry_id is not None:  # Redis 6.2 reports an entry trimmed away as nil
                    log.info("abandoned event claimed", entry=entry_id.decode())
                    self._handle(entry_id, fields)
            if cursor in (b"0-0", "0-0"):
                break
        for consumer in client.xinfo_consumers(STREAM, GROUP):
            name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
            if name != self.consumer and not consumer["pending"] and consumer["idle"] > DEAD_CONSUMER_IDLE_MS:
                client.xgroup_delconsumer(STREAM, GROUP, name)
                log.info("idle consumer removed", consumer=name)

    # --- Postgres ----------------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        conn = psycopg.connect(
            self.settings.database_url,
            autocommit=True,  # transactions are explicit: conn.transaction()
            connect_timeout=max(2, min(5, int(self.settings.startup_timeout))),
            application_name="app-worker",
        )
        # A job must end well inside the shutdown grace, even when it waits on a lock.
        timeout_ms = max(1000, self.settings.shutdown_grace * 1000 // 2)
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(timeout_ms),))
        return conn

    def _db(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._pg is None or self._pg.closed:
            self._pg = self._connect()
        return self._pg

    def _close_pg(self) -> None:
        if self._pg is not None:
            with contextlib.suppress(psycopg.Error):
                self._pg.close()
            self._pg = None

    def _wait_for_postgres(self) -> bool:
        """Connected, with the migrated schema, within startup_timeout; False when stopped meanwhile."""
        deadline = self.clock() + self.settings.startup_timeout
        attempt = 0
        while not self.stop.is_set():
            try:
                self._db().execute(SCHEMA_PROBE)
                return True
            except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
                reason = "the schema is not migrated (run: python -m app migrate)"
            except psycopg.Error as exc:
                reason = _one_line(exc)
            self._close_pg()
            left = deadline - self.clock()
            if left <= 0:
                raise StartupError(f"postgres not usable after {self.settings.startup_timeout:g}s: {reason}")
            log.warning("waiting for postgres", reason=reason)
            self.stop.wait(min(BACKOFF[min(attempt, len(BACKOFF) - 1)], left))
            attempt += 1
        return False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
