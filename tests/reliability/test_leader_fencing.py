"""A reconciler leader paused (SIGSTOP) or cut off for longer than its lease: the standby takes
over and applies the policy edit, and nothing the old leader sends afterwards lands, not even
the writes it had already sent into the network when it was paused. JetStream refuses them:
every write of a term is conditional on the term's fence (docs/architecture.md, "Leader
fencing"; docs/reliability.md, "Paused leader").

Two real `kgslb reconciler` processes on a real nats-server; the race is forced with a
loopback TCP relay in front of the leader that holds what the leader sends, then delivers it
after the takeover, as a slow or partitioned network does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from kgslb.embedded import NatsServer, free_port
from services.reconciler.fence import WRITER
from shared import subjects, wire
from shared.follow import read_entries, read_values
from shared.models import GslbService, ObjectKind, ObjectRef, ObservedObject, PolicyStatus
from tests.integration.conftest import Services, eventually
from tests.integration.test_reconciler_ha import (
    LEASE_TTL,
    REPLICAS,
    lease_holder,
    the_leader,
    two_replicas_and_the_seed,
)
from tests.integration.test_reconciler_policies import (
    GDP,
    VIPS,
    answering,
    leading,
    publish_policy,
    publish_seed,
    ratio,
    split,
)

BUCKETS = (subjects.KV_SERVICES, subjects.KV_ZONES)
LEASE_TTL_SECONDS = float(LEASE_TTL["KGSLB_LEASE_TTL_SECONDS"])
MANY_HOSTS = 400
"""The burst: one policy edit rewrites this many GSLB services, far more than the 64 writes
the leader keeps in flight at once."""
AFTER_RESUME_SECONDS = 3 * LEASE_TTL_SECONDS
"""How long the resumed old leader is watched for writes: it has renewed, planned and stood
down well within it."""


@dataclass(frozen=True)
class Stored:
    """One message a KV bucket's stream stored."""

    bucket: str
    sequence: int
    key: str
    writer: str


@dataclass
class Recorder:
    """Every message the reconciler buckets' streams store, as they store it (deliver all),
    and, with a core subscription, every write *sent* to them, stored or refused."""

    stored: list[Stored] = field(default_factory=list)
    sent: list[tuple[str, str]] = field(default_factory=list)
    """(key, writer) of every publish to `kgslb_services`, refused ones included."""

    def fence_of(self, writer: str, bucket: str) -> int:
        """The sequence of the last marker of `writer`'s fence in `bucket`: from then on, no
        write of an older term can land there."""
        fences = [
            s.sequence
            for s in self.stored
            if s.bucket == bucket and s.writer == writer and subjects.is_fence_key(s.key)
        ]
        assert fences, f"{writer} never fenced KV {bucket}"
        return max(fences)

    def stored_after(self, bucket: str, sequence: int) -> list[Stored]:
        return [s for s in self.stored if s.bucket == bucket and s.sequence > sequence]

    def last_sequence(self, bucket: str) -> int:
        return max((s.sequence for s in self.stored if s.bucket == bucket), default=0)


@contextlib.asynccontextmanager
async def recording(nc: Client) -> AsyncIterator[Recorder]:
    record = Recorder()
    js = nc.jetstream()
    subs = []
    for bucket in BUCKETS:
        prefix = f"$KV.{bucket}."

        async def store(msg: Msg, bucket: str = bucket, prefix: str = prefix) -> None:
            writer = (msg.headers or {}).get(WRITER, "")
            key = msg.subject.removeprefix(prefix)
            record.stored.append(Stored(bucket, msg.metadata.sequence.stream, key, writer))

        subs.append(
            await js.subscribe(
                f"{prefix}>",
                stream=f"KV_{bucket}",
                cb=store,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.ALL,
            )
        )

    async def sent(msg: Msg) -> None:
        key = msg.subject.removeprefix(f"$KV.{subjects.KV_SERVICES}.")
        record.sent.append((key, (msg.headers or {}).get(WRITER, "")))

    subs.append(await nc.subscribe(f"$KV.{subjects.KV_SERVICES}.>", cb=sent))
    try:
        yield record
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


@contextlib.contextmanager
def paused(services: Services, name: str) -> Iterator[None]:
    """SIGSTOP `name` until the block ends (SIGCONT even when the block fails, so the
    fixture's SIGTERM at teardown is not left pending)."""
    process = services.running[name].process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


async def revisions(nc: Client) -> dict[str, dict[str, int]]:
    """Bucket -> key -> KV revision of every key the reconciler writes."""
    js = nc.jetstream()
    out: dict[str, dict[str, int]] = {}
    for bucket in BUCKETS:
        entries = await read_entries(js, bucket)
        out[bucket] = {key: entry.revision or 0 for key, entry in entries.items()}
    return out


async def splits(nc: Client) -> dict[str, dict[str, int]]:
    """FQDN -> cluster -> weight, for every GSLB service in KV kgslb_services."""
    values = await read_values(nc.jetstream(), subjects.KV_SERVICES)
    out = {}
    for raw in values.values():
        service = wire.decode(raw, GslbService)
        out[service.fqdn] = {m.cluster: m.weight for m in service.all_members()}
    return out


async def everywhere(nc: Client, weights: dict[str, int], count: int) -> bool:
    current = await splits(nc)
    return len(current) == count and all(w == weights for w in current.values())


async def standing_by(services: Services, name: str) -> bool:
    return not await leading(services, name)


async def test_a_leader_paused_past_its_lease_writes_nothing_after_the_standby_took_over(
    nats_client: Client, services: Services
) -> None:
    port = await two_replicas_and_the_seed(nats_client, services)
    leader = await eventually(lambda: the_leader(services))
    standby = next(name for name in REPLICAS if name != leader)

    async with recording(nats_client) as record:
        with paused(services, leader):
            stopped = time.monotonic()
            await publish_policy(nats_client, GDP, split(6, 3, 1), generation=2)
            await eventually(lambda: leading(services, standby), timeout_seconds=20)
            took_over = time.monotonic() - stopped
            await eventually(lambda: answering(port, ratio(6, 3, 1)), timeout_seconds=10)
            applied = time.monotonic() - stopped
            # Paused for longer than its lease, the edit applied by the other replica.
            before_resume = await revisions(nats_client)
            resumed_after = {b: record.last_sequence(b) for b in BUCKETS}
        await eventually(lambda: standing_by(services, leader), timeout_seconds=10)
        await asyncio.sleep(AFTER_RESUME_SECONDS)

        after_resume = await revisions(nats_client)
        for bucket in BUCKETS:
            fence = record.fence_of(standby, bucket)
            assert {s.writer for s in record.stored_after(bucket, fence)} <= {standby}
            assert record.stored_after(bucket, resumed_after[bucket]) == []
    print(
        f"\npaused leader: standby leads {took_over:.1f} s after SIGSTOP (lease TTL "
        f"{LEASE_TTL_SECONDS:.0f} s), edit answered at {applied:.1f} s; "
        f"{sum(len(v) for v in after_resume.values())} keys unchanged after SIGCONT"
    )
    assert after_resume == before_resume, "the old leader wrote after SIGCONT"
    assert await lease_holder(nats_client) == standby
    assert await answering(port, ratio(6, 3, 1))
    status = await nats_client.jetstream().get_last_msg(
        subjects.STREAM_STATUS, subjects.status_subject(GDP.kind, GDP.namespace, GDP.name)
    )
    assert (status.headers or {}).get(WRITER) == standby
    assert wire.decode(status.data, PolicyStatus).observed_generation == 2


# The forced race -----------------------------------------------------------------------------


class HoldingRelay:
    """A loopback TCP relay to nats-server. While `holding`, what clients send is kept here,
    not forwarded (the network lost its way); `release` delivers it all, in order."""

    def __init__(self, nats: NatsServer) -> None:
        self.nats = nats
        self.port = free_port()
        self.holding = False
        self._held: list[tuple[asyncio.StreamWriter, bytes]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def held_kv_writes(self) -> int:
        """Publishes to KV kgslb_services held (split across chunks they may be missed: the
        count is a lower bound)."""
        pattern = f"PUB $KV.{subjects.KV_SERVICES}.".encode()
        return sum(data.count(pattern) for _, data in self._held)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def hold(self) -> None:
        self.holding = True

    async def release(self) -> None:
        self.holding = False
        held, self._held = self._held, []
        for upstream, data in held:
            upstream.write(data)
            with contextlib.suppress(ConnectionError):
                await upstream.drain()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.nats.host, self.nats.port)
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer, holdable=True)),
            asyncio.create_task(self._pipe(up_reader, writer, holdable=False)),
        ):
            self._tasks.add(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, holdable: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if holdable and (self.holding or any(w is writer for w, _ in self._held)):
                    self._held.append((writer, data))
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def many(cluster: str) -> ObservedObject:
    """An Ingress with MANY_HOSTS hosts, in every cluster: MANY_HOSTS GSLB services under the
    seed's GDP."""
    return ObservedObject(
        ref=ObjectRef(cluster=cluster, kind=ObjectKind.INGRESS, namespace="default", name="many"),
        resource_version="1",
        labels={"app": "gslb"},
        hosts=[f"app{index}.avi.iberia.local" for index in range(MANY_HOSTS)],
        vips=[VIPS[cluster]],
    )


async def test_writes_in_flight_when_the_leader_is_paused_never_land_after_the_takeover(
    nats_client: Client, services: Services, nats_server: NatsServer
) -> None:
    relays = {name: HoldingRelay(nats_server) for name in REPLICAS}
    for name, relay in relays.items():
        await relay.start()
        env = {**LEASE_TTL, "KGSLB_NATS_URL": relay.url}
        services.start(name, "reconciler", "--replica", name, env=env)
    try:
        await publish_seed(nats_client)
        for cluster in VIPS:
            await nats_client.jetstream().publish(
                many(cluster).ref.subject, wire.encode(many(cluster))
            )
        count = MANY_HOSTS + 1
        seed_split = {"s1az1": 6, "s1az2": 4, "s2": 2}
        await eventually(lambda: everywhere(nats_client, seed_split, count), timeout_seconds=30)
        leader = await eventually(lambda: the_leader(services))
        standby = next(name for name in REPLICAS if name != leader)
        relay = relays[leader]

        async with recording(nats_client) as record:
            relay.hold()
            await publish_policy(nats_client, GDP, split(6, 3, 1), generation=2)
            # The leader is writing the burst: its first writes are in the network.
            await eventually(lambda: relay.held_kv_writes() > 0, timeout_seconds=10)
            with paused(services, leader):
                new_split = {"s1az1": 6, "s1az2": 3, "s2": 1}
                await eventually(lambda: leading(services, standby), timeout_seconds=20)
                await eventually(
                    lambda: everywhere(nats_client, new_split, count), timeout_seconds=20
                )
                in_the_network = relay.held_kv_writes()
                sent_before = len(record.sent)
                await relay.release()
                # The stale writes reach the server after the new leader's fence ...
                await eventually(
                    lambda: any(w == leader for _, w in record.sent[sent_before:]),
                    timeout_seconds=10,
                )
            await eventually(lambda: standing_by(services, leader), timeout_seconds=10)
            await asyncio.sleep(AFTER_RESUME_SECONDS)

            # ... and none of them is stored.
            for bucket in BUCKETS:
                fence = record.fence_of(standby, bucket)
                assert {s.writer for s in record.stored_after(bucket, fence)} <= {standby}
            stale = [k for k, w in record.sent[sent_before:] if w == leader]
        print(
            f"\nforced race: {in_the_network} writes of the old term held in the network at "
            f"the takeover, {len(stale)} reached nats-server after the new fence, 0 stored"
        )
        assert in_the_network > 0 and stale, "the race was not forced"
        assert await everywhere(nats_client, new_split, count)
        assert await lease_holder(nats_client) == standby
    finally:
        for relay in relays.values():
            await relay.stop()
