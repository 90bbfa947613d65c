"""This hub as an OAuth 2.1 protected resource (RFC 9728): the URL its tokens must be issued for, where its
metadata is, the paths an OAuth client reaches without a token, and the rate of those per client address. The
guard uses it; `web_ui.oauth` serves them."""

import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

PROTECTED_RESOURCE_PATH = "/.well-known/oauth-protected-resource"
AUTHORIZATION_SERVER_PATH = "/.well-known/oauth-authorization-server"
# Reachable without a token: the metadata and the endpoints an OAuth client calls before it has one.
OAUTH_PATHS = frozenset({PROTECTED_RESOURCE_PATH, f"{PROTECTED_RESOURCE_PATH}/mcp", AUTHORIZATION_SERVER_PATH,
                          "/authorize", "/token", "/register", "/revoke"})


# The endpoints that write (clients, consent requests, tokens): rate-limited per client address.
LIMITED_PATHS = frozenset({"/authorize", "/token", "/register", "/revoke"})
_MAX_ADDRESSES = 10_000
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})  # as `urlsplit` gives them


def _loopback_port(url: str) -> int | None:
    """The port of an http URL on a loopback name (without a path), else None."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in _LOOPBACK_NAMES or parts.path.strip("/") or parts.query:
        return None
    try:
        return parts.port or 80
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ResourceServer:
    """This hub as an OAuth protected resource: the URL tokens must be issued for, and where its metadata is.

    A hub on loopback is one resource under each loopback name (`127.0.0.1`, `localhost`, `[::1]`) at its port: a
    client configured with `http://localhost:8765/mcp` is told that URL is the resource (the SDKs check it matches),
    and tokens issued for any of these names work. Behind a public URL, that URL is the only one."""

    issuer: str  # the hub's base URL, without a trailing slash
    resource: str  # the MCP endpoint: `<issuer>/mcp`
    loopback_port: int | None = None

    @classmethod
    def at(cls, base_url: str) -> "ResourceServer":
        issuer = base_url.rstrip("/")
        return cls(issuer=issuer, resource=f"{issuer}/mcp", loopback_port=_loopback_port(issuer))

    def base_for(self, host: str) -> str:
        """The hub's base URL as the client reached it (its `Host`), when that is another name for it."""
        if self.loopback_port is not None and _loopback_port(f"http://{host}") == self.loopback_port:
            return f"http://{host}"
        return self.issuer

    def resource_for(self, host: str) -> str:
        return f"{self.base_for(host)}/mcp"

    def metadata_url_for(self, host: str) -> str:
        return f"{self.base_for(host)}{PROTECTED_RESOURCE_PATH}"

    def accepts(self, resource: str) -> bool:
        resource = resource.rstrip("/")
        if resource == self.resource:
            return True
        if self.loopback_port is None or not resource.endswith("/mcp"):
            return False
        return _loopback_port(resource.removesuffix("/mcp")) == self.loopback_port


@dataclass(slots=True)
class AddressLimit:
    """A token bucket per client address for the OAuth endpoints, which have no token to charge (one replica's
    view: N replicas allow N times the rate)."""

    per_minute: float
    burst: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # address -> (tokens, at)

    def take(self, address: str) -> float:
        """Take one request for `address`: 0 when allowed, else the seconds until one will be."""
        now = time.monotonic()
        tokens, at = self._buckets.get(address, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.per_minute / 60)
        if tokens < 1:
            return (1 - tokens) * 60 / self.per_minute
        if len(self._buckets) >= _MAX_ADDRESSES and address not in self._buckets:
            self._buckets.clear()  # bounded memory: forgetting gives every address a full bucket again
        self._buckets[address] = (tokens - 1, now)
        return 0.0
