"""The health service as a process: real nats-server, real `kgslb health` replicas, real HTTP
backends on loopback addresses. Desired services are written straight into KV kgslb_services,
which is all the health service reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import httpx
import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from kgslb.backends import Fault, HelloBackends, HelloSite
from kgslb.embedded import free_port
from services.health.monitor import owner
from shared import subjects, wire
from shared.follow import read_values
from shared.models import (
    GslbService,
    HealthMonitorSpec,
    HealthState,
    Member,
    MemberHealth,
    PriorityGroup,
)
from tests.integration.conftest import Services, eventually

FQDN = "app.health.test"
HEARTBEAT_SECONDS = 0.2
REPLICAS = ("health-a", "health-b")


def monitor(port: int, **changes: object) -> HealthMonitorSpec:
    """Quick AMKO-like monitor: HEAD / every 0.2 s, 2 successes up, 2 failures down."""
    spec = HealthMonitorSpec(
        port=port,
        interval_seconds=0.2,
        timeout_seconds=0.3,
        successes_to_up=2,
        failures_to_down=2,
    )
    return spec.model_copy(update=changes)


def gslb_service(fqdn: str, ips: Iterable[str], spec: HealthMonitorSpec) -> GslbService:
    members = [Member(ip=ip, cluster=f"c{n}", weight=1) for n, ip in enumerate(ips)]
    return GslbService(
        fqdn=fqdn,
        ttl_seconds=30,
        groups=[PriorityGroup(priority=10, members=members)],
        health_monitor=spec,
    )


def key(ip: str, fqdn: str = FQDN) -> str:
    return subjects.member_key(fqdn, ip)


async def put_service(nc: Client, service: GslbService) -> None:
    kv = await nc.jetstream().key_value(subjects.KV_SERVICES)
    await kv.put(subjects.fqdn_key(service.fqdn), wire.encode(service))


async def health_kv(nc: Client) -> KeyValue:
    return await nc.jetstream().key_value(subjects.KV_HEALTH)


async def health_records(nc: Client) -> dict[str, MemberHealth]:
    # shared.follow.read_values, not a nats-py watch read up to its "no more pending" marker:
    # that marker can come before entries already received (a CI run read a key as missing).
    values = await read_values(nc.jetstream(), subjects.KV_HEALTH)
    return {key: wire.decode(value, MemberHealth) for key, value in values.items()}


async def states_are(nc: Client, expected: dict[str, HealthState]) -> bool:
    records = await health_records(nc)
    return all(k in records and records[k].state == s for k, s in expected.items())


@dataclass
class Updates:
    """Every write to KV kgslb_health from the moment it starts."""

    entries: list[tuple[str, MemberHealth | None]] = field(default_factory=list)

    def of(self, member: str) -> list[MemberHealth | None]:
        return [health for k, health in self.entries if k == member]


@contextlib.asynccontextmanager
async def recording(nc: Client) -> AsyncIterator[Updates]:
    kv = await health_kv(nc)
    updates = Updates()
    watcher = await kv.watchall()
    # Skip the current values: only what changes from now on is recorded.
    async for entry in watcher:
        if entry is None:
            break

    async def record() -> None:
        async for entry in watcher:
            if entry is not None:
                deleted = entry.operation in ("DEL", "PURGE") or not entry.value
                value = None if deleted else wire.decode(entry.value or b"", MemberHealth)
                updates.entries.append((entry.key, value))

    task = asyncio.create_task(record())
    try:
        yield updates
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await watcher.stop()


@contextlib.asynccontextmanager
async def hello(sites: list[HelloSite]) -> AsyncIterator[HelloBackends]:
    backends = HelloBackends(sites)
    await backends.start()
    try:
        yield backends
    finally:
        await backends.stop()


def sites(ips: Iterable[str], port: int, hosts: tuple[str, ...] = (FQDN,)) -> list[HelloSite]:
    return [HelloSite(f"c{n}", ip, port, f"SITE {n}", hosts) for n, ip in enumerate(ips)]


async def metric(ops_port: int, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{ops_port}/metrics")).text
    wanted = [f'{label}="{value}"' for label, value in labels.items()]
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        series, _, label_text = sample.partition("{")
        if series == name and all(label in label_text for label in wanted):
            total += float(value)
    return total


async def ready(ops_port: int) -> bool:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{ops_port}/readyz")).status_code == 200


def start_replica(services: Services, replica: str) -> None:
    services.start(
        replica,
        "health",
        env={"KGSLB_REPLICA": replica, "KGSLB_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS)},
    )


async def start_replicas(services: Services, *replicas: str) -> None:
    for replica in replicas:
        start_replica(services, replica)
    for replica in replicas:
        ops = services.ops_ports[replica]
        await eventually(lambda ops=ops: ready(ops), timeout_seconds=20)
        await eventually(
            lambda ops=ops: _sees(ops, len(replicas)), timeout_seconds=10, interval_seconds=0.05
        )


async def _sees(ops_port: int, count: int) -> bool:
    return await metric(ops_port, "kgslb_health_replicas_live") == count


def split_ips(count: int) -> list[str]:
    """`count` loopback member addresses, at least two owned by each of the two replicas."""
    ips = [f"127.20.0.{n}" for n in range(1, 40)]
    by_replica: dict[str | None, list[str]] = {replica: [] for replica in REPLICAS}
    for ip in ips:
        by_replica[owner(key(ip), REPLICAS)].append(ip)
    half = count // 2
    return by_replica[REPLICAS[0]][:half] + by_replica[REPLICAS[1]][: count - half]


# Tests ---------------------------------------------------------------------------------------


async def test_new_member_is_recorded_unknown_then_up_after_its_successes(
    nats_client: Client, services: Services
) -> None:
    port, ip = free_port(), "127.20.0.1"
    await start_replicas(services, "health-a")
    async with hello(sites([ip], port)), recording(nats_client) as updates:
        await put_service(nats_client, gslb_service(FQDN, [ip], monitor(port)))
        await eventually(lambda: states_are(nats_client, {key(ip): HealthState.UP}))

    states = [health.state for health in updates.of(key(ip)) if health is not None]
    assert states == [HealthState.UNKNOWN, HealthState.UP]


async def test_a_steady_member_writes_nothing_while_probed(
    nats_client: Client, services: Services
) -> None:
    port, ip = free_port(), "127.20.0.1"
    await start_replicas(services, "health-a")
    ops = services.ops_ports["health-a"]
    async with hello(sites([ip], port)):
        await put_service(nats_client, gslb_service(FQDN, [ip], monitor(port)))
        await eventually(lambda: states_are(nats_client, {key(ip): HealthState.UP}))
        kv = await health_kv(nats_client)
        revision = (await kv.get(key(ip))).revision
        probes = await metric(ops, "kgslb_health_probes_total", outcome="ok")

        await eventually(
            lambda: _more_than(ops, "kgslb_health_probes_total", probes + 5, outcome="ok")
        )

        assert (await kv.get(key(ip))).revision == revision


async def _more_than(ops_port: int, name: str, value: float, **labels: str) -> bool:
    return await metric(ops_port, name, **labels) >= value


@pytest.mark.parametrize(
    ("fault", "result"),
    [
        ("error", "HTTP 500"),
        ("hang", "timeout"),
        ("refused", "connection refused"),
        ("wrong-host", "HTTP 404"),
    ],
)
async def test_each_kind_of_failure_takes_a_member_down(
    nats_client: Client, services: Services, fault: str, result: str
) -> None:
    port, good, bad = free_port(), "127.20.0.1", "127.20.0.2"
    hosts = ("another.host.test",) if fault == "wrong-host" else (FQDN,)
    backends = [*sites([good], port), HelloSite("c1", bad, port, "SITE 1", hosts)]
    if fault == "refused":
        backends.pop()
    await start_replicas(services, "health-a")
    async with hello(backends) as running:
        if fault in ("error", "hang"):
            running.set_fault("c1", Fault(fault))
        await put_service(nats_client, gslb_service(FQDN, [good, bad], monitor(port)))

        await eventually(
            lambda: states_are(nats_client, {key(good): HealthState.UP, key(bad): HealthState.DOWN})
        )

    down = (await health_records(nats_client))[key(bad)]
    assert down.last_result == result
    assert down.last_error
    # The log tells the operator which member went down, by name; a first `up` is no news
    # (at the cold start of a large install it was one line per member).
    transitions = [
        line["msg"]
        for line in logged(services, "health-a")
        if line["level"] == "INFO" and line["msg"].startswith("member ")
    ]
    assert f"member {FQDN} {bad} (cluster c1): unknown -> down" in transitions
    assert not [t for t in transitions if t.endswith("-> up")]


def logged(services: Services, name: str) -> list[dict[str, str]]:
    """The JSON log lines a service process wrote so far."""
    lines = (services.log_dir / f"{name}.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def test_member_removed_from_its_service_loses_its_health(
    nats_client: Client, services: Services
) -> None:
    port, kept, removed = free_port(), "127.20.0.1", "127.20.0.2"
    await start_replicas(services, "health-a")
    async with hello(sites([kept, removed], port)):
        await put_service(nats_client, gslb_service(FQDN, [kept, removed], monitor(port)))
        await eventually(
            lambda: states_are(
                nats_client, {key(kept): HealthState.UP, key(removed): HealthState.UP}
            )
        )

        await put_service(nats_client, gslb_service(FQDN, [kept], monitor(port)))

        async def removed_is_gone() -> bool:
            return set(await health_records(nats_client)) == {key(kept)}

        await eventually(removed_is_gone)


async def test_kill_9_of_a_replica_hands_its_members_over_without_flapping(
    nats_client: Client, services: Services
) -> None:
    port, ips = free_port(), split_ips(8)
    members = [key(ip) for ip in ips]
    orphaned = [k for k in members if owner(k, REPLICAS) == "health-a"]
    await start_replicas(services, *REPLICAS)
    async with hello(sites(ips, port)):
        await put_service(nats_client, gslb_service(FQDN, ips, monitor(port)))
        await eventually(lambda: states_are(nats_client, dict.fromkeys(members, HealthState.UP)))
        survivor = services.ops_ports["health-b"]

        async with recording(nats_client) as updates:
            services.running["health-a"].kill9()

            async def all_claimed_by_b() -> bool:
                records = await health_records(nats_client)
                return all(records[k].replica == "health-b" for k in members)

            await eventually(all_claimed_by_b)
            probes = await metric(survivor, "kgslb_health_probes_total")
            await eventually(
                lambda: _more_than(survivor, "kgslb_health_probes_total", probes + 3 * len(ips))
            )

    assert await metric(survivor, "kgslb_health_members", state="up") == len(ips)
    written = [health for k, health in updates.entries]
    assert {k for k, _ in updates.entries} == set(orphaned), "only a's members are claimed"
    assert all(health is not None and health.state == HealthState.UP for health in written)


async def test_a_joining_replica_takes_its_share_without_flapping(
    nats_client: Client, services: Services
) -> None:
    port, ips = free_port(), split_ips(8)
    members = [key(ip) for ip in ips]
    moving = [k for k in members if owner(k, REPLICAS) == "health-b"]
    await start_replicas(services, "health-a")
    async with hello(sites(ips, port)):
        await put_service(nats_client, gslb_service(FQDN, ips, monitor(port)))
        await eventually(lambda: states_are(nats_client, dict.fromkeys(members, HealthState.UP)))

        async with recording(nats_client) as updates:
            start_replica(services, "health-b")
            joined = services.ops_ports["health-b"]
            await eventually(
                lambda: _more_than(joined, "kgslb_health_probes_total", 3 * len(moving)),
                timeout_seconds=20,
            )

    assert await metric(joined, "kgslb_health_members", state="up") == len(moving)
    assert await metric(services.ops_ports["health-a"], "kgslb_health_members") == len(
        members
    ) - len(moving)
    assert all(
        health is not None and health.state == HealthState.UP for _, health in updates.entries
    )
