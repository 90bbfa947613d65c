"""The outermost ASGI layer: Host and Origin checks, body size limit, bearer-token authentication and each
token's request rate. Header values reach everything behind it without surrounding whitespace.

It runs before any route, so a bad Origin, an oversize body or a token over its rate is refused before any work
is done (429 with `Retry-After`; on `/mcp` the refusal is left in `scope["state"]["rate_limited"]` for the MCP
server to answer in MCP's terms). The caller's `Principal` is put in `scope["state"]["principal"]` for routes and
MCP tools to read.

Every 401 carries a Bearer challenge naming the hub's OAuth protected-resource metadata (RFC 9728 §5.1), so an
MCP client given only the hub's URL can find how to sign in (`web_ui.resource_server`, `web_ui.oauth`); that
metadata and the OAuth endpoints are public. An OAuth access token issued for another resource (RFC 8707) is
refused like an unknown one.
"""

import logging
import re
from functools import lru_cache, partial
from urllib.parse import parse_qs

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agenthub.auth import LOCAL_OPERATOR, Principal
from agenthub.errors import RateLimited, ServiceUnavailable, Unauthenticated
from agenthub.ratelimit import REQUESTS, RateLimiter
from agenthub.token_cache import TokenCache
from web_ui.origins import field_value, host_allowed, origin_allowed
from web_ui.problems import problem, problem_for
from web_ui.resource_server import LIMITED_PATHS, OAUTH_PATHS, AddressLimit, ResourceServer

logger = logging.getLogger(__name__)

# Paths anyone may read without a token: liveness, readiness, metrics scraping, the API description, the page.
PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics", "/openapi.json"})
# Browsers' EventSource cannot send headers, so the UI streams also take `?access_token=`.
QUERY_TOKEN_PATHS = frozenset({"/discoveries/stream", "/events/stream"})
STATIC_PREFIX = "/ui/"  # the dashboard's own files: public, like the page at `/`
# Module uploads are the one kind of body allowed past the general limit (up to the sandbox's module limit).
UPLOAD_PATH = re.compile(r"/api/v1/agents/[^/]+/binary")
_WHITESPACE = (b" ", b"\t")
MCP_PATH = "/mcp"  # a rate-limited MCP request is answered by the MCP server: a tool error says when to retry


class Guard:
    def __init__(self, app: ASGIApp, *, max_body: int, max_upload: int, auth: bool, allowed_hosts: list[str],
                 allowed_origins: list[str], tokens: TokenCache, limiter: RateLimiter,
                 resource_server: ResourceServer | None = None, oauth_limit: AddressLimit | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload
        self.auth = auth
        # Clients send the same few Host values again and again; parsing one (an IP address) costs more than the
        # rest of the checks. Bounded: the values are the client's to choose.
        self._host_allowed = lru_cache(maxsize=64)(partial(host_allowed, allowed=tuple(allowed_hosts)))
        self.allowed_origins = allowed_origins
        self._tokens = tokens
        self._limiter = limiter
        self._resource_server = resource_server  # None: OAuth is off
        self._oauth_limit = oauth_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if any(value[-1:] in _WHITESPACE for _, value in scope["headers"]):
            # Whitespace around a field value is not part of it (RFC 9110 §5.5); uvicorn keeps the trailing kind.
            scope["headers"] = [(name, value.strip(b" \t")) for name, value in scope["headers"]]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = field_value(scope["headers"], b"host") or ""
        if not self._host_allowed(host):
            await problem(403, "Forbidden host", f"Host {host!r} is not allowed")(scope, receive, send)
            return
        origin = field_value(scope["headers"], b"origin")
        if origin is not None and not origin_allowed(origin, self.allowed_origins):
            await problem(403, "Forbidden origin", f"Origin {origin!r} is not allowed")(scope, receive, send)
            return
        limit = self.max_upload if scope["method"] == "POST" and UPLOAD_PATH.fullmatch(scope["path"]) else \
            self.max_body
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await problem(413, "Body too large", f"request bodies here are limited to {limit} bytes")(
                scope, receive, send)
            return
        try:
            principal = await self._authenticate(scope, headers)
        except Unauthenticated as exc:
            await self._unauthenticated(exc.message, host, has_token=_bearer(headers) is not None)(
                scope, receive, send)
            return
        except ServiceUnavailable as exc:  # the token could not be checked: PostgreSQL is down or frozen
            await problem_for(exc)(scope, receive, send)
            return
        if principal is None and self._oauth_limit is not None and scope["path"] in LIMITED_PATHS:
            client = scope.get("client")
            retry = self._oauth_limit.take(client[0] if client else "")
            if retry:
                await problem_for(RateLimited("OAuth requests from this address", retry))(scope, receive, send)
                return
        state = scope.setdefault("state", {})
        if principal is not None and principal.token_id is not None:
            try:
                self._limiter.take(REQUESTS, principal.token_id)
            except RateLimited as exc:
                if scope["path"] != MCP_PATH:
                    await problem_for(exc)(scope, receive, send)
                    return
                state["rate_limited"] = exc
        # Only an authenticated request gets its body buffered.
        bounded = await self._bounded_body(scope, receive, send, limit)
        if bounded is None:
            return
        state["principal"] = principal
        if scope["path"] == MCP_PATH and principal is not None and principal.token_id is not None:
            scope["user"] = session_owner(principal.token_id)
            if scope["method"] == "GET":
                await self._stream_while_valid(principal, scope, bounded, send)
                return
        await self.app(scope, bounded, send)

    async def _stream_while_valid(self, principal: Principal, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a session's MCP GET stream only while its token holds (`TokenCache.bound_to`): revoked or expired,
        the stream ends with a complete response, and the session, which nobody can use any more, idles out."""
        started = ended = False

        async def tracked(message: Message) -> None:
            nonlocal started, ended
            started = True
            ended = message["type"] == "http.response.body" and not message.get("more_body", False)
            await send(message)

        with self._tokens.bound_to(principal) as held:
            await self.app(scope, receive, tracked)
        if not held.cancelled_caught:
            return
        if not started:
            host = field_value(scope["headers"], b"host") or ""
            await self._unauthenticated("the token was revoked or expired", host, has_token=True)(
                scope, receive, send)
        elif not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _bounded_body(self, scope: Scope, receive: Receive, send: Send, limit: int) -> Receive | None:
        """Read a body of unknown length up to the limit; None (after answering 413) when it is larger. The body is
        also left in `scope["state"]["body"]` for the MCP endpoint (`mcp_server.direct`), which reads it there."""
        if scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return receive
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await problem(413, "Body too large", f"request bodies here are limited to {limit} bytes")(
                    scope, receive, send)
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        scope.setdefault("state", {})["body"] = body
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _authenticate(self, scope: Scope, headers: dict[str, str]) -> Principal | None:
        if not self.auth:
            return LOCAL_OPERATOR
        path: str = scope["path"]
        token = _bearer(headers)
        if token is None and path in QUERY_TOKEN_PATHS:
            token = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("access_token", [None])[0]
        if token is None:
            if path in PUBLIC_PATHS or path == "/" or path.startswith(STATIC_PREFIX) or (
                    self._resource_server is not None and path in OAUTH_PATHS):
                return None
            raise Unauthenticated("missing bearer token: send 'Authorization: Bearer <token>'")
        principal = await self._tokens.resolve(token)
        if principal.resource is not None and (self._resource_server is None or
                                               not self._resource_server.accepts(principal.resource)):
            raise Unauthenticated(f"this token was issued for {principal.resource}, not for this hub")
        return principal

    def _unauthenticated(self, detail: str, host: str, *, has_token: bool) -> JSONResponse:
        """401 with a Bearer challenge that points an OAuth client at the protected-resource metadata."""
        challenge = 'Bearer realm="agenthub"'
        if self._resource_server is not None:
            challenge += f', resource_metadata="{self._resource_server.metadata_url_for(host)}"'
        if has_token:
            challenge += ', error="invalid_token"'
        response = problem(401, "Unauthenticated", detail)
        response.headers["WWW-Authenticate"] = challenge
        return response


def _bearer(headers: dict[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    return authorization[7:].strip() if authorization[:7].lower() == "bearer " else None


def principal_of(scope: Scope, auth: bool) -> Principal | None:
    """The caller the guard authenticated (everyone is the local operator without auth); None for a request it let
    through without a token (a public path)."""
    principal = scope.get("state", {}).get("principal")
    if principal is None:
        return None if auth else LOCAL_OPERATOR
    assert isinstance(principal, Principal)
    return principal


def rate_limited(scope: Scope) -> RateLimited | None:
    """The guard's refusal of an MCP request's token (over its rate), left for the MCP server to answer."""
    limited = scope.get("state", {}).get("rate_limited")
    assert limited is None or isinstance(limited, RateLimited)
    return limited


def session_owner(token_id: str) -> AuthenticatedUser:
    """A token as the MCP SDK's user. The SDK's session manager binds each 2025-11-25 session to the user whose
    request opened it, answers another user's request for it (POST, GET stream, DELETE) with 404 as if it did not
    exist, and forgets the owner however the session ends (DELETE, idle timeout, shutdown). Only the token's id is
    given: the SDK compares `client_id`, and the secret has no business in another object."""
    return AuthenticatedUser(AccessToken(token=token_id, client_id=token_id, scopes=[]))
