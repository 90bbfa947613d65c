"""REST `/api/v1`: the twins of the MCP tools and discovery browsing (tokens are in `web_ui.tokens`)."""

import dataclasses
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from agenthub.auth import Role
from agenthub.text import Storable
from collaboration.filters import DiscoveryFilter
from collaboration.models import (
    AgentIdField,
    CollaborationStatus,
    ContextList,
    Discovery,
    DiscoveryTypeField,
    FilterFields,
    GetContextInput,
    PollInput,
    PollResult,
    ShareContextInput,
    SharedContext,
    SharedDiscovery,
    ShareDiscoveryInput,
    Subscribed,
    SubscribeInput,
    Unit,
    Unsubscribed,
    UnsubscribeInput,
)
from web_ui.endpoints import Endpoint
from web_ui.state import hub_of, principal_of


class DiscoveryFilterQuery(Storable):
    """Discovery filters as query parameters (the stream's, and the list's with paging added)."""

    model_config = ConfigDict(extra="forbid")
    type: Annotated[list[DiscoveryTypeField], Field(max_length=6)] | None = None
    role: Annotated[list[str], Field(max_length=50)] | None = None
    agent_id: Annotated[list[AgentIdField], Field(max_length=50)] | None = None
    min_confidence: Unit = 0.0

    def to_filter(self) -> DiscoveryFilter:
        return DiscoveryFilter.of(FilterFields(discovery_types=self.type, agent_roles=self.role,
                                               agent_ids=self.agent_id, min_confidence=self.min_confidence))


class DiscoveryQuery(DiscoveryFilterQuery):
    cursor: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(ge=1, le=100)] = 50


class DiscoveryPage(BaseModel):
    items: list[Discovery]
    next_cursor: int


class ExportQuery(Storable):
    model_config = ConfigDict(extra="forbid")
    after: Annotated[int, Field(ge=0, description="Export the discoveries after this sequence.")] = 0
    context: bool = Field(default=False, description="Add every unexpired context item after the discoveries.")


class ImportSummaryOut(BaseModel):
    discoveries_imported: int
    discoveries_skipped: int = Field(description="Already stored (same discovery id): an import can be run again.")
    context_imported: int
    context_skipped: int = Field(description="Already stored, or expired.")
    newest_sequence: int | None = Field(description="This hub's sequence for the last discovery imported.")


class PollBody(Storable):
    model_config = ConfigDict(strict=True, extra="forbid")
    cursor: Annotated[int, Field(ge=0)] | None = None
    wait_seconds: Annotated[float, Field(ge=0, le=30)] = 0
    limit: Annotated[int, Field(ge=1, le=100)] = 50


class ContextQuery(Storable):
    model_config = ConfigDict(extra="forbid")
    context_type: list[str] | None = None
    min_relevance: Unit = 0.0


async def share_discovery(request: Request, body: ShareDiscoveryInput) -> SharedDiscovery:
    return await hub_of(request).collab.share_discovery(principal_of(request), body)


async def list_discoveries(request: Request, query: DiscoveryQuery) -> DiscoveryPage:
    principal_of(request)
    items, cursor = await hub_of(request).collab.list_discoveries(query.to_filter(), query.cursor, query.limit)
    return DiscoveryPage(items=items, next_cursor=cursor)


async def export_discoveries(request: Request, query: ExportQuery) -> Response:
    lines = await hub_of(request).collab.export(principal_of(request), query.after, context=query.context)
    return StreamingResponse(lines, media_type="application/x-ndjson")


async def import_discoveries(request: Request, _: None) -> ImportSummaryOut:
    summary = await hub_of(request).collab.import_lines(principal_of(request), await request.body())
    return ImportSummaryOut(**dataclasses.asdict(summary))


async def get_discovery(request: Request, _: None) -> Discovery:
    principal_of(request)
    return await hub_of(request).collab.get_discovery(request.path_params["discovery_id"])


async def subscribe(request: Request, body: SubscribeInput) -> Subscribed:
    return await hub_of(request).collab.subscribe(principal_of(request), body)


async def poll(request: Request, body: PollBody) -> PollResult:
    req = PollInput(subscription_id=request.path_params["subscription_id"], **body.model_dump())
    return await hub_of(request).collab.poll(principal_of(request), req)


async def unsubscribe(request: Request, _: None) -> Unsubscribed:
    req = UnsubscribeInput(subscription_id=request.path_params["subscription_id"])
    return await hub_of(request).collab.unsubscribe(principal_of(request), req)


async def share_context(request: Request, body: ShareContextInput) -> SharedContext:
    return await hub_of(request).collab.share_context(principal_of(request), body)


async def get_context(request: Request, query: ContextQuery) -> ContextList:
    args: dict[str, Any] = {"agent_id": request.path_params["agent_id"], "min_relevance": query.min_relevance}
    if query.context_type is not None:
        args["context_types"] = query.context_type
    return await hub_of(request).collab.get_context(principal_of(request), GetContextInput.model_validate(args))


async def status(request: Request, _: None) -> CollaborationStatus:
    principal_of(request)
    return await hub_of(request).collab.status()


class WhoAmI(BaseModel):
    role: Role
    agent_id: str | None = Field(description="For agent tokens: the agent the token acts as.")
    auth: bool = Field(description="False when the hub runs without authentication (everyone is the operator).")


async def whoami(request: Request, _: None) -> WhoAmI:
    who = principal_of(request)
    return WhoAmI(role=who.role, agent_id=who.agent_id, auth=hub_of(request).settings.auth)


ENDPOINTS = [
    Endpoint(method="GET", path="/api/v1/whoami", summary="The caller's role (and agent id), as the dashboard needs "
             "it", handler=whoami, response=WhoAmI),
    Endpoint(method="POST", path="/api/v1/discoveries", summary="Share a discovery (twin of share_discovery)",
             handler=share_discovery, body=ShareDiscoveryInput, response=SharedDiscovery, status=201,
             errors=(404,)),
    Endpoint(method="GET", path="/api/v1/discoveries", summary="List discoveries after a cursor, filtered",
             handler=list_discoveries, query=DiscoveryQuery, response=DiscoveryPage, errors=(410,)),
    Endpoint(method="GET", path="/api/v1/discoveries/export", summary="The discovery log after a cursor (and, with "
             "context=true, live context) as JSON Lines (operator)", handler=export_discoveries, query=ExportQuery,
             media_type="application/x-ndjson", errors=(410,)),
    Endpoint(method="POST", path="/api/v1/discoveries/import", summary="Import JSON Lines from an export, up to "
             "5,000 lines a request; ids already stored are skipped (operator)", handler=import_discoveries,
             raw_body="application/x-ndjson", response=ImportSummaryOut),
    Endpoint(method="GET", path="/api/v1/discoveries/{discovery_id}", summary="One discovery",
             handler=get_discovery, response=Discovery),
    Endpoint(method="POST", path="/api/v1/subscriptions", summary="Subscribe to discoveries (twin of "
             "subscribe_discoveries)", handler=subscribe, body=SubscribeInput, response=Subscribed, status=201,
             operation_id="subscribe_discoveries", errors=(410,)),
    Endpoint(method="POST", path="/api/v1/subscriptions/{subscription_id}/poll", summary="Long-poll a subscription "
             "(twin of poll_discoveries)", handler=poll, body=PollBody, response=PollResult,
             operation_id="poll_discoveries", errors=(410,)),
    Endpoint(method="DELETE", path="/api/v1/subscriptions/{subscription_id}", summary="Unsubscribe",
             handler=unsubscribe, response=Unsubscribed, operation_id="unsubscribe_discoveries"),
    Endpoint(method="POST", path="/api/v1/context", summary="Share context (twin of share_context)",
             handler=share_context, body=ShareContextInput, response=SharedContext, status=201),
    Endpoint(method="GET", path="/api/v1/context/{agent_id}", summary="Unexpired context for an agent (twin of "
             "get_context)", handler=get_context, query=ContextQuery, response=ContextList),
    Endpoint(method="GET", path="/api/v1/status", summary="Collaboration status (twin of get_collaboration_status)",
             handler=status, response=CollaborationStatus, operation_id="get_collaboration_status"),
]
