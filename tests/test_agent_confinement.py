"""Least privilege for agent processes, checked from inside real `command` agents: their environment, their user,
their resource limits, and what the operating system refuses them. The tests run as root (here and in CI), so the
agents run as users of their own; forked from the fork server and started from scratch alike."""

import os
import resource
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent_pool.confinement import HOMES_DIR, LOGS_DIR
from mcp_server.app import OPERATOR_TOKEN_FILE
from tests.agents_helpers import FAST_POLICY, eventually, scripted, wait_for
from tests.conftest import HubFactory, RunningHub

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="agents switch users only when the hub runs as root")

KEY = "sk-ant-test-not-for-commands"
HUB_SECRET = "AGENTHUB_TEST_HUB_SECRET"
LIMITS = {"memory_bytes": 6 << 30, "cpu_seconds": 900, "open_files": 200, "processes": 64}


@pytest.fixture(params=[True, False], ids=["forked", "cold"])
async def root_hub(request: pytest.FixtureRequest, hub_factory: HubFactory,
                   monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RunningHub]:
    monkeypatch.setenv(HUB_SECRET, "the hub's environment is not the agents'")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nor is this")
    settings = hub_factory.settings(anthropic_api_key=KEY, agents={"fork_server": request.param})
    async with hub_factory.run(settings) as running:
        yield running


def probe_script(reads: dict[str, Path]) -> str:
    """A shell script that reports, one `name=value` per line, what the agent is and what it may read: for each
    of `reads`, `readable` or the error (`ls` for directories, `cat` for files)."""
    lines = [
        'echo "uid=$(id -u)"; echo "gid=$(id -g)"; echo "groups=$(id -G)"; echo "home=$HOME"; echo "cwd=$(pwd)"',
        "echo \"env=$(env | sed 's/=.*//' | sort | tr '\\n' ' ')\"",
        # Soft and hard: the agent cannot raise its limits either.
        'echo "memory=$(ulimit -v) $(ulimit -Hv)"; echo "cpu=$(ulimit -t) $(ulimit -Ht)"',
        'echo "files=$(ulimit -n) $(ulimit -Hn)"; echo "processes=$(ulimit -p) $(ulimit -Hp)"',
        'echo x > "$HOME/mine" && echo "home_writable=yes"',
    ]
    for name, path in reads.items():
        command = "ls" if path.is_dir() else "cat"
        lines.append(f"if {command} '{path}' >/dev/null 2>&1; then echo '{name}=readable'; "
                     f"else echo \"{name}=$({command} '{path}' 2>&1 >/dev/null | sed 's/.*: //')\"; fi")
    return "\n".join(lines)


async def output_of(hub: RunningHub, agent_id: str) -> str:
    """What the agent's command printed (the discovery it shared)."""
    found: list[dict[str, Any]] = []

    async def shared() -> bool:
        async with hub.http() as http:
            found[:] = (await http.get("/api/v1/discoveries", params={"agent_id": agent_id})).json()["items"]
        return bool(found)

    await eventually(shared, 60, f"{agent_id}'s output")
    return str(found[0]["content"])


async def report_of(hub: RunningHub, agent_id: str) -> dict[str, str]:
    return dict(line.partition("=")[::2] for line in (await output_of(hub, agent_id)).splitlines())


async def spawn_command(hub: RunningHub, agent_id: str, script: str, **extra: Any) -> None:
    async with hub.http() as http:
        r = await http.post("/api/v1/agents", json={
            "agent_id": agent_id, "role": "prober", "executor": "command", "restart_policy": FAST_POLICY,
            "executor_config": {"argv": ["/bin/sh", "-c", script], "prompt": "go", **extra.pop("config", {})},
            **extra})
        assert r.status_code == 201, r.text


async def test_a_command_agent_runs_as_its_own_user_with_its_limits_and_cannot_read_the_hubs_secrets(
        root_hub: RunningHub) -> None:
    async with root_hub.http() as http:
        r = await http.post("/api/v1/agents", json=scripted("neighbour"))
        assert r.status_code == 201, r.text
        neighbour = await wait_for(http, "neighbour", "idle", "running")
    data_dir = root_hub.data_dir.absolute()
    reads = {
        "operator_token": data_dir / OPERATOR_TOKEN_FILE,
        "postgres_file": Path(await root_hub.state.pool.fetchval("SHOW data_directory")) / "PG_VERSION",
        "neighbour_log": data_dir / LOGS_DIR / "neighbour.log",
        "neighbour_home": data_dir / HOMES_DIR / "neighbour",
        "neighbour_environ": Path(f"/proc/{neighbour['pid']}/environ"),  # its token
        "data_dir": data_dir,
    }
    for path in reads.values():
        assert path.exists(), path  # what is refused is there: the test would pass on a typo otherwise
    await spawn_command(root_hub, "nosy", probe_script(reads), limits=LIMITS)
    report = await report_of(root_hub, "nosy")

    settings = root_hub.state.settings.agents
    uid = int(report["uid"])
    assert settings.uid_base <= uid < settings.uid_base + settings.uid_count, report
    assert report["gid"] == report["groups"] == report["uid"], report  # no supplementary groups
    home = data_dir / HOMES_DIR / "nosy"
    assert (report["home"], report["cwd"], report["home_writable"]) == (str(home), str(home), "yes"), report
    assert home.stat().st_uid == uid and (home.stat().st_mode & 0o777) == 0o700
    names = set(report["env"].split())
    assert {"HOME", "PATH"} <= names, names
    hub_only = names - {"HOME", "PATH", "LANG", "LANGUAGE", "TZ", "PYTHONPATH", "PWD", "OLDPWD", "SHLVL", "_"}
    assert {name for name in hub_only if not name.startswith("LC_")} == set(), names
    assert (report["memory"], report["cpu"], report["files"], report["processes"]) == (
        f"{LIMITS['memory_bytes'] // 1024} {LIMITS['memory_bytes'] // 1024}",
        f"{LIMITS['cpu_seconds']} {LIMITS['cpu_seconds']}", f"{LIMITS['open_files']} {LIMITS['open_files']}",
        f"{LIMITS['processes']} {LIMITS['processes']}"), report
    refused = {name: report[name] for name in reads}
    assert refused == dict.fromkeys(reads, "Permission denied"), refused


async def test_the_anthropic_key_reaches_a_command_agent_only_when_its_configuration_passes_it_on(
        root_hub: RunningHub) -> None:
    script = 'echo "key=${ANTHROPIC_API_KEY:-none}"'
    await spawn_command(root_hub, "keyless", script)
    await spawn_command(root_hub, "keyed", script, config={"pass_anthropic_key": True})
    assert (await report_of(root_hub, "keyless"))["key"] == "none"
    assert (await report_of(root_hub, "keyed"))["key"] == KEY


async def test_the_hubs_default_limits_apply_when_the_spawn_request_sets_none(hub_factory: HubFactory) -> None:
    settings = hub_factory.settings(agents={"open_files": 300, "cpu_seconds": 1200})
    async with hub_factory.run(settings) as hub:
        await spawn_command(hub, "plain", "ulimit -n; ulimit -t; ulimit -v")
        lines = (await output_of(hub, "plain")).splitlines()
    assert lines == ["300", "1200", str(settings.agents.memory_bytes // 1024)]
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] != 300  # the hub's own limits are untouched
