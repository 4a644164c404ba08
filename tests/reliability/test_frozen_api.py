"""A frozen Kubernetes API (a SIGSTOPped kube-apiserver: connections are accepted, nothing is
answered, watches send nothing, not even bookmarks) is not invisible: the watcher abandons
the silent watches, the GSLBConfig shows the cluster Unreachable, the DNS keeps answering its
members (health decides, not the watcher), and the watcher relists when the API returns."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from nats.aio.client import Client

from kgslb.embedded import free_port
from kgslb.up import load_stack_config
from kubesim.resources import INGRESSES
from shared.policies import API_GROUP, API_VERSION
from tests.integration.conftest import Services, eventually
from tests.integration.test_watcher import (
    GDPS,
    HOST,
    VIPS,
    Kube,
    call,
    get_cr,
    ingress,
    metric,
    start_watcher,
)
from tests.reliability.stack import SEED, addresses, answering, hello_backends, quick_monitor
from tests.reliability.stack import seed_gdp as seed_gdp_spec

DEAD_WATCH_SECONDS = 1.0
GRACE_SECONDS = 1.0
KEPT_FROZEN_SECONDS = 3.0
"""How long the API stays frozen after the GSLBConfig shows it Unreachable."""
CLUSTERS = ("s1az1", "s2")
BOTH = {VIPS["s1az1"], VIPS["s2"]}
LATE_HOST = "late.avi.iberia.local"


async def create_cr(kube: Kube, plural: str, kind: str, name: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": kind,
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }
    await call(
        kube.custom("s1az1").create_namespaced_custom_object,
        API_GROUP, API_VERSION, "default", plural, body,
    )  # fmt: skip


async def shown_state(kube: Kube, cluster: str) -> str:
    """The state the home cluster's GSLBConfig shows for `cluster`, read with the client."""
    obj = await get_cr(kube, "gslbconfigs", "gc-1")
    for entry in (obj.get("status") or {}).get("clusters") or []:
        if entry["cluster"] == cluster:
            return str(entry["state"])
    return ""


async def shown(kube: Kube, cluster: str, state: str) -> bool:
    return await shown_state(kube, cluster) == state


async def test_a_frozen_api_shows_unreachable_while_dns_keeps_answering_its_members(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    backend_port = free_port()
    config = load_stack_config(SEED)
    assert config.gslb_config is not None
    await create_cr(kube, "gslbconfigs", "GSLBConfig", "gc-1", dict(config.gslb_config.spec))
    gdp = seed_gdp_spec(quick_monitor(backend_port))
    await create_cr(kube, GDPS, "GlobalDeploymentPolicy", "global-gdp", gdp)
    for cluster in CLUSTERS:
        await call(kube.networking(cluster).create_namespaced_ingress, "default", ingress("hello"))
    liveness = (
        "--dead-watch-seconds", str(DEAD_WATCH_SECONDS),
        "--unreachable-grace-seconds", str(GRACE_SECONDS),
    )  # fmt: skip
    start_watcher(services, kube, "s1az1", "--home", "true", *liveness)
    start_watcher(services, kube, "s2", *liveness)
    services.start("reconciler", "reconciler")
    services.start("health", "health")
    port = services.start_dns()

    async with hello_backends(backend_port, (HOST, LATE_HOST)):
        await eventually(lambda: answering(port, BOTH), timeout_seconds=30)
        await eventually(lambda: shown(kube, "s2", "Connected"), timeout_seconds=20)

        samples: list[set[str]] = []

        async def sample_answers() -> None:
            while True:
                samples.append(await addresses(port))
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample_answers())
        kube.sim.faults["s2"].frozen = True
        frozen_at = time.monotonic()
        try:
            kube.sim.store("s2").create(INGRESSES, "default", ingress("late", host=LATE_HOST))
            await eventually(lambda: shown(kube, "s2", "Unreachable"), timeout_seconds=20)
            reported_after = time.monotonic() - frozen_at
            await asyncio.sleep(KEPT_FROZEN_SECONDS)
            home_state = await shown_state(kube, "s1az1")
        finally:
            kube.sim.faults["s2"].frozen = False
            frozen_for = time.monotonic() - frozen_at
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

        await eventually(lambda: shown(kube, "s2", "Connected"), timeout_seconds=20)
        await eventually(lambda: answering(port, {VIPS["s2"]}, LATE_HOST), timeout_seconds=20)

    dead = await metric(services, "watcher-s2", "kgslb_watcher_dead_watches_total", cluster="s2")
    relists = await metric(services, "watcher-s2", "kgslb_watcher_relists_total", reason="dead")
    print(
        f"\nAPI of s2 frozen {frozen_for:.1f} s: Unreachable in the GSLBConfig after "
        f"{reported_after:.1f} s; {dead:.0f} dead watch(es); {len(samples)} DNS samples"
    )
    assert frozen_for > DEAD_WATCH_SECONDS
    assert home_state == "Connected", "the other clusters' watchers are not affected"
    assert samples and all(answer == BOTH for answer in samples), (
        "the frozen cluster's members stay answered: health decides, not the watcher"
    )
    assert dead >= 1 and relists >= 1, "the silent watches were abandoned and relisted"
