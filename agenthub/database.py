"""The PostgreSQL connection pool and the migration runner.

Migrations are the files `agenthub/migrations/NNNN_name.sql`, applied in order inside one transaction each and
recorded in `schema_migrations`. A session-level advisory lock serialises replicas that start at once.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

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


@asynccontextmanager
async def open_pool(url: str, *, size: int) -> AsyncIterator[asyncpg.Pool]:
    """Connect, migrate, and yield a pool; closes it on exit."""
    try:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=size, timeout=10, command_timeout=30,
                                         reset=_no_reset)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise ServiceUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        yield pool
    finally:
        await pool.close()
