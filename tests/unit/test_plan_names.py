"""Names that cannot be GSLB services, and status messages that stay readable: a host that is
not a DNS hostname or lies outside every zone is never planned, and the status of the policy
that selected it says why; a status lists at most ten problems in at most 1 KB."""

from __future__ import annotations

from typing import Any

from services.reconciler.messages import MAX_STATUS_MESSAGE_BYTES, bounded_message
from services.reconciler.names import newly_rejected
from services.reconciler.plan import Planner, plan
from shared.models import PolicyState, Tombstone
from shared.names import NameProblem
from tests.unit.test_plan import (
    CONFIG,
    CONFIG_SPEC,
    GDP,
    HELLO,
    RULE,
    SEED_WORLD,
    gdp_spec,
    ingress,
    lb_service,
    policies,
    policy,
    world,
)

LABEL_70 = "x" * 70
BAD_HOST = f"{LABEL_70}.avi.iberia.local"
SEED_POLICIES = policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp_spec()))
SEED_MESSAGE = "accepted: selects 1 GSLB service(s)"


def bad_ingress(host: str = BAD_HOST, name: str = "bad") -> Any:
    return ingress("s2", vip="127.10.23.41", name=name, host=host)


# Hosts that are not DNS hostnames -------------------------------------------------------------


def test_a_host_with_a_70_octet_label_is_not_planned_and_the_gdp_status_says_so() -> None:
    result = plan(world(*SEED_WORLD.values(), bad_ingress()), SEED_POLICIES)

    assert set(result.services) == {HELLO}
    assert result.statuses[GDP].state == PolicyState.ACCEPTED
    assert result.statuses[GDP].message == (
        f"{SEED_MESSAGE}; Ingress s2/default/bad: host '{'x' * 37}...' label 1 is 70 octets "
        "(max 63); not planned"
    )
    assert result.rejected_names[BAD_HOST].bad.problem == NameProblem.LABEL_TOO_LONG


def test_deleting_the_object_with_the_bad_host_leaves_no_trace() -> None:
    planner = Planner()
    for message in [*SEED_POLICIES.values(), *SEED_WORLD.values(), bad_ingress()]:
        planner.apply(message)
    planner.replan()

    planner.apply(Tombstone(ref=bad_ingress().ref))
    planner.replan()

    clean = plan(SEED_WORLD, SEED_POLICIES)
    assert planner.rejected_names == {}
    assert planner.statuses[GDP].message == clean.statuses[GDP].message == SEED_MESSAGE
    assert planner.services == clean.services


def test_a_host_outside_every_zone_is_not_planned_and_the_gdp_status_says_so() -> None:
    outside = bad_ingress(host="hello.example.com", name="elsewhere")

    result = plan(world(*SEED_WORLD.values(), outside), SEED_POLICIES)

    assert set(result.services) == {HELLO}
    assert result.statuses[GDP].message == (
        f"{SEED_MESSAGE}; Ingress s2/default/elsewhere: host 'hello.example.com' lies outside "
        "every zone of the GSLBConfig (zones: avi.iberia.local); not planned"
    )


def test_without_any_zone_every_hostname_is_planned_as_before() -> None:
    no_zones = {**CONFIG_SPEC, "zones": []}
    outside = bad_ingress(host="hello.example.com", name="elsewhere")

    result = plan(world(outside), policies(policy(CONFIG, no_zones), policy(GDP, gdp_spec())))

    assert set(result.services) == {"hello.example.com"}


def test_one_rejection_names_the_first_object_and_counts_the_others() -> None:
    observed = world(*(ingress(c, host=BAD_HOST) for c in ("s1az1", "s1az2", "s2")))

    result = plan(observed, SEED_POLICIES)

    assert result.services == {}
    assert "; Ingress s1az1/default/hello (and 2 more): host " in result.statuses[GDP].message


def test_a_default_domain_name_longer_than_253_octets_is_not_planned() -> None:
    domain = f"{'a' * 63}.{'b' * 63}.{'c' * 50}.avi.iberia.local"
    service = lb_service("s1az1", "127.10.25.9", name="w" * 63)

    result = plan(world(service), policies(
        policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp_spec(defaultDomain=domain))
    ))  # fmt: skip

    assert result.services == {}
    assert f"Service s1az1/shop/{'w' * 63}: host " in result.statuses[GDP].message
    assert "is 264 octets (max 253); not planned" in result.statuses[GDP].message


def test_a_host_rule_for_a_name_outside_every_zone_says_no_service_can_be_planned() -> None:
    rule = policy(RULE, {"fqdn": "hello.example.com", "ttl": 5})

    status = plan(SEED_WORLD, {**SEED_POLICIES, RULE: rule}).statuses[RULE]

    assert status.state == PolicyState.ACCEPTED
    assert status.message == (
        "accepted: host 'hello.example.com' lies outside every zone of the GSLBConfig "
        "(zones: avi.iberia.local); no GSLB service can be planned for it"
    )


def test_a_host_rule_for_a_rejected_name_says_why_it_is_not_planned() -> None:
    rule = policy(RULE, {"fqdn": "hello.example.com", "ttl": 5})
    outside = bad_ingress(host="hello.example.com", name="elsewhere")

    status = plan(world(outside), {**SEED_POLICIES, RULE: rule}).statuses[RULE]

    assert status.message == (
        "accepted: Ingress s2/default/elsewhere: host 'hello.example.com' lies outside every "
        "zone of the GSLBConfig (zones: avi.iberia.local); not planned"
    )


def test_a_host_rule_fqdn_must_be_a_hostname() -> None:
    rule = policy(RULE, {"fqdn": "_sip.avi.iberia.local"})

    status = plan(SEED_WORLD, {**SEED_POLICIES, RULE: rule}).statuses[RULE]

    assert status.state == PolicyState.REJECTED
    assert "spec.fqdn = '_sip.avi.iberia.local': not a hostname: label 1 has '_'" in (
        status.message
    )


def test_a_rejected_name_is_new_once_not_on_every_replan() -> None:
    planner = Planner()
    for message in [*SEED_POLICIES.values(), *SEED_WORLD.values(), bad_ingress()]:
        planner.apply(message)
    planner.replan()
    first = dict(planner.rejected_names)

    planner.apply(ingress("s1az1", vip="127.10.25.47"))
    planner.invalidate()
    planner.replan()

    assert [r.fqdn for r in newly_rejected({}, first)] == [BAD_HOST]
    assert newly_rejected(first, planner.rejected_names) == []


def test_a_zone_added_for_a_rejected_host_plans_it_and_clears_the_note() -> None:
    outside = bad_ingress(host="hello.example.com", name="elsewhere")
    soa = {"mname": "ns.example.com.", "rname": "h.example.com."}
    more_zones = {
        **CONFIG_SPEC,
        "zones": [*CONFIG_SPEC["zones"], {"name": "example.com", "soa": soa}],
    }
    planner = Planner()
    for message in [*SEED_POLICIES.values(), *SEED_WORLD.values(), outside]:
        planner.apply(message)
    planner.replan()

    planner.apply(policy(CONFIG, more_zones, generation=2))
    planner.replan()

    full = plan(
        world(*SEED_WORLD.values(), outside),
        {**SEED_POLICIES, CONFIG: policy(CONFIG, more_zones, 2)},
    )
    assert set(planner.services) == set(full.services) == {HELLO, "hello.example.com"}
    assert planner.rejected_names == full.rejected_names == {}
    assert (
        planner.statuses[GDP].message
        == full.statuses[GDP].message
        == ("accepted: selects 2 GSLB service(s)")
    )


# Bounded status messages ----------------------------------------------------------------------


def split_of(entries: int, weight: int = 1) -> list[dict[str, Any]]:
    return [{"cluster": f"unknown-{i}", "weight": weight} for i in range(entries)]


def test_500_traffic_split_entries_for_unknown_clusters_get_a_bounded_status() -> None:
    gdp = policy(GDP, gdp_spec(trafficSplit=split_of(500)))

    status = plan(SEED_WORLD, {**SEED_POLICIES, GDP: gdp}).statuses[GDP]

    assert status.state == PolicyState.REJECTED
    assert len(status.message.encode()) <= MAX_STATUS_MESSAGE_BYTES
    assert status.message.count("not a member cluster") == 10
    assert status.message.endswith("; ... and 490 more")


def test_500_invalid_traffic_split_entries_get_a_bounded_status() -> None:
    gdp = policy(GDP, gdp_spec(trafficSplit=split_of(500, weight=-5)))

    status = plan(SEED_WORLD, {**SEED_POLICIES, GDP: gdp}).statuses[GDP]

    assert len(status.message.encode()) <= MAX_STATUS_MESSAGE_BYTES
    assert status.message.startswith(
        "GlobalDeploymentPolicy avi-system/global-gdp: spec.trafficSplit[0].weight = -5"
    )
    assert status.message.endswith("; ... and 490 more")


def test_500_rejected_names_get_a_bounded_accepted_status() -> None:
    bad = [bad_ingress(host=f"{LABEL_70}{i}.avi.iberia.local", name=f"bad{i}") for i in range(500)]

    status = plan(world(*SEED_WORLD.values(), *bad), SEED_POLICIES).statuses[GDP]

    assert status.state == PolicyState.ACCEPTED
    assert status.message.startswith(f"{SEED_MESSAGE}; Ingress s2/default/bad")
    assert len(status.message.encode()) <= MAX_STATUS_MESSAGE_BYTES
    shown = status.message.count("; not planned")
    assert 1 <= shown <= 10
    assert status.message.endswith(f"; ... and {500 - shown} more")


def test_one_problem_longer_than_the_bound_is_cut() -> None:
    message = bounded_message("GDP a/b: ", ["é" * 2000, "second" * 10, "third"], max_bytes=200)

    assert len(message.encode()) <= 200
    assert message.startswith("GDP a/b: éé") and message.endswith("é...; ... and 2 more")


def test_a_short_message_is_left_whole() -> None:
    problems = [f"problem {i}" for i in range(3)]

    assert bounded_message("x: ", problems, " (tail)") == (
        "x: problem 0; problem 1; problem 2 (tail)"
    )
