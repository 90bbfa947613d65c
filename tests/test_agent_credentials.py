"""Agent processes' NATS users: one per process, the next one loaded ahead as a spare, the replaced ones removed."""

import json
import os
import secrets
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
import nats
import pytest
from nats.aio.client import Client as NatsClient

from agent_pool.credentials import AgentCredentials
from agenthub.nats_auth import AUTH_CONF, NatsAuthority, NatsLogin
from tests.agents_helpers import eventually, scripted, wait_for
from tests.conftest import RunningHub, Services


@asynccontextmanager
async def credentials(services: Services) -> AsyncIterator[AgentCredentials]:
    users = NatsAuthority(services.nats_dir).owner()
    try:
        yield AgentCredentials(prefix=f"t{secrets.token_hex(4)}.", users=users, shared=None)
    finally:
        await users.close()


async def connect(services: Services, login: NatsLogin) -> NatsClient:
    return await nats.connect(services.nats_url, connect_timeout=5, allow_reconnect=False,
                              **login.connect_options())


async def refused(services: Services, login: NatsLogin) -> None:
    with pytest.raises(Exception, match="(?i)authorization"):
        await connect(services, login)


async def loaded_at(services: Services) -> str:
    """When nats-server last loaded its configuration (its users)."""
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.get(f"{services.nats_monitor_url}/varz")
    loaded: str = response.json()["config_load_time"]
    return loaded


def users_of(services: Services, agent_id: str) -> list[str]:
    """The users of `agent_id` in the server's users file."""
    text = (services.nats_dir / AUTH_CONF).read_text()
    users = json.loads(text.removeprefix("authorization: "))["users"]
    return [u["user"] for u in users if u.get("user", "").startswith(f"agent-{agent_id}-")]


async def test_a_replacement_process_gets_a_working_login_without_a_reload_and_the_replaced_one_goes_at_settle(
        services: Services) -> None:
    async with credentials(services) as issuer:
        first = await issuer.issue("alice", "i1")
        nc = await connect(services, first)
        try:
            assert len(users_of(services, "alice")) == 2  # its own and the spare for the next process
            before = await loaded_at(services)
            second = await issuer.issue("alice", "i2")
            assert second.user not in (None, first.user)
            assert await loaded_at(services) == before  # handed out without reloading the server
            await (await connect(services, second)).close()
            assert nc.is_connected  # the replaced process's user stays until the new one is up

            await issuer.settle("alice")  # the new process is up: the replaced one's user goes, a new spare comes
            assert await loaded_at(services) != before

            async def closed() -> bool:
                return not nc.is_connected

            await eventually(closed, 10, "the replaced process's connection closed")
            await refused(services, first)
            await (await connect(services, second)).close()
            assert first.user not in users_of(services, "alice") and len(users_of(services, "alice")) == 2
        finally:
            await nc.close()


async def test_a_revoked_agent_keeps_no_user_neither_its_process_nor_replaced_ones_nor_its_spare(
        services: Services) -> None:
    async with credentials(services) as issuer:
        first = await issuer.issue("bob", "i1")
        second = await issuer.issue("bob", "i2")  # replaced, not settled: the first user is still loaded
        assert len(users_of(services, "bob")) == 2
        await issuer.revoke("bob")
        assert users_of(services, "bob") == []
        await refused(services, first)
        await refused(services, second)
        third = await issuer.issue("bob", "i3")  # spawned again: a user loaded for it at once
        await (await connect(services, third)).close()


async def test_without_nats_users_every_process_gets_the_shared_login(services: Services) -> None:
    shared = NatsLogin(user="agents", password="shared")
    issuer = AgentCredentials(prefix="", users=None, shared=shared)
    assert await issuer.issue("carol", "i1") == shared
    assert await issuer.issue("carol", "i2") == shared
    await issuer.settle("carol")
    await issuer.revoke("carol")


async def test_a_restarted_agent_keeps_its_process_user_and_one_spare_and_a_stopped_one_none(
        hub: RunningHub, services: Services) -> None:
    agent_id = f"phoenix-{secrets.token_hex(3)}"

    async def two_users() -> bool:
        return len(users_of(services, agent_id)) == 2

    async with hub.http() as http:
        await http.post("/api/v1/agents", json=scripted(agent_id))
        agent = await wait_for(http, agent_id, "idle")
        await eventually(two_users, 10, "its process's user and the spare")
        for _ in range(3):
            os.kill(agent["pid"], signal.SIGKILL)
            agent = await wait_for(http, agent_id, "idle", "running", pid_not=agent["pid"])
            # The replaced process's user is gone once the new process is up; a new spare replaces the one used.
            await eventually(two_users, 10, "the replaced process's user removed")
        response = await http.delete(f"/api/v1/agents/{agent_id}")
        assert response.json()["state"] == "stopped"
        assert users_of(services, agent_id) == []
