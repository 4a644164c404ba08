"""A takeover encodes the whole plan in parts, the event loop turning between them: encoded in
one go, 100,000 services held the loop (and the lease renewal) for over a second, and with a
1 s lease every takeover lost its lease before it wrote anything."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from services.reconciler import service as reconciler
from services.reconciler.writes import KEYS_PER_WRITER_TURN, WRITES_IN_FLIGHT, in_flight
from shared import subjects, wire
from shared.models import GslbService, Member, PriorityGroup

T = TypeVar("T")


def services(count: int) -> dict[str, GslbService]:
    return {
        f"app{index}.avi.iberia.local": GslbService(
            fqdn=f"app{index}.avi.iberia.local",
            ttl_seconds=30,
            groups=[
                PriorityGroup(
                    priority=10, members=[Member(ip="127.10.25.46", cluster="s1az1", weight=1)]
                )
            ],
        )
        for index in range(count)
    }


def test_the_plan_is_encoded_whole_and_as_encoded_one_by_one() -> None:
    plan = services(50)

    encoded = asyncio.run(reconciler.encoded_in_turns(plan))

    assert encoded == {subjects.fqdn_key(f): wire.encode(s) for f, s in plan.items()}


async def with_loop_turns(work: Awaitable[T]) -> tuple[T, int]:
    """What `work` returns, and how many times the event loop turned while it ran."""
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    before = turns
    result = await work
    counter.cancel()
    return result, turns - before


def test_the_event_loop_turns_between_parts_of_the_plan() -> None:
    plan = services(5 * reconciler.ENCODE_CHUNK)

    _, turns = asyncio.run(with_loop_turns(reconciler.encoded_in_turns(plan)))

    assert turns >= 4


def test_writes_of_unchanged_keys_let_the_event_loop_turn() -> None:
    """A takeover compares every key; the unchanged ones are skipped without suspending."""

    async def unchanged() -> bool:
        return False

    keys = 20 * KEYS_PER_WRITER_TURN * WRITES_IN_FLIGHT

    async def scenario() -> tuple[int, int]:
        return await with_loop_turns(in_flight(unchanged() for _ in range(keys)))

    written, turns = asyncio.run(scenario())

    assert written == 0
    assert turns >= 10
