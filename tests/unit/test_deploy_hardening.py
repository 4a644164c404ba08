"""The hardening of deploy/: every overlay renders with every component that applies to it
and stays valid; every pod spec in deploy/ (the overlays', the components', the nats-box)
passes the `restricted` Pod Security Standard its namespace enforces; operators' NATS
clients get through the NetworkPolicies to NATS and nowhere else; NATS runs the version
the tests run; TLS and nkeys reach every service; and a watcher holds only its own
cluster's credentials."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kgslb.embedded import nats_server_binary
from tests.unit.deploy_compose import named_in, of_kind_in, render_with
from tests.unit.test_deploy import (
    DEPLOY,
    KUBERNETES_VERSION,
    SERVICES,
    Manifest,
    component,
    env_of,
    kubectl,
    label,
)

NATS_COMPONENTS = ("nats-tls", "nats-nkeys")
ROUTED = ("home-cluster", "sites/s1az1", "sites/s1az2", "sites/s2")
COMBINATIONS = [
    *((overlay, ()) for overlay in ("dev", *ROUTED)),
    *(("dev", (c,)) for c in (*NATS_COMPONENTS, "monitoring")),
    *((o, (c,)) for o in ("home-cluster", "sites/s1az1") for c in (*NATS_COMPONENTS, "nats-route-tls", "monitoring")),
    ("dev", ("nats-tls", "nats-nkeys", "monitoring")),
    *((o, ("nats-tls", "nats-route-tls", "nats-nkeys", "monitoring")) for o in ROUTED),
]  # fmt: skip
PROMETHEUS_OPERATOR = "monitoring.coreos.com/v1"


def ids(combination: tuple[str, tuple[str, ...]]) -> str:
    overlay, components = combination
    return "+".join((overlay, *components))


def nats_box() -> tuple[Manifest, ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / "nats-box")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def pod_specs(docs: tuple[Manifest, ...]) -> list[tuple[str, Manifest]]:
    specs = [
        (label(d), d["spec"]["template"]["spec"]) for d in docs if "template" in d.get("spec", {})
    ]
    return specs + [(label(d), d["spec"]) for d in docs if d["kind"] == "Pod"]  # fmt: skip


# Rendering ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("combination", COMBINATIONS, ids=ids)
def test_every_overlay_renders_with_its_components_and_stays_valid(
    combination: tuple[str, tuple[str, ...]],
) -> None:
    overlay, components = combination
    problems = []
    for doc in render_with(overlay, *components):
        if doc["apiVersion"] == PROMETHEUS_OPERATOR:
            continue  # no schema offline; tests/unit/test_deploy_monitoring.py checks them
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{label(doc)}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert problems == []


def test_the_nats_box_is_valid() -> None:
    for doc in nats_box():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# The restricted Pod Security Standard ------------------------------------------------------------

ALLOWED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def restricted_violations(where: str, pod: Manifest) -> list[str]:
    """What the `restricted` policy (Kubernetes Pod Security Standards) refuses in a pod."""
    problems = []
    pod_security = pod.get("securityContext", {})
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            problems.append(f"{where}: {host}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"{where}: volume {volume['name']} of kind {sorted(kinds)}")
    for container in pod.get("initContainers", []) + pod["containers"]:
        at = f"{where}/{container['name']}"
        security = container.get("securityContext", {})

        def setting(key: str, security: dict[str, Any] = security) -> Any:
            return security.get(key, pod_security.get(key))

        if setting("runAsNonRoot") is not True:
            problems.append(f"{at}: runAsNonRoot must be true")
        if setting("runAsUser") == 0:
            problems.append(f"{at}: runAsUser 0")
        if (setting("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{at}: seccompProfile RuntimeDefault or Localhost")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: allowPrivilegeEscalation must be false")
        if security.get("privileged"):
            problems.append(f"{at}: privileged")
        capabilities = security.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{at}: capabilities must drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{at}: adds {capabilities['add']}")
        for port in container.get("ports", []):
            if "hostPort" in port:
                problems.append(f"{at}: hostPort")
    return problems


@pytest.mark.parametrize("combination", COMBINATIONS, ids=ids)
def test_every_pod_spec_passes_the_restricted_pod_security_standard(
    combination: tuple[str, tuple[str, ...]],
) -> None:
    overlay, components = combination
    docs = render_with(overlay, *components)
    namespace = named_in(docs, "Namespace", "kgslb-system")
    specs = pod_specs(docs)

    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert specs
    assert [p for where, pod in specs for p in restricted_violations(where, pod)] == []


def test_the_nats_box_passes_the_restricted_pod_security_standard() -> None:
    specs = pod_specs(nats_box())

    assert [where for where, _ in specs] == ["Pod/nats-box"]
    assert [p for where, pod in specs for p in restricted_violations(where, pod)] == []


def test_the_restricted_check_refuses_what_the_documented_nats_box_used_to_be() -> None:
    """`kubectl run nats-box --image natsio/nats-box`: root, no seccomp, capabilities kept."""
    pod = {"containers": [{"name": "nats-box", "image": "natsio/nats-box"}]}

    assert restricted_violations("Pod/nats-box", pod) == [
        "Pod/nats-box/nats-box: runAsNonRoot must be true",
        "Pod/nats-box/nats-box: seccompProfile RuntimeDefault or Localhost",
        "Pod/nats-box/nats-box: allowPrivilegeEscalation must be false",
        "Pod/nats-box/nats-box: capabilities must drop ALL",
    ]


# NetworkPolicies for operators' NATS clients --------------------------------------------------------


def selects(selector: Manifest, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def egress_ports_to(
    policies: list[Manifest], source: dict[str, str], target: dict[str, str]
) -> set[int]:
    return {
        port["port"]
        for policy in policies
        if "Egress" in policy["spec"]["policyTypes"] and selects(policy["spec"]["podSelector"], source)
        for rule in policy["spec"].get("egress", [])
        if any("podSelector" in peer and "namespaceSelector" not in peer
               and selects(peer["podSelector"], target) for peer in rule.get("to", []))
        for port in rule.get("ports", [])
    }  # fmt: skip


def ingress_ports_from(
    policies: list[Manifest], target: dict[str, str], source: dict[str, str]
) -> set[int]:
    return {
        port["port"]
        for policy in policies
        if "Ingress" in policy["spec"]["policyTypes"] and selects(policy["spec"]["podSelector"], target)
        for rule in policy["spec"].get("ingress", [])
        if any("podSelector" in peer and "namespaceSelector" not in peer
               and selects(peer["podSelector"], source) for peer in rule.get("from", []))
        for port in rule.get("ports", [])
    }  # fmt: skip


@pytest.mark.parametrize("overlay", ("home-cluster", "dev", "sites/s1az1"))
def test_the_nats_box_reaches_nats_client_port_and_nothing_else_in_the_namespace(
    overlay: str,
) -> None:
    docs = render_with(overlay)
    policies = of_kind_in(docs, "NetworkPolicy")
    box = nats_box()[0]["metadata"]["labels"]
    nats = named_in(docs, "StatefulSet", "nats")["spec"]["template"]["metadata"]["labels"]
    dns = named_in(docs, "Deployment", "kgslb-dns")["spec"]["template"]["metadata"]["labels"]

    assert egress_ports_to(policies, box, nats) == {4222}
    assert 4222 in ingress_ports_from(policies, nats, box)
    assert egress_ports_to(policies, box, dns) == set()


def test_without_the_nats_client_label_a_pod_gets_no_egress_to_nats() -> None:
    policies = of_kind_in(render_with("home-cluster"), "NetworkPolicy")
    nats = {"app.kubernetes.io/name": "nats"}

    assert egress_ports_to(policies, {"app.kubernetes.io/name": "nats-box"}, nats) == set()


# NATS version, TLS, nkeys --------------------------------------------------------------------------


def test_nats_runs_the_nats_server_version_the_tests_run() -> None:
    out = subprocess.run(
        [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    tested = re.search(r"v(\d+\.\d+\.\d+)", out)
    assert tested is not None, out
    images = {
        c["image"]
        for overlay in ("home-cluster", "dev", *ROUTED)
        for c in named_in(render_with(overlay), "StatefulSet", "nats")["spec"]["template"]["spec"]["containers"]
        if c["name"] == "nats"
    }  # fmt: skip

    assert images == {f"nats:{tested.group(1)}-alpine"}


@pytest.mark.parametrize("overlay", ("home-cluster", "dev", "sites/s2"))
def test_with_nats_tls_every_service_verifies_the_server_with_a_mounted_ca(overlay: str) -> None:
    docs = render_with(overlay, "nats-tls")
    deployments = [
        d for d in of_kind_in(docs, "Deployment") if d["metadata"]["name"].startswith("kgslb-")
    ]
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        ca = env_of(container)["KGSLB_NATS_TLS_CA"]
        mount = next(m for m in container["volumeMounts"] if ca.startswith(m["mountPath"] + "/"))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["secret"] == {
            "secretName": "nats-tls-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }, label(deployment)  # fmt: skip
    assert {component(d) for d in deployments} == set(SERVICES)
    nats = named_in(docs, "StatefulSet", "nats")["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "nats-tls"}} in nats["volumes"]


@pytest.mark.parametrize("overlay", ("home-cluster", "dev", "sites/s2"))
def test_with_nats_nkeys_each_service_mounts_only_its_own_seed_and_no_password(
    overlay: str,
) -> None:
    docs = render_with(overlay, "nats-nkeys")
    for deployment in (
        d for d in of_kind_in(docs, "Deployment") if d["metadata"]["name"].startswith("kgslb-")
    ):
        pod = deployment["spec"]["template"]["spec"]
        env = env_of(pod["containers"][0])
        seeds = [
            v["secret"]
            for v in pod["volumes"]
            if v.get("secret", {}).get("secretName") == "kgslb-nats-nkey-seeds"
        ]
        assert seeds == [
            {
                "secretName": "kgslb-nats-nkey-seeds",
                "items": [{"key": component(deployment), "path": "seed"}],
            }
        ], label(deployment)
        assert env["KGSLB_NATS_NKEY_SEED"] == "/etc/kgslb/nats-nkey/seed"
        assert "KGSLB_NATS_PASSWORD" not in env and "KGSLB_NATS_USER" not in env
    server_env = env_of(
        named_in(docs, "StatefulSet", "nats")["spec"]["template"]["spec"]["containers"][0]
    )
    assert not [k for k in server_env if k.startswith("NATS_PASSWORD_")]
    accounts = (DEPLOY / "nats" / "accounts-nkeys.conf").read_text()
    assert {k for k in server_env if k.startswith("NATS_NKEY_")} == set(
        re.findall(r"\$(NATS_NKEY_\w+)", accounts)
    )


# Credentials of member clusters ------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ("home-cluster", "dev", *ROUTED))
def test_no_two_watchers_share_a_kubeconfig_secret(overlay: str) -> None:
    watchers = [
        d for d in of_kind_in(render_with(overlay), "Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "watcher"
    ]  # fmt: skip
    mounted = [
        v["secret"]["secretName"]
        for w in watchers
        for v in w["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    ]
    assert watchers
    assert len(mounted) == len(set(mounted))
    assert all(name.startswith("kgslb-kubeconfig-") for name in mounted)


# RBAC: reads cluster-wide, writes per namespace ---------------------------------------------------

READS = {"get", "list", "watch"}
# The CustomObjectsApi calls of services/watcher that write, and the verb each one needs.
WRITE_CALLS = {
    "create_namespaced_custom_object": ("", "create"),
    "replace_namespaced_custom_object": ("", "update"),
    "delete_namespaced_custom_object": ("", "delete"),
    "patch_namespaced_custom_object_status": ("/status", "patch"),
}


def policy_namespace() -> tuple[Manifest, ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / "policy-namespace")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def watcher_write_calls() -> set[str]:
    source = "\n".join(p.read_text() for p in (DEPLOY.parent / "services" / "watcher").glob("*.py"))
    return {call for call in WRITE_CALLS if f".{call}(" in source}


@pytest.mark.parametrize("overlay", ("home-cluster", "dev", *ROUTED, "member-cluster"))
def test_cluster_roles_only_read(overlay: str) -> None:
    writes = [
        (label(role), sorted(set(rule["verbs"]) - READS))
        for role in of_kind_in(render_with(overlay), "ClusterRole")
        for rule in role["rules"]
        if set(rule["verbs"]) - READS
    ]
    assert writes == []


def test_the_policy_namespace_role_grants_exactly_the_writes_the_watcher_makes() -> None:
    docs = policy_namespace()
    role = named_in(docs, "Role", "kgslb-policy-writer")
    plurals = {
        crd["spec"]["names"]["plural"]
        for crd in of_kind_in(render_with("home-cluster"), "CustomResourceDefinition")
        if crd["spec"]["scope"] == "Namespaced"
    }
    granted = {
        (resource, verb)
        for rule in role["rules"]
        if rule["apiGroups"] == ["kgslb.io"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = {
        (plural + suffix, verb)
        for call in watcher_write_calls()
        for suffix, verb in [WRITE_CALLS[call]]
        for plural in plurals
    }

    assert watcher_write_calls() == set(WRITE_CALLS)
    assert len(plurals) == 3
    assert granted == needed


def test_the_policy_namespace_binds_the_watchers_service_account_in_its_own_namespace() -> None:
    docs = policy_namespace()
    namespace = named_in(docs, "Namespace", "avi-system")["metadata"]["name"]
    binding = named_in(docs, "RoleBinding", "kgslb-watcher-policies")
    accounts = {
        (d["metadata"]["namespace"], d["spec"]["template"]["spec"]["serviceAccountName"])
        for overlay in ("home-cluster", "dev", *ROUTED)
        for d in of_kind_in(render_with(overlay), "Deployment")
        if component(d) == "watcher"
    }

    assert {d["metadata"]["namespace"] for d in docs if d["kind"] != "Namespace"} == {namespace}
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kgslb-policy-writer",
    }  # fmt: skip
    assert {(s["namespace"], s["name"]) for s in binding["subjects"]} == accounts
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
