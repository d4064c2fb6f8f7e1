"""Backoff with jitter and the failure log: pure, so no event loop and no clock."""

from __future__ import annotations

import math
import random

import pytest

from geerpc.backoff import Backoff, FailureLog, Recovery


def test_steps_double_up_to_the_maximum():
    backoff = Backoff(0.5, 4.0, jitter=0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_maximum_caps_the_first_step_too():
    assert Backoff(0.5, 0.1, jitter=0).delay(1) == 0.1


def test_equal_jitter_waits_between_half_and_all_of_each_step():
    backoff = Backoff(0.5, 8.0, rng=random.Random(1))
    for n in range(1, 10):
        step = backoff.step(n)
        delays = [backoff.delay(n) for _ in range(200)]
        assert step / 2 <= min(delays) and max(delays) <= step
        assert max(delays) - min(delays) > step / 4  # random, not fixed


def test_full_jitter_may_wait_almost_nothing():
    backoff = Backoff(1.0, 1.0, jitter=1.0, rng=random.Random(2))
    assert min(backoff.delay(1) for _ in range(200)) < 0.1


def test_huge_failure_counts_do_not_overflow():
    assert Backoff(0.5, 10.0, factor=3.0, jitter=0).delay(10**6) == 10.0


def test_next_delay_counts_and_reset_starts_over():
    backoff = Backoff(1.0, 100.0, jitter=0)
    assert [backoff.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]
    assert backoff.failures == 3
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_maximum_can_change_between_delays():
    backoff = Backoff(1.0, 100.0, jitter=0)
    backoff.maximum = 3.0
    assert backoff.delay(5) == 3.0


@pytest.mark.parametrize(
    "initial, maximum, factor, jitter",
    [(0, 1, 2, 0.5), (-1, 1, 2, 0.5), (math.nan, 1, 2, 0.5), (1, 0, 2, 0.5), (1, 1, 0.5, 0.5), (1, 1, 2, 1.5)],
)
def test_bad_arguments(initial, maximum, factor, jitter):
    with pytest.raises(ValueError):
        Backoff(initial, maximum, factor=factor, jitter=jitter)


# -- FailureLog -------------------------------------------------------------------------


def test_warns_at_the_first_failure_of_a_run_only():
    log = FailureLog()
    assert [log.failed(now) for now in (10.0, 11.0, 500.0)] == [True, False, False]
    assert log.failures == 3


def test_recovery_of_a_warned_run_is_reported_with_its_length():
    log = FailureLog()
    log.failed(10.0)
    log.failed(12.0)
    assert log.recovered(15.5) == Recovery(failures=2, seconds=5.5)
    assert log.failures == 0
    assert log.recovered(16.0) is None  # no run: nothing to report


def test_a_new_run_warns_again():
    log = FailureLog()
    log.failed(1.0)
    log.recovered(2.0)
    assert log.failed(3.0) is True


def test_every_repeats_the_warning_during_a_long_run():
    log = FailureLog(every=60.0)
    warned = [now for now in range(0, 200, 10) if log.failed(float(now))]
    assert warned == [0, 60, 120, 180]


def test_quiet_failures_count_but_never_warn():
    log = FailureLog()
    assert log.failed(1.0, quiet=True) is False
    assert log.failed(2.0) is False  # not the first of its run either
    assert log.failures == 2
    assert log.recovered(3.0) is None  # nobody was warned: nothing to report
