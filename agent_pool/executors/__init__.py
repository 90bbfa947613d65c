"""Executors: what an agent process does with its work. One per `executor` name in a spawn request.

An executor gets the work given in its configuration once (`begin`; the runtime skips it when the agent already
shared that work before a restart), each question the live orchestrator routes to the agent (`answer`), and may
look for work itself (`serve`). It
talks to the hub only through the `Runtime` (MCP tools over HTTP). It raises `TransientAgentError` for failures
worth retrying and `LogicalAgentError` for those that are not (bad configuration, a rejected key); anything else
is a crash and the supervisor restarts the process.
"""

from typing import Protocol

from agent_pool.models import ClaudeConfig, CommandConfig, ScriptedConfig, WasmConfig, WorkerConfig
from agent_pool.runtime import Runtime
from collaboration.models import RoutedQuestion


class Executor(Protocol):
    @property
    def has_initial_work(self) -> bool:
        """Whether the configuration gives work to do at start (else `begin` is not called)."""
        ...

    async def begin(self, rt: Runtime) -> None: ...

    async def serve(self, rt: Runtime) -> None:
        """Work the executor finds for itself, for as long as the agent runs (the scripted worker bids on task
        auctions); returns at once when there is none. Each item goes through `rt.work`."""
        ...

    async def answer(self, rt: Runtime, question: RoutedQuestion) -> None: ...


class PromptExecutor:
    """The shape of executors driven by a configured prompt and by routed questions (claude, command): their
    initial work is the prompt, if any, and they look for no work of their own."""

    def __init__(self, prompt: str | None) -> None:
        self.prompt = prompt

    @property
    def has_initial_work(self) -> bool:
        return self.prompt is not None

    async def serve(self, rt: Runtime) -> None:
        """Nothing to look for: the work is the prompt and the questions routed to the agent."""


def build_executor(config: WorkerConfig) -> Executor:
    """The executor for a worker's configuration (imported lazily: each pulls in its own dependencies)."""
    if config.executor == "scripted":
        from agent_pool.executors.scripted import ScriptedExecutor

        return ScriptedExecutor(ScriptedConfig.model_validate(config.executor_config))
    if config.executor == "claude":
        from agent_pool.executors.claude import ClaudeExecutor

        return ClaudeExecutor(ClaudeConfig.model_validate(config.executor_config))
    if config.executor == "wasm":
        from agent_pool.executors.wasm import WasmExecutor

        return WasmExecutor(WasmConfig.model_validate(config.executor_config), config.compile_limits)
    from agent_pool.executors.command import CommandExecutor

    return CommandExecutor(CommandConfig.model_validate(config.executor_config))
