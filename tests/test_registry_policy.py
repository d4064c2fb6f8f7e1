"""RegistryDiscovery's policy, driven synchronously with an explicit ``now``: no loop, no sockets."""

from __future__ import annotations

import random

import pytest

from geerpc.xclient.registry_policy import MAX_WATCH_PAUSE, MIN_WATCH_GAP, DiscoveryPolicy, Outcome, Step
from geerpc.xclient.registry_reply import Answer

A = "tcp@127.0.0.1:9001"
B = "tcp@127.0.0.1:9002"
T0 = 1000.0


def policy(update_interval: float = 10.0, restart_grace: float = 300.0) -> DiscoveryPolicy:
    return DiscoveryPolicy(update_interval, restart_grace, rng=random.Random(7))


def answer(*servers: str, now: float = T0, index: int | None = 5, uptime: float | None = None,
           timeout: float | None = None) -> Answer:
    return Answer({address: None for address in servers}, index, now, timeout, uptime)


# -- freshness ------------------------------------------------------------------------


def test_nothing_is_fresh_before_the_first_answer():
    assert not policy().fresh(T0, watching=False)


def test_an_answer_is_fresh_for_update_interval():
    p = policy(update_interval=10.0)
    p.answered(T0, answer(A), watch=False, have_servers=False)
    assert p.fresh(T0 + 9.9, watching=False)
    assert not p.fresh(T0 + 10.0, watching=False)


def test_a_live_watch_keeps_the_list_fresh_while_its_task_runs():
    p = policy(update_interval=10.0)
    p.answered(T0, answer(A), watch=False, have_servers=False)
    assert p.next_step(T0, Outcome(True, 5)) == Step(5, MIN_WATCH_GAP)
    assert p.watch_live
    assert p.fresh(T0 + 3600, watching=True)
    assert not p.fresh(T0 + 3600, watching=False)  # the task ended: the watch counts for nothing


def test_reads_serve_the_list_while_backing_off():
    p = policy(update_interval=10.0)
    p.answered(T0, answer(A), watch=False, have_servers=False)
    now = T0 + 20
    assert p.failed(now, "refused", watch=False) is True
    assert 0.25 <= p.next_attempt - now <= 0.5
    assert p.fresh(now + 0.2, watching=False)
    assert not p.fresh(p.next_attempt, watching=False)
    assert p.last_error == "refused"


# -- failures and backoff ---------------------------------------------------------------


def test_failures_back_off_doubling_up_to_update_interval_and_warn_once():
    p = policy(update_interval=4.0)
    warnings = []
    delays = []
    for _ in range(8):
        warnings.append(p.failed(T0, "down", watch=False))
        delays.append(p.next_attempt - T0)
    assert warnings == [True] + [False] * 7
    for failures, delay in enumerate(delays, 1):
        step = min(4.0, 0.5 * 2 ** (failures - 1))
        assert step / 2 <= delay <= step
    assert p.failures == 8


def test_backoff_never_exceeds_a_short_update_interval():
    p = policy(update_interval=0.1)
    for _ in range(5):
        p.failed(T0, "down", watch=False)
        assert 0.05 <= p.next_attempt - T0 <= 0.1


def test_good_answer_after_warned_failures_reports_the_recovery():
    p = policy()
    p.failed(T0, "down", watch=False)
    p.failed(T0 + 1, "down", watch=False)
    applied = p.answered(T0 + 3, answer(A, now=T0 + 3), watch=False, have_servers=False)
    assert applied.apply
    assert (applied.recovered.failures, applied.recovered.seconds) == (2, 3.0)
    assert p.failures == 0 and p.last_error is None
    assert p.answered(T0 + 4, answer(A), watch=False, have_servers=True).recovered is None


def test_watch_cut_while_plain_gets_work_backs_off_and_warns_once():
    p = policy(update_interval=10.0)
    warnings, recoveries, delays = [], [], []
    now = T0
    for _ in range(5):
        recoveries.append(p.answered(now, answer(A, now=now), watch=False, have_servers=True).recovered)
        warnings.append(p.failed(now, "HTTP 502", watch=True))
        delays.append(p.next_attempt - now)
        now += 100
    assert warnings == [True, False, False, False, False]
    assert [r is not None for r in recoveries] == [False, True, False, False, False]
    assert p.watch_failures == 5
    for failures, delay in enumerate(delays, 1):  # the watch's own count drives the backoff
        step = min(10.0, 0.5 * 2 ** (failures - 1))
        assert step / 2 <= delay <= step


def test_a_good_watch_clears_the_watch_failures():
    p = policy()
    p.failed(T0, "cut", watch=True)
    p.answered(T0 + 1, answer(A), watch=False, have_servers=False)
    assert p.watch_failures == 1  # a plain GET does not
    p.answered(T0 + 2, answer(A), watch=True, have_servers=True)
    assert p.watch_failures == 0
    assert p.failed(T0 + 3, "cut", watch=True) is True  # news again


# -- refused watches ----------------------------------------------------------------------


def test_refused_watch_pauses_for_update_interval_doubling():
    p = policy(update_interval=2.0)
    refusals = [p.refused(T0, retry_after=0) for _ in range(10)]
    assert [r.warn for r in refusals] == [True] + [False] * 9
    assert [r.pause for r in refusals[:4]] == [2.0, 4.0, 8.0, 16.0]
    assert refusals[-1].pause == MAX_WATCH_PAUSE
    assert p.last_error is None  # a registry that refuses a watch is up


def test_retry_after_lengthens_the_pause_but_not_past_the_maximum():
    p = policy(update_interval=2.0)
    assert p.refused(T0, retry_after=30).pause == 30
    assert p.refused(T0, retry_after=10**9).pause == MAX_WATCH_PAUSE


def test_while_paused_the_loop_polls_then_watches_again():
    p = policy(update_interval=2.0)
    p.refused(T0, retry_after=0)
    assert p.next_step(T0, Outcome(False, error="HTTP 429", refused=True)) == Step(None, 2.0)
    assert not p.watch_live
    assert p.next_step(T0 + 1.9, Outcome(True, 5)) == Step(None, 2.0)  # still paused: poll
    assert p.next_step(T0 + 2.0, Outcome(True, 5)) == Step(5, MIN_WATCH_GAP)
    assert p.watch_live


def test_watch_accepted_again_after_refusals_reports_it():
    p = policy()
    p.refused(T0, retry_after=0)
    p.refused(T0 + 1, retry_after=0)
    applied = p.answered(T0 + 5, answer(A), watch=True, have_servers=True)
    assert applied.watch_recovered is not None and applied.watch_recovered.failures == 2
    assert applied.recovered is None  # nothing failed: the registry was up throughout


# -- the watch loop's next step ------------------------------------------------------------


def test_registry_without_indexes_is_polled_at_update_interval():
    assert policy(update_interval=0.2).next_step(T0, Outcome(True, None)) == Step(None, 0.2)


def test_after_a_failure_the_loop_waits_for_the_backoff():
    p = policy(update_interval=10.0)
    p.failed(T0, "down", watch=True)
    step = p.next_step(T0, Outcome(False, error="down"))
    assert step.index is None and step.delay == p.next_attempt - T0
    assert p.next_step(p.next_attempt + 5, Outcome(False)).delay == MIN_WATCH_GAP  # never a zero wait


# -- empty answers: the last server left, or the registry restarted -----------------------


def test_empty_answer_without_a_restart_applies_at_once():
    p = policy()
    p.answered(T0, answer(A, uptime=100, timeout=300), watch=False, have_servers=False)
    assert p.answered(T0 + 1, answer(now=T0 + 1, uptime=101, timeout=300), watch=True, have_servers=True).apply


def test_empty_answer_from_a_restarted_registry_is_held_until_its_timeout():
    p = policy()
    p.answered(T0, answer(A, uptime=100, timeout=300), watch=False, have_servers=False)
    # The same registry would say uptime 105 five seconds later; this one has just started.
    restarted = answer(now=T0 + 5, uptime=1, timeout=300)
    assert not p.answered(T0 + 5, restarted, watch=False, have_servers=True).apply
    assert not p.answered(T0 + 304, answer(now=T0 + 304, uptime=299.9, timeout=300), watch=False,
                          have_servers=True).apply
    assert p.answered(T0 + 305, answer(now=T0 + 305, uptime=300, timeout=300), watch=False,
                      have_servers=True).apply


def test_start_time_wobbling_within_a_second_is_not_a_restart():
    p = policy()
    p.answered(T0, answer(A, uptime=100, timeout=300), watch=False, have_servers=False)
    wobbly = answer(now=T0 + 10, uptime=109.2, timeout=300)  # started 0.8 s "later"
    assert p.answered(T0 + 10, wobbly, watch=False, have_servers=True).apply


def test_non_empty_answer_after_a_restart_applies_at_once_and_ends_the_hold():
    p = policy()
    p.answered(T0, answer(A, uptime=100, timeout=300), watch=False, have_servers=False)
    assert not p.answered(T0 + 5, answer(now=T0 + 5, uptime=1, timeout=300), watch=False, have_servers=True).apply
    assert p.answered(T0 + 6, answer(B, now=T0 + 6, uptime=2, timeout=300), watch=False, have_servers=True).apply
    # B leaving now means B left: nothing restarted since.
    assert p.answered(T0 + 7, answer(now=T0 + 7, uptime=3, timeout=300), watch=False, have_servers=True).apply


def test_empty_answer_after_a_failure_is_held_for_restart_grace_without_uptime():
    p = policy(restart_grace=30.0)
    p.answered(T0, answer(A), watch=False, have_servers=False)
    p.failed(T0 + 1, "down", watch=False)
    assert not p.answered(T0 + 2, answer(now=T0 + 2), watch=False, have_servers=True).apply
    assert not p.answered(T0 + 31.9, answer(now=T0 + 31.9), watch=False, have_servers=True).apply
    assert p.answered(T0 + 32, answer(now=T0 + 32), watch=False, have_servers=True).apply


@pytest.mark.parametrize("have_servers", [False, True])
def test_empty_answer_is_applied_when_there_is_nothing_to_hold(have_servers):
    p = policy()
    p.failed(T0, "down", watch=False)
    applied = p.answered(T0 + 1, answer(), watch=False, have_servers=have_servers)
    assert applied.apply is (not have_servers)
