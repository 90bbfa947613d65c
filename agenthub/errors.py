"""The error tree of agenthub. Domain code raises these; only `mcp_server` and `web_ui` translate them.

    HubError
    ├── InvalidInput                 the request is well-formed but its values are not acceptable
    │   └── CursorInFuture           a cursor beyond the newest discovery
    ├── NotFound
    │   ├── DiscoveryNotFound
    │   ├── RelatedDiscoveryNotFound `related_to` names no stored discovery
    │   ├── SubscriptionNotFound
    │   └── AgentNotFound
    ├── Conflict                     the request does not fit the current state of what it names
    │   ├── AgentExists              an agent id already in use
    │   └── IllegalTransition        an agent state change the state machine does not allow
    ├── Unauthenticated              no token, or a token that is unknown or revoked
    ├── Forbidden                    the token's role or agent id does not allow the action
    ├── TooManyConnections           a connection limit is reached
    ├── ServiceUnavailable           NATS or PostgreSQL cannot be reached
    │   └── CircuitOpen              a circuit breaker is open: calls are refused until it half-opens
    ├── StartupError                 the hub cannot start; the message is one line for the operator
    └── AgentWorkError               inside an agent process: work that failed, by what to do about it
        ├── TransientAgentError      retry with backoff (a timeout, a rate limit, the hub restarting)
        └── LogicalAgentError        retrying cannot help (bad configuration, a rejected key): stop and alert
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


class AgentNotFound(NotFound):
    def __init__(self, agent_id: str) -> None:
        super().__init__(f"no agent with id {agent_id!r}")
        self.agent_id = agent_id


class Conflict(HubError):
    pass


class AgentExists(Conflict):
    def __init__(self, agent_id: str) -> None:
        super().__init__(f"an agent with id {agent_id!r} already exists")
        self.agent_id = agent_id


class IllegalTransition(Conflict):
    def __init__(self, agent_id: str, current: str, target: str) -> None:
        super().__init__(f"agent {agent_id!r} is {current} and cannot become {target}")
        self.agent_id = agent_id
        self.current = current
        self.target = target


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


class CircuitOpen(ServiceUnavailable):
    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit breaker {name!r} is open; retry in {retry_after:.1f} s")
        self.name = name
        self.retry_after = retry_after


class StartupError(HubError):
    pass


class AgentWorkError(HubError):
    pass


class TransientAgentError(AgentWorkError):
    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # when the cause says how long to wait (an open breaker), not sooner


class LogicalAgentError(AgentWorkError):
    pass
