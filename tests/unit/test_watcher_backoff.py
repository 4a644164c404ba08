"""Retry delays of the watcher: capped, exponential, jittered, reset after success."""

from __future__ import annotations

import pytest

from services.watcher.backoff import Backoff


def test_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(0.5, 4.0, random_fraction=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_jitter_keeps_each_delay_between_half_and_all_of_its_step() -> None:
    low = Backoff(1.0, 8.0, random_fraction=lambda: 0.0)
    assert [low.next_delay() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]


def test_reset_starts_over() -> None:
    backoff = Backoff(0.5, 30.0, random_fraction=lambda: 1.0)
    for _ in range(5):
        backoff.next_delay()
    assert backoff.failures == 5
    backoff.reset()
    assert (backoff.failures, backoff.next_delay()) == (0, 0.5)


def test_many_failures_stay_at_the_cap() -> None:
    backoff = Backoff(0.5, 30.0, random_fraction=lambda: 1.0)
    for _ in range(5000):
        backoff.next_delay()
    assert backoff.next_delay() == 30.0


@pytest.mark.parametrize(("initial", "maximum"), [(0.0, 1.0), (2.0, 1.0)])
def test_nonsense_bounds_are_refused(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(initial, maximum)
