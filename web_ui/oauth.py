"""OAuth 2.1 sign-in for remote MCP clients, as the MCP authorization spec describes it: the hub is the protected
resource (RFC 9728 metadata, advertised in `WWW-Authenticate` by the guard) and its own authorization server
(RFC 8414 metadata, dynamic client registration RFC 7591, authorization code + PKCE S256, refresh, revocation
RFC 7009).

The protocol is the MCP SDK's (`mcp.server.auth`: its handlers call `HubAuthorizationProvider`); the state lives in
PostgreSQL (`agenthub.oauth`). `/authorize` sends the browser to the dashboard's consent page
(`/#/consent/<request id>`), where a signed-in operator sees the client and its redirect URI, grants a role (and,
for an agent, the agent id its tokens act as) or denies; `POST /oauth/consent/<request id>` answers with where the
browser goes next: the client's redirect URI with a one-use code, or with `error=access_denied`.

Access tokens are ordinary hub tokens (`tokens` rows) that expire after `oauth.access_token_seconds` and carry the
resource they were issued for: the guard refuses them anywhere else. Registered clients are public clients: the
registration answers `token_endpoint_auth_method: none` whatever was asked (RFC 7591 lets the server choose), so
the hub keeps no client secrets. Redirect URIs are compared exactly, except that the port of a loopback IP literal
(`http://127.0.0.1`, `http://[::1]`) may differ at request time (RFC 8252 §7.3).
"""

import logging
import time
from functools import partial
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit

import asyncpg
from mcp.server.auth.handlers.metadata import MetadataHandler
from mcp.server.auth.json_response import PydanticJSONResponse
from mcp.server.auth.middleware.client_auth import AuthenticationError, ClientAuthenticator
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    RefreshToken,
    RegistrationError,
    TokenError,
    construct_redirect_uri,
)
from mcp.server.auth.routes import build_metadata, cors_middleware, create_auth_routes, validate_issuer_url
from mcp.server.auth.settings import ClientRegistrationOptions, RevocationOptions
from mcp.shared.auth import (
    InvalidRedirectUriError,
    OAuthClientInformationFull,
    OAuthToken,
    ProtectedResourceMetadata,
)
from pydantic import AnyHttpUrl, AnyUrl, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from agenthub import oauth
from agenthub.auth import Role
from agenthub.bus import Bus
from agenthub.errors import InvalidInput, NotFound
from agenthub.ids import TokenId, is_valid_agent_id
from agenthub.settings import OAuthSettings
from agenthub.text import Storable, find_unstorable
from agenthub.token_cache import TokenCache, announce_revoked
from collaboration.models import AgentIdField
from web_ui import client_metadata
from web_ui.endpoints import Described, Endpoint
from web_ui.resource_server import AUTHORIZATION_SERVER_PATH, PROTECTED_RESOURCE_PATH, ResourceServer
from web_ui.state import HubState, hub_of, principal_of

logger = logging.getLogger(__name__)

CONSENT_PATH = "/oauth/consent/{request_id}"
_LOOPBACK_IPS = frozenset({"127.0.0.1", "::1"})  # as `urlsplit` gives them
_LOOPBACK_HOSTS = _LOOPBACK_IPS | {"localhost"}
_FORBIDDEN_SCHEMES = frozenset({"javascript", "data", "file", "vbscript", "blob", "about", "ftp", "ws", "wss"})
_GRANT_TYPES = frozenset({"authorization_code", "refresh_token"})
_DOCUMENT_SECONDS = 300.0  # a client metadata document is fetched again after this
_MAX_DOCUMENTS = 1000


def _loopback_ip(parts: SplitResult) -> bool:
    return parts.scheme == "http" and parts.hostname in _LOOPBACK_IPS


def same_redirect_uri(requested: str, registered: str) -> bool:
    """Exact comparison, except that a loopback IP literal's port is chosen by the client at request time."""
    if requested == registered:
        return True
    a, b = urlsplit(requested), urlsplit(registered)
    if not (_loopback_ip(a) and _loopback_ip(b)):
        return False
    return (a.hostname, a.path, a.query, a.fragment) == (b.hostname, b.path, b.query, b.fragment)


def check_redirect_uri(uri: str) -> None:
    """A redirect URI a client may register: https, http on loopback only, or an app's private-use scheme
    (RFC 8252); never with a fragment. Raises `RegistrationError` naming the URI."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    problem = None
    if parts.fragment or "#" in uri:
        problem = "must not have a fragment"
    elif scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
        problem = "may use http only on a loopback address (127.0.0.1, [::1], localhost); use https"
    elif scheme in _FORBIDDEN_SCHEMES:
        problem = f"may not use the {scheme}: scheme"
    elif scheme == "https" and not parts.hostname:
        problem = "needs a host"
    if problem is not None:
        raise RegistrationError("invalid_redirect_uri", f"redirect URI {uri!r} {problem}")


class HubClient(OAuthClientInformationFull):
    """A registered client, with the hub's redirect URI rule."""

    def validate_redirect_uri(self, redirect_uri: AnyUrl | None) -> AnyUrl:
        if redirect_uri is None:
            return super().validate_redirect_uri(None)
        registered = [str(uri) for uri in self.redirect_uris or []]
        if any(same_redirect_uri(str(redirect_uri), uri) for uri in registered):
            return redirect_uri
        raise InvalidRedirectUriError(f"redirect URI {str(redirect_uri)!r} is not registered for this client "
                                      f"(registered: {', '.join(registered)})")


class HubAuthorizationCode(AuthorizationCode):
    family: str


class HubRefreshToken(RefreshToken):
    family: str


class HubAccessToken(AccessToken):
    family: str


class HubAuthorizationProvider:
    """The SDK's `OAuthAuthorizationServerProvider`, over `agenthub.oauth`."""

    def __init__(self, *, pool: asyncpg.Pool, tokens: TokenCache, bus: Bus, server: ResourceServer,
                 settings: OAuthSettings) -> None:
        self._pool = pool
        self._tokens = tokens
        self._bus = bus
        self._server = server
        self._settings = settings
        self._documents: dict[str, tuple[float, HubClient]] = {}  # client id URL -> (until, the client)

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        if find_unstorable(client_id) is not None:  # no such id can be stored: the SDK's "not found" answers it
            return None
        if self._settings.client_metadata_documents and client_metadata.is_metadata_url(client_id):
            return await self._described_client(client_id)
        metadata = await oauth.load_client(self._pool, client_id)
        return None if metadata is None else HubClient.model_validate(metadata)

    async def _described_client(self, url: str) -> HubClient | None:
        """A client described by its metadata document, fetched at most every `_DOCUMENT_SECONDS`; None (logged)
        when the document cannot be used."""
        cached = self._documents.get(url)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            document = await client_metadata.fetch(
                url, private_addresses=self._settings.client_metadata_private_addresses,
                ca_file=self._settings.client_metadata_ca_file)
            client = HubClient.model_validate({**document, "client_id": url, "token_endpoint_auth_method": "none"})
            if not client.redirect_uris:
                raise client_metadata.ClientMetadataError("the document names no redirect_uris")
            for uri in client.redirect_uris:
                check_redirect_uri(str(uri))
            metadata = client.model_dump(mode="json", exclude_none=True)
            if (found := find_unstorable(metadata)) is not None:
                raise client_metadata.ClientMetadataError(f"{found[0]}: {found[1]}")
        except (client_metadata.ClientMetadataError, RegistrationError, ValidationError) as exc:
            logger.warning("client metadata document %s refused: %s", url, exc)
            return None
        await oauth.save_client(self._pool, url, metadata, replace=True)
        if len(self._documents) >= _MAX_DOCUMENTS:
            self._documents.clear()
        self._documents[url] = (time.monotonic() + _DOCUMENT_SECONDS, client)
        return client

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        for uri in client_info.redirect_uris or []:
            check_redirect_uri(str(uri))
        if not set(client_info.grant_types) <= _GRANT_TYPES:
            raise RegistrationError("invalid_client_metadata",
                                    f"grant_types may be {sorted(_GRANT_TYPES)}, got {client_info.grant_types}")
        metadata = client_info.model_dump(mode="json", exclude_none=True)
        if (found := find_unstorable(metadata)) is not None:
            raise RegistrationError("invalid_client_metadata", f"{found[0]}: {found[1]}")
        # A public client (PKCE, no secret): the answer the SDK sends back is this same object.
        client_info.token_endpoint_auth_method = "none"
        client_info.client_secret = None
        client_info.client_secret_expires_at = None
        await oauth.save_client(self._pool, client_info.client_id, client_info.model_dump(mode="json",
                                                                                         exclude_none=True))
        logger.info("registered OAuth client %s (%s)", client_info.client_id, client_info.client_name or "unnamed")

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        resource = params.resource or self._server.resource
        for name, value in (("state", params.state), ("code_challenge", params.code_challenge),
                            ("redirect_uri", str(params.redirect_uri))):
            if (found := find_unstorable(value)) is not None:
                raise AuthorizeError("invalid_request", f"{name}: {found[1]}")
        if not self._server.accepts(resource):
            raise AuthorizeError("invalid_target", f"this authorization server issues tokens only for "
                                                   f"{self._server.resource}, not {resource}")
        request_id = await oauth.open_request(self._pool, client.client_id, {
            "redirect_uri": str(params.redirect_uri),
            "redirect_uri_provided_explicitly": params.redirect_uri_provided_explicitly,
            "state": params.state, "code_challenge": params.code_challenge, "scopes": params.scopes or [],
            "resource": resource.rstrip("/"),
        }, seconds=self._settings.consent_seconds)
        return f"{self._server.issuer}/#/consent/{request_id}"

    async def load_authorization_code(self, client: OAuthClientInformationFull,
                                      authorization_code: str) -> HubAuthorizationCode | None:
        stored, revoked = await oauth.load_code(self._pool, client.client_id, authorization_code)
        await self._forget(revoked, "an authorization code was used twice")
        if stored is None:
            return None
        p = stored.params
        return HubAuthorizationCode(
            code=authorization_code, scopes=p["scopes"], expires_at=stored.expires_at.timestamp(),
            client_id=stored.grant.client_id, code_challenge=p["code_challenge"],
            redirect_uri=AnyUrl(p["redirect_uri"]),
            redirect_uri_provided_explicitly=p["redirect_uri_provided_explicitly"], resource=p["resource"],
            family=stored.grant.family)

    async def exchange_authorization_code(self, client: OAuthClientInformationFull,
                                          authorization_code: HubAuthorizationCode) -> OAuthToken:
        issued = await oauth.redeem_code(self._pool, authorization_code.code, **self._lifetimes())
        if issued is None:
            raise TokenError("invalid_grant", "the authorization code was already used or has expired")
        logger.info("OAuth client %s got token %s", client.client_id, issued.access_token_id)
        return self._answer(issued, authorization_code.scopes)

    async def load_refresh_token(self, client: OAuthClientInformationFull,
                                 refresh_token: str) -> HubRefreshToken | None:
        stored, revoked = await oauth.load_refresh(self._pool, client.client_id, refresh_token)
        await self._forget(revoked, "a rotated refresh token was presented again")
        if stored is None:
            return None
        return HubRefreshToken(token=refresh_token, client_id=stored.grant.client_id, scopes=stored.grant.scopes,
                               expires_at=int(stored.expires_at.timestamp()), resource=stored.grant.resource,
                               family=stored.grant.family)

    async def exchange_refresh_token(self, client: OAuthClientInformationFull, refresh_token: HubRefreshToken,
                                     scopes: list[str]) -> OAuthToken:
        issued = await oauth.rotate_refresh(self._pool, refresh_token.token, **self._lifetimes())
        if issued is None:
            raise TokenError("invalid_grant", "the refresh token was already used, revoked or has expired")
        return self._answer(issued, scopes)

    async def load_access_token(self, token: str) -> HubAccessToken | None:
        stored = await oauth.load_access(self._pool, token)
        if stored is None:
            return None
        expires = int(stored.expires_at.timestamp()) if stored.expires_at is not None else None
        return HubAccessToken(token=token, client_id=stored.grant.client_id, scopes=[], expires_at=expires,
                              resource=stored.grant.resource, family=stored.grant.family)

    async def revoke_token(self, token: HubAccessToken | HubRefreshToken) -> None:
        """Revoking either kind revokes the whole grant: its access tokens and refresh tokens."""
        await self._forget(await oauth.revoke_family(self._pool, token.family), "the client revoked its grant")

    async def exchange_identity_assertion(self, client: OAuthClientInformationFull, params: Any) -> OAuthToken:
        raise TokenError("unsupported_grant_type", "this authorization server does not take identity assertions")

    def _lifetimes(self) -> dict[str, int]:
        return {"access_seconds": self._settings.access_token_seconds,
                "refresh_seconds": self._settings.refresh_token_seconds}

    @staticmethod
    def _answer(issued: oauth.IssuedTokens, scopes: list[str]) -> OAuthToken:
        return OAuthToken(access_token=issued.access_token, expires_in=issued.expires_in,
                          refresh_token=issued.refresh_token, scope=" ".join(scopes) or None)

    async def _forget(self, token_ids: list[TokenId], why: str) -> None:
        if not token_ids:
            return
        for token_id in token_ids:
            self._tokens.forget(token_id)
        await announce_revoked(self._bus, token_ids)
        logger.warning("revoked OAuth tokens %s: %s", ", ".join(token_ids), why)


def _url(url: str) -> AnyHttpUrl:
    """As written: pydantic would add a `/` to a URL without a path, and issuers are compared as strings."""
    return TypeAdapter(AnyHttpUrl, config=ConfigDict(url_preserve_empty_path=True)).validate_python(url)


def resource_server_for(base_url: str) -> ResourceServer | None:
    """The hub at `base_url` as a protected resource and issuer; None (OAuth off, with a warning) when OAuth cannot
    be offered there: an issuer must be https unless it is on loopback."""
    server = ResourceServer.at(base_url)
    try:
        validate_issuer_url(_url(server.issuer))
    except ValueError as exc:
        logger.warning("OAuth sign-in is off: the hub's URL %s cannot be an OAuth issuer (%s); set "
                       "AGENTHUB_PUBLIC_URL to its https URL", server.issuer, exc)
        return None
    return server


def routes(hub: HubState, server: ResourceServer) -> list[BaseRoute]:
    """The metadata, the SDK's authorization-server endpoints and the consent endpoints."""
    provider = HubAuthorizationProvider(pool=hub.pool, tokens=hub.tokens, bus=hub.bus, server=server,
                                        settings=hub.settings.oauth)
    issuer = _url(server.issuer)
    registration = ClientRegistrationOptions(enabled=True)
    revocation = RevocationOptions(enabled=True)
    sdk_routes = create_auth_routes(provider, issuer, client_registration_options=registration,
                                    revocation_options=revocation)
    # The SDK's metadata offers client secrets; this hub registers public clients only.
    metadata = build_metadata(issuer, None, registration, revocation)
    metadata.token_endpoint_auth_methods_supported = ["none"]
    metadata.revocation_endpoint_auth_methods_supported = ["none"]
    metadata.client_id_metadata_document_supported = hub.settings.oauth.client_metadata_documents
    methods = ["GET", "OPTIONS"]
    as_route = Route(AUTHORIZATION_SERVER_PATH, endpoint=cors_middleware(MetadataHandler(metadata).handle, methods),
                     methods=methods)

    async def resource_metadata(request: Request) -> Response:
        """RFC 9728 metadata naming the resource by the URL the client used (`ResourceServer.resource_for`)."""
        metadata = ProtectedResourceMetadata(resource=_url(server.resource_for(request.headers.get("host", ""))),
                                             authorization_servers=[issuer], resource_name="agenthub")
        return PydanticJSONResponse(content=metadata, headers={"Cache-Control": "no-cache"})

    resource_routes = [Route(path, endpoint=cors_middleware(resource_metadata, methods), methods=methods)
                       for path in (PROTECTED_RESOURCE_PATH, f"{PROTECTED_RESOURCE_PATH}/mcp")]
    revoke_route = Route("/revoke", endpoint=cors_middleware(partial(revoke, provider, ClientAuthenticator(provider)),
                                                             ["POST", "OPTIONS"]), methods=["POST", "OPTIONS"])
    others = [r for r in sdk_routes if getattr(r, "path", None) not in (AUTHORIZATION_SERVER_PATH, "/revoke")]
    return [as_route, *resource_routes, revoke_route, *others, *(ep.route() for ep in ENDPOINTS)]


async def revoke(provider: HubAuthorizationProvider, clients: ClientAuthenticator, request: Request) -> Response:
    """RFC 7009 revocation. The SDK's own handler requires a `client_secret` field even from a public client (mcp
    2.3.0), so this one reads the form itself; the rest is as the SDK does it: authenticate the client, find the
    token (either kind), revoke it if it is the client's, answer 200 either way."""
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    try:
        client = await clients.authenticate_request(request)
    except AuthenticationError as exc:
        return JSONResponse({"error": "invalid_client", "error_description": exc.message}, status_code=401,
                            headers=headers)
    form = await request.form()
    token, hint = form.get("token"), form.get("token_type_hint")
    if not isinstance(token, str) or not token:
        return JSONResponse({"error": "invalid_request", "error_description": "the form needs `token`"},
                            status_code=400, headers=headers)
    found: HubAccessToken | HubRefreshToken | None
    if hint == "refresh_token":
        found = await provider.load_refresh_token(client, token) or await provider.load_access_token(token)
    else:
        found = await provider.load_access_token(token) or await provider.load_refresh_token(client, token)
    if found is not None and found.client_id == client.client_id:
        await provider.revoke_token(found)
    return Response(status_code=200, headers=headers)


# -- the consent page's API (operators only) ---------------------------------------------------------------------


class ConsentOut(BaseModel):
    request_id: str
    client_id: str
    client_name: str | None
    client_uri: str | None
    redirect_uri: str = Field(description="Where the browser goes with the code: check it is the client's.")
    redirect_uri_registered: list[str]
    resource: str
    scopes: list[str]
    expires_at: Any


class ConsentAnswer(Storable):
    model_config = ConfigDict(strict=True, extra="forbid")
    approve: bool
    role: Role = Role.AGENT
    agent_id: Annotated[AgentIdField | None, Field(description="The agent id an agent token acts as.")] = None


class ConsentResult(BaseModel):
    redirect_to: str = Field(description="Send the browser here: the client's redirect URI with the code (or the "
                                         "error)")
    outcome: Literal["approved", "denied"]


def _request_id(request: Request) -> str:
    return str(request.path_params["request_id"])


async def show_consent(request: Request, _: None) -> ConsentOut:
    principal_of(request).require_operator()
    pending = await oauth.load_request(hub_of(request).pool, _request_id(request))
    if pending is None:
        raise NotFound("no such authorization request: it was answered already or has expired; start the sign-in "
                       "again from the client")
    return ConsentOut(request_id=pending.request_id, client_id=pending.client_id,
                      client_name=pending.client.get("client_name"), client_uri=pending.client.get("client_uri"),
                      redirect_uri=pending.params["redirect_uri"],
                      redirect_uri_registered=pending.client.get("redirect_uris", []),
                      resource=pending.params["resource"], scopes=pending.params["scopes"],
                      expires_at=pending.expires_at)


async def answer_consent(request: Request, body: ConsentAnswer) -> ConsentResult:
    principal_of(request).require_operator()
    if body.approve and (body.role is Role.AGENT) != (body.agent_id is not None):
        raise InvalidInput("an agent grant needs agent_id, and only agent grants take one")
    if body.agent_id is not None and not is_valid_agent_id(body.agent_id):
        raise InvalidInput(f"invalid agent id {body.agent_id!r}: use 1-64 letters, digits, '_' or '-'")
    hub = hub_of(request)
    issuer = request.app.state.resource_server.issuer
    async with hub.pool.acquire() as conn, conn.transaction():
        pending = await oauth.load_request(conn, _request_id(request), close=True)
        if pending is None:
            raise NotFound("no such authorization request: it was answered already or has expired")
        p = pending.params
        if not body.approve:
            target = construct_redirect_uri(p["redirect_uri"], error="access_denied",
                                            error_description="the operator denied the request", state=p["state"],
                                            iss=issuer)
            logger.info("OAuth consent for client %s denied", pending.client_id)
            return ConsentResult(redirect_to=target, outcome="denied")
        code = await oauth.issue_code(conn, pending, body.role, body.agent_id,
                                      seconds=hub.settings.oauth.code_seconds)
    logger.info("OAuth consent for client %s: role %s, agent %s", pending.client_id, body.role.value, body.agent_id)
    return ConsentResult(redirect_to=construct_redirect_uri(p["redirect_uri"], code=code, state=p["state"], iss=issuer),
                         outcome="approved")


ENDPOINTS = [
    Endpoint(method="GET", path=CONSENT_PATH, summary="A pending OAuth authorization request, for the consent page "
             "(operator)", handler=show_consent, response=ConsentOut),
    Endpoint(method="POST", path=CONSENT_PATH, summary="Approve (granting a role and agent id) or deny a pending "
             "OAuth authorization request; answers where the browser goes next (operator)", handler=answer_consent,
             body=ConsentAnswer, response=ConsentResult),
]


# -- how /openapi.json describes the OAuth routes ----------------------------------------------------------------

# OAuth's own answers (redirects, and errors as OAuth JSON: `error`, `error_description`) are not problem JSON, so
# the descriptions state them and only the successes are listed as responses.
_OAUTH_ERRORS = "Errors are OAuth JSON (`error`, `error_description`; RFC 6749 §5.2), not problem JSON: "
DESCRIBED = [
    Described(method="GET", path=PROTECTED_RESOURCE_PATH, operation_id="oauth_protected_resource",
              summary="OAuth protected-resource metadata (RFC 9728): the resource (<hub>/mcp) and its issuer",
              description="The resource is named by the URL the client used when that is another loopback name for "
                          "the hub."),
    Described(method="GET", path=f"{PROTECTED_RESOURCE_PATH}/mcp", operation_id="oauth_protected_resource_mcp",
              summary="The same metadata at the path RFC 9728 derives from the resource URL"),
    Described(method="GET", path=AUTHORIZATION_SERVER_PATH, operation_id="oauth_authorization_server",
              summary="OAuth authorization-server metadata (RFC 8414)"),
    Described(method="POST", path="/register", operation_id="oauth_register", summary="Register a public OAuth "
              "client (RFC 7591): JSON client metadata in, the client's id out", answers={201: "Registered"},
              description=_OAUTH_ERRORS + "400 `invalid_redirect_uri` or `invalid_client_metadata`."),
    *(Described(method=method, path="/authorize", operation_id=f"oauth_authorize{suffix}", answers={},
                summary="Start an authorization (code + PKCE S256): redirects to the dashboard's consent page",
                description="Query (GET) or form (POST) parameters of RFC 6749 §4.1.1 with `code_challenge`, "
                            "`code_challenge_method=S256` and `resource` (RFC 8707). Answers 302: to the consent "
                            "page, or back to the client's redirect URI with `error`; 400 (OAuth JSON) for an "
                            "unknown client or a redirect URI it did not register.")
      for method, suffix in (("GET", ""), ("POST", "_form"))),
    Described(method="POST", path="/token", operation_id="oauth_token", summary="Exchange an authorization code "
              "(with its PKCE verifier) or a refresh token for an access token and a new refresh token",
              answers={200: "Tokens (RFC 6749 §5.1)"}, description="A form body (`application/x-www-form-urlencoded`). "
              + _OAUTH_ERRORS + "400 `invalid_request`, `invalid_grant`, ...; 401 `invalid_client`."),
    Described(method="POST", path="/revoke", operation_id="oauth_revoke", summary="Revoke an access or refresh "
              "token and with it the whole grant (RFC 7009)", answers={200: "Revoked, or unknown: the same answer"},
              description="A form body (`application/x-www-form-urlencoded`). " + _OAUTH_ERRORS +
              "400 `invalid_request`, 401 `invalid_client`."),
]


def describe_as_anonymous(document: dict[str, Any]) -> None:
    """Mark the OAuth routes of `/openapi.json` as taking no token (`security: [{}]`, OpenAPI's empty requirement).
    They are not among the guard's always-public `PUBLIC_PATHS` (GET-able everywhere): they exist only when OAuth
    is on, and most take POST."""
    for d in DESCRIBED:
        document["paths"][d.path][d.method.lower()]["security"] = [{}]
