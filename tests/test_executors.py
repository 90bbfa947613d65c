"""The claude and command executors, driven through a real `Runtime` connected to a real hub; the claude executor
talks to a fake Messages API (`tests/messages_api.py`), the command executor runs small Python scripts."""

import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from agent_pool.executors.claude import ClaudeExecutor
from agent_pool.executors.command import CommandExecutor, Finding, parse_output
from agent_pool.models import ClaudeConfig, CommandConfig, Executor, WorkerConfig
from agent_pool.runtime import INITIAL_TAG, Runtime
from agenthub.auth import Role
from agenthub.errors import LogicalAgentError, TransientAgentError
from collaboration.models import RoutedQuestion
from supervisor.breaker import BreakerState
from supervisor.policy import Backoff
from tests.conftest import RunningHub
from tests.messages_api import (
    HANG,
    OVERLOADED,
    UNAUTHORIZED,
    MessagesApi,
    message,
    running_messages_api,
    text,
    tool_use,
)

AGENT = "agent-7"
ROLE = "Analyst"
KEY = "sk-ant-test-0123456789"
FAST = Backoff(initial=0.01, maximum=0.05, jitter=0.0)
PY = sys.executable


@asynccontextmanager
async def runtime(hub: RunningHub, executor: Executor, config: dict[str, Any]) -> AsyncIterator[Runtime]:
    """A runtime for agent `AGENT`, connected to the hub as that agent."""
    worker = WorkerConfig(agent_id=AGENT, instance="test", role=ROLE, capabilities=["logs", "sql"], executor=executor,
                          executor_config=config, hub_url=hub.url, nats_url=hub.state.settings.nats_url,
                          subject_prefix=hub.state.settings.nats_subject_prefix, heartbeat_seconds=10)
    login = await hub.state.agents.credentials.issue(AGENT, worker.instance)
    async with Runtime(worker, await hub.token(Role.AGENT, AGENT), login).connect() as rt:
        yield rt


async def ask(hub: RunningHub, question: str) -> RoutedQuestion:
    """Share a question as another agent, and route it as the orchestrator would."""
    async with hub.http() as http:
        r = await http.post("/api/v1/discoveries", json={"agent_id": "asker", "agent_role": "Lead",
                                                          "discovery_type": "question", "content": question,
                                                          "confidence": 0.5})
    assert r.status_code == 201, r.text
    return RoutedQuestion(discovery_id=r.json()["discovery_id"], question=question, from_agent="asker", depth=0,
                          tags=[])


async def discoveries_of(hub: RunningHub, agent_id: str = AGENT) -> list[dict[str, Any]]:
    async with hub.http() as http:
        r = await http.get("/api/v1/discoveries", params={"agent_id": agent_id})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def dead(pid: int) -> bool:
    """No such process, or only a zombie (the killed grandchild is reparented to init, which reaps it when it
    gets to it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def tool_results(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of the last (user) message of a request."""
    last = request["messages"][-1]
    assert last["role"] == "user"
    return [block for block in last["content"] if block["type"] == "tool_result"]


# -- claude ----------------------------------------------------------------------------------------------------------


@pytest.fixture
async def messages_api(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MessagesApi]:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    async with running_messages_api() as api:
        yield api


def claude(api: MessagesApi, **config: Any) -> dict[str, Any]:
    return {"base_url": api.url, "model": "claude-test", "max_tokens": 300, **config}


async def test_claude_runs_the_tools_the_model_asks_for_and_shares_its_answer_linked_to_the_question(
        hub: RunningHub, messages_api: MessagesApi) -> None:
    question = await ask(hub, "Why are the nightly reports slow?")
    context, shared, bad = (tool_use("get_context", {"agent_id": AGENT}),
                            tool_use("share_discovery", {"agent_id": AGENT, "agent_role": ROLE,
                                                         "discovery_type": "pattern", "confidence": 0.6,
                                                         "content": "reports scan the whole table"}),
                            tool_use("share_discovery", {"agent_id": AGENT, "agent_role": ROLE,
                                                         "discovery_type": "pattern", "confidence": 7,
                                                         "content": "too sure"}))
    messages_api.script(message(text("Let me look."), context, shared, stop_reason="tool_use"),
                        message(bad, stop_reason="tool_use"),
                        message(text("Add an index on reports.day."), stop_reason="end_turn"))
    config = claude(messages_api, system="Be brief.")
    executor = ClaudeExecutor(ClaudeConfig.model_validate(config), backoff=FAST)
    async with runtime(hub, "claude", config) as rt:
        with anyio.fail_after(30):
            await executor.answer(rt, question)

    first, second, third = messages_api.requests
    assert messages_api.unused == 0 and messages_api.api_keys == [KEY] * 3
    offered = {tool["name"]: tool for tool in first["tools"]}
    assert {"share_discovery", "get_context", "poll_discoveries"} <= set(offered)
    assert "spawn_agent" not in offered  # an agent token sees the agent tools only
    assert offered["share_discovery"]["input_schema"]["properties"]["confidence"]
    assert (first["model"], first["max_tokens"]) == ("claude-test", 300)
    assert all(part in first["system"] for part in (AGENT, ROLE, "logs, sql", "share_discovery", "Be brief."))
    assert question.question in first["messages"][0]["content"]

    assert second["messages"][1]["role"] == "assistant"  # the model's own turn is sent back with its tool calls
    assert [b["type"] for b in second["messages"][1]["content"]] == ["text", "tool_use", "tool_use"]
    got_context, got_shared = tool_results(second)
    assert (got_context["tool_use_id"], got_context["is_error"]) == (context["id"], False)
    assert "items" in json.loads(got_context["content"][0]["text"])
    assert (got_shared["tool_use_id"], got_shared["is_error"]) == (shared["id"], False)
    assert json.loads(got_shared["content"][0]["text"])["discovery_id"].startswith("disc")
    (rejected,) = tool_results(third)
    assert (rejected["tool_use_id"], rejected["is_error"]) == (bad["id"], True)
    assert "confidence" in rejected["content"][0]["text"]

    found = {d["discovery_type"]: d for d in await discoveries_of(hub)}
    assert set(found) == {"pattern", "solution"}
    assert found["pattern"]["content"] == "reports scan the whole table"
    answer = found["solution"]
    assert (answer["content"], answer["related_to"], answer["agent_role"]) == (
        "Add an index on reports.day.", question.discovery_id, ROLE)


async def test_claude_shares_its_initial_work_once_as_a_tagged_insight(
        hub: RunningHub, messages_api: MessagesApi) -> None:
    messages_api.script(message(text("  Three services share one database.  ")))
    config = claude(messages_api, prompt="Map the system.")
    async with runtime(hub, "claude", config) as rt:
        with anyio.fail_after(30):
            await rt.initial_work(ClaudeExecutor(ClaudeConfig.model_validate(config)))
            await rt.initial_work(ClaudeExecutor(ClaudeConfig.model_validate(config)))  # a restarted agent

    assert len(messages_api.requests) == 1
    assert messages_api.requests[0]["messages"] == [{"role": "user", "content": "Map the system."}]
    (shared,) = await discoveries_of(hub)
    assert (shared["discovery_type"], shared["content"], shared["tags"]) == (
        "insight", "Three services share one database.", [INITIAL_TAG])


async def test_claude_retries_an_overloaded_api_and_then_succeeds(
        hub: RunningHub, messages_api: MessagesApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    question = await ask(hub, "Is the cache warm?")
    messages_api.script(OVERLOADED, OVERLOADED, message(text("Yes.")))
    config = claude(messages_api)
    executor = ClaudeExecutor(ClaudeConfig.model_validate(config), backoff=FAST)
    async with runtime(hub, "claude", config) as rt:
        with anyio.fail_after(30):
            await executor.answer(rt, question)

    assert len(messages_api.requests) == 3
    assert (executor.breaker.state, executor.breaker.fail_counter) == (BreakerState.CLOSED, 0)
    assert [d["content"] for d in await discoveries_of(hub)] == ["Yes."]
    assert "529" in caplog.text and KEY not in caplog.text


async def test_claude_treats_a_rejected_key_as_a_logical_error_without_retrying(
        hub: RunningHub, messages_api: MessagesApi) -> None:
    question = await ask(hub, "Anything?")
    messages_api.script(UNAUTHORIZED, message(text("never sent")))
    config = claude(messages_api)
    executor = ClaudeExecutor(ClaudeConfig.model_validate(config), backoff=FAST)
    async with runtime(hub, "claude", config) as rt:
        with anyio.fail_after(30), pytest.raises(LogicalAgentError, match="401.*invalid x-api-key"):
            await executor.answer(rt, question)

    assert len(messages_api.requests) == 1
    assert executor.breaker.fail_counter == 0  # a rejected request says nothing about the API's health
    assert await discoveries_of(hub) == []


async def test_claude_call_timeouts_open_the_breaker_which_then_fails_fast(
        hub: RunningHub, messages_api: MessagesApi) -> None:
    question = await ask(hub, "Hello?")
    messages_api.script(*[HANG] * 10)
    config = claude(messages_api, call_timeout_seconds=0.2)
    executor = ClaudeExecutor(ClaudeConfig.model_validate(config), backoff=FAST, attempts=10)
    async with runtime(hub, "claude", config) as rt:
        with anyio.fail_after(30), pytest.raises(TransientAgentError, match="breaker 'anthropic' is open"):
            await executor.answer(rt, question)
        assert len(messages_api.requests) == 5  # fail_max timeouts, then the open breaker ended the retries
        assert executor.breaker.state is BreakerState.OPEN

        with pytest.raises(TransientAgentError, match="breaker 'anthropic' is open") as refused:
            await executor.answer(rt, question)
        assert len(messages_api.requests) == 5  # failing fast: the API was not called again
        # The runtime's retry waits this long, so a question is not dropped before the breaker lets a trial through.
        assert refused.value.retry_after is not None and 0 < refused.value.retry_after <= 30
    assert len(messages_api.requests) == 5


async def test_claude_without_an_api_key_is_a_logical_error(
        hub: RunningHub, messages_api: MessagesApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    question = await ask(hub, "Hello?")
    config = claude(messages_api)
    async with runtime(hub, "claude", config) as rt:
        with anyio.fail_after(30), pytest.raises(LogicalAgentError, match="ANTHROPIC_API_KEY is not set"):
            await ClaudeExecutor(ClaudeConfig.model_validate(config)).answer(rt, question)
    assert messages_api.requests == []


# -- command ---------------------------------------------------------------------------------------------------------


def command(script: str, *args: str, **config: Any) -> dict[str, Any]:
    return {"argv": [PY, "-c", script, *args], **config}


async def run_answer(hub: RunningHub, config: dict[str, Any], question: RoutedQuestion) -> None:
    async with runtime(hub, "command", config) as rt:
        with anyio.fail_after(30):
            await CommandExecutor(CommandConfig.model_validate(config)).answer(rt, question)


async def test_command_json_object_output_becomes_the_discovery(hub: RunningHub) -> None:
    question = await ask(hub, "Where is the leak?")
    script = ("import json, sys; q = sys.stdin.read(); print(json.dumps({'content': 'leak: ' + q, "
              "'discovery_type': 'Anomaly', 'confidence': 0.9, 'tags': ['memory'], 'cost_usd': 0.01}))")
    await run_answer(hub, command(script), question)
    (shared,) = await discoveries_of(hub)
    assert (shared["discovery_type"], shared["content"], shared["confidence"], shared["tags"],
            shared["related_to"]) == ("anomaly", "leak: Where is the leak?", 0.9, ["memory"], question.discovery_id)


async def test_command_plain_text_output_is_shared_stripped_as_a_solution_and_the_command_gets_no_hub_settings(
        hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTHUB_DATABASE_URL", "postgresql://hub:secret@db/hub")
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    question = await ask(hub, "shout this")
    script = ("import os, sys; print('\\n  ' + sys.stdin.read().upper(), "
              "sorted(k for k in os.environ if k.startswith(('AGENTHUB_', 'ANTHROPIC_'))), '  \\n')")
    await run_answer(hub, command(script), question)
    (shared,) = await discoveries_of(hub)
    assert (shared["discovery_type"], shared["content"], shared["confidence"], shared["related_to"]) == (
        "solution", "SHOUT THIS ['ANTHROPIC_API_KEY']", 0.7, question.discovery_id)


@pytest.mark.parametrize(("args", "expected"), [
    (("--question={prompt}", "--again={prompt}"), "['--question=a b', '--again=a b']"),
    (("--flag",), "['--flag', 'a b']"),
], ids=["substituted", "appended"])
async def test_command_takes_the_prompt_as_an_argument(hub: RunningHub, args: tuple[str, ...], expected: str) -> None:
    question = await ask(hub, "a b")
    script = "import sys; assert sys.stdin.read() == ''; print(sys.argv[1:])"
    await run_answer(hub, command(script, *args, prompt_via="argument"), question)
    assert [d["content"] for d in await discoveries_of(hub)] == [expected]


async def test_command_begin_runs_the_configured_prompt_once(hub: RunningHub, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    script = f"import sys; open({str(runs)!r}, 'a').write('x'); print('first look at ' + sys.stdin.read())"
    config = command(script, prompt="the logs")
    async with runtime(hub, "command", config) as rt:
        with anyio.fail_after(30):
            await rt.initial_work(CommandExecutor(CommandConfig.model_validate(config)))
            await rt.initial_work(CommandExecutor(CommandConfig.model_validate(config)))  # a restarted agent
    assert runs.read_text() == "x"
    (shared,) = await discoveries_of(hub)
    assert (shared["discovery_type"], shared["content"], shared["tags"]) == (
        "insight", "first look at the logs", [INITIAL_TAG])


async def test_command_exiting_non_zero_is_transient_with_code_and_stderr_tail(hub: RunningHub) -> None:
    question = await ask(hub, "fail")
    script = "import sys; print('partial'); sys.stderr.write('x' * 5000 + 'database is locked'); sys.exit(3)"
    with pytest.raises(TransientAgentError, match=r"failed \(exit code 3\): x+database is locked$") as caught:
        await run_answer(hub, command(script), question)
    assert len(caught.value.message) < 2500
    assert await discoveries_of(hub) == []


async def test_command_past_its_deadline_is_killed_with_what_it_spawned(hub: RunningHub, tmp_path: Path) -> None:
    question = await ask(hub, "slow")
    pids = tmp_path / "pids"
    script = (f"import os, subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
              f"'import time; time.sleep(60)']); open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}'); "
              f"time.sleep(60)")
    # Stopped by its 1 s limit, not by its own end 60 s later (the bound only tells the two apart).
    with anyio.fail_after(30), pytest.raises(TransientAgentError, match=r"no result within 1.0 s; killed"):
        await run_answer(hub, command(script, timeout_seconds=1), question)
    for pid in map(int, pids.read_text().split()):
        with anyio.fail_after(5):
            while not dead(pid):  # noqa: ASYNC110 - another process's death offers nothing to wait on
                await anyio.sleep(0.02)


async def test_command_with_a_missing_executable_is_a_logical_error(hub: RunningHub, tmp_path: Path) -> None:
    question = await ask(hub, "anything")
    with pytest.raises(LogicalAgentError, match="cannot run .*no-such-agent.*No such file"):
        await run_answer(hub, {"argv": [str(tmp_path / "no-such-agent")]}, question)


async def test_command_printing_more_than_its_limit_is_killed_as_a_logical_error(hub: RunningHub) -> None:
    question = await ask(hub, "talk")
    script = "import sys, time; sys.stdout.write('y' * 5000); sys.stdout.flush(); time.sleep(60)"
    # Killed when it passed the limit, not read to its end 60 s later (the bound only tells the two apart).
    with anyio.fail_after(30), pytest.raises(LogicalAgentError, match="output larger than 4096 bytes"):
        await run_answer(hub, command(script, max_output_bytes=4096), question)
    assert await discoveries_of(hub) == []


@pytest.mark.parametrize(("stdout", "expected"), [
    (b"", None),
    (b"  \n", None),
    (b"  found it \n", Finding(content="found it")),
    (b'{"content": "c", "tags": ["a"]}', Finding(content="c", tags=["a"])),
    (b'{"content": "   "}', None),
    (b'{"result": "no content key",  "n": 1}', Finding(content='{"result":"no content key","n":1}')),
    (b'{"type": "result", "subtype": "success", "result": "from claude -p"}', Finding(content="from claude -p")),
    (b"[1, 2]", Finding(content="[1,2]")),
    (b'"a json string"', Finding(content="a json string")),
    (b"{not json", Finding(content="{not json")),
])
def test_command_output_parsing(stdout: bytes, expected: Finding | None) -> None:
    assert parse_output(stdout) == expected


@pytest.mark.parametrize("stdout", [b'{"content": 5}', b'{"content": "c", "discovery_type": "rumour"}',
                                    b'{"content": "c", "confidence": 1.5}'])
def test_command_output_with_a_malformed_discovery_object_is_a_logical_error(stdout: bytes) -> None:
    with pytest.raises(LogicalAgentError, match="discovery object"):
        parse_output(stdout)
