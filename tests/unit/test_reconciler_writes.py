"""`in_flight`, the reconciler's KV write pool: every write runs, at most WRITES_IN_FLIGHT at
once, and a lost lease stops the pool as LostLeadership, with no write left half-made."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import Iterator

import pytest

from services.reconciler.kv_mirror import WRITES_IN_FLIGHT, LostLeadership, in_flight


class Writes:
    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.running = 0
        self.most = 0
        self.started = 0

    async def write(self, index: int) -> bool:
        self.started += 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.001)
            if index == self.fail_at:
                raise LostLeadership("kgslb_services")
            return index % 2 == 0
        finally:
            self.running -= 1

    def all(self, count: int) -> Iterator:  # type: ignore[type-arg]
        return (self.write(index) for index in range(count))


async def test_every_write_runs_and_changed_keys_are_counted() -> None:
    writes = Writes()

    written = await in_flight(writes.all(1000))

    assert (written, writes.started) == (500, 1000)


async def test_no_more_than_the_limit_are_in_flight() -> None:
    writes = Writes()

    await in_flight(writes.all(1000))

    assert writes.most == WRITES_IN_FLIGHT


async def test_a_lost_lease_stops_the_pool_as_lost_leadership() -> None:
    writes = Writes(fail_at=100)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "coroutine was never awaited"
        with pytest.raises(LostLeadership):
            await in_flight(writes.all(100_000))
        gc.collect()

    assert writes.started < 1000, "the writes after the failure were not started"


async def test_no_writes_is_zero() -> None:
    assert await in_flight(iter(())) == 0
