"""The agents table and its event history.

Every state change goes through `transition`, which locks the agent's row, checks the change against the state
machine, updates the row and writes an `agent_events` row in one transaction, then publishes the change on
`agents.{id}.events.state`. Illegal changes raise `IllegalTransition` and change nothing.
"""

import json
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

import asyncpg

from agent_pool.models import (
    AgentEvent,
    AgentInfo,
    ListAgentsInput,
    ResourceLimits,
    RestartPolicy,
    SpawnAgentInput,
    StateChanged,
)
from agent_pool.states import AgentState, check_transition
from agenthub import activity
from agenthub.bus import Bus
from agenthub.database import Connection
from agenthub.errors import AgentExists, AgentNotFound, IllegalTransition

_EVENTS_SHOWN = 50
_COLUMNS = frozenset({"pid", "token_id", "last_error", "desired", "last_heartbeat", "breaker_state", "owner"})


def _info(row: asyncpg.Record) -> AgentInfo:
    return AgentInfo(
        agent_id=row["id"], role=row["role"], capabilities=list(row["capabilities"]), executor=row["executor"],
        executor_config=json.loads(row["executor_config"]),
        restart_policy=RestartPolicy.model_validate_json(row["restart_policy"]),
        limits=ResourceLimits.model_validate_json(row["limits"]),
        heartbeat_seconds=row["heartbeat_seconds"], state=AgentState(row["state"]), desired=row["desired"],
        owner=row["owner"], pid=row["pid"], restarts=row["restarts"], last_heartbeat=row["last_heartbeat"],
        breaker_state=row["breaker_state"], last_error=row["last_error"], binary_version=row["binary_version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def write_event(conn: Connection, agent_id: str, kind: str, from_state: str | None, to_state: str | None,
                      detail: str) -> None:
    """An `agent_events` row, and the same event in the hub's activity log (one transaction: the caller's)."""
    await conn.execute(
        "INSERT INTO agent_events (agent_id, kind, from_state, to_state, detail) VALUES ($1, $2, $3, $4, $5)",
        agent_id, kind, from_state, to_state, detail)
    await activity.record(conn, "agent", {"agent_id": agent_id, "kind": kind, "from_state": from_state,
                                          "to_state": to_state, "detail": detail})


class AgentRegistry:
    def __init__(self, pool: asyncpg.Pool, bus: Bus) -> None:
        self._pool = pool
        self._bus = bus

    async def create(self, req: SpawnAgentInput, agent_id: str, *, owner: str, heartbeat_seconds: float) -> AgentInfo:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO agents (id, role, capabilities, executor, executor_config, restart_policy, limits, "
                "heartbeat_seconds, state, desired, owner)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'created', 'running', $9)"
                " ON CONFLICT (id) DO NOTHING RETURNING *",
                agent_id, req.role, req.capabilities, req.executor, json.dumps(req.executor_config),
                req.restart_policy.model_dump_json(), req.limits.model_dump_json(exclude_none=True), heartbeat_seconds,
                owner,
            )
            if row is None:
                raise AgentExists(agent_id)
            await self._event(conn, agent_id, "transition", None, AgentState.CREATED, f"spawned on {owner}")
        await self._announce(agent_id, None, AgentState.CREATED, f"spawned on {owner}")
        return _info(row)

    async def transition(self, agent_id: str, target: AgentState, detail: str = "", *,
                         allowed_from: Collection[AgentState] | None = None, count_restart: bool = False,
                         **fields: Any) -> AgentInfo:
        """Move the agent to `target` (and set `fields`), if the state machine and `allowed_from` allow it."""
        unknown = set(fields) - _COLUMNS
        if unknown:
            raise ValueError(f"not agent columns: {sorted(unknown)}")
        sets = ["state = $2", "updated_at = now()"]
        args: list[Any] = [agent_id, target.value]
        for name, value in fields.items():
            args.append(value)
            sets.append(f"{name} = ${len(args)}")
        if count_restart:
            sets.append("restarts = restarts + 1")
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval("SELECT state FROM agents WHERE id = $1 FOR UPDATE", agent_id)
            if current is None:
                raise AgentNotFound(agent_id)
            state = AgentState(current)
            if allowed_from is not None and state not in allowed_from:
                raise IllegalTransition(agent_id, state.value, target.value)
            check_transition(agent_id, state, target)
            row = await conn.fetchrow(f"UPDATE agents SET {', '.join(sets)} WHERE id = $1 RETURNING *", *args)
            assert row is not None  # the row is locked
            await self._event(conn, agent_id, "transition", state, target, detail)
        await self._announce(agent_id, state, target, detail)
        return _info(row)

    async def update(self, agent_id: str, **fields: Any) -> None:
        """Set columns that are not the state (heartbeat time, breaker state)."""
        unknown = set(fields) - _COLUMNS
        if unknown:
            raise ValueError(f"not agent columns: {sorted(unknown)}")
        sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(fields, start=2))
        await self._pool.execute(f"UPDATE agents SET {sets} WHERE id = $1", agent_id, *fields.values())

    async def record(self, agent_id: str, kind: str, detail: str) -> None:
        """An event that is not a state change: an error report, a lost heartbeat, an alert."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._event(conn, agent_id, kind, None, None, detail)

    async def get(self, agent_id: str, *, with_events: bool = False) -> AgentInfo:
        row = await self._pool.fetchrow("SELECT * FROM agents WHERE id = $1", agent_id)
        if row is None:
            raise AgentNotFound(agent_id)
        info = _info(row)
        if with_events:
            rows = await self._pool.fetch(
                "SELECT * FROM (SELECT * FROM agent_events WHERE agent_id = $1 ORDER BY id DESC LIMIT $2) e "
                "ORDER BY id", agent_id, _EVENTS_SHOWN)
            info.recent_events = [AgentEvent(at=r["at"], kind=r["kind"], from_state=r["from_state"],
                                             to_state=r["to_state"], detail=r["detail"]) for r in rows]
        return info

    async def find(self, query: ListAgentsInput | None = None, *, owner: str | None = None) -> list[AgentInfo]:
        query = query or ListAgentsInput()
        rows = await self._pool.fetch(
            "SELECT * FROM agents WHERE ($1::text[] IS NULL OR state = ANY($1)) AND ($2::text IS NULL OR role = $2)"
            " AND ($3::text IS NULL OR $3 = ANY(capabilities)) AND ($4::text IS NULL OR owner = $4)"
            " ORDER BY created_at",
            query.state or None, query.role, query.capability, owner,
        )
        return [_info(r) for r in rows]

    async def counts_by_state(self) -> dict[str, int]:
        rows = await self._pool.fetch("SELECT state, count(*) AS n FROM agents GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    @staticmethod
    async def _event(conn: Connection, agent_id: str, kind: str,
                     from_state: AgentState | None, to_state: AgentState | None, detail: str) -> None:
        await write_event(conn, agent_id, kind, from_state.value if from_state else None,
                          to_state.value if to_state else None, detail)

    async def _announce(self, agent_id: str, from_state: AgentState | None, to_state: AgentState, detail: str) -> None:
        event = StateChanged(agent_id=agent_id, from_state=from_state.value if from_state else None,
                             to_state=to_state.value, detail=detail, at=datetime.now(UTC))
        await self._bus.publish(self._bus.subject(f"agents.{agent_id}.events.state"), event)
