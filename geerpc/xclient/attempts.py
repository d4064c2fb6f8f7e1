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
a server the call has not tried yet when there is one.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from ..deadline import Deadline
from ..errors import CallTimeout, ConnectError, ConnectionClosed, ConnectTimeout, Unavailable
from .retry import DEFAULT_BUDGET, LatencyWindow, Retry, RetryBudget, attempt_share

__all__ = ["Attempt", "NoSpare", "Policy", "run"]

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
    loop = asyncio.get_running_loop()
    retry = policy.retry
    retries_left = retry.attempts - 1 if retry is not None else 0
    attempt_timeout = retry.attempt_timeout if retry is not None else None
    backoffs = retry.backoffs(policy.rng) if retry is not None else None
    hedge_delay = policy.hedge_delay()
    used: set[str] = set()
    out: set[asyncio.Task[Any]] = set()
    hedged = False  # at most one hedge per call
    error: BaseException | None = None  # the last failure worth retrying
    retried = 0

    def send(strict: bool, retries_after: int) -> asyncio.Task[Any]:
        now = loop.time()
        left = None if deadline is None else deadline.left(now)
        until = _until(deadline, attempt_share(left, retries_after, attempt_timeout), now)
        task = asyncio.ensure_future(attempt(until, used, strict))
        out.add(task)
        return task

    policy.budget.record_call(loop.time())
    try:
        started = loop.time()
        send(False, retries_left)
        while True:
            now = loop.time()
            wait = None if deadline is None else max(0.0, deadline.left(now))
            hedge_at = None
            if not hedged and hedge_delay is not None and len(out) == 1:
                hedge_at = started + hedge_delay
                wait = hedge_at - now if wait is None else min(wait, hedge_at - now)
            done, _ = await asyncio.wait(out, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            now = loop.time()
            if not done:
                if hedge_at is not None and now >= hedge_at:
                    hedged = True
                    if policy.budget.try_spend(now):  # else no hedge for this call: the budget is spent
                        send(True, retries_left)
                    continue
                if deadline is not None and deadline.expired(now):
                    raise deadline.expired_error(service_method)
                continue
            for task in done:
                out.discard(task)
                if task.cancelled():  # only close() cancels an attempt from outside
                    raise ConnectionClosed("XClient closed during the call")
                failure = task.exception()
                if failure is None:
                    return task.result()
                if isinstance(failure, NoSpare):
                    policy.budget.refund(now)
                    continue
                if not _retryable(failure, deadline, now):
                    raise failure
                error = failure
            if out:
                continue  # another copy is still out: its answer may yet come
            assert error is not None
            if retries_left == 0 or not policy.budget.try_spend(now):
                raise error
            retried += 1
            delay = 0.0 if backoffs is None else backoffs.delay(retried)
            if deadline is not None and now + delay >= deadline.at:
                policy.budget.refund(now)
                raise error
            if delay:
                await asyncio.sleep(delay)
            retries_left -= 1
            started = loop.time()
            send(False, retries_left)
    finally:
        for task in out:
            task.cancel()
        if out:
            await asyncio.gather(*out, return_exceptions=True)
