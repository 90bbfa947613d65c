"""The error tree of agenthub. Domain code raises these; only `mcp_server` and `web_ui` translate them.

    HubError
    ├── InvalidInput                 the request is well-formed but its values are not acceptable
    │   ├── CursorInFuture           a cursor beyond the newest discovery
    │   ├── CursorExpired            a cursor before the oldest discovery retention kept (HTTP 410)
    │   ├── ValueOutOfRange          a number or length outside its bounds (amount, percent, key, limit)
    │   ├── MalformedAccountId       not `mint`, `platform` or `{agent,requester,escrow}:{id}`
    │   ├── WrongAccountKind         an account of a kind the operation cannot use (a deposit to the mint)
    │   ├── UnstorableText           text PostgreSQL cannot hold (NUL, a lone surrogate), naming the field
    │   └── InvalidModule            a WASM module refused at upload (size, format, compile budget, ABI)
    ├── NotFound
    │   ├── DiscoveryNotFound
    │   ├── RelatedDiscoveryNotFound `related_to` names no stored discovery
    │   ├── SubscriptionNotFound
    │   ├── AgentNotFound
    │   ├── AccountNotFound
    │   ├── TokenNotFound
    │   ├── EscrowNotFound
    │   ├── TaskNotFound
    │   └── ApprovalNotFound
    ├── Conflict                     the request does not fit the current state of what it names
    │   ├── AgentExists              an agent id already in use
    │   ├── IllegalTransition        an agent state change the state machine does not allow
    │   ├── InsufficientFunds        the account cannot cover the amount; nothing moved
    │   ├── IdempotencyKeyReused     a key already used by this caller for a different request
    │   ├── TaskAlreadyEscrowed      a task's budget is already held by another escrow
    │   ├── EscrowAlreadySettled     released, refunded or split already: an escrow ends once
    │   ├── EscrowDisputed           frozen by a dispute until an arbiter resolves it
    │   ├── EscrowNotDisputed        resolving an escrow nobody disputed
    │   ├── EscrowAlreadyAwarded     reducing an escrow whose payee is already chosen
    │   ├── EscrowNotAwarded         paying an escrow that has no payee yet
    │   ├── AuctionClosed            a bid after the auction closed
    │   ├── IllegalTaskTransition    a task state change the task state machine does not allow
    │   ├── WrongTaskState           an action the task's state does not allow (accepting unfinished work)
    │   ├── ApprovalAlreadyDecided   a decision on an approval already decided or expired: it ends once
    │   └── BudgetExhausted          a subject's budget on a metric is used up (or denied past its soft limit)
    ├── Unauthenticated              no token, or a token that is unknown or revoked
    ├── Forbidden                    the token's role or agent id does not allow the action
    │   ├── NotEscrowParty           a dispute by someone who is neither the payer nor the payee
    │   └── MissingCapabilities      a bid from an agent without the task's required capabilities
    ├── TooManyConnections           a connection limit is reached
    ├── RateLimited                  a rate limit is reached: retry after `retry_after` seconds (HTTP 429)
    ├── QuotaExceeded                an agent holds as many as it may (subscriptions, streams): free one first
    ├── ServiceUnavailable           NATS or PostgreSQL cannot be reached
    │   └── CircuitOpen              a circuit breaker is open: calls are refused until it half-opens
    ├── StartupError                 the hub cannot start; the message is one line for the operator
    └── AgentWorkError               inside an agent process: work that failed, by what to do about it
        ├── TransientAgentError      retry with backoff (a timeout, a rate limit, the hub restarting)
        ├── LogicalAgentError        retrying cannot help (bad configuration, a rejected key): stop and alert
        └── OverBudgetAgentError     the hub refused a reservation: drop this work item, stay up for the next
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


class CursorExpired(InvalidInput):
    """The discoveries right after `cursor` were deleted by the retention policy; `oldest` is the first position
    still available (a reader can go on from there, knowing what it missed is gone)."""

    def __init__(self, cursor: int, oldest: int) -> None:
        super().__init__(f"cursor {cursor} is older than the retained log: discoveries up to sequence {oldest} were "
                         f"deleted by the retention policy; continue from cursor {oldest} (the oldest position "
                         "still available) or from the newest")
        self.cursor = cursor
        self.oldest = oldest


class ValueOutOfRange(InvalidInput):
    def __init__(self, name: str, value: int, minimum: int, maximum: int | None = None) -> None:
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        super().__init__(f"{name} must be {bounds}, got {value}")
        self.name = name
        self.value = value
        self.minimum = minimum
        self.maximum = maximum


class MalformedAccountId(InvalidInput):
    def __init__(self, value: str) -> None:
        super().__init__(f"{value!r} is not an account id: expected 'mint', 'platform', 'agent:<id>', "
                         "'requester:<id>' or 'escrow:<id>'")
        self.value = value


class WrongAccountKind(InvalidInput):
    def __init__(self, account_id: str, kind: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"account {account_id!r} is a {kind} account; this needs one of: {', '.join(allowed)}")
        self.account_id = account_id
        self.kind = kind
        self.allowed = allowed


class UnstorableText(InvalidInput):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}; remove it and send the request again")
        self.field = field
        self.problem = problem


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


class AccountNotFound(NotFound):
    def __init__(self, account_id: str) -> None:
        super().__init__(f"no account {account_id!r} (accounts exist once money has moved through them)")
        self.account_id = account_id


class TokenNotFound(NotFound):
    def __init__(self, token_id: str) -> None:
        super().__init__(f"no token with id {token_id!r}")
        self.token_id = token_id


class EscrowNotFound(NotFound):
    def __init__(self, escrow_id: str) -> None:
        super().__init__(f"no escrow with id {escrow_id!r}")
        self.escrow_id = escrow_id


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


class InsufficientFunds(Conflict):
    def __init__(self, account_id: str, needed: int, available: int) -> None:
        super().__init__(f"account {account_id!r} has {available} credits and needs {needed}; nothing moved")
        self.account_id = account_id
        self.needed = needed
        self.available = available


class IdempotencyKeyReused(Conflict):
    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was already used for a different request; use a new key")
        self.key = key


class TaskAlreadyEscrowed(Conflict):
    def __init__(self, task_id: str, escrow_id: str) -> None:
        super().__init__(f"task {task_id!r} already has its budget held in escrow {escrow_id!r}")
        self.task_id = task_id
        self.escrow_id = escrow_id


class EscrowAlreadySettled(Conflict):
    def __init__(self, escrow_id: str, state: str) -> None:
        super().__init__(f"escrow {escrow_id!r} is already {state}; an escrow ends exactly once")
        self.escrow_id = escrow_id
        self.state = state


class EscrowDisputed(Conflict):
    def __init__(self, escrow_id: str) -> None:
        super().__init__(f"escrow {escrow_id!r} is disputed: it is frozen until an arbiter resolves it")
        self.escrow_id = escrow_id


class EscrowNotDisputed(Conflict):
    def __init__(self, escrow_id: str, state: str) -> None:
        super().__init__(f"escrow {escrow_id!r} is {state}, not disputed: there is nothing to resolve")
        self.escrow_id = escrow_id
        self.state = state


class EscrowAlreadyAwarded(Conflict):
    def __init__(self, escrow_id: str, payee: str) -> None:
        super().__init__(f"escrow {escrow_id!r} was already awarded to {payee!r}")
        self.escrow_id = escrow_id
        self.payee = payee


class EscrowNotAwarded(Conflict):
    def __init__(self, escrow_id: str) -> None:
        super().__init__(f"escrow {escrow_id!r} has no payee yet: it can only be refunded")
        self.escrow_id = escrow_id


class Unauthenticated(HubError):
    pass


class Forbidden(HubError):
    pass


class NotEscrowParty(Forbidden):
    def __init__(self, escrow_id: str, account_id: str) -> None:
        super().__init__(f"{account_id!r} is neither the payer nor the payee of escrow {escrow_id!r}")
        self.escrow_id = escrow_id
        self.account_id = account_id


class TooManyConnections(HubError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"connection limit of {limit} reached; retry later")
        self.limit = limit


class RateLimited(HubError):
    """`what` is the limit reached (requests of a token, discoveries of an agent); `retry_after` is when the next
    one will be allowed, in seconds, which HTTP sends as `Retry-After` and MCP tool errors state."""

    def __init__(self, what: str, retry_after: float) -> None:
        super().__init__(f"rate limit reached: {what}; retry in {max(retry_after, 0.01):.2f} s")
        self.what = what
        self.retry_after = retry_after


class QuotaExceeded(HubError):
    def __init__(self, what: str, limit: int, remedy: str) -> None:
        super().__init__(f"quota reached: {what} (at most {limit}); {remedy}")
        self.what = what
        self.limit = limit


class ServiceUnavailable(HubError):
    """`retry_after`: seconds after which a retry may succeed (HTTP `Retry-After`; MCP tool errors state it)."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CircuitOpen(ServiceUnavailable):
    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit breaker {name!r} is open; retry in {retry_after:.1f} s", retry_after=retry_after)
        self.name = name


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


class TaskNotFound(NotFound):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task with id {task_id!r}")
        self.task_id = task_id


class AuctionClosed(Conflict):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"the auction for task {task_id!r} is closed: bids are no longer taken")
        self.task_id = task_id


class IllegalTaskTransition(Conflict):
    def __init__(self, task_id: str, current: str, target: str) -> None:
        super().__init__(f"task {task_id!r} is {current} and cannot become {target}")
        self.task_id = task_id
        self.current = current
        self.target = target


class WrongTaskState(Conflict):
    def __init__(self, task_id: str, state: str, action: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"task {task_id!r} is {state}: only a task that is {' or '.join(allowed)} can be {action}")
        self.task_id = task_id
        self.state = state
        self.action = action
        self.allowed = allowed


class MissingCapabilities(Forbidden):
    def __init__(self, agent_id: str, missing: list[str]) -> None:
        super().__init__(f"agent {agent_id!r} lacks the required capabilities: {', '.join(missing)}")
        self.agent_id = agent_id
        self.missing = missing


class InvalidModule(InvalidInput):
    """A WASM module refused at upload: not WebAssembly, too large, too costly to compile, or not the ABI."""


# -- approvals (governance.approvals) ------------------------------------------------------------------------------


class ApprovalNotFound(NotFound):
    def __init__(self, approval_id: str) -> None:
        super().__init__(f"no approval with id {approval_id!r}")
        self.approval_id = approval_id


class ApprovalAlreadyDecided(Conflict):
    """An approval is decided once: `state` is what it became, `decided_by` who made it so ('expiry' when nobody
    answered in time), `decided_at` when."""

    def __init__(self, approval_id: str, state: str, decided_by: str | None, decided_at: str | None) -> None:
        super().__init__(f"approval {approval_id!r} is already {state} (by {decided_by} at {decided_at}); an "
                         "approval is decided exactly once")
        self.approval_id = approval_id
        self.state = state
        self.decided_by = decided_by
        self.decided_at = decided_at


# -- budgets (governance.budgets) ------------------------------------------------------------------------------------


BUDGET_EXHAUSTED_META = "agenthub/budget_exhausted"  # `_meta` of an MCP tool error refused by a budget


class BudgetExhausted(Conflict):
    """No new work for `subject` on `metric` until an operator raises its limit (or sets its limits again after
    denying it past the soft limit)."""

    def __init__(self, subject: str, metric: str, *, spent: int, reserved: int, limit: int | None,
                 amount: int = 0, denied: bool = False) -> None:
        why = (f"an operator denied going past its soft limit ({spent} spent)" if denied else
               f"{spent} spent + {reserved} reserved + {amount} asked > hard limit {limit}")
        super().__init__(f"budget exhausted: {subject} on {metric}: {why}; nothing was done. Ask an operator to "
                         f"raise the limit (agenthub budgets set {subject} --hard {metric}=N)")
        self.subject = subject
        self.metric = metric
        self.spent = spent
        self.reserved = reserved
        self.limit = limit
        self.amount = amount
        self.denied = denied


class OverBudgetAgentError(AgentWorkError):
    """Inside an agent process: the hub refused a reservation (`BudgetExhausted`); the work item stops, the process
    keeps running and takes later work once an operator raises the budget."""
