"""Inside an agent process: its connection to the hub and its life as an agent.

The runtime connects to NATS (with the login issued for this process, allowed only this agent's subjects:
`agenthub.nats_auth.agent_subjects`) and, over MCP, to the hub (retrying while the hub is not up yet), listens for
questions routed to it on `context.direct.{id}`, announces itself, heartbeats, publishes performance metrics
and errors, and feeds work to its executor one item at a time, reporting busy and idle as it goes.

Errors are handled by category (the MS-1 error flow): `TransientAgentError` is retried with backoff,
`LogicalAgentError` is reported and the process waits for the hub to stop it (it must not be restarted into the
same mistake), `OverBudgetAgentError` (the hub refused to reserve budget for the work) is reported as a `budget`
error and only that work item is dropped (the process takes later work), anything else is reported as fatal and
the process exits non-zero so its supervisor restarts it.
"""

import json
import logging
import os
import resource
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import httpx2
import nats
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, TextContent
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError

from agent_pool.models import Announce, ErrorCategory, ErrorEvent, Heartbeat, Performance, WorkerConfig
from agent_pool.retry import retry
from agenthub.errors import BUDGET_EXHAUSTED_META, LogicalAgentError, OverBudgetAgentError, TransientAgentError
from agenthub.nats_auth import NatsLogin
from agenthub.settings import LlmPrice
from collaboration.models import RoutedQuestion
from supervisor.policy import Backoff

# Made at import, so the fork server loads the CA bundle once for every worker it forks (about 40 ms each).
_TLS = ssl.create_default_context()

if TYPE_CHECKING:
    from agent_pool.executors import Executor

logger = logging.getLogger(__name__)

INITIAL_TAG = "initial"  # tags the discoveries of an agent's configured work, so a restart does not redo it
_QUEUE = 100
_CONNECT_BACKOFF = Backoff(initial=0.05, maximum=2.0, reset_after=60.0)
_WORK_ATTEMPTS = 5
_WORK_BACKOFF = Backoff(initial=0.5, maximum=10.0, reset_after=60.0)
_LOGICAL_GRACE = 30.0  # after a logical error, how long to wait for the hub to stop us before exiting ourselves


class ToolFailed(Exception):
    """A hub tool returned an error result."""


class Runtime:
    def __init__(self, config: WorkerConfig, token: str, nats_login: NatsLogin | None = None) -> None:
        self.config = config
        self.agent_id = config.agent_id
        self._token = token
        self._nats_login = nats_login or NatsLogin()
        self._nc: NatsClient | None = None
        self._client: Client | None = None
        self._http: httpx2.AsyncClient | None = None
        self._busy = False
        self._seq = 0
        self.work_done = 0  # work items that produced something (a shared discovery, a completed task)
        self.shared = 0
        self.completed = 0
        self._working = anyio.Lock()
        self.errors = 0
        self._busy_seconds = 0.0
        self._started = time.monotonic()
        self._parent = os.getppid()  # the hub, or the fork server that forked us
        send, receive = anyio.create_memory_object_stream[RoutedQuestion](_QUEUE)
        self._questions_in: MemoryObjectSendStream[RoutedQuestion] = send
        self._questions: MemoryObjectReceiveStream[RoutedQuestion] = receive

    # -- the hub's tools -------------------------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        assert self._client is not None, "the runtime is not connected"
        return self._client

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        try:
            return await self.client.call_tool(name, arguments)
        except (httpx2.TransportError, OSError) as exc:
            raise TransientAgentError(f"the hub is unreachable: {exc}") from exc
        except MCPError as exc:  # protocol-level refusal (an unknown tool): the work item fails, the agent lives
            raise ToolFailed(f"{name}: {exc}") from exc

    async def tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Call a hub tool and return its structured result; an error result raises `ToolFailed`."""
        result = await self.call_tool(name, arguments)
        if result.is_error:
            text = " ".join(c.text for c in result.content if isinstance(c, TextContent))
            raise ToolFailed(f"{name}: {text}")
        return result.structured_content or {}

    # -- budgets (governance.budgets, through the hub's budgets tools) -----------------------------------------------

    def llm_price(self, model: str) -> LlmPrice | None:
        """What the hub says `model`'s tokens cost (its table's `default` for a model it does not name)."""
        prices = self.config.llm_prices
        return prices.get(model) or prices.get("default")

    async def reserve_usage(self, metric: str, amount: int) -> str | None:
        """Reserve `amount` of this agent's budget on `metric` before work that spends it: the reservation id, or
        None without a limit. Raises `OverBudgetAgentError` when the hub refuses (the budget is exhausted)."""
        result = await self.call_tool("reserve_usage", {"agent_id": self.agent_id, "metric": metric,
                                                        "amount": amount})
        if result.is_error:
            text = " ".join(c.text for c in result.content if isinstance(c, TextContent))
            if result.meta and BUDGET_EXHAUSTED_META in result.meta:
                raise OverBudgetAgentError(text)
            raise ToolFailed(f"reserve_usage: {text}")
        reservation: str | None = (result.structured_content or {}).get("reservation_id")
        return reservation

    async def report_usage(self, reservations: list[str], **amounts: int) -> None:
        """Settle `reservations` with the amounts of their metrics and record the rest (`llm_tokens=...`)."""
        await self.tool("report_usage", {"agent_id": self.agent_id, "reservation_ids": reservations, **amounts})

    async def rest(self, path: str) -> httpx2.Response | None:
        """GET a hub REST path as this agent: the response, or None for 404; other failures raise."""
        assert self._http is not None, "the runtime is not connected"
        try:
            response = await self._http.get(self.config.hub_url.rstrip("/") + path)
        except (httpx2.TransportError, OSError) as exc:
            raise TransientAgentError(f"the hub is unreachable: {exc}") from exc
        if response.status_code == 404:
            return None
        if response.status_code >= 500:
            raise TransientAgentError(f"GET {path}: {response.status_code} {response.text[:500]}")
        if response.status_code >= 400:
            raise ToolFailed(f"GET {path}: {response.status_code} {response.text[:500]}")
        return response

    async def share(self, discovery_type: str, content: str, *, confidence: float, related_to: str | None = None,
                    tags: list[str] | None = None) -> str:
        """Share a discovery as this agent; returns its id."""
        args: dict[str, Any] = {"agent_id": self.agent_id, "agent_role": self.config.role,
                                "discovery_type": discovery_type, "content": content[:16_000],
                                "confidence": confidence, "tags": tags or []}
        if related_to is not None:
            args["related_to"] = related_to
        discovery_id = str((await self.tool("share_discovery", args))["discovery_id"])
        self.shared += 1
        return discovery_id

    async def report_task(self, task_id: str, status: str, *, result: dict[str, Any] | None = None,
                          message: str | None = None) -> dict[str, Any]:
        """Report progress on, completion of or failure of a task this agent won."""
        args: dict[str, Any] = {"task_id": task_id, "agent_id": self.agent_id, "status": status}
        if result is not None:
            args["result"] = result
        if message is not None:
            args["message"] = message
        answer = await self.tool("report_task", args)
        if status == "completed":
            self.completed += 1
        return answer

    @asynccontextmanager
    async def messages(self, name: str) -> AsyncIterator[MemoryObjectReceiveStream[dict[str, Any]]]:
        """JSON messages on a NATS subject (under the hub's prefix) while the block runs; a bounded queue, whose
        overflow is dropped and reported."""
        assert self._nc is not None, "the runtime is not connected"
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](_QUEUE)

        async def deliver(msg: Msg) -> None:
            try:
                send.send_nowait(json.loads(msg.data))
            except ValueError:
                logger.warning("ignored a malformed message on %s", msg.subject)
            except anyio.WouldBlock:
                await self.report_error("transient", f"queue for {name} full; dropped a message")

        sub = await self._nc.subscribe(self._subject(name), cb=deliver)
        try:
            with send, receive:
                yield receive
        finally:
            await sub.unsubscribe()

    async def my_discoveries(self) -> list[dict[str, Any]]:
        """This agent's latest discoveries (newest 50)."""
        uri = f"discovery://agents/{self.agent_id}/discoveries"
        result = await self.client.read_resource(uri)
        text = getattr(result.contents[0], "text", "{}") if result.contents else "{}"
        items: list[dict[str, Any]] = json.loads(text).get("discoveries", [])
        return items

    async def initial_work_done(self) -> bool:
        return any(INITIAL_TAG in d.get("tags", []) for d in await self.my_discoveries())

    # -- NATS -------------------------------------------------------------------------------------------------------

    def _subject(self, name: str) -> str:
        return f"{self.config.subject_prefix}{name}"

    async def publish(self, name: str, payload: BaseModel) -> None:
        if self._nc is None:
            return
        try:
            await self._nc.publish(self._subject(name), payload.model_dump_json().encode())
        except Exception:  # telemetry must never stop the work; the hub notices missing heartbeats
            logger.warning("publish on %s failed", name, exc_info=True)

    async def report_error(self, category: ErrorCategory, message: str) -> None:
        self.errors += 1
        logger.warning("%s error: %s", category, message)
        await self.publish(f"agents.{self.agent_id}.events.error", ErrorEvent(
            agent_id=self.agent_id, instance=self.config.instance, category=category, message=message[:2000]))

    async def _heartbeat(self) -> None:
        self._seq += 1
        await self.publish(f"agents.{self.agent_id}.heartbeat", Heartbeat(
            agent_id=self.agent_id, instance=self.config.instance, pid=os.getpid(),
            state="busy" if self._busy else "idle", seq=self._seq, work_done=self.work_done))

    async def _performance(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        await self.publish(f"agents.{self.agent_id}.metrics.performance", Performance(
            agent_id=self.agent_id, instance=self.config.instance, work_done=self.work_done, errors=self.errors,
            busy_seconds=round(self._busy_seconds, 3), uptime_seconds=round(time.monotonic() - self._started, 3),
            rss_bytes=usage.ru_maxrss * 1024, cpu_seconds=round(usage.ru_utime + usage.ru_stime, 3)))

    async def _beat_forever(self) -> None:
        while True:
            await anyio.sleep(self.config.heartbeat_seconds)
            if os.getppid() != self._parent:  # the hub (or its fork server) died: an orphan must not linger
                logger.warning("the parent process %d is gone; exiting", self._parent)
                os._exit(0)
            await self._heartbeat()
            await self._performance()

    async def _on_context(self, msg: Msg) -> None:
        try:
            item = json.loads(msg.data)
            if item.get("context_type") != "questions":
                return
            question = RoutedQuestion.model_validate(item["content"])
        except (ValueError, KeyError, ValidationError):
            logger.warning("ignored a malformed context message")
            return
        try:
            self._questions_in.send_nowait(question)
        except anyio.WouldBlock:
            await self.report_error("transient", f"question queue full; dropped {question.discovery_id}")

    # -- lifecycle --------------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def connect(self) -> AsyncIterator["Runtime"]:
        async def note(exc: BaseException, delay: float) -> None:
            logger.info("hub not reachable yet (%s); retrying in %.2f s", exc, delay)

        async def connect_nats() -> NatsClient:
            return await nats.connect(self.config.nats_url, connect_timeout=2, max_reconnect_attempts=-1,
                                      reconnect_time_wait=0.5, name=f"agent:{self.agent_id}",
                                      **self._nats_login.connect_options())

        self._nc = await retry(connect_nats, retry_on=(Exception,), attempts=0, backoff=_CONNECT_BACKOFF,
                               on_retry=note)
        try:
            await self._nc.subscribe(self._subject(f"context.direct.{self.agent_id}"), cb=self._on_context)
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {self._token}"},
                                      timeout=httpx2.Timeout(30, read=120), verify=_TLS)
            async with http:
                self._http = http
                client = Client(streamable_http_client(self.config.hub_url.rstrip("/") + "/mcp", http_client=http))

                async def enter() -> Client:
                    return await client.__aenter__()

                self._client = await retry(enter, retry_on=(httpx2.TransportError, OSError), attempts=0,
                                           backoff=_CONNECT_BACKOFF, on_retry=note)
                try:
                    yield self
                finally:
                    await client.__aexit__(None, None, None)
        finally:
            await self._nc.close()

    async def run(self, executor: "Executor") -> None:
        """Announce, then heartbeat and work until cancelled."""
        await self.publish(f"agents.{self.agent_id}.announce", Announce(
            agent_id=self.agent_id, instance=self.config.instance, pid=os.getpid(), role=self.config.role,
            capabilities=self.config.capabilities, executor=self.config.executor))
        await self._heartbeat()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._beat_forever)
            tg.start_soon(executor.serve, self)
            await self.initial_work(executor)
            async for question in self._questions:
                await self.work(lambda q=question: executor.answer(self, q))  # type: ignore[misc]

    async def initial_work(self, executor: "Executor") -> None:
        """The work the configuration gives, once per agent: not again after a restart that finds it shared."""
        if executor.has_initial_work and not await self.initial_work_done():
            await self.work(lambda: executor.begin(self))

    async def work(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run one work item (one at a time: an agent is busy or idle), with the error handling of its category."""
        async with self._working:
            await self._work(job)

    async def _work(self, job: Callable[[], Awaitable[None]]) -> None:
        self._busy = True
        await self._heartbeat()
        started, done_before = time.monotonic(), self.shared + self.completed

        async def transient(exc: BaseException, delay: float) -> None:
            await self.report_error("transient", f"{exc} (retrying in {delay:.1f} s)")

        try:
            await retry(job, retry_on=(TransientAgentError,), attempts=_WORK_ATTEMPTS, backoff=_WORK_BACKOFF,
                        on_retry=transient)
            if self.shared + self.completed > done_before:
                self.work_done += 1
        except OverBudgetAgentError as exc:  # this item is dropped; later ones run once an operator raises the budget
            await self.report_error("budget", exc.message)
        except LogicalAgentError as exc:
            await self.report_error("logical", exc.message)
            await anyio.sleep(_LOGICAL_GRACE)  # the hub stops us; if it does not, exit without a restart loop
            raise SystemExit(78) from exc
        except TransientAgentError as exc:
            await self.report_error("transient", f"gave up after {_WORK_ATTEMPTS} attempts: {exc.message}")
        except ToolFailed as exc:
            await self.report_error("transient", str(exc))
        finally:
            self._busy = False
            self._busy_seconds += time.monotonic() - started
        await self._heartbeat()
        await self._performance()
