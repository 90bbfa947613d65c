"""Reputation: how much the market trusts an agent's bids, computed from its record at read time.

A reputation is a number in (0, 1]; auctions divide a bid's price by it (`market.clearing`), so a cheap bidder
that keeps failing stops winning. It is a pure function of the agent's observations (one per finished task),
the current time and a half-life; nothing is stored but the observations.

Decay
    An observation `age` seconds old weighs `0.5 ** (age / half_life)`: one half-life ago counts half, two count
    a quarter. Observations stamped in the future (clock skew) count as new. `half_life=math.inf` never forgets.

Parts (every observation counted with its decay weight)
    success     (3 + decayed successes) / (3 + 2 + decayed tasks + 2 x decayed lost disputes): a Beta(3, 2)
                prior, mean 0.6, in which a lost dispute counts as two failures on top of the task itself.
    timeliness  the agent against its own estimates, over its successful tasks with a measured `on_time`. A task
                that took `r` times its estimate scores `1 / clamp(r, 1, 4)`: on time or early is 1 (no bonus
                for padding an estimate), twice as long 0.5, four times or worse 0.25 (capped, so one hung task
                cannot wipe out a record). Prior: 2 tasks at 1. Failures are left out: they already cost
                success, and a failure that is "on time" must not make the agent look better.
    disputes    the decayed number of lost disputes (shown; it acts through success).

Value
    `success x (1/2 + timeliness/2)`, at least 0.05 (so scaled costs stay finite). Failing matters most;
    lateness at worst costs 3/8 of the value. A new agent has the priors' value, 0.6 (`NEW_AGENT_REPUTATION`): it
    can win against an established agent by asking less, and one with a clean record approaches 1 (20 recent
    successes give 0.92). An extra failure never raises the value (losing a dispute over it lowers it further),
    nor does an extra success on time lower it; so an old failure hurts less than a recent one, and an old
    success helps less.

Per capability
    With `capability`, only observations recorded for that capability count, and the priors' means are the
    agent's overall parts instead of the new-agent values: a reliable agent starts a new capability at its
    overall score, and that capability's own record then moves it.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass

PRIOR_SUCCESSES = 3.0
PRIOR_FAILURES = 2.0
TIMELINESS_PRIOR_TASKS = 2.0
DISPUTE_PENALTY = 2.0
LATENESS_CAP = 4.0
REPUTATION_FLOOR = 0.05
NEW_AGENT_REPUTATION = PRIOR_SUCCESSES / (PRIOR_SUCCESSES + PRIOR_FAILURES)
DEFAULT_HALF_LIFE_SECONDS = 30 * 24 * 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """One finished task of an agent.

    Attributes:
        at: when it finished (unix seconds).
        succeeded: completed and accepted (False for failed, timed out or refunded).
        on_time: actual seconds / the agent's estimated seconds; None when not measured. Counts only when the
            task succeeded.
        dispute_lost: a dispute about it was resolved against the agent.
        capability: the capability the task required, when scored per capability.
    """

    at: float
    succeeded: bool
    on_time: float | None = None
    dispute_lost: bool = False
    capability: str | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.at):
            raise ValueError(f"observation time must be finite, got {self.at}")
        if self.on_time is not None and not 0.0 <= self.on_time < math.inf:
            raise ValueError(f"on_time must be a finite ratio >= 0, got {self.on_time}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReputationScore:
    """A reputation with its parts, for display.

    Attributes:
        success: decayed success rate with its prior, lost disputes counting as extra failures, in (0, 1).
        timeliness: decayed on-time score of successful tasks with its prior, in [0.25, 1].
        disputes: decayed number of lost disputes.
        value: what auctions use, in [0.05, 1).
        evidence: the decayed number of observations behind the score (0 for a new agent).
    """

    success: float
    timeliness: float
    disputes: float
    value: float
    evidence: float


_NEW_AGENT = ReputationScore(success=NEW_AGENT_REPUTATION, timeliness=1.0, disputes=0.0,
                             value=NEW_AGENT_REPUTATION, evidence=0.0)


def score(observations: Iterable[Observation], *, now: float, half_life: float,
          capability: str | None = None) -> ReputationScore:
    """The agent's reputation and its parts at time `now` (see the module docstring).

    Args:
        observations: the agent's finished tasks, in any order.
        now: the time of reading (unix seconds).
        half_life: seconds after which an observation weighs half; > 0, `math.inf` for no decay.
        capability: score only this capability's tasks, starting from the agent's overall score.

    Raises:
        ValueError: `half_life` is not positive.
    """
    if not half_life > 0.0:
        raise ValueError(f"half_life must be > 0, got {half_life}")
    observations = list(observations)
    overall = _score(observations, now, half_life, _NEW_AGENT)
    if capability is None:
        return overall
    return _score([o for o in observations if o.capability == capability], now, half_life, overall)


def reputation(observations: Iterable[Observation], now: float, half_life: float, *,
               capability: str | None = None) -> float:
    """The value of `score`: the number auctions divide bid prices by, in [0.05, 1)."""
    return score(observations, now=now, half_life=half_life, capability=capability).value


def _score(observations: list[Observation], now: float, half_life: float, prior: ReputationScore) -> ReputationScore:
    tasks = successes = disputes = timed = on_time = 0.0
    for observation in observations:
        weight = 0.5 ** (max(0.0, now - observation.at) / half_life)
        tasks += weight
        if observation.dispute_lost:
            disputes += weight
        if observation.succeeded:
            successes += weight
            if observation.on_time is not None:
                timed += weight
                on_time += weight / min(max(observation.on_time, 1.0), LATENESS_CAP)
    prior_tasks = PRIOR_SUCCESSES + PRIOR_FAILURES
    success = (prior.success * prior_tasks + successes) / (prior_tasks + tasks + DISPUTE_PENALTY * disputes)
    timeliness = (prior.timeliness * TIMELINESS_PRIOR_TASKS + on_time) / (TIMELINESS_PRIOR_TASKS + timed)
    value = max(REPUTATION_FLOOR, success * (0.5 + 0.5 * timeliness))
    return ReputationScore(success=success, timeliness=timeliness, disputes=disputes, value=value, evidence=tasks)
