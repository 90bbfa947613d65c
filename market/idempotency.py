"""Idempotency keys for money-moving requests, in the manner of Stripe's.

A request is `(scope, key, request)`: the scope is who acts (`scope_of`), the key is the caller's (1..255
characters, a UUID4 suggested), the request is the operation's name and arguments. `run_once` runs the effect in
ONE transaction that first claims the key with the request's hash:

- a new key: the effect runs and its result is stored as the response, committed with the effect;
- the same key and the same request: the stored response comes back and nothing else happens, including when
  the two arrive together (the second insert waits on the primary key until the first commits, then sees it);
- the same key and a different request: `IdempotencyKeyReused`, nothing happens;
- an effect that raises rolls the claim back with everything else, so nothing is stored and a retry runs anew.

Scopes belong to principals, not to credentials: an agent's keys are `agent:{agent_id}` whatever token it holds,
so an agent restarted by its supervisor (which gets a new token, the old one revoked) and retrying a request it
made before finds the first answer. An operator has no identity but its token, so its keys are the token's id
(stable across hub and client restarts; a new token is a new key space); with authentication off the single local
user is `local-operator`; the hub's own actions use `hub` with keys derived from the task.

Results are frozen dataclasses; responses are stored as their JSON (pydantic `TypeAdapter`) and read back into
the same type, so a replay equals the first answer. Keys are kept at least `KEEP_AT_LEAST` (24 hours; longer if
`MarketSettings.idempotency_retention_seconds` says so), then pruned (`prune`): a retry after that runs again,
as with Stripe. `CONTRACT` says all this to callers, in tool descriptions and the OpenAPI.
"""

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg
from pydantic import TypeAdapter

from agenthub.auth import Principal, Role
from agenthub.database import Connection
from agenthub.errors import IdempotencyKeyReused, ValueOutOfRange

T = TypeVar("T")

MAX_KEY_LENGTH = 255
MAX_SCOPE_LENGTH = 255
KEEP_AT_LEAST = timedelta(hours=24)
LOCAL_SCOPE = "local-operator"  # authentication off: the one local user

# What a caller needs to know about `idempotency_key`: the field's description in every request schema (MCP tools
# and REST bodies) and the OpenAPI's word on each operation that takes one.
CONTRACT = (
    f"Your key for this request (1-{MAX_KEY_LENGTH} characters; a fresh UUID each time). A retry with the same key "
    "and request has no second effect: it returns what the first made (the same task, transfer or settlement, as it "
    "stands now). The same key with another request is refused. "
    "Keys belong to who acts: an agent's to its agent id, so they still hold when it is restarted with a new token; "
    f"an operator's to its token. Kept at least {KEEP_AT_LEAST // timedelta(hours=1)} hours, then forgotten (a "
    "retry then acts again). A failed request stored nothing: its retry runs anew.")


def scope_of(who: Principal) -> str:
    """The idempotency scope of the principal acting: `agent:{id}` for an agent token, whichever token it is; the
    token id for an operator (or viewer); `local-operator` with authentication off."""
    if who.role is Role.AGENT and who.agent_id is not None:
        return f"agent:{who.agent_id}"
    return who.token_id or LOCAL_SCOPE


def check_key(scope: str, key: str) -> None:
    """Refuse an empty or over-long key or scope."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ValueOutOfRange("idempotency key length", len(key), 1, MAX_KEY_LENGTH)
    if not 1 <= len(scope) <= MAX_SCOPE_LENGTH:
        raise ValueOutOfRange("idempotency scope length", len(scope), 1, MAX_SCOPE_LENGTH)


def request_hash(request: Mapping[str, Any]) -> str:
    """SHA-256 of the request's canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


_adapters: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(result_type: type[T]) -> TypeAdapter[T]:
    adapter = _adapters.get(result_type)
    if adapter is None:
        adapter = _adapters[result_type] = TypeAdapter(result_type)
    return adapter


async def run_once(pool: asyncpg.Pool, *, scope: str, key: str, request: Mapping[str, Any], result_type: type[T],
                   effect: Callable[[Connection], Awaitable[T]]) -> T:
    """Run `effect` in a transaction at most once per `(scope, key)`, or return the stored first response.

    Args:
        pool: the database pool; one connection and one transaction are used for the whole request.
        scope: who is asking (their requests share a key space).
        key: the caller's idempotency key.
        request: the operation's name and arguments; a retry must send the same.
        result_type: the type `effect` returns, used to store and read back the response.
        effect: does the work on the given connection, inside the transaction.

    Raises:
        IdempotencyKeyReused: the key was used with a different request.
        ValueOutOfRange: the key or scope is empty or longer than 255 characters.
    """
    check_key(scope, key)
    digest = request_hash(request)
    adapter = _adapter(result_type)
    async with pool.acquire() as conn, conn.transaction():
        stored = await _claim(conn, scope, key, digest)
        if stored is not None:
            return adapter.validate_json(stored)
        result = await effect(conn)
        await conn.execute("UPDATE idempotency_keys SET response = $3 WHERE scope = $1 AND key = $2",
                           scope, key, adapter.dump_json(result).decode())
        return result


async def _claim(conn: Connection, scope: str, key: str, digest: str) -> str | None:
    """Insert the key; None when it is ours now, else the stored response of the same request."""
    while True:
        claimed = await conn.fetchval(
            "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3)"
            " ON CONFLICT (scope, key) DO NOTHING RETURNING true", scope, key, digest)
        if claimed:
            return None
        # The conflicting row is committed (the insert waited for its transaction), so this statement sees it,
        # unless it was pruned in between: then claim again.
        row = await conn.fetchrow("SELECT request_hash, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
                                  scope, key)
        if row is None:
            continue
        if row["request_hash"] != digest:
            raise IdempotencyKeyReused(key)
        response: str = row["response"]
        return response


async def prune(pool: asyncpg.Pool, older_than: timedelta = KEEP_AT_LEAST) -> int:
    """Forget keys older than `older_than` (at least `KEEP_AT_LEAST`, 24 hours); returns how many went."""
    if older_than < KEEP_AT_LEAST:
        raise ValueOutOfRange("idempotency key retention in hours", int(older_than / timedelta(hours=1)), 24)
    status: str = await pool.execute("DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval",
                                     older_than)
    return int(status.rsplit(" ", 1)[1])
