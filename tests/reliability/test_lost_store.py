"""JetStream loses its whole state under a running stack (a lost volume, a wiped cluster):
NATS is stopped, its store directory deleted, and NATS started again, empty, on the same
port, while the DNS answers a steady query load. With no manual step the services recreate
the streams and buckets, the reconciler writes its desired state again and asks the watchers
(`kgslb.resync`) to publish everything again, policies included; meanwhile the DNS answers
from memory, so no query is lost."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from kgslb.embedded import free_port
from shared import subjects
from shared.follow import BucketReadTimeout, read_values
from shared.policies import API_GROUP, API_VERSION
from tests.integration.conftest import Services, eventually
from tests.integration.test_names import seed_gslb_config
from tests.integration.test_watcher import (
    GDPS,
    HOST,
    VIPS,
    Kube,
    call,
    ingress,
    metric,
    start_watcher,
)
from tests.reliability.load import UdpLoad
from tests.reliability.stack import (
    ZONE,
    addresses,
    answering,
    hello_backends,
    quick_monitor,
    ready,
    seed_gdp,
    soa_serial,
    wait_all_ready,
)

QPS = 500
HEAL_BOUND_SECONDS = 30.0
"""The documented bound (docs/reliability.md, "Lost JetStream state"); typically far less."""
RATIO_QUERIES = 600
RATIO_TOLERANCE = 0.05
WEIGHTS = {"s1az1": 6, "s1az2": 4, "s2": 2}


def gdp_body(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "GlobalDeploymentPolicy",
        "metadata": {"name": "global-gdp", "namespace": "default"},
        "spec": spec,
    }


def without_s2(spec: dict[str, Any]) -> dict[str, Any]:
    edited = dict(spec)
    edited["matchClusters"] = [c for c in spec["matchClusters"] if c["cluster"] != "s2"]
    edited["trafficSplit"] = [c for c in spec["trafficSplit"] if c["cluster"] != "s2"]
    return edited


async def shares(port: int, queries: int = RATIO_QUERIES) -> dict[str, float]:
    """Which cluster's VIP each of `queries` answers gave first, as fractions."""
    by_vip = {vip: cluster for cluster, vip in VIPS.items()}
    counts: Counter[str] = Counter()
    for _ in range(queries):
        reply = await dns.asyncquery.udp(
            dns.message.make_query(HOST, "A"), "127.0.0.1", port=port, timeout=1
        )
        first = [rr.address for rrset in reply.answer for rr in rrset][:1]
        counts.update(by_vip[address] for address in first)
    total = sum(counts.values())
    return {cluster: counts[cluster] / total for cluster in counts} if total else {}


async def answers_ratio(port: int, weights: dict[str, int]) -> bool:
    """Every member of the policy answered, each in its weight's share of the answers."""
    got = await shares(port)
    total = sum(weights.values())
    want = {cluster: weight / total for cluster, weight in weights.items()}
    return set(got) == set(want) and all(
        abs(got[cluster] - want[cluster]) <= RATIO_TOLERANCE for cluster in want
    )


async def bucket_keys(nc: Client, bucket: str) -> list[str]:
    try:
        async with asyncio.timeout(1):  # the test's own client may still be reconnecting
            # Not nats-py's `keys()`: it can end before keys it has received (busy machine).
            return list(await read_values(nc.jetstream(), bucket))
    except (NotFoundError, TimeoutError, BucketReadTimeout):
        return []


async def rebuilt(nc: Client) -> bool:
    """The buckets hold the desired state and the health of every member again."""
    return (
        await bucket_keys(nc, subjects.KV_SERVICES) == [subjects.fqdn_key(HOST)]
        and await bucket_keys(nc, subjects.KV_ZONES) == [subjects.fqdn_key(ZONE)]
        and len(await bucket_keys(nc, subjects.KV_HEALTH)) == len(VIPS)
    )


async def answers_whole_zone(port: int, expected: set[str]) -> bool:
    """SOA, NS and the GSLB name: a DNS that holds the zone, not one that REFUSES it."""
    try:
        ns = await dns.asyncquery.udp(
            dns.message.make_query(ZONE, "NS"), "127.0.0.1", port=port, timeout=1
        )
        return (
            ns.rcode() == dns.rcode.NOERROR
            and bool(ns.answer)
            and await soa_serial(port) > 0
            and await addresses(port) == expected
        )
    except (TimeoutError, IndexError, dns.exception.DNSException):
        return False


class ReadinessSampler:
    """Every service's /readyz every 50 ms: who was not ready at least once."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.not_ready: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        names = list(self.services.running)
        while True:
            for name in names:
                if not await ready(self.services, name):
                    self.not_ready.add(name)
            await asyncio.sleep(0.05)

    async def stop(self) -> set[str]:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.not_ready


async def test_a_deleted_jetstream_store_heals_under_load_with_no_query_lost(
    nats_client: Client, services: Services, kube: Kube, tmp_path: Path
) -> None:
    backend_port = free_port()
    spec = seed_gdp(quick_monitor(backend_port))
    custom = kube.custom("s1az1")
    async with hello_backends(backend_port):
        await call(
            custom.create_namespaced_custom_object,
            API_GROUP, API_VERSION, "default", "gslbconfigs", seed_gslb_config(),
        )  # fmt: skip
        await call(
            custom.create_namespaced_custom_object,
            API_GROUP, API_VERSION, "default", GDPS, gdp_body(spec),
        )  # fmt: skip
        for cluster in VIPS:
            await call(
                kube.networking(cluster).create_namespaced_ingress, "default", ingress("hello")
            )
        start_watcher(services, kube, "s1az1", "--home", "true")
        for cluster in ("s1az2", "s2"):
            start_watcher(services, kube, cluster)
        services.start("reconciler", "reconciler")
        services.start("health", "health")
        port = services.start_dns()
        await eventually(lambda: answers_ratio(port, WEIGHTS), timeout_seconds=40)
        await wait_all_ready(services)
        serial_before = await soa_serial(port)

        load = UdpLoad(port, HOST, qps=QPS)
        load.start()
        services.nats.stop()
        store = tmp_path / "jetstream"
        shutil.rmtree(store)
        assert not store.exists()
        services.nats.start()
        restarted = time.monotonic()
        readiness = ReadinessSampler(services)
        readiness.start()

        await eventually(lambda: rebuilt(nats_client), timeout_seconds=HEAL_BOUND_SECONDS)
        rebuilt_after = time.monotonic() - restarted
        await wait_all_ready(services, timeout_seconds=HEAL_BOUND_SECONDS)
        not_ready = await readiness.stop()
        fresh_port = free_port()
        services.start("dns-fresh", "dns", "--dns-port", str(fresh_port), "--log-per-second", "0")
        every_vip = set(VIPS.values())
        await eventually(lambda: answers_whole_zone(fresh_port, every_vip), timeout_seconds=20)
        fresh_after = time.monotonic() - restarted
        await eventually(lambda: answers_ratio(fresh_port, WEIGHTS), timeout_seconds=10)
        serial_after = await soa_serial(port)

        edited = time.monotonic()
        await call(
            custom.patch_namespaced_custom_object,
            API_GROUP, API_VERSION, "default", GDPS, "global-gdp", {"spec": without_s2(spec)},
        )  # fmt: skip
        two = {"s1az1": WEIGHTS["s1az1"], "s1az2": WEIGHTS["s1az2"]}
        # The replica under load shares its rotation with the load: its members are checked,
        # the ratio on the fresh replica, which holds the same table and answers only us.
        await eventually(lambda: answering(port, {VIPS[c] for c in two}), timeout_seconds=20)
        edit_after = time.monotonic() - edited
        await eventually(lambda: answers_ratio(fresh_port, two), timeout_seconds=10)
        await wait_all_ready(services, timeout_seconds=20)
        lost = load.stop()
        resyncs = {
            name: await metric(services, name, "kgslb_watcher_resyncs_total")
            for name in services.running
            if name.startswith("watcher-")
        }

    print(
        f"\nlost JetStream store: buckets rebuilt {rebuilt_after:.1f} s after NATS returned "
        f"empty, a fresh DNS answered the zone at {fresh_after:.1f} s; a GDP edit reached DNS "
        f"in {edit_after:.1f} s; {load.sent} queries, {lost} lost; serial {serial_before} -> "
        f"{serial_after}; not ready for a while meanwhile: {', '.join(sorted(not_ready))}"
    )
    assert load.sent >= QPS * 2, "the load ran through the loss"
    assert lost == 0, "the DNS answered from memory meanwhile"
    assert rebuilt_after <= HEAL_BOUND_SECONDS
    assert serial_after >= serial_before, "the SOA serial never goes back"
    assert len(resyncs) == 3 and all(count >= 1 for count in resyncs.values()), resyncs
    reconciler_log = services.running["reconciler"].log_path.read_text()
    assert "rebuilt the desired state after lost JetStream state" in reconciler_log
    home_log = services.running["watcher-s1az1"].log_path.read_text()
    assert "publishing everything again" in home_log or "resync" in home_log
