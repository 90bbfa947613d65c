"""Supervision for agenthub: an Erlang/OTP-style supervision tree over OS processes and tasks, and circuit breakers.

* `supervisor.policy`: the pure rules (restart types, strategies, intensity window, backoff).
* `supervisor.tree`: `Supervisor`, `ChildSpec` and the `Child` protocol; `task_child` runs a task as a child.
* `supervisor.process`: `start_process` runs an OS process (in its own process group) as a child.
* `supervisor.breaker`: `Breaker`, a circuit breaker for asyncio calls built on pybreaker.
"""

from supervisor.breaker import Breaker, BreakerState
from supervisor.policy import Backoff, Exit, ExitKind, RestartIntensity, RestartType, Strategy, should_restart
from supervisor.process import ProcessChild, start_process
from supervisor.tree import (
    INTENSITY_REACHED,
    Child,
    ChildInfo,
    ChildSpec,
    ChildStatus,
    EventKind,
    Listener,
    StartFn,
    Supervisor,
    SupervisorEvent,
    task_child,
)

__all__ = [
    "INTENSITY_REACHED",
    "Backoff",
    "Breaker",
    "BreakerState",
    "Child",
    "ChildInfo",
    "ChildSpec",
    "ChildStatus",
    "EventKind",
    "Exit",
    "ExitKind",
    "Listener",
    "ProcessChild",
    "RestartIntensity",
    "RestartType",
    "StartFn",
    "Strategy",
    "Supervisor",
    "SupervisorEvent",
    "should_restart",
    "start_process",
    "task_child",
]
