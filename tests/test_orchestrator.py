"""The live orchestrator with real agents: questions reach the agents that can answer them, and the loop guards
(depth of the related_to chain, questions per agent per minute) hold."""

from typing import Any

import anyio
import httpx2

from tests.agents_helpers import eventually, scripted, wait_for
from tests.conftest import HubFactory


async def share(http: httpx2.AsyncClient, kind: str, content: str, related_to: str | None = None,
                tags: tuple[str, ...] = ("loops",)) -> str:
    body: dict[str, Any] = {"agent_id": "asker", "agent_role": "developer", "discovery_type": kind,
                            "content": content, "confidence": 0.8, "tags": list(tags)}
    if related_to:
        body["related_to"] = related_to
    r = await http.post("/api/v1/discoveries", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["discovery_id"])


async def answered(http: httpx2.AsyncClient) -> set[str]:
    items = (await http.get("/api/v1/discoveries", params={"type": "solution", "agent_id": "guard"})).json()["items"]
    return {d["related_to"] for d in items}


async def test_questions_too_deep_in_a_thread_or_over_the_rate_are_not_routed(hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(agents={"heartbeat_seconds": 0.5, "max_question_depth": 2,
                                            "questions_per_agent_per_minute": 3})
    async with hub_factory.run(settings) as hub, hub.http() as http:
        await http.post("/api/v1/agents", json=scripted("guard", capabilities=["loops"]))
        await wait_for(http, "guard", "idle")
        q0 = await share(http, "question", "Where does the loop start?")
        d1 = await share(http, "insight", "It starts in the scheduler.", related_to=q0)
        q2 = await share(http, "question", "Which scheduler?", related_to=d1)   # depth 2: routed
        q3 = await share(http, "question", "And then?", related_to=q2)          # depth 3: too deep
        untagged = await share(http, "question", "Anyone?", tags=())           # nobody's role or capability
        q4 = await share(http, "question", "A third fresh one")                 # the third this minute
        q5 = await share(http, "question", "A fourth fresh one")                # over the rate

        async def three_answers() -> bool:
            return len(await answered(http)) >= 3

        await eventually(three_answers, 15, "three answers")
        await anyio.sleep(1)  # give anything wrongly routed the time to show up
        assert await answered(http) == {q0, q2, q4}
        assert not {q3, q5, untagged} & await answered(http)
        metrics = (await http.get("/metrics")).text
        assert 'agenthub_questions_unrouted_total{reason="depth"} 1.0' in metrics
        assert 'agenthub_questions_unrouted_total{reason="rate"} 1.0' in metrics
        assert "agenthub_questions_routed_total 3.0" in metrics
        context = (await http.get("/api/v1/context/guard", params={"context_type": "questions"})).json()["items"]
        assert {c["content"]["discovery_id"] for c in context} == {q0, q2, q4}
        assert {c["from_agent"] for c in context} == {"orchestrator"}
