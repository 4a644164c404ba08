"""Several possible home clusters (GSLBConfig homeClusters: s1az1, then s1az2), with real
processes: nats-server, the Kubernetes API simulator for s1az1, s1az2 and s2, a watcher per
cluster and the reconciler. The kgslb CRs of the active home are copied to the standby home,
marked; an edit to a copy is not applied; when the active home goes dark the standby takes
over, kubectl edits there take effect, and the old home comes back as a standby without
publishing what it held."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from nats.aio.client import Client
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError

from kgslb.embedded import NatsServer
from shared import subjects, wire
from shared.models import ActiveHome, GslbService, PolicyDeleted, PolicyObject
from shared.policies import API_GROUP, API_VERSION, COPY_OF_ANNOTATION
from tests.integration.conftest import Services, eventually
from tests.integration.test_watcher import (
    HOST,
    Kube,
    call,
    ingress,
    kube,
    metric,
    start_watcher,
)
from tests.integration.test_watcher_pipeline import kubectl, needs_kubectl

__all__ = ["kube"]  # the fixture, shared with test_watcher

NAMESPACE = "avi-system"
GDPS = "globaldeploymentpolicies"
FAILOVER_SECONDS = 3
FAST = {"KGSLB_LEASE_TTL_SECONDS": "1", "KGSLB_HOME_CHECK_SECONDS": "0.5"}


def gslb_config() -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "GSLBConfig",
        "metadata": {"name": "gc-1", "namespace": NAMESPACE},
        "spec": {
            "memberClusters": [{"clusterContext": c} for c in ("s1az1", "s1az2", "s2")],
            "homeClusters": ["s1az1", "s1az2"],
            "automaticHomeFailover": True,
            "homeFailoverSeconds": FAILOVER_SECONDS,
        },
    }


def split(s1az1: int, s1az2: int, s2: int) -> list[dict[str, Any]]:
    """With the defaults the CRD schema applies written out, so a CR holds it as sent."""
    weights = {"s1az1": s1az1, "s1az2": s1az2, "s2": s2}
    return [
        {"cluster": cluster, "weight": weight, "priority": 10, "disabled": False}
        for cluster, weight in weights.items()
    ]


def global_gdp() -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "GlobalDeploymentPolicy",
        "metadata": {"name": "global-gdp", "namespace": NAMESPACE},
        "spec": {
            "matchRules": {"appSelector": {"label": {"app": "gslb"}}},
            "trafficSplit": split(6, 4, 2),
        },
    }


async def get_gdp(kube: Kube, cluster: str) -> dict[str, Any]:
    obj = await call(
        kube.custom(cluster).get_namespaced_custom_object,
        API_GROUP, API_VERSION, NAMESPACE, GDPS, "global-gdp",
    )  # fmt: skip
    return cast(dict[str, Any], obj)


async def weights(nc: Client) -> dict[str, int]:
    """The traffic split of the GSLB service of HOST in KV kgslb_services."""
    kv = await nc.jetstream().key_value(subjects.KV_SERVICES)
    try:
        entry = await kv.get(subjects.fqdn_key(HOST))
    except KeyNotFoundError:
        return {}
    service = wire.decode(entry.value or b"", GslbService)
    return {member.cluster: member.weight for member in service.all_members()}


async def active_home(nc: Client) -> ActiveHome | None:
    kv = await nc.jetstream().key_value(subjects.KV_LEASES)
    try:
        entry = await kv.get(subjects.HOME_KEY)
    except KeyNotFoundError:
        return None
    return wire.decode(entry.value or b"", ActiveHome)


async def home_is(nc: Client, cluster: str) -> ActiveHome | None:
    home = await active_home(nc)
    return home if home is not None and home.active == cluster else None


@dataclass
class Federation:
    nc: Client
    services: Services
    kube: Kube

    def start_home_watcher(self, cluster: str) -> str:
        return start_watcher(self.services, self.kube, cluster, "--home", "true")

    async def copy_in(self, cluster: str, copied_from: str) -> dict[str, Any] | None:
        """The GDP in `cluster` once it is a copy from `copied_from` with its status."""
        obj = await get_gdp(self.kube, cluster)
        annotations = obj["metadata"].get("annotations") or {}
        status = obj.get("status") or {}
        copied = annotations.get(COPY_OF_ANNOTATION) == copied_from
        return obj if copied and status.get("state") == "Copy" else None


@pytest.fixture
async def federation(
    nats_client: Client, services: Services, kube: Kube
) -> AsyncIterator[Federation]:
    """s1az1 active, s1az2 standby, s2 a member; the seed's hello Ingress in each cluster and
    a GDP splitting 6:4:2 applied in s1az1, in force."""
    for cluster in ("s1az1", "s1az2"):
        await call(kube.core(cluster).create_namespace, {"metadata": {"name": NAMESPACE}})
    custom = kube.custom("s1az1")
    for body, plural in ((gslb_config(), "gslbconfigs"), (global_gdp(), GDPS)):
        await call(
            custom.create_namespaced_custom_object,
            API_GROUP, API_VERSION, NAMESPACE, plural, body,
        )  # fmt: skip
    for cluster in ("s1az1", "s1az2", "s2"):
        await call(kube.networking(cluster).create_namespaced_ingress, "default", ingress("hello"))
    services.start("reconciler", "reconciler", env=FAST)
    handle = Federation(nats_client, services, kube)
    handle.start_home_watcher("s1az1")
    handle.start_home_watcher("s1az2")
    start_watcher(services, kube, "s2")
    await eventually(lambda: home_is(nats_client, "s1az1"), timeout_seconds=30)
    await eventually(lambda: _equal(weights(nats_client), {"s1az1": 6, "s1az2": 4, "s2": 2}),
                     timeout_seconds=30)  # fmt: skip
    yield handle


async def _equal(value: Any, expected: Any) -> bool:
    return await value == expected


async def test_a_gdp_of_the_active_home_appears_as_a_marked_copy_in_the_standby_home(
    federation: Federation,
) -> None:
    copy = await eventually(lambda: federation.copy_in("s1az2", "s1az1"), timeout_seconds=20)

    assert copy["spec"] == (await get_gdp(federation.kube, "s1az1"))["spec"]
    assert copy["status"]["activeHome"] == "s1az1"
    assert "edit the policy there" in copy["status"]["message"]
    original = await get_gdp(federation.kube, "s1az1")
    assert COPY_OF_ANNOTATION not in (original["metadata"].get("annotations") or {})
    assert original["status"]["state"] == "Accepted"


async def test_an_edit_to_the_copy_in_the_standby_home_is_not_applied(
    federation: Federation,
) -> None:
    await eventually(lambda: federation.copy_in("s1az2", "s1az1"), timeout_seconds=20)
    patch = {"spec": {"trafficSplit": split(1, 20, 1)}}

    await call(
        federation.kube.custom("s1az2").patch_namespaced_custom_object,
        API_GROUP, API_VERSION, NAMESPACE, GDPS, "global-gdp", patch,
    )  # fmt: skip

    async def refused() -> dict[str, Any] | None:
        obj = await get_gdp(federation.kube, "s1az2")
        status = obj.get("status") or {}
        return obj if status.get("state") == "NotActive" else None

    obj = await eventually(refused, timeout_seconds=20)
    assert obj["status"]["message"].startswith(
        "not applied: the active home cluster is s1az1; edit the policy there"
    )
    reset = await eventually(lambda: _reset_to(federation, split(6, 4, 2)), timeout_seconds=20)
    assert reset["metadata"]["annotations"][COPY_OF_ANNOTATION] == "s1az1"
    assert await weights(federation.nc) == {"s1az1": 6, "s1az2": 4, "s2": 2}


async def _reset_to(federation: Federation, traffic_split: list[Any]) -> dict[str, Any] | None:
    obj = await get_gdp(federation.kube, "s1az2")
    return obj if obj["spec"]["trafficSplit"] == traffic_split else None


async def policy_messages(nc: Client) -> tuple[list[PolicyObject | PolicyDeleted], Any]:
    """Every policy message published from now on (the list fills as they arrive)."""
    seen: list[PolicyObject | PolicyDeleted] = []

    async def collect(msg: Any) -> None:
        message = wire.decode_any(msg.data, (PolicyObject, PolicyDeleted))
        seen.append(cast(PolicyObject | PolicyDeleted, message))

    subscription = await nc.jetstream().subscribe(
        f"{subjects.POLICY_PREFIX}.>",
        stream=subjects.STREAM_EVENTS,
        cb=collect,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.NEW,
    )
    return seen, subscription


@needs_kubectl
async def test_the_standby_home_takes_over_when_the_active_one_is_lost(
    federation: Federation, tmp_path: Path
) -> None:
    nc, kube, services = federation.nc, federation.kube, federation.services
    await eventually(lambda: federation.copy_in("s1az2", "s1az1"), timeout_seconds=20)
    await eventually(lambda: _heard_both(services), timeout_seconds=20)

    # The whole site s1az1 goes dark: its watcher and its API.
    lost_at = time.monotonic()
    services.running["watcher-s1az1"].kill9()
    kube.sim.faults["s1az1"].refuse = True

    home = await eventually(lambda: home_is(nc, "s1az2"), timeout_seconds=30)
    failover_seconds = time.monotonic() - lost_at
    assert home.term == 2 and "s1az1 unreachable" in home.reason

    patch = json.dumps({"spec": {"trafficSplit": split(6, 3, 1)}})
    await eventually(lambda: _active_copy_gone(kube), timeout_seconds=20)
    await kubectl(
        kube, tmp_path, "s1az2", "patch", "globaldeploymentpolicy", "global-gdp",
        "-n", NAMESPACE, "--type", "merge", "-p", patch,
    )  # fmt: skip
    await eventually(lambda: _equal(weights(nc), {"s1az1": 6, "s1az2": 3, "s2": 1}),
                     timeout_seconds=20)  # fmt: skip
    edit_seconds = time.monotonic() - lost_at
    print(
        f"\nhome failover: s1az1 lost -> s1az2 active in {failover_seconds:.1f} s; "
        f"first effective edit in s1az2 at {edit_seconds:.1f} s "
        f"(homeFailoverSeconds {FAILOVER_SECONDS})"
    )

    # s1az1 comes back: it learns it is a standby before it publishes anything.
    seen, subscription = await policy_messages(nc)
    kube.sim.faults["s1az1"].refuse = False
    federation.start_home_watcher("s1az1")

    copy = await eventually(lambda: federation.copy_in("s1az1", "s1az2"), timeout_seconds=30)
    assert copy["spec"]["trafficSplit"] == split(6, 3, 1)
    await asyncio.sleep(2)  # a stale publish would come right after the first list
    await subscription.unsubscribe()
    assert [m for m in seen if m.home_cluster == "s1az1"] == []
    assert await weights(nc) == {"s1az1": 6, "s1az2": 3, "s2": 1}
    assert (await active_home(nc)) == home


async def _heard_both(services: Services) -> bool:
    """The reconciler has heard both homes' heartbeats (a steady state to fail over from)."""
    family = "kgslb_reconciler_home_heartbeat_age_seconds"
    ages = [await metric(services, "reconciler", family, cluster=c) for c in ("s1az1", "s1az2")]
    return all(age < 2 for age in ages)


async def _active_copy_gone(kube: Kube) -> bool:
    """The new active home has made its copies originals (the mark is gone)."""
    obj = await get_gdp(kube, "s1az2")
    return COPY_OF_ANNOTATION not in (obj["metadata"].get("annotations") or {})


async def kgslb_home(nats: NatsServer, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kgslb", "home", "--nats-url", nats.url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, output.decode()


async def test_kgslb_home_activate_moves_the_policy_by_hand(
    federation: Federation, nats_server: NatsServer
) -> None:
    await eventually(lambda: federation.copy_in("s1az2", "s1az1"), timeout_seconds=20)

    code, output = await kgslb_home(nats_server, "--activate", "s1az2")

    assert (code, output.strip()) == (0, "active home cluster: s1az2 (term 2)")
    await eventually(lambda: federation.copy_in("s1az1", "s1az2"), timeout_seconds=20)
    await eventually(lambda: _active_copy_gone(federation.kube), timeout_seconds=20)

    async def roles_shown() -> str | None:
        # The old home says it keeps copies at its next heartbeat, not at once.
        code, output = await kgslb_home(nats_server)
        assert code == 0 and "active home cluster: s1az2 (term 2" in output
        return output if "publishes" in output and "keeps copies" in output else None

    await eventually(roles_shown, timeout_seconds=20, interval_seconds=0.5)
    code, output = await kgslb_home(nats_server, "--activate", "s2")
    assert code == 1 and "s2 is not one of homeClusters (s1az1, s1az2)" in output
