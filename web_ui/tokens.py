"""REST `/api/v1/tokens` for operators: mint a token (with an expiry), list tokens without their secrets, revoke
one by id (refused on every replica at once)."""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from agenthub.auth import Role, TokenInfo, create_token, list_tokens
from agenthub.text import Storable
from collaboration.models import AgentIdField
from web_ui.endpoints import Endpoint
from web_ui.state import hub_of, principal_of

MAX_EXPIRY_SECONDS = 10 * 365 * 24 * 3600


class TokenRequest(Storable):
    model_config = ConfigDict(strict=True, extra="forbid")
    role: Role
    agent_id: AgentIdField | None = None
    expires_in_seconds: Annotated[int, Field(ge=1, le=MAX_EXPIRY_SECONDS, description="The token is refused from "
                                             "this many seconds on; omit for a token that lasts until revoked.")
                                  ] | None = None


class TokenCreated(BaseModel):
    token_id: str
    token: str = Field(description="The secret: shown this once, never stored (only its hash is).")
    role: Role
    agent_id: str | None
    expires_at: datetime | None


class TokenOut(BaseModel):
    token_id: str
    role: Role
    agent_id: str | None
    state: Literal["active", "expired", "revoked"]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="To the minute: use is recorded at most once a minute.")
    revoked_at: datetime | None


class TokenQuery(Storable):
    model_config = ConfigDict(extra="forbid")
    all: bool = Field(default=False, description="Include revoked and expired tokens.")
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class TokenList(BaseModel):
    items: list[TokenOut] = Field(description="Newest first.")


def token_out(info: TokenInfo) -> TokenOut:
    state: Literal["active", "expired", "revoked"] = "active"
    if info.revoked_at is not None:
        state = "revoked"
    elif info.expires_at is not None and info.expires_at <= datetime.now(UTC):
        state = "expired"
    return TokenOut(token_id=info.token_id, role=info.role, agent_id=info.agent_id, state=state,
                    created_at=info.created_at, expires_at=info.expires_at, last_used_at=info.last_used_at,
                    revoked_at=info.revoked_at)


async def create(request: Request, body: TokenRequest) -> TokenCreated:
    principal_of(request).require_operator()
    expires_at = None
    if body.expires_in_seconds is not None:
        expires_at = datetime.now(UTC) + timedelta(seconds=body.expires_in_seconds)
    token_id, token = await create_token(hub_of(request).pool, body.role, body.agent_id, expires_at=expires_at)
    return TokenCreated(token_id=token_id, token=token, role=body.role, agent_id=body.agent_id, expires_at=expires_at)


async def listed(request: Request, query: TokenQuery) -> TokenList:
    principal_of(request).require_operator()
    infos = await list_tokens(hub_of(request).pool, include_inactive=query.all, limit=query.limit)
    return TokenList(items=[token_out(info) for info in infos])


async def revoke(request: Request, _: None) -> TokenOut:
    principal_of(request).require_operator()
    return token_out(await hub_of(request).tokens.revoke(request.path_params["token_id"]))


ENDPOINTS = [
    Endpoint(method="POST", path="/api/v1/tokens", summary="Mint a token, optionally expiring (operator); the "
             "secret is in this answer only", handler=create, body=TokenRequest, response=TokenCreated, status=201,
             operation_id="create_token"),
    Endpoint(method="GET", path="/api/v1/tokens", summary="Tokens newest first, without secrets: role, agent, "
             "created, expires, last used (operator)", handler=listed, query=TokenQuery, response=TokenList,
             operation_id="list_tokens"),
    Endpoint(method="DELETE", path="/api/v1/tokens/{token_id}", summary="Revoke a token: refused on every replica "
             "within a second (operator)", handler=revoke, response=TokenOut, operation_id="revoke_token"),
]
