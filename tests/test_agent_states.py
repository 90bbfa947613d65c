"""The agent state machine as a table: the lifecycle paths are legal, everything else is refused."""

import pytest

from agent_pool.states import LIVE, AgentState, can_transition, check_transition, is_working
from agenthub.errors import IllegalTransition

S = AgentState
LIFECYCLE = [S.CREATED, S.STARTING, S.RUNNING, S.BUSY, S.IDLE, S.BUSY, S.RUNNING, S.IDLE, S.STOPPING, S.STOPPED,
             S.STARTING, S.RUNNING, S.ERROR, S.STARTING, S.ERROR, S.FAILED, S.STARTING]


def test_the_documented_lifecycle_is_legal_step_by_step() -> None:
    for current, target in zip(LIFECYCLE, LIFECYCLE[1:], strict=False):
        check_transition("a", current, target)


@pytest.mark.parametrize(("current", "target"), [
    (S.STOPPED, S.RUNNING),    # a late announce cannot revive a stopped agent
    (S.STOPPED, S.STOPPING),   # stopping a stopped agent
    (S.FAILED, S.RUNNING),
    (S.CREATED, S.RUNNING),    # must start first
    (S.STOPPING, S.RUNNING),
    (S.STOPPING, S.STARTING),
    (S.ERROR, S.RUNNING),      # a restart goes through starting
    (S.RUNNING, S.STARTING),
    (S.IDLE, S.STOPPED),       # stopping is a state of its own
])
def test_illegal_transitions_are_refused_with_both_states_named(current: AgentState, target: AgentState) -> None:
    assert not can_transition(current, target)
    with pytest.raises(IllegalTransition, match=f"agent 'a' is {current.value} and cannot become {target.value}"):
        check_transition("a", current, target)


def test_every_state_can_reach_failed_except_the_terminal_ones_and_every_state_is_reachable() -> None:
    for state in S:
        if state not in (S.FAILED, S.STOPPED):
            assert can_transition(state, S.FAILED), state
    reachable = {S.CREATED}
    frontier = [S.CREATED]
    while frontier:
        current = frontier.pop()
        for target in S:
            if can_transition(current, target) and target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(S)
    assert {s for s in S if is_working(s)} == {S.RUNNING, S.BUSY, S.IDLE}
    assert S.STOPPED not in LIVE and S.FAILED not in LIVE and S.STARTING in LIVE
