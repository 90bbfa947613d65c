"""The agent's uploaded WASM binary as its executor.

The agent bids on the auctions it has the capabilities for while it has a binary. For each task it wins it
looks up its current binary version (so an upload or a rollback takes effect at the next task), fetches and
compiles the module once per SHA-256 (in the limited compiler process, with the hub's compile limits), and runs
it in a fresh sandbox store with the configured limits, off the event loop. The module's stdin is the task:

    {"task_id": ..., "description": ..., "parameters": {...}, "required_capabilities": [...], "budget": ...}

An `ok` run completes the task with the module's JSON object as the result; any other outcome fails it with
the outcome, its reason and the tail of the module's stderr. The module runs in this agent process, not in the
hub, so a module that spins or floods costs its own agent and nothing else.
"""

import hashlib
import json
from typing import Any

from wasmtime import Module

from agent_pool.executors.bidding import serve_tasks
from agent_pool.models import WasmConfig
from agent_pool.runtime import Runtime, ToolFailed
from agenthub.errors import InvalidInput, InvalidModule, LogicalAgentError
from collaboration.models import RoutedQuestion
from sandbox.models import CompileLimits, RunResult
from sandbox.modules import ModuleCache
from sandbox.runner import Runner

_LOG_TAIL = 1500
_MAX_RESULT_KEYS = 100  # what report_task accepts


class WasmExecutor:
    def __init__(self, config: WasmConfig, compile_limits: CompileLimits | None) -> None:
        self.config = config
        self.compile_limits = compile_limits

    @property
    def has_initial_work(self) -> bool:
        return False

    async def begin(self, rt: Runtime) -> None:
        """No configured work: a WASM agent works on the tasks it wins."""

    async def answer(self, rt: Runtime, question: RoutedQuestion) -> None:
        """Questions are not tasks: a WASM agent does not answer them."""

    async def serve(self, rt: Runtime) -> None:
        if self.compile_limits is None:
            raise LogicalAgentError("the hub gave this wasm agent no compile limits")
        versions: dict[str, int] = {}  # SHA-256 -> the version it was seen as, to fetch exactly those bytes

        async def module_bytes(sha256: str) -> bytes:
            response = await rt.rest(f"/api/v1/agents/{rt.agent_id}/binary/module?version={versions[sha256]}")
            if response is None:
                raise InvalidModule(f"the hub's binary store has no module {sha256} (replicas need one shared "
                                    "store: see docs/deployment.md)")
            if hashlib.sha256(response.content).hexdigest() != sha256:
                raise InvalidModule(f"the module fetched as {sha256} has another SHA-256")
            return response.content

        async def can_bid() -> bool:
            return await rt.rest(f"/api/v1/agents/{rt.agent_id}/binary") is not None

        with Runner(concurrency=1) as runner:
            cache = ModuleCache(runner, self.compile_limits, module_bytes)

            async def do(task_id: str) -> None:
                current = await rt.rest(f"/api/v1/agents/{rt.agent_id}/binary")
                if current is None:
                    await rt.report_task(task_id, "failed", message="this agent has no WASM binary")
                    return
                binary = current.json()
                versions[binary["sha256"]] = binary["version"]
                try:
                    module = await cache.get(binary["sha256"])
                except InvalidInput as exc:  # accepted by the hub, yet not usable here: the task cannot run
                    await rt.report_task(task_id, "failed", message=f"the binary cannot be used: {exc.message}")
                    return
                await self._run(rt, runner, module, task_id, binary)

            await serve_tasks(rt, price_percent=self.config.price_percent,
                              estimated_seconds=self.config.estimated_seconds, can_bid=can_bid, do=do)

    async def _run(self, rt: Runtime, runner: Runner, module: Module, task_id: str, binary: dict[str, Any]) -> None:
        task = await rt.tool("get_task", {"task_id": task_id})
        await rt.report_task(task_id, "progress", message=f"running binary version {binary['version']}")
        stdin = json.dumps({key: task.get(key) for key in
                            ("task_id", "description", "parameters", "required_capabilities", "budget")})
        result = await runner.execute(module, stdin.encode(), self.config.limits)
        await self._report(rt, task_id, binary, result)

    @staticmethod
    async def _report(rt: Runtime, task_id: str, binary: dict[str, Any], result: RunResult) -> None:
        run = f"binary version {binary['version']}: {result.outcome.value} in {result.duration_ms:.1f} ms"
        if result.ok and result.output is not None and len(result.output) <= _MAX_RESULT_KEYS:
            try:
                await rt.report_task(task_id, "completed", result=result.output, message=run)
                return
            except ToolFailed as exc:  # the hub refused the output (too large): the task fails, with the reason
                reason = str(exc)
        elif result.ok:
            reason = f"the output has more than {_MAX_RESULT_KEYS} keys"
        else:
            reason = result.error or result.outcome.value
        log = f"; log: {result.log[-_LOG_TAIL:]}" if result.log else ""
        await rt.report_task(task_id, "failed", message=f"{run}: {reason}{log}"[:4000])
