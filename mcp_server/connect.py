"""`agenthub connect`: MCP over stdio, forwarded to a hub over Streamable HTTP with a bearer token, so any
stdio-only client (Claude Desktop, Cursor, VS Code, an SDK's stdio client) reaches the hub.

A transparent proxy: the SDK's stdio server transport and its Streamable HTTP client transport joined by two
forwarding tasks that pass JSON-RPC messages through unchanged, both ways: requests, responses, and notifications
(the hub's `notifications/resources/updated` and `list_changed` arrive on the session's GET stream; the client's
`notifications/initialized` opens that stream, `notifications/cancelled` aborts a request). Nothing is queued here:
both transports hand messages over unbuffered, so a slow side slows the other instead of growing memory.

Over HTTP a request also carries headers its body implies, which a stdio client cannot send: after a 2025-era
`initialize`, `MCP-Protocol-Version` with the negotiated version; on a 2026-07-28 request (the version in its
`_meta`), that version, `Mcp-Method` and `Mcp-Name`. The bridge ends when the client closes stdin, once the
answers to requests already sent are passed on (at most 10 s), ending the hub session (DELETE) on the way out.
"""

import logging
import sys
import urllib.parse
from collections.abc import AsyncIterable
from typing import Any, Protocol

import anyio
import httpx2
import mcp_types as types
from mcp.client.streamable_http import streamable_http_client
from mcp.server.stdio import stdio_server
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    NAME_BEARING_METHODS,
    encode_header_value,
)
from mcp.shared.message import ClientMessageMetadata, SessionMessage

from agenthub.errors import ServiceUnavailable, StartupError

logger = logging.getLogger(__name__)

_TIMEOUT = httpx2.Timeout(30, read=300)  # the hub pings SSE streams every 15 s, so an idle stream never times out
_DRAIN_SECONDS = 10.0  # after stdin closes, how long answers to requests already sent are still passed on
_ENDLESS = {"subscriptions/listen"}  # requests answered only when the client stops them: nothing to wait for


class _Sender(Protocol):
    """The sending end of either transport."""

    async def send(self, item: SessionMessage, /) -> None: ...


def mcp_endpoint(url: str) -> str:
    """The hub's MCP endpoint: `url` itself if it names one, else `url` + `/mcp` (a query, `?tools=`, is kept)."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    return parts._replace(path=path if path.endswith("/mcp") else path + "/mcp").geturl()


class _Exchange:
    """What the bridge learns from the messages it forwards: the 2025-era version the hub agreed to, and which of
    the client's requests are still unanswered."""

    def __init__(self) -> None:
        self.initializing: set[types.RequestId] = set()
        self.version: str | None = None
        self.pending: set[types.RequestId] = set()
        self._answer = anyio.Event()

    def headers(self, message: types.JSONRPCMessage) -> dict[str, str] | None:
        """The HTTP headers that `message` (from the client) implies."""
        if isinstance(message, types.JSONRPCRequest):
            if message.method not in _ENDLESS:
                self.pending.add(message.id)
            params: dict[str, Any] = message.params or {}
            meta = params.get("_meta")
            modern = meta.get(types.PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
            if isinstance(modern, str):
                headers = {MCP_PROTOCOL_VERSION_HEADER: modern, MCP_METHOD_HEADER: message.method}
                name_key = NAME_BEARING_METHODS.get(message.method)
                if name_key is not None and isinstance(name := params.get(name_key), str):
                    headers[MCP_NAME_HEADER] = encode_header_value(name)
                return headers
            if message.method == "initialize":
                self.initializing.add(message.id)
                return None
        return {MCP_PROTOCOL_VERSION_HEADER: self.version} if self.version else None

    def answered(self, message: types.JSONRPCMessage) -> None:
        """Note an answer (and from the answer to `initialize`, the negotiated version)."""
        if not isinstance(message, types.JSONRPCResponse | types.JSONRPCError) or message.id is None:
            return
        self.pending.discard(message.id)
        self._answer.set()
        if message.id in self.initializing:
            self.initializing.discard(message.id)
            if isinstance(message, types.JSONRPCResponse):
                version = message.result.get("protocolVersion")
                self.version = version if isinstance(version, str) else None


    async def drained(self) -> None:
        """Return once every request the client sent has its answer."""
        while self.pending:
            self._answer = anyio.Event()
            await self._answer.wait()


async def _client_to_hub(client: AsyncIterable[SessionMessage | Exception], hub: _Sender,
                         exchange: _Exchange) -> None:
    async for item in client:
        if isinstance(item, Exception):  # a line that is not JSON-RPC: the client's bug, not a reason to stop
            logger.warning("ignored a message from the client that is not JSON-RPC: %s", item)
            continue
        headers = exchange.headers(item.message)
        await hub.send(SessionMessage(item.message, ClientMessageMetadata(headers=headers) if headers else None))


async def _hub_to_client(hub: AsyncIterable[SessionMessage | Exception], client: _Sender,
                         exchange: _Exchange) -> None:
    async for item in hub:
        if isinstance(item, Exception):
            logger.warning("ignored a message from the hub that is not JSON-RPC: %s", item)
            continue
        await client.send(SessionMessage(item.message))
        exchange.answered(item.message)  # once sent: the client has it even if the bridge is ending


class _Unreachable(httpx2.AsyncBaseTransport):
    """The HTTP transport, except that a hub it cannot reach answers 503 with a JSON-RPC error: the SDK's transport
    hands that to the client as the answer to its request. (Raised, the connection error would end the SDK
    transport's task group, and with it the bridge.)"""

    def __init__(self, url: str) -> None:
        self._url = url
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            return await self._inner.handle_async_request(request)
        except httpx2.TransportError as exc:
            message = f"cannot reach the hub at {self._url}: {exc or type(exc).__name__}"
            logger.warning("%s", message)
            return httpx2.Response(503, request=request, json={
                "jsonrpc": "2.0", "id": None, "error": {"code": types.CONNECTION_CLOSED, "message": message}})

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _report_refusal(response: httpx2.Response) -> None:
    """Say on stderr why the hub refused (the client may show only "internal error"): a bad or expired token."""
    if response.status_code in (401, 403):
        await response.aread()
        detail = ""
        try:
            body = response.json()
            detail = body.get("detail", "") if isinstance(body, dict) else ""
        except ValueError:
            pass
        print(f"agenthub: error: the hub refused the token ({response.status_code}){': ' + detail if detail else ''}",
              file=sys.stderr, flush=True)


async def check_hub(url: str) -> None:
    """Fail fast, with one line, if nothing answers at `url` or it is not an agenthub (its `/health`)."""
    parts = urllib.parse.urlsplit(url)
    health = parts._replace(path=parts.path.removesuffix("/mcp") + "/health", query="").geturl()
    try:
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.get(health)
    except httpx2.HTTPError as exc:
        raise ServiceUnavailable(f"cannot reach the hub at {url}: {exc or type(exc).__name__}") from exc
    try:
        status = response.json().get("status")
    except (ValueError, AttributeError):
        status = None
    if response.status_code != 200 or status is None:
        raise StartupError(f"{health} answered HTTP {response.status_code}, not as an agenthub does: is {url} "
                           "a hub?")


async def bridge(url: str, token: str) -> None:
    """Forward MCP between this process's stdio and the hub's endpoint `url` until stdin closes."""
    exchange = _Exchange()
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=_TIMEOUT,
                              transport=_Unreachable(url), event_hooks={"response": [_report_refusal]})
    async with http, stdio_server() as (from_client, to_client):
        async with to_client, streamable_http_client(url, http_client=http) as (from_hub, to_hub):
            async with anyio.create_task_group() as tg:
                async def client_side() -> None:
                    await _client_to_hub(from_client, to_hub, exchange)
                    with anyio.move_on_after(_DRAIN_SECONDS):  # `printf requests | agenthub connect` gets its answers
                        await exchange.drained()
                    logger.info("stdin closed: ending the hub session")
                    tg.cancel_scope.cancel()

                tg.start_soon(client_side)
                tg.start_soon(_hub_to_client, from_hub, to_client, exchange)
