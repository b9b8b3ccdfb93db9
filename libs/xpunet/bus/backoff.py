"""Reconnect backoff (pure): exponential with "equal jitter", capped.

Half of each delay is fixed and half random, so a fleet of services that lost
the same server does not reconnect in lock step, yet no attempt comes sooner
than half the schedule.  The first attempt is immediate.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 0.05
    factor: float = 2.0
    maximum: float = 5.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.factor < 1 or self.maximum < self.initial:
            raise ValueError(f"invalid backoff {self}: need initial > 0, factor >= 1, maximum >= initial")

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay before retry number ``attempt`` (0: the first retry, no wait)."""
        if attempt <= 0:
            return 0.0
        # min() before the power would overflow for huge attempt counts.
        exponent = min(attempt - 1, 64)
        return min(self.maximum, self.initial * self.factor**exponent)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The jittered delay: in ``[ceiling/2, ceiling]``."""
        ceiling = self.ceiling(attempt)
        return ceiling / 2 + rand() * ceiling / 2
