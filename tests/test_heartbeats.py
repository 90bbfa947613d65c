"""Heartbeat judgement (agent_pool.heartbeats): when silence kills an agent and when it is the bus's fault. Pure
logic on fake monotonic times; the pool's part (every agent counts its silence from the returned time) is
`Watch.tick` here, as `AgentPool._watch` does it."""

from dataclasses import dataclass, field

from agent_pool.heartbeats import Judgement, Silence

LIMIT = 3.0  # 1 s heartbeats, three missed beats
LONG = 10.0  # an agent with a slower heartbeat


@dataclass
class Watch:
    """A judgement and the agents' last beats, updated as the pool's watcher updates them."""

    agents: dict[str, Silence]
    judgement: Judgement = field(default_factory=Judgement)

    def tick(self, now: float, *, bus_reachable: bool = True) -> list[str]:
        overdue, beat_at = self.judgement.overdue(self.agents, now, bus_reachable=bus_reachable)
        self.agents = {a: Silence(max(s.last_beat, beat_at), s.limit) for a, s in self.agents.items()}
        for agent_id in overdue:  # killed: the supervisor restarts it, with a fresh silence
            self.agents[agent_id] = Silence(now, self.agents[agent_id].limit)
        return overdue

    def beat(self, agent_id: str, now: float) -> None:
        self.agents[agent_id] = Silence(now, self.agents[agent_id].limit)

    def said(self) -> str | None:
        return self.judgement.describe()


def watch(*limits: float, last_beat: float = 0.0) -> Watch:
    return Watch({f"a{i}": Silence(last_beat, limit) for i, limit in enumerate(limits)})


def test_while_the_bus_is_unreachable_no_agent_is_killed_however_long_it_is_silent() -> None:
    w = watch(LIMIT, LIMIT, LONG)
    assert w.tick(100.0, bus_reachable=False) == []
    said = w.said()
    assert said is not None and said.startswith("the hub cannot reach NATS since ")
    assert said.endswith("agents are not judged while it lasts")
    for now in (101.0, 150.0, 1000.0):
        assert w.tick(now, bus_reachable=False) == []
        assert w.said() == said  # the same suspension, since its start
    assert {s.last_beat for s in w.agents.values()} == {1000.0}


def test_after_the_bus_is_back_each_agent_has_the_longest_limit_counted_from_then_to_beat() -> None:
    w = watch(LIMIT, LIMIT, LONG)
    w.tick(100.0, bus_reachable=False)
    back = 130.0
    overdue, beat_at = w.judgement.overdue(w.agents, back, bus_reachable=True)
    assert (overdue, beat_at) == ([], back)  # silence counts from the bus's return, not from before the outage
    w.agents = {a: Silence(beat_at, s.limit) for a, s in w.agents.items()}
    said = w.said()
    assert said is not None and said.startswith("the hub cannot reach NATS since ")
    assert said.endswith("agents are not judged until agents have had time to beat")
    w.beat("a0", back + 2)
    for now in (back + 3.5, back + 6, back + LONG - 0.1):  # a1 is past its own limit, but the grace is LONG
        assert w.tick(now) == []
        assert w.said() == said
    w.beat("a0", back + 8)
    assert w.tick(back + LONG + 0.5) == ["a1", "a2"]  # still silent after the grace: judged, killed
    assert w.said() is None


def test_the_bus_failing_again_during_the_grace_suspends_until_it_is_back_again() -> None:
    w = watch(LIMIT, LIMIT)
    w.tick(100.0, bus_reachable=False)
    w.tick(110.0)
    assert w.tick(111.0, bus_reachable=False) == []
    said = w.said()
    assert said is not None and said.endswith("while it lasts")
    assert w.tick(200.0) == []  # back: a new grace from now
    assert w.tick(200.0 + LIMIT - 0.5) == []
    assert w.tick(200.0 + LIMIT + 0.5) == ["a0", "a1"]


def test_one_silent_agent_among_beating_ones_is_killed_at_once() -> None:
    w = watch(LIMIT, LIMIT, LIMIT)
    killed = []
    for now in (1.0, 2.0, 3.0, 4.0, 5.0):
        w.beat("a0", now)
        w.beat("a1", now)
        killed.append(w.tick(now + 0.5))
    assert killed == [[], [], ["a2"], [], []]  # at its limit; its new process then has a full limit of its own
    assert w.said() is None


def test_a_single_agent_alone_falling_silent_is_killed() -> None:
    w = watch(LIMIT)
    assert w.tick(LIMIT - 0.5) == []
    assert w.tick(LIMIT + 0.5) == ["a0"]
    assert w.said() is None


def test_every_agent_silent_at_once_is_suspended_for_one_grace_and_a_second_silence_right_after_is_judged() -> None:
    w = watch(LIMIT, LIMIT, LIMIT)
    first = LIMIT + 0.5
    assert w.tick(first) == []  # the bus is reachable, but every agent stopped at once: likely their side of it
    said = w.said()
    assert said is not None and said.startswith("every agent's heartbeats stopped at once since ")
    assert said.endswith("until agents have had time to beat")
    assert {s.last_beat for s in w.agents.values()} == {first}
    assert w.tick(first + LIMIT - 0.5) == []
    assert w.tick(first + LIMIT) == []  # the grace is over; the agents had exactly their limit
    assert w.said() is None
    assert w.tick(first + LIMIT + 0.5) == ["a0", "a1", "a2"]  # still all silent: they really are gone
    assert w.said() is None


def test_a_crowd_silence_long_after_the_last_one_is_suspended_again() -> None:
    w = watch(LIMIT, LIMIT)
    w.tick(LIMIT + 0.5)
    w.tick(2 * LIMIT + 0.5)  # the suspension ends
    now = 2 * LIMIT + 0.5
    while now < 10 * LIMIT:  # the agents beat again for a while
        now += 1.0
        w.beat("a0", now)
        w.beat("a1", now)
        assert w.tick(now + 0.1) == []
    assert w.tick(now + LIMIT + 0.5) == []  # a new outage on the agents' side gets its own grace
    said = w.said()
    assert said is not None and said.startswith("every agent's heartbeats stopped at once")
