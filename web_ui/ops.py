"""Operations endpoints: `/health` (alive), `/ready` (NATS and PostgreSQL reachable), `/metrics` (Prometheus)
and `/metrics/system` (the JSON of the MS-1 monitoring flow, with live values, plus what the dashboard's
overview shows), and `Snapshots`, which takes that JSON every few seconds for the hub-wide event stream."""

import json
import logging
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agenthub.database import DATABASE_ERRORS, log_failure
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
    """The MS-1 system metrics, and the overview's figures: tasks by state, discoveries per minute by type (the
    last 15 minutes), SSE clients, open breakers (this replica's agents), NATS and PostgreSQL health."""
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
    """Messages in and out of this hub's NATS connection per second since the previous call."""
    stats = hub.bus.nc.stats
    now, count = time.monotonic(), int(stats["in_msgs"]) + int(stats["out_msgs"])
    then, before = hub.nats_sample
    hub.nats_sample = (now, count)
    return round((count - before) / (now - then), 1) if then else 0.0
