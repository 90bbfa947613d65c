"""`/mcp` before every other route, and the hub's own answer to what agents send most: a stateless (2026-07-28)
`tools/call` of one of its tools, served without the SDK's per-request machinery.

Through the SDK, such a call builds a Starlette request, a connection, a dispatch context, a server runner and an
OpenTelemetry span, validates the JSON-RPC envelope and the result with pydantic models and, when the client also
accepts SSE, runs the tool in a task group of its own; the tool's work was a third of the call. Here the body is
parsed once and checked by the same rules the SDK applies (its own envelope ladder and params validation), the tool
runs in the request's task, and the result goes out as the JSON body the SDK would send: same members, same HTTP
status and headers (`tests/test_direct_calls.py` sends every kind of call both ways and compares).

Only what the hub answers the same way itself is served here: a well-formed request for a tool the caller may use,
that cannot wait (a `poll_discoveries` with `wait_seconds` is streamed by the SDK, so keepalives reach a proxy and a
client that leaves cancels it). Everything else goes to the SDK's transport unchanged, so its error for a malformed
request, a header mismatch or an unknown tool is the one a client gets: 2025-11-25 sessions, notifications, other
methods, `Mcp-Param-*` headers, a client that accepts only SSE. `AGENTHUB_MCP__DIRECT_TOOL_CALLS=false` sends
every call to the SDK.
"""

from typing import Any

import pydantic_core
from mcp.server import Server
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import InboundModernRoute, classify_inbound_request
from mcp_types import SERVER_INFO_META_KEY
from mcp_types import methods as spec_methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_server.tools import ToolSelection, call_tool, may_wait, tool_error, tool_visible
from web_ui.guard import MCP_PATH, principal_of, rate_limited
from web_ui.state import HubState

_ROUTING = frozenset({b"mcp-protocol-version", b"mcp-method", b"mcp-name"})
_PARAM_PREFIX = b"mcp-param-"
_PARAMS = frozenset({"name", "arguments", "_meta"})
_ENVELOPE = frozenset({"jsonrpc", "id", "method", "params"})
_JSON_HEADERS = [(b"content-type", b"application/json")]


class McpEndpoint:
    """ASGI: requests for `/mcp` go to the SDK's transport (`sdk`) without Starlette's routing, direct tool calls
    are answered here, and every other path goes on to `app`."""

    def __init__(self, app: ASGIApp, *, sdk: ASGIApp, hub: HubState, server: Server[Any], direct: bool) -> None:
        self.app = app
        self._sdk = sdk
        self._hub = hub
        self._stamp = server.server_info_stamp  # the SDK's `serverInfo` stamp: our copy, serialised as it is
        self._direct = direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != MCP_PATH:
            await self.app(scope, receive, send)
            return
        body = scope.get("state", {}).get("body")  # the guard read it (and still gives it to `receive`)
        answer = await self._answer(scope, body) if self._direct and scope["method"] == "POST" and body else None
        if answer is None:
            await self._sdk(scope, receive, send)
            return
        status, payload = answer
        await send({"type": "http.response.start", "status": status,
                    "headers": [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    async def _answer(self, scope: Scope, body: bytes) -> tuple[int, bytes] | None:
        """The response to a direct tool call, or None when the SDK is to answer the request."""
        headers = _eligible_headers(scope["headers"])
        if headers is None:
            return None
        try:
            decoded = pydantic_core.from_json(body)
        except ValueError:
            return None
        if not isinstance(decoded, dict) or decoded.keys() - _ENVELOPE or decoded.get("jsonrpc") != "2.0" \
                or decoded.get("method") != "tools/call":
            return None
        request_id = decoded.get("id")
        params = decoded.get("params")
        if isinstance(request_id, bool) or not isinstance(request_id, int | str) or not isinstance(params, dict) \
                or params.keys() - _PARAMS:
            return None
        route = classify_inbound_request(decoded, headers=headers)
        if not isinstance(route, InboundModernRoute):
            return None
        try:
            spec_methods.validate_client_request("tools/call", route.protocol_version, params)
        except ValidationError:
            return None
        name = params["name"]
        arguments = params.get("arguments")
        hub = self._hub
        who = principal_of(scope, hub.settings.auth)
        if who is None or not tool_visible(who, name) or may_wait(name, arguments):
            return None
        try:
            selection = ToolSelection.of_request(scope)
        except MCPError:
            return None
        if not selection.includes(name):
            return None
        limited = rate_limited(scope)
        result = tool_error(limited) if limited is not None else await call_tool(hub, who, name, arguments, selection)
        hub.metrics.direct_calls.inc()
        wire = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        wire["resultType"] = "complete"
        wire["_meta"] = {**wire.get("_meta", {}), SERVER_INFO_META_KEY: self._stamp}
        return 200, pydantic_core.to_json({"jsonrpc": "2.0", "id": request_id, "result": wire})


def _eligible_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str] | None:
    """The request's headers (the first of each name, as the SDK reads them) for the SDK's envelope ladder, or None
    unless it is a stateless-era JSON POST from a client that accepts JSON and SSE answers, without a session, an
    `Mcp-Param-*` header or a repeated routing header."""
    headers: dict[str, str] = {}
    for key, value in raw:
        if key.startswith(_PARAM_PREFIX) or key == b"mcp-session-id":
            return None
        name = key.decode("latin-1")
        if name in headers:
            if key in _ROUTING:
                return None
            continue
        headers[name] = value.decode("latin-1")
    if headers.get("mcp-protocol-version") not in MODERN_PROTOCOL_VERSIONS or headers.get("mcp-method") != "tools/call":
        return None
    if not headers.get("content-type", "").lower().startswith("application/json"):
        return None
    # The client must accept both (the transport's rule; the SDK answers 406 otherwise), though the answer is JSON.
    accepted = {part.split(";")[0].strip().lower() for part in headers.get("accept", "").split(",")}
    if "*/*" not in accepted and (accepted.isdisjoint({"application/json", "application/*"})
                                  or accepted.isdisjoint({"text/event-stream", "text/*"})):
        return None
    return headers

