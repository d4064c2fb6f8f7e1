"""One idempotent call as attempts: retries with backoff, and one hedged copy.

Layer: the asyncio loop over ``retry.py``'s arithmetic, under ``XClient``. It knows
nothing of servers or connections: the XClient hands it ``attempt``, a function that
makes one attempt (pick a server, dial, call, fail over as usual) and raises what
that attempt ended with. So the same loop serves any way of picking a server.

Strategy: the call's deadline is split among its attempts (``retry.attempt_share``).
While one copy is out and ``hedge_after`` passes without a reply, a second copy goes
to another server, if the budget allows; the first reply wins (an error reply is a
reply too) and the other copy is cancelled, which tells its server to cancel the
handler. When every copy out has failed in a way worth retrying (its own timeout,
Unavailable, a connection failure), the next attempt waits its backoff, then goes to
a server the call has not tried yet when there is one. A call that will not hedge
(no ``hedge_after``, or no p95 yet) makes its attempts one at a time in the caller's
own task (``_in_turn``); only a hedging one runs them as tasks (``_hedged``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..deadline import Deadline
from ..errors import CallTimeout, ConnectError, ConnectionClosed, ConnectTimeout, Unavailable
from .retry import DEFAULT_BUDGET, LatencyWindow, Retry, RetryBudget, attempt_share

__all__ = ["Attempt", "NoSpare", "Policy", "run", "cancel_and_wait"]

#: ``attempt(deadline, used, strict)``: one attempt within ``deadline``, on a server not
#: in ``used`` when there is one (never one in ``used`` when ``strict``: raise NoSpare);
#: it adds the server it picks to ``used`` as soon as it picks it.
Attempt = Callable[[Deadline | None, set[str], bool], Awaitable[Any]]

# After these an attempt may be made again (CallTimeout: only while the call has time left).
_RETRYABLE = (CallTimeout, Unavailable, ConnectError, ConnectTimeout, ConnectionClosed)


class NoSpare(Exception):
    """A hedge found no server the call has not used: no copy was sent."""


class Policy:
    """An XClient's retry and hedging settings, with the budget and latencies they share."""

    def __init__(self, retry: Retry | None, hedge_after: float | str | None, rng: random.Random) -> None:
        self.retry = retry
        self.hedge_after = hedge_after
        self.budget = RetryBudget(retry.budget if retry is not None else DEFAULT_BUDGET)
        self.latencies = LatencyWindow() if hedge_after == "p95" else None
        self.rng = rng

    def hedge_delay(self) -> float | None:
        """Seconds to wait for a reply before hedging; None: no hedge (yet)."""
        if self.latencies is not None:
            return self.latencies.value
        assert not isinstance(self.hedge_after, str)
        return self.hedge_after


def _retryable(error: BaseException, deadline: Deadline | None, now: float) -> bool:
    if not isinstance(error, _RETRYABLE):
        return False
    return not (isinstance(error, CallTimeout) and deadline is not None and deadline.expired(now))


def _until(deadline: Deadline | None, share: float | None, now: float) -> Deadline | None:
    """The deadline of one attempt: ``share`` seconds from ``now``, within the call's."""
    if share is None:
        return deadline
    if deadline is not None and now + share >= deadline.at:
        return deadline
    return Deadline(now + share, share)


async def run(policy: Policy, attempt: Attempt, deadline: Deadline | None, service_method: str) -> Any:
    """Make the call as attempts (the module docstring says how); return the first reply.

    Raises the reply's error, or the last attempt's failure once no attempt is left,
    or the budget, or time; CallTimeout when the call's deadline passes.
    """
    hedge_delay = policy.hedge_delay()
    if hedge_delay is None:
        return await _in_turn(policy, attempt, deadline, service_method)
    return await _hedged(policy, attempt, deadline, service_method, hedge_delay)


class _Retries:
    """What is left of one call's retries, and the wait before the next."""

    def __init__(self, policy: Policy, deadline: Deadline | None) -> None:
        retry = policy.retry
        self.left = retry.attempts - 1 if retry is not None else 0
        self._attempt_timeout = retry.attempt_timeout if retry is not None else None
        self._backoffs = retry.backoffs(policy.rng) if retry is not None else None
        self._budget, self._deadline = policy.budget, deadline
        self._retried = 0

    def until(self, now: float) -> Deadline | None:
        """The deadline of an attempt sent at ``now``."""
        deadline = self._deadline
        left = None if deadline is None else deadline.left(now)
        return _until(deadline, attempt_share(left, self.left, self._attempt_timeout), now)

    def next(self, now: float) -> float | None:
        """After every copy out failed in a way worth retrying: the backoff before the
        next attempt; None (raise the failure) when no retry is left, the budget is
        spent, or the backoff would end past the deadline."""
        if self.left == 0 or not self._budget.try_spend(now):
            return None
        self._retried += 1
        delay = 0.0 if self._backoffs is None else self._backoffs.delay(self._retried)
        if self._deadline is not None and now + delay >= self._deadline.at:
            self._budget.refund(now)
            return None
        self.left -= 1
        return delay


async def _in_turn(policy: Policy, attempt: Attempt, deadline: Deadline | None, service_method: str) -> Any:
    """Without hedging, one attempt at a time, awaited in the caller's own task: a call
    answered at the first attempt costs no task and no wait more than a plain one."""
    loop = asyncio.get_running_loop()
    retries = _Retries(policy, deadline)
    used: set[str] = set()
    policy.budget.record_call(loop.time())
    while True:
        try:
            return await attempt(retries.until(loop.time()), used, False)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the caller is cancelled
            # as in _hedged: only close() cancels an attempt from outside
            raise ConnectionClosed("XClient closed during the call") from None
        except Exception as failure:  # noqa: BLE001 - sorted by _retryable
            # Raised from here, so that no name of this frame keeps the failure (its
            # traceback holds the frame: that would be a cycle for every failed call).
            now = loop.time()
            delay = retries.next(now) if _retryable(failure, deadline, now) else None
            if delay is None:
                raise
        if delay:
            await asyncio.sleep(delay)


async def _hedged(policy: Policy, attempt: Attempt, deadline: Deadline | None, service_method: str,
                  hedge_delay: float) -> Any:
    """Attempts as tasks, so that a hedge can go out while the first copy is still out."""
    loop = asyncio.get_running_loop()
    retries = _Retries(policy, deadline)
    used: set[str] = set()
    out: set[asyncio.Task[Any]] = set()
    done: set[asyncio.Task[Any]] = set()
    copy: asyncio.Task[Any] | None = None
    hedged = False  # at most one hedge per call
    error: BaseException | None = None  # the last failure worth retrying
    failure: BaseException | None = None

    def send(strict: bool) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(attempt(retries.until(loop.time()), used, strict))
        out.add(task)
        return task

    policy.budget.record_call(loop.time())
    try:
        started = loop.time()
        send(False)
        while True:
            now = loop.time()
            wait = None if deadline is None else max(0.0, deadline.left(now))
            hedge_at = None
            if not hedged and len(out) == 1:
                hedge_at = started + hedge_delay
                wait = hedge_at - now if wait is None else min(wait, hedge_at - now)
            done, _ = await asyncio.wait(out, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            now = loop.time()
            if not done:
                if hedge_at is not None and now >= hedge_at:
                    hedged = True
                    if policy.budget.try_spend(now):  # else no hedge for this call: the budget is spent
                        send(True)
                    continue
                if deadline is not None and deadline.expired(now):
                    raise deadline.expired_error(service_method)
                continue
            for copy in done:
                out.discard(copy)
                if copy.cancelled():  # only close() cancels an attempt from outside
                    raise ConnectionClosed("XClient closed during the call")
                failure = copy.exception()
                if failure is None:
                    return copy.result()
                if isinstance(failure, NoSpare):
                    policy.budget.refund(now)
                    continue
                if not _retryable(failure, deadline, now):
                    raise failure
                error = failure
            if out:
                continue  # another copy is still out: its answer may yet come
            assert error is not None
            delay = retries.next(now)
            if delay is None:
                raise error
            if delay:
                await asyncio.sleep(delay)
            started = loop.time()
            send(False)
    finally:
        await cancel_and_wait(out)
        # The error raised has this frame in its traceback: nothing here may keep it
        # (the copies hold it too), or every failed call is a reference cycle.
        out.clear()
        done = set()
        copy = error = failure = None


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until they have ended. A function of its own, so that
    no loop variable of the caller's frame keeps one of them (nor the error it holds)."""
    waiting = []
    for task in tasks:
        task.cancel()
        waiting.append(task)
    if waiting:
        await asyncio.gather(*waiting, return_exceptions=True)
