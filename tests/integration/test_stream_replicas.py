"""`--stream-replicas`: on a real 3-node JetStream cluster (three nats-server processes routed
on loopback) kgslb's streams and buckets are created with three replicas, raised to three when
they have fewer, and never lowered; a single server refuses more than one in a clear error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from kgslb.embedded import NatsServer, free_port
from shared import bus, subjects
from shared.bus import BootstrapError

STREAMS = [config.name for config in bus.stream_configs()] + [
    f"KV_{bucket}" for bucket in bus.KV_BUCKETS
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NatsServer]]:
    state = tmp_path_factory.mktemp("nats-cluster")
    routes = [free_port() for _ in range(3)]
    servers = []
    for index, route in enumerate(routes):
        server = NatsServer(state / f"n{index}")
        server.argv += [
            "-n", f"n{index}", "--cluster_name", "kgslb-test",
            "--cluster", f"nats://127.0.0.1:{route}",
            "--routes", ",".join(f"nats://127.0.0.1:{port}" for port in routes),
        ]  # fmt: skip
        server.start()
        servers.append(server)
    yield servers
    for server in servers:
        server.stop()


async def connected(*urls: str) -> Client:
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        nc = await nats.connect(servers=list(urls), connect_timeout=2)
        try:
            # JetStream answers once the three servers have elected a meta leader.
            await nc.jetstream().account_info()
            return nc
        except Exception:
            await nc.close()
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


@pytest_asyncio.fixture
async def client(cluster: list[NatsServer]) -> AsyncIterator[Client]:
    nc = await connected(*(server.url for server in cluster))
    js = nc.jetstream()
    for name in STREAMS:
        with contextlib.suppress(NotFoundError):  # not there yet
            await js.delete_stream(name)
    yield nc
    await nc.close()


async def replicas(nc: Client) -> dict[str, int]:
    js = nc.jetstream()
    return {name: (await js.stream_info(name)).config.num_replicas or 1 for name in STREAMS}


async def test_streams_and_buckets_are_created_with_three_replicas(client: Client) -> None:
    await bus.bootstrap(client.jetstream(), replicas=3)

    assert await replicas(client) == dict.fromkeys(STREAMS, 3)


async def test_one_replica_streams_are_raised_to_three(client: Client) -> None:
    await bus.bootstrap(client.jetstream(), replicas=1)
    assert set((await replicas(client)).values()) == {1}

    await bus.bootstrap(client.jetstream(), replicas=3)

    assert await replicas(client) == dict.fromkeys(STREAMS, 3)


async def test_replicas_are_never_lowered(client: Client) -> None:
    await bus.bootstrap(client.jetstream(), replicas=3)

    await bus.bootstrap(client.jetstream(), replicas=1)

    assert await replicas(client) == dict.fromkeys(STREAMS, 3)


async def test_an_operators_settings_and_data_survive_the_raise(client: Client) -> None:
    js = client.jetstream()
    await bus.bootstrap(js, replicas=1)
    kv = await js.key_value(subjects.KV_SERVICES)
    await kv.put("kept", b"value")

    await bus.bootstrap(js, replicas=3)

    assert (await kv.get("kept")).value == b"value"


async def test_a_single_server_refuses_three_replicas_in_a_clear_error(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "single")
    server.start()
    try:
        nc = await connected(server.url)
        try:
            with pytest.raises(BootstrapError, match="must not exceed the JetStream servers"):
                await bus.bootstrap(nc.jetstream(), replicas=3)
        finally:
            await nc.close()
    finally:
        server.stop()


def test_the_stream_configs_leave_replicas_to_bootstrap() -> None:
    assert all(isinstance(config, StreamConfig) for config in bus.stream_configs())
    assert {config.num_replicas for config in bus.stream_configs()} <= {None, 1}
