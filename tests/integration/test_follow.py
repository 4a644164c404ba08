"""The KV bucket follower against a real nats-server: the values present, then every put and
delete, through a nats-server restart, a value that cannot be applied, a bucket missing for a
while and a restart on an empty store; and `read_values`, the one-off read."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue
from prometheus_client import REGISTRY

from kgslb.embedded import NatsServer
from shared import bus, follow
from shared.follow import BucketFollower, Change, read_values
from shared.settings import NatsSettings
from tests.integration.conftest import eventually

BUCKET = "follow-test"
RETRY_SECONDS = 0.5


async def create_bucket(nc: Client, bucket: str = BUCKET) -> KeyValue:
    config = KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE)
    return await nc.jetstream().create_key_value(config)


class Following:
    """A follower and every change it delivered, in order; `apply` runs first, and a change
    it raises on is not recorded."""

    def __init__(
        self, nc: Client, bucket: str, keys: str, apply: Callable[[Change], None] | None
    ) -> None:
        self.changes: list[Change] = []
        self._apply = apply
        self.follower = BucketFollower(
            nc, bucket, self._record, keys, max_retry_seconds=RETRY_SECONDS
        )
        self.task = asyncio.create_task(self.follower.run())

    def _record(self, change: Change) -> None:
        if self._apply is not None:
            self._apply(change)
        self.changes.append(change)

    def values(self) -> dict[str, bytes | None]:
        return {change.key: change.value for change in self.changes}

    async def caught_up(self) -> None:
        await asyncio.wait_for(self.follower.wait_caught_up(), 15)


@contextlib.asynccontextmanager
async def following(
    nc: Client,
    bucket: str = BUCKET,
    keys: str = ">",
    apply: Callable[[Change], None] | None = None,
) -> AsyncIterator[Following]:
    run = Following(nc, bucket, keys, apply)
    try:
        yield run
    finally:
        run.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run.task


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def warnings_about(caplog: pytest.LogCaptureFixture, bucket: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and bucket in record.getMessage()
    ]


async def put_when_nats_is_back(kv: KeyValue, key: str, value: bytes) -> None:
    """Right after a restart JetStream may refuse for a moment."""

    async def put() -> bool:
        await kv.put(key, value)
        return True

    await eventually(put, timeout_seconds=20, interval_seconds=0.25)


async def test_it_delivers_the_values_present_then_each_update(nats_client: Client) -> None:
    kv = await create_bucket(nats_client)
    await kv.put("a", b"1")
    await kv.put("b", b"2")
    async with following(nats_client) as run:
        await run.caught_up()
        assert run.values() == {"a": b"1", "b": b"2"}

        await kv.put("a", b"3")
        await eventually(lambda: len(run.changes) == 3)
    assert run.changes[-1] == Change(BUCKET, "a", b"3", revision=3)


async def test_it_is_not_caught_up_before_the_values_present_were_delivered(
    nats_client: Client,
) -> None:
    await create_bucket(nats_client)
    follower = BucketFollower(nats_client, BUCKET, lambda change: None)
    assert not follower.caught_up


async def test_an_empty_bucket_is_caught_up_at_once(nats_client: Client) -> None:
    await create_bucket(nats_client)
    async with following(nats_client) as run:
        await run.caught_up()
        assert run.follower.caught_up
    assert run.changes == []


async def test_a_deleted_or_purged_key_is_delivered_without_a_value(nats_client: Client) -> None:
    kv = await create_bucket(nats_client)
    await kv.put("gone", b"1")
    await kv.put("purged", b"2")
    async with following(nats_client) as run:
        await run.caught_up()
        await kv.delete("gone")
        await kv.purge("purged")
        await eventually(lambda: len(run.changes) == 4)
    assert run.values() == {"gone": None, "purged": None}


async def test_a_key_deleted_before_following_began_is_delivered_as_deleted(
    nats_client: Client,
) -> None:
    kv = await create_bucket(nats_client)
    await kv.put("gone", b"1")
    await kv.delete("gone")
    async with following(nats_client) as run:
        await run.caught_up()
    assert run.values() == {"gone": None}


async def test_keys_narrows_what_is_followed(nats_client: Client) -> None:
    kv = await create_bucket(nats_client)
    await kv.put("health.one", b"1")
    await kv.put("other.two", b"2")
    async with following(nats_client, keys="health.*") as run:
        await run.caught_up()
        await kv.put("other.three", b"3")
        await kv.put("health.four", b"4")
        await eventually(lambda: "health.four" in run.values())
    assert list(run.values()) == ["health.one", "health.four"]


async def test_after_a_nats_server_restart_it_delivers_the_changes_made_since(
    nats_server: NatsServer, nats_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.follow")
    kv = await create_bucket(nats_client)
    await kv.put("unchanged", b"1")
    await kv.put("changed", b"1")
    async with following(nats_client) as run:
        await run.caught_up()
        nats_server.stop()
        nats_server.start()
        await put_when_nats_is_back(kv, "changed", b"2")
        await eventually(lambda: run.values()["changed"] == b"2", timeout_seconds=20)
        assert not run.task.done()
    restarted = [change.key for change in run.changes[2:]]
    assert set(restarted) == {"changed"}, "only what changed is delivered again"
    assert any("restarting the watch of follow-test" in r.getMessage() for r in caplog.records)


async def test_a_change_that_cannot_be_applied_is_logged_counted_and_skipped(
    nats_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    def parse(change: Change) -> None:
        if change.value is not None:
            int(change.value)

    kv = await create_bucket(nats_client)
    await kv.put("bad-at-start", b"not a number")
    await kv.put("good", b"1")
    skipped_before = counted("kgslb_kv_skipped_changes_total", bucket=BUCKET)
    async with following(nats_client, apply=parse) as run:
        await run.caught_up()
        await kv.put("bad-later", b"two")
        await kv.put("good", b"3")
        await eventually(lambda: run.values().get("good") == b"3")
    assert run.values() == {"good": b"3"}
    assert counted("kgslb_kv_skipped_changes_total", bucket=BUCKET) - skipped_before == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("skipped bad-later in KV follow-test at revision 3: ValueError" in m for m in errors)


async def test_a_missing_bucket_is_waited_for_with_one_warning_and_a_bounded_backoff(
    nats_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.follow")
    bucket = "follow-later"

    def attempts() -> float:
        return counted("kgslb_kv_watch_restarts_total", bucket=bucket, reason="error")

    async with following(nats_client, bucket) as run:
        started = asyncio.get_running_loop().time()
        await eventually(lambda: attempts() >= 4)
        elapsed = asyncio.get_running_loop().time() - started
        assert not run.task.done()
        assert not run.follower.caught_up
        # Each attempt waits at least RETRY_SECONDS after the one before: no hot loop.
        assert attempts() <= elapsed / RETRY_SECONDS + 1
        assert warnings_about(caplog, bucket) == [
            "cannot follow KV follow-later: the bucket does not exist (JetStream store lost, "
            "or not created yet); retrying with a backoff of up to 0.5 s, what was delivered "
            "stays"
        ]

        kv = await create_bucket(nats_client, bucket)
        await kv.put("a", b"1")
        await eventually(lambda: run.values() == {"a": b"1"})
        assert run.follower.caught_up
    assert any(
        f"following KV {bucket} again after" in record.getMessage() for record in caplog.records
    )


async def test_after_a_restart_on_an_empty_store_it_follows_the_bucket_created_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = NatsServer(tmp_path / "lost")
    first.start()
    empty = NatsServer(tmp_path / "empty", port=first.port)
    nc = await bus.connect(NatsSettings(nats_url=first.url), "kgslb-test")
    try:
        kv = await create_bucket(nc)
        await kv.put("before", b"1")
        async with following(nc) as run:
            await run.caught_up()
            first.stop()
            empty.start()
            await eventually(lambda: warnings_about(caplog, BUCKET), timeout_seconds=20)
            assert not run.task.done()

            kv = await create_bucket(nc)
            await kv.put("after", b"1")
            await eventually(lambda: "after" in run.values(), timeout_seconds=20)
        # What the lost store held stays delivered: no delete was made, none is invented.
        assert run.values() == {"before": b"1", "after": b"1"}
    finally:
        await nc.drain()
        first.stop()
        empty.stop()


async def test_read_values_holds_each_key_present_and_leaves_deleted_keys_out(
    nats_client: Client,
) -> None:
    kv = await create_bucket(nats_client)
    await kv.put("a", b"1")
    await kv.put("b", b"2")
    await kv.put("a", b"3")
    await kv.put("gone", b"4")
    await kv.delete("gone")
    assert await read_values(nats_client.jetstream(), BUCKET) == {"a": b"3", "b": b"2"}


async def test_read_values_of_an_empty_bucket_is_empty(nats_client: Client) -> None:
    await create_bucket(nats_client)
    assert await read_values(nats_client.jetstream(), BUCKET) == {}


async def test_a_bucket_deleted_and_created_anew_is_followed_from_its_start_keeping_values(
    nats_client: Client,
) -> None:
    js = nats_client.jetstream()
    kv = await create_bucket(nats_client)
    await kv.put("a", b"old")
    await kv.put("gone", b"old")
    changes: list[Change] = []
    losses: list[str] = []
    follower = BucketFollower(
        nats_client,
        BUCKET,
        changes.append,
        max_retry_seconds=RETRY_SECONDS,
        on_loss=lambda: losses.append("lost"),
        store_check_seconds=0.2,
        stale_after_seconds=1.0,
    )
    task = asyncio.create_task(follower.run())
    try:
        await asyncio.wait_for(follower.wait_caught_up(), 15)

        await js.delete_key_value(BUCKET)
        await eventually(lambda: follower.missing)
        assert {c.key: c.value for c in changes} == {"a": b"old", "gone": b"old"}, "kept"

        kv = await create_bucket(nats_client)
        await eventually(lambda: follower.rebuilding)
        assert not follower.missing
        # Revision 1 again, as the lost "a" had: delivered, not taken for the one seen.
        assert await kv.put("a", b"new") == 1
        await eventually(lambda: not follower.rebuilding)
        rebuilt = asyncio.get_running_loop().time()
        assert {c.key: c.value for c in changes} == {"a": b"new", "gone": b"old"}

        # "gone" was deleted while the store was away: the new bucket never had it.
        await eventually(lambda: changes[-1].key == "gone", timeout_seconds=5)
        waited = asyncio.get_running_loop().time() - rebuilt
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert changes[-2:] == [Change(BUCKET, "a", b"new", 1), Change(BUCKET, "gone", None, 0)]
    assert waited >= 0.9, "kept for stale_after_seconds after the new bucket's first value"
    assert losses == ["lost"]
    assert counted("kgslb_kv_store_losses_total", bucket=BUCKET) >= 1


async def test_a_backlog_is_applied_in_parts_with_the_event_loop_turning_between_them(
    nats_client: Client,
) -> None:
    """The DNS answers queries on the same loop that applies changes: a cold start's backlog
    must not hold the loop for its whole length."""
    kv = await create_bucket(nats_client)
    changes = 20 * follow.YIELD_EVERY_CHANGES
    await asyncio.gather(*(kv.put(f"k{index}", b"v") for index in range(changes)))
    loop_turns = 0

    async def count_loop_turns() -> None:
        nonlocal loop_turns
        while True:
            loop_turns += 1
            await asyncio.sleep(0)

    turns_seen_by_each_change: list[int] = []
    counter = asyncio.create_task(count_loop_turns())
    try:
        async with following(
            nats_client, apply=lambda change: turns_seen_by_each_change.append(loop_turns)
        ):
            # Not `caught_up`: on a busy server nats-py may mark a watch caught up before
            # the entries it already received are handed over.
            await eventually(lambda: len(turns_seen_by_each_change) == changes)
    finally:
        counter.cancel()

    assert len(turns_seen_by_each_change) == changes
    longest_run_without_a_turn = max(
        len(list(run_of_changes))
        for _, run_of_changes in itertools.groupby(turns_seen_by_each_change)
    )
    assert longest_run_without_a_turn <= follow.YIELD_EVERY_CHANGES


def _write_both(url: str, counts: int) -> None:
    """Another process's writes (its own connection and loop): names and verdicts at once."""

    async def write() -> None:
        nc = await bus.connect(NatsSettings(nats_url=url), "kgslb-test-writer")
        js = nc.jetstream()
        names, verdicts = await js.key_value("defer-names"), await js.key_value("defer-verdicts")
        for index in range(counts):
            await names.put(f"n{index}", b"v")
            await verdicts.put(f"v{index}", b"v")
        await nc.drain()

    asyncio.run(write())


async def test_once_caught_up_a_deferring_follower_lets_the_other_apply_its_backlog_first(
    nats_client: Client, nats_server: NatsServer
) -> None:
    for bucket in ("defer-names", "defer-verdicts"):
        await create_bucket(nats_client, bucket)
    order: list[str] = []
    names = BucketFollower(nats_client, "defer-names", lambda c: order.append("name"))
    verdicts = BucketFollower(
        nats_client, "defer-verdicts", lambda c: order.append("verdict"), defer_to=[names]
    )
    tasks = [asyncio.create_task(f.run()) for f in (names, verdicts)]
    try:
        await asyncio.wait_for(
            asyncio.gather(names.wait_caught_up(), verdicts.wait_caught_up()), 15
        )
        count = 3000
        # The writes pile up unread while this loop is busy, as at a cold start.
        writer = threading.Thread(target=_write_both, args=(nats_server.url, count))
        writer.start()
        writer.join()
        await eventually(lambda: len(order) == 2 * count, timeout_seconds=30)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    last_name = len(order) - 1 - order[::-1].index("name")
    verdicts_before = order[:last_name].count("verdict")
    # Turn about, half of the verdicts would come before the last name; deferring, only the
    # parts let through while the names' backlog was not yet read from the socket.
    assert verdicts_before < count // 4, verdicts_before
