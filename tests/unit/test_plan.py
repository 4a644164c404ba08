"""The reconciler's `plan`, as a specification: selection, weights, merging, precedence,
validation messages, and what stays in force when an edit is rejected."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.reconciler.plan import Compactor, construct, plan
from shared import wire
from shared.models import (
    GslbService,
    Member,
    ObjectKind,
    ObjectRef,
    ObservedObject,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    PolicyState,
    PriorityGroup,
)

HELLO = "hello.avi.iberia.local"
CONFIG = PolicyRef(kind=PolicyKind.GSLB_CONFIG, namespace="avi-system", name="gc-1")
GDP = PolicyRef(kind=PolicyKind.GLOBAL_DEPLOYMENT_POLICY, namespace="avi-system", name="global-gdp")
RULE = PolicyRef(kind=PolicyKind.GSLB_HOST_RULE, namespace="avi-system", name="hello-rule")
CLUSTERS = {"s1az1": "127.10.25.46", "s1az2": "127.10.26.40", "s2": "127.10.23.40"}


def ingress(
    cluster: str,
    vip: str | None = None,
    labels: dict[str, str] | None = None,
    namespace: str = "default",
    name: str = "hello",
    host: str = HELLO,
) -> ObservedObject:
    return ObservedObject(
        ref=ObjectRef(cluster=cluster, kind=ObjectKind.INGRESS, namespace=namespace, name=name),
        resource_version="1",
        labels={"app": "gslb"} if labels is None else labels,
        hosts=[host],
        vips=[vip or CLUSTERS[cluster]],
    )


def namespace(cluster: str, name: str, labels: dict[str, str]) -> ObservedObject:
    return ObservedObject(
        ref=ObjectRef(cluster=cluster, kind=ObjectKind.NAMESPACE, namespace="", name=name),
        resource_version="1",
        labels=labels,
    )


def policy(ref: PolicyRef, spec: dict[str, Any], generation: int = 1) -> PolicyObject:
    return PolicyObject(ref=ref, spec=spec, generation=generation)


def gdp_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "matchRules": {"appSelector": {"label": {"app": "gslb"}}},
        "trafficSplit": [
            {"cluster": "s1az1", "weight": 6},
            {"cluster": "s1az2", "weight": 4},
            {"cluster": "s2", "weight": 2},
        ],
    }
    spec.update(overrides)
    return spec


CONFIG_SPEC = {
    "memberClusters": [{"clusterContext": c} for c in CLUSTERS],
    "zones": [
        {
            "name": "avi.iberia.local",
            "soa": {"mname": "g-dns.iberia.local.", "rname": "hostmaster.iberia.local."},
            "defaultTtlSeconds": 30,
        }
    ],
}


def world(*objects: ObservedObject) -> dict[ObjectRef, ObservedObject]:
    return {o.ref: o for o in objects}


def policies(*objects: PolicyObject) -> dict[PolicyRef, PolicyObject]:
    return {o.ref: o for o in objects}


SEED_WORLD = world(*(ingress(c) for c in CLUSTERS))


def weights(result: Any, fqdn: str = HELLO) -> dict[str, int]:
    return {m.cluster: m.weight for m in result.services[fqdn].all_members()}


def test_seed_gdp_makes_one_service_with_three_weighted_members() -> None:
    result = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp_spec())))
    assert weights(result) == {"s1az1": 6, "s1az2": 4, "s2": 2}
    assert result.services[HELLO].ttl_seconds == 30
    assert result.statuses[GDP].state == PolicyState.ACCEPTED


def test_objects_without_the_app_label_are_not_selected() -> None:
    observed = world(ingress("s1az1"), ingress("s2", labels={"app": "other"}))
    result = plan(observed, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp_spec())))
    assert set(weights(result)) == {"s1az1"}


def test_multi_label_selectors_need_every_label() -> None:
    spec = gdp_spec(matchRules={"appSelector": {"label": {"app": "gslb", "tier": "web"}}})
    observed = world(ingress("s1az1", labels={"app": "gslb", "tier": "web"}), ingress("s2"))
    result = plan(observed, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, spec)))
    assert set(weights(result)) == {"s1az1"}


def test_match_expressions_are_supported() -> None:
    spec = gdp_spec(
        matchRules={
            "appSelector": {
                "matchExpressions": [{"key": "app", "operator": "In", "values": ["gslb", "x"]}]
            }
        }
    )
    observed = world(ingress("s1az1", labels={"app": "x"}), ingress("s2", labels={"app": "y"}))
    result = plan(observed, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, spec)))
    assert set(weights(result)) == {"s1az1"}


def test_namespace_selector_is_anded_with_app_selector() -> None:
    spec = gdp_spec(
        matchRules={
            "appSelector": {"label": {"app": "gslb"}},
            "namespaceSelector": {"label": {"ns": "gslb"}},
        }
    )
    observed = world(
        ingress("s1az1"),
        ingress("s2"),
        namespace("s1az1", "default", {"ns": "gslb"}),
        namespace("s2", "default", {}),
    )
    result = plan(observed, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, spec)))
    assert set(weights(result)) == {"s1az1"}


def test_match_clusters_limits_the_clusters() -> None:
    spec = gdp_spec(matchClusters=[{"cluster": "s1az1"}, {"cluster": "s2"}])
    result = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, spec)))
    assert set(weights(result)) == {"s1az1", "s2"}


def test_clusters_missing_from_the_split_get_weight_1() -> None:
    spec = gdp_spec(trafficSplit=[{"cluster": "s1az1", "weight": 6}])
    result = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, spec)))
    assert weights(result) == {"s1az1": 6, "s1az2": 1, "s2": 1}


def test_members_are_deduplicated_by_ip() -> None:
    observed = world(ingress("s1az1"), ingress("s1az1", name="hello-2"))
    result = plan(observed, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp_spec())))
    members = result.services[HELLO].all_members()
    assert len(members) == 1 and len(members[0].sources) == 2


def test_priority_groups_are_ordered_highest_first() -> None:
    spec = gdp_spec(
        trafficSplit=[
            {"cluster": "s1az1", "weight": 6, "priority": 20},
            {"cluster": "s1az2", "weight": 4, "priority": 20},
            {"cluster": "s2", "weight": 1, "priority": 5},
        ]
    )
    result = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, spec)))
    groups = result.services[HELLO].groups
    assert [g.priority for g in groups] == [20, 5]
    assert {m.cluster for m in groups[1].members} == {"s2"}


def test_host_rule_overrides_gdp_ttl_and_split() -> None:
    rule = policy(
        RULE,
        {"fqdn": HELLO, "ttl": 2, "trafficSplit": [{"cluster": "s2", "weight": 20}]},
    )
    result = plan(
        SEED_WORLD,
        policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp_spec(ttl=10)), rule),
    )
    assert result.services[HELLO].ttl_seconds == 2
    assert weights(result) == {"s1az1": 1, "s1az2": 1, "s2": 20}


def test_gdp_ttl_overrides_the_zone_default() -> None:
    result = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp_spec(ttl=1))))
    assert result.services[HELLO].ttl_seconds == 1


def test_deleting_the_last_member_deletes_the_service() -> None:
    result = plan(world(), policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp_spec())))
    assert result.services == {}


def test_deleting_the_gdp_removes_its_services() -> None:
    result = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC)))
    assert result.services == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            gdp_spec(trafficSplit=[{"cluster": "s3", "weight": 1}]),
            "spec.trafficSplit[0].cluster = 's3': not a member cluster (allowed: s1az1, s1az2, s2)",
        ),
        (
            gdp_spec(trafficSplit=[{"cluster": "s1az1", "weight": -5}]),
            "spec.trafficSplit[0].weight = -5: Input should be greater than or equal to 0",
        ),
        (
            gdp_spec(trafficSplit=[{"cluster": "s1az1", "disabled": "maybe"}]),
            "spec.trafficSplit[0].disabled = 'maybe': Input should be a valid boolean",
        ),
        (
            gdp_spec(trafficSplit=[{"cluster": "s1az1", "weight": 21}]),
            "spec.trafficSplit[0].weight = 21: Input should be less than or equal to 20",
        ),
        (
            gdp_spec(downResponse={"type": "FALLBACK_IP"}),
            "spec.downResponse.type = FALLBACK_IP needs spec.downResponse.fallbackIP",
        ),
        (
            gdp_spec(healthMonitorRefs=["hm"], healthMonitorTemplate={"kind": "http", "path": "/"}),
            "spec.healthMonitorRefs and spec.healthMonitorTemplate are both set",
        ),
        (
            gdp_spec(downResponse={"type": "FALLBACK_IP", "fallbackIP": "10.0.0.300"}),
            "spec.downResponse.fallbackIP = '10.0.0.300'",
        ),
        (gdp_spec(ttl=-1), "spec.ttl = -1: Input should be greater than or equal to 0"),
        (
            gdp_spec(bogus=1),
            "spec.bogus = 1: unknown field (allowed: answers, defaultDomain, downResponse,",
        ),
    ],
)
def test_invalid_gdp_is_rejected_naming_object_field_value_and_rule(
    spec: dict[str, Any], message: str
) -> None:
    result = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, spec)))
    status = result.statuses[GDP]
    assert status.state == PolicyState.REJECTED
    assert status.message.startswith("GlobalDeploymentPolicy avi-system/global-gdp: ")
    assert message in status.message


def test_a_rejected_edit_keeps_the_last_accepted_split() -> None:
    good = policy(GDP, gdp_spec(), generation=1)
    first = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), good))
    bad = policy(GDP, gdp_spec(trafficSplit=[{"cluster": "s1az1", "weight": 99}]), generation=2)

    second = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), bad), first.accepted)

    assert second.statuses[GDP].state == PolicyState.REJECTED
    assert "keeping generation 1" in second.statuses[GDP].message
    assert second.statuses[GDP].observed_generation == 2
    assert weights(second) == {"s1az1": 6, "s1az2": 4, "s2": 2}


def test_a_second_gslbconfig_is_rejected() -> None:
    other = PolicyRef(kind=PolicyKind.GSLB_CONFIG, namespace="zz", name="gc-2")
    result = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), policy(other, CONFIG_SPEC)))
    assert result.statuses[other].state == PolicyState.REJECTED
    assert "only one GSLBConfig can be active" in result.statuses[other].message


def test_two_host_rules_for_one_fqdn_reject_the_second() -> None:
    other = PolicyRef(kind=PolicyKind.GSLB_HOST_RULE, namespace="avi-system", name="zz-rule")
    result = plan(
        SEED_WORLD,
        policies(
            policy(CONFIG, CONFIG_SPEC),
            policy(GDP, gdp_spec()),
            policy(RULE, {"fqdn": HELLO, "ttl": 5}),
            policy(other, {"fqdn": HELLO, "ttl": 9}),
        ),
    )
    assert result.statuses[other].state == PolicyState.REJECTED
    assert "already governed by GSLBHostRule avi-system/hello-rule" in (
        result.statuses[other].message
    )
    assert result.services[HELLO].ttl_seconds == 5


def test_public_ip_is_answered_and_the_vip_probed() -> None:
    rule = policy(RULE, {"fqdn": HELLO, "publicIP": [{"cluster": "s2", "ip": "127.20.0.1"}]})
    result = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp_spec()), rule))
    s2 = next(m for m in result.services[HELLO].all_members() if m.cluster == "s2")
    assert (s2.ip, s2.probe_ip) == ("127.20.0.1", "127.10.23.40")


def test_third_party_members_join_the_service() -> None:
    rule = policy(
        RULE, {"fqdn": HELLO, "thirdPartyMembers": [{"vip": "127.30.0.1", "site": "dc3"}]}
    )
    result = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp_spec()), rule))
    assert weights(result)["dc3"] == 1


def test_zones_come_from_the_active_gslbconfig() -> None:
    result = plan(world(), policies(policy(CONFIG, CONFIG_SPEC)))
    assert set(result.zones) == {"avi.iberia.local"}


def test_amko_algorithm_and_down_response_names_are_accepted() -> None:
    spec = gdp_spec(
        poolAlgorithmSettings={"lbAlgorithm": "GSLB_ALGORITHM_CONSISTENT_HASH", "hashMask": 24},
        downResponse={"type": "GSLB_SERVICE_DOWN_RESPONSE_EMPTY"},
    )
    result = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, spec)))
    service = result.services[HELLO]
    assert (service.algorithm, service.hash_mask_bits) == ("ConsistentHash", 24)
    assert service.down_response.type == "EMPTY"


# Members, selection and merging -------------------------------------------------------------

OTHER_GDP = PolicyRef(kind=PolicyKind.GLOBAL_DEPLOYMENT_POLICY, namespace="avi-system", name="zz")


def lb_service(
    cluster: str, vip: str, name: str = "web", hosts: list[str] | None = None
) -> ObservedObject:
    return ObservedObject(
        ref=ObjectRef(cluster=cluster, kind=ObjectKind.SERVICE, namespace="shop", name=name),
        resource_version="1",
        labels={"app": "gslb"},
        hosts=hosts or [],
        vips=[vip],
    )


def seed_plan(*extra: PolicyObject, gdp: dict[str, Any] | None = None, observed: Any = None):  # type: ignore[no-untyped-def]
    return plan(
        SEED_WORLD if observed is None else observed,
        policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp or gdp_spec()), *extra),
    )


def test_objects_without_a_vip_are_not_members_yet() -> None:
    pending = ingress("s2").model_copy(update={"vips": []})
    result = seed_plan(observed=world(ingress("s1az1"), pending))
    assert set(weights(result)) == {"s1az1"}


def test_objects_of_clusters_outside_member_clusters_are_ignored() -> None:
    result = seed_plan(observed=world(ingress("s1az1"), ingress("s9", vip="127.10.99.1")))
    assert set(weights(result)) == {"s1az1"}


def test_one_vip_shared_by_two_clusters_is_one_member_with_both_sources() -> None:
    observed = world(ingress("s1az1", vip="127.10.0.9"), ingress("s2", vip="127.10.0.9"))
    members = seed_plan(observed=observed).services[HELLO].all_members()
    assert [m.ip for m in members] == ["127.10.0.9"]
    assert members[0].sources == ["INGRESS/s1az1/default/hello", "INGRESS/s2/default/hello"]


def test_sync_vip_only_clusters_give_control_plane_only_members() -> None:
    spec = gdp_spec(
        matchClusters=[
            {"cluster": "s1az1"},
            {"cluster": "s1az2"},
            {"cluster": "s2", "syncVipOnly": True},
        ]
    )
    members = seed_plan(gdp=spec).services[HELLO].all_members()
    assert {m.cluster: m.control_plane_only for m in members} == {
        "s1az1": False,
        "s1az2": False,
        "s2": True,
    }


def test_default_domain_names_load_balancer_services_without_a_hostname() -> None:
    observed = world(lb_service("s1az1", "127.10.25.9"), lb_service("s2", "127.10.23.9"))
    result = seed_plan(gdp=gdp_spec(defaultDomain="avi.iberia.local"), observed=observed)
    assert set(result.services) == {"web.shop.avi.iberia.local"}


def test_a_load_balancer_hostname_wins_over_the_default_domain() -> None:
    observed = world(lb_service("s1az1", "127.10.25.9", hosts=["shop.avi.iberia.local"]))
    result = seed_plan(gdp=gdp_spec(defaultDomain="avi.iberia.local"), observed=observed)
    assert set(result.services) == {"shop.avi.iberia.local"}


def test_services_without_hostname_or_default_domain_are_not_gslb_names() -> None:
    result = seed_plan(observed=world(lb_service("s1az1", "127.10.25.9")))
    assert result.services == {}


def test_an_ingress_with_several_hosts_makes_one_service_per_host() -> None:
    two_hosts = ingress("s1az1").model_copy(update={"hosts": [HELLO, "www.avi.iberia.local"]})
    result = seed_plan(observed=world(two_hosts, ingress("s2")))
    assert set(result.services) == {HELLO, "www.avi.iberia.local"}
    assert set(weights(result, "www.avi.iberia.local")) == {"s1az1"}


def test_wildcard_hosts_are_not_gslb_names() -> None:
    wildcard = ingress("s1az1", host="*.avi.iberia.local")
    assert seed_plan(observed=world(wildcard)).services == {}


def test_the_first_gdp_by_name_owns_an_fqdn_and_the_other_says_so() -> None:
    result = seed_plan(policy(OTHER_GDP, gdp_spec(trafficSplit=[{"cluster": "s2", "weight": 9}])))
    assert weights(result)["s2"] == 2
    assert result.services[HELLO].policies == [str(GDP)]
    assert "1 FQDN(s) it selects belong to an earlier" in result.statuses[OTHER_GDP].message


def test_deleting_one_gdp_removes_only_its_services() -> None:
    other_app = ingress("s2", labels={"app": "shop"}, name="shop", host="shop.avi.iberia.local")
    observed = world(*SEED_WORLD.values(), other_app)
    shop_gdp = policy(OTHER_GDP, gdp_spec(matchRules={"appSelector": {"label": {"app": "shop"}}}))
    both = plan(observed, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp_spec()), shop_gdp))

    after = plan(observed, policies(policy(CONFIG, CONFIG_SPEC), shop_gdp), both.accepted)

    assert set(both.services) == {HELLO, "shop.avi.iberia.local"}
    assert set(after.services) == {"shop.avi.iberia.local"}


def test_accepted_gdp_status_counts_the_services_it_selects() -> None:
    assert seed_plan().statuses[GDP].message == "accepted: selects 1 GSLB service(s)"


def test_empty_match_rules_select_nothing_and_the_status_says_so() -> None:
    result = seed_plan(gdp=gdp_spec(matchRules={}))
    assert result.services == {}
    assert "matchRules is empty: selects nothing" in result.statuses[GDP].message


def test_namespace_match_expressions_select_by_namespace_labels() -> None:
    spec = gdp_spec(
        matchRules={
            "namespaceSelector": {
                "matchExpressions": [{"key": "gslb", "operator": "Exists", "values": []}]
            }
        }
    )
    observed = world(
        ingress("s1az1", labels={}),
        ingress("s2", labels={}),
        namespace("s1az1", "default", {"gslb": "yes"}),
    )
    assert set(weights(seed_plan(gdp=spec, observed=observed))) == {"s1az1"}


def test_answers_asks_for_several_distinct_members() -> None:
    assert seed_plan(gdp=gdp_spec(answers=2)).services[HELLO].answers == 2


# Per-FQDN knobs and precedence: GSLBHostRule > GDP > defaults -------------------------------

RULE_OVERRIDES: list[tuple[str, dict[str, Any], dict[str, Any], str, Any, Any]] = [
    # (knob, GDP fields, host rule fields, service attribute, from GDP, from host rule)
    ("ttl", {"ttl": 10}, {"ttl": 2}, "ttl_seconds", 10, 2),
    (
        "healthMonitorTemplate",
        {"healthMonitorTemplate": {"kind": "tcp", "intervalSeconds": 5, "timeoutSeconds": 2}},
        {"healthMonitorTemplate": {"kind": "https", "path": "/healthz", "expectedCodes": ["200"]}},
        "health_monitor",
        ("tcp", "/", 5.0),
        ("https", "/healthz", 10.0),
    ),
    (
        "poolAlgorithmSettings",
        {"poolAlgorithmSettings": {"lbAlgorithm": "ConsistentHash", "hashMask": 16}},
        {"poolAlgorithmSettings": {"lbAlgorithm": "RoundRobin"}},
        "algorithm",
        "ConsistentHash",
        "RoundRobin",
    ),
    (
        "downResponse",
        {"downResponse": {"type": "EMPTY"}},
        {"downResponse": {"type": "FALLBACK_IP", "fallbackIP": "127.0.0.99"}},
        "down_response",
        ("EMPTY", None),
        ("FALLBACK_IP", "127.0.0.99"),
    ),
    (
        "trafficSplit",
        {"trafficSplit": [{"cluster": "s1az1", "weight": 6}]},
        {"trafficSplit": [{"cluster": "s2", "weight": 20}]},
        "weights",
        {"s1az1": 6, "s1az2": 1, "s2": 1},
        {"s1az1": 1, "s1az2": 1, "s2": 20},
    ),
]


def _knob(result: Any, attribute: str) -> Any:
    service = result.services[HELLO]
    if attribute == "weights":
        return weights(result)
    value = getattr(service, attribute)
    if attribute == "health_monitor":
        return (value.kind, value.path, value.interval_seconds)
    if attribute == "down_response":
        return (value.type, value.fallback_ip)
    return value


@pytest.mark.parametrize(
    ("knob", "gdp_fields", "_rule", "attribute", "expected", "_r"),
    RULE_OVERRIDES,
    ids=[r[0] for r in RULE_OVERRIDES],
)
def test_gdp_knob_applies_to_its_services(
    knob: str, gdp_fields: dict[str, Any], _rule: Any, attribute: str, expected: Any, _r: Any
) -> None:
    assert _knob(seed_plan(gdp=gdp_spec(**gdp_fields)), attribute) == expected


@pytest.mark.parametrize(
    ("knob", "gdp_fields", "rule_fields", "attribute", "_g", "expected"),
    RULE_OVERRIDES,
    ids=[r[0] for r in RULE_OVERRIDES],
)
def test_host_rule_knob_overrides_the_gdp(
    knob: str,
    gdp_fields: dict[str, Any],
    rule_fields: dict[str, Any],
    attribute: str,
    _g: Any,
    expected: Any,
) -> None:
    rule = policy(RULE, {"fqdn": HELLO, **rule_fields})
    assert _knob(seed_plan(rule, gdp=gdp_spec(**gdp_fields)), attribute) == expected


def test_defaults_apply_when_neither_gdp_nor_host_rule_set_a_knob() -> None:
    service = seed_plan(gdp=gdp_spec(trafficSplit=[])).services[HELLO]
    assert service.ttl_seconds == 30
    assert service.algorithm == "RoundRobin"
    assert (service.health_monitor.kind, service.health_monitor.method) == ("http", "HEAD")
    assert (service.health_monitor.interval_seconds, service.health_monitor.timeout_seconds) == (
        10.0,
        4.0,
    )
    assert service.down_response.type == "NONE"
    assert [(g.priority, [m.weight for m in g.members]) for g in service.groups] == [
        (10, [1, 1, 1])
    ]


def test_a_host_rule_for_another_fqdn_changes_nothing() -> None:
    rule = policy(RULE, {"fqdn": "other.avi.iberia.local", "ttl": 2})
    result = seed_plan(rule)
    assert result.services[HELLO].ttl_seconds == 30
    assert "no GSLB service other.avi.iberia.local yet" in result.statuses[RULE].message


def test_host_rule_fqdn_matches_case_and_trailing_dot_insensitively() -> None:
    rule = policy(RULE, {"fqdn": "HELLO.avi.iberia.local.", "ttl": 3})
    result = seed_plan(rule)
    assert result.services[HELLO].ttl_seconds == 3
    assert result.statuses[RULE].message == f"accepted: governs GSLB service {HELLO}"


def test_zone_default_ttl_comes_from_the_most_specific_zone() -> None:
    config = {
        **CONFIG_SPEC,
        "zones": [
            {
                "name": "iberia.local",
                "soa": {"mname": "ns.", "rname": "h."},
                "defaultTtlSeconds": 60,
            },
            {
                "name": "avi.iberia.local",
                "soa": {"mname": "ns.", "rname": "h."},
                "defaultTtlSeconds": 7,
            },
        ],
    }
    result = plan(SEED_WORLD, policies(policy(CONFIG, config), policy(GDP, gdp_spec())))
    assert result.services[HELLO].ttl_seconds == 7


def test_third_party_member_weight_and_priority_come_from_its_site_in_the_split() -> None:
    rule = policy(
        RULE,
        {
            "fqdn": HELLO,
            "thirdPartyMembers": [{"vip": "127.30.0.1", "site": "dc3"}],
            "trafficSplit": [{"cluster": "dc3", "weight": 5, "priority": 1}],
        },
    )
    groups = seed_plan(rule).services[HELLO].groups
    assert [(g.priority, [(m.cluster, m.weight) for m in g.members]) for g in groups] == [
        (10, [("s1az1", 1), ("s1az2", 1), ("s2", 1)]),
        (1, [("dc3", 5)]),
    ]


# Pool algorithms ----------------------------------------------------------------------------


def test_consistent_hash_carries_its_hash_mask() -> None:
    spec = gdp_spec(poolAlgorithmSettings={"lbAlgorithm": "ConsistentHash", "hashMask": 20})
    service = seed_plan(gdp=spec).services[HELLO]
    assert (service.algorithm, service.hash_mask_bits, service.fallback_algorithm) == (
        "ConsistentHash",
        20,
        None,
    )


def test_topology_carries_the_subnet_to_site_map_with_round_robin_fallback_by_default() -> None:
    spec = gdp_spec(
        poolAlgorithmSettings={
            "lbAlgorithm": "Topology",
            "topology": [
                {"clientSubnet": "10.10.0.0/16", "site": "s1az1"},
                {"clientSubnet": "192.168.1.7/24", "site": "s2"},
            ],
        }
    )
    service = seed_plan(gdp=spec).services[HELLO]
    assert service.algorithm == "Topology"
    assert [(t.client_subnet, t.site) for t in service.topology] == [
        ("10.10.0.0/16", "s1az1"),
        ("192.168.1.0/24", "s2"),
    ]
    assert service.fallback_algorithm == "RoundRobin"


def test_topology_with_a_consistent_hash_fallback_carries_the_fallback_mask() -> None:
    spec = gdp_spec(
        poolAlgorithmSettings={
            "lbAlgorithm": "Topology",
            "topology": [{"clientSubnet": "10.10.0.0/16", "site": "s1az1"}],
            "fallbackAlgorithm": {"lbAlgorithm": "ConsistentHash", "hashMask": 24},
        }
    )
    service = seed_plan(gdp=spec).services[HELLO]
    assert (service.fallback_algorithm, service.fallback_hash_mask_bits) == ("ConsistentHash", 24)


def test_topology_sites_may_be_third_party_sites_of_the_host_rule() -> None:
    rule = policy(
        RULE,
        {
            "fqdn": HELLO,
            "thirdPartyMembers": [{"vip": "127.30.0.1", "site": "dc3"}],
            "poolAlgorithmSettings": {
                "lbAlgorithm": "Topology",
                "topology": [{"clientSubnet": "10.30.0.0/16", "site": "dc3"}],
            },
        },
    )
    result = seed_plan(rule)
    assert result.statuses[RULE].state == PolicyState.ACCEPTED
    assert result.services[HELLO].topology[0].site == "dc3"


# Runtime knobs of the GSLBConfig ------------------------------------------------------------


def test_log_level_and_refresh_interval_come_from_the_gslbconfig() -> None:
    config = {**CONFIG_SPEC, "logLevel": "DEBUG", "refreshInterval": 60}
    result = plan(world(), policies(policy(CONFIG, config)))
    assert (result.log_level, result.refresh_interval_seconds) == ("DEBUG", 60)


def test_zones_carry_soa_nameservers_glue_static_records_and_unhandled_policy() -> None:
    config = {
        **CONFIG_SPEC,
        "zones": [
            {
                "name": "avi.iberia.local.",
                "soa": {"mname": "g-dns.iberia.local.", "rname": "h.iberia.local.", "serial": 7},
                "nameservers": [{"name": "g-dns.iberia.local.", "glue": ["127.0.0.1"]}],
                "records": [{"name": "test", "type": "A", "value": "10.10.24.200"}],
                "unhandled": "drop",
            }
        ],
    }
    zone = plan(world(), policies(policy(CONFIG, config))).zones["avi.iberia.local"]
    assert (zone.soa.serial, zone.nameservers[0].glue, zone.unhandled) == (7, ["127.0.0.1"], "drop")
    assert [(r.name, r.type, r.value) for r in zone.records] == [("test", "A", "10.10.24.200")]


# What stays in force ------------------------------------------------------------------------


def test_a_rejected_edit_keeps_the_old_split_after_a_restart_from_published_status() -> None:
    good = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp_spec())))
    published = good.statuses[GDP]
    bad = policy(GDP, gdp_spec(trafficSplit=[{"cluster": "s1az1", "weight": -5}]), generation=2)
    # A fresh reconciler knows generation 1 only from the status the old one published.
    remembered = PolicyObject(
        ref=GDP, generation=published.accepted_generation or 0, spec=published.accepted_spec or {}
    )

    restarted = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), bad), {GDP: remembered})

    assert restarted.statuses[GDP].state == PolicyState.REJECTED
    assert restarted.statuses[GDP].accepted_generation == 1
    assert weights(restarted) == {"s1az1": 6, "s1az2": 4, "s2": 2}


def test_accepted_status_carries_the_spec_in_force() -> None:
    status = seed_plan().statuses[GDP]
    assert (status.accepted_generation, status.accepted_spec) == (1, gdp_spec())


def test_a_rejected_new_object_has_nothing_in_force_and_makes_no_services() -> None:
    result = seed_plan(gdp=gdp_spec(ttl=-5))
    assert result.services == {}
    assert result.statuses[GDP].accepted_spec is None
    assert "keeping generation" not in result.statuses[GDP].message


def test_removing_a_member_cluster_rejects_a_gdp_naming_it_but_keeps_it_in_force() -> None:
    first = seed_plan()
    shrunk = {
        **CONFIG_SPEC,
        "memberClusters": [{"clusterContext": "s1az1"}, {"clusterContext": "s1az2"}],
    }

    after = plan(
        SEED_WORLD,
        policies(policy(CONFIG, shrunk, generation=2), policy(GDP, gdp_spec())),
        first.accepted,
    )

    assert after.statuses[GDP].state == PolicyState.REJECTED
    assert (
        "spec.trafficSplit[2].cluster = 's2': not a member cluster" in after.statuses[GDP].message
    )
    assert weights(after) == {"s1az1": 6, "s1az2": 4}


def test_the_active_gslbconfig_stays_active_when_another_appears() -> None:
    first = plan(world(), policies(policy(CONFIG, CONFIG_SPEC)))
    newcomer = PolicyRef(kind=PolicyKind.GSLB_CONFIG, namespace="aaa", name="gc-0")

    after = plan(
        world(),
        policies(policy(CONFIG, CONFIG_SPEC), policy(newcomer, CONFIG_SPEC)),
        first.accepted,
    )

    assert after.statuses[CONFIG].state == PolicyState.ACCEPTED
    assert after.statuses[newcomer].message == (
        "GSLBConfig aaa/gc-0: only one GSLBConfig can be active and GSLBConfig avi-system/gc-1 is"
    )


def test_the_governing_host_rule_keeps_its_fqdn_when_another_claims_it() -> None:
    first = seed_plan(policy(RULE, {"fqdn": HELLO, "ttl": 5}))
    newcomer = PolicyRef(kind=PolicyKind.GSLB_HOST_RULE, namespace="avi-system", name="aa-rule")

    after = plan(
        SEED_WORLD,
        policies(
            policy(CONFIG, CONFIG_SPEC),
            policy(GDP, gdp_spec()),
            policy(RULE, {"fqdn": HELLO, "ttl": 5}),
            policy(newcomer, {"fqdn": HELLO, "ttl": 9}),
        ),
        first.accepted,
    )

    assert after.services[HELLO].ttl_seconds == 5
    assert after.statuses[newcomer].state == PolicyState.REJECTED


def test_construct_builds_the_model_that_validation_builds() -> None:
    values: dict[str, Any] = {
        "ip": "127.10.25.46",
        "cluster": "s1az1",
        "weight": 6,
        "monitor_ip": None,
        "sources": ["s1az1/Ingress/default/hello"],
        "control_plane_only": False,
        "disabled": False,
    }

    built = construct(Member, set(values), dict(values))
    validated = Member(**values)

    assert built == validated
    assert built.model_dump_json(by_alias=True) == validated.model_dump_json(by_alias=True)
    assert built.model_copy(update={"weight": 2}) == Member(**{**values, "weight": 2})
    with pytest.raises(ValidationError):
        built.weight = 3  # type: ignore[misc]  # frozen, like a validated one


def test_compacted_observed_objects_equal_the_received_ones() -> None:
    received = ObservedObject(
        ref=ObjectRef(cluster="s1az1", kind=ObjectKind.INGRESS, namespace="default", name="a"),
        resource_version="7",
        labels={"app": "gslb"},
        hosts=["a.avi.iberia.local"],
        vips=["127.10.25.46"],
    )

    kept = Compactor().observed(received)

    assert kept == received
    assert kept.ref == received.ref and hash(kept.ref) == hash(received.ref)
    assert wire.encode(kept) == wire.encode(received)


LOCATED_CONFIG = {
    **CONFIG_SPEC,
    "memberClusters": [
        {"clusterContext": "s1az1", "location": {"country": "ES", "continent": "EU"}},
        {"clusterContext": "s1az2", "location": {"latitude": 50.1, "longitude": 8.7}},
        {"clusterContext": "s2"},
    ],
}


@pytest.mark.parametrize(
    ("config", "gdp", "rule"),
    [
        (CONFIG_SPEC, gdp_spec(), None),
        (CONFIG_SPEC, gdp_spec(ttl=5, answers=2, manualResume=True), None),
        (
            CONFIG_SPEC,
            gdp_spec(
                poolAlgorithmSettings={"lbAlgorithm": "ConsistentHash", "hashMask": 20},
                downResponse={"type": "FALLBACK_IP", "fallbackIP": "127.40.0.1"},
            ),
            None,
        ),
        (
            CONFIG_SPEC,
            gdp_spec(
                poolAlgorithmSettings={
                    "lbAlgorithm": "Topology",
                    "topology": [{"clientSubnet": "10.10.0.0/16", "site": "s1az1"}],
                    "fallbackAlgorithm": {"lbAlgorithm": "ConsistentHash", "hashMask": 24},
                }
            ),
            None,
        ),
        (LOCATED_CONFIG, gdp_spec(poolAlgorithmSettings={"lbAlgorithm": "Geo"}), None),
        (
            CONFIG_SPEC,
            gdp_spec(),
            {
                "fqdn": HELLO,
                "ttl": 7,
                "trafficSplit": [{"cluster": "s1az1", "weight": 1, "priority": 5}],
                "publicIP": [{"cluster": "s2", "ip": "127.20.0.1"}],
                "thirdPartyMembers": [{"vip": "127.30.0.1", "site": "dc3"}],
            },
        ),
    ],
    ids=["seed", "ttl-answers-resume", "hash-fallback-ip", "topology", "geo", "host-rule"],
)
def test_planned_services_equal_the_validated_model(
    config: dict[str, Any], gdp: dict[str, Any], rule: dict[str, Any] | None
) -> None:
    """The planner constructs services without validating them again (their inputs are
    validated): what it builds must be exactly what validation would build, in value, in
    types and on the wire."""
    extra = [policy(RULE, rule)] if rule else []
    result = plan(SEED_WORLD, policies(policy(CONFIG, config), policy(GDP, gdp), *extra))
    assert result.statuses[GDP].state == PolicyState.ACCEPTED
    built = result.services[HELLO]

    validated = GslbService.model_validate(built.model_dump())

    assert built == validated
    assert wire.encode(built) == wire.encode(validated)
    for name in GslbService.model_fields:
        assert type(getattr(built, name)) is type(getattr(validated, name)), name
    for built_group, group in zip(built.groups, validated.groups, strict=True):
        assert type(built_group) is PriorityGroup and built_group == group
