"""The DNS following KV changes and surviving NATS outages, with real processes: the serial,
TTL and weight changes, health, stopped NATS, response rate limiting and `--workers`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
from nats.aio.client import Client

from kgslb.embedded import free_port
from shared import subjects, wire
from shared.models import DnsQueryLog, GslbService, HealthState, MemberHealth, ZoneSpec
from tests.integration.conftest import Services, eventually
from tests.integration.test_dns_protocol import HELLO, SEED, ZONE, gslb, zone

TTL_TWO = 2


async def put_zone(nc: Client, spec: ZoneSpec) -> None:
    kv = await nc.jetstream().key_value(subjects.KV_ZONES)
    await kv.put(subjects.fqdn_key(spec.name), wire.encode(spec))


async def put_service(nc: Client, service: GslbService) -> None:
    kv = await nc.jetstream().key_value(subjects.KV_SERVICES)
    await kv.put(subjects.fqdn_key(service.fqdn), wire.encode(service))


async def ask(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    message = dns.message.make_query(name, rdtype)
    return await dns.asyncquery.udp(message, "127.0.0.1", port=port, timeout=2)


async def first_address(port: int, name: str = HELLO) -> str:
    return str((await ask(port, name)).answer[0][0].address)


async def serial(port: int) -> int:
    return int((await ask(port, ZONE, "SOA")).answer[0][0].serial)


async def seeded(nc: Client, services: Services, *flags: str) -> int:
    await put_zone(nc, zone())
    await put_service(nc, gslb(HELLO))
    port = free_port()
    # Worker i serves ops on --ops-port + i: let each pick a free port instead.
    env = {"KGSLB_OPS_PORT": "0"} if "--workers" in flags else None
    services.start("dns", "dns", "--dns-port", str(port), *flags, env=env)
    await eventually(lambda: first_address(port))
    return port


async def test_a_ttl_change_is_answered_as_soon_as_it_reaches_the_dns(
    nats_client: Client, services: Services
) -> None:
    port = await seeded(nats_client, services)

    await put_service(nats_client, gslb(HELLO, ttl=TTL_TWO))

    async def new_ttl() -> bool:
        return (await ask(port, HELLO)).answer[0].ttl == TTL_TWO

    await eventually(new_ttl)


async def test_a_weight_change_is_answered_as_soon_as_it_reaches_the_dns(
    nats_client: Client, services: Services
) -> None:
    port = await seeded(nats_client, services)

    await put_service(nats_client, gslb(HELLO, (("127.10.23.40", "s2", 1),)))

    async def only_s2() -> bool:
        return {await first_address(port) for _ in range(6)} == {"127.10.23.40"}

    await eventually(only_s2)


async def test_a_member_marked_down_is_no_longer_answered(
    nats_client: Client, services: Services
) -> None:
    port = await seeded(nats_client, services)
    down = MemberHealth(
        fqdn=HELLO, ip="127.10.25.46", cluster="s1az1", state=HealthState.DOWN,
        since=datetime.now(UTC),
    )  # fmt: skip

    kv = await nats_client.jetstream().key_value(subjects.KV_HEALTH)
    await kv.put(down.key, wire.encode(down))

    async def without_it() -> bool:
        return "127.10.25.46" not in {await first_address(port) for _ in range(12)}

    await eventually(without_it)


async def test_the_serial_grows_with_every_change_to_the_zone_or_its_services(
    nats_client: Client, services: Services
) -> None:
    port = await seeded(nats_client, services)
    before = await serial(port)

    await put_service(nats_client, gslb(HELLO, ttl=TTL_TWO))
    await eventually(lambda: _serial_above(port, before))
    middle = await serial(port)
    await put_zone(nats_client, zone().model_copy(update={"default_ttl_seconds": 60}))

    await eventually(lambda: _serial_above(port, middle))


async def _serial_above(port: int, value: int) -> bool:
    return await serial(port) > value


async def test_two_dns_replicas_answer_the_same_serial(
    nats_client: Client, services: Services
) -> None:
    first = await seeded(nats_client, services)
    await put_service(nats_client, gslb(f"other.{ZONE}"))
    await put_service(nats_client, gslb(HELLO, ttl=TTL_TWO))
    second = free_port()
    services.start("dns-2", "dns", "--dns-port", str(second))
    await eventually(lambda: first_address(second, f"other.{ZONE}"))

    async def agree() -> bool:
        return await serial(first) == await serial(second)

    await eventually(agree)


async def test_answers_continue_while_nats_is_stopped_and_updates_resume_after(
    nats_client: Client, services: Services
) -> None:
    port = await seeded(nats_client, services)

    services.nats.stop()
    await asyncio.sleep(0.5)
    during = Counter([await first_address(port) for _ in range(12)])
    services.nats.start()
    await eventually(lambda: nats_client.is_connected)
    await put_service(nats_client, gslb(HELLO, ttl=TTL_TWO))

    async def new_ttl() -> bool:
        return (await ask(port, HELLO)).answer[0].ttl == TTL_TWO

    assert during == Counter({ip: weight for ip, _, weight in SEED})
    await eventually(new_ttl)


async def test_rate_limiting_drops_and_slips_a_burst_from_one_network(
    nats_client: Client, services: Services
) -> None:
    port = await seeded(nats_client, services, "--rrl-responses-per-second", "5", "--rrl-slip", "2")
    query = dns.message.make_query(HELLO, "A").to_wire()[2:]
    replies: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        for turn in range(40):
            sock.sendto(struct.pack("!H", turn) + query, ("127.0.0.1", port))
        try:
            while True:
                replies.append(sock.recv(4096))
        except TimeoutError:
            pass

    truncated = [r for r in replies if dns.message.from_wire(r).flags & dns.flags.TC]
    full = len(replies) - len(truncated)
    # The burst may straddle one second boundary: at most two budgets of 5.
    assert full <= 10
    assert len(truncated) >= 10, "every second response past the budget slips"
    assert len(replies) <= 30, "the others are dropped"


async def test_workers_share_the_port_and_all_answer(
    nats_client: Client, services: Services
) -> None:
    port = await seeded(nats_client, services, "--workers", "2", "--log-per-second", "0")

    async def both_workers_loaded() -> bool:
        # A worker still loading the KV holds its queries: they time out here.
        answered = [await first_address(port) for _ in range(20)]
        return len(answered) == 20

    await eventually(both_workers_loaded)
    logs = await nats_client.subscribe(subjects.dnslog_subject(ZONE))
    await nats_client.flush()  # the server knows the subscription before queries

    # Many source ports: the kernel spreads them over both workers by flow hash.
    answered = [await first_address(port) for _ in range(60)]

    replicas = set()
    for _ in range(60):
        record = wire.decode((await logs.next_msg(timeout=5)).data, DnsQueryLog)
        replicas.add(record.replica.rsplit("-", 1)[-1])
    await logs.unsubscribe()
    assert len(answered) == 60
    assert replicas == {"w0", "w1"}


def worker_pids(parent: int) -> set[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children")
    return {int(pid) for pid in children.read_text().split()} if children.exists() else set()


async def test_a_killed_worker_is_restarted_and_stopping_leaves_no_worker(
    nats_client: Client, services: Services
) -> None:
    port = await seeded(nats_client, services, "--workers", "2")
    parent = services.running["dns"]
    assert parent.process is not None
    before = worker_pids(parent.process.pid)

    os.kill(min(before), signal.SIGKILL)

    async def replaced() -> bool:
        now = worker_pids(parent.process.pid)  # type: ignore[union-attr]
        answered = [await first_address(port) for _ in range(20)]
        return len(now) == 2 and now != before and len(answered) == 20

    await eventually(replaced)
    workers = worker_pids(parent.process.pid)
    parent.stop()
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


async def test_workers_run_the_dns_service_entry_point_not_the_cli(
    nats_client: Client, services: Services
) -> None:
    await seeded(nats_client, services, "--workers", "2")
    parent = services.running["dns"]
    assert parent.process is not None

    workers = worker_pids(parent.process.pid)

    commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] for pid in workers]
    assert commands == [[b"-m", b"services.dns"]] * 2
