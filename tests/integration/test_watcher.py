"""The watcher as a real process between the Kubernetes API simulator (driven with the official
`kubernetes` client) and a real nats-server: what reaches the events stream, through faults,
and the CR status the home watcher writes back.

The simulator runs on the test's event loop, so the synchronous client is called through
`asyncio.to_thread`, and a fault plus the changes made "during" it can happen in one step of
that loop, before the watcher can see any of it live.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import pytest
from kubernetes import client, config
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from kubesim import KubeSim
from kubesim.resources import INGRESSES
from kubesim.store import MERGE_PATCH
from shared import subjects, wire
from shared.models import (
    ObjectKind,
    ObjectRef,
    ObservedObject,
    PolicyDeleted,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    SyncMarker,
    Tombstone,
)
from shared.policies import API_GROUP, API_VERSION
from tests.integration.conftest import Services, eventually

CLUSTERS = ["s1az1", "s1az2", "s2"]
VIPS = {"s1az1": "127.10.25.46", "s1az2": "127.10.26.40", "s2": "127.10.23.40"}
"""The Ingress VIP of each cluster (AKO's shared virtual service, as in the seed)."""
SERVICE_VIPS = {"s1az1": "127.10.25.60", "s1az2": "127.10.26.60", "s2": "127.10.23.60"}
"""The address the first LoadBalancer Service of each cluster gets."""
HOST = "hello.avi.iberia.local"
GDPS = "globaldeploymentpolicies"
EVENT_KINDS: tuple[type[wire.WireModel], ...] = (
    ObservedObject,
    Tombstone,
    SyncMarker,
    PolicyObject,
    PolicyDeleted,
)
T = TypeVar("T")


class Kube:
    """A running simulator of the seed's three clusters, its kubeconfig and API clients."""

    def __init__(self, sim: KubeSim, kubeconfig: str) -> None:
        self.sim = sim
        self.kubeconfig = kubeconfig
        self._clients: list[client.ApiClient] = []

    def api(self, context: str) -> client.ApiClient:
        api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=self.kubeconfig, context=context, persist_config=False
        )
        self._clients.append(api)
        return api

    def networking(self, context: str) -> client.NetworkingV1Api:
        return client.NetworkingV1Api(self.api(context))

    def core(self, context: str) -> client.CoreV1Api:
        return client.CoreV1Api(self.api(context))

    def custom(self, context: str) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api(context))

    def close(self) -> None:
        for api in self._clients:
            api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[Kube]:
    pools = {cluster: [vip, SERVICE_VIPS[cluster]] for cluster, vip in VIPS.items()}
    sim = KubeSim(CLUSTERS, vip_pools=pools, bookmark_interval=0.5)
    await sim.start()
    handle = Kube(sim, sim.write_kubeconfig(str(tmp_path / "gslb-members")))
    try:
        yield handle
    finally:
        handle.close()
        await sim.stop()


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking client call, off the loop that serves the simulator."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def start_watcher(services: Services, kube: Kube, context: str, *extra: str, name: str = "") -> str:
    name = name or f"watcher-{context}"
    services.start(
        name,
        "watcher",
        "--kubeconfig",
        kube.kubeconfig,
        "--context",
        context,
        "--backoff-initial-seconds",
        "0.1",
        "--backoff-max-seconds",
        "1",
        *extra,
    )
    return name


async def readyz(services: Services, name: str) -> int:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{services.ops_ports[name]}/readyz")
        return response.status_code


async def wait_ready(services: Services, name: str) -> None:
    async def ready() -> bool:
        return await readyz(services, name) == 200

    await eventually(ready, timeout_seconds=20)


async def metric(services: Services, name: str, family: str, **labels: str) -> float:
    """Sum of the samples of `family` whose labels include `labels`."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{services.ops_ports[name]}/metrics")).text
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(family + "{") and all(w in line for w in wanted)
    )


async def last(nc: Client, subject: str) -> wire.WireModel | None:
    """The message the events stream holds for `subject` (it keeps one per subject)."""
    try:
        raw = await nc.jetstream().get_last_msg(subjects.STREAM_EVENTS, subject)
    except NotFoundError:
        return None
    return wire.decode_any(raw.data or b"", EVENT_KINDS)


def ingress_ref(name: str, cluster: str = "s1az1", namespace: str = "default") -> ObjectRef:
    return ObjectRef(cluster=cluster, kind=ObjectKind.INGRESS, namespace=namespace, name=name)


async def observed(nc: Client, ref: ObjectRef) -> ObservedObject | None:
    message = await last(nc, ref.subject)
    return message if isinstance(message, ObservedObject) else None


async def tombstoned(nc: Client, ref: ObjectRef) -> bool:
    return isinstance(await last(nc, ref.subject), Tombstone)


def ingress(name: str, labels: dict[str, str] | None = None, host: str = HOST) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "labels": labels or {"app": "gslb"}},
        "spec": {
            "rules": [
                {
                    "host": host,
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": name, "port": {"number": 80}}},
                            }
                        ]
                    },
                }
            ]
        },
    }


def gdp(name: str, split: dict[str, int], namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "GlobalDeploymentPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "matchRules": {"appSelector": {"label": {"app": "gslb"}}},
            "matchClusters": [{"cluster": c} for c in split],
            "trafficSplit": [{"cluster": c, "weight": w} for c, w in split.items()],
        },
    }


# Ingress changes reach the stream -----------------------------------------------------------


async def test_ingress_create_update_and_delete_reach_the_events_stream(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    start_watcher(services, kube, "s1az1")
    await wait_ready(services, "watcher-s1az1")
    api = kube.networking("s1az1")
    ref = ingress_ref("hello")

    await call(api.create_namespaced_ingress, "default", ingress("hello"))
    created = await eventually(lambda: observed(nats_client, ref))
    assert (created.hosts, created.vips, created.labels) == (
        [HOST],
        [VIPS["s1az1"]],
        {"app": "gslb"},
    )

    labels = {"app": "gslb", "tier": "web"}
    await call(api.patch_namespaced_ingress, "hello", "default", {"metadata": {"labels": labels}})

    async def relabelled() -> bool:
        message = await observed(nats_client, ref)
        return message is not None and message.labels == labels

    await eventually(relabelled)

    await call(api.delete_namespaced_ingress, "hello", "default")
    await eventually(lambda: tombstoned(nats_client, ref))


async def test_the_first_lists_end_with_a_sync_marker_naming_what_exists(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    await call(kube.networking("s2").create_namespaced_ingress, "default", ingress("hello"))
    await wait_ready(services, start_watcher(services, kube, "s2"))
    js = nats_client.jetstream()

    raw_marker = await js.get_last_msg(subjects.STREAM_EVENTS, subjects.sync_subject("s2"))
    raw_hello = await js.get_last_msg(subjects.STREAM_EVENTS, ingress_ref("hello", "s2").subject)

    marker = wire.decode(raw_marker.data or b"", SyncMarker)
    assert set(marker.kinds) == set(ObjectKind)
    assert "Ingress/default/hello" in marker.present
    assert "Namespace//default" in marker.present
    assert (raw_marker.seq or 0) > (raw_hello.seq or 0), "the marker follows what it names"
    hello = wire.decode(raw_hello.data or b"", ObservedObject)
    assert hello.vips == [VIPS["s2"]]


async def test_a_load_balancer_service_is_published_and_a_cluster_ip_one_is_not(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    start_watcher(services, kube, "s1az2")
    await wait_ready(services, "watcher-s1az2")
    core = kube.core("s1az2")
    for name, kind in (("plain", "ClusterIP"), ("lb", "LoadBalancer")):
        body = {
            "metadata": {
                "name": name,
                "annotations": {"external-dns.alpha.kubernetes.io/hostname": "lb.example.com"},
            },
            "spec": {"type": kind, "ports": [{"port": 8443}]},
        }
        await call(core.create_namespaced_service, "default", body)

    def ref(name: str) -> ObjectRef:
        return ObjectRef(cluster="s1az2", kind=ObjectKind.SERVICE, namespace="default", name=name)

    lb = await eventually(lambda: observed(nats_client, ref("lb")))
    assert (lb.hosts, lb.ports, lb.vips) == (["lb.example.com"], [8443], [SERVICE_VIPS["s1az2"]])
    assert await last(nats_client, ref("plain").subject) is None


# Faults: nothing is lost --------------------------------------------------------------------


async def _two_observed_ingresses(nats_client: Client, services: Services, kube: Kube) -> None:
    api = kube.networking("s1az1")
    for name in ("keep", "gone"):
        await call(api.create_namespaced_ingress, "default", ingress(name))
    start_watcher(services, kube, "s1az1")
    for name in ("keep", "gone"):
        await eventually(lambda name=name: observed(nats_client, ingress_ref(name)))
    await wait_ready(services, "watcher-s1az1")


def _change_while_not_watching(kube: Kube) -> None:
    """Create one Ingress, relabel one and delete one, straight in the simulator's store: the
    caller runs this in the same loop step as the fault, so no watch sees it happen."""
    store = kube.sim.store("s1az1")
    store.create(INGRESSES, "default", ingress("new"))
    relabel = {"metadata": {"labels": {"app": "gslb", "v": "2"}}}
    store.patch(INGRESSES, "default", "keep", MERGE_PATCH, relabel)
    store.delete(INGRESSES, "default", "gone")


async def _changes_arrived(nats_client: Client) -> None:
    new = await eventually(lambda: observed(nats_client, ingress_ref("new")))
    assert new.vips == [VIPS["s1az1"]]

    async def relabelled() -> bool:
        keep = await observed(nats_client, ingress_ref("keep"))
        return keep is not None and keep.labels.get("v") == "2"

    await eventually(relabelled)
    await eventually(lambda: tombstoned(nats_client, ingress_ref("gone")))


async def test_changes_made_while_history_expired_are_not_lost_after_the_410(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    await _two_observed_ingresses(nats_client, services, kube)

    kube.sim.faults["s1az1"].drop_watches()
    _change_while_not_watching(kube)
    kube.sim.faults["s1az1"].expire_history()

    await _changes_arrived(nats_client)
    name = "watcher-s1az1"
    relists = await metric(services, name, "kgslb_watcher_relists_total", reason="expired")
    assert relists >= 1, "the watch should have resumed into a 410 and relisted"
    marker = await last(nats_client, subjects.sync_subject("s1az1"))
    assert isinstance(marker, SyncMarker)
    assert {"Ingress/default/keep", "Ingress/default/new"} <= set(marker.present)
    assert "Ingress/default/gone" not in marker.present


@pytest.mark.parametrize("abrupt", [True, False], ids=["connection-reset", "clean-close"])
async def test_changes_made_while_watches_were_dropped_are_not_lost(
    nats_client: Client, services: Services, kube: Kube, abrupt: bool
) -> None:
    await _two_observed_ingresses(nats_client, services, kube)

    kube.sim.faults["s1az1"].drop_watches(abrupt=abrupt)
    _change_while_not_watching(kube)

    await _changes_arrived(nats_client)
    if abrupt:
        relists = await metric(
            services, "watcher-s1az1", "kgslb_watcher_relists_total", reason="dropped"
        )
        assert relists >= 1, "a reset watch should relist"


async def test_an_unauthorised_cluster_is_reported_and_retried_until_it_works(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    await call(kube.networking("s2").create_namespaced_ingress, "default", ingress("hello"))
    kube.sim.faults["s2"].unauthorized = True
    name = start_watcher(services, kube, "s2")

    errors = await eventually(
        lambda: metric(services, name, "kgslb_watcher_api_errors_total", cluster="s2")
    )
    assert errors >= 1
    assert await readyz(services, name) == 503
    assert await observed(nats_client, ingress_ref("hello", "s2")) is None

    kube.sim.faults["s2"].unauthorized = False
    await wait_ready(services, name)
    assert await observed(nats_client, ingress_ref("hello", "s2")) is not None
    assert await metric(services, name, "kgslb_watcher_cluster_reachable", cluster="s2") == 1


# Home cluster: policies and their status ----------------------------------------------------


def gdp_ref(name: str, namespace: str = "default") -> PolicyRef:
    return PolicyRef(kind=PolicyKind.GLOBAL_DEPLOYMENT_POLICY, namespace=namespace, name=name)


async def policy(nc: Client, ref: PolicyRef) -> PolicyObject | None:
    message = await last(nc, ref.subject)
    return message if isinstance(message, PolicyObject) else None


async def test_home_watcher_publishes_a_gdp_created_with_the_client_and_its_deletion(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    start_watcher(services, kube, "s1az1", "--home", "true")
    await wait_ready(services, "watcher-s1az1")
    custom = kube.custom("s1az1")
    body = gdp("global-gdp", {"s1az1": 6, "s2": 2})

    await call(
        custom.create_namespaced_custom_object, API_GROUP, API_VERSION, "default", GDPS, body
    )

    published = await eventually(lambda: policy(nats_client, gdp_ref("global-gdp")))
    held = await get_cr(kube, GDPS, "global-gdp")  # with the CRD schema's defaults applied
    assert (published.generation, published.spec) == (1, held["spec"])
    assert held["spec"]["trafficSplit"][0] == {
        "cluster": "s1az1",
        "weight": 6,
        "priority": 10,
        "disabled": False,
    }
    await call(
        custom.delete_namespaced_custom_object,
        API_GROUP,
        API_VERSION,
        "default",
        GDPS,
        "global-gdp",
    )
    await eventually(lambda: _deleted(nats_client, gdp_ref("global-gdp")))


async def _deleted(nc: Client, ref: PolicyRef) -> bool:
    return isinstance(await last(nc, ref.subject), PolicyDeleted)


async def test_a_cr_deleted_while_the_home_watcher_was_stopped_is_deleted_after_restart(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    custom = kube.custom("s1az1")
    body = gdp("global-gdp", {"s1az1": 1})
    await call(
        custom.create_namespaced_custom_object, API_GROUP, API_VERSION, "default", GDPS, body
    )
    watcher = services.running[start_watcher(services, kube, "s1az1", "--home", "true")]
    await eventually(lambda: policy(nats_client, gdp_ref("global-gdp")))
    watcher.stop()

    await call(
        custom.delete_namespaced_custom_object,
        API_GROUP,
        API_VERSION,
        "default",
        GDPS,
        "global-gdp",
    )
    start_watcher(services, kube, "s1az1", "--home", "true")

    await eventually(lambda: _deleted(nats_client, gdp_ref("global-gdp")))


async def get_cr(kube: Kube, plural: str, name: str) -> dict[str, Any]:
    """A kgslb CR in the home cluster s1az1, namespace default, as JSON."""
    obj = await call(
        kube.custom("s1az1").get_namespaced_custom_object,
        API_GROUP, API_VERSION, "default", plural, name,
    )  # fmt: skip
    return cast(dict[str, Any], obj)


async def _status(kube: Kube, name: str) -> dict[str, Any]:
    obj = await get_cr(kube, GDPS, name)
    status: dict[str, Any] = obj.get("status") or {}
    return status


async def test_home_watcher_writes_the_reconcilers_status_accepted_and_rejected(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    services.start("reconciler", "reconciler")
    start_watcher(services, kube, "s1az1", "--home", "true")
    custom = kube.custom("s1az1")
    good = gdp("good", {"s1az1": 6, "s2": 2})
    # The CRD schema refuses what it can express (a weight of 60); the reconciler the rest.
    bad = gdp("bad", {"s1az1": 6})
    bad["spec"]["trafficSplit"].append({"cluster": "s1az1", "weight": 2})
    for body in (good, bad):
        await call(
            custom.create_namespaced_custom_object, API_GROUP, API_VERSION, "default", GDPS, body
        )

    async def state(name: str, expected: str) -> dict[str, Any] | None:
        status = await _status(kube, name)
        return status if status.get("state") == expected else None

    accepted = await eventually(lambda: state("good", "Accepted"), timeout_seconds=20)
    rejected = await eventually(lambda: state("bad", "Rejected"), timeout_seconds=20)

    assert accepted["observedGeneration"] == 1 and accepted["acceptedGeneration"] == 1
    assert rejected["observedGeneration"] == 1 and "acceptedGeneration" not in rejected
    assert "GlobalDeploymentPolicy default/bad" in rejected["message"]
    assert "spec.trafficSplit[1].cluster = 's1az1': listed twice" in rejected["message"]


async def test_a_namespace_label_change_is_published(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    start_watcher(services, kube, "s1az1")
    await wait_ready(services, "watcher-s1az1")
    ref = ObjectRef(cluster="s1az1", kind=ObjectKind.NAMESPACE, namespace="", name="shop")

    await call(kube.core("s1az1").create_namespace, {"metadata": {"name": "shop"}})
    await eventually(lambda: observed(nats_client, ref))
    patch = {"metadata": {"labels": {"gslb": "on"}}}
    await call(kube.core("s1az1").patch_namespace, "shop", patch)

    async def labelled() -> bool:
        message = await observed(nats_client, ref)
        return message is not None and message.labels.get("gslb") == "on"

    await eventually(labelled)


async def test_an_unreachable_member_cluster_shows_in_the_gslbconfig_status(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    config_body = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "GSLBConfig",
        "metadata": {"name": "gc-1", "namespace": "default"},
        "spec": {"memberClusters": [{"clusterContext": c} for c in CLUSTERS]},
    }
    custom = kube.custom("s1az1")
    await call(
        custom.create_namespaced_custom_object,
        API_GROUP, API_VERSION, "default", "gslbconfigs", config_body,
    )  # fmt: skip
    kube.sim.faults["s2"].refuse = True
    start_watcher(services, kube, "s1az1", "--home", "true")
    start_watcher(services, kube, "s2")

    async def clusters() -> dict[str, dict[str, str]]:
        obj = await get_cr(kube, "gslbconfigs", "gc-1")
        entries = (obj.get("status") or {}).get("clusters") or []
        return {entry["cluster"]: entry for entry in entries}

    async def states(expected: dict[str, str]) -> dict[str, dict[str, str]] | None:
        shown = await clusters()
        actual = {name: entry["state"] for name, entry in shown.items()}
        return shown if actual == expected else None

    down = await eventually(lambda: states({"s1az1": "Connected", "s2": "Unreachable"}))
    assert "cluster s2" in down["s2"]["message"] and "503" in down["s2"]["message"]

    kube.sim.faults["s2"].refuse = False
    up = await eventually(lambda: states({"s1az1": "Connected", "s2": "Connected"}))
    assert up["s2"]["message"] == ""


async def test_a_frozen_api_makes_the_watcher_unready_and_it_relists_when_the_api_returns(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    name = start_watcher(
        services, kube, "s2", "--dead-watch-seconds", "1", "--unreachable-grace-seconds", "1"
    )
    await wait_ready(services, name)

    kube.sim.faults["s2"].frozen = True
    try:
        kube.sim.store("s2").create(INGRESSES, "default", ingress("during"))
        dead = await eventually(
            lambda: metric(services, name, "kgslb_watcher_dead_watches_total", cluster="s2")
        )

        async def unready() -> bool:
            return await readyz(services, name) == 503

        await eventually(unready)
        reachable = await metric(services, name, "kgslb_watcher_cluster_reachable", cluster="s2")
        assert await observed(nats_client, ingress_ref("during", "s2")) is None
    finally:
        kube.sim.faults["s2"].frozen = False

    await wait_ready(services, name)
    await eventually(lambda: observed(nats_client, ingress_ref("during", "s2")))
    relists = await metric(services, name, "kgslb_watcher_relists_total", reason="dead")
    assert dead >= 1 and relists >= 1, "a silent watch is abandoned and relisted"
    assert reachable == 0
