"""Drain and disable: a trafficSplit weight of 0 drains a cluster (its members stay in the
service, are probed, and are not answered); `disabled: true` in a trafficSplit entry or the
`kgslb.io/disabled: "true"` annotation on an object disables members (kept, neither probed nor
answered); `kgslb import-amko` maps AMKO's `priority: 0` (disable) to `disabled: true`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.dns.server import DnsEngine
from services.health.monitor import targets_of
from services.reconciler.plan import plan
from services.watcher.translate import observe
from shared.models import (
    DownResponse,
    DownResponseType,
    GslbService,
    HealthState,
    Member,
    ObjectKind,
    PolicyObject,
    PolicyRef,
    PriorityGroup,
)
from shared.subjects import member_key
from tests.unit.test_dns_answers import HELLO, addresses, ask, seeded_engine
from tests.unit.test_plan import (
    CONFIG,
    CONFIG_SPEC,
    GDP,
    SEED_WORLD,
    gdp_spec,
    ingress,
    policies,
    policy,
    world,
)

S1AZ1, S1AZ2, S2 = "127.10.25.46", "127.10.26.40", "127.10.23.40"


def members(spec: dict[str, Any], observed: Any = SEED_WORLD) -> dict[str, Member]:
    result = plan(observed, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, spec)))
    return {m.cluster: m for m in result.services[HELLO].all_members()}


# Planning -------------------------------------------------------------------------------------


def test_weight_0_keeps_the_cluster_as_a_drained_member() -> None:
    planned = members(gdp_spec(trafficSplit=[{"cluster": "s2", "weight": 0}]))

    assert set(planned) == {"s1az1", "s1az2", "s2"}
    assert (planned["s2"].weight, planned["s2"].answered) == (0, False)
    assert planned["s1az1"].answered


def test_a_disabled_split_entry_disables_the_cluster_members() -> None:
    planned = members(gdp_spec(trafficSplit=[{"cluster": "s2", "weight": 2, "disabled": True}]))

    assert planned["s2"].disabled and not planned["s2"].answered
    assert not planned["s1az1"].disabled


def test_the_disabled_annotation_on_an_object_disables_its_member() -> None:
    observed = world(
        ingress("s1az1"),
        ingress("s1az2"),
        ingress("s2").model_copy(update={"disabled": True}),
    )
    planned = members(gdp_spec(), observed)

    assert planned["s2"].disabled
    assert not planned["s1az1"].disabled


def test_a_host_rule_can_disable_one_fqdn_of_a_cluster() -> None:
    rule = policy(
        PolicyRef(kind="GSLBHostRule", namespace="avi-system", name="hello-rule"),  # type: ignore[arg-type]
        {"fqdn": HELLO, "trafficSplit": [{"cluster": "s1az1", "disabled": True}]},
    )
    result = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), policy(GDP, gdp_spec()), rule))
    planned = {m.cluster: m for m in result.services[HELLO].all_members()}

    assert planned["s1az1"].disabled and not planned["s2"].disabled


# Translation ------------------------------------------------------------------------------------


def annotated_ingress(value: str | None) -> dict[str, Any]:
    annotations = {} if value is None else {"kgslb.io/disabled": value}
    return {
        "metadata": {
            "name": "hello",
            "namespace": "default",
            "resourceVersion": "7",
            "annotations": annotations,
        },
        "spec": {"rules": [{"host": HELLO}]},
        "status": {"loadBalancer": {"ingress": [{"ip": S2}]}},
    }


@pytest.mark.parametrize(
    ("value", "disabled"),
    [
        ("true", True),
        ("True", True),
        (" TRUE ", True),
        ("false", False),
        ("yes", False),
        (None, False),
    ],
)
def test_the_watcher_reads_the_disabled_annotation(value: str | None, disabled: bool) -> None:
    observation = observe("s2", ObjectKind.INGRESS, annotated_ingress(value))

    assert observation.message is not None
    assert observation.message.disabled is disabled


# DNS and health -------------------------------------------------------------------------------


def service(
    s2: dict[str, Any], down: DownResponse | None = None, s1: dict[str, Any] | None = None
) -> GslbService:
    return GslbService(
        fqdn=HELLO,
        ttl_seconds=30,
        groups=[
            PriorityGroup(
                priority=10,
                members=[
                    Member(ip=S1AZ1, cluster="s1az1", **({"weight": 1} | (s1 or {}))),
                    Member(ip=S2, cluster="s2", **({"weight": 2} | s2)),
                ],
            )
        ],
        down_response=down or DownResponse(),
    )


def answered(engine: DnsEngine, count: int = 12) -> set[str]:
    return {ip for _ in range(count) for ip in addresses(ask(engine, HELLO))}


@pytest.mark.parametrize("idle", [{"weight": 0}, {"disabled": True}], ids=["drained", "disabled"])
def test_the_dns_never_answers_a_drained_or_disabled_member(idle: dict[str, Any]) -> None:
    assert answered(seeded_engine(service({}))) == {S1AZ1, S2}
    assert answered(seeded_engine(service(idle))) == {S1AZ1}


def test_a_drained_member_is_not_answered_even_with_all_records_down_response() -> None:
    engine = seeded_engine(service({"weight": 0}, DownResponse(type=DownResponseType.ALL_RECORDS)))
    engine.table.set_health(member_key(HELLO, S1AZ1), HealthState.DOWN)

    assert answered(engine) == {S1AZ1}


def test_when_every_member_is_drained_the_down_response_answers() -> None:
    down = DownResponse(type=DownResponseType.FALLBACK_IP, fallback_ip="127.10.99.1")
    engine = seeded_engine(service({"weight": 0}, down, s1={"weight": 0}))

    assert answered(engine) == {"127.10.99.1"}


def test_health_probes_drained_members_and_not_disabled_ones() -> None:
    probed = {t.ip for t in targets_of(service({"weight": 0})).values()}
    assert probed == {S1AZ1, S2}

    probed = {t.ip for t in targets_of(service({"disabled": True})).values()}
    assert probed == {S1AZ1}


# import-amko ----------------------------------------------------------------------------------

AMKO_GDP = """
apiVersion: amko.vmware.com/v1alpha2
kind: GlobalDeploymentPolicy
metadata: {name: global-gdp, namespace: avi-system}
spec:
  matchRules:
    appSelector: {label: {app: gslb}}
  matchClusters: [{cluster: s1az1}, {cluster: s1az2}, {cluster: s2}]
  trafficSplit:
    - {cluster: s1az1, weight: 6, priority: 20}
    - {cluster: s1az2, weight: 4, priority: 20}
    - {cluster: s2, weight: 2, priority: 0}
"""


def test_import_amko_maps_priority_0_to_a_disabled_member(tmp_path: Path) -> None:
    source = tmp_path / "gdp.yaml"
    source.write_text(AMKO_GDP)
    done = subprocess.run(
        [sys.executable, "-m", "kgslb", "import-amko", str(source)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    (gdp,) = list(yaml.safe_load_all(done.stdout))
    assert gdp["spec"]["trafficSplit"][2] == {"cluster": "s2", "weight": 2, "disabled": True}
    assert "trafficSplit[2].priority: 0 disables 's2' in AMKO" in done.stderr

    imported = PolicyObject(ref=GDP, spec=gdp["spec"])
    result = plan(SEED_WORLD, policies(policy(CONFIG, CONFIG_SPEC), imported))
    planned = {m.cluster: m for m in result.services[HELLO].all_members()}
    assert planned["s2"].disabled and not planned["s2"].answered
    assert not planned["s1az1"].disabled and not planned["s1az2"].disabled
