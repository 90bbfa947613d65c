"""Bearer tokens with roles and a lifecycle, stored as SHA-256 hashes in PostgreSQL.

Roles: `operator` (everything), `agent` (acts only as its own agent id), `viewer` (read and stream only).
A token is `ah_` followed by 32 random bytes in URL-safe base64; only its hash is kept. A token may expire; it
can be revoked by id; past either it is refused. Listing shows what a token is, never the secret.
"""

import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import asyncpg

from agenthub.database import Connection
from agenthub.errors import Forbidden, InvalidInput, TokenNotFound, Unauthenticated
from agenthub.ids import AgentId, TokenId, is_valid_agent_id, new_token_id


class Role(StrEnum):
    OPERATOR = "operator"
    AGENT = "agent"
    VIEWER = "viewer"


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """Who is calling: resolved from the bearer token once per request."""

    token_id: TokenId | None
    role: Role
    agent_id: AgentId | None = None
    expires_at: datetime | None = None  # the token is refused from then on
    resource: str | None = None  # an OAuth access token's audience (RFC 8707): refused by any other resource

    def require_write(self) -> None:
        if self.role is Role.VIEWER:
            raise Forbidden("a viewer token is read-only")

    def require_operator(self) -> None:
        if self.role is not Role.OPERATOR:
            raise Forbidden("this needs an operator token")

    def require_acting_as(self, agent_id: str) -> None:
        """Writes on behalf of `agent_id` are allowed to operators and to that agent's own token."""
        self.require_write()
        if self.role is Role.AGENT and agent_id != self.agent_id:
            raise Forbidden(f"this token belongs to agent {self.agent_id!r} and cannot act as {agent_id!r}")


# Used when authentication is switched off (loopback only): full rights, as the single local user.
LOCAL_OPERATOR = Principal(token_id=None, role=Role.OPERATOR)


def hash_secret(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenInfo:
    """A token as listed: everything but the secret."""

    token_id: TokenId
    role: Role
    agent_id: AgentId | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None  # to the minute: recorded at most once a minute
    revoked_at: datetime | None


_INFO_COLUMNS = "id, role, agent_id, created_at, expires_at, last_used_at, revoked_at"


def _info(row: asyncpg.Record) -> TokenInfo:
    return TokenInfo(token_id=TokenId(row["id"]), role=Role(row["role"]), agent_id=row["agent_id"],
                     created_at=row["created_at"], expires_at=row["expires_at"], last_used_at=row["last_used_at"],
                     revoked_at=row["revoked_at"])


async def create_token(pool: asyncpg.Pool | Connection, role: Role, agent_id: str | None = None, *,
                       expires_at: datetime | None = None, resource: str | None = None,
                       oauth_client_id: str | None = None, oauth_family: str | None = None) -> tuple[TokenId, str]:
    """Mint a token, valid until `expires_at` (or until revoked); returns (token id, the secret, shown once).
    An OAuth access token also names its resource, its client and the grant it came from (`agenthub.oauth`)."""
    if (role is Role.AGENT) != (agent_id is not None):
        raise InvalidInput("an agent token needs --agent-id, and only agent tokens take one")
    if agent_id is not None and not is_valid_agent_id(agent_id):
        raise InvalidInput(f"invalid agent id {agent_id!r}: use 1-64 letters, digits, '_' or '-'")
    token = "ah_" + secrets.token_urlsafe(32)
    token_id = new_token_id()
    await pool.execute(
        "INSERT INTO tokens (id, token_hash, role, agent_id, expires_at, resource, oauth_client_id, oauth_family) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        token_id, hash_secret(token), role.value, agent_id, expires_at, resource, oauth_client_id, oauth_family,
    )
    return token_id, token


async def resolve_token(pool: asyncpg.Pool, token: str) -> Principal:
    row = await pool.fetchrow(
        "SELECT id, role, agent_id, expires_at, resource FROM tokens WHERE token_hash = $1 AND revoked_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > now())", hash_secret(token)
    )
    if row is None:
        raise Unauthenticated("unknown, expired or revoked token")
    agent = AgentId(row["agent_id"]) if row["agent_id"] is not None else None
    return Principal(token_id=TokenId(row["id"]), role=Role(row["role"]), agent_id=agent,
                     expires_at=row["expires_at"], resource=row["resource"])


async def list_tokens(pool: asyncpg.Pool, *, include_inactive: bool = False, limit: int = 100) -> list[TokenInfo]:
    """Tokens newest first: the usable ones, or with `include_inactive` also the revoked and expired ones."""
    where = "" if include_inactive else "WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()) "
    rows = await pool.fetch(f"SELECT {_INFO_COLUMNS} FROM tokens {where}ORDER BY created_at DESC, id LIMIT $1",
                            limit)
    return [_info(row) for row in rows]


async def revoke_token(pool: asyncpg.Pool, token_id: str) -> TokenInfo:
    """Revoke a token by id (again: no change); the token as it is now. Caches are the caller's to invalidate.
    An OAuth access token's refresh tokens are revoked with it, so its client cannot get another."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(f"UPDATE tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 "
                                  f"RETURNING {_INFO_COLUMNS}, oauth_family", token_id)
        if row is None:
            raise TokenNotFound(token_id)
        if row["oauth_family"] is not None:
            await conn.execute("UPDATE oauth_refresh_tokens SET revoked_at = coalesce(revoked_at, now()) "
                               "WHERE family = $1", row["oauth_family"])
    return _info(row)


async def record_token_use(pool: asyncpg.Pool, used: Mapping[TokenId, datetime]) -> None:
    """Set `last_used_at` of several tokens in one statement (it only moves forward)."""
    await pool.execute(
        "UPDATE tokens t SET last_used_at = u.at FROM unnest($1::text[], $2::timestamptz[]) AS u(id, at) "
        "WHERE t.id = u.id AND (t.last_used_at IS NULL OR t.last_used_at < u.at)", list(used), list(used.values()))


async def ensure_operator_token_file(pool: asyncpg.Pool, path: Path) -> bool:
    """On first start, mint an operator token and write it 0600 to `path`; False if the file already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # claim the file first: one writer wins
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        try:
            _, token = await create_token(pool, Role.OPERATOR)
        except BaseException:
            os.unlink(path)
            raise
        f.write(token + "\n")
    return True
