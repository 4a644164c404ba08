"""Health as the DNS answers it: the seed through real reconciler, health and dns processes,
with the seed's hello backends on their loopback VIPs and a quick monitor template."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
from nats.aio.client import Client

from kgslb.backends import HelloBackends, HelloSite
from kgslb.embedded import free_port
from kgslb.up import StackConfig, load_stack_config, seed_messages
from shared import subjects, wire
from shared.models import HealthHeartbeat, HealthState, MemberHealth
from tests.integration.conftest import Services, eventually
from tests.integration.test_health_service import health_records

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "kgslb.yaml"
HELLO = "hello.avi.iberia.local"
SEED_SHARES = {"127.10.25.46": 6, "127.10.26.40": 4, "127.10.23.40": 2}
INTERVAL_SECONDS = 0.3
FAILURES_TO_DOWN = 3
SUCCESSES_TO_UP = 2
S2 = "127.10.23.40"


def seed_with_monitor(template: dict[str, Any]) -> StackConfig:
    config = load_stack_config(SEED)
    config.global_deployment_policies[0].spec["healthMonitorTemplate"] = template
    return config


def quick_monitor(port: int) -> dict[str, Any]:
    return {
        "port": port,
        "intervalSeconds": INTERVAL_SECONDS,
        "timeoutSeconds": 0.25,
        "successesToUp": SUCCESSES_TO_UP,
        "failuresToDown": FAILURES_TO_DOWN,
    }


async def publish(nc: Client, config: StackConfig) -> None:
    js = nc.jetstream()
    for subject, message in seed_messages(config):
        await js.publish(subject, wire.encode(message))


@contextlib.asynccontextmanager
async def seed_backends(config: StackConfig, port: int) -> AsyncIterator[HelloBackends]:
    backends = HelloBackends(
        HelloSite(cluster, spec.vip_pool[0], port, spec.site, (HELLO,))
        for cluster, spec in config.clusters.items()
    )
    await backends.start()
    try:
        yield backends
    finally:
        await backends.stop()


def start_stack(services: Services) -> int:
    services.start("reconciler", "reconciler")
    services.start("health", "health")
    return services.start_dns()


async def answers(port: int, count: int) -> list[str]:
    out = []
    for _ in range(count):
        query = dns.message.make_query(HELLO, "A")
        reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=1)
        out.extend(rr.address for rrset in reply.answer for rr in rrset)
    return out


async def answered(port: int) -> set[str]:
    return set(await answers(port, 12))


async def test_stopped_backend_leaves_the_answers_and_returns_after_its_successes(
    nats_client: Client, services: Services
) -> None:
    backend_port = free_port()
    config = seed_with_monitor(quick_monitor(backend_port))
    s2_key = subjects.member_key(HELLO, S2)
    async with seed_backends(config, backend_port) as backends:
        dns_port = start_stack(services)
        await publish(nats_client, config)

        async def all_up() -> bool:
            records = await health_records(nats_client)
            return len(records) == 3 and all(r.state == HealthState.UP for r in records.values())

        await eventually(all_up, timeout_seconds=20)
        assert await answered(dns_port) == set(SEED_SHARES)

        await backends.stop_site("s2")
        await eventually(
            lambda: _not_answered(dns_port, S2),
            timeout_seconds=FAILURES_TO_DOWN * INTERVAL_SECONDS + 1,
            interval_seconds=0.05,
        )

        restarted_at = datetime.now(UTC)
        await backends.start_site("s2")
        right_after = await answered(dns_port)
        await eventually(lambda: _answered(dns_port, S2), timeout_seconds=10)

    assert S2 not in right_after, f"s2 needs {SUCCESSES_TO_UP} successes before it is answered"
    back_up = (await health_records(nats_client))[s2_key]
    assert back_up.state == HealthState.UP and back_up.since > restarted_at


async def _not_answered(dns_port: int, ip: str) -> bool:
    return ip not in await answered(dns_port)


async def _answered(dns_port: int, ip: str) -> bool:
    return ip in await answered(dns_port)


async def test_unknown_members_are_answered_like_healthy_ones(
    nats_client: Client, services: Services
) -> None:
    # No backends and a 60 s interval: every member stays unknown for the whole test.
    config = seed_with_monitor({"port": free_port(), "intervalSeconds": 60})
    dns_port = start_stack(services)
    await publish(nats_client, config)

    async def all_recorded_unknown() -> bool:
        records = await health_records(nats_client)
        return len(records) == 3 and all(r.state == HealthState.UNKNOWN for r in records.values())

    await eventually(all_recorded_unknown, timeout_seconds=20)
    await eventually(lambda: _answered(dns_port, S2), timeout_seconds=10)

    assert Counter(await answers(dns_port, 12)) == Counter(SEED_SHARES)


def verdict(state: HealthState, probed_at: datetime, replica: str = "health-a") -> bytes:
    return wire.encode(
        MemberHealth(
            fqdn=HELLO, ip=S2, cluster="s2", state=state, since=probed_at,
            last_probe_at=probed_at, replica=replica,
        )
    )  # fmt: skip


async def test_a_live_verdict_on_core_nats_is_answered_before_the_kv_holds_it_and_no_older_kv_value_undoes_it(
    nats_client: Client, services: Services
) -> None:
    """A site lost with the leader of the health bucket's stream holds KV writes for an
    election; the verdict published on core NATS (`kgslb.health.live.<member>`) gets
    through regardless, and the late KV copy of an older verdict does not take it back."""
    config = seed_with_monitor({"kind": "none"})
    services.start("reconciler", "reconciler")
    dns_port = services.start_dns()
    await publish(nats_client, config)
    await eventually(lambda: _answered(dns_port, S2), timeout_seconds=20)
    health_kv = await nats_client.jetstream().key_value(subjects.KV_HEALTH)
    key = subjects.member_key(HELLO, S2)
    now = datetime.now(UTC)
    # The verdicts count while their replica heartbeats (services/dns/quorum.py).
    leases = await nats_client.jetstream().key_value(subjects.KV_LEASES)
    beat = HealthHeartbeat(
        replica="health-a", heartbeat_at=now, expires_at=now + timedelta(seconds=60)
    )
    await leases.put(subjects.health_replica_key("health-a"), wire.encode(beat))

    await nats_client.publish(subjects.health_live_subject(key), verdict(HealthState.DOWN, now))
    await eventually(lambda: _not_answered(dns_port, S2), timeout_seconds=5)
    assert await health_records(nats_client) == {}, "withdrawn from the live verdict alone"

    await health_kv.put(key, verdict(HealthState.UP, now - timedelta(seconds=2)))
    await asyncio.sleep(0.5)
    still_withdrawn = await _not_answered(dns_port, S2)
    await health_kv.put(key, verdict(HealthState.UP, now + timedelta(seconds=1)))
    await eventually(lambda: _answered(dns_port, S2), timeout_seconds=5)

    assert still_withdrawn, "an older verdict of the same replica arriving late is ignored"
