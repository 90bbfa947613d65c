"""A bus outage is not an agent failure: `agenthub serve` with its own embedded NATS and 20 agents on 1 s
heartbeats; the nats-server is frozen (SIGSTOP) for 30 s. The hub says on /ready and in the dashboard's snapshot
that it does not judge heartbeats, kills no agent, and judges them again once the bus is back: an agent frozen
afterwards is killed and restarted."""

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx2

from tests.agents_helpers import scripted
from tests.served import child_pids, clean_env, serving

AGENTS = 20
PAUSE_SECONDS = 30
WORKING = ("running", "idle", "busy")
T = TypeVar("T")


def until(check: Callable[[], T | None], seconds: float, what: str) -> T:
    """Poll `check` every 0.2 s until it returns something other than None (or False); fail after `seconds`."""
    deadline = time.monotonic() + seconds
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached within {seconds} s (last: {last!r})")


@contextmanager
def frozen(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) while the block runs, and continued afterwards whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:  # killed while frozen (an agent the hub judged): nothing left stopped
            pass


def agents(http: httpx2.Client) -> dict[str, dict[str, Any]]:
    r = http.get("/api/v1/agents")
    assert r.status_code == 200, r.text
    return {a["agent_id"]: a for a in r.json()["agents"]}


def heartbeat_failures(http: httpx2.Client) -> float:
    found = re.search(r'^agenthub_agent_failures_total\{reason="heartbeat"\} (\S+)$', http.get("/metrics").text,
                      re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def beat_time(agent: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(agent["last_heartbeat"])


def test_a_30_s_nats_pause_with_20_agents_kills_none_and_heartbeats_are_judged_again_after_it(workdir: Path) -> None:
    data_dir = workdir / "data"
    env = clean_env(AGENTHUB_AGENTS__HEARTBEAT_SECONDS="1")
    with serving(data_dir, workdir / "logs", env=env) as hub:
        token = (data_dir / "operator-token").read_text().strip()
        with httpx2.Client(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as http:
            ids = [f"agent-{i:02d}" for i in range(AGENTS)]
            for agent_id in ids:
                r = http.post("/api/v1/agents", json=scripted(agent_id))
                assert r.status_code == 201, r.text

            def all_working() -> dict[str, dict[str, Any]] | None:
                now = agents(http)
                return now if all(now[a]["state"] in WORKING and now[a]["last_heartbeat"] for a in ids) else None

            before = until(all_working, 120, f"{AGENTS} agents announced and beating")
            assert http.get("/ready").json()["heartbeats"] == "judged"

            nats_pid = child_pids(data_dir)[0]
            said: set[str] = set()
            with frozen(nats_pid):
                paused_at = time.monotonic()

                def suspended() -> str | None:
                    heartbeats: str = http.get("/ready").json()["heartbeats"]
                    return heartbeats if heartbeats.startswith("suspended") else None

                said.add(until(suspended, 15, "/ready saying heartbeats are suspended"))
                assert http.get("/metrics/system").json()["heartbeats"].startswith("suspended: ")  # the dashboard's
                while time.monotonic() - paused_at < PAUSE_SECONDS:  # the outage itself; it must stay suspended
                    said.add(http.get("/ready").json()["heartbeats"])
                    time.sleep(0.5)
            assert len(said) == 1, said
            assert "the hub cannot reach NATS" in said.pop()

            def judged_again() -> bool:
                r = http.get("/ready")
                return r.status_code == 200 and r.json()["heartbeats"] == "judged"

            until(judged_again, 60, "/ready 200 with heartbeats judged again")
            resumed = agents(http)
            for agent_id in ids:
                assert resumed[agent_id]["state"] in WORKING, resumed[agent_id]
                assert (resumed[agent_id]["pid"], resumed[agent_id]["restarts"]) == (before[agent_id]["pid"], 0), (
                    f"{agent_id} was restarted: {resumed[agent_id]['recent_events']}")
            assert heartbeat_failures(http) == 0

            def all_beat_again() -> bool:
                now = agents(http)
                return all(beat_time(now[a]) > beat_time(resumed[a]) for a in ids)

            until(all_beat_again, 15, "every agent beating again after the outage")

            victim = before[ids[0]]
            with frozen(victim["pid"]):
                def replaced() -> dict[str, Any] | None:
                    agent = agents(http)[victim["agent_id"]]
                    return agent if agent["pid"] not in (None, victim["pid"]) and agent["state"] in WORKING else None

                back = until(replaced, 30, "the frozen agent killed for its silence and restarted")
            assert back["restarts"] == 1
            detail = http.get(f"/api/v1/agents/{victim['agent_id']}").json()["recent_events"]
            assert any(e["kind"] == "heartbeat_lost" for e in detail), detail
            assert heartbeat_failures(http) == 1
            others = agents(http)
            assert [a for a in ids[1:] if others[a]["pid"] != before[a]["pid"]] == []
        assert hub.stop() == 0
