"""Deterministic built-in behaviours, for demos and tests.

`analyzer` reads its configured text once and shares one discovery per sentence, typed by simple cues: a
question mark makes a question; words of failure an anomaly; words of repetition a pattern; words of cause a
connection; anything else an insight. `responder` answers each question routed to it with a `solution` linked
to the question by `related_to`. The same input always gives the same discoveries.
"""

import re

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
