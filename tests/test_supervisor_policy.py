"""The pure restart rules: OTP's restart table, the intensity window and the backoff curve."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.policy import Backoff, Exit, ExitKind, RestartIntensity, RestartType, should_restart

NORMAL = Exit(kind=ExitKind.NORMAL, detail="exit code 0", code=0)
SHUTDOWN = Exit(kind=ExitKind.SHUTDOWN, detail="terminated by SIGTERM", code=-15)
ABNORMAL = Exit(kind=ExitKind.ABNORMAL, detail="exit code 1", code=1)


@pytest.mark.parametrize(("restart", "exit", "restarted"), [
    (RestartType.PERMANENT, NORMAL, True),
    (RestartType.PERMANENT, SHUTDOWN, True),
    (RestartType.PERMANENT, ABNORMAL, True),
    (RestartType.TRANSIENT, NORMAL, False),
    (RestartType.TRANSIENT, SHUTDOWN, False),
    (RestartType.TRANSIENT, ABNORMAL, True),
    (RestartType.TEMPORARY, NORMAL, False),
    (RestartType.TEMPORARY, SHUTDOWN, False),
    (RestartType.TEMPORARY, ABNORMAL, False),
])
def test_restart_decision_follows_otps_table(restart: RestartType, exit: Exit, restarted: bool) -> None:
    assert should_restart(restart, exit) is restarted


def test_the_fourth_restart_within_the_period_breaches_an_intensity_of_three() -> None:
    intensity = RestartIntensity(3, 10.0)
    assert [intensity.add(t) for t in (100.0, 101.0, 102.0, 109.9)] == [False, False, False, True]


def test_restarts_spaced_wider_than_the_period_never_breach() -> None:
    intensity = RestartIntensity(1, 1.0)
    # OTP's multiple_restarts case: intensity 1, period 1 s, crashes 2.1 s apart.
    assert not any(intensity.add(100.0 + 2.1 * i) for i in range(50))


def test_old_restarts_leave_the_window() -> None:
    intensity = RestartIntensity(2, 10.0)
    assert not intensity.add(0.0)
    assert not intensity.add(5.0)
    assert not intensity.add(10.5)  # the restart at 0.0 has left the window
    assert intensity.add(14.0)  # 5.0, 10.5 and 14.0 are within 10 s


def test_a_restart_exactly_one_period_old_still_counts() -> None:
    intensity = RestartIntensity(1, 10.0)
    assert not intensity.add(0.0)
    assert intensity.add(10.0)


def test_zero_max_restarts_breaches_on_the_first_restart() -> None:
    assert RestartIntensity(0, 5.0).add(0.0)


def test_intensity_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RestartIntensity(-1, 5.0)
    with pytest.raises(ValueError):
        RestartIntensity(1, 0.0)


def test_the_first_restart_is_immediate() -> None:
    assert Backoff().delay(0, random.Random(1)) == 0.0


def test_backoff_grows_geometrically_up_to_the_maximum_without_jitter() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, multiplier=2.0, jitter=0.0)
    rng = random.Random(1)
    assert [backoff.delay(n, rng) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_jitter_stays_within_its_band() -> None:
    backoff = Backoff(initial=1.0, maximum=30.0, multiplier=2.0, jitter=0.2)
    rng = random.Random(7)
    delays = [backoff.delay(3, rng) for _ in range(1000)]
    assert min(delays) >= 4.0 * 0.8
    assert max(delays) <= 4.0 * 1.2
    assert max(delays) - min(delays) > 1.0  # it really varies


def test_a_huge_attempt_number_is_capped_not_an_overflow() -> None:
    assert Backoff(jitter=0.0).delay(100_000, random.Random(1)) == 30.0


@given(initial=st.floats(0.0, 100.0), maximum=st.floats(0.0, 1000.0), multiplier=st.floats(1.0, 10.0),
       jitter=st.floats(0.0, 2.0), attempt=st.integers(0, 10_000), seed=st.integers(0, 2**32))
def test_backoff_delay_is_never_negative_nor_above_the_jittered_maximum(
        initial: float, maximum: float, multiplier: float, jitter: float, attempt: int, seed: int) -> None:
    backoff = Backoff(initial=initial, maximum=maximum, multiplier=multiplier, jitter=jitter)
    delay = backoff.delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= maximum * (1.0 + jitter)
    if attempt == 0:
        assert delay == 0.0


@given(attempt=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_backoff_never_shrinks_from_one_attempt_to_the_next_without_jitter(attempt: int, seed: int) -> None:
    backoff = Backoff(initial=0.1, maximum=60.0, multiplier=1.5, jitter=0.0)
    rng = random.Random(seed)
    assert backoff.delay(attempt, rng) <= backoff.delay(attempt + 1, rng)


def test_backoff_rejects_negative_values() -> None:
    with pytest.raises(ValueError):
        Backoff(initial=-1.0)
    with pytest.raises(ValueError):
        Backoff(multiplier=0.5)
