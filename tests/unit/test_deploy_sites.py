"""The per-site overlays of deploy/ (deploy/overlays/sites/<cluster>, built on the component
deploy/components/site): each renders, is valid against the Kubernetes schemas, and makes its
cluster one site of the whole: its own nats-server tagged with the site and routed to the
others, its own DNS, health, reconciler and the watcher of its own cluster."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest

from tests.unit.test_deploy import (
    KUBERNETES_VERSION,
    SERVICES,
    component,
    env_of,
    kgslb_deployments,
    label,
    named,
    nats_conf,
    of_kind,
    render,
    workloads,
)

SITES = ("s1az1", "s1az2", "s2")
OVERLAYS = tuple(f"sites/{site}" for site in SITES)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_of_every_site_is_valid_against_the_kubernetes_schemas(
    overlay: str,
) -> None:
    problems = []
    for doc in render(overlay):
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{label(doc)}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert problems == []


@pytest.mark.parametrize("site", SITES)
def test_each_site_runs_one_of_each_service_and_a_dns_per_site(site: str) -> None:
    replicas = {component(d): d["spec"]["replicas"] for d in kgslb_deployments(f"sites/{site}")}

    assert replicas == {"watcher": 1, "reconciler": 1, "health": 1, "dns": 2}
    assert named(f"sites/{site}", "Service", "kgslb-dns")["spec"]["type"] == "LoadBalancer"


@pytest.mark.parametrize("site", SITES)
def test_each_sites_watcher_reads_its_own_cluster_and_only_the_first_is_home(site: str) -> None:
    [watcher] = [d for d in kgslb_deployments(f"sites/{site}") if component(d) == "watcher"]
    pod = watcher["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])

    assert env["KGSLB_CLUSTER"] == site
    assert "KGSLB_KUBECONFIG" not in env and "KGSLB_CONTEXT" not in env, "in-cluster config"
    assert pod["automountServiceAccountToken"] is True
    assert not [v for v in pod["volumes"] if "secret" in v]
    assert env.get("KGSLB_HOME") == ("true" if site == "s1az1" else None)
    assert not [s for s in of_kind(f"sites/{site}", "Secret") if "token" in s["metadata"]["name"]]


@pytest.mark.parametrize("site", SITES)
def test_each_sites_services_use_its_own_nats_with_three_replicas_per_stream(site: str) -> None:
    settings = next(
        c for c in of_kind(f"sites/{site}", "ConfigMap")
        if c["metadata"]["name"].startswith("kgslb-settings")
    )["data"]  # fmt: skip

    assert settings["KGSLB_NATS_URL"] == "nats://nats.kgslb-system.svc:4222"
    assert settings["KGSLB_STREAM_REPLICAS"] == "3"
    assert {component(d) for d in kgslb_deployments(f"sites/{site}")} == set(SERVICES)


@pytest.mark.parametrize("site", SITES)
def test_each_site_runs_one_nats_node_tagged_with_its_site_and_routed_to_every_site(
    site: str,
) -> None:
    overlay = f"sites/{site}"
    nats = named(overlay, "StatefulSet", "nats")
    env = env_of(nats["spec"]["template"]["spec"]["containers"][0])
    site_config = next(
        c for c in of_kind(overlay, "ConfigMap") if c["metadata"]["name"].startswith("kgslb-site")
    )["data"]
    conf = nats_conf(overlay)
    routes = re.findall(r"nats://(nats-[a-z0-9]+)\.iberia\.local:6222", conf)

    assert nats["spec"]["replicas"] == 1
    assert {name: env[name]["configMapKeyRef"]["key"] for name in site_config} == {
        name: name for name in site_config
    }
    assert site_config == {
        "NATS_SERVER_NAME": site,
        "NATS_SITE_TAG": f"site:{site}",
        "NATS_ROUTE_ADVERTISE": f"nats-{site}.iberia.local:6222",
    }
    assert "server_name: $NATS_SERVER_NAME" in conf
    assert "server_tags: [$NATS_SITE_TAG]" in conf
    assert 'unique_tag: "site:"' in conf
    assert "advertise: $NATS_ROUTE_ADVERTISE" in conf
    assert "no_advertise: true" in conf
    assert routes == [f"nats-{s}" for s in SITES]
    assert named(overlay, "Service", "nats-routes")["spec"]["type"] == "LoadBalancer"


def test_every_site_workload_keeps_probes_and_a_locked_down_security_context() -> None:
    for overlay in OVERLAYS:
        for workload in workloads(overlay):
            pod = workload["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, label(workload)
            for container in pod["containers"]:
                assert {"livenessProbe", "readinessProbe"} <= set(container), label(workload)
                assert container["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("site", SITES)
def test_each_sites_health_replica_probes_from_its_own_site(site: str) -> None:
    deployments = kgslb_deployments(f"sites/{site}")
    [health] = [d for d in deployments if component(d) == "health"]
    env = env_of(health["spec"]["template"]["spec"]["containers"][0])

    assert env["KGSLB_SITE"] == site
    assert not [d for d in deployments if component(d) != "health" and "KGSLB_SITE" in
                env_of(d["spec"]["template"]["spec"]["containers"][0])]  # fmt: skip


def test_the_single_cluster_layouts_keep_one_vantage_point() -> None:
    for overlay in ("dev", "home-cluster"):
        [health] = [d for d in kgslb_deployments(overlay) if component(d) == "health"]
        assert "KGSLB_SITE" not in env_of(health["spec"]["template"]["spec"]["containers"][0])
