"""The MCP tool table: names, descriptions, input models, profiles, groups, and the call dispatcher.

Inputs are validated with the strict pydantic models of `collaboration.models` (unexpected fields rejected);
failures an agent can act on come back as tool results with `isError` and a message saying what to change. A
token sees only the tools of its profile: agents the agent tools, operators everything, viewers the read-only ones.

The list is lean because every agent pays for it on every turn: input schemas without pydantic's titles, with
`T | None` written as a type list, and no output schemas. Results still carry `structuredContent` (the output
model's JSON, also sent as text), which the spec allows without an output schema. A client may narrow the list to
some groups or tools (`select`): the `tools` query parameter of the MCP URL, e.g. `/mcp?tools=discoveries,market`.
"""

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import mcp.types as types
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import QueryParams
from starlette.types import Scope

from agent_pool.models import AgentRef, ListAgentsInput, SpawnAgentInput
from agenthub.auth import Principal, Role
from agenthub.database import UNAVAILABLE, unavailable
from agenthub.errors import BUDGET_EXHAUSTED_META, BudgetExhausted, HubError, RateLimited, ServiceUnavailable
from agenthub.text import find_unstorable
from collaboration.models import (
    EmptyInput,
    GetContextInput,
    PollInput,
    ShareContextInput,
    ShareDiscoveryInput,
    SubscribeInput,
    UnsubscribeInput,
    validation_errors,
)
from governance.approvals import ApprovalRef, DecideApprovalInput, ListApprovalsInput, RequestApprovalInput
from governance.budgets import agent_subject
from governance.models import ReportUsageInput, ReserveUsageInput
from market.models import PlaceBidInput, ReportTaskInput, SubmitTaskInput, TaskRef
from web_ui.agents import listed
from web_ui.state import HubState

logger = logging.getLogger(__name__)

Run = Callable[[HubState, Principal, Any], Awaitable[BaseModel]]


_NULL = {"type": "null"}


def compact_schema(node: Any) -> Any:
    """A JSON schema as lean as it can be and just as precise: no `title` keys, `{"anyOf": [X, null]}` as X with
    `"type": [X's type, "null"]`, no `"default": null` and no `"additionalProperties": true` (both the default)."""
    if isinstance(node, list):
        return [compact_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "$defs"):  # maps of names to schemas: a property may be called "title"
            out[key] = {name: compact_schema(schema) for name, schema in value.items()}
        elif key == "title" or (key == "default" and value is None) or (key == "additionalProperties"
                                                                         and value is True):
            continue
        else:
            out[key] = compact_schema(value)
    any_of = out.get("anyOf")
    if isinstance(any_of, list) and len(any_of) == 2 and _NULL in any_of:
        (other,) = (branch for branch in any_of if branch != _NULL)
        if isinstance(other.get("type"), str):  # a $ref or a union stays an anyOf
            del out["anyOf"]
            out = {**other, **out, "type": [other["type"], "null"]}
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSpec:
    name: str
    description: str
    group: str  # what `?tools=` selects it by, besides its name
    input: type[BaseModel]
    run: Run
    roles: frozenset[Role]
    read_only: bool = False
    wait_argument: str | None = None  # the argument that makes a call wait for news (seconds)

    def definition(self) -> types.Tool:
        return types.Tool(
            name=self.name, description=self.description,
            input_schema=compact_schema(self.input.model_json_schema()),
            annotations=types.ToolAnnotations(read_only_hint=True) if self.read_only else None,
        )


AGENT_PROFILE = frozenset({Role.AGENT, Role.OPERATOR})
OPERATOR_PROFILE = frozenset({Role.OPERATOR, Role.VIEWER})  # viewers see the read-only operator tools
OPERATOR_ONLY = frozenset({Role.OPERATOR})

TOOLS: list[ToolSpec] = [
    ToolSpec(
        name="share_discovery", group="discoveries",
        description="Share what you found with every agent: a pattern, anomaly, connection, solution, question "
        "(others may answer) or insight. To answer or build on one, set related_to to its id.",
        input=ShareDiscoveryInput, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.collab.share_discovery(who, req),
    ),
    ToolSpec(
        name="subscribe_discoveries", group="discoveries",
        description="Follow discoveries matching a filter; returns the subscription_id and cursor for "
        "poll_discoveries.",
        input=SubscribeInput, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.collab.subscribe(who, req),
    ),
    ToolSpec(
        name="poll_discoveries", group="discoveries",
        description="A subscription's discoveries after cursor, oldest first, and the next cursor; wait_seconds "
        "> 0 waits for new ones. Always pass back the returned cursor: then none is skipped or repeated.",
        input=PollInput, roles=AGENT_PROFILE, wait_argument="wait_seconds",
        run=lambda h, who, req: h.collab.poll(who, req),
    ),
    ToolSpec(
        name="unsubscribe_discoveries", group="discoveries",
        description="End a subscription you no longer poll.",
        input=UnsubscribeInput, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.collab.unsubscribe(who, req),
    ),
    ToolSpec(
        name="share_context", group="context",
        description="Give working context to another agent or to all; it expires after ttl_seconds.",
        input=ShareContextInput, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.collab.share_context(who, req),
    ),
    ToolSpec(
        name="get_context", group="context",
        description="Read unexpired context sent to you or to all, most relevant first: before you start work "
        "and when a question reaches you.",
        input=GetContextInput, roles=AGENT_PROFILE, read_only=True,
        run=lambda h, who, req: h.collab.get_context(who, req),
    ),
    ToolSpec(
        name="submit_task", group="market",
        description="Have another agent do a task: the budget is held in escrow while a sealed-bid auction runs "
        "for bidding_seconds; follow it with get_task. A retry with the same idempotency_key returns the same "
        "task, even after a restart with a new token.",
        input=SubmitTaskInput, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.market.submit_task(who, req),
    ),
    ToolSpec(
        name="place_bid", group="market",
        description="Bid on an open task you have the required capabilities for. A new bid replaces yours; bids "
        "are sealed until the auction closes.",
        input=PlaceBidInput, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.market.place_bid(who, req),
    ),
    ToolSpec(
        name="get_task", group="market",
        description="A task's state, auction (bids once closed, winner, price), result and escrow: to follow "
        "a task you submitted or bid on.",
        input=TaskRef, roles=AGENT_PROFILE, read_only=True,
        run=lambda h, who, req: h.market.get_task(who, req),
    ),
    ToolSpec(
        name="report_task", group="market",
        description="On a task you won: report progress while you work, then completed with a result, or failed "
        "with a message.",
        input=ReportTaskInput, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.market.report_task(who, req),
    ),
    ToolSpec(
        name="get_collaboration_status", group="agents",
        description="Counts of discoveries by type, subscriptions and connected SSE clients.",
        input=EmptyInput, roles=OPERATOR_PROFILE, read_only=True,
        run=lambda h, who, req: h.collab.status(),
    ),
    ToolSpec(
        name="spawn_agent", group="agents",
        description="Start an agent process: role, capabilities, executor with its executor_config, restart "
        "policy. It joins the hub over MCP and is restarted when it fails.",
        input=SpawnAgentInput, roles=OPERATOR_ONLY,
        run=lambda h, who, req: h.agents.spawn(who, req),
    ),
    ToolSpec(
        name="stop_agent", group="agents",
        description="Stop an agent process gracefully (terminate, wait its shutdown time, then kill).",
        input=AgentRef, roles=OPERATOR_ONLY,
        run=lambda h, who, req: h.agents.stop(who, req),
    ),
    ToolSpec(
        name="list_agents", group="agents",
        description="Agents with their state, pid, restarts, last heartbeat and circuit breaker; filter by state, "
        "role or capability.",
        input=ListAgentsInput, roles=OPERATOR_PROFILE, read_only=True,
        run=lambda h, who, req: listed(h, req),
    ),
    # -- budgets (governance.budgets): never refused at a budget's limit, so a capped agent can still report its usage
    ToolSpec(
        name="reserve_usage", group="budgets",
        description="Reserve budget before work that spends it (LLM tokens, cost): a reservation_id to settle with "
        "report_usage, or null without a limit; an error when exhausted (then skip the work).",
        input=ReserveUsageInput, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.budgets.reserve_usage(who, req),
    ),
    ToolSpec(
        name="report_usage", group="budgets",
        description="Report what your work spent: settles the reservations named with their metric's amount, "
        "records the rest.",
        input=ReportUsageInput, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.budgets.report_usage(who, req),
    ),
    # -- approvals (governance.approvals) --
    ToolSpec(
        name="request_approval", group="approvals",
        description="Ask a human operator before something that matters; wait_seconds > 0 waits for the decision "
        "(else use get_approval). Unanswered in time, the hub's default (deny) applies.",
        input=RequestApprovalInput, roles=AGENT_PROFILE, wait_argument="wait_seconds",
        run=lambda h, who, req: h.approvals.request_agent(who, req),
    ),
    ToolSpec(
        name="get_approval", group="approvals",
        description="An approval you requested or one about you; wait_seconds > 0 waits for the decision.",
        input=ApprovalRef, roles=AGENT_PROFILE, read_only=True, wait_argument="wait_seconds",
        run=lambda h, who, req: h.approvals.wait(who, req.approval_id, req.wait_seconds),
    ),
    ToolSpec(
        name="list_approvals", group="approvals",
        description="Approvals newest first, filtered by state (pending, approved, denied, expired).",
        input=ListApprovalsInput, roles=OPERATOR_PROFILE, read_only=True,
        run=lambda h, who, req: h.approvals.listed(who, req),
    ),
    ToolSpec(
        name="decide_approval", group="approvals",
        description="Approve or deny a pending approval, with a note; decided once (a second decision fails).",
        input=DecideApprovalInput, roles=OPERATOR_ONLY,
        run=lambda h, who, req: h.approvals.decide(who, req.approval_id, req.decision, req.note),
    ),
]
UNMETERED_GROUPS = frozenset({"budgets", "approvals"})  # tool calls not counted against an agent's tool_calls
_BY_NAME = {t.name: t for t in TOOLS}
# Built once: generating JSON schemas costs milliseconds, and the SDK looks a tool's up on every call.
_DEFINITIONS = {t.name: t.definition() for t in TOOLS}


GROUPS: dict[str, tuple[str, ...]] = {
    group: tuple(t.name for t in TOOLS if t.group == group) for group in dict.fromkeys(t.group for t in TOOLS)
}
SELECT_PARAMETER = "tools"  # the MCP URL's query parameter: `/mcp?tools=discoveries,get_task`


@dataclass(frozen=True, slots=True)
class ToolSelection:
    """The tools a client asked for with `?tools=`: group names and tool names, comma-separated. It narrows the
    profile's tools, never widens them; `everything` when the client did not ask."""

    names: frozenset[str] | None
    asked: str = ""

    @classmethod
    def of_request(cls, scope: Scope) -> "ToolSelection":
        """The selection in a request's MCP URL."""
        query: bytes = scope.get("query_string", b"")
        return cls.parse(QueryParams(query).get(SELECT_PARAMETER)) if query else EVERYTHING

    @classmethod
    def parse(cls, asked: str | None) -> "ToolSelection":
        if asked is None:
            return EVERYTHING
        names: set[str] = set()
        for item in filter(None, (part.strip() for part in asked.split(","))):
            if item in GROUPS:
                names.update(GROUPS[item])
            elif item in _BY_NAME:
                names.add(item)
            else:
                raise MCPError(types.INVALID_PARAMS, f"?{SELECT_PARAMETER}={asked} names {item!r}, which is neither "
                               f"a group ({', '.join(GROUPS)}) nor a tool: fix the MCP URL, or leave "
                               f"?{SELECT_PARAMETER}= out for every tool")
        if not names:
            raise MCPError(types.INVALID_PARAMS, f"?{SELECT_PARAMETER}= selects no tool: name groups "
                           f"({', '.join(GROUPS)}) or tools, or leave it out for every tool")
        return cls(frozenset(names), asked)

    def includes(self, name: str) -> bool:
        return self.names is None or name in self.names


EVERYTHING = ToolSelection(None)


def tool_visible(who: Principal, name: str) -> bool:
    spec = _BY_NAME.get(name)
    return spec is not None and who.role in spec.roles


def may_wait(name: str, arguments: dict[str, Any] | None) -> bool:
    """Whether this call may wait for news (a poll with `wait_seconds`) rather than answer at once."""
    spec = _BY_NAME.get(name)
    return spec is not None and spec.wait_argument is not None and bool((arguments or {}).get(spec.wait_argument))


def visible_tools(who: Principal, selection: ToolSelection = EVERYTHING) -> list[types.Tool]:
    return [_DEFINITIONS[t.name] for t in TOOLS if who.role in t.roles and selection.includes(t.name)]


def tool_input_schema(name: str) -> dict[str, Any] | None:
    """The input schema the SDK checks `Mcp-Param` headers against, without listing every tool."""
    definition = _DEFINITIONS.get(name)
    return definition.input_schema if definition is not None else None


RETRY_AFTER_META = "agenthub/retry_after"  # `_meta` of a rate-limited or unavailable call: seconds until a retry


def _text_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


def tool_error(exc: HubError) -> types.CallToolResult:
    """A refusal as a tool error the agent can act on; a rate limit also carries its retry time in `_meta`."""
    result = _text_result(exc.message)
    if isinstance(exc, RateLimited | ServiceUnavailable):
        result.meta = {RETRY_AFTER_META: round(exc.retry_after, 3)}
    elif isinstance(exc, BudgetExhausted):
        result.meta = {BUDGET_EXHAUSTED_META: {"subject": exc.subject, "metric": exc.metric}}
    return result


def _validation_message(exc: ValidationError) -> str:
    details = (f"{loc or 'arguments'}: {msg}" for loc, msg, _ in validation_errors(exc))
    return "invalid arguments: " + "; ".join(details)


async def _meter_tool_call(hub: HubState, who: Principal) -> None:
    """One `tool_calls` of the agent's budget: counted in memory without a limit, else charged (or refused)."""
    subject = agent_subject(who.agent_id or "")
    if not hub.budgets.count(subject, "tool_calls"):
        await hub.budgets.charge(subject, "tool_calls", 1)


async def call_tool(hub: HubState, who: Principal, name: str, arguments: dict[str, Any] | None,
                    selection: ToolSelection = EVERYTHING) -> types.CallToolResult:
    spec = _BY_NAME.get(name)
    if spec is None or who.role not in spec.roles:
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}")
    if not selection.includes(name):
        raise MCPError(types.INVALID_PARAMS, f"{name} is not among the tools this connection selected "
                       f"(?{SELECT_PARAMETER}={selection.asked}): add {spec.group!r} or {name!r} to the MCP URL's "
                       f"?{SELECT_PARAMETER}=")
    started = time.perf_counter()
    outcome = "error"
    try:
        unstorable = find_unstorable(arguments or {})
        if unstorable is not None:  # before validation: a NUL in an id is a NUL, not a pattern mismatch
            outcome = "invalid"
            return _text_result(f"invalid arguments: {unstorable[0] or 'arguments'}: {unstorable[1]}")
        req = spec.input.model_validate(arguments or {})
        if who.role is Role.AGENT and spec.group not in UNMETERED_GROUPS:
            await _meter_tool_call(hub, who)
        output = await spec.run(hub, who, req)
        outcome = "ok"
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=output.model_dump_json())],
            structured_content=output.model_dump(mode="json"),
        )
    except ValidationError as exc:
        outcome = "invalid"
        return _text_result(_validation_message(exc))
    except HubError as exc:
        outcome = type(exc).__name__
        return tool_error(exc)
    except UNAVAILABLE as exc:  # PostgreSQL down, restarting or frozen: nothing was committed, retry later
        down = unavailable(exc)
        assert down is not None
        outcome = type(down).__name__
        return tool_error(down)
    finally:
        hub.metrics.tool_calls.labels(name, outcome).inc()
        hub.metrics.tool_latency.labels(name).observe(time.perf_counter() - started)
