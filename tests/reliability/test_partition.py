"""A member cluster whose API is unreachable keeps its members with their data-plane health,
as AMKO does: the control plane going dark says nothing about the VIPs, which health keeps
probing. See docs/reliability.md for why kgslb keeps rather than withdraws."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from kgslb.embedded import free_port
from tests.integration.conftest import Services, eventually
from tests.integration.test_watcher import VIPS, Kube, call, ingress, metric
from tests.reliability.stack import answering, hello_backends, start_pipeline

PARTITION_SECONDS = 8.0
CLUSTERS = ("s1az1", "s2")
BOTH = {VIPS["s1az1"], VIPS["s2"]}


async def test_an_unreachable_cluster_keeps_its_members_and_health_still_decides(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    backend_port = free_port()
    async with hello_backends(backend_port) as backends:
        for cluster in CLUSTERS:
            await call(
                kube.networking(cluster).create_namespaced_ingress, "default", ingress("hello")
            )
        port = await start_pipeline(nats_client, services, kube, backend_port, CLUSTERS)
        await eventually(lambda: answering(port, BOTH), timeout_seconds=30)

        kube.sim.faults["s2"].refuse = True
        kube.sim.faults["s2"].drop_watches(abrupt=True)
        kept = []
        for _ in range(int(PARTITION_SECONDS)):
            await asyncio.sleep(1.0)
            kept.append(await answering(port, BOTH))
        errors = await metric(services, "watcher-s2", "kgslb_watcher_api_errors_total")
        await backends.stop_site("s2")
        await eventually(lambda: answering(port, {VIPS["s1az1"]}), timeout_seconds=10)
        await backends.start_site("s2")
        await eventually(lambda: answering(port, BOTH), timeout_seconds=10)
        kube.sim.faults["s2"].refuse = False

    assert errors > 0, "the watcher must have found its cluster unreachable"
    assert all(kept), "a partitioned cluster's healthy members stay in the answers"
