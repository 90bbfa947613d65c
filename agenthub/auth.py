"""Bearer tokens with roles, stored as SHA-256 hashes in PostgreSQL.

Roles: `operator` (everything), `agent` (acts only as its own agent id), `viewer` (read and stream only).
A token is `ah_` followed by 32 random bytes in URL-safe base64; only its hash is kept.
"""

import hashlib
import os
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import asyncpg

from agenthub.errors import Forbidden, InvalidInput, Unauthenticated
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


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_token(pool: asyncpg.Pool, role: Role, agent_id: str | None = None) -> tuple[TokenId, str]:
    """Mint a token; returns (token id, the secret token, shown once)."""
    if (role is Role.AGENT) != (agent_id is not None):
        raise InvalidInput("an agent token needs --agent-id, and only agent tokens take one")
    if agent_id is not None and not is_valid_agent_id(agent_id):
        raise InvalidInput(f"invalid agent id {agent_id!r}: use 1-64 letters, digits, '_' or '-'")
    token = "ah_" + secrets.token_urlsafe(32)
    token_id = new_token_id()
    await pool.execute(
        "INSERT INTO tokens (id, token_hash, role, agent_id) VALUES ($1, $2, $3, $4)",
        token_id, _hash(token), role.value, agent_id,
    )
    return token_id, token


async def resolve_token(pool: asyncpg.Pool, token: str) -> Principal:
    row = await pool.fetchrow(
        "SELECT id, role, agent_id FROM tokens WHERE token_hash = $1 AND revoked_at IS NULL", _hash(token)
    )
    if row is None:
        raise Unauthenticated("unknown or revoked token")
    agent = AgentId(row["agent_id"]) if row["agent_id"] is not None else None
    return Principal(token_id=TokenId(row["id"]), role=Role(row["role"]), agent_id=agent)


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
