"""NATS stopped for 10 s under a steady query load: the DNS keeps answering from its last
state, and once NATS is back every service carries on without a restart."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client

from kgslb.embedded import free_port
from shared.policies import API_GROUP, API_VERSION
from tests.integration.conftest import Services, eventually
from tests.integration.test_watcher import (
    GDPS,
    VIPS,
    Kube,
    _status,
    call,
    gdp,
    ingress,
    start_watcher,
)
from tests.reliability.load import UdpLoad
from tests.reliability.stack import (
    answering,
    hello_backends,
    start_pipeline,
    wait_all_ready,
)

OUTAGE_SECONDS = 10.0
QPS = 1000


def pids(services: Services) -> dict[str, int | None]:
    return {
        name: process.process.pid if process.process else None
        for name, process in services.running.items()
    }


async def test_nats_down_10_s_under_load_loses_no_query_and_everything_resumes(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    backend_port = free_port()
    async with hello_backends(backend_port) as backends:
        for cluster in ("s1az1", "s2"):
            await call(
                kube.networking(cluster).create_namespaced_ingress, "default", ingress("hello")
            )
        port = await start_pipeline(nats_client, services, kube, backend_port, VIPS)
        await eventually(lambda: answering(port, {VIPS["s1az1"], VIPS["s2"]}), timeout_seconds=30)
        await wait_all_ready(services)
        before = pids(services)
        load = UdpLoad(port, "hello.avi.iberia.local", qps=QPS)
        load.start()

        services.nats.stop()
        await call(kube.networking("s1az2").create_namespaced_ingress, "default", ingress("hello"))
        await asyncio.sleep(OUTAGE_SECONDS)
        sent_during_outage = load.sent
        services.nats.start()
        returned = time.monotonic()

        await eventually(lambda: answering(port, set(VIPS.values())), timeout_seconds=30)
        caught_up = time.monotonic() - returned
        lost = load.stop()
        await backends.stop_site("s2")
        await eventually(
            lambda: answering(port, {VIPS["s1az1"], VIPS["s1az2"]}), timeout_seconds=10
        )

    print(
        f"\nNATS outage {OUTAGE_SECONDS:.0f} s: {load.sent} queries sent, {lost} lost; the "
        f"Ingress created meanwhile was answered {caught_up:.1f} s after NATS returned"
    )
    assert sent_during_outage >= OUTAGE_SECONDS * QPS * 0.5, "the load must have run"
    assert lost == 0
    assert pids(services) == before, "no service was restarted"
    assert all(process.running for process in services.running.values())


async def test_the_home_watcher_writes_statuses_again_soon_after_nats_returns(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    start_watcher(services, kube, "s1az1", "--home", "true")
    services.start("reconciler", "reconciler")

    async def state(name: str) -> str | None:
        return (await _status(kube, name)).get("state")

    async def create(name: str) -> None:
        await call(
            kube.custom("s1az1").create_namespaced_custom_object,
            API_GROUP, API_VERSION, "default", GDPS, gdp(name, {"s1az1": 6, "s2": 2}),
        )  # fmt: skip

    await create("before")
    await eventually(lambda: state("before"), timeout_seconds=20)

    services.nats.stop()
    await asyncio.sleep(2)
    services.nats.start()
    returned = time.monotonic()
    await create("after")
    # nats-py's default heartbeat (5 s, two missed) kept the write-back deaf for ~10 s.
    await eventually(lambda: state("after"), timeout_seconds=7)

    print(f"\nstatus written {time.monotonic() - returned:.1f} s after NATS returned")
    assert await state("after") == "Accepted"
