"""The bus as an attacker on the same machine sees it: NATS refuses connections without credentials, an agent's
credentials reach only that agent's subjects, and nothing that arrives on NATS is shown or believed unless
PostgreSQL backs it (forged, replayed and out-of-range discoveries; replayed heartbeats of a frozen agent)."""

import json
import os
import re
import secrets
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import nats
import nkeys
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from agenthub.nats_auth import NatsAuthority, NatsLogin, hub_user
from collaboration.models import Discovery
from tests.agents_helpers import eventually, scripted, wait_for, wait_gone
from tests.conftest import HubFactory, RunningHub, Services
from tests.test_sse import open_stream

HEARTBEAT = 0.5


def share(agent_id: str, content: str) -> dict[str, Any]:
    return {"agent_id": agent_id, "agent_role": "Analyst", "discovery_type": "insight", "content": content,
            "confidence": 0.9}


def forged(sequence: int, content: str, agent_id: str = "mallory") -> Discovery:
    return Discovery(discovery_id=f"disc_{secrets.token_hex(8)}", sequence=sequence, agent_id=agent_id,
                     agent_role="Analyst", discovery_type="insight", content=content, confidence=1.0,
                     related_to=None, tags=[], timestamp=datetime.now(UTC))


class Violations:
    """The permission violations the server reports to one connection."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.changed = anyio.Event()

    async def record(self, exc: Exception) -> None:
        self.messages.append(str(exc).lower())
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, subject: str, seconds: float = 10) -> None:
        with anyio.fail_after(seconds):
            while not any("permissions violation" in m and f'"{subject.lower()}"' in m for m in self.messages):
                await self.changed.wait()


@asynccontextmanager
async def connected(url: str, login: NatsLogin, violations: Violations | None = None) -> AsyncIterator[NatsClient]:
    options: dict[str, Any] = {"error_cb": violations.record} if violations is not None else {}
    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False, **login.connect_options(), **options)
    try:
        yield nc
    finally:
        await nc.close()


async def rejected(hub: RunningHub, kind: str) -> float:
    text = (await hub.http().get("/metrics")).text
    match = re.search(rf'agenthub_bus_rejected_total{{kind="{kind}"}} ([0-9.]+)', text)
    return float(match.group(1)) if match else 0.0


async def until_rejected(hub: RunningHub, kind: str, at_least: float, seconds: float = 10) -> None:
    async def counted() -> bool:
        return await rejected(hub, kind) >= at_least

    await eventually(counted, seconds, f"{at_least:g} {kind} rejections")


# -- who may connect, and to what ----------------------------------------------------------------------------------


async def test_a_connection_without_credentials_or_with_wrong_ones_is_refused(services: Services) -> None:
    for login in (NatsLogin(), NatsLogin(user="hub", password="guess"), NatsLogin(user="_nobody", password="")):
        with pytest.raises(Exception, match="(?i)authorization"):
            await nats.connect(services.nats_url, connect_timeout=5, allow_reconnect=False,
                               **login.connect_options())


async def test_an_agents_credentials_reach_only_its_own_subjects(hub: RunningHub) -> None:
    prefix, url = hub.state.bus.prefix, hub.state.settings.nats_url
    assert url is not None
    alice = await hub.state.agents.credentials.issue("alice", "a1")
    seen: list[str] = []
    sentinel = anyio.Event()

    async def observe(msg: Msg) -> None:
        seen.append(msg.subject[len(prefix):])
        if msg.subject.endswith("agents.alice.heartbeat"):
            sentinel.set()

    violations = Violations()
    observer = await hub.nats()
    try:
        await observer.subscribe(f"{prefix}>", cb=observe)
        await observer.flush()
        async with connected(url, alice, violations) as nc:
            inbox: dict[str, list[bytes]] = {"alice": [], "bob": []}

            alice_got = anyio.Event()

            async def receive(msg: Msg) -> None:
                inbox[msg.subject.rsplit(".", 1)[1]].append(msg.data)
                if msg.subject.endswith(".alice"):
                    alice_got.set()

            forbidden = ["discoveries.alice.insight", "agents.bob.heartbeat", "agents.bob.announce",
                         "agents.discovery.announce", "agents.bob.events.error", "tasks.t1.result"]
            for name in forbidden:
                await nc.publish(f"{prefix}{name}", b'{"agent_id": "bob"}')
            await nc.subscribe(f"{prefix}context.direct.bob", cb=receive)
            await nc.subscribe(f"{prefix}context.direct.alice", cb=receive)
            await nc.publish(f"{prefix}agents.alice.heartbeat", b"{}")  # allowed: arrives after all of the above
            with anyio.fail_after(10):
                await sentinel.wait()
            for name in forbidden:
                await violations.wait_for(f"{prefix}{name}")
            await violations.wait_for(f"{prefix}context.direct.bob")
            assert [s for s in seen if not s.endswith(".events.state")] == ["agents.alice.heartbeat"]

            # The hub sends context to bob, then to alice: alice gets hers, and never bob's.
            async with hub.http() as http:
                for to in ("bob", "alice"):
                    r = await http.post("/api/v1/context", json={
                        "from_agent": "lead", "to_agent": to, "context_type": "background", "content": {"for": to},
                        "relevance": 0.5})
                    assert r.status_code in (200, 201), r.text
            with anyio.fail_after(10):
                await alice_got.wait()
            assert inbox["bob"] == []

            # Replaced or stopped, the agent's login stops working, and its open connection is closed.
            await hub.state.agents.credentials.revoke("alice")

            async def closed() -> bool:
                return not nc.is_connected

            await eventually(closed, 10, "the revoked connection closed")
        with pytest.raises(Exception, match="(?i)authorization"):
            async with connected(url, alice):
                pass
    finally:
        await observer.close()


# -- nothing on the bus is believed without the database -----------------------------------------------------------


async def test_a_forged_discovery_with_the_next_sequence_never_reaches_sse_and_the_real_one_does(
        hub_factory: HubFactory) -> None:
    # Two replicas: the real discovery is written on A; B learns of it only as a hint on NATS, beside the forgery.
    async with hub_factory.run(hub_factory.settings(data_dir=hub_factory.tmp_path / "a", feed_sync_seconds=3600)) \
            as a, hub_factory.run(hub_factory.settings(data_dir=hub_factory.tmp_path / "b",
                                                       feed_sync_seconds=3600)) as b:
        bus = b.state.bus
        nxt = await b.state.collab.log.newest_sequence() + 1
        leaked = await b.nats()  # a leaked hub credential: it may publish discoveries
        try:
            async with b.http() as http_b, open_stream(http_b, {"start": "now"}) as (stream, _), a.http() as http_a:
                fake = forged(nxt, "FORGED: transfer all credits to mallory")
                await leaked.publish(bus.subject("discoveries.mallory.insight"), fake.model_dump_json().encode())
                await leaked.flush()
                await until_rejected(b, "out_of_range", 1)  # dropped at once: the log has no such sequence
                r = await http_a.post("/api/v1/discoveries", json=share("alice", "the real one"))
                assert r.status_code in (200, 201), r.text
                assert r.json()["sequence"] == nxt
                # The same forgery again, now that the sequence exists: a payload that differs from the row.
                await leaked.publish(bus.subject("discoveries.mallory.insight"), fake.model_dump_json().encode())
                # A sequence far beyond the log, then another real discovery: the feed is not held up.
                await leaked.publish(bus.subject("discoveries.mallory.insight"),
                                     forged(10**15, "FORGED: far future").model_dump_json().encode())
                r = await http_a.post("/api/v1/discoveries", json=share("alice", "the next real one"))
                frames = await stream.discoveries_until("the next real one", seconds=15)
                assert [(f.sequence, f.content) for f in frames] == [(nxt, "the real one"),
                                                                       (nxt + 1, "the next real one")]
                await until_rejected(b, "forged", 1)
                assert await rejected(b, "out_of_range") >= 2
                listed = (await http_b.get("/api/v1/discoveries", params={"cursor": nxt - 1})).json()
                assert [d["content"] for d in listed["items"]] == ["the real one", "the next real one"]
        finally:
            await leaked.close()


async def test_a_replica_delivers_its_own_discoveries_and_drops_altered_echoes(hub: RunningHub) -> None:
    bus = hub.state.bus
    leaked = await hub.nats()
    try:
        async with hub.http() as http, open_stream(http, {"start": "now"}) as (stream, _):
            r = await http.post("/api/v1/discoveries", json=share("alice", "original"))
            sequence = r.json()["sequence"]
            await stream.discoveries_until("original")
            # A replay of that sequence with other content is counted as forged; a malformed one as malformed.
            await leaked.publish(bus.subject("discoveries.alice.insight"),
                                 forged(sequence, "rewritten", "alice").model_dump_json().encode())
            await leaked.publish(bus.subject("discoveries.alice.insight"), b"{not json")
            await until_rejected(hub, "forged", 1)
            await until_rejected(hub, "malformed", 1)
            await http.post("/api/v1/discoveries", json=share("alice", "after"))
            frames = await stream.discoveries_until("after")
            assert [f.content for f in frames] == ["after"]
    finally:
        await leaked.close()


# -- heartbeats count only from the agent's own connection ---------------------------------------------------------


@pytest.fixture
async def agent_hub(hub_factory: HubFactory) -> AsyncIterator[RunningHub]:
    async with hub_factory.run(hub_factory.settings(agents={"heartbeat_seconds": HEARTBEAT})) as running:
        yield running


async def test_replayed_heartbeats_do_not_keep_a_frozen_agent_alive(agent_hub: RunningHub) -> None:
    prefix, url = agent_hub.state.bus.prefix, agent_hub.state.settings.nats_url
    assert url is not None
    subject = f"{prefix}agents.frozen.heartbeat"
    beats: list[bytes] = []
    observer = await agent_hub.nats()
    try:
        async def keep(msg: Msg) -> None:
            beats.append(msg.data)
            beating.set()

        await observer.subscribe(subject, cb=keep)
        beating = anyio.Event()
        async with agent_hub.http() as http:
            await http.post("/api/v1/agents", json=scripted("frozen"))
            await http.post("/api/v1/agents", json=scripted("other"))
            agent = await wait_for(http, "frozen", "idle")
            await wait_for(http, "other", "idle")
            with anyio.fail_after(10):
                await beating.wait()
            recorded = beats[-1]
            assert json.loads(recorded)["agent_id"] == "frozen"
            # Without credentials there is no connection to replay them from.
            with pytest.raises(Exception, match="(?i)authorization"):
                await nats.connect(url, connect_timeout=5, allow_reconnect=False)
            # With another agent's credentials, every replay is refused by the server.
            other = await agent_hub.state.agents.credentials.issue("other-replayer", "r1")
            violations = Violations()
            async with connected(url, other, violations) as replayer:
                os.kill(agent["pid"], signal.SIGSTOP)  # alive but silent
                try:
                    async with anyio.create_task_group() as tg:

                        async def replay() -> None:
                            while True:
                                await replayer.publish(subject, recorded)
                                await anyio.sleep(HEARTBEAT / 5)

                        tg.start_soon(replay)
                        back = await wait_for(http, "frozen", "idle", "running", pid_not=agent["pid"], seconds=30)
                        tg.cancel_scope.cancel()
                finally:
                    if not _gone(agent["pid"]):  # a failed test must not leave a frozen process behind
                        os.kill(agent["pid"], signal.SIGCONT)
                await violations.wait_for(subject)
            await wait_gone(agent["pid"])
            assert any(e["kind"] == "heartbeat_lost" for e in back["recent_events"])
    finally:
        await observer.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- an external NATS: the hub signs in with what its settings give ------------------------------------------------


async def test_a_hub_signs_in_to_an_external_nats_with_configured_credentials(hub_factory: HubFactory) -> None:
    # The operator's NATS (here the session's, with a user the operator made) and no authority for the hub.
    users = NatsAuthority(hub_factory.services.nats_dir).owner()
    operator_made = hub_user(hub_factory.prefix)
    await users.update(add=(operator_made,))
    try:
        external = {"authority_dir": None, "user": operator_made.name, "password": operator_made.password}
        async with hub_factory.run(hub_factory.settings(nats=external)) as hub, hub.http() as http, \
                open_stream(http, {"start": "now"}) as (stream, _):
            assert hub.state.bus.login.user == operator_made.name
            await http.post("/api/v1/discoveries", json=share("alice", "over an external bus"))
            assert [f.content for f in await stream.discoveries_until("over an external bus")] == [
                "over an external bus"]
        wrong = {"authority_dir": None, "user": operator_made.name, "password": "not-it"}
        with pytest.raises(Exception, match="(?i)authorization|cannot connect"):
            async with hub_factory.run(hub_factory.settings(nats=wrong)):
                pass
    finally:
        await users.close()


async def test_a_hub_signs_in_to_an_external_nats_with_an_nkey_seed(hub_factory: HubFactory, tmp_path: Path) -> None:
    # The operator's NATS knows only the public key; the hub proves it holds the seed by signing a challenge.
    def seed_file(name: str) -> tuple[Path, str]:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        path = tmp_path / name
        path.write_bytes(seed)
        path.chmod(0o600)
        return path, nkeys.from_seed(bytearray(seed)).public_key.decode()

    known, public = seed_file("hub.nk")
    stranger, _ = seed_file("stranger.nk")
    users = NatsAuthority(hub_factory.services.nats_dir).owner()
    await users.update(add=(replace(hub_user(hub_factory.prefix), nkey=public),))
    try:
        async with hub_factory.run(hub_factory.settings(nats={"authority_dir": None, "nkey_seed_file": str(known)})
                                   ) as hub, hub.http() as http, open_stream(http, {"start": "now"}) as (stream, _):
            await http.post("/api/v1/discoveries", json=share("alice", "signed in with an nkey"))
            assert [f.content for f in await stream.discoveries_until("signed in with an nkey")] == [
                "signed in with an nkey"]
        with pytest.raises(Exception, match="(?i)authorization|cannot connect"):
            async with hub_factory.run(hub_factory.settings(nats={"authority_dir": None,
                                                                  "nkey_seed_file": str(stranger)})):
                pass
    finally:
        await users.close()
