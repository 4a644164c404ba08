"""`bus.StateKeeper` against a real nats-server: streams and buckets deleted under it are
created again at its next check and reported lost once, a NATS restart on an empty store is
noticed at the reconnect, and several services bootstrapping a fresh server at once all
succeed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from nats.aio.client import Client
from prometheus_client import REGISTRY

from kgslb.embedded import NatsServer
from shared import bus, subjects
from shared.settings import NatsSettings
from tests.integration.conftest import eventually

CHECK_SECONDS = 0.3


@contextlib.asynccontextmanager
async def keeping(
    nc: Client, check_seconds: float = CHECK_SECONDS
) -> AsyncIterator[tuple[bus.StateKeeper, list[frozenset[str]]]]:
    keeper = bus.StateKeeper(nc, check_seconds=check_seconds)
    lost: list[frozenset[str]] = []

    async def listener(streams: frozenset[str]) -> None:
        lost.append(streams)

    keeper.on_loss(listener)
    await keeper.bootstrap()
    task = asyncio.create_task(keeper.run())
    try:
        yield keeper, lost
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def stream_names(nc: Client) -> set[str]:
    return {info.config.name or "" for info in await nc.jetstream().streams_info()}


EVERY_STREAM = {config.name for config in bus.stream_configs()} | {
    bus.kv_stream(bucket) for bucket in bus.KV_BUCKETS
}


async def test_streams_and_buckets_deleted_under_it_are_created_again_and_reported_lost(
    nats_client: Client,
) -> None:
    js = nats_client.jetstream()
    async with keeping(nats_client) as (keeper, lost):
        assert keeper.intact and lost == []

        await js.delete_stream(subjects.STREAM_EVENTS)
        await js.delete_key_value(subjects.KV_ZONES)

        await eventually(lambda: lost, timeout_seconds=10)
        assert lost == [frozenset({subjects.STREAM_EVENTS, bus.kv_stream(subjects.KV_ZONES)})]
        assert await stream_names(nats_client) == EVERY_STREAM
        await eventually(lambda: keeper.intact)
        await asyncio.sleep(3 * CHECK_SECONDS)
        assert len(lost) == 1, "reported once, not at every check"
    recreated = REGISTRY.get_sample_value(
        "kgslb_bus_state_recreated_total", {"stream": subjects.STREAM_EVENTS}
    )
    assert recreated is not None and recreated >= 1


async def test_a_listener_that_fails_keeps_the_state_not_intact_and_runs_again(
    nats_client: Client,
) -> None:
    js = nats_client.jetstream()
    async with keeping(nats_client) as (keeper, _):
        calls: list[frozenset[str]] = []

        async def flaky(streams: frozenset[str]) -> None:
            calls.append(streams)
            if len(calls) == 1:
                raise RuntimeError("NATS went away while rebuilding")

        keeper.on_loss(flaky)
        await js.delete_stream(subjects.STREAM_STATUS)
        await eventually(lambda: calls, timeout_seconds=10)
        assert not keeper.intact
        assert "rebuilding lost JetStream state: KGSLB_STATUS" in keeper.describe()
        await eventually(lambda: len(calls) == 2 and keeper.intact, timeout_seconds=10)


async def test_nats_back_on_an_empty_store_is_noticed_at_the_reconnect(tmp_path: Path) -> None:
    first = NatsServer(tmp_path / "lost")
    first.start()
    empty = NatsServer(tmp_path / "empty", port=first.port)
    nc = await bus.connect(NatsSettings(nats_url=first.url), "kgslb-test")
    try:
        # A period far longer than the test: only the reconnect can trigger the check.
        async with keeping(nc, check_seconds=3600) as (keeper, lost):
            first.stop()
            empty.start()
            await eventually(lambda: lost, timeout_seconds=15)
            assert lost == [frozenset(EVERY_STREAM)]
            assert keeper.intact
            assert await stream_names(nc) == EVERY_STREAM
    finally:
        await nc.drain()
        first.stop()
        empty.stop()


async def test_services_bootstrapping_a_fresh_server_at_once_all_succeed(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "fresh")
    server.start()
    clients = [
        await bus.connect(NatsSettings(nats_url=server.url), f"kgslb-test-{i}") for i in range(6)
    ]
    try:
        results = await asyncio.gather(
            *(bus.StateKeeper(nc).bootstrap() for nc in clients), return_exceptions=True
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert await stream_names(clients[0]) == EVERY_STREAM
    finally:
        for nc in clients:
            await nc.drain()
        server.stop()
