"""Retry as a pure decision, plus one runner that applies it.

:class:`RetryPolicy` names what it retries (only :class:`~kernel.errors.RetryableError`), caps attempts
and total time, backs off exponentially with full jitter, and honours ``retry_after`` from the vendor.
:meth:`RetryPolicy.delay` is pure: given the attempt number, elapsed time and the error it returns the
wait or ``None`` (give up). :func:`call` runs a function under a policy with an injected clock (tests
never sleep). Vendor clients are built with their own retries off, so retries never stack.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from kernel.clock import Clock
from kernel.errors import RetryableError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt: wait ``wait`` seconds, or give up (``wait`` is None) for ``reason``."""

    wait: float | None
    reason: str = ""


def says_later(error: RetryableError) -> bool:
    """The vendor asked to be called again later (a 429, or any answer with ``Retry-After``), which is not a
    failure of the attempt."""
    return error.retry_after is not None or error.status == 429


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    max_total_seconds: float = 120.0
    base_seconds: float = 1.0
    cap_seconds: float = 60.0
    max_retry_after_seconds: float = 300.0
    #: False: answers that say "later" (see :func:`says_later`) do not use up ``max_attempts``; only the time
    #: budget (``max_total_seconds``) bounds them. PagerDuty delivery runs so; vendor clients count them.
    later_uses_attempts: bool = True
    budget_name: str = "retry budget"  # how a dead letter names the time budget (the operator's setting)

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter exponential backoff for the ``attempt``-th failure (1-based)."""
        ceiling = min(self.cap_seconds, self.base_seconds * (2 ** max(attempt - 1, 0)))
        return (rng or random).uniform(ceiling / 2, ceiling)

    def delay(
        self, attempt: int, elapsed: float, error: BaseException, rng: random.Random | None = None
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up."""
        return self.decide(attempt, elapsed, error, rng).wait

    def decide(
        self, attempt: int, elapsed: float, error: BaseException, rng: random.Random | None = None
    ) -> Decision:
        """:meth:`delay` with the reason for giving up, worded for the operator (it ends in a dead letter)."""
        if not isinstance(error, RetryableError):
            return Decision(None, "permanent")
        later = says_later(error)
        if attempt >= self.max_attempts and (self.later_uses_attempts or not later):
            return Decision(None, f"retries exhausted ({attempt} attempts, max_attempts {self.max_attempts})")
        if error.retry_after is not None:
            wait = error.retry_after  # the vendor knows best; never earlier than it asked
            if wait > self.max_retry_after_seconds or elapsed + wait > self.max_total_seconds:
                return Decision(
                    None,
                    f"asked to retry in {wait:.0f} s, past the {self.budget_name} "
                    f"({min(self.max_total_seconds, self.max_retry_after_seconds):.0f} s from the first failure, "
                    f"{elapsed:.0f} s spent)",
                )
            return Decision(wait)
        wait = self.backoff(attempt, rng)
        if elapsed + wait > self.max_total_seconds:
            return Decision(
                None, f"{self.budget_name} spent ({self.max_total_seconds:.0f} s from the first failure)"
            )
        return Decision(wait)


def call(fn: Callable[[], T], policy: RetryPolicy, clock: Clock, rng: random.Random | None = None) -> T:
    """Run ``fn`` until it succeeds or ``policy`` gives up (then the last error is raised).

    tenacity runs the loop; our policy makes every decision (one per failed attempt, cached so the
    jittered wait that ``stop`` saw is the one ``wait`` uses), and the injected clock does the sleeping.
    """
    start = clock.monotonic()
    decided: dict[int, float | None] = {}

    def decide(state: tenacity.RetryCallState) -> float | None:
        if state.attempt_number not in decided:
            exc = state.outcome.exception() if state.outcome else None
            decided[state.attempt_number] = (
                None if exc is None else policy.delay(state.attempt_number, clock.monotonic() - start, exc, rng)
            )
        return decided[state.attempt_number]

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(RetryableError),
        stop=lambda state: decide(state) is None,
        wait=lambda state: decide(state) or 0.0,
        sleep=clock.sleep,
        reraise=True,
    )
    return retrying(fn)
