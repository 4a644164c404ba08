"""The reconciler's `plan`, as a specification: selection, weights, merging, precedence,
validation messages, and what stays in force when an edit is rejected."""

from __future__ import annotations

from typing import Any

import pytest

from services.reconciler.plan import plan
from shared.models import (
    ObjectKind,
    ObjectRef,
    ObservedObject,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    PolicyState,
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
            gdp_spec(trafficSplit=[{"cluster": "s1az1", "weight": 0}]),
            "spec.trafficSplit[0].weight = 0: Input should be greater than or equal to 1",
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
            gdp_spec(
                healthMonitorRefs=["hm"], healthMonitorTemplate={"kind": "http", "path": "/"}
            ),
            "spec.healthMonitorRefs and spec.healthMonitorTemplate are both set",
        ),
        (
            gdp_spec(downResponse={"type": "FALLBACK_IP", "fallbackIP": "10.0.0.300"}),
            "spec.downResponse.fallbackIP = '10.0.0.300'",
        ),
        (gdp_spec(ttl=-1), "spec.ttl = -1: Input should be greater than or equal to 0"),
        (gdp_spec(bogus=1), "spec.bogus = 1: Extra inputs are not permitted"),
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
    result = plan(
        SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp_spec()), rule)
    )
    s2 = next(m for m in result.services[HELLO].all_members() if m.cluster == "s2")
    assert (s2.ip, s2.probe_ip) == ("127.20.0.1", "127.10.23.40")


def test_third_party_members_join_the_service() -> None:
    rule = policy(RULE, {"fqdn": HELLO, "thirdPartyMembers": [{"vip": "127.30.0.1", "site": "dc3"}]})
    result = plan(
        SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp_spec()), rule)
    )
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
