"""Reputation from an agent's record: the prior, failures, decay, the floor, timeliness, lost disputes and the
per-capability score."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.reputation import (
    NEW_AGENT_REPUTATION,
    REPUTATION_FLOOR,
    Observation,
    ReputationScore,
    reputation,
    score,
)

NOW = 1_800_000_000.0
DAY = 86_400.0
HALF_LIFE = 30 * DAY


def done(*, ago: float = 0.0, succeeded: bool = True, on_time: float | None = None, dispute_lost: bool = False,
         capability: str | None = None) -> Observation:
    return Observation(at=NOW - ago, succeeded=succeeded, on_time=on_time, dispute_lost=dispute_lost,
                       capability=capability)


def value(*observations: Observation, half_life: float = HALF_LIFE) -> float:
    return reputation(observations, NOW, half_life)


def test_a_new_agent_has_the_priors_value() -> None:
    assert NEW_AGENT_REPUTATION == 0.6
    assert score([], now=NOW, half_life=HALF_LIFE) == ReputationScore(
        success=0.6, timeliness=1.0, disputes=0.0, value=0.6, evidence=0.0)


def test_failures_lower_it_and_successes_raise_it_below_one() -> None:
    assert value(done(succeeded=False)) == pytest.approx(3 / 6)
    assert value(*[done(succeeded=False)] * 3) == pytest.approx(3 / 8)
    assert value(*[done()] * 20) == pytest.approx(23 / 25)
    assert value(*[done()] * 10_000) < 1.0


def test_a_cheap_bidder_that_keeps_failing_is_priced_out() -> None:
    # Asking half of a reliable agent's price no longer wins after a handful of recent failures.
    reliable = value(*[done()] * 20)
    flaky = value(*[done(succeeded=False)] * 5, *[done()] * 2)
    assert 50 / flaky > 100 / reliable


def test_an_observation_one_half_life_old_weighs_half() -> None:
    assert value(done(ago=HALF_LIFE, succeeded=False)) == pytest.approx(3 / 5.5)
    assert score([done(ago=2 * HALF_LIFE)], now=NOW, half_life=HALF_LIFE).evidence == pytest.approx(0.25)


def test_decay_brings_an_old_failure_back_towards_the_prior() -> None:
    recent = value(done(succeeded=False))
    month = value(done(ago=30 * DAY, succeeded=False))
    year = value(done(ago=365 * DAY, succeeded=False))
    assert recent < month < year < NEW_AGENT_REPUTATION
    assert year == pytest.approx(NEW_AGENT_REPUTATION, abs=1e-3)


def test_without_decay_age_does_not_matter() -> None:
    assert value(done(ago=1e6 * DAY, succeeded=False), half_life=math.inf) == value(done(succeeded=False))


def test_an_observation_from_the_future_counts_as_new() -> None:
    assert value(done(ago=-5 * DAY, succeeded=False)) == value(done(succeeded=False))


def test_the_value_never_goes_below_the_floor() -> None:
    many = [done(succeeded=False, dispute_lost=True)] * 500
    assert value(*many) == REPUTATION_FLOOR == 0.05
    assert score(many, now=NOW, half_life=HALF_LIFE).success < REPUTATION_FLOOR


def test_lateness_against_its_own_estimate_lowers_it() -> None:
    # Twice the estimate scores 0.5: timeliness (2 x 1 + 0.5) / 3, value success x (1/2 + timeliness / 2).
    late = score([done(on_time=2.0)], now=NOW, half_life=HALF_LIFE)
    assert late.timeliness == pytest.approx(2.5 / 3)
    assert late.value == pytest.approx(4 / 6 * (0.5 + 0.5 * 2.5 / 3))
    assert late.value < value(done(on_time=1.0)) == value(done()) == pytest.approx(4 / 6)


def test_finishing_early_earns_no_bonus_and_lateness_is_capped() -> None:
    assert value(done(on_time=0.1)) == value(done(on_time=1.0))
    assert value(done(on_time=100.0)) == value(done(on_time=4.0)) < value(done(on_time=3.0))
    worst = score([done(on_time=100.0)] * 1000, now=NOW, half_life=HALF_LIFE)
    assert worst.timeliness == pytest.approx((2 + 1000 * 0.25) / 1002)


def test_a_failure_does_not_count_towards_timeliness() -> None:
    assert score([done(succeeded=False, on_time=1.0)], now=NOW, half_life=HALF_LIFE).timeliness == 1.0
    assert value(done(on_time=3.0), done(succeeded=False, on_time=1.0)) < value(done(on_time=3.0))


def test_a_lost_dispute_costs_more_than_a_plain_failure() -> None:
    lost = score([done(succeeded=False, dispute_lost=True)], now=NOW, half_life=HALF_LIFE)
    assert lost.disputes == 1.0
    assert lost.value == pytest.approx(3 / 8)
    assert lost.value < value(done(succeeded=False))


def test_a_capability_starts_from_the_agents_overall_score_and_moves_with_its_own_record() -> None:
    record = [done(capability="code")] * 10
    overall = reputation(record, NOW, HALF_LIFE)
    assert reputation(record, NOW, HALF_LIFE, capability="review") == pytest.approx(overall)
    record += [done(succeeded=False, capability="review")] * 3
    assert reputation(record, NOW, HALF_LIFE, capability="review") < reputation(record, NOW, HALF_LIFE) \
        < reputation(record, NOW, HALF_LIFE, capability="code")


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError):
        reputation([], NOW, 0.0)
    with pytest.raises(ValueError):
        reputation([], NOW, math.nan)
    with pytest.raises(ValueError):
        done(on_time=-1.0)
    with pytest.raises(ValueError):
        Observation(at=math.inf, succeeded=True)


observations = st.builds(
    Observation,
    at=st.floats(NOW - 400 * DAY, NOW + DAY),
    succeeded=st.booleans(),
    on_time=st.none() | st.floats(0.0, 20.0),
    dispute_lost=st.booleans(),
    capability=st.sampled_from([None, "code", "review"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(observations, max_size=30), st.sampled_from([None, "code", "review"]))
def test_the_value_stays_in_range(record: list[Observation], capability: str | None) -> None:
    assert REPUTATION_FLOOR <= reputation(record, NOW, HALF_LIFE, capability=capability) < 1.0


@settings(max_examples=400, deadline=None)
@given(st.lists(observations, max_size=30), observations, st.sampled_from([None, "code", "review"]))
def test_another_failure_never_raises_it_and_another_timely_success_never_lowers_it(
        record: list[Observation], extra: Observation, capability: str | None) -> None:
    before = reputation(record, NOW, HALF_LIFE, capability=capability)
    failure = Observation(at=extra.at, succeeded=False, on_time=extra.on_time, dispute_lost=extra.dispute_lost,
                          capability=capability)
    success = Observation(at=extra.at, succeeded=True, on_time=min(1.0, extra.on_time or 1.0), capability=capability)
    assert reputation([*record, failure], NOW, HALF_LIFE, capability=capability) <= before + 1e-12
    assert reputation([*record, success], NOW, HALF_LIFE, capability=capability) >= before - 1e-12
