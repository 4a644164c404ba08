"""A DNS replica whose buckets are deleted under it (`nats kv del`, a lost store): it keeps
answering from memory, says not ready while the state is missing or not rebuilt, and is
ready again, with a serial that never went back, once the buckets hold values again."""

from __future__ import annotations

import asyncio

import httpx
from nats.aio.client import Client

from kgslb.embedded import free_port
from shared import subjects
from tests.integration.conftest import Services, eventually
from tests.integration.test_dns_protocol import HELLO, gslb, zone
from tests.integration.test_dns_updates import (
    ask,
    first_address,
    put_service,
    put_zone,
    seeded,
    serial,
)
from tests.integration.test_follow import create_bucket


async def members(port: int) -> set[str]:
    out: set[str] = set()
    for _ in range(12):
        out.update(rr.address for rrset in (await ask(port, HELLO)).answer for rr in rrset)
    return out


async def readyz(services: Services, name: str = "dns") -> tuple[int, str]:
    async with httpx.AsyncClient() as http:
        url = f"http://127.0.0.1:{services.ops_ports[name]}/readyz"
        reply = await http.get(url, timeout=1)
        return reply.status_code, reply.text


async def test_the_dns_answers_from_memory_and_is_not_ready_until_lost_buckets_are_rebuilt(
    nats_client: Client, services: Services
) -> None:
    js = nats_client.jetstream()
    # The DNS checks the streams rarely here: the bucket stays missing until the test
    # creates it again, as when the service that may create it (the reconciler) is away.
    port = await seeded(nats_client, services, "--state-check-seconds", "3600")
    await eventually(lambda: readyz(services), timeout_seconds=10)
    assert (await readyz(services))[0] == 200
    answer = await members(port)
    assert answer
    serial_before = await serial(port)

    await js.delete_key_value(subjects.KV_SERVICES)
    await js.delete_key_value(subjects.KV_ZONES)

    async def not_ready() -> bool:
        return (await readyz(services))[0] == 503

    await eventually(not_ready, timeout_seconds=15)
    assert "missing: " in (await readyz(services))[1]
    assert await members(port) == answer, "answered from memory meanwhile"

    await create_bucket(nats_client, subjects.KV_SERVICES)
    await create_bucket(nats_client, subjects.KV_ZONES)

    async def rebuilding() -> bool:
        return "rebuilding" in (await readyz(services))[1]

    await eventually(rebuilding, timeout_seconds=15)
    assert await not_ready()
    assert await members(port) == answer, "an empty new bucket deletes nothing"

    await put_zone(nats_client, zone())
    await put_service(nats_client, gslb(HELLO))

    async def ready() -> bool:
        return (await readyz(services))[0] == 200

    await eventually(ready, timeout_seconds=15)
    assert await members(port) == answer
    assert await serial(port) > serial_before, "the serial floor: never back after a rebuild"


async def test_a_dns_started_after_the_store_was_lost_answers_a_serial_above_the_old_one(
    nats_client: Client, services: Services
) -> None:
    """No replica survives to carry the serial floor: the new one derives the serial from the
    new buckets alone (revisions from 1 again), and their later creation time keeps it ahead."""
    js = nats_client.jetstream()
    port = await seeded(nats_client, services)
    before = await serial(port)
    services.running.pop("dns").stop()

    await js.delete_key_value(subjects.KV_SERVICES)
    await js.delete_key_value(subjects.KV_ZONES)
    await asyncio.sleep(1.1)  # creation times count in seconds
    await create_bucket(nats_client, subjects.KV_SERVICES)
    await create_bucket(nats_client, subjects.KV_ZONES)
    await put_zone(nats_client, zone())
    await put_service(nats_client, gslb(HELLO))
    fresh = free_port()
    services.start("dns-fresh", "dns", "--dns-port", str(fresh))
    await eventually(lambda: first_address(fresh), timeout_seconds=30)

    after = await serial(fresh)
    assert 0 < (after - before) % 2**32 < 2**31, (before, after)
