"""The `command` executor: any command-line agent, run once per work item.

Contract:

* Work: `begin` runs `config.prompt` (the runtime calls it once per agent, not again after a restart that finds
  the initial work shared, tagged `INITIAL_TAG`); `answer` runs the text of each question routed to the agent.
* Prompt: written to stdin (`prompt_via="stdin"`, then stdin is closed), or (`"argument"`) substituted for every
  `{prompt}` in the arguments, or appended as the last argument when none has `{prompt}`. No shell is involved.
* Process: `config.argv` runs in a process group of its own; when the work item ends (for any reason) whatever is
  left of the group is SIGKILLed, so nothing the command spawned outlives it. It gets the agent process's
  environment (`agent_pool.confinement`: `PATH`, `HOME`, the locale; `ANTHROPIC_API_KEY` only with
  `pass_anthropic_key`) without its `AGENTHUB_*` variables (the agent's credentials), and runs as the agent's user
  with its limits.
* Limits: past `config.timeout_seconds` the group is killed and `TransientAgentError` raised; stdout beyond
  `config.max_output_bytes` kills it with `LogicalAgentError`. The tail of stderr goes into error messages.
* Exit: a command that cannot be started (missing, not executable) is a `LogicalAgentError`; a non-zero exit is a
  `TransientAgentError` carrying the exit code (or signal) and the stderr tail.
* Output (UTF-8), shared as this agent's discovery:
    - a JSON object with `content` (a string) becomes that discovery; it may set `discovery_type`, `confidence`
      and `tags`; an object with `content` that breaks these rules is a `LogicalAgentError` (the command does
      not follow its contract; running it again would not help); blank `content` shares nothing;
    - Claude Code's print-mode JSON (`{"type": "result", "result": "..."}`) is shared as its `result`;
    - a JSON string is shared as the string; any other JSON as its compact JSON text;
    - anything else as the stripped text; empty output shares nothing.
  Defaults: `insight` tagged `INITIAL_TAG` for `begin` (the tag is always added), `solution` related to the
  question for `answer`; confidence 0.7.
"""

import errno
import json
import logging
import os
import signal
import subprocess
from dataclasses import dataclass, field
from typing import Annotated

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent_pool.executors import PromptExecutor
from agent_pool.models import CommandConfig
from agent_pool.runtime import INITIAL_TAG, Runtime
from agenthub.errors import LogicalAgentError, TransientAgentError
from collaboration.models import DiscoveryTypeField, RoutedQuestion, ShortText, Unit, validation_errors

logger = logging.getLogger(__name__)

PROMPT = "{prompt}"
CONFIDENCE = 0.7
_MAX_TAGS = 20  # the hub's limit on a discovery's tags
_STDERR_TAIL = 2000
_CHUNK = 65_536
_KILL_WAIT = 10.0  # SIGKILL ends a process promptly; this only guards against one stuck in the kernel
_HUB_ENV_PREFIX = "AGENTHUB_"
_NOT_RUNNABLE = frozenset({errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR, errno.EISDIR, errno.EPERM})


class CommandOutput(BaseModel):
    """A JSON object a command prints to choose its discovery; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    content: str
    discovery_type: DiscoveryTypeField | None = None
    confidence: Unit | None = None
    tags: Annotated[list[ShortText], Field(max_length=_MAX_TAGS)] = Field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """What a command's output asks to share."""

    content: str
    discovery_type: str | None = None
    confidence: float | None = None
    tags: list[str] = field(default_factory=list)


def command_line(config: CommandConfig, prompt: str) -> list[str]:
    """The arguments to run for `prompt`."""
    if config.prompt_via == "stdin":
        return list(config.argv)
    if not any(PROMPT in arg for arg in config.argv):
        return [*config.argv, prompt]
    return [arg.replace(PROMPT, prompt) for arg in config.argv]


def parse_output(stdout: bytes) -> Finding | None:
    """What to share for a command's standard output; None for empty output."""
    text = stdout.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return Finding(content=text)
    if isinstance(value, dict) and "content" in value:
        try:
            out = CommandOutput.model_validate(value)
        except ValidationError as exc:
            details = "; ".join(f"{loc}: {msg}" for loc, msg, _ in validation_errors(exc))
            raise LogicalAgentError(f"the command printed a discovery object the hub cannot take: {details}") from exc
        if not out.content.strip():
            return None
        return Finding(content=out.content, discovery_type=out.discovery_type, confidence=out.confidence,
                       tags=out.tags)
    if isinstance(value, dict) and value.get("type") == "result" and isinstance(value.get("result"), str):
        value = value["result"]  # Claude Code's `--output-format json`: the answer is its `result`
    if isinstance(value, str):
        return Finding(content=value) if value.strip() else None
    return Finding(content=json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def command_env() -> dict[str, str]:
    """The command's environment: this process's, without the hub's settings."""
    return {name: value for name, value in os.environ.items() if not name.startswith(_HUB_ENV_PREFIX)}


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


async def _feed(stream: ByteSendStream, data: bytes) -> None:
    async with stream:
        try:
            await stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the command exited or closed stdin without reading it all: its exit status tells


async def _keep_tail(stream: ByteReceiveStream, tail: bytearray) -> None:
    async for chunk in stream:
        tail.extend(chunk)
        del tail[:-_STDERR_TAIL]


async def _read_bounded(stream: ByteReceiveStream, out: bytearray, limit: int) -> bool:
    """Read `stream` to its end into `out`; False as soon as it holds more than `limit` bytes."""
    async for chunk in stream:
        out.extend(chunk)
        if len(out) > limit:
            return False
    return True


class CommandExecutor(PromptExecutor):
    def __init__(self, config: CommandConfig) -> None:
        super().__init__(config.prompt)
        self.config = config

    async def begin(self, rt: Runtime) -> None:
        if self.prompt is None:
            return
        logger.info("agent %s: initial command started", rt.agent_id)
        finding = parse_output(await self.run(self.prompt))
        if finding is None:
            logger.info("agent %s: the initial command printed nothing to share", rt.agent_id)
            return
        tags = finding.tags if INITIAL_TAG in finding.tags else [INITIAL_TAG, *finding.tags][:_MAX_TAGS]
        await rt.share(finding.discovery_type or "insight", finding.content,
                       confidence=CONFIDENCE if finding.confidence is None else finding.confidence, tags=tags)

    async def answer(self, rt: Runtime, question: RoutedQuestion) -> None:
        logger.info("agent %s: running the command for question %s", rt.agent_id, question.discovery_id)
        finding = parse_output(await self.run(question.question))
        if finding is None:
            logger.info("agent %s: the command printed nothing for question %s", rt.agent_id, question.discovery_id)
            return
        await rt.share(finding.discovery_type or "solution", finding.content,
                       confidence=CONFIDENCE if finding.confidence is None else finding.confidence,
                       related_to=question.discovery_id, tags=finding.tags)

    async def run(self, prompt: str) -> bytes:
        """Run the command for `prompt` and return its standard output.

        Raises:
            LogicalAgentError: the command cannot be started, or printed more than `max_output_bytes`.
            TransientAgentError: it ran past `timeout_seconds` or exited non-zero.
        """
        argv = command_line(self.config, prompt)
        name = argv[0]
        via_stdin = self.config.prompt_via == "stdin"
        try:
            process = await anyio.open_process(argv, stdin=subprocess.PIPE if via_stdin else subprocess.DEVNULL,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                               env=command_env(), start_new_session=True)
        except OSError as exc:
            if exc.errno in _NOT_RUNNABLE:
                raise LogicalAgentError(f"cannot run {name!r}: {exc.strerror}") from exc
            raise TransientAgentError(f"cannot start {name!r}: {exc}") from exc
        stdout, stderr = bytearray(), bytearray()
        fits = True
        async with process:  # closing waits for the process to end (killing it when cancelled)
            assert process.stdout is not None and process.stderr is not None
            try:
                with anyio.move_on_after(self.config.timeout_seconds) as deadline:
                    async with anyio.create_task_group() as tg:
                        if process.stdin is not None:
                            tg.start_soon(_feed, process.stdin, prompt.encode())
                        tg.start_soon(_keep_tail, process.stderr, stderr)
                        fits = await _read_bounded(process.stdout, stdout, self.config.max_output_bytes)
                        if not fits:
                            tg.cancel_scope.cancel()
                        else:
                            await process.wait()
            finally:
                _kill_group(process.pid)
                with anyio.CancelScope(shield=True), anyio.move_on_after(_KILL_WAIT):
                    await process.wait()
        if not fits:
            raise LogicalAgentError(f"{name}: output larger than {self.config.max_output_bytes} bytes; killed")
        if deadline.cancelled_caught:
            raise TransientAgentError(f"{name}: no result within {self.config.timeout_seconds} s; killed")
        code = process.returncode
        if code != 0:
            how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
            tail = stderr.decode("utf-8", errors="replace").strip()
            raise TransientAgentError(f"{name} failed ({how})" + (f": {tail}" if tail else ""))
        return bytes(stdout)
