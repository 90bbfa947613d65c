"""`agenthub connect`: MCP over stdio, forwarded to a hub over Streamable HTTP with a bearer token, so any
stdio-only client (Claude Desktop, Cursor, VS Code, an SDK's stdio client) reaches the hub.

A transparent proxy: the SDK's stdio server transport and its Streamable HTTP client transport joined by two
forwarding tasks that pass JSON-RPC messages through unchanged, both ways: requests, responses, and notifications
(the hub's `notifications/resources/updated` and `list_changed` arrive on the session's GET stream; the client's
`notifications/initialized` opens that stream, `notifications/cancelled` aborts a request). Nothing is queued here:
both transports hand messages over unbuffered, so a slow side slows the other instead of growing memory.

Over HTTP a request also carries headers its body implies, which a stdio client cannot send: after a 2025-era
`initialize`, `MCP-Protocol-Version` with the negotiated version; on a 2026-07-28 request (the version in its
`_meta`), that version, `Mcp-Method` and `Mcp-Name`.

The hub may go away under it. While it cannot be reached, each request is answered with a JSON-RPC error saying
so. A restarted hub has forgotten 2025-era sessions (the next POST gets 404): the bridge opens a new session with
the client's own `initialize`, subscribes to its resources again and sends its unanswered requests again.

The bridge ends when the client closes stdin, once the answers to requests already sent are passed on (at most
10 s), ending the hub session (DELETE) on the way out.
"""

import logging
import sys
import urllib.parse
from collections.abc import AsyncIterable
from itertools import count
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
_REOPEN_SECONDS = 1.0  # how often a lost session is opened again while the hub is still down
_REINITIALIZE = "agenthub-connect-initialize"  # the id of the bridge's own `initialize` of a new session
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
    """What the bridge learns from the messages it forwards: the 2025-era session the client opened (its
    `initialize`, the version agreed, its resource subscriptions), and the client's requests still unanswered.

    A hub that restarts forgets 2025-era sessions: the bridge then opens a new one with the client's own
    `initialize`, subscribes again and sends the unanswered requests again, so the client does not notice."""

    def __init__(self) -> None:
        self.initialize: types.JSONRPCRequest | None = None
        self.initialized = False
        self.version: str | None = None
        self.subscriptions: set[str] = set()
        self.pending: dict[types.RequestId, types.JSONRPCRequest] = {}
        self.lost = anyio.Event()  # the hub answered 404 to this session's id: it forgot the session
        self.open = anyio.Event()  # the session is usable: the client's messages may go to the hub
        self.open.set()
        self._answer = anyio.Event()
        self._replay_ids = count(1)
        self._replayed: dict[types.RequestId, anyio.Event] = {}
        self._reopened = False

    def headers(self, message: types.JSONRPCMessage) -> dict[str, str] | None:
        """The HTTP headers that `message` (from the client) implies; notes what a new session must repeat."""
        if isinstance(message, types.JSONRPCNotification) and message.method == "notifications/initialized":
            self.initialized = True
        if isinstance(message, types.JSONRPCRequest):
            params: dict[str, Any] = message.params or {}
            if message.method not in _ENDLESS:
                self.pending[message.id] = message
            meta = params.get("_meta")
            modern = meta.get(types.PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
            if isinstance(modern, str):
                headers = {MCP_PROTOCOL_VERSION_HEADER: modern, MCP_METHOD_HEADER: message.method}
                name_key = NAME_BEARING_METHODS.get(message.method)
                if name_key is not None and isinstance(name := params.get(name_key), str):
                    headers[MCP_NAME_HEADER] = encode_header_value(name)
                return headers
            if message.method == "initialize":
                self.initialize, self.version = message, None
                return None
            uri = params.get("uri")
            if message.method == "resources/subscribe" and isinstance(uri, str):
                self.subscriptions.add(uri)
            elif message.method == "resources/unsubscribe" and isinstance(uri, str):
                self.subscriptions.discard(uri)
        return self._session_headers()

    def _session_headers(self) -> dict[str, str] | None:
        return {MCP_PROTOCOL_VERSION_HEADER: self.version} if self.version else None

    def for_client(self, message: types.JSONRPCMessage) -> bool:
        """Whether a message from the hub goes to the client: not the answers to the bridge's own requests, nor
        errors for requests it sends again on a new session."""
        if not isinstance(message, types.JSONRPCResponse | types.JSONRPCError) or message.id is None:
            return True
        if (replayed := self._replayed.pop(message.id, None)) is not None:
            if message.id == _REINITIALIZE:
                self._reopened = isinstance(message, types.JSONRPCResponse)
                self._note_version(message)
            replayed.set()
            return False
        if self.lost.is_set() and isinstance(message, types.JSONRPCError) and message.id in self.pending:
            return False
        if self.initialize is not None and message.id == self.initialize.id:
            self._note_version(message)
        return True

    def answered(self, message: types.JSONRPCMessage) -> None:
        """Note that the client has the answer to one of its requests."""
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and message.id is not None:
            self.pending.pop(message.id, None)
            self._answer.set()

    def _note_version(self, message: types.JSONRPCResponse | types.JSONRPCError) -> None:
        version = message.result.get("protocolVersion") if isinstance(message, types.JSONRPCResponse) else None
        self.version = version if isinstance(version, str) else None

    async def drained(self) -> None:
        """Return once every request the client sent has its answer."""
        while self.pending:
            self._answer = anyio.Event()
            await self._answer.wait()

    async def _own_request(self, hub: _Sender, request_id: str, method: str, params: dict[str, Any],
                           headers: dict[str, str] | None) -> anyio.Event:
        answered = self._replayed[request_id] = anyio.Event()
        request = types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method, params=params)
        await hub.send(SessionMessage(request, ClientMessageMetadata(headers=headers) if headers else None))
        return answered

    async def reopen(self, hub: _Sender) -> None:
        """Open a new session on a hub that forgot the last one, as the client opened it; subscribe again; send
        the client's unanswered requests again."""
        assert self.initialize is not None
        await (await self._own_request(hub, _REINITIALIZE, "initialize", self.initialize.params or {}, None)).wait()
        if not self._reopened:  # the hub is not back yet: try again in a second, the client's messages waiting
            await anyio.sleep(_REOPEN_SECONDS)
            self.lost.set()
            return
        headers = ClientMessageMetadata(headers=self._session_headers())
        if self.initialized:  # it also opens the session's GET stream, where notifications arrive
            await hub.send(SessionMessage(
                types.JSONRPCNotification(jsonrpc="2.0", method="notifications/initialized"), headers))
        for uri in sorted(self.subscriptions):
            await self._own_request(hub, f"agenthub-connect-{next(self._replay_ids)}", "resources/subscribe",
                                    {"uri": uri}, self._session_headers())
        for request in list(self.pending.values()):
            await hub.send(SessionMessage(request, headers))
        logger.warning("the hub forgot the session (it restarted): opened a new one; %d subscriptions and %d "
                       "requests sent again", len(self.subscriptions), len(self.pending))
        self.open.set()


async def _client_to_hub(client: AsyncIterable[SessionMessage | Exception], hub: _Sender,
                         exchange: _Exchange) -> None:
    async for item in client:
        if isinstance(item, Exception):  # a line that is not JSON-RPC: the client's bug, not a reason to stop
            logger.warning("ignored a message from the client that is not JSON-RPC: %s", item)
            continue
        headers = exchange.headers(item.message)  # first: a request is noted, to send again if the session is lost
        await exchange.open.wait()
        await hub.send(SessionMessage(item.message, ClientMessageMetadata(headers=headers) if headers else None))


async def _hub_to_client(hub: AsyncIterable[SessionMessage | Exception], client: _Sender,
                         exchange: _Exchange) -> None:
    async for item in hub:
        if isinstance(item, Exception):
            logger.warning("ignored a message from the hub that is not JSON-RPC: %s", item)
            continue
        if exchange.for_client(item.message):
            await client.send(SessionMessage(item.message))
            exchange.answered(item.message)  # once sent: the client has it even if the bridge is ending


class _HubTransport(httpx2.AsyncBaseTransport):
    """The HTTP transport, except that a hub it cannot reach answers 503 with a JSON-RPC error: the SDK's transport
    hands that to the client as the answer to its request. (Raised, the connection error would end the SDK
    transport's task group, and with it the bridge.) A 404 to a session id says the hub forgot the session."""

    def __init__(self, url: str, exchange: _Exchange) -> None:
        self._url = url
        self._exchange = exchange
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            response = await self._inner.handle_async_request(request)
        except httpx2.TransportError as exc:
            message = f"cannot reach the hub at {self._url}: {exc or type(exc).__name__}"
            logger.warning("%s", message)
            return httpx2.Response(503, request=request, json={
                "jsonrpc": "2.0", "id": None, "error": {"code": types.CONNECTION_CLOSED, "message": message}})
        if response.status_code == 404 and request.method == "POST" and "mcp-session-id" in request.headers:
            self._exchange.lost.set()  # the hub does not know the session id: it restarted, or dropped the session
        return response

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
                              transport=_HubTransport(url, exchange), event_hooks={"response": [_report_refusal]})
    stdin_closed = False
    async with http, stdio_server() as (from_client, to_client), to_client:
        while not stdin_closed:  # one pass per hub session: a new one when the hub forgot the last
            async with streamable_http_client(url, http_client=http) as (from_hub, to_hub):
                async with anyio.create_task_group() as tg:
                    async def client_side() -> None:
                        nonlocal stdin_closed
                        await _client_to_hub(from_client, to_hub, exchange)
                        stdin_closed = True
                        with anyio.move_on_after(_DRAIN_SECONDS):  # `printf requests | agenthub connect` gets answers
                            await exchange.drained()
                        logger.info("stdin closed: ending the hub session")
                        tg.cancel_scope.cancel()

                    async def session_lost() -> None:
                        await exchange.lost.wait()
                        exchange.open = anyio.Event()  # the client's messages wait for the new session
                        tg.cancel_scope.cancel()

                    if not exchange.open.is_set():
                        tg.start_soon(exchange.reopen, to_hub)
                    tg.start_soon(client_side)
                    tg.start_soon(session_lost)
                    tg.start_soon(_hub_to_client, from_hub, to_client, exchange)
            exchange.lost = anyio.Event()
