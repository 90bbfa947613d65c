"""The PostgreSQL connection pool and the migration runner.

Migrations are the files `agenthub/migrations/NNNN_name.sql`, applied in order inside one transaction each and
recorded in `schema_migrations`. A session-level advisory lock serialises replicas that start at once.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import asyncpg

from agenthub.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

_MIGRATION_LOCK_KEY = 0x61676E68  # "agnh"
Pool = asyncpg.Pool
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy  # a connection, or one borrowed from the pool


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every migration shipped with the package, in order."""
    folder = resources.files("agenthub") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


async def apply_migrations(conn: Connection) -> list[str]:
    """Apply every migration not yet recorded; returns the versions applied now."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            logger.info("applied migration %s", version)
            applied_now.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
    return applied_now


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (a round trip per query): the hub keeps no session state (no
    LISTEN, no session settings, advisory locks are released where they are taken)."""


# What asyncpg raises when the server cannot be reached, went away, is starting or stopping, or did not answer
# within the statement timeout: the request could not be served now (what `unavailable` says about its effects).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    ConnectionError, TimeoutError, asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
    asyncpg.InternalClientError,  # a statement begun on a connection the server just dropped
)


# What a statement may raise besides a bug: a background round catching these logs them and tries again later.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                                                    *UNAVAILABLE)


def unavailable(exc: BaseException) -> ServiceUnavailable | None:
    """`exc` as the 503 it means when PostgreSQL is down, restarting or frozen; None for any other error.

    Refused or not yet accepting connections: nothing was sent, nothing changed. A timeout or a connection lost
    mid-statement is another matter: a server that was frozen may still run what it received once it thaws, so
    the answer says the outcome is unknown (money-moving requests are safe to retry with the same idempotency key).
    """
    if isinstance(exc, ServiceUnavailable):
        return exc
    if isinstance(exc, ConnectionRefusedError | asyncpg.CannotConnectNowError):
        return ServiceUnavailable(f"PostgreSQL is unavailable ({type(exc).__name__}); nothing was changed, retry "
                                  "shortly")
    if isinstance(exc, UNAVAILABLE):
        return ServiceUnavailable(f"PostgreSQL is unavailable ({type(exc).__name__}): it did not answer in time, so "
                                  "the request may or may not take effect once it recovers; retry shortly (with the "
                                  "same idempotency key where the request takes one)")
    return None


def log_failure(log: logging.Logger, what: str, exc: BaseException) -> None:
    """A background round (a poll, a sweep) that failed and will be tried again: one line while PostgreSQL is
    unavailable (`/ready` and the service supervisor say why), the traceback for anything else."""
    if unavailable(exc) is not None:
        log.warning("%s: PostgreSQL unavailable (%s); retrying", what, type(exc).__name__)
    else:
        log.error("%s; retrying", what, exc_info=exc)


class _BoundedPool(asyncpg.Pool):
    """A pool whose `acquire` (and so `fetch`, `execute` ...) waits at most `acquire_timeout` for a connection, and
    whose release waits as long at most: after a statement timed out, asyncpg's release waits for the server to
    confirm the cancellation, which a frozen server never does; bounded, the connection is dropped instead."""

    def __init__(self, url: str, *, acquire_timeout: float, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=self._acquire_timeout if timeout is None else timeout)

    def release(self, connection: Any, *, timeout: float | None = None) -> Any:
        # asyncpg gives the connection back in a shielded task of its own; when the caller is cancelled meanwhile
        # (a request cut short, shutdown) and that task then fails (the bounded wait above), nobody reads its
        # exception and asyncio logs a traceback. Ours reads it: one line.
        releasing = asyncio.ensure_future(super().release(connection, timeout=timeout))
        releasing.add_done_callback(_released)
        return asyncio.shield(releasing)


def _released(task: "asyncio.Future[Any]") -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("a PostgreSQL connection was not given back in time (%s); it was closed", type(exc).__name__)


@asynccontextmanager
async def open_pool(url: str, *, size: int, connect_timeout: float = 10,
                    statement_timeout: float = 30) -> AsyncIterator[asyncpg.Pool]:
    """Connect, migrate, and yield a pool; closes it on exit. Waiting for a connection (opening one, or a free one)
    longer than `connect_timeout`, or for a statement longer than `statement_timeout`, raises TimeoutError; the
    pool opens new connections in place of ones that broke (a restarted server)."""
    # min_size=0: no connection floor to restore (with a traceback each time) while the server is down.
    pool = await _BoundedPool(
        url, acquire_timeout=connect_timeout, min_size=0, max_size=size, max_queries=50_000,
        max_inactive_connection_lifetime=300.0, reset=_no_reset, loop=None, connection_class=asyncpg.Connection,
        record_class=asyncpg.Record, timeout=connect_timeout, command_timeout=statement_timeout)
    try:
        try:
            conn = await pool.acquire()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise ServiceUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        try:
            await apply_migrations(conn)
        finally:
            await pool.release(conn)
        yield pool
    finally:
        await pool.close()
