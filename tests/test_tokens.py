"""Tokens with a lifecycle: revoked on one replica and refused on the other, refused once expired (the cache never
outlives an expiry), a revocation whose NATS message is lost bounded by the cache, listing without secrets (agent
processes' tokens included, last use recorded), and the CLI and REST faces of it."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx2
import pytest

from agenthub.auth import Role, create_token
from mcp_server import cli
from tests.agents_helpers import FAST_POLICY, wait_for
from tests.conftest import HubFactory, RunningHub

# Long enough that only the revocation message (or the expiry) can explain a refusal within the tests' deadlines.
LONG_CACHE = 60.0


async def until(check: Callable[[], Any], *, seconds: float, what: str) -> Any:
    """Call the async `check` until it returns something truthy; fail naming `what` after `seconds`."""
    try:
        with anyio.fail_after(seconds):
            while True:
                result = await check()
                if result:
                    return result
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {seconds} s") from None


async def status_as(hub: RunningHub, token: str) -> int:
    async with hub.http(token) as http:
        return (await http.get("/api/v1/whoami")).status_code


async def mint(http: httpx2.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await http.post("/api/v1/tokens", json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def test_a_token_revoked_on_one_replica_is_refused_on_the_other_at_once(hub_factory: HubFactory) -> None:
    async with hub_factory.run(hub_factory.settings(token_cache_seconds=LONG_CACHE)) as a, \
            hub_factory.run(hub_factory.settings(token_cache_seconds=LONG_CACHE)) as b, a.http() as http_a:
        created = await mint(http_a, role="agent", agent_id="mobile-1")
        token = created["token"]
        assert await status_as(b, token) == 200  # now believed by b's cache for a minute
        assert await status_as(a, token) == 200
        r = await http_a.delete(f"/api/v1/tokens/{created['token_id']}")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "revoked" and r.json()["revoked_at"] is not None
        assert await status_as(a, token) == 401  # the replica that revoked forgot it before answering

        async def refused_on_b() -> bool:
            return await status_as(b, token) == 401

        await until(refused_on_b, seconds=3, what="the revoked token refused on the other replica")
        # Revoking again changes nothing; an unknown id is 404.
        again = await http_a.delete(f"/api/v1/tokens/{created['token_id']}")
        assert again.status_code == 200 and again.json()["revoked_at"] == r.json()["revoked_at"]
        assert (await http_a.delete("/api/v1/tokens/tok_nope")).status_code == 404


async def test_streams_of_a_token_end_when_it_is_revoked_on_another_replica_or_expires(
        hub_factory: HubFactory) -> None:
    paths = ("/discoveries/stream", "/events/stream")
    async with hub_factory.run(hub_factory.settings(token_cache_seconds=LONG_CACHE)) as a, \
            hub_factory.run(hub_factory.settings(token_cache_seconds=LONG_CACHE)) as b, a.http() as http_a:
        revoked = await mint(http_a, role="viewer")
        expiring = await mint(http_a, role="viewer", expires_in_seconds=3)
        kept = await mint(http_a, role="viewer")
        ended: set[tuple[str, str]] = set()

        async def follow(token: str, path: str) -> None:
            async with b.http(token) as http, http.stream("GET", path, params={"start": "now"}) as r:
                assert r.status_code == 200
                async for _ in r.aiter_bytes():
                    pass
            ended.add((token, path))

        async def open_on_b() -> bool:
            return b.state.collab.feed.stream_count == 6

        def streams_of(created: dict[str, Any]) -> Callable[[], Any]:
            async def check() -> bool:
                return all((created["token"], path) in ended for path in paths)
            return check

        async with anyio.create_task_group() as tg:
            for created in (revoked, expiring, kept):
                for path in paths:
                    tg.start_soon(follow, created["token"], path)
            await until(open_on_b, seconds=10, what="six streams open on replica b")
            assert not ended
            assert (await http_a.delete(f"/api/v1/tokens/{revoked['token_id']}")).status_code == 200
            await until(streams_of(revoked), seconds=3, what="the revoked token's streams on b ended")
            await until(streams_of(expiring), seconds=10, what="the expired token's streams on b ended")
            assert b.state.collab.feed.stream_count == 2 and not any(t == kept["token"] for t, _ in ended)
            tg.cancel_scope.cancel()


async def test_a_revocation_nobody_announced_ends_with_the_cache_entry(hub_factory: HubFactory) -> None:
    async with hub_factory.run(hub_factory.settings(token_cache_seconds=1.0)) as hub:
        token_id, token = await create_token(hub.state.pool, Role.VIEWER)
        assert await status_as(hub, token) == 200
        # As if the NATS message were lost: revoked in the database only.
        await hub.state.pool.execute("UPDATE tokens SET revoked_at = now() WHERE id = $1", token_id)

        async def refused() -> bool:
            return await status_as(hub, token) == 401

        await until(refused, seconds=5, what="a token revoked without a message refused once its entry ended")


async def test_an_expired_token_is_refused_even_while_cached_and_listed_as_expired(hub_factory: HubFactory) -> None:
    async with hub_factory.run(hub_factory.settings(token_cache_seconds=LONG_CACHE)) as hub, hub.http() as http:
        token_id, token = await create_token(hub.state.pool, Role.VIEWER,
                                             expires_at=datetime.now(UTC) + timedelta(seconds=5))
        assert await status_as(hub, token) == 200

        async def refused() -> bool:
            return await status_as(hub, token) == 401

        await until(refused, seconds=15, what="the token refused after its expiry")
        active = (await http.get("/api/v1/tokens")).json()["items"]
        assert token_id not in {t["token_id"] for t in active}
        everything = (await http.get("/api/v1/tokens", params={"all": "true"})).json()["items"]
        [listed] = [t for t in everything if t["token_id"] == token_id]
        assert listed["state"] == "expired" and listed["role"] == "viewer"


async def test_tokens_are_listed_without_secrets_with_agent_processes_and_last_use(hub: RunningHub) -> None:
    async with hub.http() as http:
        created = await mint(http, role="agent", agent_id="lister-1", expires_in_seconds=3600)
        viewer = await mint(http, role="viewer")
        assert await status_as(hub, created["token"]) == 200
        r = await http.post("/api/v1/agents", json={"agent_id": "worker-1", "role": "worker", "executor": "scripted",
                                                    "executor_config": {"behaviour": "worker"},
                                                    "restart_policy": FAST_POLICY})
        assert r.status_code == 201, r.text
        await wait_for(http, "worker-1", "running", "idle", "busy")

        async def listed_with_use() -> list[dict[str, Any]] | None:
            r = await http.get("/api/v1/tokens")
            assert r.status_code == 200, r.text
            for secret in (created["token"], viewer["token"], hub.operator_token):
                assert secret not in r.text
            items: list[dict[str, Any]] = r.json()["items"]
            mine = next(t for t in items if t["token_id"] == created["token_id"])
            process = [t for t in items if t["agent_id"] == "worker-1"]
            return items if mine["last_used_at"] and process and process[0]["last_used_at"] else None

        items = await until(listed_with_use, seconds=20, what="tokens listed with their last use")
        assert all(set(t) == {"token_id", "role", "agent_id", "state", "created_at", "expires_at", "last_used_at",
                              "revoked_at"} for t in items)
        mine = next(t for t in items if t["token_id"] == created["token_id"])
        assert (mine["role"], mine["agent_id"], mine["state"]) == ("agent", "lister-1", "active")
        assert datetime.fromisoformat(mine["expires_at"]) > datetime.now(UTC) + timedelta(minutes=50)
        assert next(t for t in items if t["token_id"] == viewer["token_id"])["expires_at"] is None
        assert [t["role"] for t in items if t["agent_id"] == "worker-1"] == ["agent"]
        assert {t["role"] for t in items} >= {"operator", "agent", "viewer"}
        # Newest first.
        created_at = [t["created_at"] for t in items]
        assert created_at == sorted(created_at, reverse=True)


async def test_only_operators_manage_tokens_and_the_api_describes_it(hub: RunningHub) -> None:
    async with hub.http() as http:
        agent = await mint(http, role="agent", agent_id="a-1")
        assert (await http.post("/api/v1/tokens", json={"role": "viewer", "expires_in_seconds": 0})).status_code == 422
        assert (await http.post("/api/v1/tokens", json={"role": "viewer", "agent_id": "x"})).status_code == 400
        spec = (await http.get("/openapi.json")).json()
    async with hub.http(agent["token"]) as as_agent:
        assert (await as_agent.get("/api/v1/tokens")).status_code == 403
        assert (await as_agent.post("/api/v1/tokens", json={"role": "operator"})).status_code == 403
        assert (await as_agent.delete(f"/api/v1/tokens/{agent['token_id']}")).status_code == 403
    assert set(spec["paths"]["/api/v1/tokens"]) == {"get", "post"}
    assert "delete" in spec["paths"]["/api/v1/tokens/{token_id}"]
    assert "expires_in_seconds" in spec["components"]["schemas"]["TokenRequest"]["properties"]


async def run_cli(*args: str) -> None:
    """`agenthub ...` in a worker thread (it blocks on HTTP); a failure exits, which fails the test."""
    await anyio.to_thread.run_sync(cli.main, list(args))


async def test_the_cli_creates_with_an_expiry_lists_and_revokes_tokens(
        hub: RunningHub, capsys: pytest.CaptureFixture[str]) -> None:
    where = ("--url", hub.url, "--data-dir", str(hub.data_dir))
    await run_cli("token", "create", "--role", "agent", "--agent-id", "cli-1",
                                   "--expires-in", "7d", *where)
    out, err = capsys.readouterr()
    [token] = out.splitlines()
    token_id = err.split()[2].rstrip(",")
    assert token_id.startswith("tok_") and "for agent cli-1" in err and "expires 20" in err
    assert await status_as(hub, token) == 200

    await run_cli("token", "list", *where)
    listing, _ = capsys.readouterr()
    [line] = [row for row in listing.splitlines() if row.startswith(token_id)]
    assert line.split()[1:4] == ["agent", "cli-1", "active"]
    assert token not in listing

    await run_cli("token", "revoke", token_id, *where)
    assert capsys.readouterr().out.strip() == f"revoked token {token_id} (agent for agent cli-1)"
    assert await status_as(hub, token) == 401
    await run_cli("token", "list", *where)
    assert token_id not in capsys.readouterr().out
    await run_cli("token", "list", "--all", *where)
    [line] = [row for row in capsys.readouterr().out.splitlines() if row.startswith(token_id)]
    assert line.split()[3] == "revoked"
    with pytest.raises(SystemExit):
        cli.main(["token", "create", "--role", "viewer", "--expires-in", "soon", *where])
