"""OAuth 2.1 grants in PostgreSQL: registered clients, consent requests, authorization codes, refresh tokens.

The protocol (endpoints, PKCE, redirects) is the MCP SDK's, in `web_ui.oauth`; this module keeps its state. An
operator's consent turns a request into a one-use code carrying the granted role and agent id; the code starts a
*family*: every access token (a row of `tokens`, see `agenthub.auth`) and refresh token issued from it, and from
the refresh tokens that follow, shares the family's id. A refresh token is used once and replaced (rotation);
presenting a used one, or a code again, is taken as theft and revokes the whole family. Secrets (codes, refresh
tokens, access tokens) are kept as SHA-256 hashes; registered clients are public (PKCE, no secret).
"""

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from agenthub.auth import Role, create_token, hash_secret
from agenthub.database import Connection
from agenthub.ids import AgentId, TokenId

REFRESH_PREFIX = "ahr_"
CODE_PREFIX = "ahc_"


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """What an operator granted a client: who its tokens act as, and for which resource."""

    client_id: str
    family: str
    role: Role
    agent_id: AgentId | None
    resource: str
    scopes: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentRequest:
    """An authorization request waiting for an operator on the consent page."""

    request_id: str
    client_id: str
    client: dict[str, Any]  # the client's registered metadata (name, redirect URIs, ...)
    params: dict[str, Any]  # redirect_uri, redirect_uri_provided_explicitly, state, code_challenge, scopes, resource
    expires_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredCode:
    grant: Grant
    params: dict[str, Any]
    expires_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredRefresh:
    token: str
    grant: Grant
    expires_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredAccess:
    token: str
    token_id: TokenId
    grant: Grant
    expires_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedTokens:
    access_token: str
    access_token_id: TokenId
    expires_in: int
    refresh_token: str


def _now() -> datetime:
    return datetime.now(UTC)


def _grant(row: asyncpg.Record, *, resource: str, scopes: list[str]) -> Grant:
    agent = AgentId(row["agent_id"]) if row["agent_id"] is not None else None
    return Grant(client_id=row["client_id"], family=row["family"], role=Role(row["role"]), agent_id=agent,
                 resource=resource, scopes=scopes)


async def save_client(pool: asyncpg.Pool, client_id: str, metadata: dict[str, Any], *, replace: bool = False
                      ) -> None:
    """Keep a registered client; `replace` updates a client described by a metadata document it fetched again."""
    conflict = " ON CONFLICT (client_id) DO UPDATE SET metadata = EXCLUDED.metadata" if replace else ""
    await pool.execute(f"INSERT INTO oauth_clients (client_id, metadata) VALUES ($1, $2::jsonb){conflict}",
                       client_id, json.dumps(metadata))


async def load_client(pool: asyncpg.Pool, client_id: str) -> dict[str, Any] | None:
    raw = await pool.fetchval("SELECT metadata FROM oauth_clients WHERE client_id = $1", client_id)
    return None if raw is None else dict(json.loads(raw))


async def purge_expired(pool: asyncpg.Pool) -> None:
    """Forget requests, codes and refresh tokens past their expiry (each authorization request does this, so the
    tables hold what is live, not their history)."""
    await pool.execute("DELETE FROM oauth_requests WHERE expires_at < now()")
    await pool.execute("DELETE FROM oauth_codes WHERE expires_at < now()")
    await pool.execute("DELETE FROM oauth_refresh_tokens WHERE expires_at < now()")


async def open_request(pool: asyncpg.Pool, client_id: str, params: dict[str, Any], *, seconds: int) -> str:
    """Keep an authorization request for the consent page; its id (unguessable: it names a pending grant)."""
    request_id = secrets.token_urlsafe(24)
    await purge_expired(pool)
    await pool.execute("INSERT INTO oauth_requests (id, client_id, params, expires_at) VALUES ($1, $2, $3::jsonb, $4)",
                       request_id, client_id, json.dumps(params), _now() + timedelta(seconds=seconds))
    return request_id


async def load_request(pool: asyncpg.Pool | Connection, request_id: str, *,
                       close: bool = False) -> ConsentRequest | None:
    """The pending request (None when unknown, answered or expired); `close` takes it (one answer per request)."""
    columns = "r.id, r.client_id, r.params, r.expires_at, c.metadata"
    if close:
        sql = f"DELETE FROM oauth_requests r USING oauth_clients c WHERE r.id = $1 AND c.client_id = r.client_id " \
              f"AND r.expires_at > now() RETURNING {columns}"
    else:
        sql = f"SELECT {columns} FROM oauth_requests r JOIN oauth_clients c USING (client_id) " \
              "WHERE r.id = $1 AND r.expires_at > now()"
    row = await pool.fetchrow(sql, request_id)
    if row is None:
        return None
    return ConsentRequest(request_id=row["id"], client_id=row["client_id"], client=json.loads(row["metadata"]),
                          params=json.loads(row["params"]), expires_at=row["expires_at"])


async def issue_code(pool: asyncpg.Pool | Connection, request: ConsentRequest, role: Role,
                     agent_id: str | None, *, seconds: int) -> str:
    """A one-use authorization code for an approved request (it starts a new family)."""
    code = CODE_PREFIX + secrets.token_urlsafe(32)
    await pool.execute(
        "INSERT INTO oauth_codes (code_hash, client_id, family, params, role, agent_id, expires_at) "
        "VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)", hash_secret(code), request.client_id,
        secrets.token_hex(12), json.dumps(request.params), role.value, agent_id, _now() + timedelta(seconds=seconds))
    return code


async def load_code(pool: asyncpg.Pool, client_id: str, code: str) -> tuple[StoredCode | None, list[TokenId]]:
    """The unused code of this client, or None; a code presented again revokes what it was exchanged for (the
    token ids revoked are returned for the caches)."""
    row = await pool.fetchrow("SELECT * FROM oauth_codes WHERE code_hash = $1 AND client_id = $2", hash_secret(code),
                              client_id)
    if row is None:
        return None, []
    if row["used_at"] is not None:
        return None, await revoke_family(pool, row["family"])
    params = json.loads(row["params"])
    grant = _grant(row, resource=params["resource"], scopes=params["scopes"])
    return StoredCode(grant=grant, params=params, expires_at=row["expires_at"]), []


async def redeem_code(pool: asyncpg.Pool, code: str, *, access_seconds: int, refresh_seconds: int
                      ) -> IssuedTokens | None:
    """Use the code (once) and issue its first access and refresh tokens; None when it was used meanwhile."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("UPDATE oauth_codes SET used_at = now() WHERE code_hash = $1 AND used_at IS NULL "
                                  "AND expires_at > now() RETURNING *", hash_secret(code))
        if row is None:
            return None
        params = json.loads(row["params"])
        grant = _grant(row, resource=params["resource"], scopes=params["scopes"])
        return await _issue(conn, grant, access_seconds=access_seconds, refresh_seconds=refresh_seconds)


async def load_refresh(pool: asyncpg.Pool, client_id: str, token: str
                       ) -> tuple[StoredRefresh | None, list[TokenId]]:
    """The client's live refresh token, or None; a rotated one presented again revokes its family."""
    row = await pool.fetchrow("SELECT * FROM oauth_refresh_tokens WHERE token_hash = $1 AND client_id = $2",
                              hash_secret(token), client_id)
    if row is None or row["revoked_at"] is not None or row["expires_at"] <= _now():
        return None, []
    if row["used_at"] is not None:
        return None, await revoke_family(pool, row["family"])
    grant = _grant(row, resource=row["resource"], scopes=list(row["scopes"]))
    return StoredRefresh(token=token, grant=grant, expires_at=row["expires_at"]), []


async def rotate_refresh(pool: asyncpg.Pool, token: str, *, access_seconds: int, refresh_seconds: int
                         ) -> IssuedTokens | None:
    """Use the refresh token (once) for a new access token and a new refresh token; None when it was used, revoked
    or expired meanwhile."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE oauth_refresh_tokens SET used_at = now() WHERE token_hash = $1 AND used_at IS NULL "
            "AND revoked_at IS NULL AND expires_at > now() RETURNING *", hash_secret(token))
        if row is None:
            return None
        grant = _grant(row, resource=row["resource"], scopes=list(row["scopes"]))
        return await _issue(conn, grant, access_seconds=access_seconds, refresh_seconds=refresh_seconds)


async def _issue(conn: Connection, grant: Grant, *, access_seconds: int, refresh_seconds: int
                 ) -> IssuedTokens:
    now = _now()
    token_id, access = await create_token(
        conn, grant.role, grant.agent_id, expires_at=now + timedelta(seconds=access_seconds),
        resource=grant.resource, oauth_client_id=grant.client_id, oauth_family=grant.family)
    refresh = REFRESH_PREFIX + secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO oauth_refresh_tokens (token_hash, client_id, family, role, agent_id, resource, scopes, "
        "expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", hash_secret(refresh), grant.client_id, grant.family,
        grant.role.value, grant.agent_id, grant.resource, grant.scopes, now + timedelta(seconds=refresh_seconds))
    return IssuedTokens(access_token=access, access_token_id=token_id, expires_in=access_seconds,
                        refresh_token=refresh)


async def load_access(pool: asyncpg.Pool, token: str) -> StoredAccess | None:
    """A live OAuth access token (static tokens are not OAuth's to revoke)."""
    row = await pool.fetchrow(
        "SELECT id, role, agent_id, expires_at, resource, oauth_client_id AS client_id, oauth_family AS family "
        "FROM tokens WHERE token_hash = $1 AND oauth_family IS NOT NULL AND revoked_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > now())", hash_secret(token))
    if row is None:
        return None
    return StoredAccess(token=token, token_id=TokenId(row["id"]), expires_at=row["expires_at"],
                        grant=_grant(row, resource=row["resource"], scopes=[]))


async def revoke_family(pool: asyncpg.Pool | Connection, family: str) -> list[TokenId]:
    """Revoke every refresh and access token of a grant; the access tokens' ids (for the caches)."""
    await pool.execute("UPDATE oauth_refresh_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE family = $1",
                       family)
    rows = await pool.fetch("UPDATE tokens SET revoked_at = now() WHERE oauth_family = $1 AND revoked_at IS NULL "
                            "RETURNING id", family)
    return [TokenId(row["id"]) for row in rows]
