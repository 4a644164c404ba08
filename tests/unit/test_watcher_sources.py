"""The sources of a member cluster, pure: Gateway API routes joined with their Gateways
(acceptance, listener hostnames), OpenShift Routes (admission, the router's address),
load-balancer hostnames resolved, and the view that keeps joins current."""

from __future__ import annotations

from typing import Any

import pytest

from services.watcher.resolve import due, parse_server
from services.watcher.sources import select
from services.watcher.sources.base import Resolution, Skip
from services.watcher.sources.gateway import HTTP_ROUTE, TLS_ROUTE, intersect
from services.watcher.sources.ingress import INGRESS
from services.watcher.sources.openshift import OPENSHIFT_ROUTE
from services.watcher.sources.service import SERVICE
from services.watcher.view import ClusterView, Decision
from shared.models import ObjectKind, ObservedObject, SyncMarker, Tombstone

CLUSTER = "s2"
SHOP = "shop.avi.iberia.local"
GROUP = "gateway.networking.k8s.io"


def gateway(
    name: str = "gw",
    ip: str | None = "10.0.0.5",
    listeners: list[dict[str, Any]] | None = None,
    namespace: str = "default",
) -> dict[str, Any]:
    status = {"addresses": [{"type": "IPAddress", "value": ip}]} if ip else {}
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"listeners": listeners or [{"name": "http", "protocol": "HTTP", "port": 80}]},
        "status": status,
    }


def route(
    hostnames: list[str],
    parents: list[dict[str, Any]] | None = None,
    accepted: list[dict[str, Any]] | None = None,
    name: str = "shop",
) -> dict[str, Any]:
    parents = parents if parents is not None else [{"name": "gw"}]
    accepted = accepted if accepted is not None else parents
    return {
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "gslb"}},
        "spec": {"parentRefs": parents, "hostnames": hostnames},
        "status": {
            "parents": [
                {"parentRef": ref, "conditions": [{"type": "Accepted", "status": "True"}]}
                for ref in accepted
            ]
        },
    }


class Joined:
    def __init__(self, *gateways: dict[str, Any]) -> None:
        self.gateways = {(g["metadata"]["namespace"], g["metadata"]["name"]): g for g in gateways}

    def object(self, key: Any) -> Any:
        return self.gateways.get((key.namespace, key.name))

    def resolution(self, hostname: str) -> Resolution | None:
        return None


def observe_route(obj: dict[str, Any], *gateways: dict[str, Any]) -> Any:
    return HTTP_ROUTE.observe(CLUSTER, obj, Joined(*gateways))


# Gateway API ------------------------------------------------------------------------------


def test_an_accepted_route_has_its_hostnames_and_its_gateways_address() -> None:
    observation = observe_route(route([SHOP]), gateway())
    message = observation.message
    assert message is not None
    assert (message.hosts, message.vips, message.ports) == ([SHOP], ["10.0.0.5"], [80])
    assert message.labels == {"app": "gslb"}
    assert str(message.ref) == "HTTPROUTE/s2/default/shop"


def test_a_route_its_parent_did_not_accept_is_left_out() -> None:
    observation = observe_route(route([SHOP], accepted=[]), gateway())
    assert (observation.message, observation.skip) == (None, Skip.NOT_ACCEPTED)
    refused = route([SHOP])
    refused["status"]["parents"][0]["conditions"][0]["status"] = "False"
    assert observe_route(refused, gateway()).skip == Skip.NOT_ACCEPTED


def test_acceptance_matches_the_parent_ref_with_its_defaults_filled_in() -> None:
    explicit = [{"group": GROUP, "kind": "Gateway", "namespace": "default", "name": "gw"}]
    observation = observe_route(
        route([SHOP], parents=[{"name": "gw"}], accepted=explicit), gateway()
    )
    assert observation.message is not None
    other_section = [{"name": "gw", "sectionName": "https"}]
    assert observe_route(route([SHOP], accepted=other_section), gateway()).message is None


def test_a_gateway_without_an_address_or_not_known_yet_gives_nothing() -> None:
    assert observe_route(route([SHOP]), gateway(ip=None)).skip == Skip.NO_ADDRESS
    assert observe_route(route([SHOP])).skip == Skip.NO_ADDRESS


def test_a_parent_in_another_namespace_is_looked_up_there() -> None:
    parents = [{"name": "gw", "namespace": "infra"}]
    observation = observe_route(route([SHOP], parents), gateway(namespace="infra", ip="10.0.0.9"))
    assert observation.message is not None and observation.message.vips == ["10.0.0.9"]


@pytest.mark.parametrize(
    ("route_host", "listener_host", "effective"),
    [
        (SHOP, "", SHOP),
        (SHOP, SHOP, SHOP),
        (SHOP, "*.avi.iberia.local", SHOP),
        ("a.b.avi.iberia.local", "*.avi.iberia.local", "a.b.avi.iberia.local"),
        ("avi.iberia.local", "*.avi.iberia.local", None),
        ("shop.example.org", "*.avi.iberia.local", None),
        ("*.avi.iberia.local", SHOP, SHOP),
        ("*.a.avi.iberia.local", "*.avi.iberia.local", "*.a.avi.iberia.local"),
        ("*.avi.iberia.local", "*.a.avi.iberia.local", "*.a.avi.iberia.local"),
        ("other.avi.iberia.local", SHOP, None),
    ],
)
def test_listener_hostnames_restrict_route_hostnames_as_the_gateway_api_says(
    route_host: str, listener_host: str, effective: str | None
) -> None:
    assert intersect(route_host, listener_host) == effective


def test_the_route_keeps_only_the_hostnames_its_listeners_allow() -> None:
    listeners = [{"name": "http", "protocol": "HTTP", "port": 80, "hostname": "*.avi.iberia.local"}]
    obj = route([SHOP, "shop.example.org"])
    message = observe_route(obj, gateway(listeners=listeners)).message
    assert message is not None and message.hosts == [SHOP]


def test_a_route_without_hostnames_takes_its_listeners() -> None:
    listeners = [{"name": "http", "protocol": "HTTP", "port": 80, "hostname": SHOP}]
    message = observe_route(route([]), gateway(listeners=listeners)).message
    assert message is not None and message.hosts == [SHOP]
    assert observe_route(route([]), gateway()).skip == Skip.NO_HOST


def test_section_name_picks_the_listener_and_https_gives_tls_hosts_and_its_port() -> None:
    listeners = [
        {"name": "http", "protocol": "HTTP", "port": 80, "hostname": "other.avi.iberia.local"},
        {"name": "https", "protocol": "HTTPS", "port": 443},
    ]
    parents = [{"name": "gw", "sectionName": "https"}]
    message = observe_route(route([SHOP], parents), gateway(listeners=listeners)).message
    assert message is not None
    assert (message.hosts, message.tls_hosts, message.ports) == ([SHOP], [SHOP], [443])


def test_a_tls_route_attaches_only_to_tls_listeners() -> None:
    listeners = [
        {"name": "http", "protocol": "HTTP", "port": 80},
        {"name": "tls", "protocol": "TLS", "port": 8443},
    ]
    obj = route([SHOP])
    message = TLS_ROUTE.observe(CLUSTER, obj, Joined(gateway(listeners=listeners))).message
    assert message is not None and message.ports == [8443]
    assert message.ref.kind == ObjectKind.TLS_ROUTE


# OpenShift Route -------------------------------------------------------------------------


def openshift_route(ingress: list[dict[str, Any]], tls: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"host": SHOP, "path": "/shop"}
    if tls:
        spec["tls"] = {"termination": "edge"}
    return {
        "metadata": {"name": "shop", "namespace": "default", "labels": {"app": "gslb"}},
        "spec": spec,
        "status": {"ingress": ingress},
    }


def admitted(message: str = "10.0.0.7", **extra: str) -> dict[str, Any]:
    condition = {"type": "Admitted", "status": "True", "message": message}
    return {"host": SHOP, "routerName": "ako", "conditions": [condition], **extra}


def test_an_admitted_route_is_served_from_the_routers_vip() -> None:
    message = OPENSHIFT_ROUTE.observe(CLUSTER, openshift_route([admitted()], tls=True)).message
    assert message is not None
    assert (message.hosts, message.vips, message.tls_hosts) == ([SHOP], ["10.0.0.7"], [SHOP])
    assert message.ports == [80, 443] and message.paths[0].path == "/shop"


def test_a_route_no_router_admitted_is_left_out() -> None:
    rejected = admitted()
    rejected["conditions"][0]["status"] = "False"
    for ingress in ([], [rejected]):
        observation = OPENSHIFT_ROUTE.observe(CLUSTER, openshift_route(ingress))
        assert observation.skip == Skip.NOT_ACCEPTED


def test_the_routers_canonical_hostname_is_an_address_or_a_name_to_resolve() -> None:
    by_ip = admitted(message="", routerCanonicalHostname="10.0.0.8")
    message = OPENSHIFT_ROUTE.observe(CLUSTER, openshift_route([by_ip])).message
    assert message is not None and message.vips == ["10.0.0.8"]
    by_name = admitted(message="", routerCanonicalHostname="router.apps.example.test")
    obj = openshift_route([by_name])
    assert OPENSHIFT_ROUTE.observe(CLUSTER, obj).skip == Skip.HOSTNAME_ONLY
    assert {k.name for k in OPENSHIFT_ROUTE.joins(obj)} == {"router.apps.example.test"}


# Load-balancer hostnames -----------------------------------------------------------------


def lb(name: str, entries: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "gslb"}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 443}]},
        "status": {"loadBalancer": {"ingress": entries}},
    }


def messages_of(decision: Decision) -> list[Any]:
    return [m for _, m in decision.messages]


def test_a_hostname_only_service_is_published_once_resolved_and_follows_its_addresses() -> None:
    view = ClusterView(CLUSTER)
    obj = lb("web", [{"hostname": "lb.elb.example.test"}])
    assert view.unresolved(SERVICE.name, [obj]) == {"lb.elb.example.test"}
    assert messages_of(view.resolved("lb.elb.example.test", Resolution(("10.1.0.1",)))) == []
    [published, marker] = messages_of(view.listed(ObjectKind.SERVICE, [obj]))
    assert isinstance(published, ObservedObject) and isinstance(marker, SyncMarker)
    assert (published.vips, published.resolved_from) == (["10.1.0.1"], ["lb.elb.example.test"])
    assert view.hostnames() == ["lb.elb.example.test"]

    [again] = messages_of(view.resolved("lb.elb.example.test", Resolution(("10.1.0.2",))))
    assert isinstance(again, ObservedObject) and again.vips == ["10.1.0.2"]
    unchanged = Resolution(("10.1.0.2",))
    assert messages_of(view.resolved("lb.elb.example.test", unchanged)) == []

    failed = view.resolved("lb.elb.example.test", Resolution((), "NXDOMAIN"))
    assert messages_of(failed) == [], "a failed resolution keeps the addresses it had"
    assert view.resolutions()["lb.elb.example.test"].addresses == ("10.1.0.2",)


def test_an_ip_beside_a_hostname_wins_and_nothing_is_resolved() -> None:
    obj = lb("web", [{"hostname": "lb.elb.example.test"}, {"ip": "10.2.0.1"}])
    assert SERVICE.joins(obj) == frozenset()
    message = SERVICE.observe(CLUSTER, obj).message
    assert message is not None and (message.vips, message.resolved_from) == (["10.2.0.1"], [])


def test_hostnames_no_object_reads_any_more_are_forgotten() -> None:
    view = ClusterView(CLUSTER)
    view.resolved("lb.elb.example.test", Resolution(("10.1.0.1",)))
    view.listed(ObjectKind.SERVICE, [lb("web", [{"hostname": "lb.elb.example.test"}])])
    view.changed(ObjectKind.SERVICE, "DELETED", lb("web", []))
    assert view.hostnames() == [] and view.resolutions() == {}


def test_resolution_is_due_at_the_ttl_within_bounds_or_after_the_period() -> None:
    assert due(100.0, 20.0, 30.0, 5.0) == 120.0
    assert due(100.0, 0.0, 30.0, 5.0) == 105.0
    assert due(100.0, 3600.0, 30.0, 5.0) == 130.0
    assert due(100.0, None, 30.0, 5.0) == 130.0


def test_the_resolver_setting_is_an_ip_with_an_optional_port() -> None:
    assert parse_server("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_server("[::1]:5353") == ("::1", 5353)
    for bad in ("dns.example.test", "127.0.0.1:0", "127.0.0.1:x"):
        with pytest.raises(ValueError, match="expected an IP address"):
            parse_server(bad)


# The view's joins ------------------------------------------------------------------------


def test_routes_listed_before_their_gateways_wait_for_them() -> None:
    view = ClusterView(CLUSTER)
    assert view.listed(ObjectKind.HTTP_ROUTE, [route([SHOP])]).messages == []
    view.changed(ObjectKind.HTTP_ROUTE, "ADDED", route(["b.avi.iberia.local"], name="b"))
    published = messages_of(view.listed("Gateway", [gateway()]))
    observed = [m for m in published if isinstance(m, ObservedObject)]
    assert sorted(m.ref.name for m in observed) == ["b", "shop"]
    marker = published[-1]
    assert isinstance(marker, SyncMarker) and ObjectKind.HTTP_ROUTE in marker.kinds


def test_a_gateway_change_reobserves_its_routes() -> None:
    view = ClusterView(CLUSTER)
    view.listed("Gateway", [gateway()])
    view.listed(ObjectKind.HTTP_ROUTE, [route([SHOP])])
    [moved] = messages_of(view.changed("Gateway", "MODIFIED", gateway(ip="10.0.0.6")))
    assert isinstance(moved, ObservedObject) and moved.vips == ["10.0.0.6"]
    assert messages_of(view.changed("Gateway", "MODIFIED", gateway(ip="10.0.0.6"))) == []
    [gone] = messages_of(view.changed("Gateway", "DELETED", gateway(ip="10.0.0.6")))
    assert isinstance(gone, Tombstone) and gone.ref.name == "shop"


def test_kinds_not_watched_count_as_listed_and_empty() -> None:
    view = ClusterView(CLUSTER, select(["Ingress"]))
    marker = messages_of(view.listed(ObjectKind.INGRESS, []))[-1]
    assert isinstance(marker, SyncMarker)
    assert set(marker.kinds) == set(ObjectKind) - {ObjectKind.NAMESPACE}


def test_sources_are_chosen_by_kind_with_what_they_join() -> None:
    assert [s.name for s in select(["HTTPRoute"])] == ["Namespace", "Gateway", "HTTPRoute"]
    with pytest.raises(ValueError, match=r"unknown source.*Ingres.*known: all, GRPCRoute"):
        select(["Ingres"])


def test_a_gateway_that_reports_only_a_hostname_serves_its_routes_once_resolved() -> None:
    view = ClusterView(CLUSTER)
    gw = gateway(ip=None)
    gw["status"] = {"addresses": [{"type": "Hostname", "value": "gw.elb.example.test"}]}
    assert view.unresolved("Gateway", [gw]) == {"gw.elb.example.test"}
    view.listed("Gateway", [gw])
    assert view.listed(ObjectKind.HTTP_ROUTE, [route([SHOP])]).skipped[0].skip == Skip.NO_ADDRESS
    assert view.hostnames() == ["gw.elb.example.test"]

    [served] = messages_of(view.resolved("gw.elb.example.test", Resolution(("10.3.0.1",))))
    assert isinstance(served, ObservedObject)
    assert (served.vips, served.resolved_from) == (["10.3.0.1"], ["gw.elb.example.test"])


def annotated_ingress(value: str | None) -> dict[str, Any]:
    annotations = {} if value is None else {"kgslb.io/disabled": value}
    return {
        "metadata": {
            "name": "hello", "namespace": "default", "resourceVersion": "1",
            "annotations": annotations,
        },
        "spec": {"rules": [{"host": "hello.avi.iberia.local"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "127.10.25.46"}]}},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("value", "is_disabled"), [(None, False), ("true", True), (" TRUE ", True), ("false", False)]
)
def test_the_disabled_annotation_reads_true_or_false_in_any_case_without_a_warning(
    value: str | None, is_disabled: bool
) -> None:
    observation = INGRESS.observe("s1az1", annotated_ingress(value))
    assert observation.message is not None
    assert observation.message.disabled is is_disabled
    assert observation.warnings == ()


@pytest.mark.parametrize("value", ["yes", "1", "on", ""])
def test_a_disabled_annotation_not_understood_is_ignored_and_said(value: str) -> None:
    observation = INGRESS.observe("s1az1", annotated_ingress(value))
    assert observation.message is not None and not observation.message.disabled
    (warning,) = observation.warnings
    assert warning == (
        f'annotation kgslb.io/disabled={value!r} is not understood (allowed: "true" or '
        '"false"): ignored, the members stay in service'
    )
    decision = Decision()
    decision.publish(observation)
    assert decision.warned == [observation]
