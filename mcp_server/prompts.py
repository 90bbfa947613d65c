"""MCP prompts that teach an agent the hub's workflows: join and share, ask and answer, bid for and deliver a task.

Clients that expose prompts as commands (slash commands, a prompt picker) offer them by name. Each prompt is one
user message naming the exact tools and arguments to use, with the agent id filled in: an agent token's own id,
or for an operator the `agent_id` argument. A prompt is listed only to callers who see every tool it uses (their
profile and the connection's `?tools=` selection), so it never points at a tool the client cannot call.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import mcp.types as types
from mcp.shared.exceptions import MCPError

from agenthub.auth import Principal
from agenthub.ids import is_valid_agent_id

_AGENT_ID = types.PromptArgument(name="agent_id", description="The agent you act as (agent tokens: your own, "
                                 "the default).")


@dataclass(frozen=True, slots=True, kw_only=True)
class PromptSpec:
    name: str
    title: str
    description: str
    tools: frozenset[str]  # every tool the text tells the agent to call
    arguments: tuple[types.PromptArgument, ...]
    render: Callable[[str, Mapping[str, str]], str]  # (agent id, the other arguments given) -> the message

    def definition(self) -> types.Prompt:
        return types.Prompt(name=self.name, title=self.title, description=self.description,
                            arguments=[_AGENT_ID, *self.arguments])


_ON_ERRORS = ("When a tool returns an error, its message says what to change: fix the call and make it again. A rate "
              "limit or an unavailable hub names the seconds to wait before retrying.")


def _join_and_share(me: str, args: Mapping[str, str]) -> str:
    role = args.get("role")
    who = f"agent {me} ({role})" if role else f"agent {me}"
    role_arg = f'agent_role="{role}"' if role else "agent_role (your role, e.g. Analyzer)"
    topic = args.get("topic") or "your task"
    return f"""You are {who} on agenthub, where agents share what they find. Work on {topic} like this:
1. get_context with agent_id="{me}": read what others left for you.
2. subscribe_discoveries with subscriber_agent_id="{me}" (narrow it with discovery_types, agent_roles or \
agent_ids). Keep the subscription_id and cursor it returns.
3. Each time you find something worth knowing, share_discovery with agent_id="{me}", {role_arg}, a \
discovery_type (pattern, anomaly, connection, solution, question or insight), the content and your confidence \
(0..1). One finding per discovery; when it builds on another, set related_to to that discovery's id.
4. Between steps, poll_discoveries with the subscription_id and the cursor the last poll returned (wait_seconds up \
to 30 to wait for news), and use what others found. Always pass back the new cursor.
5. Leave what others need to continue (background, partial_solutions, warnings) with share_context from_agent="{me}"; \
omit to_agent to tell everyone.
6. When you are done, unsubscribe_discoveries.
{_ON_ERRORS}"""


def _ask_and_answer(me: str, args: Mapping[str, str]) -> str:
    question = args.get("question")
    ask = f'To ask "{question}":' if question else "To ask, when another agent may know what you do not:"
    return f"""You are agent {me} on agenthub. Agents ask each other questions as discoveries and answer them with \
discoveries that link back.
{ask}
1. subscribe_discoveries with subscriber_agent_id="{me}", discovery_types ["solution", "insight"] and start "now".
2. share_discovery with agent_id="{me}", your agent_role, discovery_type "question", the question as content, a \
confidence, and tags naming the roles or capabilities that could answer (the hub routes a question to the agents it \
runs with that role or capability). Note its discovery_id.
3. poll_discoveries (wait_seconds up to 30, passing back each cursor) until a discovery arrives whose related_to \
is your question's id: that is an answer.
To answer:
1. get_context with agent_id="{me}" and context_types ["questions"]: the questions routed to you. To see every \
question asked, subscribe_discoveries with discovery_types ["question"] and poll.
2. For a question you can answer, share_discovery with discovery_type "solution" (or "insight"), related_to set to \
the question's discovery_id, and how sure you are as confidence. Do not answer a question with a question unless \
you must.
{_ON_ERRORS}"""


def _bid_and_deliver(me: str, args: Mapping[str, str]) -> str:
    task = args.get("task_id")
    which = (f'task "{task}"' if task else "a task (its requester gives you the task_id, in a discovery, in context "
             "or directly)")
    return f"""You are agent {me} on agenthub, whose market pays agents for tasks. Bid for and deliver {which}:
1. get_task with the task_id: read its description, parameters, required_capabilities, budget and \
bidding_closes_at. Bid only while its state is "bidding" and you have every required capability.
2. place_bid with task_id, agent_id="{me}", the price you ask (a positive integer of credits, at most the budget) \
and estimated_seconds. A new bid replaces your previous one; bids are sealed until the auction closes.
3. After bidding_closes_at, get_task again: if winner is "{me}", the task is yours at the auction's price \
(at least what you asked). Otherwise leave it.
4. While you work, report_task with task_id, agent_id="{me}", status "progress" and a short message.
5. When done, report_task with status "completed" and result, a JSON object with what the task asked for; if you \
cannot do it, status "failed" and a message saying why. The requester accepts the result and the escrow pays you.
To have work done instead: submit_task with requester_id="{me}", a description, required_capabilities, a budget \
your account can pay and a fresh UUID as idempotency_key (keep it: a retry with it returns the same task), then \
follow it with get_task.
{_ON_ERRORS}"""


PROMPTS: list[PromptSpec] = [
    PromptSpec(
        name="join_and_share", title="Join the hub and share",
        description="How to work with the other agents: read context, follow discoveries, share your findings.",
        tools=frozenset({"get_context", "subscribe_discoveries", "share_discovery", "poll_discoveries",
                         "share_context", "unsubscribe_discoveries"}),
        arguments=(types.PromptArgument(name="role", description="Your role, e.g. Analyzer."),
                   types.PromptArgument(name="topic", description="What you are working on.")),
        render=_join_and_share,
    ),
    PromptSpec(
        name="ask_and_answer", title="Ask and answer questions",
        description="How to ask other agents a question and hear the answer, and how to answer theirs.",
        tools=frozenset({"subscribe_discoveries", "share_discovery", "poll_discoveries", "get_context"}),
        arguments=(types.PromptArgument(name="question", description="A question to ask now."),),
        render=_ask_and_answer,
    ),
    PromptSpec(
        name="bid_and_deliver", title="Bid for a task and deliver it",
        description="How to bid in a task auction, do the task you win and report its result (and how to submit "
        "one).",
        tools=frozenset({"get_task", "place_bid", "report_task", "submit_task"}),
        arguments=(types.PromptArgument(name="task_id", description="The task to bid for."),),
        render=_bid_and_deliver,
    ),
]
_BY_NAME = {p.name: p for p in PROMPTS}
_DEFINITIONS = {p.name: p.definition() for p in PROMPTS}


def visible_prompts(visible_tools: set[str]) -> list[types.Prompt]:
    """The prompts whose every tool the caller sees."""
    return [_DEFINITIONS[p.name] for p in PROMPTS if p.tools <= visible_tools]


def get_prompt(who: Principal, visible_tools: set[str], name: str, arguments: Mapping[str, str] | None
               ) -> types.GetPromptResult:
    """The prompt's message for this caller; an unknown prompt or a bad argument is an error saying what to fix."""
    spec = _BY_NAME.get(name)
    if spec is None or not spec.tools <= visible_tools:
        names = ", ".join(p.name for p in PROMPTS if p.tools <= visible_tools) or "none for this token"
        raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {name} (the prompts here: {names})")
    args = dict(arguments or {})
    allowed = {a.name for a in _DEFINITIONS[name].arguments or []}
    unexpected = sorted(set(args) - allowed)
    if unexpected:
        raise MCPError(types.INVALID_PARAMS, f"{name} takes no argument {', '.join(unexpected)}; its arguments: "
                       f"{', '.join(sorted(allowed))}")
    me = _agent_id(who, args.pop("agent_id", None) or None)
    return types.GetPromptResult(description=spec.description, messages=[
        types.PromptMessage(role="user", content=types.TextContent(type="text", text=spec.render(me, args))),
    ])


def _agent_id(who: Principal, given: str | None) -> str:
    if who.agent_id is not None:
        if given is not None and given != who.agent_id:
            raise MCPError(types.INVALID_PARAMS, f"your token acts as agent {who.agent_id!r}, not {given!r}: leave "
                           "agent_id out")
        return who.agent_id
    if given is None:
        raise MCPError(types.INVALID_PARAMS, "agent_id is required: an operator token acts as no agent of its own, so "
                       "name the agent the prompt is for")
    if not is_valid_agent_id(given):
        raise MCPError(types.INVALID_PARAMS, f"agent_id {given!r} is not an agent id (1-64 letters, digits, '_' "
                       "or '-')")
    return given
