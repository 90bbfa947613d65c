"""The live dashboard in headless Chromium against a real hub: sign-in, the live discovery feed and its
catch-up after the event stream drops, spawning agents and running an auction from the forms, a viewer's
read-only pages, and a phone-width layout. Each page's screenshot goes to `test-artifacts/dashboard/`."""

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from wasmtime import wat2wasm

from agenthub.auth import Role, create_token
from tests.agents_helpers import FAST_POLICY, wait_for
from tests.browser import PHONE, Browser
from tests.conftest import HubFactory, RunningHub
from tests.test_market import task_state
from tests.test_verified_settlement import EVALUATOR

# The first test may install chromium (apt-get) inside its setup.
pytestmark = pytest.mark.timeout(900)

DISCOVERY = {"agent_id": "analyst-1", "agent_role": "Analyzer", "discovery_type": "anomaly",
             "content": "Login failures tripled after the 02:00 deploy", "confidence": 0.9}


@pytest.fixture
async def dash_hub(hub_factory: HubFactory) -> AsyncIterator[RunningHub]:
    settings = hub_factory.settings(agents={"heartbeat_seconds": 0.5},
                                    market={"close_interval_seconds": 0.1, "accept_after_seconds": 3600},
                                    sse={"metrics_seconds": 1.0, "activity_poll_seconds": 0.1})
    async with hub_factory.run(settings) as running:
        yield running


def worker(agent_id: str, capabilities: list[str]) -> dict[str, Any]:
    return {"agent_id": agent_id, "role": "worker", "capabilities": capabilities, "executor": "scripted",
            "executor_config": {"behaviour": "worker", "price_percent": 50, "estimated_seconds": 5},
            "restart_policy": FAST_POLICY}


async def deposit(http: httpx2.AsyncClient, account: str, amount: int) -> None:
    r = await http.post(f"/api/v1/accounts/{account}/deposit",
                        json={"amount": amount, "idempotency_key": str(uuid.uuid4())})
    assert r.status_code == 201, r.text


async def share(client: Any, **change: Any) -> dict[str, Any]:
    result = await client.call_tool("share_discovery", {**DISCOVERY, **change})
    assert not result.is_error, result.content
    out: dict[str, Any] = result.structured_content
    return out


def item(discovery_id: str) -> str:
    return f'#view [data-discovery-id="{discovery_id}"]'


async def test_an_operator_signs_in_sees_the_overview_and_a_discovery_shared_over_mcp_within_two_seconds(
        dash_hub: RunningHub, browser: Browser) -> None:
    await browser.sign_in(dash_hub.url, dash_hub.operator_token)
    assert (await browser.text("#who")).startswith("operator")
    # Keyboard: on a freshly loaded page (the token survives a reload in this tab), Tab reaches every section,
    # the session's button and the page's controls, each with a visible focus ring.
    await browser.go("#/discoveries", "Discoveries")
    await browser.reload()
    await browser.wait_live()
    await browser.find("details.share")
    stops = await browser.tab_through(12)
    assert {s["href"] for s in stops} >= {"#view", "#/", "#/discoveries", "#/agents", "#/tasks", "#/accounts"}
    assert {"Sign out", "Share a discovery"} <= {s["label"] for s in stops}, stops
    assert all(s["outline"].startswith("solid") and not s["outline"].endswith(" 0px") for s in stops), stops
    async with dash_hub.mcp() as client:
        shared = await share(client)
        await browser.wait_for("return document.querySelector(arguments[0])", item(shared["discovery_id"]),
                               seconds=10, what="the shared discovery in the feed, without a reload")
        assert "Login failures tripled" in await browser.text(item(shared["discovery_id"]))
        assert await browser.count(f'{item(shared["discovery_id"])} .badge.type-anomaly') == 1

        # A reply from the page's form joins the thread; the filters hide what does not match.
        await browser.click("details.share > summary")
        await browser.fill("form[aria-label='Share a discovery'] textarea[name=content]", "Roll back the deploy")
        await browser.choose("form[aria-label='Share a discovery'] select[name=discovery_type]", "solution")
        await browser.fill("form[aria-label='Share a discovery'] input[name=related_to]", shared["discovery_id"])
        await browser.click("form[aria-label='Share a discovery'] button[type=submit]")
        await browser.wait_for("return document.querySelectorAll('#view .feed [data-discovery-id]').length === 2",
                               what="the reply in the feed")
        await browser.choose("form.filters select[name=type]", "anomaly")
        await browser.wait_for("return document.querySelectorAll('#view .feed [data-discovery-id]').length === 1",
                               what="the type filter applied")
        await browser.screenshot("discoveries")
        await browser.choose("form.filters select[name=type]", "")

        reply_id = await browser.js("return document.querySelector('.type-solution').dataset.discoveryId")
        await browser.go(f"#/discoveries/{reply_id}", "Discovery")
        await browser.wait_for("return document.querySelectorAll('.thread [data-discovery-id]').length === 2",
                               what="the reply's thread with its parent")
        assert await browser.js("return document.querySelector('.thread .ancestor').dataset.discoveryId") == \
            shared["discovery_id"]
        await browser.screenshot("discovery")
        await browser.click(".thread .ancestor .discovery-link")  # up the thread: the parent lists its reply
        await browser.wait_for("return document.querySelector(`.replies [data-discovery-id=\"${arguments[0]}\"]`)",
                               reply_id, what="the reply under its parent")

        await browser.go("#/", "Overview")
        await browser.wait_for("return document.querySelectorAll('svg.chart rect').length > 0", seconds=5,
                               what="the per-minute chart with the new discoveries")
        assert await browser.text("[data-tile=postgres] .tile-value") == "OK"
        assert await browser.text("[data-tile=nats] .tile-value") == "OK"
        await browser.screenshot("overview")

        # What an agent shares is shown as text, never run as markup.
        hostile = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
        attack = await share(client, content=hostile)
        await browser.go("#/discoveries", "Discoveries")
        await browser.wait_for("return document.querySelector(arguments[0])", item(attack["discovery_id"]),
                               what="the hostile discovery in the feed")
        assert hostile in await browser.text(item(attack["discovery_id"]))
        assert await browser.count(f'{item(attack["discovery_id"])} img, {item(attack["discovery_id"])} script') == 0
        assert await browser.js("return window.__pwned === undefined")


async def test_an_agent_spawned_from_the_form_goes_idle_in_the_live_table_and_stops_from_its_button(
        dash_hub: RunningHub, browser: Browser) -> None:
    await browser.sign_in(dash_hub.url, dash_hub.operator_token)
    await browser.go("#/agents", "Agents")
    await browser.click("details.share > summary")
    await browser.fill("#spawn-form input[name=agent_id]", "helper-1")
    await browser.fill("#spawn-form input[name=role]", "worker")
    await browser.fill("#spawn-form input[name=capabilities]", "summarize, count")
    await browser.choose("#spawn-form select[name=executor]", "scripted")
    await browser.choose("#spawn-form select[name=behaviour]", "worker")
    await browser.fill("#spawn-form textarea[name=executor_config]", '{"price_percent": 40}')
    await browser.click("#spawn-form button[type=submit]")
    await browser.wait_for("return document.querySelector('tr[data-agent-id=\"helper-1\"][data-state=\"idle\"],"
                           " tr[data-agent-id=\"helper-1\"][data-state=\"running\"]')",
                           seconds=30, what="helper-1 running or idle in the table")
    async with dash_hub.http() as http:
        agent = (await http.get("/api/v1/agents/helper-1")).json()
    assert agent["capabilities"] == ["summarize", "count"]
    assert agent["executor_config"]["price_percent"] == 40
    await browser.screenshot("agents")

    await browser.go("#/agents/helper-1", "Agent helper-1")
    await browser.wait_for("return document.querySelectorAll('#view table.data tbody tr').length > 0",
                           what="the agent's event history")
    await browser.screenshot("agent")
    await browser.click("[data-focus-key='stop:helper-1']")
    await browser.wait_for("return document.querySelector('#view .badge.agent-stopped')", seconds=20,
                           what="helper-1 stopped on its page")


async def test_a_task_submitted_from_the_form_shows_a_sealed_bid_count_then_the_winner_and_gets_paid(
        dash_hub: RunningHub, browser: Browser) -> None:
    async with dash_hub.http() as http:
        await deposit(http, "requester:carol", 1000)
        await http.post("/api/v1/agents", json=worker("w1", ["summarize"]))
        await wait_for(http, "w1", "idle")
    await browser.sign_in(dash_hub.url, dash_hub.operator_token)
    await browser.go("#/tasks", "Tasks")
    await browser.click("details.share > summary")
    await browser.fill("#task-form input[name=requester_id]", "carol")
    await browser.fill("#task-form input[name=budget]", "5000")
    await browser.fill("#task-form textarea[name=description]", "Too dear")
    await browser.click("#task-form button[type=submit]")  # the hub's problem detail shows beside the form
    await browser.wait_for("const e = document.querySelector('#task-form .form-status.error');"
                           "return e && e.textContent.includes('1000')", what="the refusal's detail in the form")
    await browser.fill("#task-form input[name=budget]", "400")
    await browser.fill("#task-form textarea[name=description]", "Summarise the weekly error report")
    await browser.fill("#task-form input[name=capabilities]", "summarize")
    await browser.fill("#task-form input[name=bidding_seconds]", "4")
    await browser.fill("#task-form textarea[name=parameters]", '{"week": 47}')
    await browser.click("#task-form button[type=submit]")

    await browser.wait_for("return /^#\\/tasks\\/.+/.test(location.hash) && "
                           "document.querySelector('main h1').textContent.startsWith('Task ')",
                           what="the new task's page, opened by the form")
    await browser.wait_for("return document.querySelector('.bid-count[data-bid-count=\"1\"]')", seconds=4,
                           what="one sealed bid while the auction is open")
    assert "1 sealed bid" in await browser.text(".bid-count")
    assert await browser.js("return document.querySelector('main .page').dataset.taskState") == "bidding"
    assert await browser.count("#view table.data th[scope=row]") == 0  # no bid (nor its price) shown yet
    await browser.screenshot("task-bidding")

    await browser.wait_for("const w = document.querySelector('a.winner'); return w && w.textContent === 'w1'",
                           seconds=15, what="the winner after the auction closes")
    await browser.wait_for("return document.querySelector('main .page').dataset.taskState === 'completed'",
                           seconds=15, what="the task completed")
    assert await browser.text("#view table.data tbody th[scope=row]") == "w1 (winner)"
    await browser.click("[data-focus-key=accept]")
    await browser.wait_for("return document.querySelector('.escrow-state .escrow-released')", seconds=10,
                           what="the escrow released after accepting")
    await browser.screenshot("task")
    task_id = await browser.js("return location.hash.split('/').pop()")
    async with dash_hub.http() as http:
        task = (await http.get(f"/api/v1/tasks/{task_id}")).json()
    assert task["parameters"] == {"week": 47} and task["winner"] == "w1" and task["escrow_state"] == "released"

    await browser.go("#/accounts/agent:w1", "Account agent:w1")
    await browser.wait_for("const b = document.querySelector('.balance'); return b && b.textContent === "
                           f"'{task['price'] * 9 // 10}'", what="the winner's balance, less the fee")
    await browser.go("#/accounts/requester:carol", "Account requester:carol")
    await browser.wait_for("return document.querySelectorAll('#view tr[data-transfer-id]').length >= 2",
                           what="the requester's ledger")
    await browser.screenshot("account")


async def test_a_disputed_task_is_frozen_then_split_by_the_operator_from_the_task_page(
        dash_hub: RunningHub, browser: Browser) -> None:
    async with dash_hub.http() as http:
        await deposit(http, "requester:carol", 1000)
        await http.post("/api/v1/agents", json=worker("w1", ["summarize"]))
        await wait_for(http, "w1", "idle")
        r = await http.post("/api/v1/tasks", json={
            "requester_id": "carol", "description": "Summarise", "required_capabilities": ["summarize"],
            "budget": 400, "bidding_seconds": 0.5, "idempotency_key": str(uuid.uuid4())})
        task_id = r.json()["task_id"]
    await browser.sign_in(dash_hub.url, dash_hub.operator_token)
    await browser.go(f"#/tasks/{task_id}", f"Task {task_id}")
    await browser.wait_for("return document.querySelector('main .page').dataset.taskState === 'completed'",
                           seconds=15, what="the task completed")
    await browser.click(".task-actions details > summary")
    await browser.choose("form[aria-label=Dispute] select[name=by]", "carol")
    await browser.fill("form[aria-label=Dispute] textarea[name=evidence]", "Five words were promised; it sent six")
    await browser.click("form[aria-label=Dispute] button[type=submit]")
    await browser.wait_for("return document.querySelector('.escrow-state .escrow-disputed')", seconds=10,
                           what="the escrow disputed")
    await browser.choose("form[aria-label='Resolve the dispute'] select[name=outcome]", "split")
    await browser.fill("form[aria-label='Resolve the dispute'] input[name=agent_share_percent]", "25")
    await browser.click("form[aria-label='Resolve the dispute'] button[type=submit]")
    await browser.wait_for("return document.querySelector('.escrow-state .badge').textContent === 'split'",
                           seconds=10, what="the escrow split by the operator")
    assert await browser.count(".task-actions [data-write]") == 0  # an ended escrow offers nothing more
    await browser.screenshot("task-resolved")


WORDS_SCHEMA = {"type": "object", "required": ["words"], "properties": {"words": {"type": "integer", "minimum": 1}}}


async def won_by(http: httpx2.AsyncClient, task_id: str, agent_id: str, price: int) -> None:
    r = await http.post(f"/api/v1/tasks/{task_id}/bids",
                        json={"agent_id": agent_id, "price": price, "estimated_seconds": 1})
    assert r.status_code == 201, r.text
    await task_state(http, task_id, "assigned")


async def report(http: httpx2.AsyncClient, task_id: str, agent_id: str, result: dict[str, Any]) -> None:
    r = await http.post(f"/api/v1/tasks/{task_id}/report",
                        json={"agent_id": agent_id, "status": "completed", "result": result})
    assert r.status_code == 200, r.text


async def cleared_task(http: httpx2.AsyncClient, requester: str) -> str:
    """A task with a JSON Schema check and a bond whose auction cleared (won by a bid of an agent with a long id)."""
    bidder = "a-bidder-with-a-rather-long-identifier"
    await deposit(http, f"agent:{bidder}", 10)
    r = await http.post("/api/v1/tasks", json={
        "requester_id": requester, "description": "Count the words", "budget": 20, "bidding_seconds": 1,
        "bond_percent": 10, "acceptance": {"json_schema": WORDS_SCHEMA}, "idempotency_key": str(uuid.uuid4())})
    assert r.status_code == 201, r.text
    task_id: str = r.json()["task_id"]
    await won_by(http, task_id, bidder, 10)
    return task_id


async def test_the_task_page_shows_the_acceptance_check_passed_or_failed_with_the_schema_error_and_the_replay(
        dash_hub: RunningHub, browser: Browser) -> None:
    async with dash_hub.http() as http:
        await deposit(http, "requester:carol", 1000)
        await deposit(http, "agent:bob", 100)
        await browser.sign_in(dash_hub.url, dash_hub.operator_token)
        await browser.go("#/tasks", "Tasks")
        await browser.click("details.share > summary")
        await browser.fill_form("#task-form", {"requester_id": "carol", "description": "Count the words",
                                               "bidding_seconds": "3", "bond_percent": "20",
                                               "json_schema": '{"type": "nonsense"}'})
        await browser.click("#task-form button[type=submit]")  # a schema that could never check anything
        await browser.wait_for("const e = document.querySelector('#task-form .form-status.error');"
                               "return e && e.textContent.includes('not a valid JSON Schema')",
                               what="the refused schema's problem beside the form")
        await browser.fill("#task-form textarea[name=json_schema]", json.dumps(WORDS_SCHEMA))
        await browser.click("#task-form button[type=submit]")
        await browser.wait_for("return /^#\\/tasks\\/.+/.test(location.hash)", what="the new task's page")
        failing = await browser.js("return location.hash.split('/').pop()")
        await won_by(http, failing, "bob", 50)
        task = (await http.get(f"/api/v1/tasks/{failing}")).json()
        assert task["bond_percent"] == 20 and task["acceptance"] == {
            "json_schema": WORDS_SCHEMA, "evaluator": None, "on_fail": "refund"}
        assert "not run yet" in await browser.text("#check")
        await report(http, failing, "bob", {"words": "five"})
        await browser.wait_for("return document.querySelector('#check .check-outcome[data-passed=false]')",
                               seconds=10, what="the failed check on the task page")
        assert await browser.text("#check .badge") == "failed"
        assert await browser.text("#check .schema-errors") == "words: 'five' is not of type 'integer'"
        await browser.wait_for("return document.querySelector('main .page').dataset.taskState === 'failed'",
                               what="the task failed by its check")
        assert "20 % of each bid" in await browser.text(".auction .facts")
        # The clearing: replayed to the recorded winner, with the reputation bob's bid was scaled by.
        await browser.find("#audit .replay-matches")
        assert await browser.text("#audit .badge.replay-matches") == "replay matches"
        audit = (await http.get(f"/api/v1/tasks/{failing}/audit")).json()
        [bid] = audit["auctions"][0]["bids"]
        assert await browser.text("#audit tr[data-bidder=bob] .reputation") == f"{bid['reputation']:.3f}"
        await browser.screenshot("task-check-failed")
        await browser.click("#audit a.audit-link")
        await browser.find(f'[data-audit-task="{failing}"] tr[data-bidder=bob]')
        assert "replay matches" in await browser.text("#view")

        r = await http.post("/api/v1/tasks", json={
            "requester_id": "carol", "description": "Count the words again", "budget": 100, "bidding_seconds": 1,
            "acceptance": {"json_schema": WORDS_SCHEMA, "on_fail": "dispute"}, "idempotency_key": str(uuid.uuid4())})
        passing = r.json()["task_id"]
        await won_by(http, passing, "bob", 50)
        await browser.go(f"#/tasks/{passing}", f"Task {passing}")
        await report(http, passing, "bob", {"words": 5})
        await browser.wait_for("return document.querySelector('#check .check-outcome[data-passed=true]')",
                               seconds=10, what="the passed check on the task page")
        assert await browser.text("#check .badge") == "passed"
        assert await browser.count("#check .schema-errors") == 0
        await browser.wait_for("return document.querySelector('.escrow-state .escrow-released')", seconds=10,
                               what="the escrow released at once by the passing check")
        await browser.screenshot("task-check-passed")


async def ask(hub: RunningHub, agent_id: str, reason: str) -> str:
    """An agent's approval request over REST, with its own token; the approval id."""
    async with hub.http(await hub.token(Role.AGENT, agent_id)) as as_agent:
        r = await as_agent.post("/api/v1/approvals", json={"agent_id": agent_id, "reason": reason,
                                                            "detail": {"service": "billing"}})
    assert r.status_code == 201, r.text
    approval_id: str = r.json()["approval_id"]
    return approval_id


async def test_the_pending_count_follows_approval_events_and_an_operator_decides_on_the_approval_page(
        hub_factory: HubFactory, browser: Browser) -> None:
    # metrics_update comes once a minute here: the count can only follow the stream's approval events.
    settings = hub_factory.settings(sse={"metrics_seconds": 60, "activity_poll_seconds": 0.1})
    async with hub_factory.run(settings) as hub:
        token_id, operator = await create_token(hub.state.pool, Role.OPERATOR)
        await browser.sign_in(hub.url, operator)
        await browser.go("#/tasks", "Tasks")  # any page: the count is in the nav
        assert await browser.js("return document.querySelector('#nav-pending').hidden")
        first = await ask(hub, "alice", "Restart the billing service")
        await browser.wait_for("return document.querySelector('#nav-pending').textContent === '1'", seconds=5,
                               what="one pending approval beside the nav link, live")
        second = await ask(hub, "alice", "Rotate the billing keys")
        await browser.wait_for("return document.querySelector('#nav-pending').textContent === '2'", seconds=5,
                               what="two pending")

        await browser.go(f"#/approvals/{first}", f"Approval {first}")
        assert await browser.text("#view .reason") == "Restart the billing service"
        await browser.fill("#view input[name=note]", "after the backup")
        await browser.click(f"#view button[aria-label='Approve {first}']")
        await browser.wait_for("return document.querySelector('#view .approval[data-state=approved]')",
                               what="the approval shown approved")
        await browser.wait_for("return document.querySelector('#nav-pending').textContent === '1'", seconds=5,
                               what="the count down to one")
        async with hub.http() as http:
            approved = (await http.get(f"/api/v1/approvals/{first}")).json()
        assert (approved["state"], approved["decided_by"], approved["note"]) == (
            "approved", token_id, "after the backup")

        # Someone else decides the second one while this page cannot hear of it: the refusal says who.
        await browser.go(f"#/approvals/{second}", f"Approval {second}")
        await browser.find(f"#view button[aria-label='Deny {second}']")
        await browser.js("window.agenthub.dropStream(600000)")
        other_id, other = await create_token(hub.state.pool, Role.OPERATOR)
        async with hub.http(other) as as_other:
            r = await as_other.post(f"/api/v1/approvals/{second}/decision", json={"decision": "approve"})
            assert r.status_code == 200, r.text
        await browser.click(f"#view button[aria-label='Deny {second}']")
        await browser.wait_for("const s = document.querySelector('#view .form-status.error');"
                               "return s && s.textContent.includes(arguments[0])", f"approved (by {other_id}",
                               what="the refusal naming the operator who decided first")
        await browser.find("#view .approval[data-state=approved]")  # and the page shows the decision made
        await browser.screenshot("approval-decided-first")


async def report_usage(http: httpx2.AsyncClient, agent_id: str, **amounts: int) -> None:
    r = await http.post(f"/api/v1/budgets/agent:{agent_id}/usage", json=amounts)
    assert r.status_code == 200, r.text


def chart(metric: str) -> str:
    return f'#view .spend-chart[data-metric="{metric}"]'


async def limited_spend(http: httpx2.AsyncClient, agent_id: str) -> None:
    """Limits on the agent's tool calls and LLM cost, and some spend on both."""
    r = await http.put(f"/api/v1/budgets/agent:{agent_id}", json={"limits": {
        "tool_calls": {"soft": 50, "hard": 100}, "llm_cost_micro_usd": {"soft": None, "hard": 2_000_000}}})
    assert r.status_code == 200, r.text
    await report_usage(http, agent_id, tool_calls=30, llm_cost_micro_usd=1_234_567)


async def test_an_agents_page_plots_its_spend_with_the_limits_and_the_soft_limit_raises_an_approval(
        dash_hub: RunningHub, browser: Browser) -> None:
    async with dash_hub.http() as http:
        await http.post("/api/v1/agents", json=worker("w9", ["count"]))
        r = await http.put("/api/v1/budgets/agent:w9", json={"limits": {"llm_tokens": {"soft": 500, "hard": 1000}}})
        assert r.status_code == 200, r.text
        await browser.sign_in(dash_hub.url, dash_hub.operator_token)
        await browser.go("#/agents/w9", "Agent w9")
        await browser.find(f"{chart('llm_tokens')} line.limit-hard[data-value='1000']")
        assert await browser.count(f"{chart('llm_tokens')} .spend-point") == 0  # limits, nothing spent yet

        await report_usage(http, "w9", llm_tokens=300)
        await browser.wait_for("const p = document.querySelectorAll(arguments[0]);"
                               "return p.length && p[p.length - 1].dataset.total === '300'",
                               f"{chart('llm_tokens')} .spend-point", seconds=10, what="the first report plotted")
        await report_usage(http, "w9", llm_tokens=400)  # past the soft limit: the hub asks an operator
        await browser.wait_for("const p = document.querySelectorAll(arguments[0]);"
                               "return p.length && p[p.length - 1].dataset.total === '700'",
                               f"{chart('llm_tokens')} .spend-point", seconds=10, what="the second report plotted")
        series = (await http.get("/api/v1/budgets/agent:w9/spend", params={"metric": "llm_tokens"})).json()
        # One point per minute's spend (both reports fall in one minute unless a minute turned between them).
        assert [p["total"] for p in series["points"]][-1] == 700
        assert await browser.count(f"{chart('llm_tokens')} .spend-point") == len(series["points"])
        # Drawn where it belongs: the total above the soft limit's line, below the hard limit's (SVG y grows down).
        soft, point, hard = await browser.js(
            "const c = document.querySelector(arguments[0]); const p = c.querySelectorAll('.spend-point');"
            "return [c.querySelector('.limit-soft').getAttribute('y1'), p[p.length - 1].getAttribute('cy'),"
            " c.querySelector('.limit-hard').getAttribute('y1')].map(Number)", chart("llm_tokens"))
        assert hard < point < soft
        assert await browser.text('#view .budget tr[data-metric=llm_tokens] .spent') == "700"
        await browser.wait_for("return document.querySelector('#nav-pending').textContent === '1'", seconds=5,
                               what="the soft limit's approval counted in the nav")
        [approval] = (await http.get("/api/v1/approvals", params={"state": "pending"})).json()["approvals"]
        assert (approval["kind"], approval["subject"]) == ("budget", "agent:w9")
        await browser.screenshot("agent-spend")
        # Denied from its page, the soft limit's approval exhausts the metric: the agent's page says so.
        await browser.go(f"#/approvals/{approval['approval_id']}", "Approval")
        await browser.find('#view .approval a[href="#/budgets/agent%3Aw9"]')
        await browser.click("#view button[aria-label^=Deny]")
        await browser.go("#/agents/w9", "Agent w9")
        await browser.wait_for("return document.querySelector('#view .budget tr[data-metric=llm_tokens] "
                               ".badge.budget-exhausted')", seconds=10, what="the denied metric exhausted")

        await browser.go("#/budgets", "Budgets")
        await browser.find('#budgets-table tr[data-subject="agent:w9"][data-metric=llm_tokens]')
        assert "700" in await browser.text('#budgets-table tr[data-subject="agent:w9"][data-metric=llm_tokens]')
        # An operator sets a requester's limits from the page, and lands on its budget.
        await browser.click("details.share > summary")
        await browser.fill_form("#budget-form", {"subject": "requester:carol", "hard": "5000",
                                                 "approval_threshold": "300"})
        await browser.choose("#budget-form select[name=metric]", "credits")
        await browser.click("#budget-form button[type=submit]")
        await browser.go("#/budgets/requester:carol", "Budget of requester:carol")
        await browser.find(f"{chart('credits')} line.limit-hard[data-value='5000']")
        budget = (await http.get("/api/v1/budgets/requester:carol")).json()
        assert budget["limits"]["credits"] == {"soft": None, "hard": 5000} and budget["approval_threshold"] == 300

    # The agent itself reads its own budget (the Budgets link brings it there), and nobody else's.
    await browser.click("#sign-out")
    await browser.sign_in(dash_hub.url, await dash_hub.token(Role.AGENT, "w9"))
    await browser.go("#/budgets", "Budget of agent:w9")
    await browser.find(f"{chart('llm_tokens')} .spend-point")
    assert await browser.count("#view [data-write]") == 0
    await browser.go("#/budgets/requester:carol", "Budget of requester:carol")
    await browser.wait_for("const b = document.querySelector('#view .budget p.muted');"
                           "return b && b.textContent.includes('only its own budget')",
                           what="the refusal to show another subject's budget")


async def test_a_wasm_evaluators_failing_run_shows_its_exit_code_and_log_on_the_task_page_and_opens_a_dispute(
        dash_hub: RunningHub, browser: Browser) -> None:
    async with dash_hub.http() as http:
        await deposit(http, "requester:carol", 1000)
        r = await http.post("/api/v1/evaluators", content=bytes(wat2wasm(EVALUATOR.read_text())),
                            headers={"Content-Type": "application/wasm"})
        assert r.status_code == 201, r.text
        evaluator = r.json()["sha256"]
        await browser.sign_in(dash_hub.url, dash_hub.operator_token)
        await browser.go("#/tasks", "Tasks")
        await browser.click("details.share > summary")
        await browser.fill_form("#task-form", {"requester_id": "carol", "description": "Be careful",
                                               "bidding_seconds": "3", "evaluator": evaluator})
        await browser.choose("#task-form select[name=on_fail]", "dispute")
        await browser.click("#task-form button[type=submit]")
        await browser.wait_for("return /^#\\/tasks\\/.+/.test(location.hash)", what="the new task's page")
        task_id = await browser.js("return location.hash.split('/').pop()")
        await won_by(http, task_id, "bob", 50)
        await report(http, task_id, "bob", {"worker": "sloppy"})
        await browser.wait_for("return document.querySelector('#check .check-outcome[data-passed=false]')",
                               seconds=10, what="the evaluator's fail on the task page")
        assert evaluator in await browser.text("#check")
        assert "1" == await browser.text("#check .evaluator-run dd:nth-of-type(2)")  # its exit code
        assert "not made by the careful worker" in await browser.text("#check pre.log")
        await browser.find(".escrow-state .escrow-disputed")  # on_fail: dispute
        await browser.screenshot("task-evaluator-failed")


async def test_a_task_over_the_requesters_threshold_waits_on_its_page_until_approved_from_the_approval_page(
        dash_hub: RunningHub, browser: Browser) -> None:
    async with dash_hub.http() as http:
        await deposit(http, "requester:carol", 1000)
        r = await http.put("/api/v1/budgets/requester:carol", json={"approval_threshold": 100})
        assert r.status_code == 200, r.text
        await browser.sign_in(dash_hub.url, dash_hub.operator_token)
        await browser.go("#/tasks", "Tasks")
        await browser.click("details.share > summary")
        await browser.fill_form("#task-form", {"requester_id": "carol", "budget": "400",
                                               "description": "Audit the ledger", "bidding_seconds": "30"})
        await browser.click("#task-form button[type=submit]")
        await browser.wait_for("return document.querySelector('main .page').dataset.taskState === "
                               "'awaiting_approval'", what="the new task waiting for approval")
        task_id = await browser.js("return location.hash.split('/').pop()")
        assert "opens when an operator approves" in await browser.text(".auction .facts")
        await browser.wait_for("return document.querySelector('#nav-pending').textContent === '1'", seconds=5,
                               what="its approval counted in the nav")
        await browser.click("a.approval-link")
        await browser.find(f'#view a.task-link[href="#/tasks/{task_id}"]')
        await browser.click("#view button[aria-label^=Approve]")
        await browser.find("#view .approval[data-state=approved]")
        await browser.click("#view a.task-link")
        await browser.wait_for("return document.querySelector('main .page').dataset.taskState === 'bidding'",
                               what="the auction open once approved")
        assert (await http.get(f"/api/v1/tasks/{task_id}")).json()["state"] == "bidding"


async def test_the_feed_catches_up_after_the_stream_drops_and_shows_each_discovery_once(
        dash_hub: RunningHub, browser: Browser) -> None:
    await browser.sign_in(dash_hub.url, dash_hub.operator_token)
    await browser.go("#/discoveries", "Discoveries")
    async with dash_hub.mcp() as client:
        before = [(await share(client, content=f"before the drop {i}"))["discovery_id"] for i in range(3)]
        await browser.wait_for("return arguments[0].every(id => document.querySelector("
                               "`#view [data-discovery-id=\"${id}\"]`))", before, what="the first discoveries")
        await browser.js("window.agenthub.dropStream(2500)")
        assert await browser.text("#stream-status") == "paused"
        during = [(await share(client, content=f"during the gap {i}", discovery_type="insight"))["discovery_id"]
                  for i in range(5)]
        assert await browser.js("return window.agenthub.streamConnects()") == 1  # still disconnected
        assert not await browser.js("return arguments[0].some(id => document.querySelector("
                                    "`[data-discovery-id=\"${id}\"]`))", during)
        await browser.wait_for("return window.agenthub.streamConnects() === 2", seconds=6,
                               what="the stream reconnected")
        await browser.wait_for("return arguments[0].every(id => document.querySelector("
                               "`#view [data-discovery-id=\"${id}\"]`))", during, seconds=5,
                               what="the discoveries shared during the gap")
        after = (await share(client, content="after the reconnect"))["discovery_id"]
        await browser.wait_for("return document.querySelector(arguments[0])", item(after), seconds=2,
                               what="a live discovery after the reconnect")
    ids: list[str] = await browser.js(
        "return Array.from(document.querySelectorAll('#view [data-discovery-id]'), li => li.dataset.discoveryId)")
    assert sorted(ids) == sorted([*before, *during, after])  # every one, each once
    sequences = await browser.js("return Array.from(document.querySelectorAll('#view .discovery-link'), "
                                 "a => Number(a.textContent.slice(1)))")
    assert sequences == sorted(sequences, reverse=True)  # newest first
    await browser.screenshot("discoveries-after-reconnect")


async def test_a_viewer_sees_every_page_but_no_form_or_button_that_writes(
        dash_hub: RunningHub, browser: Browser) -> None:
    async with dash_hub.http() as http:
        await deposit(http, "requester:dora", 100)
        await http.post("/api/v1/agents", json=worker("w2", ["paint"]))
        r = await http.post("/api/v1/tasks", json={"requester_id": "dora", "description": "Paint the fence",
                                                   "required_capabilities": ["paint"], "budget": 50,
                                                   "bidding_seconds": 30, "idempotency_key": str(uuid.uuid4())})
        task_id = r.json()["task_id"]
        cleared = await cleared_task(http, "dora")
        await limited_spend(http, "w2")
    asked = await ask(dash_hub, "w2", "Buy more paint")
    async with dash_hub.mcp() as client:
        shared = await share(client)
    viewer = await dash_hub.token(Role.VIEWER)
    await browser.sign_in(dash_hub.url, viewer)
    assert (await browser.text("#who")).startswith("viewer")
    assert await browser.js("return document.querySelector('#nav a[href=\"#/tokens\"]').offsetParent") is None
    pages = [("#/", "Overview", "[data-tile]"), ("#/discoveries", "Discoveries", item(shared["discovery_id"])),
             (f"#/discoveries/{shared['discovery_id']}", "Discovery", ".thread"),
             ("#/agents", "Agents", "tr[data-agent-id=w2]"), ("#/agents/w2", "Agent w2", ".facts"),
             ("#/tasks", "Tasks", f"tr[data-task-id={task_id}]"),
             (f"#/tasks/{task_id}", f"Task {task_id}", ".bid-count"),
             (f"#/tasks/{cleared}/audit", f"Audit of task {cleared}", ".replay-matches"),
             ("#/approvals", "Approvals", f"tr[data-approval-id={asked}][data-state=pending]"),
             (f"#/approvals/{asked}", f"Approval {asked}", ".approval[data-state=pending]"),
             ("#/budgets", "Budgets", '#budgets-table tr[data-subject="agent:w2"]'),
             ("#/budgets/agent:w2", "Budget of agent:w2", f"{chart('tool_calls')} .spend-point"),
             ("#/accounts/requester:dora", "Account requester:dora", ".balance")]
    for route, heading, content in pages:
        await browser.go(route, heading)
        await browser.find(content)
        writes = await browser.js("return Array.from(document.querySelectorAll('#view [data-write], #view "
                                  "details.share, #view textarea'), e => e.outerHTML.slice(0, 80))")
        assert writes == [], f"{route} offers a viewer: {writes}"
        buttons = await browser.js("return Array.from(document.querySelectorAll('#view button'))"
                                   ".filter(b => b.offsetParent !== null).map(b => b.textContent)")
        assert set(buttons) <= {"Clear", "Load older", "Older entries", "Open"}, f"{route}: {buttons}"
    await browser.screenshot("viewer-task")
    await browser.click("#sign-out")
    await browser.find("#signin-form")
    assert await browser.js("return sessionStorage.length") == 0


async def test_an_operator_creates_a_token_on_the_tokens_page_sees_its_secret_once_and_revokes_it(
        dash_hub: RunningHub, browser: Browser) -> None:
    await browser.sign_in(dash_hub.url, dash_hub.operator_token)
    await browser.go("#/tokens", "Tokens")
    await browser.find("#tokens-table tr[data-state=active]")  # at least the operator's own
    await browser.click("details.share > summary")
    await browser.choose("#token-form select[name=role]", "agent")
    await browser.fill("#token-form input[name=agent_id]", "dash-agent")
    await browser.choose("#token-form select[name=expires]", "604800")
    await browser.click("#token-form button[type=submit]")
    secret = await browser.wait_for("const c = document.querySelector('.token-secret code.secret');"
                                    "return c && c.textContent", what="the new token's secret, shown once")
    async with dash_hub.http(secret) as as_agent:
        assert (await as_agent.get("/api/v1/whoami")).json()["agent_id"] == "dash-agent"
    async with dash_hub.http() as http:
        [token] = [t for t in (await http.get("/api/v1/tokens")).json()["items"] if t["agent_id"] == "dash-agent"]
    row = f'#tokens-table tr[data-token-id="{token["token_id"]}"]'
    await browser.find(row)
    assert "dash-agent" in await browser.text(row)
    assert await browser.text(f"{row} td:nth-of-type(5)") != "never"  # expires in 7 days
    assert await browser.js("return document.querySelector('#tokens-table').textContent.includes(arguments[0])",
                            secret) is False
    await browser.screenshot("tokens")
    await browser.click(f'{row} button[aria-label="Revoke {token["token_id"]}"]')
    await browser.wait_for("return !document.querySelector(arguments[0])", row,
                           what="the revoked token gone from the list of active tokens")
    async with dash_hub.http(secret) as as_agent:
        assert (await as_agent.get("/api/v1/whoami")).status_code == 401
    await browser.click("#view input[name=all]")
    await browser.find(f'{row}[data-state=revoked]')
    assert await browser.count(f"{row} button") == 0


async def test_every_page_fits_a_phone_screen_without_scrolling_sideways_and_its_text_has_aa_contrast(
        dash_hub: RunningHub, browser: Browser) -> None:
    async with dash_hub.http() as http:
        await deposit(http, "requester:erin", 100)
        await http.post("/api/v1/agents", json=worker("a-rather-long-agent-identifier-for-phones", ["paint"]))
        r = await http.post("/api/v1/tasks", json={
            "requester_id": "erin", "description": "Paint " + "the-very-long-fence-" * 8,
            "required_capabilities": ["paint"], "budget": 50, "bidding_seconds": 30,
            "parameters": {"colour": "x" * 120}, "idempotency_key": str(uuid.uuid4())})
        task_id = r.json()["task_id"]
        cleared = await cleared_task(http, "erin")
        await limited_spend(http, "a-rather-long-agent-identifier-for-phones")
    async with dash_hub.mcp() as client:
        shared = await share(client, content="A discovery with an unbroken word " + "y" * 150,
                             tags=["a-long-tag-for-the-phone-layout"])
    async with dash_hub.http(await dash_hub.token(Role.AGENT, "erin")) as as_erin:
        asked = (await as_erin.post("/api/v1/approvals", json={
            "agent_id": "erin", "reason": "Spend " + "z" * 150, "detail": {"service": "a-long-service-name-" * 4}}
        )).json()["approval_id"]
    await browser.resize(*PHONE, mobile=True)
    await browser.sign_in(dash_hub.url, dash_hub.operator_token)
    pages = [("#/", "Overview", "[data-tile]", "overview"),
             ("#/discoveries", "Discoveries", item(shared["discovery_id"]), "discoveries"),
             (f"#/discoveries/{shared['discovery_id']}", "Discovery", ".thread", "discovery"),
             ("#/agents", "Agents", "tr[data-agent-id]", "agents"),
             ("#/agents/a-rather-long-agent-identifier-for-phones", "Agent a-rather", ".spend-chart", "agent"),
             ("#/budgets", "Budgets", "#budgets-table tr[data-subject]", "budgets"),
             ("#/tasks", "Tasks", "tr[data-task-id]", "tasks"),
             (f"#/tasks/{task_id}", f"Task {task_id}", ".bid-count", "task"),
             (f"#/tasks/{cleared}", f"Task {cleared}", "#audit .replay-matches", "task-cleared"),
             (f"#/tasks/{cleared}/audit", f"Audit of task {cleared}", ".replay-matches", "audit"),
             ("#/accounts/requester:erin", "Account requester:erin", ".balance", "account"),
             ("#/tokens", "Tokens", "tr[data-token-id]", "tokens"),
             ("#/approvals", "Approvals", "tr[data-approval-id]", "approvals"),
             (f"#/approvals/{asked}", f"Approval {asked}", ".approval[data-state=pending]", "approval")]
    for route, heading, content, name in pages:
        await browser.go(route, heading)
        await browser.find(content)
        await browser.js("document.querySelectorAll('#view details').forEach(d => { d.open = true; })")
        widths = await browser.js("return [document.documentElement.scrollWidth, document.body.scrollWidth, "
                                  "window.innerWidth]")
        assert widths[2] == PHONE[0], widths
        assert max(widths[:2]) <= widths[2], f"{route} scrolls sideways at {PHONE[0]} px: {widths}"
        assert await browser.contrast_failures() == [], route
        await browser.screenshot(f"phone-{name}")
