"""The MCP server: the low-level SDK `Server` wired to the tool table, the discovery resources, and resource
update notifications for both protocol revisions.

2026-07-28 clients subscribe with `subscriptions/listen` (served by the SDK's ListenHandler on our bus);
2025-11-25 clients use `resources/subscribe` on their session, which we track per connection. Every replica's
live feed calls `ResourceNotifier.discovery_shared` for each discovery in order, so subscribers of any replica
hear about discoveries shared on any other.
"""

import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated
from mcp.shared.exceptions import MCPError
from starlette.requests import Request
from starlette.types import Scope

from agenthub.auth import Principal
from agenthub.database import UNAVAILABLE as UNAVAILABLE_ERRORS
from agenthub.database import unavailable
from agenthub.errors import DiscoveryNotFound, Unauthenticated
from collaboration.models import Discovery, collection_uri
from mcp_server.prompts import get_prompt, visible_prompts
from mcp_server.tools import (
    ToolSelection,
    call_tool,
    tool_error,
    tool_input_schema,
    visible_tools,
)
from web_ui.guard import principal_of, rate_limited
from web_ui.state import HubState

logger = logging.getLogger(__name__)

_DISCOVERY_URI = re.compile(r"^discovery://agents/([A-Za-z0-9_-]{1,64})/discoveries(?:/([A-Za-z0-9_-]{1,64}))?$")
_COLLECTION_LIMIT = 50
_LISTED_AGENTS = 100
_NOTIFY_TIMEOUT = 1.0
RATE_LIMITED = -32029  # JSON-RPC (server error range): over the token's rate; `data.retry_after` says when to retry
UNAVAILABLE = -32030  # JSON-RPC: PostgreSQL is down, restarting or frozen; `data.retry_after` says when to retry


@contextmanager
def _answerable() -> Iterator[None]:
    """A request (other than a tool call, which answers with a tool error) that PostgreSQL could not serve: a
    JSON-RPC error saying so and when to retry, instead of an internal error."""
    try:
        yield
    except UNAVAILABLE_ERRORS as exc:
        down = unavailable(exc)
        assert down is not None
        raise MCPError(UNAVAILABLE, down.message, {"retry_after": down.retry_after}) from exc


def _scope(ctx: ServerRequestContext[Any, Any]) -> Scope:
    request = ctx.request
    return request.scope if isinstance(request, Request) else {}


def _principal(ctx: ServerRequestContext[Any, Any], hub: HubState) -> Principal:
    limited = rate_limited(_scope(ctx))
    if limited is not None:  # a tool call says so as a tool error; other requests as a JSON-RPC error
        raise MCPError(RATE_LIMITED, limited.message, {"retry_after": round(limited.retry_after, 3)})
    principal = principal_of(_scope(ctx), hub.settings.auth)
    if principal is None:
        raise MCPError(types.INVALID_REQUEST, Unauthenticated("missing bearer token").message)
    return principal


def _selection(ctx: ServerRequestContext[Any, Any]) -> ToolSelection:
    """The tools the client narrowed the list to with the MCP URL's `?tools=` (sent with every request)."""
    return ToolSelection.of_request(_scope(ctx))


def _json_contents(uri: str, value: Any) -> types.ReadResourceResult:
    return types.ReadResourceResult(contents=[
        types.TextResourceContents(uri=uri, mime_type="application/json", text=json.dumps(value))
    ])


class ResourceNotifier:
    """Sends `notifications/resources/updated` for a discovery's collection URI to subscribers of both eras."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self._legacy: dict[str, dict[int, ServerSession]] = defaultdict(dict)

    def subscribe_legacy(self, uri: str, session: ServerSession) -> None:
        conn = session._connection  # ServerSession is a per-request proxy; the connection is the stable key
        key = id(conn)
        if key not in self._legacy[uri]:
            conn.exit_stack.callback(lambda: self._legacy[uri].pop(key, None))
        self._legacy[uri][key] = session

    def unsubscribe_legacy(self, uri: str, session: ServerSession) -> None:
        self._legacy[uri].pop(id(session._connection), None)

    async def discovery_shared(self, d: Discovery) -> None:
        uri = collection_uri(d.agent_id)
        await self.bus.publish(ResourceUpdated(uri=uri))
        for key, session in list(self._legacy.get(uri, {}).items()):
            with anyio.move_on_after(_NOTIFY_TIMEOUT) as scope:
                try:
                    await session.send_resource_updated(uri)
                except Exception:  # a session that went away must not stop the others; forget it
                    self._legacy[uri].pop(key, None)
            if scope.cancelled_caught:
                self._legacy[uri].pop(key, None)


def build_server(hub: HubState, notifier: ResourceNotifier) -> Server[Any]:
    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=visible_tools(_principal(ctx, hub), _selection(ctx)))

    async def on_call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
                           ) -> types.CallToolResult:
        limited = rate_limited(_scope(ctx))
        if limited is not None:
            return tool_error(limited)
        return await call_tool(hub, _principal(ctx, hub), params.name, params.arguments, _selection(ctx))

    def tool_names(ctx: ServerRequestContext[Any, Any]) -> set[str]:
        return {t.name for t in visible_tools(_principal(ctx, hub), _selection(ctx))}

    async def list_prompts(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=visible_prompts(tool_names(ctx)))

    async def on_get_prompt(ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
                            ) -> types.GetPromptResult:
        return get_prompt(_principal(ctx, hub), tool_names(ctx), params.name, params.arguments)

    async def list_resources(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourcesResult:
        _principal(ctx, hub)
        with _answerable():
            agents = await hub.collab.log.agents(_LISTED_AGENTS)
        return types.ListResourcesResult(resources=[
            types.Resource(uri=collection_uri(agent), name=f"discoveries of {agent}", mime_type="application/json",
                           description=f"The latest discoveries shared by {agent} (last at {last.isoformat()})")
            for agent, last in agents
        ])

    async def list_templates(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[
            types.ResourceTemplate(uri_template="discovery://agents/{agent_id}/discoveries/{discovery_id}",
                                   name="discovery", mime_type="application/json", description="One discovery"),
            types.ResourceTemplate(uri_template="discovery://agents/{agent_id}/discoveries", name="discoveries",
                                   mime_type="application/json",
                                   description="An agent's latest discoveries; subscribe to hear of new ones"),
        ])

    async def read_resource(ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
                            ) -> types.ReadResourceResult:
        _principal(ctx, hub)
        uri = str(params.uri)
        match = _DISCOVERY_URI.match(uri)
        if match is None:
            raise MCPError(types.INVALID_PARAMS, f"Resource not found: {uri}", {"uri": uri})
        agent_id, discovery_id = match.groups()
        if discovery_id is None:
            with _answerable():
                items = await hub.collab.log.latest_by_agent(agent_id, _COLLECTION_LIMIT)
            return _json_contents(uri, {"agent_id": agent_id,
                                        "discoveries": [d.model_dump(mode="json") for d in items]})
        try:
            with _answerable():
                d = await hub.collab.log.get(discovery_id)
        except DiscoveryNotFound:
            d = None
        if d is None or d.agent_id != agent_id:
            raise MCPError(types.INVALID_PARAMS, f"Resource not found: {uri}", {"uri": uri})
        return _json_contents(uri, d.model_dump(mode="json"))

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
        _principal(ctx, hub)
        notifier.subscribe_legacy(str(params.uri), ctx.session)
        return types.EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
                          ) -> types.EmptyResult:
        notifier.unsubscribe_legacy(str(params.uri), ctx.session)
        return types.EmptyResult()

    return Server(
        "agenthub", version="0.1.0",
        instructions="agenthub: share discoveries and context with other agents, follow theirs, ask and answer "
        "questions, and trade tasks for credits. The prompts join_and_share, ask_and_answer and bid_and_deliver show "
        "how. A tool error says what to change in the call; a rate limit or an outage says when to retry.",
        get_tool_input_schema=tool_input_schema,
        on_list_tools=list_tools, on_call_tool=on_call_tool, on_list_prompts=list_prompts,
        on_get_prompt=on_get_prompt, on_list_resources=list_resources,
        on_list_resource_templates=list_templates, on_read_resource=read_resource,
        on_subscribe_resource=subscribe, on_unsubscribe_resource=unsubscribe,
        on_subscriptions_listen=ListenHandler(notifier.bus),
    )
