"""kubesim.guard and kubesim.validation, pure: how a request URL reads in RBAC's terms, which
rules allow it, how a denial and an invalid built-in object are worded (as kube-apiserver)."""

from __future__ import annotations

from typing import Any

import pytest

from kubesim import guard, validation
from kubesim.guard import Attributes, User, request_attributes, service_account_user
from kubesim.resources import (
    CLUSTERROLEBINDINGS,
    CLUSTERROLES,
    INGRESSES,
    NAMESPACES,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
    SERVICES,
)
from kubesim.store import ClusterStore

APP = service_account_user("team", "app")


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/api/v1/namespaces/team/services", {}, ("list", "", "services", "", "team", "")),
        ("GET", "/api/v1/services", {"watch": "true"}, ("watch", "", "services", "", "", "")),
        ("GET", "/api/v1/namespaces/team/services/web", {}, ("get", "", "services", "", "team", "web")),
        ("POST", "/api/v1/namespaces/team/services", {}, ("create", "", "services", "", "team", "")),
        ("DELETE", "/api/v1/namespaces/team/services", {}, ("deletecollection", "", "services", "", "team", "")),
        ("DELETE", "/api/v1/namespaces/team/services/web", {}, ("delete", "", "services", "", "team", "web")),
        ("PUT", "/api/v1/namespaces/team", {}, ("update", "", "namespaces", "", "team", "team")),
        ("PUT", "/api/v1/namespaces/team/status", {}, ("update", "", "namespaces", "status", "team", "team")),
        ("GET", "/api/v1/namespaces", {}, ("list", "", "namespaces", "", "", "")),
        (
            "PATCH",
            "/apis/kgslb.io/v1alpha1/namespaces/avi-system/gslbconfigs/gc-1/status",
            {},
            ("patch", "kgslb.io", "gslbconfigs", "status", "avi-system", "gc-1"),
        ),
        (
            "POST",
            "/api/v1/namespaces/kgslb-system/serviceaccounts/kgslb-watcher/token",
            {},
            ("create", "", "serviceaccounts", "token", "kgslb-system", "kgslb-watcher"),
        ),
        (
            "GET",
            "/apis/networking.k8s.io/v1/ingresses",
            {"watch": "1", "fieldSelector": "metadata.name=web"},
            ("watch", "networking.k8s.io", "ingresses", "", "", "web"),
        ),
    ],
)  # fmt: skip
def test_a_request_reads_as_kube_apiservers_request_info(
    method: str, path: str, query: dict[str, str], expected: tuple[str, ...]
) -> None:
    attrs = request_attributes(method, path, query)
    assert attrs.resource_request
    assert (
        attrs.verb, attrs.group, attrs.resource, attrs.subresource, attrs.namespace, attrs.name
    ) == expected  # fmt: skip


@pytest.mark.parametrize(
    "path", ["/api", "/apis", "/apis/kgslb.io/v1alpha1", "/version", "/openapi/v3"]
)
def test_discovery_is_a_non_resource_request_every_authenticated_user_may_make(path: str) -> None:
    attrs = request_attributes("GET", path, {})
    assert not attrs.resource_request
    assert guard.allowed(ClusterStore(), APP, attrs)


def test_non_resource_paths_outside_discovery_are_denied_with_the_path_message() -> None:
    attrs = request_attributes("GET", "/metrics", {})
    assert not guard.allowed(ClusterStore(), APP, attrs)
    assert guard.forbidden(APP, attrs).message == (
        'forbidden: User "system:serviceaccount:team:app" cannot get path "/metrics"'
    )


def test_the_forbidden_message_has_kube_apiservers_shape() -> None:
    named = Attributes("patch", "", True, "kgslb.io", "gslbconfigs", "status", "avi-system", "gc-1")
    error = guard.forbidden(APP, named)
    assert (error.code, error.reason) == (403, "Forbidden")
    assert error.message == (
        'gslbconfigs.kgslb.io "gc-1" is forbidden: User "system:serviceaccount:team:app" cannot'
        ' patch resource "gslbconfigs/status" in API group "kgslb.io" in the namespace "avi-system"'
    )
    listing = Attributes("list", "", True, "", "namespaces")
    assert guard.forbidden(User("jane", ()), listing).message == (
        'namespaces is forbidden: User "jane" cannot list resource "namespaces" in API group ""'
        " at the cluster scope"
    )


def store_with(*objects: tuple[Any, str | None, dict[str, Any]]) -> ClusterStore:
    store = ClusterStore()
    store.create(NAMESPACES, None, {"metadata": {"name": "team"}})
    for rtype, namespace, body in objects:
        store.create(rtype, namespace, body)
    return store


def cluster_role(name: str, *rules: dict[str, Any]) -> tuple[Any, None, dict[str, Any]]:
    return (CLUSTERROLES, None, {"metadata": {"name": name}, "rules": list(rules)})


def bind(kind: Any, name: str, role_kind: str, subject: dict[str, str], namespace: str | None = None) -> tuple[Any, str | None, dict[str, Any]]:  # fmt: skip
    body = {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
        "subjects": [subject],
    }
    return (kind, namespace, body)


def ask(verb: str, resource: str, namespace: str = "", name: str = "", group: str = "", sub: str = "") -> Attributes:  # fmt: skip
    return Attributes(verb, "", True, group, resource, sub, namespace, name)


def test_rules_match_verbs_groups_resources_subresources_and_names() -> None:
    rules = (
        {"apiGroups": ["kgslb.io"], "resources": ["gslbconfigs"], "verbs": ["get", "list"]},
        {"apiGroups": ["kgslb.io"], "resources": ["*/status"], "resourceNames": ["gc-1"], "verbs": ["patch"]},
    )  # fmt: skip
    store = store_with(
        cluster_role("reader", *rules),
        bind(CLUSTERROLEBINDINGS, "reader", "ClusterRole", {"kind": "ServiceAccount", "name": "app", "namespace": "team"}),
    )  # fmt: skip
    assert guard.allowed(store, APP, ask("list", "gslbconfigs", group="kgslb.io"))
    assert not guard.allowed(store, APP, ask("watch", "gslbconfigs", group="kgslb.io"))
    assert not guard.allowed(store, APP, ask("list", "gslbconfigs", group="other.io"))
    assert guard.allowed(
        store, APP, ask("patch", "gslbconfigs", "team", "gc-1", "kgslb.io", "status")
    )
    assert not guard.allowed(
        store, APP, ask("patch", "gslbconfigs", "team", "gc-2", "kgslb.io", "status")
    )
    assert not guard.allowed(store, APP, ask("patch", "gslbconfigs", "team", "gc-1", "kgslb.io"))
    other = service_account_user("elsewhere", "app")
    assert not guard.allowed(store, other, ask("list", "gslbconfigs", group="kgslb.io"))


def test_a_role_binding_grants_only_in_its_namespace_and_defaults_the_subject_namespace() -> None:
    rule = {"apiGroups": [""], "resources": ["services"], "verbs": ["*"]}
    store = store_with(
        (ROLES, "team", {"metadata": {"name": "svc"}, "rules": [rule]}),
        bind(ROLEBINDINGS, "svc", "Role", {"kind": "ServiceAccount", "name": "app"}, "team"),
    )
    assert guard.allowed(store, APP, ask("delete", "services", "team", "web"))
    assert not guard.allowed(store, APP, ask("delete", "services", "other", "web"))
    assert not guard.allowed(store, APP, ask("list", "services"))


def test_groups_and_the_masters_group() -> None:
    rule = {"apiGroups": ["*"], "resources": ["*"], "verbs": ["list"]}
    store = store_with(
        cluster_role("lister", rule),
        bind(CLUSTERROLEBINDINGS, "lister", "ClusterRole", {"kind": "Group", "name": "system:serviceaccounts"}),
    )  # fmt: skip
    assert guard.allowed(store, APP, ask("list", "ingresses", group="networking.k8s.io"))
    assert not guard.allowed(store, User("jane", ("system:authenticated",)), ask("list", "pods"))
    assert guard.allowed(store, guard.ADMIN, ask("delete", "anything", "team", "x", "any.io"))


def test_a_minted_token_dies_with_its_service_account() -> None:
    store = store_with((SERVICEACCOUNTS, "team", {"metadata": {"name": "app"}}))
    tokens = guard.Tokens("admin-secret")
    minted = tokens.mint(store, "team", "app", {"spec": {"expirationSeconds": 3600}})
    header = f"Bearer {minted['status']['token']}"
    assert tokens.authenticate(store, header) == APP
    assert tokens.authenticate(store, "Bearer admin-secret") == guard.ADMIN
    assert tokens.authenticate(store, "Bearer nope") is None
    assert tokens.authenticate(store, "") is None
    store.delete(SERVICEACCOUNTS, "team", "app")
    store.create(SERVICEACCOUNTS, "team", {"metadata": {"name": "app"}})
    assert tokens.authenticate(store, header) is None, "a new account of the same name"


def test_a_token_request_for_less_than_ten_minutes_is_invalid() -> None:
    store = store_with((SERVICEACCOUNTS, "team", {"metadata": {"name": "app"}}))
    with pytest.raises(Exception, match="may not specify a duration less than 10 minutes"):
        guard.Tokens("x").mint(store, "team", "app", {"spec": {"expirationSeconds": 60}})


# ----- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["shop.example.com", "*.example.com", "a-b.c", "x" * 63 + ".example.com"]
)
def test_valid_ingress_hosts(host: str) -> None:
    assert validation.host_errors("spec.rules[0].host", host) == []


@pytest.mark.parametrize(
    "host", ["Shop.example.com", "shop.*.com", "*", "*.", "-shop.example.com", "shop..com", "::1", "a" * 254]
)  # fmt: skip
def test_invalid_ingress_hosts(host: str) -> None:
    errors = validation.host_errors("spec.rules[0].host", host)
    assert errors and all(e.field == "spec.rules[0].host" for e in errors)


def test_service_errors_name_each_field_with_the_supported_values() -> None:
    service = {
        "metadata": {"name": "web"},
        "spec": {
            "type": "ClusterIP",
            "sessionAffinity": "None",
            "externalTrafficPolicy": "Nearest",
            "ports": [{"port": 0, "protocol": "TCP", "targetPort": "http"}],
        },
    }
    errors = validation.builtin_errors(SERVICES, service)
    assert [str(e) for e in errors] == [
        "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        'spec.externalTrafficPolicy: Unsupported value: "Nearest": supported values: "Cluster",'
        ' "Local"',
    ]
    message, details = validation.rejection(SERVICES, "web", errors)
    assert message.startswith('Service "web" is invalid: [spec.ports[0].port: Invalid value: 0')
    assert details["causes"][1] == {
        "reason": "FieldValueNotSupported",
        "message": 'Unsupported value: "Nearest": supported values: "Cluster", "Local"',
        "field": "spec.externalTrafficPolicy",
    }


def test_an_ingress_path_needs_a_type_and_an_absolute_path_and_a_port_in_range() -> None:
    backend = {"service": {"name": "web", "port": {"number": 65536}}}
    ingress = {
        "metadata": {"name": "web"},
        "spec": {"rules": [{"http": {"paths": [{"path": "/", "backend": backend}, {"path": "x", "pathType": "Exact"}]}}]},
    }  # fmt: skip
    assert [str(e) for e in validation.builtin_errors(INGRESSES, ingress)] == [
        "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified",
        "spec.rules[0].http.paths[0].backend.service.port.number: Invalid value: 65536: must be"
        " between 1 and 65535, inclusive",
        'spec.rules[0].http.paths[1].path: Invalid value: "x": must be an absolute path',
    ]


def test_a_self_subject_access_review_answers_for_the_asking_user() -> None:
    rule = {"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}
    store = store_with(
        cluster_role("svc", rule),
        bind(CLUSTERROLEBINDINGS, "svc", "ClusterRole", {"kind": "ServiceAccount", "name": "app", "namespace": "team"}),
    )  # fmt: skip

    def asks(verb: str, resource: str) -> bool:
        body = {"spec": {"resourceAttributes": {"verb": verb, "resource": resource}}}
        return bool(guard.review(store, APP, body)["status"]["allowed"])

    assert asks("list", "services")
    assert not asks("delete", "services")
    nonresource = {"spec": {"nonResourceAttributes": {"verb": "get", "path": "/metrics"}}}
    assert guard.review(store, APP, nonresource)["status"]["allowed"] is False
