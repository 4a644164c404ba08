"""When a follower calls itself caught up: nats-py's end-of-values marker can come before
entries the client already received (its pending count is 0 once the server has sent
everything). That ordering cannot be forced on a real server, so these specifications script
the watch: nats-py's marker, then the entries, as a busy machine delivered them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from nats.aio.client import Client
from nats.js.kv import KeyValue

from shared.follow import BucketFollower, Change


@dataclass
class Delivered:
    consumer_seq: int


@dataclass
class Info:
    num_pending: int
    delivered: Delivered


@dataclass
class Subscription:
    sent: int

    async def consumer_info(self) -> Info:
        return Info(num_pending=0, delivered=Delivered(self.sent))


@dataclass
class ScriptedWatch:
    """What nats-py's KeyWatcher hands over, in this order."""

    script: list[KeyValue.Entry | None]
    sent: int

    def __post_init__(self) -> None:
        self._sub = Subscription(self.sent)

    async def __aiter__(self) -> AsyncIterator[KeyValue.Entry | None]:
        for item in self.script:
            yield item


def entry(key: str, revision: int, pending: int) -> KeyValue.Entry:
    return KeyValue.Entry(
        bucket="b", key=key, value=b"v", revision=revision, delta=pending, created=None,
        operation=None,
    )  # fmt: skip


def a_follower(applied: list[str], states: list[bool]) -> BucketFollower:
    follower: BucketFollower

    def apply(change: Change) -> None:
        applied.append(change.key)
        states.append(follower.caught_up)

    follower = BucketFollower(cast(Client, _Connection()), "b", apply)
    return follower


class _Connection:
    def jetstream(self) -> Any:
        return None


async def deliver(follower: BucketFollower, watch: ScriptedWatch) -> None:
    await follower._deliver_all(cast(KeyValue.KeyWatcher, watch))


def test_a_marker_before_entries_already_sent_does_not_make_it_caught_up() -> None:
    applied: list[str] = []
    caught_up_while_applying: list[bool] = []
    follower = a_follower(applied, caught_up_while_applying)
    watch = ScriptedWatch(
        [None, entry("a", 1, 2), entry("b", 2, 1), entry("c", 3, 0), None], sent=3
    )

    asyncio.run(deliver(follower, watch))

    assert applied == ["a", "b", "c"]
    assert caught_up_while_applying == [False, False, False]
    assert follower.caught_up


def test_the_entry_sent_last_makes_it_caught_up_without_a_marker() -> None:
    follower = a_follower([], [])
    asyncio.run(deliver(follower, ScriptedWatch([None, entry("a", 1, 1)], sent=2)))
    assert not follower.caught_up

    asyncio.run(deliver(follower, ScriptedWatch([entry("b", 2, 0)], sent=2)))
    assert follower.caught_up


def test_a_marker_with_nothing_sent_is_an_empty_bucket() -> None:
    follower = a_follower([], [])
    asyncio.run(deliver(follower, ScriptedWatch([None], sent=0)))
    assert follower.caught_up


def test_a_last_value_that_never_comes_is_settled_by_the_consumers_count_a_period_later() -> None:
    """nats-py leaves out a message it cannot read: the entry sent last may never come."""
    follower = a_follower([], [])
    follower.store_check_seconds = 0.05
    watch = ScriptedWatch([None], sent=1)

    async def scenario() -> tuple[bool, bool]:
        await deliver(follower, watch)
        follower._watcher = cast(KeyValue.KeyWatcher, watch)
        await follower._marker_overdue()
        at_once = follower.caught_up
        await asyncio.sleep(0.06)
        await follower._marker_overdue()
        return at_once, follower.caught_up

    assert asyncio.run(scenario()) == (False, True)
