"""The agent process: `python -m agent_pool.worker`, started by the hub's supervisor.

Its configuration comes as JSON in `AGENTHUB_WORKER`, its own agent token in `AGENTHUB_AGENT_TOKEN` and its own
NATS login in `AGENTHUB_NATS_LOGIN` (not in the arguments, which any local user can read). Exit codes: 0 after
SIGTERM or SIGINT (a requested stop), 78 (EX_CONFIG) for a configuration it cannot run, 1 for a crash; the
supervisor restarts crashes. Before it runs the agent it confines itself (`agent_pool.confinement.confine`: its
limits, its home, and as root its own unprivileged user).
"""

import importlib
import json
import logging
import os
import signal
import sys

import anyio
from pydantic import ValidationError

from agent_pool.confinement import confine, import_through_descriptors
from agent_pool.models import WorkerConfig
from agenthub.nats_auth import NATS_LOGIN_ENV, NatsLogin

logger = logging.getLogger("agent_pool.worker")

# What the fork server imports once for every process it forks (a worker started from scratch imports the same
# before it confines itself): the runtime (MCP SDK, NATS, HTTP), the executors, httpx2's transport (with trio,
# 0.16 s of CPU) and anyio's asyncio backend.
MODULES = ("agent_pool.runtime", "agent_pool.executors.scripted", "agent_pool.executors.command",
           "agent_pool.executors.claude", "agent_pool.executors.wasm", "httpcore2", "anyio._backends._asyncio")

EX_CONFIG = 78


def prepare() -> None:
    """Run once by the fork server, before it forks workers: as root (agents then run as users of their own),
    the import paths every worker would otherwise point at descriptors itself (`confine`)."""
    if os.geteuid() == 0:
        import_through_descriptors()


def _exit_code(exc: BaseException) -> int | None:
    """The exit code a SystemExit inside (possibly nested) exception groups asks for."""
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else 1
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            code = _exit_code(inner)
            if code is not None:
                return code
    return None


async def _main(config: WorkerConfig, token: str, nats_login: NatsLogin) -> None:
    # Imported here: the executors and the MCP client are most of the start-up time; parse the config first.
    from agent_pool.executors import build_executor
    from agent_pool.runtime import Runtime

    executor = build_executor(config)
    runtime = Runtime(config, token, nats_login)
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    logger.info("received %s; stopping", signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        try:
            async with runtime.connect():
                await runtime.run(executor)
        except Exception as exc:  # a crash: tell the hub why before the supervisor sees the exit
            await runtime.report_error("fatal", f"{type(exc).__name__}: {exc}")
            raise
        tg.cancel_scope.cancel()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s agent[{os.getpid()}] %(levelname)s %(message)s")
    try:
        config = WorkerConfig.model_validate_json(os.environ.get("AGENTHUB_WORKER", ""))
    except ValidationError as exc:
        print(f"agent worker: bad AGENTHUB_WORKER configuration: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    token = os.environ.pop("AGENTHUB_AGENT_TOKEN", "")
    if not token:
        print("agent worker: AGENTHUB_AGENT_TOKEN is not set", file=sys.stderr)
        raise SystemExit(EX_CONFIG)
    try:
        nats_login = NatsLogin(**json.loads(os.environ.pop(NATS_LOGIN_ENV, "{}")))
    except (ValueError, TypeError) as exc:
        print(f"agent worker: bad {NATS_LOGIN_ENV}: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    if config.confinement is not None:
        for name in MODULES:
            importlib.import_module(name)
        try:
            confine(config.confinement)
        except OSError as exc:
            print(f"agent worker: cannot confine the process: {exc}", file=sys.stderr)
            raise SystemExit(EX_CONFIG) from None
    try:
        anyio.run(_main, config, token, nats_login)
    except BaseException as exc:
        code = _exit_code(exc)
        if code is None:
            raise
        raise SystemExit(code) from None


if __name__ == "__main__":
    main()
