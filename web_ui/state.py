"""What the HTTP layer needs from a running hub, set on `app.state.hub` by the lifespan."""

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
import psutil
from starlette.requests import Request

from agent_pool.pool import AgentPool
from agenthub.activity import ActivityFeed
from agenthub.auth import LOCAL_OPERATOR, Principal
from agenthub.bus import Bus
from agenthub.errors import Unauthenticated
from agenthub.metrics import HubMetrics
from agenthub.ratelimit import RateLimiter
from agenthub.settings import Settings
from agenthub.token_cache import TokenCache
from collaboration.orchestrator import Orchestrator
from collaboration.service import Collaboration
from governance.approvals import Approvals
from governance.budgets import Budgets
from market.service import Market
from sandbox.service import SandboxService
from supervisor import Supervisor

if TYPE_CHECKING:
    from web_ui.ops import Snapshots


def _sampled_process() -> psutil.Process:
    process = psutil.Process()
    process.cpu_percent(interval=None)  # the first reading only starts the measurement
    return process


@dataclass(slots=True, kw_only=True)
class HubState:
    settings: Settings
    pool: asyncpg.Pool
    bus: Bus
    metrics: HubMetrics
    tokens: TokenCache
    limiter: RateLimiter
    collab: Collaboration
    agents: AgentPool
    market: Market
    budgets: Budgets
    approvals: Approvals
    sandbox: SandboxService
    activity: ActivityFeed
    snapshots: "Snapshots"
    supervisor: Supervisor
    orchestrator: Orchestrator
    services: Supervisor  # the embedded NATS and PostgreSQL this hub started (none when they are external)
    nats_monitor_url: str | None = None
    started: float = field(default_factory=time.monotonic)
    process: psutil.Process = field(default_factory=_sampled_process)
    nats_sample: tuple[float, int] = (0.0, 0)

    def begin_shutdown(self) -> None:
        """What ends first when the server starts shutting down, so that open connections close at once instead of
        holding the graceful-shutdown timeout: SSE streams, and WASM trial runs in progress."""
        self.collab.feed.end_streams()
        self.sandbox.stop_runs()


def hub_of(request: Request) -> HubState:
    hub: HubState = request.app.state.hub
    return hub


def principal_of(request: Request) -> Principal:
    """The caller as resolved by the guard; anonymous callers reach only public paths."""
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is None:
        if not hub_of(request).settings.auth:
            return LOCAL_OPERATOR
        raise Unauthenticated("missing bearer token: send 'Authorization: Bearer <token>'")
    return principal
