"""The watcher's ordered publisher against a real JetStream: windows of messages are stored in
order and each is reported once; while the stream is missing nothing is lost and nothing is
reported, and once it is back every message is stored, still in order."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.js.api import StreamConfig
from prometheus_client import REGISTRY

from services.watcher import publisher
from services.watcher.backoff import Backoff
from services.watcher.publisher import OrderedPublisher
from shared import wire
from shared.models import ObjectKind, ObjectRef, Tombstone

STREAM = "PUBLISHER_TEST"


def tombstones(count: int) -> list[tuple[str, wire.WireModel]]:
    messages: list[tuple[str, wire.WireModel]] = []
    for index in range(count):
        ref = ObjectRef(cluster="c1", kind=ObjectKind.INGRESS, namespace="ns", name=f"i{index}")
        messages.append((f"pubtest.{index % 7}", Tombstone(ref=ref, resource_version=str(index))))
    return messages


def a_publisher(nc: Client, published: list[wire.WireModel]) -> OrderedPublisher:
    return OrderedPublisher(
        nc.jetstream(),
        "c1",
        max_payload=lambda: nc.max_payload,
        backoff=Backoff(0.05, 0.2),
        on_published=lambda message, _size: published.append(message),
    )


async def stored_versions(nc: Client) -> list[str]:
    """The resource versions in the stream, in stream order."""
    js = nc.jetstream()
    info = await js.stream_info(STREAM)
    versions = []
    for sequence in range(1, info.state.last_seq + 1):
        message = await js.get_msg(STREAM, sequence)
        assert message.data is not None
        versions.append(wire.decode(message.data, Tombstone).resource_version)
    return versions


async def test_windows_of_messages_are_stored_in_order_and_each_reported_once(
    nats_client: Client,
) -> None:
    await nats_client.jetstream().add_stream(StreamConfig(name=STREAM, subjects=["pubtest.>"]))
    messages = tombstones(2 * publisher.WINDOW + 17)
    published: list[wire.WireModel] = []

    await a_publisher(nats_client, published).publish(messages)

    assert published == [message for _, message in messages]
    assert await stored_versions(nats_client) == [str(i) for i in range(len(messages))]


async def test_while_the_stream_is_missing_it_retries_and_loses_nothing(
    nats_client: Client,
) -> None:
    messages = tombstones(50)
    published: list[wire.WireModel] = []
    retries_before = (
        REGISTRY.get_sample_value("kgslb_watcher_publish_retries_total", {"cluster": "c1"}) or 0
    )
    sending = asyncio.create_task(a_publisher(nats_client, published).publish(messages))
    await asyncio.sleep(0.5)
    assert not sending.done() and published == []

    await nats_client.jetstream().add_stream(StreamConfig(name=STREAM, subjects=["pubtest.>"]))
    await asyncio.wait_for(sending, 10)

    assert published == [message for _, message in messages]
    assert await stored_versions(nats_client) == [str(i) for i in range(len(messages))]
    retries = REGISTRY.get_sample_value("kgslb_watcher_publish_retries_total", {"cluster": "c1"})
    assert retries is not None and retries > retries_before
