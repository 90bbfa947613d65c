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

from agenthub.auth import Principal, Role
from agenthub.errors import HubError
from agenthub.metrics import HubMetrics
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
from collaboration.service import Collaboration

logger = logging.getLogger(__name__)

Run = Callable[[Collaboration, Principal, Any], Awaitable[BaseModel]]


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
OPERATOR_PROFILE = frozenset({Role.OPERATOR, Role.VIEWER})

TOOLS: list[ToolSpec] = [
    ToolSpec(
        name="share_discovery",
        description="Share a discovery with every agent and UI watching the hub. Types: pattern, anomaly, "
        "connection, solution, question, insight. Set related_to to the id of a discovery you answer or build on.",
        input=ShareDiscoveryInput, output=SharedDiscovery, roles=AGENT_PROFILE,
        run=lambda c, who, req: c.share_discovery(who, req),
    ),
    ToolSpec(
        name="subscribe_discoveries",
        description="Subscribe to discoveries matching a filter (types, roles, agent ids, minimum confidence). "
        "Returns a subscription id to pass to poll_discoveries, and an SSE endpoint for UIs.",
        input=SubscribeInput, output=Subscribed, roles=AGENT_PROFILE,
        run=lambda c, who, req: c.subscribe(who, req),
    ),
    ToolSpec(
        name="poll_discoveries",
        description="Get the discoveries of a subscription that arrived after the cursor, oldest first, and the "
        "cursor to pass next time. With wait_seconds > 0 it waits for new ones when there are none yet. Passing "
        "back the returned cursor never skips or repeats a discovery.",
        input=PollInput, output=PollResult, roles=AGENT_PROFILE,
        run=lambda c, who, req: c.poll(who, req),
    ),
    ToolSpec(
        name="unsubscribe_discoveries",
        description="End a discovery subscription.",
        input=UnsubscribeInput, output=Unsubscribed, roles=AGENT_PROFILE,
        run=lambda c, who, req: c.unsubscribe(who, req),
    ),
    ToolSpec(
        name="share_context",
        description="Share context with one agent (to_agent) or all (omit to_agent). Types: background, "
        "working_memory, patterns, questions, partial_solutions, warnings. It expires after ttl_seconds.",
        input=ShareContextInput, output=SharedContext, roles=AGENT_PROFILE,
        run=lambda c, who, req: c.share_context(who, req),
    ),
    ToolSpec(
        name="get_context",
        description="Get the unexpired context addressed to an agent or broadcast, most relevant first.",
        input=GetContextInput, output=ContextList, roles=AGENT_PROFILE, read_only=True,
        run=lambda c, who, req: c.get_context(who, req),
    ),
    ToolSpec(
        name="get_collaboration_status",
        description="Counts of discoveries by type, subscriptions and connected SSE clients.",
        input=EmptyInput, output=CollaborationStatus, roles=OPERATOR_PROFILE, read_only=True,
        run=lambda c, who, req: c.status(),
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


def _text_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


def _validation_message(exc: ValidationError) -> str:
    details = (f"{loc or 'arguments'}: {msg}" for loc, msg, _ in validation_errors(exc))
    return "invalid arguments: " + "; ".join(details)


async def call_tool(collab: Collaboration, who: Principal, metrics: HubMetrics, name: str,
                    arguments: dict[str, Any] | None) -> types.CallToolResult:
    spec = _BY_NAME.get(name)
    if spec is None or who.role not in spec.roles:
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}")
    started = time.perf_counter()
    outcome = "error"
    try:
        req = spec.input.model_validate(arguments or {})
        output = await spec.run(collab, who, req)
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
        return _text_result(exc.message)
    finally:
        metrics.tool_calls.labels(name, outcome).inc()
        metrics.tool_latency.labels(name).observe(time.perf_counter() - started)
