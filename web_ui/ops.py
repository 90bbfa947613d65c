"""Operations endpoints: `/health` (alive), `/ready` (NATS and PostgreSQL reachable), `/metrics` (Prometheus)
and `/metrics/system` (the JSON of the MS-1 monitoring flow, with live values, plus what the dashboard's
overview shows), and `Snapshots`, which takes that JSON every few seconds for the hub-wide event stream.
`DESCRIBED` is how `/openapi.json` describes these routes, itself, and the SSE streams (`web_ui.streams`)."""

import json
import logging
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agenthub.database import DATABASE_ERRORS, log_failure
from web_ui.api import DiscoveryFilterQuery
from web_ui.endpoints import Described
from web_ui.state import HubState, hub_of

logger = logging.getLogger(__name__)
_CHART_MINUTES = 15


async def health(request: Request) -> Response:
    hub = hub_of(request)
    return JSONResponse({"status": "ok", "uptime_seconds": round(time.monotonic() - hub.started, 1)})


async def _health(hub: HubState) -> dict[str, str]:
    checks: dict[str, str] = {"nats": "ok" if hub.bus.connected else "disconnected"}
    try:
        with anyio.fail_after(2):
            await hub.pool.fetchval("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:  # any failure to answer means not ready; report it instead of raising
        checks["postgres"] = f"unreachable: {type(exc).__name__}"
    return checks


async def ready(request: Request) -> Response:
    hub = hub_of(request)
    checks = await _health(hub)
    ended = hub.supervisor.exit  # the root of the hub's components gave up: agents are no longer supervised
    checks["supervisor"] = "ok" if ended is None else f"stopped: {ended.detail or ended.kind.value}"
    gave_up = hub.services.exit  # an embedded NATS or PostgreSQL kept dying: no more restarts
    if gave_up is not None:
        checks["services"] = f"stopped: {gave_up.detail or gave_up.kind.value}"
    ok = all(v == "ok" for v in checks.values())
    # Informational, not a readiness check: the hub serves while it does not judge agents' heartbeats.
    body = {"status": "ready" if ok else "not ready", "checks": checks, "heartbeats": _heartbeats(hub)}
    return JSONResponse(body, status_code=200 if ok else 503)


def _heartbeats(hub: HubState) -> str:
    suspended = hub.agents.heartbeats.describe()
    return "judged" if suspended is None else f"suspended: {suspended}"


async def metrics(request: Request) -> Response:
    return Response(generate_latest(hub_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _nats_connections(monitor_url: str) -> int | None:
    with urllib.request.urlopen(f"{monitor_url}/varz", timeout=1) as resp:  # noqa: S310 - loopback URL we started
        varz: dict[str, Any] = json.load(resp)
    value = varz.get("connections")
    return int(value) if value is not None else None


async def system_metrics(request: Request) -> Response:
    return JSONResponse(await snapshot(hub_of(request)))


async def snapshot(hub: HubState) -> dict[str, Any]:
    """The MS-1 system metrics, and the overview's figures: tasks by state, pending approvals, discoveries per
    minute by type (the last 15 minutes), SSE clients, open breakers (this replica's agents), NATS and PostgreSQL
    health."""
    by_state = await hub.agents.registry.counts_by_state()
    live = {state: n for state, n in by_state.items() if state not in ("stopped", "failed")}
    return {
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "agents": {"total": sum(live.values()), "idle": live.get("idle", 0) + live.get("running", 0),
                   "busy": live.get("busy", 0), "by_state": by_state},
        "nats": {"connections": await _connections(hub), "messages_per_sec": _nats_rate(hub)},
        "system": {
            "cpu_percent": hub.process.cpu_percent(interval=None),
            "memory_mb": round(hub.process.memory_info().rss / 2**20, 1),
        },
        "tasks": {"by_state": await hub.market.tasks.counts_by_state()},
        "approvals": {"pending": await hub.approvals.pending_count()},
        "discoveries": {"total": await hub.collab.log.newest_sequence(),
                        "per_minute": await hub.collab.log.per_minute(_CHART_MINUTES)},
        "sse_clients": hub.collab.feed.stream_count,
        "open_breakers": hub.agents.open_breakers(),
        "health": await _health(hub),
        "heartbeats": _heartbeats(hub),
    }


class Snapshots:
    """The latest `snapshot`, taken every `interval` seconds while any hub-wide stream is open (`run` is a child
    of the hub's root supervisor); streams wait on `changed` and send it as `metrics_update`."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.latest: str | None = None  # JSON
        self.version = 0
        self._changed = anyio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    async def run(self, hub: HubState, task_status: TaskStatus[None]) -> None:
        task_status.started()
        while True:
            if hub.collab.feed.stream_count:
                try:
                    self.latest = json.dumps(await snapshot(hub))
                except DATABASE_ERRORS as exc:  # briefly unreachable: the next one
                    log_failure(logger, "metrics snapshot failed", exc)
                else:
                    self.version += 1
                    self._changed.set()
                    self._changed = anyio.Event()
            await anyio.sleep(self.interval)


async def _connections(hub: HubState) -> int | None:
    if hub.nats_monitor_url is None:
        return None
    try:
        return await anyio.to_thread.run_sync(_nats_connections, hub.nats_monitor_url)
    except OSError:
        return None


def _nats_rate(hub: HubState) -> float:
    """Messages in and out of this hub's NATS connections per second since the previous call."""
    now = time.monotonic()
    count = sum(int(nc.stats["in_msgs"]) + int(nc.stats["out_msgs"]) for nc in hub.bus.connections)
    then, before = hub.nats_sample
    hub.nats_sample = (now, count)
    return round((count - before) / (now - then), 1) if then else 0.0


# -- the description of these routes and of the SSE streams in /openapi.json ----------------------------------------

class Health(BaseModel):
    status: Literal["ok"]
    uptime_seconds: float


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(description="nats, postgres and supervisor (and services, once an embedded server "
                                   "kept dying): 'ok', or what is wrong")
    heartbeats: str = Field(description="'judged', or 'suspended: <why>' while the hub cannot judge agents' "
                            "heartbeats (informational: the hub still serves)")


class AgentCounts(BaseModel):
    total: int = Field(description="Agents not stopped or failed")
    idle: int
    busy: int
    by_state: dict[str, int] = Field(description="Every agent by state, stopped and failed included")


class NatsFigures(BaseModel):
    connections: int | None = Field(description="The NATS server's connections, when the hub runs it")
    messages_per_sec: float = Field(description="In and out of this hub's connection since the previous reading")


class ProcessFigures(BaseModel):
    cpu_percent: float
    memory_mb: float


class StateCounts(BaseModel):
    by_state: dict[str, int]


class ApprovalCounts(BaseModel):
    pending: int = Field(description="Approvals waiting for an operator")


class MinuteCounts(BaseModel):
    minute: str
    by_type: dict[str, int]


class DiscoveryFigures(BaseModel):
    total: int = Field(description="The newest discovery sequence")
    per_minute: list[MinuteCounts] = Field(description="The last 15 minutes, oldest first")


class SystemMetrics(BaseModel):
    """The body of `/metrics/system`, also the `metrics_update` event of `/events/stream`."""

    timestamp: str
    agents: AgentCounts
    nats: NatsFigures
    system: ProcessFigures
    tasks: StateCounts
    approvals: ApprovalCounts
    discoveries: DiscoveryFigures
    sse_clients: int
    open_breakers: int = Field(description="This replica's agents whose circuit breaker is open")
    health: dict[str, str] = Field(description="nats and postgres: 'ok', or what is wrong")
    heartbeats: str


def _position(where: str, text: str) -> dict[str, Any]:
    return {"name": where, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}


_LAST_EVENT_ID = "The id of the last event received: the stream resumes right after it"
_SSE_ERRORS = (400, 410)  # a position that is malformed or beyond the newest; one the retention policy deleted
DESCRIBED = [
    Described(method="GET", path="/health", summary="Alive: the process answers", operation_id="health",
              response=Health, public=True),
    Described(method="GET", path="/ready", summary="Ready: NATS and PostgreSQL reachable, the hub's components "
              "supervised", operation_id="ready", response=Readiness, public=True,
              answers={200: "Ready", 503: "Not ready: `checks` says what is wrong (problem JSON when a token was "
                                          "sent and could not be checked)"}),
    Described(method="GET", path="/metrics", summary="Prometheus metrics (text exposition format)",
              operation_id="metrics", media_type=CONTENT_TYPE_LATEST.split(";")[0], public=True,
              description=f"The body's media type is `{CONTENT_TYPE_LATEST}`."),
    Described(method="GET", path="/metrics/system", summary="The system's figures as JSON: agents, NATS, this "
              "process, tasks, pending approvals, discoveries per minute, SSE clients, open breakers, health",
              operation_id="system_metrics", response=SystemMetrics),
    Described(method="GET", path="/openapi.json", summary="This document", operation_id="openapi", public=True),
    Described(method="GET", path="/discoveries/stream", operation_id="discovery_stream", summary="Discoveries as "
              "Server-Sent Events, filtered by a subscription or by query parameters", media_type="text/event-stream",
              description="Each `discovery` event's data is a Discovery and its id the discovery's sequence. The "
              "stream starts after `Last-Event-ID` (header or parameter), else at `start`; a subscription's default "
              "start is its stored cursor, otherwise `now`. When retention overtakes a replay, an `expired` event "
              "says where to go on from, and the stream ends. It ends too when its token is revoked or expires.",
              query=DiscoveryFilterQuery, parameters=(
                  _position("subscription_id", "Filter as this subscription does (not with filter parameters)"),
                  _position("start", "'now', 'beginning' or a discovery sequence to start after"),
                  _position("last_event_id", _LAST_EVENT_ID),
                  {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
                   "description": _LAST_EVENT_ID}),
              errors=(*_SSE_ERRORS, 404, 422), query_token=True),
    Described(method="GET", path="/events/stream", operation_id="hub_stream", summary="Everything in the hub as "
              "Server-Sent Events: discovery, agent, task, bid, transfer and metrics_update events",
              media_type="text/event-stream",
              description="A logged event's id is '<discovery sequence>.<activity sequence>', the stream's position "
              "after it, so `Last-Event-ID` resumes both exactly. `metrics_update` (the `/metrics/system` body) comes "
              "at connect and every few seconds. The stream ends when its token is revoked or expires.",
              parameters=(
                  _position("start", "'now' (the default) or 'beginning'"),
                  _position("last_event_id", _LAST_EVENT_ID),
                  {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
                   "description": _LAST_EVENT_ID}),
              errors=_SSE_ERRORS, query_token=True),
]
