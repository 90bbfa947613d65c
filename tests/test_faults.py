"""The hub rides out faults of its embedded services as an operator would meet them: `agenthub serve` in a data
directory of its own, its nats-server and postmaster killed or frozen under a stream of writes and SSE followers."""

import json
import os
import signal
import subprocess
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psutil
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from mcp_server.server import UNAVAILABLE
from tests.agents_helpers import eventually, wait_gone
from tests.served import Served, child_pids, clean_env, serving
from tests.test_sse import open_stream

WRITERS = 3
FOLLOWERS = 2
RECOVERY_SECONDS = 60  # bound on waiting for the hub to be ready again (generous: a busy machine)


def _discovery(writer: int, n: int) -> dict[str, Any]:
    return {"agent_id": f"writer{writer}", "agent_role": "Writer", "discovery_type": "insight",
            "content": f"w{writer}-{n}", "confidence": 0.5}


class Traffic:
    """Writers that share discoveries as fast as they are answered (honouring Retry-After on 503), and followers
    on the SSE stream that resume with Last-Event-ID whenever their stream ends."""

    def __init__(self, hub: Served, token: str) -> None:
        self.hub = hub
        self.headers = {"Authorization": f"Bearer {token}"}
        self.answers: Counter[int | str] = Counter()
        self.acked: list[str] = []
        self.seen: list[set[str]] = [set() for _ in range(FOLLOWERS)]
        self.stopped = anyio.Event()

    async def acknowledged(self, n: int) -> bool:
        return len(self.acked) >= n

    async def all_followed(self) -> bool:
        return all(set(self.acked) <= seen for seen in self.seen)

    async def write(self, writer: int) -> None:
        async with httpx2.AsyncClient(base_url=self.hub.url, headers=self.headers, timeout=60) as http:
            n = 0
            while not self.stopped.is_set():
                n += 1
                try:
                    r = await http.post("/api/v1/discoveries", json=_discovery(writer, n))
                except httpx2.TransportError as exc:  # counted: the test requires there are none
                    self.answers[type(exc).__name__] += 1
                    await anyio.sleep(0.1)
                    continue
                self.answers[r.status_code] += 1
                if r.status_code == 201:
                    self.acked.append(r.json()["discovery_id"])
                elif r.status_code == 503:
                    assert int(r.headers["retry-after"]) >= 1
                    await anyio.sleep(0.1)
                await anyio.sleep(0.005)

    async def follow(self, follower: int) -> None:
        last: str | None = None
        async with httpx2.AsyncClient(base_url=self.hub.url, headers=self.headers,
                                      timeout=httpx2.Timeout(30, read=None)) as http:
            while True:
                params = {"start": "beginning"} if last is None else None
                headers = {"Last-Event-ID": last} if last is not None else None
                try:
                    async with open_stream(http, params, headers) as (stream, _):
                        while True:
                            frame = await stream.event(seconds=60)
                            if frame.event == "discovery":
                                self.seen[follower].add(frame.json()["discovery"]["discovery_id"])
                                last = frame.id
                except (httpx2.TransportError, AssertionError, StopAsyncIteration):
                    await anyio.sleep(0.2)  # the stream ended or was refused (503) during the outage: resume


async def _ready(hub: Served) -> dict[str, Any]:
    """/ready's answer once it is 200 again; fails after RECOVERY_SECONDS."""
    async with httpx2.AsyncClient(base_url=hub.url, timeout=5) as http:
        with anyio.fail_after(RECOVERY_SECONDS):
            while True:
                try:
                    r = await http.get("/ready")
                    if r.status_code == 200:
                        body: dict[str, Any] = r.json()
                        return body
                except httpx2.TransportError:
                    pass
                await anyio.sleep(0.1)


def _service_pid(data_dir: Path, which: int, other_than: int) -> int:
    """The service's current pid once it is not `other_than` (its pid file is rewritten when it restarts)."""
    deadline = time.monotonic() + RECOVERY_SECONDS
    while True:
        try:
            pid = child_pids(data_dir)[which]
            if pid != other_than:
                return pid
        except (OSError, ValueError, IndexError):
            pass
        assert time.monotonic() < deadline, "the service did not come back"
        time.sleep(0.1)


async def test_killed_nats_then_postgres_come_back_under_writes_and_nothing_acknowledged_is_lost(
        workdir: Path) -> None:
    data_dir = workdir / "data"
    # The writers go as fast as they are answered, past the operator token's request rate on a quick machine:
    # the rate is raised so that every answer is about the faults (a 429 here would be a failure).
    env = clean_env(AGENTHUB_LOG_LEVEL="info", AGENTHUB_RATE_LIMITS__REQUESTS_PER_SECOND="100000")
    with serving(data_dir, workdir / "logs", env=env) as hub:
        token = (data_dir / "operator-token").read_text().strip()
        traffic = Traffic(hub, token)
        async with anyio.create_task_group() as tg:
            for w in range(WRITERS):
                tg.start_soon(traffic.write, w)
            for f in range(FOLLOWERS):
                tg.start_soon(traffic.follow, f)
            for which in (0, 1):  # nats-server, then the postmaster
                await anyio.sleep(1.5)
                before = len(traffic.acked)
                pid = child_pids(data_dir)[which]
                os.kill(pid, signal.SIGKILL)
                await wait_gone(pid, RECOVERY_SECONDS)  # reaped: no zombie left behind
                again = await anyio.to_thread.run_sync(_service_pid, data_dir, which, pid)
                assert psutil.pid_exists(again)
                ready = await _ready(hub)
                assert ready["checks"] == {"nats": "ok", "postgres": "ok", "supervisor": "ok"}
                await eventually(partial(traffic.acknowledged, before + 20), RECOVERY_SECONDS,
                                 "writes acknowledged again")
            traffic.stopped.set()
            acked = set(traffic.acked)
            await eventually(traffic.all_followed, RECOVERY_SECONDS, "every follower has every acknowledged one")
            tg.cancel_scope.cancel()
        assert set(traffic.answers) <= {201, 503}, traffic.answers
        assert traffic.answers[503] > 0  # the outage was met (PostgreSQL cannot restart in zero time)
        stored = [json.loads(line)["discovery_id"] for line in (await _export_text(hub, token)).splitlines()]
        assert len(stored) == len(set(stored))
        assert acked <= set(stored)
        with anyio.fail_after(10):
            async with httpx2.AsyncClient(base_url=hub.url, timeout=5) as http:
                metrics = (await http.get("/metrics")).text
        assert 'agenthub_service_restarts_total{service="nats-server"} 1.0' in metrics
        assert 'agenthub_service_restarts_total{service="postgres"} 1.0' in metrics
        assert hub.stop() == 0
        assert "Traceback" not in hub.errors()
        assert "embedded postgres died; restarting it" in hub.errors()


def _signal_postgres(data_dir: Path, signum: signal.Signals) -> None:
    """The postmaster and every process it started (each is a session leader of its own)."""
    postmaster = child_pids(data_dir)[1]
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True).stdout.split()
    for pid in [postmaster, *map(int, children)]:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


async def test_a_frozen_postgres_is_answered_503_within_the_timeouts_then_writes_resume(workdir: Path) -> None:
    data_dir = workdir / "data"
    env = clean_env(AGENTHUB_DATABASE__CONNECT_TIMEOUT_SECONDS="1", AGENTHUB_DATABASE__STATEMENT_TIMEOUT_SECONDS="2",
                    AGENTHUB_TOKEN_CACHE_SECONDS="60")
    with serving(data_dir, workdir / "logs", env=env) as hub:
        token = (data_dir / "operator-token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(base_url=hub.url, headers=headers, timeout=120) as http:
            first = await http.post("/api/v1/discoveries", json=_discovery(0, 0))
            assert first.status_code == 201, first.text
            mcp_http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(120, read=300))
            async with Client(streamable_http_client(f"{hub.url}/mcp", http_client=mcp_http)) as mcp:
                _signal_postgres(data_dir, signal.SIGSTOP)
                try:
                    frozen = await http.post("/api/v1/discoveries", json=_discovery(0, 1))
                    ready = await http.get("/ready")
                    called = await mcp.call_tool("share_discovery", _discovery(0, 2))
                    with pytest.raises(MCPError) as listed:
                        await mcp.list_resources()
                finally:
                    _signal_postgres(data_dir, signal.SIGCONT)
            assert frozen.status_code == 503, frozen.text
            assert frozen.headers["retry-after"] == "1"
            assert frozen.json()["detail"].startswith("PostgreSQL is unavailable (TimeoutError)")
            assert "may or may not take effect" in frozen.json()["detail"]
            assert ready.status_code == 503 and ready.json()["checks"]["postgres"].startswith("unreachable")
            assert called.is_error
            assert "PostgreSQL is unavailable" in called.content[0].text  # type: ignore[union-attr]
            assert called.meta is not None and called.meta["agenthub/retry_after"] == 1.0
            assert listed.value.code == UNAVAILABLE and listed.value.data == {"retry_after": 1.0}
            await _ready(hub)
            with anyio.fail_after(RECOVERY_SECONDS):
                while (after := await http.post("/api/v1/discoveries", json=_discovery(0, 3))).status_code != 201:
                    assert after.status_code == 503, after.text
                    await anyio.sleep(0.2)
        # The frozen server ran what it had received once it thawed, or not: each discovery is whole, at most once.
        contents = [json.loads(line)["content"] for line in (await _export_text(hub, token)).splitlines()]
        assert sorted(set(contents)) == sorted(contents)
        assert {"w0-0", "w0-3"} <= set(contents) <= {"w0-0", "w0-1", "w0-2", "w0-3"}
        assert hub.stop() == 0
        assert "Traceback" not in hub.errors()


async def _export_text(hub: Served, token: str) -> str:
    async with httpx2.AsyncClient(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        r = await http.get("/api/v1/discoveries/export")
    assert r.status_code == 200, r.text
    return r.text
