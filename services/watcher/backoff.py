"""Capped exponential backoff with jitter, for retrying a Kubernetes API or NATS."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays initial, 2x, 4x ... up to `max_seconds`, each drawn from [delay/2, delay] so that
    watchers restarted together do not retry in lockstep, and never shorter than half the
    initial delay (no hot loop)."""

    def __init__(
        self,
        initial_seconds: float,
        max_seconds: float,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        if initial_seconds <= 0 or max_seconds < initial_seconds:
            raise ValueError(
                f"backoff needs 0 < initial ({initial_seconds}) <= max ({max_seconds})"
            )
        self.initial_seconds = initial_seconds
        self.max_seconds = max_seconds
        self._random = random_fraction
        self._failures = 0

    @property
    def failures(self) -> int:
        """Consecutive failures since the last `reset`."""
        return self._failures

    def next_delay(self) -> float:
        ceiling = min(self.max_seconds, self.initial_seconds * 2.0 ** min(self._failures, 60))
        self._failures += 1
        return ceiling / 2 + self._random() * ceiling / 2

    def reset(self) -> None:
        self._failures = 0
