"""The reconciler plans every source kind alike: a route is selected by its labels and its
namespace's labels like an Ingress, merges with the Ingresses of other clusters, and names its
member by the object (with the load-balancer hostname its address was resolved from)."""

from __future__ import annotations

from services.reconciler.plan import plan
from shared import wire
from shared.models import ObjectKind, ObjectRef, ObservedObject, PolicyObject, PolicyRef
from tests.unit.test_plan import (
    CONFIG,
    CONFIG_SPEC,
    GDP,
    HELLO,
    gdp_spec,
    ingress,
    namespace,
    policy,
)


def observed(
    kind: ObjectKind,
    cluster: str = "s2",
    vip: str = "127.10.23.50",
    shop: str = "shop",
    resolved_from: list[str] | None = None,
) -> ObservedObject:
    return ObservedObject(
        ref=ObjectRef(cluster=cluster, kind=kind, namespace=shop, name="web"),
        resource_version="1",
        labels={"app": "gslb"},
        hosts=[HELLO],
        vips=[vip],
        resolved_from=resolved_from or [],
    )


def policies(**overrides: object) -> dict[PolicyRef, PolicyObject]:
    return {
        CONFIG: policy(CONFIG, CONFIG_SPEC),
        GDP: policy(GDP, gdp_spec(**overrides)),
    }


def test_a_route_in_a_selected_namespace_is_a_member_beside_an_ingress() -> None:
    route = observed(ObjectKind.HTTP_ROUTE)
    objects = [route, ingress("s1az1"), namespace("s2", "shop", {"gslb": "on"})]
    selector = {
        "appSelector": {"label": {"app": "gslb"}},
        "namespaceSelector": {"label": {"gslb": "on"}},
    }
    result = plan({o.ref: o for o in objects}, policies(matchRules=selector))
    members = result.services[HELLO].all_members()
    assert {(m.cluster, m.ip) for m in members} == {("s2", "127.10.23.50")}, (
        "the Ingress of s1az1 lives in a namespace without the label"
    )
    assert members[0].sources == ["HTTPROUTE/s2/shop/web"]

    unlabelled = [route, namespace("s2", "shop", {})]
    assert plan({o.ref: o for o in unlabelled}, policies(matchRules=selector)).services == {}


def test_every_route_kind_is_planned_and_no_route_is_named_by_the_default_domain() -> None:
    for kind in (ObjectKind.GRPC_ROUTE, ObjectKind.TLS_ROUTE, ObjectKind.ROUTE):
        obj = observed(kind).model_copy(update={"hosts": []})
        result = plan({obj.ref: obj}, policies(defaultDomain="avi.iberia.local"))
        assert result.services == {}, f"{kind} without hosts serves nothing"
        obj = observed(kind)
        assert plan({obj.ref: obj}, policies()).services[HELLO].all_members()[0].ip == (
            "127.10.23.50"
        )


def test_a_member_resolved_from_a_hostname_says_so_and_the_wire_omits_it_otherwise() -> None:
    obj = observed(ObjectKind.SERVICE, resolved_from=["lb-1.elb.example.test"])
    [member] = plan({obj.ref: obj}, policies()).services[HELLO].all_members()
    assert member.sources == ["SERVICE/s2/shop/web via lb-1.elb.example.test"]
    assert b"resolvedFrom" in wire.encode(obj)
    assert b"resolvedFrom" not in wire.encode(observed(ObjectKind.SERVICE))
    assert wire.decode(wire.encode(obj), ObservedObject) == obj
