"""The `claude` executor: the Anthropic Messages API in a tool-use loop over the hub's MCP tools.

Contract:

* Work: `begin` runs `config.prompt` (the runtime calls it once per agent, not again after a restart that finds
  the initial work shared, tagged `INITIAL_TAG`); `answer` runs each question routed to the agent. The model's
  final text is shared as this agent's discovery: an `insight` tagged `INITIAL_TAG` for `begin`, a `solution`
  related to the question for `answer`. A blank final text shares nothing.
* Tools: the hub's MCP tools this agent's token may call are listed once per executor and offered to the model.
  Every `tool_use` block is run through `Runtime.call_tool` and answered with a `tool_result`, with `is_error` when
  the hub returned an error result or refused the call. A work item makes at most `config.max_turns` API calls;
  tool calls the model asks for in the last one are not run, and its text (if any) is the answer.
* Budgets: before each API call the executor reserves this agent's budget through the hub (`reserve_usage`):
  `llm_tokens` for `max_tokens` plus an estimate of the input, `llm_cost_micro_usd` for those at the model's price
  in the hub's table; after it, it settles them with the usage the API reported (input, output and cache tokens)
  through `report_usage`, which also records the usage of agents without limits. A refused reservation raises
  `OverBudgetAgentError`: the work item stops without another API call, the process stays up. The two budget
  tools are not offered to the model.
* Key: `ANTHROPIC_API_KEY` from the agent process's environment (the hub hands it to the process, like its
  configuration); a missing key is a `LogicalAgentError`. The key is never logged.
* Failures: every API call goes through the `anthropic` circuit breaker with the configured call timeout. Transient
  failures (connection errors, timeouts, 408, 409, 429, 5xx including 529 overloaded) are retried with exponential
  backoff, then raised as `TransientAgentError`; an open breaker fails fast with `TransientAgentError` (the runtime
  retries the work item later). Rejected requests (400, 401, 403, 404 and other 4xx) raise `LogicalAgentError`
  and do not count against the breaker. The SDK's own retries are off: ours are the only ones.
"""

import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import anyio
from anthropic.types import Message, MessageParam, TextBlockParam, ToolParam, ToolResultBlockParam, ToolUseBlock
from mcp.types import CallToolResult, TextContent

from agent_pool.executors import PromptExecutor
from agent_pool.models import ClaudeConfig
from agent_pool.retry import retry
from agent_pool.runtime import INITIAL_TAG, Runtime, ToolFailed
from agenthub.errors import AgentWorkError, CircuitOpen, LogicalAgentError, TransientAgentError
from agenthub.settings import LlmPrice
from collaboration.models import RoutedQuestion
from supervisor.breaker import Breaker
from supervisor.policy import Backoff

logger = logging.getLogger(__name__)

API_KEY_ENV = "ANTHROPIC_API_KEY"
CONFIDENCE = 0.7  # the model's own answer, unreviewed
ATTEMPTS = 3  # per API call; the runtime retries the whole work item on top of this
BACKOFF = Backoff(initial=1.0, maximum=20.0, reset_after=60.0)
_TRANSIENT_STATUS = frozenset({408, 409, 429})  # and every 5xx
_MAX_TOOL_RESULT_CHARS = 50_000  # a poll can return megabytes; the model's context window is the limit
_HIDDEN_TOOLS = frozenset({"reserve_usage", "report_usage"})  # the executor's own bookkeeping, not the model's
_CHARS_PER_TOKEN = 3  # an input estimate on the safe side (English averages about four characters a token)


def breaker_for(config: ClaudeConfig) -> Breaker:
    """The production breaker: five failed calls open it for 30 s; rejected requests do not count."""
    return Breaker("anthropic", fail_max=5, reset_timeout=30, call_timeout=config.call_timeout_seconds,
                   exclude=[LogicalAgentError])


def work_error(exc: anthropic.APIError) -> AgentWorkError:
    """The work error category of a failed Messages API call."""
    if isinstance(exc, anthropic.APIStatusError):
        detail = f"the Anthropic API answered {exc.status_code}: {exc.api_message or exc.message}"
        if exc.status_code in _TRANSIENT_STATUS or exc.status_code >= 500:
            return TransientAgentError(detail)
        return LogicalAgentError(detail)
    if isinstance(exc, anthropic.APITimeoutError):
        return TransientAgentError("the Anthropic API timed out")
    if isinstance(exc, anthropic.APIConnectionError):
        return TransientAgentError(f"cannot reach the Anthropic API: {exc.message}")
    return LogicalAgentError(f"unexpected answer from the Anthropic API: {exc.message}")


def system_prompt(rt: Runtime, extra: str | None) -> str:
    """Who the model is and how it collaborates, followed by the configured system prompt."""
    config = rt.config
    who = f"You are agent {config.agent_id}, role {config.role}"
    if config.capabilities:
        who += f", with capabilities: {', '.join(config.capabilities)}"
    parts = [
        who + ".",
        "You work with other agents through a collaboration hub, whose tools you have: read what others share "
        "(get_context, subscribe_discoveries, poll_discoveries) and share what you find on the way "
        "(share_discovery, share_context).",
        f"When a tool asks who you are, use agent_id {config.agent_id!r} and agent_role {config.role!r}.",
        "Finish with your answer as plain text: it is shared on your behalf as a discovery, so do not share the "
        "final answer yourself.",
    ]
    if extra is not None:
        parts.append(extra)
    return "\n\n".join(parts)


def tool_result(tool_use_id: str, result: CallToolResult) -> ToolResultBlockParam:
    """An MCP tool result as the `tool_result` block answering the model's `tool_use`."""
    texts = [c.text if isinstance(c, TextContent) else f"[{c.type} content omitted]" for c in result.content]
    if not texts and result.structured_content is not None:
        texts = [json.dumps(result.structured_content, separators=(",", ":"))]
    content: list[TextBlockParam] = [{"type": "text", "text": text[:_MAX_TOOL_RESULT_CHARS]} for text in texts
                                     if text]
    block: ToolResultBlockParam = {"type": "tool_result", "tool_use_id": tool_use_id, "is_error": result.is_error}
    if content:
        block["content"] = content
    return block


def error_result(tool_use_id: str, message: str) -> ToolResultBlockParam:
    return {"type": "tool_result", "tool_use_id": tool_use_id, "is_error": True,
            "content": [{"type": "text", "text": message}]}


def cost_micro_usd(price: LlmPrice, *, input_tokens: int, output_tokens: int, cache_write: int = 0,
                   cache_read: int = 0) -> int:
    """What a call costs in micro-USD, rounded up: cache writes at 1.25 and cache reads at 0.1 times the input
    price (Anthropic's pricing)."""
    per_million = (input_tokens * price.input + cache_write * price.input * 5 // 4 + cache_read * price.input // 10
                   + output_tokens * price.output)
    return -(-per_million // 1_000_000)


def estimate_input_tokens(system: str, tools: list[ToolParam], messages: list[MessageParam], default: int) -> int:
    """A bound on the input tokens of a request, from its size; `default` when it cannot be measured."""
    try:
        return len(json.dumps([system, tools, messages], default=str)) // _CHARS_PER_TOKEN
    except (TypeError, ValueError):
        return default


def final_text(message: Message) -> str:
    return "\n\n".join(block.text for block in message.content if block.type == "text").strip()


class ClaudeExecutor(PromptExecutor):
    """Runs work items through Claude; `breaker`, `backoff` and `attempts` are tuning for tests."""

    def __init__(self, config: ClaudeConfig, *, breaker: Breaker | None = None, backoff: Backoff = BACKOFF,
                 attempts: int = ATTEMPTS) -> None:
        super().__init__(config.prompt)
        self.config = config
        self.breaker = breaker or breaker_for(config)
        self._backoff = backoff
        self._attempts = attempts
        self._tools: list[ToolParam] | None = None

    async def begin(self, rt: Runtime) -> None:
        if self.prompt is None:
            return
        logger.info("agent %s: initial work started", rt.agent_id)
        answer = await self.run(rt, self.prompt)
        if answer:
            discovery_id = await rt.share("insight", answer, confidence=CONFIDENCE, tags=[INITIAL_TAG])
            logger.info("agent %s: initial work shared as %s", rt.agent_id, discovery_id)

    async def answer(self, rt: Runtime, question: RoutedQuestion) -> None:
        logger.info("agent %s: answering question %s", rt.agent_id, question.discovery_id)
        prompt = f"Agent {question.from_agent} asked (discovery {question.discovery_id}):\n\n{question.question}"
        answer = await self.run(rt, prompt)
        if answer:
            discovery_id = await rt.share("solution", answer, confidence=CONFIDENCE,
                                          related_to=question.discovery_id, tags=["answer"])
            logger.info("agent %s: answered question %s with %s", rt.agent_id, question.discovery_id, discovery_id)

    async def run(self, rt: Runtime, prompt: str) -> str:
        """The model's final text for `prompt`, after the tool calls it makes on the way."""
        key = os.environ.get(API_KEY_ENV)
        if not key:
            raise LogicalAgentError(f"{API_KEY_ENV} is not set in the agent's environment; the claude executor "
                                    "needs an Anthropic API key")
        tools = await self._hub_tools(rt)
        names = {tool["name"] for tool in tools}
        system = system_prompt(rt, self.config.system)
        messages: list[MessageParam] = [{"role": "user", "content": prompt}]
        async with anthropic.AsyncAnthropic(api_key=key, base_url=self.config.base_url, max_retries=0,
                                            timeout=self.config.call_timeout_seconds) as client:

            async def create() -> Message:
                try:
                    return await client.messages.create(model=self.config.model, max_tokens=self.config.max_tokens,
                                                        system=system, tools=tools, messages=messages)
                except anthropic.APIError as exc:
                    raise work_error(exc) from exc

            for turn in range(1, self.config.max_turns + 1):
                estimate = estimate_input_tokens(system, tools, messages, rt.config.default_llm_reservation)
                reply = await self._metered(rt, create, estimate)
                calls = [block for block in reply.content if isinstance(block, ToolUseBlock)]
                if reply.stop_reason != "tool_use" or not calls:
                    return final_text(reply)
                if turn == self.config.max_turns:
                    break
                messages.append({"role": "assistant", "content": reply.content})
                messages.append({"role": "user", "content": [await self._run_tool(rt, call, names)
                                                             for call in calls]})
        logger.warning("agent %s: the model still wanted tools after %d turns; using its last text",
                       rt.agent_id, self.config.max_turns)
        return final_text(reply)

    async def _metered(self, rt: Runtime, create: Callable[[], Awaitable[Message]], input_tokens: int) -> Message:
        """One API call between a reservation of its bound and the report of what it used."""
        price = rt.llm_price(self.config.model)
        bounds = {"llm_tokens": input_tokens + self.config.max_tokens}
        if price is not None:
            bounds["llm_cost_micro_usd"] = cost_micro_usd(price, input_tokens=input_tokens,
                                                          output_tokens=self.config.max_tokens)
        held: list[str] = []
        try:
            for metric, amount in bounds.items():
                if (reservation := await rt.reserve_usage(metric, amount)) is not None:
                    held.append(reservation)
            reply = await self._call(create)
        except BaseException:
            if held:  # the call did not happen or failed: it spent nothing we know of
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await self._report(rt, held, dict.fromkeys(bounds, 0))
            raise
        usage = reply.usage
        cache_write, cache_read = usage.cache_creation_input_tokens or 0, usage.cache_read_input_tokens or 0
        used = {"llm_tokens": usage.input_tokens + usage.output_tokens + cache_write + cache_read}
        if price is not None:
            used["llm_cost_micro_usd"] = cost_micro_usd(price, input_tokens=usage.input_tokens,
                                                        output_tokens=usage.output_tokens, cache_write=cache_write,
                                                        cache_read=cache_read)
        await self._report(rt, held, used)
        return reply

    @staticmethod
    async def _report(rt: Runtime, held: list[str], used: dict[str, int]) -> None:
        try:
            await rt.report_usage(held, **used)
        except (ToolFailed, AgentWorkError) as exc:  # unsettled reservations expire at their reserved amount
            logger.warning("agent %s: reporting usage %s failed: %s", rt.agent_id, used, exc)

    async def _call(self, create: Callable[[], Awaitable[Message]]) -> Message:
        """One Messages API call through the breaker, retried while it fails transiently."""

        async def attempt() -> Message:
            try:
                return await self.breaker.call(create)
            except TimeoutError as exc:
                raise TransientAgentError(
                    f"the Anthropic API did not answer within {self.config.call_timeout_seconds} s") from exc

        async def note(exc: BaseException, delay: float) -> None:
            logger.warning("Anthropic API call failed (%s); retrying in %.1f s", exc, delay)

        try:
            return await retry(attempt, retry_on=(TransientAgentError,), attempts=self._attempts,
                               backoff=self._backoff, on_retry=note)
        except CircuitOpen as exc:  # retried by the runtime once the breaker lets a trial through
            raise TransientAgentError(f"the Anthropic API is failing: {exc.message}",
                                      retry_after=exc.retry_after) from exc

    async def _hub_tools(self, rt: Runtime) -> list[ToolParam]:
        if self._tools is None:
            tools: list[ToolParam] = []
            cursor: str | None = None
            while True:
                listed = await rt.client.list_tools(cursor=cursor)
                tools.extend({"name": t.name, "description": t.description or t.title or t.name,
                              "input_schema": t.input_schema} for t in listed.tools if t.name not in _HIDDEN_TOOLS)
                cursor = listed.next_cursor
                if cursor is None:
                    break
            self._tools = tools
            logger.info("agent %s: offering the model %d hub tools", rt.agent_id, len(tools))
        return self._tools

    async def _run_tool(self, rt: Runtime, call: ToolUseBlock, names: set[str]) -> ToolResultBlockParam:
        if call.name not in names:
            return error_result(call.id, f"unknown tool {call.name!r}; the tools are: {', '.join(sorted(names))}")
        logger.debug("agent %s: tool %s", rt.agent_id, call.name)
        arguments: dict[str, Any] = dict(call.input)
        try:
            result = await rt.call_tool(call.name, arguments)
        except ToolFailed as exc:  # the hub refused the call itself (an MCP error); the model can correct it
            return error_result(call.id, f"{call.name}: {exc}")
        return tool_result(call.id, result)
