"""Reconnect backoff schedule (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.bus.backoff import Backoff


def test_schedule_doubles_up_to_the_cap() -> None:
    backoff = Backoff(initial=0.1, factor=2, maximum=1.0)
    assert [backoff.ceiling(n) for n in range(7)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_jitter_bounds() -> None:
    backoff = Backoff(initial=0.1, factor=2, maximum=1.0)
    assert backoff.delay(3, rand=lambda: 0.0) == pytest.approx(0.2)
    assert backoff.delay(3, rand=lambda: 1.0) == pytest.approx(0.4)
    assert backoff.delay(0, rand=lambda: 0.7) == 0.0


def test_huge_attempt_counts_do_not_overflow() -> None:
    assert Backoff(maximum=5).ceiling(10**9) == 5


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0}, {"factor": 0.5}, {"initial": 2, "maximum": 1}],
    ids=["zero-initial", "shrinking", "cap-below-initial"],
)
def test_invalid_backoff_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid backoff"):
        Backoff(**kwargs)


@settings(max_examples=200, deadline=None)
@given(attempt=st.integers(min_value=1, max_value=1000), r=st.floats(min_value=0, max_value=1))
def test_delay_within_half_and_full_ceiling(attempt: int, r: float) -> None:
    backoff = Backoff()
    ceiling = backoff.ceiling(attempt)
    assert ceiling / 2 <= backoff.delay(attempt, rand=lambda: r) <= ceiling <= backoff.maximum
