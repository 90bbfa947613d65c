"""This hub as an OAuth 2.1 protected resource (RFC 9728): the URL its tokens must be issued for, where its
metadata is, and the paths an OAuth client reaches without a token. The guard uses it; `web_ui.oauth` serves them."""

from dataclasses import dataclass

PROTECTED_RESOURCE_PATH = "/.well-known/oauth-protected-resource"
AUTHORIZATION_SERVER_PATH = "/.well-known/oauth-authorization-server"
# Reachable without a token: the metadata and the endpoints an OAuth client calls before it has one.
OAUTH_PATHS = frozenset({PROTECTED_RESOURCE_PATH, f"{PROTECTED_RESOURCE_PATH}/mcp", AUTHORIZATION_SERVER_PATH,
                          "/authorize", "/token", "/register", "/revoke"})


@dataclass(frozen=True, slots=True)
class ResourceServer:
    """This hub as an OAuth protected resource: the URL tokens must be issued for, and where its metadata is."""

    issuer: str  # the hub's base URL, without a trailing slash
    resource: str  # the MCP endpoint: `<issuer>/mcp`

    @classmethod
    def at(cls, base_url: str) -> "ResourceServer":
        issuer = base_url.rstrip("/")
        return cls(issuer=issuer, resource=f"{issuer}/mcp")

    @property
    def metadata_url(self) -> str:
        return f"{self.issuer}{PROTECTED_RESOURCE_PATH}"

    def accepts(self, resource: str) -> bool:
        return resource.rstrip("/") == self.resource
