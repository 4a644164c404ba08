"""The simulator keeps its objects across restarts when given a state directory, as a
cluster keeps them in etcd: same uids, resourceVersions and statuses, custom resources
included, and the AKO stand-in keeps the addresses it handed out."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubesim import KubeSim
from kubesim.resources import INGRESSES, SERVICES
from kubesim.store import ClusterStore

GDP = ("kgslb.io", "globaldeploymentpolicies")
POOLS = {"s2": ["127.30.0.1", "127.30.0.2", "127.30.0.3"]}
"""The shared Ingress VIP first, then one per LoadBalancer Service (AKO's default)."""


def gdp_type(sim: KubeSim, cluster: str = "s1"):  # type: ignore[no-untyped-def]
    rtype = sim.store(cluster).registry.by_key(GDP)
    assert rtype is not None, "the kgslb CRDs are served"
    return rtype


async def test_objects_and_their_addresses_come_back_after_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "kubesim"
    first = KubeSim(["s1", "s2"], vip_pools=POOLS,
                    state_dir=state)  # fmt: skip
    await first.start()
    try:
        store = first.store("s2")
        ingress = store.create(INGRESSES, "default", {"metadata": {"name": "shop"}})
        service = store.create(
            SERVICES, "default",
            {"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}},
        )  # fmt: skip
        policy = first.store("s1").create(
            gdp_type(first), "default",
            {"apiVersion": "kgslb.io/v1alpha1", "kind": "GlobalDeploymentPolicy",
             "metadata": {"name": "global-gdp"}, "spec": {"matchClusters": [{"cluster": "s2"}]}},
        )  # fmt: skip
        before = {
            "ingress": store.get(INGRESSES, "default", "shop"),
            "service": store.get(SERVICES, "default", "lb"),
            "rv": store.rv,
        }
        counts = {
            cluster: sum(len(e["items"]) for e in first.store(cluster).snapshot()["resources"])
            for cluster in ("s1", "s2")
        }
    finally:
        await first.stop()
    assert sorted(p.name for p in state.glob("*.json")) == ["s1.json", "s2.json"]

    second = KubeSim(["s1", "s2"], vip_pools=POOLS,
                     state_dir=state)  # fmt: skip
    await second.start()
    try:
        store = second.store("s2")
        ingress_after = store.get(INGRESSES, "default", "shop")
        service_after = store.get(SERVICES, "default", "lb")
        policy_after = second.store("s1").get(gdp_type(second), "default", "global-gdp")
        # A new LoadBalancer gets the next free address, not one restored objects hold.
        store.create(
            SERVICES, "default",
            {"metadata": {"name": "lb2"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}},
        )  # fmt: skip
        other = store.get(SERVICES, "default", "lb2")
    finally:
        await second.stop()

    assert first.restored == {}
    assert second.restored == counts
    assert ingress_after == before["ingress"]
    assert service_after == before["service"]
    assert ingress["metadata"]["uid"] == ingress_after["metadata"]["uid"]
    assert service["metadata"]["uid"] == service_after["metadata"]["uid"]
    assert policy_after["metadata"]["uid"] == policy["metadata"]["uid"]
    assert int(other["metadata"]["resourceVersion"]) > before["rv"]
    assert ingress_after["status"]["loadBalancer"]["ingress"] == [{"ip": "127.30.0.1"}]
    assert service_after["status"]["loadBalancer"]["ingress"] == [{"ip": "127.30.0.2"}]
    assert other["status"]["loadBalancer"]["ingress"] == [{"ip": "127.30.0.3"}]
    assert other["spec"]["clusterIP"] != service_after["spec"]["clusterIP"]


def test_a_watch_from_before_the_restart_is_told_to_relist() -> None:
    store = ClusterStore()
    store.create(INGRESSES, "default", {"metadata": {"name": "shop"}})
    old_rv = store.rv - 1
    restored = ClusterStore()
    restored.restore(store.snapshot())

    with pytest.raises(Exception, match="too old resource version"):
        restored.events_since(INGRESSES, old_rv)
    assert restored.get(INGRESSES, "default", "shop") == store.get(INGRESSES, "default", "shop")


def test_an_unreadable_saved_cluster_is_named(tmp_path: Path) -> None:
    (tmp_path / "s1.json").write_text("{not json")

    with pytest.raises(ValueError, match=r"s1.json: not a saved cluster of the simulator"):
        KubeSim(["s1"], state_dir=tmp_path)
