"""The error tree of agenthub. Domain code raises these; only `mcp_server` and `web_ui` translate them.

    HubError
    ├── InvalidInput                 the request is well-formed but its values are not acceptable
    │   └── CursorInFuture           a cursor beyond the newest discovery
    ├── NotFound
    │   ├── DiscoveryNotFound
    │   ├── RelatedDiscoveryNotFound `related_to` names no stored discovery
    │   └── SubscriptionNotFound
    ├── Unauthenticated              no token, or a token that is unknown or revoked
    ├── Forbidden                    the token's role or agent id does not allow the action
    ├── TooManyConnections           a connection limit is reached
    ├── ServiceUnavailable           NATS or PostgreSQL cannot be reached
    └── StartupError                 the hub cannot start; the message is one line for the operator
"""


class HubError(Exception):
    """Root of every error agenthub raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(HubError):
    pass


class CursorInFuture(InvalidInput):
    def __init__(self, cursor: int, newest: int) -> None:
        super().__init__(f"cursor {cursor} is beyond the newest discovery sequence {newest}")
        self.cursor = cursor
        self.newest = newest


class NotFound(HubError):
    pass


class DiscoveryNotFound(NotFound):
    def __init__(self, discovery_id: str) -> None:
        super().__init__(f"no discovery with id {discovery_id!r}")
        self.discovery_id = discovery_id


class RelatedDiscoveryNotFound(NotFound):
    def __init__(self, discovery_id: str) -> None:
        super().__init__(f"related_to names no existing discovery: {discovery_id!r}")
        self.discovery_id = discovery_id


class SubscriptionNotFound(NotFound):
    def __init__(self, subscription_id: str) -> None:
        super().__init__(f"no subscription with id {subscription_id!r}")
        self.subscription_id = subscription_id


class Unauthenticated(HubError):
    pass


class Forbidden(HubError):
    pass


class TooManyConnections(HubError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"connection limit of {limit} reached; retry later")
        self.limit = limit


class ServiceUnavailable(HubError):
    pass


class StartupError(HubError):
    pass
