"""The agent state machine: which state changes are legal.

    created → starting → running ⇄ busy/idle → stopping → stopped
    any live state → error (a crash, a lost heartbeat) → starting (the supervisor restarts it)
    any state but stopped → failed (restarts exhausted, or a logical error such as a bad configuration)
    stopped / failed → starting (an operator restarts it)

Every other change is refused, so a late heartbeat cannot revive a stopped agent.
"""

from enum import StrEnum

from agenthub.errors import IllegalTransition


class AgentState(StrEnum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    BUSY = "busy"
    IDLE = "idle"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"
    FAILED = "failed"


S = AgentState
_WORKING = frozenset({S.RUNNING, S.BUSY, S.IDLE})
# States in which the agent has (or is about to have) a process.
LIVE = frozenset({S.STARTING, *_WORKING, S.ERROR})

_ALLOWED: dict[AgentState, frozenset[AgentState]] = {
    S.CREATED: frozenset({S.STARTING, S.STOPPING, S.FAILED}),
    S.STARTING: frozenset({S.RUNNING, S.ERROR, S.STOPPING, S.FAILED}),
    S.RUNNING: frozenset({S.BUSY, S.IDLE, S.ERROR, S.STOPPING, S.FAILED}),
    S.BUSY: frozenset({S.RUNNING, S.IDLE, S.ERROR, S.STOPPING, S.FAILED}),
    S.IDLE: frozenset({S.RUNNING, S.BUSY, S.ERROR, S.STOPPING, S.FAILED}),
    S.ERROR: frozenset({S.STARTING, S.STOPPING, S.FAILED}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED}),
    S.STOPPED: frozenset({S.STARTING}),
    S.FAILED: frozenset({S.STARTING}),
}


def is_working(state: AgentState) -> bool:
    """Running, busy or idle: announced and able to take work."""
    return state in _WORKING


def can_transition(current: AgentState, target: AgentState) -> bool:
    return target in _ALLOWED[current]


def check_transition(agent_id: str, current: AgentState, target: AgentState) -> None:
    if not can_transition(current, target):
        raise IllegalTransition(agent_id, current.value, target.value)
