"""Watchers in the whole pipeline: Kubernetes API simulator -> watcher processes -> NATS ->
reconciler -> DNS answers. Changes are made with the official client and with kubectl itself."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import pytest
from nats.aio.client import Client

from kgslb.up import load_stack_config, seed_messages
from shared import wire
from shared.models import PolicyKind, PolicyObject
from tests.integration.conftest import Services, eventually
from tests.integration.test_watcher import (
    HOST,
    VIPS,
    Kube,
    call,
    ingress,
    kube,
    readyz,
    start_watcher,
)

__all__ = ["kube"]  # the fixture, shared with test_watcher

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed"
KUBECTL = Path(sys.executable).parent / "kubectl"
needs_kubectl = pytest.mark.skipif(
    not KUBECTL.exists(), reason=f"kubectl not found at {KUBECTL} (the dev extras install it)"
)


async def answers(port: int, count: int, name: str = HOST) -> list[str]:
    out: list[str] = []
    for _ in range(count):
        query = dns.message.make_query(name, "A")
        reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=1)
        out.extend(rr.address for rrset in reply.answer for rr in rrset)
    return out


async def answering(port: int, expected: set[str], count: int = 12) -> bool:
    return set(await answers(port, count)) == expected


async def publish_seed_policies(nc: Client, gdp_spec: dict[str, Any] | None = None) -> None:
    """The seed's GSLBConfig and GDP (or a GDP with `gdp_spec`) straight onto NATS, as
    `kgslb up` does: these tests are about the watchers of the member clusters."""
    config = load_stack_config(SEED / "kgslb.yaml").model_copy(update={"observed": []})
    js = nc.jetstream()
    for subject, message in seed_messages(config):
        is_gdp = (
            isinstance(message, PolicyObject)
            and message.ref.kind == PolicyKind.GLOBAL_DEPLOYMENT_POLICY
        )
        if gdp_spec is not None and is_gdp:
            message = message.model_copy(update={"spec": gdp_spec})
        await js.publish(subject, wire.encode(message))


def start_pipeline(services: Services) -> int:
    services.start("reconciler", "reconciler")
    return services.start_dns()


async def test_an_ingress_deleted_while_its_watcher_was_stopped_leaves_dns_after_restart(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    port = start_pipeline(services)
    await publish_seed_policies(nats_client)
    for cluster in ("s1az1", "s2"):
        await call(kube.networking(cluster).create_namespaced_ingress, "default", ingress("hello"))
        start_watcher(services, kube, cluster)
    both = {VIPS["s1az1"], VIPS["s2"]}
    await eventually(lambda: answering(port, both), timeout_seconds=20)

    services.running["watcher-s2"].stop()
    await call(kube.networking("s2").delete_namespaced_ingress, "hello", "default")
    assert set(await answers(port, 12)) == both, "nobody watches s2: DNS cannot know yet"
    start_watcher(services, kube, "s2")

    await eventually(lambda: answering(port, {VIPS["s1az1"]}), timeout_seconds=20)


async def test_a_namespace_label_change_flips_selection(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    port = start_pipeline(services)
    selector = {"label": {"gslb": "on"}}
    await publish_seed_policies(
        nats_client,
        {
            "matchRules": {
                "appSelector": {"label": {"app": "gslb"}},
                "namespaceSelector": selector,
            },
            "matchClusters": [{"cluster": "s1az1"}],
        },
    )
    core = kube.core("s1az1")
    await call(core.create_namespace, {"metadata": {"name": "shop"}})
    await call(kube.networking("s1az1").create_namespaced_ingress, "shop", ingress("hello"))
    start_watcher(services, kube, "s1az1")
    soa = dns.message.make_query("avi.iberia.local", "SOA")
    await eventually(lambda: dns.asyncquery.udp(soa, "127.0.0.1", port=port, timeout=1))
    await eventually(lambda: _ready(services, "watcher-s1az1"))
    assert await answers(port, 3) == []

    await call(core.patch_namespace, "shop", {"metadata": {"labels": {"gslb": "on"}}})
    await eventually(lambda: answering(port, {VIPS["s1az1"]}, 3))

    await call(core.patch_namespace, "shop", {"metadata": {"labels": {"gslb": None}}})
    await eventually(lambda: _no_answer(port))


async def _no_answer(port: int) -> bool:
    return await answers(port, 3) == []


async def _ready(services: Services, name: str) -> bool:
    return await readyz(services, name) == 200


# kubectl ------------------------------------------------------------------------------------


async def kubectl(kube: Kube, tmp_path: Path, context: str, *args: str) -> str:
    """Run kubectl without blocking the loop that serves the simulator."""
    process = await asyncio.create_subprocess_exec(
        str(KUBECTL),
        "--kubeconfig",
        kube.kubeconfig,
        "--context",
        context,
        "--cache-dir",
        str(tmp_path / "kube-cache"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, f"kubectl {' '.join(args)}: {stderr.decode()}"
    return stdout.decode()


@needs_kubectl
async def test_kubectl_adds_a_member_and_changes_the_traffic_split(
    nats_client: Client, services: Services, kube: Kube, tmp_path: Path
) -> None:
    port = start_pipeline(services)
    for manifest in ("gslbconfig.yaml", "global-gdp.yaml", "hello-s1az1.yaml"):
        await kubectl(kube, tmp_path, "s1az1", "apply", "-f", str(SEED / manifest))
    await kubectl(kube, tmp_path, "s1az2", "apply", "-f", str(SEED / "hello-s1az2.yaml"))
    start_watcher(services, kube, "s1az1", "--home", "true")
    for cluster in ("s1az2", "s2"):
        start_watcher(services, kube, cluster)
    await eventually(lambda: answering(port, {VIPS["s1az1"], VIPS["s1az2"]}), timeout_seconds=20)

    applied = await kubectl(kube, tmp_path, "s2", "apply", "-f", str(SEED / "hello-s2.yaml"))
    assert "ingress.networking.k8s.io/hello created" in applied
    await eventually(lambda: answering(port, set(VIPS.values())), timeout_seconds=20)
    seed_split = Counter(await answers(port, 12))

    split = [{"cluster": c, "weight": w} for c, w in (("s1az1", 6), ("s1az2", 3), ("s2", 1))]
    patch = json.dumps({"spec": {"trafficSplit": split}})
    await kubectl(
        kube, tmp_path, "s1az1", "patch", "globaldeploymentpolicy", "global-gdp",
        "-n", "avi-system", "--type", "merge", "-p", patch,
    )  # fmt: skip

    expected = Counter({VIPS["s1az1"]: 6, VIPS["s1az2"]: 3, VIPS["s2"]: 1})

    async def new_split() -> bool:
        return Counter(await answers(port, 10)) == expected

    await eventually(new_split, timeout_seconds=20)
    assert seed_split == Counter({VIPS["s1az1"]: 6, VIPS["s1az2"]: 4, VIPS["s2"]: 2})

    async def status() -> bool:
        shown = await kubectl(
            kube, tmp_path, "s1az1", "get", "gdp", "global-gdp", "-n", "avi-system",
            "-o", "jsonpath={.status.state} {.status.observedGeneration}",
        )  # fmt: skip
        return shown == "Accepted 2"

    await eventually(status)
