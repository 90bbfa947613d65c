"""When silence is an agent's failure and when it is the bus's: heartbeat judgement and its suspension (pure logic).

Heartbeats travel over NATS only, so a bus outage silences every agent at once without any of them failing. The
pool's watcher asks `Judgement.overdue` which agents to kill, telling it whether the hub can reach NATS right now:

* The hub cannot reach NATS: judgement is suspended ("NATS unreachable") for as long as that lasts.
* Every agent (at least `_MIN_CROWD` of them) went silent past its limit at once while the hub reaches NATS: the
  agents' side of the bus is the likelier fault, so judgement is suspended for one grace period; a second such
  silence right after that grace is judged (the agents really are gone), so suspensions cannot go on forever.
* When the cause ends, judgement resumes after a grace period (the longest limit among the agents), counted from
  the moment the bus came back: every agent is treated as having beaten then, so each gets a full limit to beat.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

_MIN_CROWD = 2  # one silent agent is that agent's failure, whatever the others do


@dataclass(frozen=True, slots=True)
class Silence:
    """One agent's last sign of life (monotonic seconds) and how long it may be silent."""

    last_beat: float
    limit: float


@dataclass(slots=True)
class Suspension:
    reason: str
    since: datetime  # wall clock, for people
    resume_at: float | None = None  # monotonic; None while its cause lasts


class Judgement:
    def __init__(self) -> None:
        self.suspension: Suspension | None = None
        self._crowd_blocked_until = 0.0  # after a crowd-silence grace, the next crowd silence is judged

    def describe(self) -> str | None:
        """None while heartbeats are judged; else why not, and since when."""
        s = self.suspension
        if s is None:
            return None
        state = "until agents have had time to beat" if s.resume_at is not None else "while it lasts"
        return f"{s.reason} since {s.since.isoformat(timespec='seconds')}; agents are not judged {state}"

    def overdue(self, agents: Mapping[str, Silence], now: float, *, bus_reachable: bool) -> tuple[list[str], float]:
        """The agents to kill now, and the time every agent should count its silence from (`now` when judgement
        resumes or is suspended, so that they all get a full limit to beat; else -inf: keep what they have)."""
        grace = max((s.limit for s in agents.values()), default=0.0)
        late = [agent_id for agent_id, s in agents.items() if now - s.last_beat > s.limit]
        if not bus_reachable:
            if self.suspension is None or self.suspension.resume_at is not None:
                self.suspension = Suspension("the hub cannot reach NATS", datetime.now(UTC))
            return [], now
        if self.suspension is not None:
            if self.suspension.resume_at is None:  # the bus is back: agents get a grace period to beat again
                self.suspension.resume_at = now + grace
                return [], now
            if now < self.suspension.resume_at:
                return [], -float("inf")
            self.suspension = None
            self._crowd_blocked_until = now + grace
        if len(late) >= _MIN_CROWD and len(late) == len(agents) and now >= self._crowd_blocked_until:
            self.suspension = Suspension("every agent's heartbeats stopped at once", datetime.now(UTC),
                                         resume_at=now + grace)
            return [], now
        return late, -float("inf")
