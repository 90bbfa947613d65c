"""Composition: `open_hub` connects PostgreSQL and NATS and starts the live feed; `create_app` builds the ASGI app
(guard, REST, SSE, operations, MCP at /mcp) whose lifespan runs the MCP session manager; `serve` runs it under
uvicorn until a signal. Shutdown runs in reverse: HTTP and MCP sessions, then the feed, NATS, PostgreSQL.
"""

import contextlib
import gc
import logging
import math
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import anyio
import asyncpg
import uvicorn
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent_pool.pool import AgentPool
from agenthub.activity import ActivityFeed, ActivityLog
from agenthub.auth import ensure_operator_token_file
from agenthub.bus import connect_bus
from agenthub.database import UNAVAILABLE, open_pool
from agenthub.errors import StartupError
from agenthub.metrics import HubMetrics
from agenthub.nats_auth import NatsAuthority, NatsLogin, NatsUsers, hub_user, login_from
from agenthub.ratelimit import RateLimiter
from agenthub.settings import NatsSettings, Settings
from agenthub.token_cache import TokenCache
from collaboration.orchestrator import Orchestrator
from collaboration.service import Collaboration
from governance.approvals import Approvals
from governance.budgets import Budgets
from market.service import Market
from mcp_server.direct import McpEndpoint
from mcp_server.server import ResourceNotifier, build_server
from sandbox.modules import ModuleCache
from sandbox.runner import Runner
from sandbox.service import SandboxService
from sandbox.store import LocalBinaryStore
from supervisor import INTENSITY_REACHED, Backoff, ChildSpec, Supervisor, SupervisorEvent, task_child
from supervisor.service import Service, service_child
from web_ui import agents, api, dashboard, oauth, ops, problems, streams, tokens
from web_ui import approvals as approvals_api
from web_ui import budgets as budgets_api
from web_ui import market as market_api
from web_ui import sandbox as sandbox_api
from web_ui.endpoints import openapi
from web_ui.guard import Guard
from web_ui.resource_server import AddressLimit
from web_ui.state import HubState

logger = logging.getLogger(__name__)

OPERATOR_TOKEN_FILE = "operator-token"
REPLICA_ID_FILE = "replica-id"
_GC_THRESHOLDS = (50_000, 20, 20)
# A worker thread running Python (an auction solve, a sandbox run's host calls) hands the GIL back only after the
# interpreter's switch interval, and the event loop needs it several times per request: at the default 5 ms, a
# 10,000-bid solve quadrupled /health's p99 (bench/scale.py). 0.5 ms keeps the loop's wait short.
_THREAD_SWITCH_SECONDS = 0.0005
# A dead embedded server is started again at once, then after 0.5, 1, 2 ... up to 10 s while it keeps dying.
_SERVICE_BACKOFF = Backoff(initial=0.5, maximum=10.0)
_ENDPOINTS = [*api.ENDPOINTS, *tokens.ENDPOINTS, *agents.ENDPOINTS, *market_api.ENDPOINTS, *sandbox_api.ENDPOINTS,
              *approvals_api.ENDPOINTS, *budgets_api.ENDPOINTS]


def base_url(settings: Settings) -> str:
    return settings.public_url or f"http://{settings.host}:{settings.port}"


def local_url(settings: Settings) -> str:
    """The URL agent processes on this machine use to reach the hub."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)
    return f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"


def replica_id(settings: Settings) -> str:
    """This hub's name as the owner of the agents it runs, kept in the data directory across restarts."""
    if settings.replica_id:
        return settings.replica_id
    path = settings.data_dir / REPLICA_ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        name = f"{socket.gethostname()}-{secrets.token_hex(3)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name + "\n")
        return name


async def _log_root_event(event: SupervisorEvent) -> None:
    if event.kind == "restarting":
        logger.error("hub component %s failed; restarting it in %.2f s", event.child_id, event.delay or 0)
    elif event.kind == "shutdown" and event.exit is not None and event.exit.detail == INTENSITY_REACHED:
        logger.critical("hub components keep failing; the root supervisor gave up (%s)", event.exit.detail)


def _services_listener(metrics: HubMetrics) -> Callable[[SupervisorEvent], Awaitable[None]]:
    async def listen(event: SupervisorEvent) -> None:
        if event.kind == "restarting" and event.child_id is not None:
            metrics.service_restarts.labels(event.child_id).inc()
            logger.error("embedded %s died; restarting it in %.2f s", event.child_id, event.delay or 0)
        elif event.kind == "start_failed":
            logger.error("embedded %s did not start again: %s", event.child_id, event.exit.detail if event.exit else "")
        elif event.kind == "started" and event.child_id is not None:
            logger.info("embedded %s running (pid %s)", event.child_id, event.pid)
        elif event.kind == "shutdown" and event.exit is not None and event.exit.detail == INTENSITY_REACHED:
            logger.critical("embedded services keep dying; no more restarts: restart the hub (%s)", event.exit.detail)

    return listen


@asynccontextmanager
async def open_hub(settings: Settings, *, nats_monitor_url: str | None = None,
                   services: Sequence[Service] = ()) -> AsyncIterator[HubState]:
    """Connect to PostgreSQL (migrating it) and NATS, and run the live discovery feed. `services` are the embedded
    servers already started for this hub: a supervisor restarts them when they die (and stops them last)."""
    if not settings.database_url or not settings.nats_url:
        raise ValueError("open_hub needs settings.database_url and settings.nats_url")
    metrics = HubMetrics()
    async with AsyncExitStack() as stack:
        embedded = await stack.enter_async_context(Supervisor(
            "services", [ChildSpec(id=s.name, start=service_child(s), shutdown=math.inf, backoff=_SERVICE_BACKOFF)
                         for s in services],
            max_restarts=settings.service_restarts_per_minute, period=60, listener=_services_listener(metrics)))
        db = settings.database
        pool = await stack.enter_async_context(open_pool(
            settings.database_url, size=settings.db_pool_size, connect_timeout=db.connect_timeout_seconds,
            statement_timeout=db.statement_timeout_seconds))
        metrics.watch_pool(lambda: (pool.get_size(), pool.get_idle_size(), pool.get_max_size()))
        login, nats_users = await _nats_login(settings, stack)
        bus = await stack.enter_async_context(connect_bus(
            settings.nats_url, settings.nats_subject_prefix, metrics.nats_publish_failures.inc, login=login))
        token_cache = await stack.enter_async_context(TokenCache(pool, bus, ttl=settings.token_cache_seconds))
        limiter = await stack.enter_async_context(RateLimiter(
            bus, settings.rate_limits, on_refused=lambda limit: metrics.limits_refused.labels(limit).inc()))
        collab = await stack.enter_async_context(
            Collaboration(pool, bus, metrics, limiter, base_url=base_url(settings), ring_size=settings.sse.ring_size,
                          sync_seconds=settings.feed_sync_seconds, retention=settings.retention))
        metrics.sse_clients.set_function(lambda: collab.feed.stream_count)
        metrics.feed_sequence.set_function(lambda: collab.feed.frontier)
        if settings.auth:
            token_file = settings.data_dir / OPERATOR_TOKEN_FILE
            if await ensure_operator_token_file(pool, token_file):
                logger.info("created the first operator token in %s", token_file)
        agents = AgentPool(pool=pool, bus=bus, metrics=metrics, settings=settings.agents, replica=replica_id(settings),
                           hub_url=local_url(settings), nats_url=settings.nats_url, data_dir=settings.data_dir,
                           nats_users=nats_users, agent_nats_login=_agent_nats_login(settings),
                           anthropic_api_key=settings.anthropic_api_key, budgets=settings.budgets,
                           compile_limits=settings.sandbox.compile_limits())
        orchestrator = Orchestrator(collab.log, collab.contexts, metrics, targets=agents.route_targets,
                                    max_depth=settings.agents.max_question_depth,
                                    per_agent_per_minute=settings.agents.questions_per_agent_per_minute)
        collab.feed.add_hook(orchestrator.discovery_shared)
        approvals = Approvals(pool, bus, metrics, settings.approvals)
        budgets = await stack.enter_async_context(Budgets(pool, bus, metrics, settings.budgets, approvals))
        agents.on_work_seconds = budgets.work_time
        runner = stack.enter_context(Runner(concurrency=settings.sandbox.concurrency))
        sandbox = _sandbox(settings, pool, metrics, runner)
        market = Market(pool, bus, metrics, settings.market, sandbox, approvals, budgets)
        stack.push_async_callback(market.aclose)
        activity = ActivityFeed(ActivityLog(pool), ring_size=settings.sse.ring_size,
                                poll_seconds=settings.sse.activity_poll_seconds)
        await activity.start()
        # The hub's own long-lived components run under one root supervisor (the feed keeps its own context).
        root = Supervisor("hub", [*agents.children(), ChildSpec(id="orchestrator", start=task_child(orchestrator.run)),
                                  *market.children(), ChildSpec(id="retention", start=task_child(collab.retention.run)),
                                  ChildSpec(id="activity-feed", start=task_child(activity.run)),
                                  *approvals.children(), *budgets.children()],
                          max_restarts=3, period=60, listener=_log_root_event)
        await stack.enter_async_context(root)
        stack.push_async_callback(agents.stop_all)  # runs before the root supervisor stops: agents end as stopped
        await agents.reconcile()
        state = HubState(settings=settings, pool=pool, bus=bus, metrics=metrics, tokens=token_cache, limiter=limiter,
                         collab=collab, agents=agents, market=market, approvals=approvals, budgets=budgets,
                         sandbox=sandbox, activity=activity,
                         snapshots=ops.Snapshots(settings.sse.metrics_seconds), supervisor=root,
                         orchestrator=orchestrator, services=embedded, nats_monitor_url=nats_monitor_url)
        await root.start_child(ChildSpec(id="snapshots", start=task_child(partial(state.snapshots.run, state))))
        yield state


async def _nats_login(settings: Settings, stack: AsyncExitStack) -> tuple[NatsLogin, NatsUsers | None]:
    """The hub's NATS login: a user of its own registered with an agenthub-run server (which then also takes its
    agents' users), else what the settings give for an external server."""
    if settings.nats.authority_dir is None:
        return login_from(settings.nats, settings.nats), None
    authority = NatsAuthority(settings.nats.authority_dir)
    if not authority.exists():
        raise StartupError(f"no running agenthub nats-server in {settings.nats.authority_dir}")
    users = authority.owner()
    stack.push_async_callback(users.close)  # pushed before the connection opens: runs after it drained
    me = hub_user(settings.nats_subject_prefix)
    await users.update(add=(me,))
    return me.login(), users


def _agent_nats_login(settings: Settings) -> NatsLogin | None:
    """What agent processes sign in with when the hub cannot create a user for each (an external NATS)."""
    if settings.nats.authority_dir is not None:
        return None
    return login_from(settings.nats.agents, settings.nats) if settings.nats.agents else login_from(
        NatsSettings(), settings.nats)


def _sandbox(settings: Settings, pool: asyncpg.Pool, metrics: HubMetrics, runner: Runner) -> SandboxService:
    """Modules under `<data dir>/wasm/modules` by SHA-256; their compiled forms cached under `wasm/compiled`."""
    store = LocalBinaryStore(settings.data_dir / "wasm" / "modules")
    cache = ModuleCache(runner, settings.sandbox.compile_limits(), store.get,
                        artifacts=settings.data_dir / "wasm" / "compiled")
    return SandboxService(pool=pool, store=store, runner=runner, cache=cache, settings=settings.sandbox,
                          metrics=metrics)


def create_app(hub: HubState) -> Starlette:
    """The ASGI app for a connected hub. Build a new one per server start: the MCP session manager runs once."""
    notifier = ResourceNotifier()
    hub.collab.feed.add_hook(notifier.discovery_shared)
    server = build_server(hub, notifier)
    settings = hub.settings
    session_manager = StreamableHTTPSessionManager(
        app=server, max_request_body_size=settings.limits.max_body_bytes,
        # The Guard below already checks Host and Origin for every path, MCP included.
        security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    # OAuth sign-in (web_ui.oauth): the hub is the protected resource at <its URL>/mcp and its own issuer.
    resource_server = oauth.resource_server_for(settings.public_url or local_url(settings)) \
        if settings.auth and settings.oauth.enabled else None
    with_oauth = resource_server is not None
    document = openapi([*_ENDPOINTS, *(oauth.ENDPOINTS if with_oauth else ())],
                       [*ops.DESCRIBED, *(oauth.DESCRIBED if with_oauth else ())], title="agenthub", version="0.1.0",
                       max_body=settings.limits.max_body_bytes, max_upload=settings.sandbox.max_module_bytes)
    if with_oauth:
        oauth.describe_as_anonymous(document)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(document)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with session_manager.run():
            yield

    routes: list[Any] = [
        Route("/health", ops.health),
        Route("/ready", ops.ready),
        Route("/metrics", ops.metrics),
        Route("/metrics/system", ops.system_metrics),
        Route("/openapi.json", openapi_json),
        Route("/discoveries/stream", streams.discovery_stream, methods=["GET"]),  # bare ASGI apps: methods named
        Route("/events/stream", streams.hub_stream, methods=["GET"]),
        *dashboard.routes(),
        *(oauth.routes(hub, resource_server) if resource_server is not None else []),
        *(ep.route() for ep in _ENDPOINTS),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers=dict.fromkeys(UNAVAILABLE, problems.unavailable_problem))
    app.state.hub = hub
    app.state.mcp_server = server
    app.state.resource_server = resource_server
    # /mcp before any route: McpEndpoint hands it to the SDK's transport, or answers a direct tool call itself.
    app.add_middleware(McpEndpoint, sdk=session_manager.handle_request, hub=hub, server=server,
                       direct=settings.mcp.direct_tool_calls)
    app.add_middleware(
        Guard, max_body=settings.limits.max_body_bytes, max_upload=settings.sandbox.max_module_bytes,
        auth=settings.auth, allowed_hosts=settings.allowed_hosts, allowed_origins=settings.allowed_origins,
        tokens=hub.tokens, limiter=hub.limiter, resource_server=resource_server,
        oauth_limit=AddressLimit(per_minute=settings.oauth.requests_per_minute, burst=settings.oauth.request_burst),
    )
    return app


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGINT/SIGTERM after its own shutdown, which would kill us before the embedded services
    stop; we handle the signals ourselves instead. On shutdown `before_shutdown` runs first (the hub ends its SSE
    streams and WASM trial runs there), so open connections close at once instead of holding the graceful-shutdown
    timeout."""

    def __init__(self, config: uvicorn.Config, before_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._before_shutdown = before_shutdown

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._before_shutdown()
        await super().shutdown(sockets)


def make_server(app: Starlette, *, log_level: str = "info",
                before_shutdown: Callable[[], None] = lambda: None) -> uvicorn.Server:
    """A uvicorn server for `app` that leaves signal handling to its caller; stop it with `should_exit`.
    `before_shutdown` runs when shutdown starts (`HubState.begin_shutdown`)."""
    config = uvicorn.Config(app, lifespan="on", log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=5, limit_concurrency=4096, server_header=False)
    return _Server(config, before_shutdown)


async def serve(app: Starlette, sock: socket.socket, *, log_level: str = "info",
                before_shutdown: Callable[[], None] = lambda: None) -> None:
    """Run `app` on an already-bound socket until SIGINT or SIGTERM, then shut down gracefully."""
    server = make_server(app, log_level=log_level, before_shutdown=before_shutdown)
    # Everything built so far lives as long as the process: keep it out of the garbage collector's full passes,
    # which otherwise walk it again and again under load (hundreds of ms each with many connections open).
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)
    sys.setswitchinterval(_THREAD_SWITCH_SECONDS)
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:  # later signals are absorbed: the shutdown already under way finishes
                    logger.info("received %s, shutting down", signal.Signals(signum).name)
                    server.should_exit = True

        tg.start_soon(stop_on_signal)
        await server.serve(sockets=[sock])
        tg.cancel_scope.cancel()
