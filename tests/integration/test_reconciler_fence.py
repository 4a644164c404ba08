"""The reconciler's fenced KV writes on a real nats-server: once a newer leader fenced a bucket,
JetStream refuses every write of the older term, the late fence of a replica paused in its own
takeover included; and no reader ever sees the fence."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from nats.aio.client import Client
from nats.js.errors import KeyDeletedError, KeyNotFoundError, NotFoundError

from kgslb.embedded import NatsServer
from services.reconciler.fence import WRITER, fence_headers, fence_subject
from services.reconciler.lease import Leadership
from services.reconciler.writes import (
    FencedOut,
    KvMirror,
    LostLeadership,
    StreamFence,
    in_flight,
)
from shared import bus, subjects, wire
from shared.follow import BucketFollower, Change, read_values
from shared.models import Fence, utcnow
from tests.integration.conftest import eventually
from tests.integration.test_stream_replicas import cluster, connected

__all__ = ["cluster"]  # the module-scoped 3-node cluster fixture

BUCKET = subjects.KV_SERVICES
HELLO_KEY = subjects.fqdn_key("hello.avi.iberia.local")


def believing(me: str, revision: int) -> Leadership:
    """A replica that just won the lease at `revision` (the lease itself is lease.py's)."""
    leadership = Leadership(me, ttl_seconds=60)
    leadership.written(time.monotonic(), revision, leadership.value(utcnow()))
    return leadership


async def test_a_newer_fence_refuses_every_write_of_the_older_term(nats_client: Client) -> None:
    js = nats_client.jetstream()
    kv = await js.key_value(BUCKET)
    old = KvMirror(js, BUCKET, believing("reconciler-a", 1))
    await old.fence()
    assert await old.put(HELLO_KEY, b"a-1")

    new = KvMirror(js, BUCKET, believing("reconciler-b", 2))
    await new.fence()

    with pytest.raises(FencedOut):
        await old.delete(HELLO_KEY)
    with pytest.raises(LostLeadership):  # refused once: the term is over, nothing more is sent
        await old.put(HELLO_KEY, b"a-2 (stale)")
    assert (await kv.get(HELLO_KEY)).value == b"a-1"
    assert await new.put(HELLO_KEY, b"b-1")
    entry = await kv.get(HELLO_KEY)
    assert entry.value == b"b-1"
    stored = await js.get_last_msg(f"KV_{BUCKET}", f"$KV.{BUCKET}.{HELLO_KEY}")
    assert (stored.headers or {}).get(WRITER) == "reconciler-b"


async def test_the_late_fence_of_a_replica_paused_in_its_takeover_is_refused(
    nats_client: Client,
) -> None:
    js = nats_client.jetstream()
    subject = fence_subject(BUCKET, 0)
    # b read the fence (none yet) and was paused before writing its own ...
    b_read = 0
    # ... meanwhile c took over and fenced.
    c = KvMirror(js, BUCKET, believing("reconciler-c", 3))
    c_term = await c.fence()

    late = Fence(holder="reconciler-b", lease_revision=2, fenced_at=utcnow())
    with pytest.raises(Exception, match="wrong last sequence"):
        await js.publish(subject, wire.encode(late), headers=fence_headers("reconciler-b", b_read))

    assert (await js.get_last_msg(f"KV_{BUCKET}", subject)).seq == c_term.fences[0]
    assert await c.put(HELLO_KEY, b"c-1")


async def test_readers_never_see_the_fence(nats_client: Client) -> None:
    js = nats_client.jetstream()
    kv = await js.key_value(BUCKET)
    mirror = KvMirror(js, BUCKET, believing("reconciler-a", 1))
    await mirror.fence()
    await mirror.put(HELLO_KEY, b"a-1")
    changes: list[Change] = []
    follower = BucketFollower(nats_client, BUCKET, changes.append)
    following = asyncio.create_task(follower.run())
    try:
        await eventually(lambda: follower.caught_up)
        await KvMirror(js, BUCKET, believing("reconciler-b", 2)).fence()
        await kv.put("zzz", b"after the second fence")
        await eventually(lambda: any(c.key == "zzz" for c in changes))
    finally:
        following.cancel()

    assert [c.key for c in changes] == [HELLO_KEY, "zzz"]
    assert await read_values(js, BUCKET) == {HELLO_KEY: b"a-1", "zzz": b"after the second fence"}
    assert sorted(await kv.keys()) == sorted([HELLO_KEY, "zzz"])
    with pytest.raises((KeyDeletedError, KeyNotFoundError)):
        await kv.get(subjects.fence_key(0))
    marker = await js.get_last_msg(f"KV_{BUCKET}", fence_subject(BUCKET, 63))
    assert wire.decode(marker.data, Fence).holder == "reconciler-b"


async def test_a_replica_that_lost_its_belief_writes_nothing_even_with_a_current_fence(
    nats_client: Client,
) -> None:
    js = nats_client.jetstream()
    leadership = believing("reconciler-a", 1)
    mirror = KvMirror(js, BUCKET, leadership)
    await mirror.fence()

    leadership.lost()

    with pytest.raises(LostLeadership):
        await mirror.put(HELLO_KEY, b"after the lease ran out")
    assert await read_values(js, BUCKET) == {}


async def test_the_fence_holds_on_a_three_replica_bucket_with_writes_in_flight(
    cluster: list[NatsServer],
) -> None:
    """R3 (the sites' layout): the stream leader checks the condition of many pipelined
    writes at once, of both terms; every write of the current term lands, none of the old."""
    nc = await connected(*(server.url for server in cluster))
    try:
        js = nc.jetstream()
        for name in (f"KV_{BUCKET}",):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)
        await bus.bootstrap(js, replicas=3)
        names = [subjects.fqdn_key(f"app{index}.avi.iberia.local") for index in range(500)]
        old = KvMirror(js, BUCKET, believing("reconciler-a", 1))
        await old.fence()
        assert await in_flight(old.put(key, b"a") for key in names) == len(names)

        new = KvMirror(js, BUCKET, believing("reconciler-b", 2))
        await new.fence()
        old.values.clear()
        with pytest.raises(FencedOut):
            await in_flight(old.put(key, b"a, stale") for key in names)
        assert await in_flight(new.put(key, b"b") for key in names) == len(names)

        assert set((await read_values(js, BUCKET)).values()) == {b"b"}
    finally:
        await nc.close()


async def test_the_status_stream_is_fenced_too(
    nats_client: Client,
) -> None:
    js = nats_client.jetstream()
    subject = subjects.status_subject("GlobalDeploymentPolicy", "avi-system", "global-gdp")
    old = StreamFence(
        js, subjects.STREAM_STATUS, subjects.STATUS_FENCE_SUBJECT, believing("reconciler-a", 1)
    )
    await old.fence()
    await old.publish(subject, b"a-1")

    new = StreamFence(
        js, subjects.STREAM_STATUS, subjects.STATUS_FENCE_SUBJECT, believing("reconciler-b", 2)
    )
    await new.fence()

    with pytest.raises(FencedOut):
        await old.publish(subject, b"a-2 (stale)")
    assert (await js.get_last_msg(subjects.STREAM_STATUS, subject)).data == b"a-1"
    await new.publish(subject, b"b-1")
    assert (await js.get_last_msg(subjects.STREAM_STATUS, subject)).data == b"b-1"


async def test_purged_fence_markers_end_the_term(nats_client: Client) -> None:
    """An operator purging the markers (or the bucket) is treated as a newer fence: the leader
    stops writing rather than write unfenced; the lease decides who fences anew."""
    js = nats_client.jetstream()
    mirror = KvMirror(js, BUCKET, believing("reconciler-a", 1))
    await mirror.fence()
    await js.purge_stream(f"KV_{BUCKET}")

    with pytest.raises(FencedOut):
        await mirror.put(HELLO_KEY, b"a-1")
    assert await read_values(js, BUCKET) == {}
