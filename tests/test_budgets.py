"""Budgets and spend caps through the hub's real interfaces: REST, MCP with agent tokens, the CLI, Prometheus, and a
real `claude` agent process against a fake Messages API that reports usage."""

import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import psutil
import pytest

from agent_pool.executors.claude import ClaudeExecutor
from agent_pool.models import ClaudeConfig, WorkerConfig
from agent_pool.runtime import Runtime
from agenthub.auth import Role
from agenthub.errors import BUDGET_EXHAUSTED_META, BudgetExhausted, TransientAgentError
from supervisor.policy import Backoff
from tests.agents_helpers import FAST_POLICY, eventually, wait_for
from tests.conftest import HubFactory, RunningHub
from tests.messages_api import OVERLOADED, MessagesApi, message, running_messages_api, text

KEY = "sk-ant-test-0123456789"


@pytest.fixture
async def budget_hub(hub_factory: HubFactory) -> AsyncIterator[RunningHub]:
    """A hub whose budget sweep and cache run fast, with an Anthropic key for claude agents."""
    settings = hub_factory.settings(anthropic_api_key=KEY, agents={"heartbeat_seconds": 0.5},
                                    budgets={"sweep_seconds": 0.1, "cache_seconds": 0.5,
                                             "reservation_expiry_seconds": 600})
    async with hub_factory.run(settings) as running:
        yield running


@pytest.fixture
async def messages_api() -> AsyncIterator[MessagesApi]:
    async with running_messages_api() as api:
        yield api


async def put_budget(hub: RunningHub, subject: str, body: dict[str, Any], token: str | None = None) -> Any:
    async with hub.http(token) as http:
        return await http.put(f"/api/v1/budgets/{subject}", json=body)


async def budget(hub: RunningHub, subject: str) -> dict[str, Any]:
    async with hub.http() as http:
        r = await http.get(f"/api/v1/budgets/{subject}")
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def run_cli(hub: RunningHub, *args: str) -> str:
    argv = [sys.executable, "-c", "from mcp_server.cli import main; main()", *args, "--url", hub.url,
            "--token", hub.operator_token]
    result = await anyio.to_thread.run_sync(lambda: subprocess.run(argv, capture_output=True, text=True, timeout=60))
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- limits: who may set and read them, and what is refused ---------------------------------------------------------


async def test_an_operator_sets_limits_that_viewers_list_and_an_agent_reads_only_for_itself(
        budget_hub: RunningHub) -> None:
    hub = budget_hub
    r = await put_budget(hub, "agent:alpha", {"limits": {"llm_tokens": {"soft": 100, "hard": 200}}})
    assert r.status_code == 200, r.text
    assert r.json()["limits"] == {"llm_tokens": {"soft": 100, "hard": 200}}
    r = await put_budget(hub, "requester:carol", {"approval_threshold": 500})
    assert r.json()["approval_threshold"] == 500
    assert await hub.state.budgets.approval_threshold("requester:carol") == 500
    assert await hub.state.budgets.approval_threshold("requester:nobody") is None
    # Limits of another metric leave the first one and the threshold as they were.
    r = await put_budget(hub, "requester:carol", {"limits": {"credits": {"hard": 1000}}})
    assert (r.json()["approval_threshold"], r.json()["limits"]) == (500, {"credits": {"soft": None, "hard": 1000}})

    async with hub.http(await hub.token(Role.VIEWER)) as http:
        listed = (await http.get("/api/v1/budgets")).json()["budgets"]
        assert [b["subject"] for b in listed] == ["agent:alpha", "requester:carol"]
        assert (await http.put("/api/v1/budgets/agent:alpha", json={"limits": {}})).status_code == 403
    async with hub.http(await hub.token(Role.AGENT, "alpha")) as http:
        mine = await http.get("/api/v1/budgets/agent:alpha")
        assert mine.status_code == 200 and mine.json()["limits"]["llm_tokens"]["hard"] == 200
        assert (await http.get("/api/v1/budgets/agent:beta")).status_code == 403
        assert (await http.get("/api/v1/budgets")).status_code == 403
        r = await http.put("/api/v1/budgets/agent:alpha", json={"limits": {"llm_tokens": {"hard": 10**9}}})
        assert r.status_code == 403
    assert (await budget(hub, "agent:alpha"))["limits"]["llm_tokens"]["hard"] == 200


@pytest.mark.parametrize(("subject", "body", "complaint"), [
    ("agent:alpha", {"limits": {"llm_tokens": {"soft": 300, "hard": 200}}}, "soft (300) must not be above hard"),
    ("agent:alpha", {"limits": {"llm_tokens": {"hard": -1}}}, "greater than or equal to 0"),
    ("agent:alpha", {"limits": {"gpu_hours": {"hard": 5}}}, "gpu_hours"),
    ("agent:alpha", {"limits": {"llm_tokens": {"hard": "5"}}}, "integer"),
    ("agent:alpha", {"limits": {"llm_tokens": {"hard": 5, "per": "day"}}}, "per"),
    ("agent:alpha", {"approval_threshold": -5}, "greater than or equal to 0"),
    ("escrow:x", {"limits": {"llm_tokens": {"hard": 5}}}, "not a budget subject"),
    ("alpha", {"limits": {"llm_tokens": {"hard": 5}}}, "not a budget subject"),
])
async def test_bad_limits_are_refused_with_a_clear_error_and_change_nothing(
        budget_hub: RunningHub, subject: str, body: dict[str, Any], complaint: str) -> None:
    hub = budget_hub
    assert (await put_budget(hub, "agent:alpha", {"limits": {"llm_tokens": {"soft": 1, "hard": 2}}})).status_code == 200
    before = await budget(hub, "agent:alpha")
    r = await put_budget(hub, subject, body)
    assert r.status_code in (400, 422), r.text
    assert complaint in r.text
    assert await budget(hub, "agent:alpha") == before
    async with hub.http() as http:
        assert [b["subject"] for b in (await http.get("/api/v1/budgets")).json()["budgets"]] == ["agent:alpha"]


# -- reservations ---------------------------------------------------------------------------------------------------


async def test_racing_reservations_never_overshoot_the_hard_limit(budget_hub: RunningHub) -> None:
    hub = budget_hub
    budgets = hub.state.budgets
    await put_budget(hub, "agent:racer", {"limits": {"llm_tokens": {"hard": 100}}})
    granted: list[str] = []
    refused: list[BudgetExhausted] = []

    async def one(i: int) -> None:
        try:
            reservation = await budgets.reserve("agent:racer", "llm_tokens", 3, ref=f"race {i}")
        except BudgetExhausted as exc:
            refused.append(exc)
            return
        assert reservation is not None
        granted.append(reservation)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(one, i)
    assert (len(granted), len(refused)) == (33, 17)
    assert (await budget(hub, "agent:racer"))["reserved"] == {"llm_tokens": 99}
    assert "spent + 99 reserved + 3 asked > hard limit 100" in refused[-1].message
    # Settling for less frees room: now a reservation fits again, and spend is what was settled.
    for reservation in granted:
        await budgets.settle(reservation, 1)
    info = await budget(hub, "agent:racer")
    assert (info["spent"], info["reserved"], info["exhausted"]) == ({"llm_tokens": 33}, {"llm_tokens": 0}, [])
    await budgets.settle(granted[0], 50)  # settled already: no-op
    assert (await budget(hub, "agent:racer"))["spent"] == {"llm_tokens": 33}


async def test_a_subject_without_limits_reserves_nothing_and_writes_nothing(budget_hub: RunningHub) -> None:
    budgets = budget_hub.state.budgets
    assert await budgets.reserve("agent:free", "llm_tokens", 10**6, ref="x") is None
    await budgets.settle(None, 5)
    await budgets.require_dispatch("agent:free")
    assert await budget_hub.state.pool.fetchval("SELECT count(*) FROM budget_reservations") == 0


async def test_expired_reservations_settle_at_their_reserved_amount(hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(budgets={"sweep_seconds": 0.1, "reservation_expiry_seconds": 0.5})
    async with hub_factory.run(settings) as hub:
        await put_budget(hub, "agent:crashy", {"limits": {"llm_tokens": {"hard": 1000}}})
        reservation = await hub.state.budgets.reserve("agent:crashy", "llm_tokens", 400, ref="never settled")
        assert (await budget(hub, "agent:crashy"))["reserved"] == {"llm_tokens": 400}

        async def settled() -> bool:
            info = await budget(hub, "agent:crashy")
            return info["reserved"] == {"llm_tokens": 0} and info["spent"] == {"llm_tokens": 400}

        await eventually(settled, 10, "the reservation expired and counted in full")
        await hub.state.budgets.settle(reservation, 10)  # its agent comes back too late: nothing changes
        assert (await budget(hub, "agent:crashy"))["spent"] == {"llm_tokens": 400}
        state = await hub.state.pool.fetchval("SELECT state FROM budget_reservations WHERE id = $1", reservation)
        assert state == "expired"


async def test_a_limit_set_on_one_replica_applies_on_another_at_once(hub_factory: HubFactory) -> None:
    # The replicas re-read limits only every minute on their own: the NATS hint is what tells the other one.
    settings = {"budgets": {"cache_seconds": 60}}
    async with hub_factory.run(hub_factory.settings(**settings)) as first, \
            hub_factory.run(hub_factory.settings(replica_id="second", **settings)) as second:
        assert await second.state.budgets.reserve("agent:roamer", "llm_tokens", 5, ref="before") is None
        await put_budget(first, "agent:roamer", {"limits": {"llm_tokens": {"hard": 4}}})

        async def applies() -> bool:
            return second.state.budgets.limited("agent:roamer", "llm_tokens")

        await eventually(applies, 5, "the limit known on the second replica")
        with pytest.raises(BudgetExhausted, match="hard limit 4"):
            await second.state.budgets.reserve("agent:roamer", "llm_tokens", 5, ref="after")
        await put_budget(first, "agent:roamer", {"limits": {"llm_tokens": {"hard": None}}})

        async def lifted() -> bool:
            return not second.state.budgets.limited("agent:roamer", "llm_tokens")

        await eventually(lifted, 5, "the limit gone on the second replica")
        assert await second.state.budgets.reserve("agent:roamer", "llm_tokens", 5, ref="lifted") is None


# -- tool calls through MCP -----------------------------------------------------------------------------------------


async def test_an_agents_tool_calls_stop_at_its_hard_limit_but_it_can_still_report_usage(
        budget_hub: RunningHub) -> None:
    hub = budget_hub
    await put_budget(hub, "agent:capped", {"limits": {"tool_calls": {"hard": 3}}})
    async with hub.mcp(await hub.token(Role.AGENT, "capped")) as client:
        for _ in range(3):
            ok = await client.call_tool("get_context", {"agent_id": "capped"})
            assert not ok.is_error, ok
        refused = await client.call_tool("get_context", {"agent_id": "capped"})
        assert refused.is_error
        message_text = refused.content[0].text  # type: ignore[union-attr]
        assert "budget exhausted: agent:capped on tool_calls" in message_text and "hard limit 3" in message_text
        assert refused.meta is not None
        assert refused.meta[BUDGET_EXHAUSTED_META] == {"subject": "agent:capped", "metric": "tool_calls"}
        # The budget tools are never refused (nor counted): a capped agent reports what it spent.
        reported = await client.call_tool("report_usage", {"agent_id": "capped", "llm_tokens": 42})
        assert not reported.is_error, reported
        assert reported.structured_content == {"subject": "agent:capped", "settled": [], "recorded": {"llm_tokens": 42}}
        # And it cannot report for another agent.
        forged = await client.call_tool("report_usage", {"agent_id": "other", "llm_tokens": 1})
        assert forged.is_error
    info = await budget(hub, "agent:capped")
    assert (info["spent"], info["exhausted"]) == ({"llm_tokens": 42, "tool_calls": 3}, ["tool_calls"])
    assert (await budget(hub, "agent:other"))["spent"] == {}
    async with hub.http() as http:
        await http.put("/api/v1/budgets/agent:capped", json={"limits": {"tool_calls": {"hard": 10}}})
    async with hub.mcp(await hub.token(Role.AGENT, "capped")) as client:
        assert not (await client.call_tool("get_context", {"agent_id": "capped"})).is_error


async def test_tool_calls_of_agents_without_limits_are_counted_without_a_write_per_call(
        budget_hub: RunningHub) -> None:
    hub = budget_hub
    async with hub.mcp(await hub.token(Role.AGENT, "free")) as client:
        for _ in range(5):
            assert not (await client.call_tool("get_context", {"agent_id": "free"})).is_error
        # Counted in memory first: the sweep writes them in one statement.
        assert not hub.state.budgets.limited("agent:free", "tool_calls")

    async def counted() -> bool:
        return (await budget(hub, "agent:free"))["spent"] == {"tool_calls": 5}

    await eventually(counted, 10, "the tool calls written by the sweep")


async def test_usage_reports_settle_reservations_all_or_nothing(budget_hub: RunningHub) -> None:
    hub = budget_hub
    await put_budget(hub, "agent:rep", {"limits": {"llm_tokens": {"hard": 1000}}})
    async with hub.mcp(await hub.token(Role.AGENT, "rep")) as client:
        held = await client.call_tool("reserve_usage", {"agent_id": "rep", "metric": "llm_tokens", "amount": 300})
        reservation = held.structured_content["reservation_id"]  # type: ignore[index]
        unlimited = await client.call_tool("reserve_usage", {"agent_id": "rep", "metric": "work_seconds",
                                                             "amount": 5})
        assert unlimited.structured_content == {"reservation_id": None}
    async with hub.http(await hub.token(Role.AGENT, "rep")) as http:
        bad = await http.post("/api/v1/budgets/agent:rep/usage", json={
            "reservation_ids": [reservation, "rsv_0000000000000000"], "llm_tokens": 120, "work_seconds": 3})
        assert bad.status_code == 404 and "rsv_0000000000000000" in bad.text
        missing = await http.post("/api/v1/budgets/agent:rep/usage", json={"reservation_id": reservation,
                                                                           "work_seconds": 3})
        assert missing.status_code == 400 and "report llm_tokens" in missing.text
        assert (await budget(hub, "agent:rep"))["reserved"] == {"llm_tokens": 300}
        assert (await budget(hub, "agent:rep"))["spent"] == {"llm_tokens": 0}
        good = await http.post("/api/v1/budgets/agent:rep/usage", json={"reservation_id": reservation,
                                                                        "llm_tokens": 120, "work_seconds": 3})
        assert good.status_code == 200, good.text
        assert good.json() == {"subject": "agent:rep", "settled": [reservation], "recorded": {"work_seconds": 3}}
        assert (await http.post("/api/v1/budgets/agent:other/usage", json={"llm_tokens": 1})).status_code == 403
    info = await budget(hub, "agent:rep")
    assert (info["spent"], info["reserved"]) == ({"llm_tokens": 120, "work_seconds": 3},
                                                 {"llm_tokens": 0, "work_seconds": 0})


# -- a real claude agent process ------------------------------------------------------------------------------------


def claude_agent(agent_id: str, api: MessagesApi) -> dict[str, Any]:
    return {"agent_id": agent_id, "role": "analyst", "capabilities": ["budgeting"], "executor": "claude",
            "executor_config": {"base_url": api.url, "model": "claude-test", "max_tokens": 100,
                                "prompt": "Map the system."},
            "restart_policy": FAST_POLICY}


async def ask(hub: RunningHub, question: str) -> None:
    async with hub.http() as http:
        r = await http.post("/api/v1/discoveries", json={
            "agent_id": "asker", "agent_role": "lead", "discovery_type": "question", "content": question,
            "confidence": 0.5, "tags": ["budgeting"]})
        assert r.status_code == 201, r.text


async def shared_by(hub: RunningHub, agent_id: str) -> list[dict[str, Any]]:
    async with hub.http() as http:
        items: list[dict[str, Any]] = (await http.get("/api/v1/discoveries", params={"agent_id": agent_id})
                                       ).json()["items"]
    return items


async def test_a_claude_agent_gets_no_llm_call_past_its_hard_limit_and_works_again_once_raised(
        budget_hub: RunningHub, messages_api: MessagesApi) -> None:
    hub, api = budget_hub, messages_api
    # Each call reports 20,000 input tokens: past the soft limit after the first, at the hard limit after the second.
    api.script(*(message(text(f"answer {i}"), input_tokens=20_000, output_tokens=5) for i in range(1, 4)))
    r = await put_budget(hub, "agent:llm", {"limits": {"llm_tokens": {"soft": 10_000, "hard": 40_010}}})
    assert r.status_code == 200, r.text
    async with hub.http() as http:
        assert (await http.post("/api/v1/agents", json=claude_agent("llm", api))).status_code == 201
        started = await wait_for(http, "llm", "idle", "busy", "running")

        def shared(count: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return len(await shared_by(hub, "llm")) >= count

            return check

        await eventually(shared(1), 30, "the initial work shared")  # call 1
        assert len(api.requests) == 1
        assert {t["name"] for t in api.requests[0]["tools"]}.isdisjoint({"reserve_usage", "report_usage"})
        await ask(hub, "How much does the cache save?")
        await eventually(shared(2), 30, "the first question answered")  # call 2
        info = await budget(hub, "agent:llm")
        assert (info["spent"]["llm_tokens"], info["exhausted"]) == (40_010, ["llm_tokens"])

        await ask(hub, "And the index?")  # refused before any API call

        async def refused() -> bool:
            events = (await http.get("/api/v1/agents/llm")).json()["recent_events"]
            return any(e["kind"] == "error" and "budget exhausted: agent:llm on llm_tokens" in e["detail"]
                       for e in events)

        await eventually(refused, 30, "the budget error reported")
        assert len(api.requests) == 2
        agent = await wait_for(http, "llm", "idle")
        assert agent["pid"] == started["pid"] and psutil.pid_exists(agent["pid"])  # still running, not restarted

        # The spend shows on REST (total and per minute), the CLI and Prometheus.
        series = (await http.get("/api/v1/budgets/agent:llm/spend", params={"metric": "llm_tokens"})).json()
        assert sum(p["amount"] for p in series["points"]) == 40_010 and series["points"][-1]["total"] == 40_010
        cost = (await budget(hub, "agent:llm"))["spent"]["llm_cost_micro_usd"]
        assert cost == 2 * (20_000 * 3 + 5 * 15)  # the default price: $3 / $15 per million tokens
        shown = await run_cli(hub, "budgets", "show", "agent:llm")
        assert "EXHAUSTED: llm_tokens" in shown and "40010" in shown
        assert "40010" in (await run_cli(hub, "budgets", "spend", "agent:llm", "--metric", "llm_tokens"))
        assert "agent:llm" in await run_cli(hub, "budgets", "list")
        metrics = (await http.get("/metrics")).text
        assert 'agenthub_budget_spend_total{metric="llm_tokens",subject="agent:llm"} 40010.0' in metrics
        assert 'agenthub_budget_refused_total{metric="llm_tokens",subject="agent:llm"} 1.0' in metrics

        # The soft limit raised one approval, however many calls went past it.
        pending = (await http.get("/api/v1/approvals", params={"state": "pending"})).json()["approvals"]
        assert [(a["kind"], a["subject"], a["detail"]["metric"]) for a in pending] == [
            ("budget", "agent:llm", "llm_tokens")]

        # An operator raises the limit: the next question reaches the API again.
        await run_cli(hub, "budgets", "set", "agent:llm", "--hard", "llm_tokens=100000")
        await ask(hub, "And now?")
        await eventually(shared(3), 30, "the question after the raise answered")
        assert len(api.requests) == 3


async def test_denying_the_soft_limit_exhausts_the_metric_until_limits_are_set_again(
        budget_hub: RunningHub) -> None:
    hub = budget_hub
    budgets = hub.state.budgets
    await put_budget(hub, "agent:deny", {"limits": {"llm_tokens": {"soft": 10, "hard": 1000}}})
    await budgets.record("agent:deny", "llm_tokens", 20)
    async with hub.http() as http:
        pending = (await http.get("/api/v1/approvals", params={"state": "pending"})).json()["approvals"]
        (approval,) = [a for a in pending if a["subject"] == "agent:deny"]
        assert approval["detail"] == {"metric": "llm_tokens", "spent": 20, "soft": 10, "hard": 1000}
        r = await http.post(f"/api/v1/approvals/{approval['approval_id']}/decision",
                            json={"decision": "deny", "note": "enough"})
        assert r.status_code == 200, r.text
        assert (await budget(hub, "agent:deny"))["exhausted"] == ["llm_tokens"]
        with pytest.raises(BudgetExhausted, match="denied"):
            await budgets.reserve("agent:deny", "llm_tokens", 1, ref="after the denial")
        with pytest.raises(BudgetExhausted):
            await budgets.require_dispatch("agent:deny")
        await http.put("/api/v1/budgets/agent:deny", json={"limits": {"llm_tokens": {"soft": 500, "hard": 1000}}})
    assert (await budget(hub, "agent:deny"))["exhausted"] == []
    assert await budgets.reserve("agent:deny", "llm_tokens", 1, ref="allowed again") is not None


async def test_work_time_of_an_agent_process_is_recorded_from_its_performance(budget_hub: RunningHub) -> None:
    hub = budget_hub
    body = {"agent_id": "slow", "role": "worker", "capabilities": ["x"], "executor": "command",
            "executor_config": {"argv": ["/bin/sh", "-c", "sleep 2.2; echo done"],
                                "prompt": "work"},
            "restart_policy": FAST_POLICY}
    async with hub.http() as http:
        assert (await http.post("/api/v1/agents", json=body)).status_code == 201

    async def recorded() -> bool:
        return (await budget(hub, "agent:slow"))["spent"].get("work_seconds", 0) >= 2

    await eventually(recorded, 30, "two seconds of work recorded")


async def test_a_failed_llm_call_gives_back_what_it_reserved(
        budget_hub: RunningHub, messages_api: MessagesApi, monkeypatch: pytest.MonkeyPatch) -> None:
    hub, api = budget_hub, messages_api
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    api.script(OVERLOADED, OVERLOADED)
    await put_budget(hub, "agent:flaky", {"limits": {"llm_tokens": {"hard": 100_000},
                                                     "llm_cost_micro_usd": {"hard": 10**9}}})
    config = ClaudeConfig.model_validate({"base_url": api.url, "model": "claude-test", "max_tokens": 100})
    worker = WorkerConfig(agent_id="flaky", instance="test", role="analyst", capabilities=[], executor="claude",
                          executor_config=config.model_dump(), hub_url=hub.url,
                          nats_url=hub.state.settings.nats_url, subject_prefix=hub.state.settings.nats_subject_prefix,
                          heartbeat_seconds=10, llm_prices=hub.state.settings.budgets.llm_prices)
    login = await hub.state.agents.credentials.issue("flaky", worker.instance)
    executor = ClaudeExecutor(config, backoff=Backoff(initial=0.01, maximum=0.02, jitter=0.0), attempts=2)
    async with Runtime(worker, await hub.token(Role.AGENT, "flaky"), login).connect() as rt:
        with anyio.fail_after(30), pytest.raises(TransientAgentError):
            await executor.run(rt, "Anything?")
    assert len(api.requests) == 2  # one reservation covered both attempts
    info = await budget(hub, "agent:flaky")
    assert (info["spent"], info["reserved"]) == ({"llm_tokens": 0, "llm_cost_micro_usd": 0},
                                                 {"llm_tokens": 0, "llm_cost_micro_usd": 0})
    assert await hub.state.pool.fetchval(
        "SELECT count(*) FROM budget_reservations WHERE subject = 'agent:flaky' AND state = 'settled'"
        " AND actual = 0") == 2
