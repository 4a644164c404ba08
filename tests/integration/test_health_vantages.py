"""Health from several vantage points, end to end: a real nats-server, three health replicas
each probing from its own site (`--site`) and its own source address (`--probe-source`), real
HTTP servers as members, and a real DNS. A member's server refuses the probes of a site whose
path to it is broken, as a firewall that rejects that site's network would: the site's replica
then says down, and the DNS keeps answering the member until a quorum of the sites that
heartbeat says down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.message
from nats.aio.client import Client

from kgslb.embedded import free_port
from shared import subjects, wire
from shared.models import (
    HealthMonitorSpec,
    HealthState,
    MemberHealth,
    NameServer,
    SoaSpec,
    ZoneSpec,
)
from tests.integration.conftest import Services, eventually
from tests.integration.test_health_service import gslb_service, metric, monitor, put_service

ZONE = "vantage.test"
FQDN = f"app.{ZONE}"
A, B = "127.20.1.1", "127.20.1.2"
SOURCES = {"s1": "127.0.0.11", "s2": "127.0.0.12", "s3": "127.0.0.13"}
HEARTBEAT_SECONDS = 0.2
INTERVAL_SECONDS = 0.2
FAILURES_TO_DOWN = 2
DECIDED_SECONDS = 10.0
"""Generous: a verdict is written after FAILURES_TO_DOWN probes; the DNS sees it at once."""


class Member:
    """A real HTTP server on one loopback address that answers 200, except that it drops the
    connections coming from blocked source addresses without a word."""

    def __init__(self, ip: str, port: int) -> None:
        self.ip = ip
        self.port = port
        self.blocked: set[str] = set()
        self.refused: dict[str, int] = {}
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.ip, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = writer.get_extra_info("peername")[0]
        try:
            if source in self.blocked:
                self.refused[source] = self.refused.get(source, 0) + 1
                return
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def members(port: int) -> AsyncIterator[dict[str, Member]]:
    servers = {ip: Member(ip, port) for ip in (A, B)}
    for server in servers.values():
        await server.start()
    try:
        yield servers
    finally:
        for server in servers.values():
            await server.stop()


def start_site(services: Services, site: str) -> None:
    services.start(
        f"health-{site}",
        "health",
        "--site", site,
        "--probe-source", SOURCES[site],
        env={"KGSLB_REPLICA": f"health-{site}", "KGSLB_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS)},
    )  # fmt: skip


async def publish(nc: Client, spec: HealthMonitorSpec) -> None:
    zone = ZoneSpec(
        name=ZONE,
        soa=SoaSpec(mname=f"ns.{ZONE}.", rname=f"hostmaster.{ZONE}."),
        nameservers=[NameServer(name=f"ns.{ZONE}.", glue=["127.0.0.1"])],
    )
    zones = await nc.jetstream().key_value(subjects.KV_ZONES)
    await zones.put(subjects.fqdn_key(ZONE), wire.encode(zone))
    await put_service(nc, gslb_service(FQDN, [A, B], spec))


async def verdicts(nc: Client, ip: str) -> dict[str, HealthState]:
    """Each site's verdict on the member at `ip`, as KV holds it."""
    kv = await nc.jetstream().key_value(subjects.KV_HEALTH)
    found: dict[str, HealthState] = {}
    watcher = await kv.watch(f"{subjects.member_key(FQDN, ip)}.*", ignore_deletes=True)
    async for entry in watcher:
        if entry is None:
            break
        record = wire.decode(entry.value or b"", MemberHealth)
        _, site = subjects.split_health_key(entry.key)
        assert record.site == site
        found[site] = HealthState(record.state)
    await watcher.stop()
    return found


async def answered(port: int) -> set[str]:
    addresses: set[str] = set()
    for _ in range(4):
        query = dns.message.make_query(FQDN, "A")
        reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=1)
        addresses |= {rr.address for rrset in reply.answer for rr in rrset}
    return addresses


async def stays_answered(port: int, ip: str, seconds: float) -> None:
    """`ip` is in every answer for `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        assert ip in await answered(port)
        await asyncio.sleep(0.05)


async def test_a_member_is_withdrawn_only_when_a_majority_of_the_live_sites_say_down(
    nats_client: Client, services: Services
) -> None:
    port = free_port()
    spec = monitor(
        port,
        interval_seconds=INTERVAL_SECONDS,
        failures_to_down=FAILURES_TO_DOWN,
        successes_to_up=2,
    )
    async with members(port) as servers:
        for site in SOURCES:
            start_site(services, site)
        dns_port = services.start_dns()
        await publish(nats_client, spec)
        all_up = dict.fromkeys(SOURCES, HealthState.UP)
        await eventually(lambda: _verdicts_are(nats_client, A, all_up), DECIDED_SECONDS)
        await eventually(lambda: _verdicts_are(nats_client, B, all_up), DECIDED_SECONDS)
        await eventually(lambda: _answers(dns_port, {A, B}), DECIDED_SECONDS)

        # s1 loses its path to A: its replica says down, the two others still reach it.
        servers[A].blocked.add(SOURCES["s1"])
        one_down = {**all_up, "s1": HealthState.DOWN}
        await eventually(lambda: _verdicts_are(nats_client, A, one_down), DECIDED_SECONDS)
        await stays_answered(dns_port, A, FAILURES_TO_DOWN * INTERVAL_SECONDS * 5)
        assert await _dns_metric(services, "kgslb_dns_health_outvoted_members") == 1
        assert await _dns_metric(
            services, "kgslb_dns_health_verdicts", vantage="s1", state="down", fresh="true"
        ) == 1  # fmt: skip

        # s2 loses it too: two of three is a majority.
        servers[A].blocked.add(SOURCES["s2"])
        await eventually(lambda: _answers(dns_port, {B}), DECIDED_SECONDS)
        assert await verdicts(nats_client, A) == {**one_down, "s2": HealthState.DOWN}

        # s2's replica stops: its verdict no longer counts, one of two is a tie, A is back.
        services.running["health-s2"].stop()
        await eventually(lambda: _answers(dns_port, {A, B}), DECIDED_SECONDS)
        assert await _dns_metric(services, "kgslb_dns_health_vantage_live", vantage="s2") == 0

        # Killed (no goodbye): s3 also goes silent; s1 alone is a quorum of one.
        services.running["health-s3"].kill9()
        await eventually(lambda: _answers(dns_port, {B}), DECIDED_SECONDS)
        # Another site's replica buried it: the bucket keeps no heartbeat of a dead site.
        await eventually(lambda: _heartbeats(nats_client, {"health-s1"}), DECIDED_SECONDS)

        # Every site silent: nothing changes any more, whatever the members do.
        services.running["health-s1"].kill9()
        servers[A].blocked.clear()
        await eventually(
            lambda: _dns_metric_is(services, "kgslb_dns_health_vantage_live", 0, vantage="s1"),
            DECIDED_SECONDS,
        )
        await asyncio.sleep(3 * HEARTBEAT_SECONDS * 3)
        assert await answered(dns_port) == {B}, "health went silent: the last verdict stays"

        # The sites come back: every one reaches A again.
        for site in SOURCES:
            services.running.pop(f"health-{site}")
            start_site(services, site)
        await eventually(lambda: _answers(dns_port, {A, B}), DECIDED_SECONDS * 2)

    assert servers[A].refused[SOURCES["s1"]] >= FAILURES_TO_DOWN
    assert SOURCES["s3"] not in servers[A].refused


async def test_a_site_alone_follows_its_own_verdict(
    nats_client: Client, services: Services
) -> None:
    """One vantage point is a majority of one: a site-layout of one site behaves as before."""
    port = free_port()
    spec = monitor(port, interval_seconds=INTERVAL_SECONDS, failures_to_down=FAILURES_TO_DOWN)
    async with members(port) as servers:
        start_site(services, "s1")
        dns_port = services.start_dns()
        await publish(nats_client, spec)
        await eventually(
            lambda: _verdicts_are(nats_client, A, {"s1": HealthState.UP}), DECIDED_SECONDS
        )
        await eventually(lambda: _answers(dns_port, {A, B}), DECIDED_SECONDS)

        servers[A].blocked.add(SOURCES["s1"])
        await eventually(lambda: _answers(dns_port, {B}), DECIDED_SECONDS)

    assert await verdicts(nats_client, A) == {"s1": HealthState.DOWN}


async def test_replicas_of_one_site_share_its_members_and_every_site_probes_all_of_them(
    nats_client: Client, services: Services
) -> None:
    port = free_port()
    ips = [f"127.20.2.{n}" for n in range(1, 13)]
    spec = monitor(port, interval_seconds=INTERVAL_SECONDS)
    servers = [Member(ip, port) for ip in ips]
    for server in servers:
        await server.start()
    try:
        for replica, site in (("s1-a", "s1"), ("s1-b", "s1"), ("s2-a", "s2")):
            services.start(
                replica,
                "health",
                "--site", site,
                env={"KGSLB_REPLICA": replica, "KGSLB_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS)},
            )  # fmt: skip
        await put_service(nats_client, gslb_service(FQDN, ips, spec))

        async def all_up_by_site() -> dict[str, dict[str, str]]:
            kv = await nats_client.jetstream().key_value(subjects.KV_HEALTH)
            authors: dict[str, dict[str, str]] = {"s1": {}, "s2": {}}
            watcher = await kv.watchall(ignore_deletes=True)
            async for entry in watcher:
                if entry is None:
                    break
                record = wire.decode(entry.value or b"", MemberHealth)
                if record.state == HealthState.UP:
                    authors[record.site][record.ip] = record.replica
            await watcher.stop()
            return authors if all(len(a) == len(ips) for a in authors.values()) else {}

        authors = await eventually(all_up_by_site, DECIDED_SECONDS * 2)
        for replica, live in (("s1-a", 2), ("s1-b", 2), ("s2-a", 1)):
            await eventually(
                lambda r=replica, n=live: _replicas_live(services, r, n), DECIDED_SECONDS
            )
    finally:
        for server in servers:
            await server.stop()

    assert set(authors["s1"].values()) == {"s1-a", "s1-b"}, "s1's two replicas share s1's members"
    assert set(authors["s2"].values()) == {"s2-a"}, "s2 probes every member itself"


async def _replicas_live(services: Services, replica: str, count: int) -> bool:
    return await metric(services.ops_ports[replica], "kgslb_health_replicas_live") == count


async def _verdicts_are(nc: Client, ip: str, expected: dict[str, HealthState]) -> bool:
    return await verdicts(nc, ip) == expected


async def _answers(port: int, expected: set[str]) -> bool:
    return await answered(port) == expected


async def _dns_metric(services: Services, name: str, **labels: str) -> float:
    return await metric(services.ops_ports["dns"], name, **labels)


async def _dns_metric_is(services: Services, name: str, value: float, **labels: str) -> bool:
    return await _dns_metric(services, name, **labels) == value


async def _heartbeats(nc: Client, expected: set[str]) -> bool:
    kv = await nc.jetstream().key_value(subjects.KV_LEASES)
    found: set[str] = set()
    watcher = await kv.watch(subjects.HEALTH_REPLICA_KEYS, ignore_deletes=True)
    async for entry in watcher:
        if entry is None:
            break
        found.add(subjects.decode_token(entry.key.split(".", 1)[1]))
    await watcher.stop()
    return found == expected
