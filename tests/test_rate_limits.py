"""Rate limits and quotas: the token bucket itself; a token over its rate gets 429 with Retry-After over REST and a
tool error saying when to retry over MCP; per-agent quotas for discoveries, questions, subscriptions held and open
streams; and two replicas that together allow one bucket, not two.

Rates here refill one token per ten minutes, so what a test sees depends on counts, never on how fast it runs."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError
from prometheus_client.parser import text_string_to_metric_families

from agenthub.ratelimit import DISCOVERIES, REQUESTS, TokenBucket
from agenthub.settings import Settings
from mcp_server.server import RATE_LIMITED
from mcp_server.tools import RETRY_AFTER_META
from tests.conftest import HubFactory, RunningHub


async def refused(hub: RunningHub, limit: str) -> float:
    """`agenthub_limits_refused_total{limit=...}` on `hub`'s /metrics."""
    async with hub.http() as http:
        text = (await http.get("/metrics")).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "agenthub_limits_refused_total" and sample.labels.get("limit") == limit)

SLOW = 1 / 600  # per second: one token per ten minutes
SHARE = {"agent_role": "Analyzer", "discovery_type": "pattern", "content": "a pattern", "confidence": 0.5}


def limited(factory: HubFactory, **limits: Any) -> Settings:
    values = {"requests_per_second": SLOW, "discoveries_per_second": SLOW, "questions_per_minute": 60 * SLOW,
              **limits}
    return factory.settings(rate_limits=values)


async def until(check: Callable[[], Any], *, seconds: float, what: str) -> Any:
    try:
        with anyio.fail_after(seconds):
            while True:
                result = check()
                if result:
                    return result
                await anyio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {seconds} s") from None


async def mint(hub: RunningHub, **body: Any) -> dict[str, Any]:
    async with hub.http() as http:
        r = await http.post("/api/v1/tokens", json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def assert_rate_limited(r: httpx2.Response, what: str) -> None:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
    body = r.json()
    assert what in body["detail"] and "retry in" in body["detail"] and body["retry_after"] > 0


# -- the bucket --------------------------------------------------------------------------------------------------


def test_a_bucket_admits_its_burst_then_says_when_the_next_one_fits_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, level=3, stamp=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)
    assert bucket.take(100.25) == pytest.approx(0.25)  # a refusal takes nothing
    assert bucket.take(100.5) == 0.0
    assert bucket.available(200.0) == 3  # never more than the burst


def test_use_elsewhere_is_charged_into_debt_at_most_one_burst_deep() -> None:
    bucket = TokenBucket(rate=1.0, burst=4, level=4, stamp=0.0)
    bucket.charge(0.0, 6)
    assert bucket.available(0.0) == -2
    assert bucket.take(0.0) == pytest.approx(3.0)  # the debt is paid back before anything is admitted
    bucket.charge(0.0, 100)
    assert bucket.available(0.0) == -4


# -- one replica ------------------------------------------------------------------------------------------------


async def test_a_token_over_its_rate_gets_429_with_retry_after_and_other_tokens_do_not(
        hub_factory: HubFactory) -> None:
    async with hub_factory.run(limited(hub_factory, request_burst=5)) as hub:
        agent = await mint(hub, role="agent", agent_id="busy-1")
        async with hub.http(agent["token"]) as http:
            codes = [(await http.get("/api/v1/whoami")).status_code for _ in range(5)]
            assert codes == [200] * 5
            assert_rate_limited(await http.get("/api/v1/whoami"), "requests of this token")
            assert_rate_limited(await http.get("/discoveries/stream"), "requests of this token")
        async with hub.http() as operator:
            assert (await operator.get("/api/v1/whoami")).status_code == 200
        assert await refused(hub, "requests") == 2


async def test_an_mcp_client_over_its_rate_gets_a_tool_error_saying_when_to_retry(hub_factory: HubFactory) -> None:
    async with hub_factory.run(limited(hub_factory, request_burst=4)) as hub:
        agent = await mint(hub, role="agent", agent_id="mcp-1")
        async with hub.mcp(agent["token"], mode="2026-07-28") as client:
            results = [await client.call_tool("get_context", {"agent_id": "mcp-1"}) for _ in range(6)]
            # The client may spend a request of its own (the tool list, for output schemas): at most 4 succeed.
            admitted = [r.is_error for r in results].index(True)
            assert 2 <= admitted <= 4 and all(r.is_error for r in results[admitted:]), results
            refusal = results[-1]
            text = refusal.content[0].text  # type: ignore[union-attr]
            assert "rate limit reached: requests of this token" in text and "retry in" in text
            assert refusal.meta is not None and refusal.meta[RETRY_AFTER_META] > 0
            with pytest.raises(MCPError) as caught:  # a request that is not a tool call: a JSON-RPC error
                await client.list_tools()
            assert caught.value.code == RATE_LIMITED and caught.value.data["retry_after"] > 0


async def test_an_agents_own_token_has_quotas_for_discoveries_and_questions(hub_factory: HubFactory) -> None:
    async with hub_factory.run(limited(hub_factory, discovery_burst=3, question_burst=1)) as hub:
        sharer = await mint(hub, role="agent", agent_id="sharer")
        async with hub.http(sharer["token"]) as http:
            for _ in range(3):
                r = await http.post("/api/v1/discoveries", json={**SHARE, "agent_id": "sharer"})
                assert r.status_code == 201, r.text
            assert_rate_limited(await http.post("/api/v1/discoveries", json={**SHARE, "agent_id": "sharer"}),
                                "discoveries shared by this agent")
        async with hub.mcp(sharer["token"], mode="2026-07-28") as client:  # the same quota, as a tool error
            result = await client.call_tool("share_discovery", {**SHARE, "agent_id": "sharer"})
            assert result.is_error and "discoveries shared by this agent" in result.content[0].text  # type: ignore
            assert result.meta is not None and result.meta[RETRY_AFTER_META] > 0
        # An operator acting as the agent is bound by its own request rate only.
        async with hub.http() as operator:
            assert (await operator.post("/api/v1/discoveries", json={**SHARE, "agent_id": "sharer"})
                    ).status_code == 201
        # Another agent has its own; a question beyond the question quota is refused, an insight is not.
        asker = await mint(hub, role="agent", agent_id="asker")
        ask = {**SHARE, "agent_id": "asker"}
        async with hub.http(asker["token"]) as http:
            assert (await http.post("/api/v1/discoveries", json={**ask, "discovery_type": "question"})
                    ).status_code == 201
            assert_rate_limited(await http.post("/api/v1/discoveries", json={**ask, "discovery_type": "question"}),
                                "questions asked by this agent")
            assert (await http.post("/api/v1/discoveries", json={**ask, "discovery_type": "insight"})
                    ).status_code == 201
        stored = await hub.state.pool.fetch("SELECT agent_id, discovery_type FROM discoveries ORDER BY sequence")
        assert [tuple(r) for r in stored] == [("sharer", "pattern")] * 4 + [("asker", "question"),
                                                                            ("asker", "insight")]


# -- two replicas -------------------------------------------------------------------------------------------------


@asynccontextmanager
async def two_replicas(factory: HubFactory, **limits: Any) -> AsyncIterator[tuple[RunningHub, RunningHub]]:
    async with factory.run(limited(factory, **limits)) as a, factory.run(limited(factory, **limits)) as b:
        yield a, b


async def test_two_replicas_together_allow_one_burst_of_requests_not_two(hub_factory: HubFactory) -> None:
    async with two_replicas(hub_factory, request_burst=10) as (a, b):
        agent = await mint(a, role="agent", agent_id="spread")
        token_id = agent["token_id"]
        async with a.http(agent["token"]) as on_a, b.http(agent["token"]) as on_b:
            assert [(await on_a.get("/api/v1/whoami")).status_code for _ in range(6)] == [200] * 6
            await until(lambda: b.state.limiter.available(REQUESTS, token_id) < 5, seconds=5,
                        what="replica b charged with what a admitted")
            admitted_on_b = 0
            while (r := await on_b.get("/api/v1/whoami")).status_code == 200:
                admitted_on_b += 1
                assert admitted_on_b <= 10, "replica b admits as if it were alone"
            assert_rate_limited(r, "requests of this token")
            assert 6 + admitted_on_b == 10
            # And a hears of what b admitted: it refuses too.
            await until(lambda: a.state.limiter.available(REQUESTS, token_id) < 1, seconds=5,
                        what="replica a charged with what b admitted")
            assert_rate_limited(await on_a.get("/api/v1/whoami"), "requests of this token")


async def test_two_replicas_share_an_agents_discovery_quota(hub_factory: HubFactory) -> None:
    async with two_replicas(hub_factory, discovery_burst=4) as (a, b):
        token = (await mint(a, role="agent", agent_id="roamer"))["token"]
        share = {**SHARE, "agent_id": "roamer"}
        async with a.http(token) as on_a, b.http(token) as on_b:
            for _ in range(3):
                assert (await on_a.post("/api/v1/discoveries", json=share)).status_code == 201
            await until(lambda: b.state.limiter.available(DISCOVERIES, "roamer") < 2, seconds=5,
                        what="replica b charged with the discoveries shared on a")
            assert (await on_b.post("/api/v1/discoveries", json=share)).status_code == 201
            assert_rate_limited(await on_b.post("/api/v1/discoveries", json=share),
                                "discoveries shared by this agent")


async def test_subscriptions_held_are_capped_per_agent_across_replicas(hub_factory: HubFactory) -> None:
    async with two_replicas(hub_factory, max_subscriptions=3) as (a, b):
        token = (await mint(a, role="agent", agent_id="hoarder"))["token"]
        codes: list[int] = []
        ids: list[str] = []

        async def subscribe(hub: RunningHub) -> None:
            async with hub.http(token) as http:
                r = await http.post("/api/v1/subscriptions", json={"subscriber_agent_id": "hoarder"})
            codes.append(r.status_code)
            if r.status_code == 201:
                ids.append(r.json()["subscription_id"])
            else:
                assert r.status_code == 429 and "subscriptions held by this agent" in r.json()["detail"], r.text

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(subscribe, a if i % 2 else b)
        assert sorted(codes) == [201] * 3 + [429] * 7
        assert await refused(a, "subscriptions") + await refused(b, "subscriptions") == 7
        async with b.http(token) as on_b:
            assert (await on_b.delete(f"/api/v1/subscriptions/{ids[0]}")).status_code == 200
        await subscribe(a)
        assert codes[-1] == 201
        async with a.http() as operator:  # an operator is not held to an agent's quota
            r = await operator.post("/api/v1/subscriptions", json={"subscriber_agent_id": "hoarder"})
            assert r.status_code == 201, r.text


async def test_an_agents_open_streams_are_capped_across_replicas(hub_factory: HubFactory) -> None:
    async with two_replicas(hub_factory, max_streams=2) as (a, b):
        agent = await mint(a, role="agent", agent_id="watcher")
        stop_b = anyio.Event()
        b_open = anyio.Event()

        async def hold_stream(hub: RunningHub, opened: anyio.Event, stop: anyio.Event) -> None:
            async with hub.http(agent["token"]) as http, http.stream("GET", "/discoveries/stream",
                                                                     timeout=httpx2.Timeout(30, read=None)) as r:
                assert r.status_code == 200
                opened.set()
                await stop.wait()

        async with anyio.create_task_group() as tg:
            a_open, stop_a = anyio.Event(), anyio.Event()
            tg.start_soon(hold_stream, a, a_open, stop_a)
            tg.start_soon(hold_stream, b, b_open, stop_b)
            await a_open.wait()
            await b_open.wait()
            await until(lambda: a.state.limiter.streams_open("watcher") == 2, seconds=5,
                        what="replica a counting the stream open on b")
            async with a.http(agent["token"]) as http:
                r = await http.get("/events/stream")
                assert r.status_code == 429 and "streams open at once by this agent" in r.json()["detail"], r.text
                stop_b.set()
                await until(lambda: a.state.limiter.streams_open("watcher") == 1, seconds=5,
                            what="replica a hearing that b's stream closed")
                async with http.stream("GET", "/events/stream", timeout=httpx2.Timeout(30, read=None)) as again:
                    assert again.status_code == 200
            stop_a.set()
