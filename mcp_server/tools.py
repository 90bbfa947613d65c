"""The MCP tool table: names, descriptions, input/output models, profiles, and the call dispatcher.

Inputs are validated with the strict pydantic models of `collaboration.models` (unexpected fields rejected);
failures an agent can act on come back as tool results with `isError` and a plain message. A token sees only
the tools of its profile: agents the agent tools, operators everything, viewers the read-only ones.
"""

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import mcp.types as types
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ValidationError

from agent_pool.models import AgentInfo, AgentList, AgentRef, ListAgentsInput, SpawnAgentInput
from agenthub.auth import Principal, Role
from agenthub.database import UNAVAILABLE, unavailable
from agenthub.errors import HubError, RateLimited, ServiceUnavailable
from agenthub.text import find_unstorable
from collaboration.models import (
    CollaborationStatus,
    ContextList,
    EmptyInput,
    GetContextInput,
    PollInput,
    PollResult,
    ShareContextInput,
    SharedContext,
    SharedDiscovery,
    ShareDiscoveryInput,
    Subscribed,
    SubscribeInput,
    Unsubscribed,
    UnsubscribeInput,
    validation_errors,
)
from market.models import (
    BidPlaced,
    PlaceBidInput,
    ReportTaskInput,
    SubmitTaskInput,
    TaskInfo,
    TaskRef,
)
from web_ui.agents import listed
from web_ui.state import HubState

logger = logging.getLogger(__name__)

Run = Callable[[HubState, Principal, Any], Awaitable[BaseModel]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSpec:
    name: str
    description: str
    input: type[BaseModel]
    output: type[BaseModel]
    run: Run
    roles: frozenset[Role]
    read_only: bool = False

    def definition(self) -> types.Tool:
        return types.Tool(
            name=self.name, description=self.description, input_schema=self.input.model_json_schema(),
            output_schema=self.output.model_json_schema(),
            annotations=types.ToolAnnotations(read_only_hint=self.read_only),
        )


AGENT_PROFILE = frozenset({Role.AGENT, Role.OPERATOR})
OPERATOR_PROFILE = frozenset({Role.OPERATOR, Role.VIEWER})  # viewers see the read-only operator tools
OPERATOR_ONLY = frozenset({Role.OPERATOR})

TOOLS: list[ToolSpec] = [
    ToolSpec(
        name="share_discovery",
        description="Share a discovery with every agent and UI watching the hub. Types: pattern, anomaly, "
        "connection, solution, question, insight. Set related_to to the id of a discovery you answer or build on.",
        input=ShareDiscoveryInput, output=SharedDiscovery, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.collab.share_discovery(who, req),
    ),
    ToolSpec(
        name="subscribe_discoveries",
        description="Subscribe to discoveries matching a filter (types, roles, agent ids, minimum confidence). "
        "Returns a subscription id to pass to poll_discoveries, and an SSE endpoint for UIs.",
        input=SubscribeInput, output=Subscribed, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.collab.subscribe(who, req),
    ),
    ToolSpec(
        name="poll_discoveries",
        description="Get the discoveries of a subscription that arrived after the cursor, oldest first, and the "
        "cursor to pass next time. With wait_seconds > 0 it waits for new ones when there are none yet. Always pass "
        "back the returned cursor: then no discovery is skipped or repeated, even when an answer is lost. Without "
        "one, a poll starts after the last poll the hub answered, whether or not you received that answer.",
        input=PollInput, output=PollResult, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.collab.poll(who, req),
    ),
    ToolSpec(
        name="unsubscribe_discoveries",
        description="End a discovery subscription.",
        input=UnsubscribeInput, output=Unsubscribed, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.collab.unsubscribe(who, req),
    ),
    ToolSpec(
        name="share_context",
        description="Share context with one agent (to_agent) or all (omit to_agent). Types: background, "
        "working_memory, patterns, questions, partial_solutions, warnings. It expires after ttl_seconds.",
        input=ShareContextInput, output=SharedContext, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.collab.share_context(who, req),
    ),
    ToolSpec(
        name="get_context",
        description="Get the unexpired context addressed to an agent or broadcast, most relevant first.",
        input=GetContextInput, output=ContextList, roles=AGENT_PROFILE, read_only=True,
        run=lambda h, who, req: h.collab.get_context(who, req),
    ),
    ToolSpec(
        name="submit_task",
        description="Submit a task for agents to bid on: the budget is held in escrow from the requester's account and "
        "a sealed-bid auction runs for bidding_seconds. The winner is paid at most the budget when you accept its "
        "result. Pass a fresh idempotency_key (a UUID) and keep it until you have the answer: retrying with the same "
        "key and arguments returns the same task, for at least 24 hours and even after your process is restarted "
        "with a new token (keys belong to your agent id); the same key with other arguments is refused.",
        input=SubmitTaskInput, output=TaskInfo, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.market.submit_task(who, req),
    ),
    ToolSpec(
        name="place_bid",
        description="Bid on an open task auction you have the required capabilities for: the price you ask and how "
        "long you expect to take. A new bid replaces your previous one. Bids are sealed until the auction closes; "
        "the winner is paid its critical price (at least what it asked).",
        input=PlaceBidInput, output=BidPlaced, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.market.place_bid(who, req),
    ),
    ToolSpec(
        name="get_task",
        description="A task: its state, auction (bids once closed, winner, price, welfare), result and escrow.",
        input=TaskRef, output=TaskInfo, roles=AGENT_PROFILE, read_only=True,
        run=lambda h, who, req: h.market.get_task(who, req),
    ),
    ToolSpec(
        name="report_task",
        description="Report on a task you won: progress (it is running), completed with a result, or failed.",
        input=ReportTaskInput, output=TaskInfo, roles=AGENT_PROFILE,
        run=lambda h, who, req: h.market.report_task(who, req),
    ),
    ToolSpec(
        name="get_collaboration_status",
        description="Counts of discoveries by type, subscriptions and connected SSE clients.",
        input=EmptyInput, output=CollaborationStatus, roles=OPERATOR_PROFILE, read_only=True,
        run=lambda h, who, req: h.collab.status(),
    ),
    ToolSpec(
        name="spawn_agent",
        description="Start an agent process: a role, capabilities, an executor (scripted, claude or command) with its "
        "configuration, and a restart policy. It joins the hub over MCP, heartbeats, and is restarted when it fails.",
        input=SpawnAgentInput, output=AgentInfo, roles=OPERATOR_ONLY,
        run=lambda h, who, req: h.agents.spawn(who, req),
    ),
    ToolSpec(
        name="stop_agent",
        description="Stop an agent process gracefully (terminate, wait its shutdown time, then kill).",
        input=AgentRef, output=AgentInfo, roles=OPERATOR_ONLY,
        run=lambda h, who, req: h.agents.stop(who, req),
    ),
    ToolSpec(
        name="list_agents",
        description="Agents with their state, pid, restarts, last heartbeat and circuit breaker; filter by state, "
        "role or capability.",
        input=ListAgentsInput, output=AgentList, roles=OPERATOR_PROFILE, read_only=True,
        run=lambda h, who, req: listed(h, req),
    ),
]
_BY_NAME = {t.name: t for t in TOOLS}
# Built once: generating JSON schemas costs milliseconds, and the SDK looks a tool's up on every call.
_DEFINITIONS = {t.name: t.definition() for t in TOOLS}


def visible_tools(who: Principal) -> list[types.Tool]:
    return [_DEFINITIONS[t.name] for t in TOOLS if who.role in t.roles]


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
    return result


def _validation_message(exc: ValidationError) -> str:
    details = (f"{loc or 'arguments'}: {msg}" for loc, msg, _ in validation_errors(exc))
    return "invalid arguments: " + "; ".join(details)


async def call_tool(hub: HubState, who: Principal, name: str, arguments: dict[str, Any] | None
                    ) -> types.CallToolResult:
    spec = _BY_NAME.get(name)
    if spec is None or who.role not in spec.roles:
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}")
    started = time.perf_counter()
    outcome = "error"
    try:
        unstorable = find_unstorable(arguments or {})
        if unstorable is not None:  # before validation: a NUL in an id is a NUL, not a pattern mismatch
            outcome = "invalid"
            return _text_result(f"invalid arguments: {unstorable[0] or 'arguments'}: {unstorable[1]}")
        req = spec.input.model_validate(arguments or {})
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
