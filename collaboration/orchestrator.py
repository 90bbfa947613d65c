"""The live orchestrator: hands each shared `question` to the running agents that should answer it.

A question goes to an agent when one of its tags names the agent's role or one of its capabilities (never to
the agent that asked). It is delivered as `questions` context addressed to the agent, which publishes it on
`context.direct.{agent_id}` where the agent's process listens, and stays readable with `get_context` until it
expires. Answers link back with `related_to`.

Two guards stop discovery loops between agents that answer questions with questions: a question deeper than
`max_depth` in a `related_to` chain is not routed, and no agent gets more than `per_agent_per_minute` questions a
minute. Which agents are candidates is the agent pool's business (`targets`): each replica routes only to the
agents it runs, so a question is routed once however many replicas see it.

The feed calls `discovery_shared` in sequence order; routing happens in `run`, off the feed's path, through a
bounded queue (a full queue drops the question from routing, counted, never from the log). A question that is
already old when the feed delivers it (imported history) is not routed.
"""

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
from anyio.abc import TaskStatus

from agenthub.errors import DiscoveryNotFound
from agenthub.metrics import HubMetrics
from collaboration.context import ContextManager
from collaboration.discoveries import DiscoveryLog
from collaboration.models import Discovery, RoutedQuestion, ShareContextInput

logger = logging.getLogger(__name__)

ORCHESTRATOR_ID = "orchestrator"  # the `from_agent` of routed questions
_QUEUE = 1000
_WINDOW = 60.0
_TTL_SECONDS = 3600
_STALE = timedelta(minutes=10)  # a question older than this when it reaches the feed was imported, not asked


class Orchestrator:
    def __init__(self, log: DiscoveryLog, contexts: ContextManager, metrics: HubMetrics, *,
                 targets: Callable[[Discovery], list[str]], max_depth: int, per_agent_per_minute: int) -> None:
        self._log = log
        self._contexts = contexts
        self._metrics = metrics
        self._targets = targets
        self.max_depth = max_depth
        self.per_agent_per_minute = per_agent_per_minute
        self._send, self._receive = anyio.create_memory_object_stream[Discovery](_QUEUE)
        self._recent: dict[str, deque[float]] = defaultdict(deque)

    async def discovery_shared(self, d: Discovery) -> None:
        """Feed hook: queue questions for routing."""
        if d.discovery_type != "question":
            return
        if datetime.now(UTC) - d.timestamp > _STALE:  # imported history: nobody is waiting for that answer
            self._metrics.questions_unrouted.labels("stale").inc()
            return
        try:
            self._send.send_nowait(d)
        except anyio.WouldBlock:
            self._metrics.questions_unrouted.labels("queue_full").inc()
            logger.warning("orchestrator queue full: question %s not routed", d.discovery_id)

    async def run(self, task_status: TaskStatus[None]) -> None:
        task_status.started()
        async for d in self._receive:
            await self.route(d)

    async def route(self, d: Discovery) -> list[str]:
        """Route one question now; returns the agents it was sent to."""
        depth = await self.depth(d)
        if depth > self.max_depth:
            self._metrics.questions_unrouted.labels("depth").inc()
            logger.info("question %s not routed: depth %d > %d", d.discovery_id, depth, self.max_depth)
            return []
        question = RoutedQuestion(discovery_id=d.discovery_id, question=d.content, from_agent=d.agent_id,
                                  depth=depth, tags=d.tags)
        sent = []
        for agent_id in self._targets(d):
            if agent_id == d.agent_id:
                continue
            if not self._within_rate(agent_id):
                self._metrics.questions_unrouted.labels("rate").inc()
                logger.info("question %s not routed to %s: over %d a minute", d.discovery_id, agent_id,
                            self.per_agent_per_minute)
                continue
            await self._contexts.share(ShareContextInput(
                from_agent=ORCHESTRATOR_ID, to_agent=agent_id, context_type="questions",
                content=question.model_dump(mode="json"), relevance=d.confidence, ttl_seconds=_TTL_SECONDS))
            self._metrics.questions_routed.inc()
            sent.append(agent_id)
        return sent

    async def depth(self, d: Discovery) -> int:
        """How many `related_to` links lead from `d` back to the discovery that started its thread (capped)."""
        depth, related = 0, d.related_to
        while related is not None and depth <= self.max_depth:
            depth += 1
            try:
                related = (await self._log.get(related)).related_to
            except DiscoveryNotFound:
                break
        return depth

    def _within_rate(self, agent_id: str) -> bool:
        now = time.monotonic()
        recent = self._recent[agent_id]
        while recent and now - recent[0] > _WINDOW:
            recent.popleft()
        if len(recent) >= self.per_agent_per_minute:
            return False
        recent.append(now)
        return True
