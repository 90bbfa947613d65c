"""Deterministic built-in behaviours, for demos and tests.

`analyzer` reads its configured text once and shares one discovery per sentence, typed by simple cues: a
question mark makes a question; words of failure an anomaly; words of repetition a pattern; words of cause a
connection; anything else an insight. `responder` answers each question routed to it with a `solution` linked
to the question by `related_to`. `worker` listens on `tasks.*.auction`, bids on every auction whose required
capabilities it has (its price: `price_percent` of the budget, rounded up), and when `tasks.{id}.assignment`
names it, reports the task running, works `work_seconds`, and reports it completed with a result that counts
the description's words (or failed, when so configured). The same input always gives the same output.
"""

import re

import anyio

from agent_pool.executors.bidding import serve_tasks
from agent_pool.models import ScriptedConfig
from agent_pool.runtime import INITIAL_TAG, Runtime
from collaboration.models import RoutedQuestion

_SENTENCE = re.compile(r"[^.!?]+[.!?]?")
_CUES: list[tuple[str, re.Pattern[str]]] = [
    ("anomaly", re.compile(r"\b(error|errors|fail\w*|unexpected|spike|outage|timeout|crash\w*)\b", re.I)),
    ("pattern", re.compile(r"\b(always|every|repeat\w*|recurring|daily|each)\b", re.I)),
    ("connection", re.compile(r"\b(because|caused|causes|leads to|correlat\w*|depends on)\b", re.I)),
]
_MAX_SHARED = 50


def classify(sentence: str) -> str:
    """The discovery type the analyzer gives a sentence."""
    if sentence.rstrip().endswith("?"):
        return "question"
    for kind, cue in _CUES:
        if cue.search(sentence):
            return kind
    return "insight"


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()][:_MAX_SHARED]


class ScriptedExecutor:
    def __init__(self, config: ScriptedConfig) -> None:
        self.config = config

    @property
    def has_initial_work(self) -> bool:
        return self.config.behaviour == "analyzer" and self.config.text is not None

    async def begin(self, rt: Runtime) -> None:
        if self.config.behaviour != "analyzer" or self.config.text is None:
            return
        for sentence in sentences(self.config.text):
            kind = classify(sentence)
            await rt.share(kind, sentence, confidence=self.config.confidence, tags=[INITIAL_TAG, rt.config.role])

    async def answer(self, rt: Runtime, question: RoutedQuestion) -> None:
        if self.config.behaviour != "responder":
            return
        reply = f"{rt.config.role} {rt.agent_id} on {question.question!r}: " + (
            f"handled with {', '.join(rt.config.capabilities)}" if rt.config.capabilities else "noted")
        await rt.share("solution", reply, confidence=self.config.confidence, related_to=question.discovery_id,
                       tags=["answer"])

    async def serve(self, rt: Runtime) -> None:
        if self.config.behaviour == "worker":
            await serve_tasks(rt, price_percent=self.config.price_percent,
                              estimated_seconds=self.config.estimated_seconds, do=lambda t: self._do(rt, t))

    async def _do(self, rt: Runtime, task_id: str) -> None:
        task = await rt.tool("get_task", {"task_id": task_id})
        await rt.report_task(task_id, "progress", message="started")
        await anyio.sleep(self.config.work_seconds)
        if self.config.outcome == "failed":
            await rt.report_task(task_id, "failed", message="the scripted worker is configured to fail")
            return
        words = len(str(task.get("description", "")).split())
        await rt.report_task(task_id, "completed", result={"worker": rt.agent_id, "words": words,
                                                            "summary": f"{rt.config.role} did {task_id}"})
