"""Reconciler replicas over a real nats-server: exactly one leads (a lease in KV
`kgslb_leases`); after `kill -9` of the leader the standby takes over, DNS answers never
change, and the new leader rewrites nothing."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from shared import subjects, wire
from shared.models import Lease
from tests.integration.conftest import Services, eventually
from tests.integration.test_reconciler_policies import (
    GDP,
    HELLO,
    answering,
    answers,
    leading,
    metric,
    ops_get,
    publish_policy,
    publish_seed,
    ratio,
    split,
)

LEASE_TTL = {"KGSLB_LEASE_TTL_SECONDS": "2"}
REPLICAS = ("reconciler-a", "reconciler-b")


async def lease_holder(nc: Client) -> str:
    kv = await nc.jetstream().key_value(subjects.KV_LEASES)
    entry = await kv.get(subjects.RECONCILER_LEASE_KEY)
    return wire.decode(entry.value or b"", Lease).holder


async def two_replicas_and_the_seed(nc: Client, services: Services) -> int:
    for name in REPLICAS:
        services.start(name, "reconciler", "--replica", name, env=LEASE_TTL)
    port = services.start_dns()
    await publish_seed(nc)
    await eventually(lambda: answering(port, ratio(6, 4, 2)), timeout_seconds=20)
    return port


async def the_leader(services: Services) -> str | None:
    leaders = [name for name in REPLICAS if await leading(services, name)]
    return leaders[0] if len(leaders) == 1 else None


async def test_exactly_one_replica_leads_and_both_are_ready(
    nats_client: Client, services: Services
) -> None:
    await two_replicas_and_the_seed(nats_client, services)

    leader = await eventually(lambda: the_leader(services))

    standby = next(name for name in REPLICAS if name != leader)
    assert await lease_holder(nats_client) == leader
    assert await metric(services, leader, "kgslb_reconciler_leader") == 1
    assert await metric(services, standby, "kgslb_reconciler_leader") == 0
    standby_ready = await _readyz(services, standby)
    assert standby_ready == (200, "ready (standby)\n")
    assert await metric(services, standby, "kgslb_reconciler_kv_writes_total") == 0


async def _readyz(services: Services, name: str) -> tuple[int, str]:
    response = await ops_get(services, name, "/readyz")
    return response.status_code, response.text


async def test_standby_takes_over_after_kill_9_with_no_change_in_answers_or_kv(
    nats_client: Client, services: Services
) -> None:
    port = await two_replicas_and_the_seed(nats_client, services)
    leader = await eventually(lambda: the_leader(services))
    standby = next(name for name in REPLICAS if name != leader)
    kv = await nats_client.jetstream().key_value(subjects.KV_SERVICES)
    before = await kv.get(subjects.fqdn_key(HELLO))

    services.running[leader].kill9()
    answered_meanwhile = []
    while not await leading(services, standby):
        answered_meanwhile.append(await answers(port, 12))
        await asyncio.sleep(0.2)

    assert await lease_holder(nats_client) == standby
    assert answered_meanwhile and all(a == ratio(6, 4, 2) for a in answered_meanwhile)
    assert (await kv.get(subjects.fqdn_key(HELLO))).revision == before.revision
    assert await metric(services, standby, "kgslb_reconciler_kv_writes_total") == 0
    assert (
        await metric(
            services, standby, "kgslb_reconciler_leadership_changes_total", change="acquired"
        )
        == 1
    )

    # The new leader applies the next edit.
    await publish_policy(nats_client, GDP, split(6, 3, 1), generation=2)
    await eventually(lambda: answering(port, ratio(6, 3, 1)), timeout_seconds=10)


async def test_a_stopped_leader_hands_the_lease_over_at_once(
    nats_client: Client, services: Services
) -> None:
    await two_replicas_and_the_seed(nats_client, services)
    leader = await eventually(lambda: the_leader(services))
    standby = next(name for name in REPLICAS if name != leader)

    services.running[leader].stop()

    assert await lease_holder(nats_client) in ("", standby)
    await eventually(lambda: leading(services, standby), timeout_seconds=10)
