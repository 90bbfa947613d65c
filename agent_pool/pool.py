"""The agent pool: spawns, stops and restarts agent processes under the supervision tree, follows them on NATS
and keeps the agents table true.

Supervision (OTP terms): the pool's `agents` supervisor (simple_one_for_one) has one child per agent, itself a
supervisor (`agent:{id}`, one_for_one, intensity = the agent's restart policy, auto_shutdown any_significant)
whose only child is the worker process. A crash restarts the process with backoff; more restarts than the policy
allows within its period make the agent's supervisor give up and escalate, and the agent is marked failed and
alerted. The agents supervisor runs under the hub's root supervisor with the pool's listener and heartbeat
watcher (`children`).

Failures (the MS-1 error flow): a crash or a lost heartbeat is fatal (the process is killed and restarted); a
transient error is the worker's to retry; a logical error stops the agent as failed, without restarts. Each
agent has a circuit breaker fed by its failures and its completed work: while it is open the agent gets no
routed questions and is not advertised in `agents.discovery.query` replies.

Starting processes (bursts, and a hub restart that brings back many agents): the supervisor gets a worker child at
once and its process is started in the background, so neither a spawn request nor a supervisor waits for it. A
process is forked from the fork server, which starts with the pool; until it is ready (at most `startup_seconds`)
a start waits for it rather than paying for the imports itself; without a ready fork server, it starts from
scratch. At most `max_fork_starts` forked and `max_cold_starts` cold processes start at once, each holding its
slot until it announces itself or ends, so that a burst never starves the hub or its own processes. The announce
deadline counts from the moment the process exists, never from the request or the wait for a slot.

Every agent belongs to the replica that spawned it (`owner`); only that replica starts, stops or watches its
process. On start, `reconcile` brings back this replica's agents that were running when it last stopped.
"""

import contextlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from anyio.abc import TaskGroup, TaskStatus
from nats.aio.msg import Msg
from pydantic import ValidationError

from agent_pool.confinement import Confinement, agent_environment, agent_uid, check_reachable, open_log, prepare_files
from agent_pool.credentials import AgentCredentials
from agent_pool.heartbeats import Judgement, Silence
from agent_pool.models import (
    AdvertisedAgent,
    AgentInfo,
    AgentList,
    AgentQuery,
    AgentQueryReply,
    AgentRef,
    Announce,
    ClaudeConfig,
    CommandConfig,
    ErrorEvent,
    Heartbeat,
    ListAgentsInput,
    Performance,
    SpawnAgentInput,
    WorkerConfig,
)
from agent_pool.processes import (
    WORKER_ARGV,
    WORKER_ENTRY,
    WORKER_PRELOAD,
    WORKER_PREPARE,
    LiveAgent,
    WorkerChild,
    kill_leftover,
)
from agent_pool.registry import AgentRegistry
from agent_pool.states import LIVE, AgentState, is_working
from agenthub.auth import Principal, Role, create_token
from agenthub.bus import Bus
from agenthub.database import DATABASE_ERRORS, log_failure
from agenthub.errors import (
    AgentNotFound,
    Conflict,
    IllegalTransition,
    InvalidInput,
    ServiceUnavailable,
    TooManyConnections,
)
from agenthub.ids import TokenId
from agenthub.metrics import HubMetrics
from agenthub.nats_auth import NATS_LOGIN_ENV, NatsLogin, NatsUsers
from agenthub.settings import AgentSettings, BudgetSettings
from agenthub.token_cache import announce_revoked
from collaboration.models import Discovery
from sandbox.models import CompileLimits
from supervisor import (
    INTENSITY_REACHED,
    Backoff,
    Breaker,
    BreakerState,
    ChildSpec,
    Exit,
    ExitKind,
    RestartType,
    Strategy,
    Supervisor,
    SupervisorEvent,
    should_restart,
    start_process,
    task_child,
)
from supervisor.forkserver import ForkServer
from supervisor.process import GroupLeader

logger = logging.getLogger(__name__)

_BUS_PROBE_SECONDS = 1.0  # how long the heartbeat watcher waits for its probe to come back through NATS

_QUERY_QUEUE_GROUP = "agenthub-agents"
class AgentPool:
    def __init__(self, *, pool: asyncpg.Pool, bus: Bus, metrics: HubMetrics, settings: AgentSettings, replica: str,
                 hub_url: str, nats_url: str, data_dir: Path, anthropic_api_key: str | None,
                 compile_limits: CompileLimits, nats_users: NatsUsers | None = None,
                 agent_nats_login: NatsLogin | None = None, budgets: BudgetSettings | None = None) -> None:
        self.registry = AgentRegistry(pool, bus)
        self.replica = replica
        self._pool = pool
        self._bus = bus
        self._metrics = metrics
        self._settings = settings
        self._hub_url = hub_url
        self._nats_url = nats_url
        self.credentials = AgentCredentials(prefix=bus.prefix, users=nats_users, shared=agent_nats_login)
        self._data_dir = data_dir
        self._log_dir = data_dir / "agents"
        self._uids: dict[str, int] = {}  # agent id -> the uid its processes run as (the hub as root)
        self._reachable: set[Path] = set()
        self._anthropic_api_key = anthropic_api_key
        self._compile_limits = compile_limits
        self._budgets = budgets or BudgetSettings()
        # Told each whole second of work time an agent's process reports (its Performance busy_seconds growing).
        self.on_work_seconds: Callable[[str, int], Awaitable[None]] | None = None
        self._live: dict[str, LiveAgent] = {}
        self.heartbeats = Judgement()  # whether silence is judged now (not while the bus is out)
        self._breakers: dict[str, Breaker] = {}
        self._breaker_views: dict[str, str] = {}
        self._ops: TaskGroup | None = None
        self.supervisor = Supervisor("agents", strategy=Strategy.SIMPLE_ONE_FOR_ONE, max_restarts=10, period=60)
        self.fork_server = (ForkServer(WORKER_PRELOAD, WORKER_ENTRY, prepare=WORKER_PREPARE,
                                       log=self._log_dir / "fork-server.log") if settings.fork_server else None)
        self._cold_starts = anyio.Semaphore(settings.max_cold_starts)
        self._fork_starts = anyio.Semaphore(settings.max_fork_starts)
        metrics.open_breakers.set_function(self.open_breakers)

    def children(self) -> list[ChildSpec]:
        """The pool's parts for the hub's root supervisor, in start order: the fork server first, so that it warms
        up while the hub starts (and `reconcile` runs), before any agent needs it."""
        fork_server = [ChildSpec(id="fork-server", start=task_child(self.fork_server.run))] if self.fork_server else []
        return [
            *fork_server,
            self.supervisor.as_child(),
            ChildSpec(id="agent-events", start=task_child(self._listen)),
            ChildSpec(id="heartbeat-watch", start=task_child(self._watch)),
        ]

    # -- operator actions ------------------------------------------------------------------------------------------

    async def spawn(self, who: Principal, req: SpawnAgentInput) -> AgentInfo:
        who.require_operator()
        self._check_runnable(req)
        if len(self._live) >= self._settings.max_agents:
            raise TooManyConnections(self._settings.max_agents)
        agent_id = req.agent_id or f"agent-{secrets.token_hex(4)}"
        await self.registry.create(req, agent_id, owner=self.replica,
                                   heartbeat_seconds=req.heartbeat_seconds or self._settings.heartbeat_seconds)
        await self._launch(agent_id)
        return await self.registry.get(agent_id, with_events=True)

    async def stop(self, who: Principal, ref: AgentRef) -> AgentInfo:
        who.require_operator()
        info = await self._owned(ref.agent_id)
        await self.registry.transition(ref.agent_id, AgentState.STOPPING, "stop requested", desired="stopped")
        await self._terminate(ref.agent_id)
        await self.registry.transition(ref.agent_id, AgentState.STOPPED, "stopped by the operator", pid=None)
        await self._revoke(info)
        return await self.registry.get(ref.agent_id, with_events=True)

    async def restart(self, who: Principal, ref: AgentRef) -> AgentInfo:
        who.require_operator()
        info = await self._owned(ref.agent_id)
        if info.state in LIVE or info.state is AgentState.CREATED:
            await self.registry.transition(ref.agent_id, AgentState.STOPPING, "restart requested")
            await self._terminate(ref.agent_id)
            await self.registry.transition(ref.agent_id, AgentState.STOPPED, "stopped for a restart", pid=None)
        elif info.state is AgentState.STOPPING:
            raise IllegalTransition(ref.agent_id, info.state.value, AgentState.STARTING.value)
        await self.registry.update(ref.agent_id, desired="running")
        self._breaker(ref.agent_id).record_success()  # an operator's restart is a fresh start
        await self._launch(ref.agent_id)
        return await self.registry.get(ref.agent_id, with_events=True)

    def open_breakers(self) -> int:
        """How many of this replica's agents have an open circuit breaker."""
        return sum(view == "open" for view in self._breaker_views.values())

    async def get(self, agent_id: str) -> AgentInfo:
        info = await self.registry.get(agent_id, with_events=True)
        live = self._live.get(agent_id)
        if live is not None:
            info.metrics = live.metrics
        return info

    async def list_agents(self, query: ListAgentsInput) -> AgentList:
        agents = await self.registry.find(query)
        for info in agents:
            live = self._live.get(info.agent_id)
            if live is not None:
                info.metrics = live.metrics
        return AgentList(agents=agents)

    def _check_runnable(self, req: SpawnAgentInput) -> None:
        """Refuse what could only fail later: a missing command, a claude agent without a key."""
        config = req.config()
        if isinstance(config, CommandConfig) and shutil.which(config.argv[0]) is None:
            raise InvalidInput(f"command not found: {config.argv[0]!r} (not an executable file, nor on PATH)")
        if isinstance(config, ClaudeConfig) and not self._anthropic_api_key:
            raise InvalidInput("a claude agent needs an Anthropic API key: start the hub with ANTHROPIC_API_KEY set")

    async def _owned(self, agent_id: str) -> AgentInfo:
        info = await self.registry.get(agent_id)
        if info.owner != self.replica:
            raise Conflict(f"agent {agent_id!r} is run by replica {info.owner!r}; send the request to that replica")
        return info

    # -- supervision -----------------------------------------------------------------------------------------------

    def _breaker(self, agent_id: str) -> Breaker:
        breaker = self._breakers.get(agent_id)
        if breaker is None:
            breaker = Breaker(f"agent:{agent_id}", fail_max=self._settings.breaker_fail_max,
                              reset_timeout=self._settings.breaker_reset_seconds)
            self._breakers[agent_id] = breaker
        return breaker

    @staticmethod
    def _view(breaker: Breaker) -> str:
        """The breaker as operators see it: an open breaker whose timeout passed is ready for a trial."""
        if breaker.state is BreakerState.OPEN and breaker.retry_after <= 0:
            return BreakerState.HALF_OPEN.value
        return breaker.state.value

    async def _sync_breaker(self, agent_id: str) -> None:
        view = self._view(self._breaker(agent_id))
        if self._breaker_views.get(agent_id, "closed") == view:
            return
        self._breaker_views[agent_id] = view
        try:
            await self.registry.update(agent_id, breaker_state=view)
            await self.registry.record(agent_id, "breaker", f"circuit breaker {view}")
        except asyncpg.ForeignKeyViolationError:  # the agent row is gone; nothing to show it on
            pass

    async def _failure(self, agent_id: str, reason: str | None, exc: BaseException) -> None:
        if reason is not None:
            self._metrics.agent_failures.labels(reason).inc()
        self._breaker(agent_id).record_failure(exc)
        await self._sync_breaker(agent_id)

    def _agent_supervisor(self, info: AgentInfo) -> Supervisor:
        policy = info.restart_policy
        worker = ChildSpec(
            id="worker", start=partial(self._start_worker, info.agent_id), restart=RestartType(policy.restart),
            # OTP: only transient and temporary children may be significant; their end ends the agent's supervisor.
            shutdown=policy.shutdown_seconds, significant=policy.restart != "permanent",
            backoff=Backoff(initial=policy.backoff_initial_seconds, maximum=policy.backoff_max_seconds,
                            reset_after=policy.backoff_reset_seconds),
        )
        return Supervisor(f"agent:{info.agent_id}", [worker], max_restarts=policy.max_restarts,
                          period=policy.period_seconds, auto_shutdown="any_significant",
                          listener=partial(self._on_event, info.agent_id))

    async def _launch(self, agent_id: str) -> None:
        info = await self.registry.get(agent_id)
        self._live[agent_id] = LiveAgent(role=info.role, capabilities=frozenset(info.capabilities),
                                     heartbeat_seconds=info.heartbeat_seconds,
                                     restart=RestartType(info.restart_policy.restart), state=info.state)
        if any(c.id == agent_id for c in self.supervisor.which_children()):
            await self.supervisor.delete_child(agent_id)  # the spec of an earlier run that ended
        spec = Supervisor.child_spec(agent_id, partial(self._agent_supervisor, info), restart=RestartType.TRANSIENT)
        try:
            await self.supervisor.start_child(spec)
        except Exception as exc:  # the first start failed: the agent cannot run as configured
            self._live.pop(agent_id, None)
            detail = f"could not start: {exc}"
            await self.registry.transition(agent_id, AgentState.FAILED, detail, last_error=detail, pid=None)
            raise InvalidInput(f"agent {agent_id} {detail}") from exc

    async def _terminate(self, agent_id: str) -> None:
        live = self._live.pop(agent_id, None)
        if live is None:
            return
        if any(c.id == agent_id for c in self.supervisor.which_children()):
            await self.supervisor.terminate_child(agent_id)
            await self.supervisor.delete_child(agent_id)

    async def _revoke(self, info: AgentInfo, *, nats: bool = True) -> None:
        """Revoke the agent's token and (unless a new process is about to replace it) its NATS login."""
        if nats:
            await self.credentials.revoke(info.agent_id)
        revoked = await self._pool.fetch("UPDATE tokens SET revoked_at = now() WHERE agent_id = $1 AND revoked_at IS "
                                         "NULL AND id IN (SELECT token_id FROM agents WHERE id = $1) RETURNING id",
                                         info.agent_id)
        await announce_revoked(self._bus, [row["id"] for row in revoked])  # refused on every replica at once

    async def _start_worker(self, agent_id: str, tg: TaskGroup) -> WorkerChild:
        """Start one worker for the agent: a fresh token, NATS login and instance id each time, its process brought
        up in `tg` (the agent supervisor's task group) without waiting for it. The steps that do not need each other
        (the old token's revocation, the new token, the NATS login, the files) run at once, so a restart waits for
        the slowest of them, not for their sum."""
        info = await self.registry.get(agent_id)
        if info.desired != "running":
            raise RuntimeError(f"agent {agent_id} is not meant to run")
        instance = secrets.token_hex(6)
        token_id, token, nats_login, confinement = TokenId(""), "", NatsLogin(), None

        async def mint() -> None:
            nonlocal token_id, token
            token_id, token = await create_token(self._pool, Role.AGENT, agent_id)

        async def login() -> None:
            nonlocal nats_login
            nats_login = await self.credentials.issue(agent_id, instance)

        async def confine() -> None:
            nonlocal confinement
            confinement = await anyio.to_thread.run_sync(self._confinement, info)

        live = self._live[agent_id]
        replaced = live.ended  # the replaced process's exit, recorded meanwhile (`WorkerChild`)
        async with anyio.create_task_group() as steps:
            steps.start_soon(partial(self._revoke, info, nats=False))  # its NATS user: once the new one is up
            for step in (mint, login, confine):
                steps.start_soon(step)
        restarted = info.state is not AgentState.CREATED
        config = WorkerConfig(
            agent_id=agent_id, instance=instance, role=info.role, capabilities=info.capabilities,
            executor=info.executor, executor_config=info.executor_config, hub_url=self._hub_url,
            nats_url=self._nats_url, subject_prefix=self._bus.prefix, heartbeat_seconds=info.heartbeat_seconds,
            compile_limits=self._compile_limits if info.executor == "wasm" else None, confinement=confinement,
            llm_prices=self._budgets.llm_prices, default_llm_reservation=self._budgets.default_llm_reservation)
        env = {**self._environment(info, config), "AGENTHUB_WORKER": config.model_dump_json(),
               "AGENTHUB_AGENT_TOKEN": token, NATS_LOGIN_ENV: json.dumps(asdict(nats_login))}
        live.instance, live.process, live.announced, live.heartbeat_lost = instance, None, False, False
        live.work_done, live.metrics, live.state = 0, None, AgentState.STARTING
        live.up, live.recorded, live.ended = anyio.Event(), anyio.Event(), anyio.Event()
        worker = WorkerChild(live, agent_id, tg=tg, record=self._exited)
        await tg.start(self._bring_up, worker, live, env, self._log_dir / f"{agent_id}.log", tg)
        # Recorded while the process starts, after the replaced one's exit (the new one's pid, announce and exit
        # wait for this): a state change takes a few database round trips, which a busy machine makes long.
        try:
            await replaced.wait()
            await self.registry.transition(
                agent_id, AgentState.STARTING, "restarting the process" if restarted else "starting the process",
                count_restart=restarted, token_id=token_id, pid=None)
            live.state = AgentState.STARTING  # the replaced exit's record said error
        except BaseException:
            with anyio.CancelScope(shield=True):
                await worker.stop(None)  # not a child of the supervisor: its process must not run on unsupervised
            raise
        finally:
            worker.recorded.set()
        if restarted:
            self._metrics.agent_restarts.inc()
        return worker

    async def _bring_up(self, worker: WorkerChild, live: LiveAgent, env: dict[str, str], log_path: Path,
                        tg: TaskGroup, *, task_status: TaskStatus[None]) -> None:
        """Start the worker's process when a start slot is free: a fork once the fork server is ready (waiting for
        it at most `startup_seconds`), else from scratch. The process keeps its slot until it announces itself or
        ends (its start is what loads the CPU), at most the announce limit, so every slot comes back within that
        limit and the wait for one is bounded by the queue ahead of it."""
        task_status.started()
        try:
            with worker.bringing_up:
                fork = self.fork_server
                if fork is not None and await self._fork_ready(fork, worker.agent_id):
                    async with self._fork_starts:
                        try:
                            forked = await fork.start(env=env, log=log_path)
                        except ServiceUnavailable as exc:
                            logger.warning("agent %s: %s; starting its process from scratch", worker.agent_id,
                                           exc.message)
                        else:
                            await self._until_up(worker, live, forked)
                            return
                async with self._cold_starts:
                    log = open_log(log_path)  # by the hub: the agent's user cannot open its own log
                    try:
                        process = await start_process(WORKER_ARGV, tg=tg, env=env, stdout=log, stderr=log)
                    finally:
                        os.close(log)
                    await self._until_up(worker, live, process)
        except Exception as exc:  # one agent's failed start must not take down its supervisor's tasks: without a
            # process (no fork, no exec) it is a crash for the agent's restart policy to judge
            logger.exception("agent %s: bringing up its process failed", worker.agent_id)
            worker.unstarted(Exit(kind=ExitKind.ABNORMAL, detail=f"could not start the process: {exc}"))
        finally:
            worker.unstarted()  # no-op once started; else the stop that cancelled the bring-up gets its answer

    def _confinement(self, info: AgentInfo) -> Confinement:
        """The user, home and limits of the agent's next process (agent_pool.confinement), its files laid out."""
        uid = None
        if os.geteuid() == 0:
            taken = {u for agent_id, u in self._uids.items() if agent_id in self._live and agent_id != info.agent_id}
            uid = agent_uid(info.agent_id, taken, base=self._settings.uid_base, count=self._settings.uid_count)
            self._uids[info.agent_id] = uid
        home = prepare_files(self._data_dir, info.agent_id, uid)
        if uid is not None and home.parent not in self._reachable:
            check_reachable(home, uid)
            self._reachable.add(home.parent)
        limits, defaults = info.limits, self._settings
        return Confinement(uid=uid, gid=uid, home=str(home.absolute()),
                           memory_bytes=limits.memory_bytes or defaults.memory_bytes,
                           cpu_seconds=limits.cpu_seconds or defaults.cpu_seconds,
                           open_files=limits.open_files or defaults.open_files,
                           processes=limits.processes or defaults.processes)

    def _environment(self, info: AgentInfo, config: WorkerConfig) -> dict[str, str]:
        """The agent process's environment, before the pool's own variables: the Anthropic key only for a claude
        agent, or a command agent configured to pass it on."""
        passes_key = info.executor == "claude" or (info.executor == "command"
                                                   and info.executor_config.get("pass_anthropic_key") is True)
        assert config.confinement is not None
        return agent_environment(os.environ, home=Path(config.confinement.home),
                                 anthropic_api_key=self._anthropic_api_key if passes_key else None)

    async def _fork_ready(self, fork: ForkServer, agent_id: str) -> bool:
        if await fork.wait_ready(self._settings.startup_seconds):
            return True
        logger.warning("agent %s: the fork server is not ready after %g s; starting its process from scratch",
                       agent_id, self._settings.startup_seconds)
        return False

    async def _until_up(self, worker: WorkerChild, live: LiveAgent, process: GroupLeader) -> None:
        """Hand the new process to its worker, then wait (keeping the caller's start slot) until it announces
        itself or ends, at most the announce limit; then retire the NATS users of the processes it replaced.

        Not earlier: nats-server re-checks every connection when it reloads its users, and drops one that is still
        signing in (the new process would lose half a second to nats-py's reconnect wait)."""
        worker.started(process)
        live.process, live.last_beat = process, time.monotonic()  # the announce deadline counts from here
        logger.info("agent %s: started process %d", worker.agent_id, process.pid)
        await worker.recorded.wait()
        await self.registry.update(worker.agent_id, pid=process.pid)
        with anyio.move_on_after(self._announce_limit(live)):
            await worker.up.wait()
        try:
            await self.credentials.settle(worker.agent_id)
        except Exception:  # the process runs and stays supervised; the next reload takes the change along
            logger.exception("agent %s: retiring the NATS users of replaced processes failed", worker.agent_id)

    def _announce_limit(self, live: LiveAgent) -> float:
        """How long a new process may take to announce itself before it is killed as stuck."""
        return max(self._settings.startup_seconds, live.heartbeat_seconds * self._settings.missed_beats)

    async def _exited(self, worker: WorkerChild, exit_: Exit) -> None:
        """A worker process ended on its own (or never started): record it as its supervisor will treat it. The
        next process may be starting already (its start is recorded after this)."""
        agent_id, live, pid = worker.agent_id, worker.live, worker.pid
        if self._live.get(agent_id) is not live:  # stopped or relaunched meanwhile: not this agent's failure now
            return
        await worker.recorded.wait()
        if live.process is worker.process:
            live.process = None
        detail = (f"process {pid} exited: {exit_.detail or exit_.kind.value}" if pid is not None
                  else exit_.detail or exit_.kind.value)
        if exit_.kind is ExitKind.ABNORMAL:
            await self._failure(agent_id, None if worker.heartbeat_lost else "crash", RuntimeError(detail))
        if should_restart(live.restart, exit_):
            target = AgentState.ERROR
        elif exit_.kind is ExitKind.ABNORMAL:
            target = AgentState.FAILED
        else:
            await self._transition(agent_id, AgentState.STOPPING, detail)
            target = AgentState.STOPPED
        await self._transition(agent_id, target, detail, pid=None,
                               last_error=None if target is AgentState.STOPPED else detail)
        if target is not AgentState.ERROR:  # not restarted: its NATS users (the process's, the spare) go
            self._live.pop(agent_id, None)
            await self.credentials.revoke(agent_id)

    async def _on_event(self, agent_id: str, event: SupervisorEvent) -> None:
        """Events of an agent's own supervisor, in order (after the fact: exits are recorded by `WorkerChild`)."""
        if event.kind == "restarting":
            await self.registry.record(agent_id, "restart", f"restarting in {event.delay or 0:.2f} s")
        elif event.kind == "start_failed":
            detail = f"the process could not start: {event.exit.detail if event.exit else 'unknown error'}"
            await self.registry.record(agent_id, "error", detail)
            await self._transition(agent_id, AgentState.ERROR, detail, last_error=detail)
        elif event.kind == "shutdown" and event.exit is not None and INTENSITY_REACHED in event.exit.detail:
            policy = await self.registry.get(agent_id)
            detail = (f"more than {policy.restart_policy.max_restarts} restarts within "
                      f"{policy.restart_policy.period_seconds:g} s: giving up ({INTENSITY_REACHED})")
            self._live.pop(agent_id, None)
            await self._transition(agent_id, AgentState.FAILED, detail, last_error=detail, pid=None)
            await self._alert(agent_id, "restart_intensity", detail)
            await self.credentials.revoke(agent_id)  # its last process's NATS user, and its spare

    async def _transition(self, agent_id: str, target: AgentState, detail: str, **fields: Any) -> None:
        """A transition the pool observed; one the state machine refuses (a stop raced it) is logged, not raised."""
        try:
            info = await self.registry.transition(agent_id, target, detail, **fields)
        except (IllegalTransition, AgentNotFound) as exc:
            logger.info("agent %s: %s", agent_id, exc)
            return
        live = self._live.get(agent_id)
        if live is not None:
            live.state = info.state

    async def _alert(self, agent_id: str, reason: str, detail: str) -> None:
        self._metrics.agent_alerts.labels(reason).inc()
        await self.registry.record(agent_id, "alert", detail)
        logger.error("agent %s needs an operator: %s", agent_id, detail)

    # -- what the processes say on NATS ----------------------------------------------------------------------------

    async def _listen(self, task_status: TaskStatus[None]) -> None:
        nc = self._bus.nc
        events = await nc.subscribe(self._bus.subject("agents.>"), pending_msgs_limit=65536)
        queries = await nc.subscribe(self._bus.subject("agents.discovery.query"), queue=_QUERY_QUEUE_GROUP)
        try:
            async with anyio.create_task_group() as tg:
                self._ops = tg
                tg.start_soon(self._answer_queries, queries)
                task_status.started()
                async for msg in events.messages:
                    try:
                        await self._dispatch(msg)
                    except Exception as exc:  # one bad message or failed write must not stop the pool's ears
                        log_failure(logger, f"handling {msg.subject} failed", exc)
        finally:
            self._ops = None
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await events.unsubscribe()
                await queries.unsubscribe()

    async def _dispatch(self, msg: Msg) -> None:
        # Only an agent's own NATS user may publish on `agents.{id}.*` (agenthub.nats_auth.agent_subjects), so the
        # subject says who spoke; the instance in the payload says whether it is the current process.
        parts = msg.subject[len(self._bus.prefix):].split(".")
        if len(parts) < 3 or parts[1] == "discovery":  # `agents.discovery.*`: the hubs' own subjects
            return
        agent_id, kind = parts[1], ".".join(parts[2:])
        if kind == "announce":
            announce = Announce.model_validate_json(msg.data)
            live = self._current(agent_id, announce.instance)
            if live is None or announce.agent_id != agent_id:
                return
            await live.recorded.wait()  # as long as one state change: it was made while the process started
            live.announced, live.last_beat = True, time.monotonic()
            live.up.set()
            await self._transition(agent_id, AgentState.RUNNING, f"announced itself (pid {announce.pid})")
            # Watchers of `agents.discovery.announce` hear it from the hub: only hubs may publish there.
            await self._bus.publish(self._bus.subject("agents.discovery.announce"), announce)
            return
        if kind == "heartbeat":
            beat = Heartbeat.model_validate_json(msg.data)
            live = self._current(agent_id, beat.instance)
            if live is None or not live.announced:
                return
            live.last_beat = time.monotonic()
            await self.registry.update(agent_id, last_heartbeat=datetime.now(UTC))
            if AgentState(beat.state) != live.state and is_working(live.state):
                await self._transition(agent_id, AgentState(beat.state), f"heartbeat {beat.seq}")
        elif kind == "metrics.performance":
            perf = Performance.model_validate_json(msg.data)
            live = self._current(agent_id, perf.instance)
            if live is None:
                return
            before = live.metrics["busy_seconds"] if live.metrics else 0.0
            live.metrics = perf.model_dump(exclude={"agent_id", "instance"})
            await self._work_time(agent_id, int(perf.busy_seconds) - int(before))
            if perf.work_done > live.work_done:
                self._breaker(agent_id).record_success()
                await self._sync_breaker(agent_id)
            live.work_done = perf.work_done
        elif kind == "events.error":
            error = ErrorEvent.model_validate_json(msg.data)
            if self._current(agent_id, error.instance) is None:
                return
            self._metrics.agent_errors.labels(error.category).inc()
            await self.registry.record(agent_id, "error", f"{error.category}: {error.message}")
            if error.category == "logical" and self._ops is not None:
                self._ops.start_soon(self._fail_logical, agent_id, error.message)

    async def _work_time(self, agent_id: str, seconds: int) -> None:
        if seconds <= 0 or self.on_work_seconds is None:
            return
        try:
            await self.on_work_seconds(agent_id, seconds)
        except DATABASE_ERRORS as exc:  # a lost second of work time must not stop the agent's messages
            log_failure(logger, f"agent {agent_id}: recording {seconds} s of work time failed", exc)

    def _current(self, agent_id: str, instance: str) -> LiveAgent | None:
        """The live agent if the message comes from its current process (not a stale or foreign one)."""
        live = self._live.get(agent_id)
        if live is None or live.instance != instance:
            return None
        return live

    async def _fail_logical(self, agent_id: str, message: str) -> None:
        """A logical error: restarting cannot help, so stop the agent as failed and alert."""
        detail = f"logical error: {message}"
        try:
            info = await self.registry.transition(agent_id, AgentState.FAILED, detail, desired="stopped",
                                                  last_error=detail, pid=None)
        except IllegalTransition as exc:
            logger.info("agent %s: %s", agent_id, exc)
            return
        await self._alert(agent_id, "logical_error", detail)
        await self._terminate(agent_id)
        await self._revoke(info)

    async def _answer_queries(self, sub: Any) -> None:
        async for msg in sub.messages:
            try:
                query = AgentQuery.model_validate_json(msg.data or b"{}")
            except ValidationError:
                query = None
            agents = [] if query is None else [
                AdvertisedAgent(agent_id=a.agent_id, role=a.role, capabilities=a.capabilities, state=a.state.value)
                for a in await self.registry.find(ListAgentsInput(
                    state=["running", "busy", "idle"], role=query.role,
                    capability=query.capability))
                if a.breaker_state != BreakerState.OPEN.value
            ]
            if msg.reply:
                await self._bus.nc.publish(msg.reply, AgentQueryReply(agents=agents).model_dump_json().encode())

    # -- heartbeats ------------------------------------------------------------------------------------------------

    async def _watch(self, task_status: TaskStatus[None]) -> None:
        """Kill processes whose heartbeats stopped (the supervisor then restarts them), and show breakers that
        are ready for a trial as half-open."""
        task_status.started()
        while True:
            interval = min([live.heartbeat_seconds for live in self._live.values()] or [1.0])
            await anyio.sleep(min(1.0, interval / 2))
            for agent_id in list(self._live):
                await self._sync_breaker(agent_id)
            watched = {agent_id: Silence(live.last_beat, self._silence_limit(live))
                       for agent_id, live in self._live.items() if live.process is not None}
            now = time.monotonic()
            late = [a for a, s in watched.items() if now - s.last_beat > s.limit]
            # Ask NATS (a round trip) only when someone is late or judgement is suspended: that is when it matters.
            reachable = not (late or self.heartbeats.suspension) or await self._bus_reachable()
            was = self.heartbeats.describe()
            overdue, beat_at = self.heartbeats.overdue(watched, time.monotonic(), bus_reachable=reachable)
            if (now_says := self.heartbeats.describe()) != was:
                logger.warning("heartbeat judgement %s", f"suspended: {now_says}" if now_says else "resumed")
            for live in self._live.values():
                live.last_beat = max(live.last_beat, beat_at)
            for agent_id in overdue:
                live = self._live[agent_id]
                if live.process is None:
                    continue
                silent, limit = time.monotonic() - live.last_beat, watched[agent_id].limit
                process, live.process = live.process, None
                what = "heartbeat" if live.announced else "announcement"
                detail = f"no {what} for {silent:.1f} s (limit {limit:.1f} s): killing process {process.pid}"
                logger.warning("agent %s: %s", agent_id, detail)
                await self.registry.record(agent_id, "heartbeat_lost", detail)
                self._metrics.agent_failures.labels("heartbeat").inc()
                live.heartbeat_lost = True
                process.kill()

    def _silence_limit(self, live: "LiveAgent") -> float:
        return (live.heartbeat_seconds * self._settings.missed_beats if live.announced
                else self._announce_limit(live))

    async def _bus_reachable(self) -> bool:
        """Whether a message the hub sends itself comes back through NATS now (within a second).

        Not `nc.flush(timeout)`: on a timeout it cancels its PONG future but leaves it queued, and the PONG that
        arrives when a frozen server resumes then raises in nats-py's read loop, which ends: the hub would hear
        nothing more on that connection (every agent then looks silent). Waiting on a subscription's next message
        cancels nothing nats-py keeps."""
        nc = self._bus.nc
        if not self._bus.connected:
            return False
        try:
            subject = nc.new_inbox()
            sub = await nc.subscribe(subject)
            try:
                await nc.publish(subject, b"")
                await sub.next_msg(timeout=_BUS_PROBE_SECONDS)
            finally:
                with contextlib.suppress(Exception):  # a connection that is closing refuses this too
                    await sub.unsubscribe()
        except Exception:  # nats-py raises several kinds (a timeout, a closed or stale connection)
            return False
        return True
        return False

    # -- routing ---------------------------------------------------------------------------------------------------

    def route_targets(self, d: Discovery) -> list[str]:
        """Agents of this replica that should get question `d`: working, breaker not open, and a tag naming
        their role or a capability."""
        tags = {t.lower() for t in d.tags}
        return [agent_id for agent_id, live in self._live.items()
                if live.announced and is_working(live.state) and self._breaker(agent_id).allows_calls
                and tags & {live.role.lower(), *(c.lower() for c in live.capabilities)}]

    # -- hub start and stop ----------------------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Bring this replica's agents back after the hub restarted: processes that outlived a crashed hub are
        killed, agents that were running are marked, and those whose policy says so are started again."""
        for info in await self.registry.find(owner=self.replica):
            state = info.state
            if info.pid is not None:
                kill_leftover(info.pid, info.agent_id)
            if state in LIVE:
                state = AgentState.ERROR
                await self._transition(info.agent_id, state, "the hub restarted; the process is gone", pid=None)
            elif state is AgentState.STOPPING:
                state = AgentState.STOPPED
                await self._transition(info.agent_id, state, "the hub restarted", pid=None)
            if info.desired != "running" or state is AgentState.FAILED:
                continue
            if info.restart_policy.restart == "temporary":  # never restarted (OTP); a lost one is failed
                if state is AgentState.ERROR:
                    await self._transition(info.agent_id, AgentState.FAILED, "temporary agents are not restarted")
                continue
            try:
                await self._launch(info.agent_id)
            except InvalidInput as exc:
                logger.error("agent %s: %s", info.agent_id, exc.message)

    async def stop_all(self) -> None:
        """Stop every process this replica runs (the hub is shutting down); the agents start again with it."""
        async def stop_one(agent_id: str) -> None:
            await self._transition(agent_id, AgentState.STOPPING, "the hub is shutting down")
            await self._terminate(agent_id)
            await self._transition(agent_id, AgentState.STOPPED, "the hub shut down", pid=None)

        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tg:
                for agent_id in list(self._live):
                    tg.start_soon(stop_one, agent_id)
