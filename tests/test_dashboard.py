"""The live dashboard in headless Chromium against a real hub: sign-in, the live discovery feed and its
catch-up after the event stream drops, spawning agents and running an auction from the forms, a viewer's
read-only pages, and a phone-width layout. Each page's screenshot goes to `test-artifacts/dashboard/`."""

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

from agenthub.auth import Role
from tests.agents_helpers import FAST_POLICY, wait_for
from tests.browser import PHONE, Browser
from tests.conftest import HubFactory, RunningHub

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
    async with dash_hub.mcp() as client:
        shared = await share(client, content="A discovery with an unbroken word " + "y" * 150,
                             tags=["a-long-tag-for-the-phone-layout"])
    async with dash_hub.http(await dash_hub.token(Role.AGENT, "erin")) as as_erin:
        await as_erin.post("/api/v1/approvals", json={"agent_id": "erin", "reason": "Spend " + "z" * 150,
                                                       "detail": {"service": "a-long-service-name-" * 4}})
    await browser.resize(*PHONE, mobile=True)
    await browser.sign_in(dash_hub.url, dash_hub.operator_token)
    pages = [("#/", "Overview", "[data-tile]", "overview"),
             ("#/discoveries", "Discoveries", item(shared["discovery_id"]), "discoveries"),
             (f"#/discoveries/{shared['discovery_id']}", "Discovery", ".thread", "discovery"),
             ("#/agents", "Agents", "tr[data-agent-id]", "agents"),
             ("#/agents/a-rather-long-agent-identifier-for-phones", "Agent a-rather", ".facts", "agent"),
             ("#/tasks", "Tasks", "tr[data-task-id]", "tasks"),
             (f"#/tasks/{task_id}", f"Task {task_id}", ".bid-count", "task"),
             ("#/accounts/requester:erin", "Account requester:erin", ".balance", "account"),
             ("#/tokens", "Tokens", "tr[data-token-id]", "tokens"),
             ("#/approvals", "Approvals", "tr[data-approval-id]", "approvals")]
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
