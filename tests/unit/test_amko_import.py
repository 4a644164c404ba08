"""`kgslb import-amko`: the seed's AMKO helm values and AMKO resources become kgslb
resources; every AMKO field is mapped or reported, and the seed's typo is caught."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from kgslb.amko_import import Report, convert
from services.reconciler.validation import validate
from shared.models import PolicyKind, PolicyObject, PolicyRef, PolicyState

ROOT = Path(__file__).resolve().parents[2]
SEED_VALUES = ROOT / "examples" / "amko" / "values_amko.yaml"


def seed_report() -> Report:
    return convert(yaml.safe_load_all(SEED_VALUES.read_text()))


def by_kind(report: Report) -> dict[str, dict[str, Any]]:
    return {r["kind"]: r for r in report.resources}


def test_seed_values_become_the_gslbconfig_and_gdp_amko_would_create() -> None:
    resources = by_kind(seed_report())
    config, gdp = resources["GSLBConfig"], resources["GlobalDeploymentPolicy"]
    assert config["apiVersion"] == gdp["apiVersion"] == "kgslb.io/v1alpha1"
    assert (config["metadata"], gdp["metadata"]) == (
        {"name": "gc-1", "namespace": "avi-system"},
        {"name": "global-gdp", "namespace": "avi-system"},
    )
    assert config["spec"] == {
        "memberClusters": [{"clusterContext": c} for c in ("s1az1", "s1az2", "s2")],
        "refreshInterval": 1800,
        "logLevel": "INFO",
    }
    assert gdp["spec"]["matchRules"] == {"appSelector": {"label": {"app": "gslb"}}}
    assert gdp["spec"]["trafficSplit"] == [
        {"cluster": "s1az1", "weight": 6},
        {"cluster": "s1az2", "weight": 4},
        {"cluster": "s2", "weight": 2},
    ]


def test_the_seed_typo_is_warned_about_twice_listed_and_forgotten_cluster() -> None:
    report = seed_report()
    gdp = by_kind(report)["GlobalDeploymentPolicy"]
    assert gdp["spec"]["matchClusters"] == [{"cluster": "s1az1"}, {"cluster": "s2"}]
    assert "globalDeploymentPolicy.matchClusters[1]: 's1az1' is listed twice; kept once" in (
        report.warnings
    )
    assert any(
        w.startswith("globalDeploymentPolicy.matchClusters: member cluster(s) s1az2 not listed")
        for w in report.warnings
    )


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [p for key, value in node.items() for p in _leaf_paths(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


MAPPED = {
    "configs.memberClusters",
    "configs.refreshInterval",
    "configs.logLevel",
    "globalDeploymentPolicy.appSelector.label.app",
    "globalDeploymentPolicy.matchClusters",
    "globalDeploymentPolicy.trafficSplit",
}


def test_every_seed_value_is_mapped_or_reported_unsupported() -> None:
    report = seed_report()
    reported = [entry.split(": ", 1)[0] for entry in report.unsupported]
    values = yaml.safe_load(SEED_VALUES.read_text())
    unaccounted = [
        path
        for path in _leaf_paths(values)
        if path not in MAPPED and not any(path == r or path.startswith(r + ".") for r in reported)
    ]
    assert unaccounted == []
    assert [path for path in reported if path in MAPPED] == []


def test_credentials_never_appear_in_the_output_or_the_report() -> None:
    report = seed_report()
    text = yaml.safe_dump_all(report.resources) + "\n".join(report.unsupported + report.warnings)
    assert "Password01" not in text


def test_converted_seed_resources_fit_the_crds_and_the_reconciler_accepts_them() -> None:
    report = seed_report()
    for resource in report.resources:
        plural = {
            "GSLBConfig": "gslbconfigs",
            "GlobalDeploymentPolicy": "globaldeploymentpolicies",
        }[resource["kind"]]
        crd = yaml.safe_load((ROOT / "deploy" / "crds" / f"{plural}.kgslb.io.yaml").read_text())
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        jsonschema.Draft4Validator(schema).validate(resource)
    objects = {}
    for resource in report.resources:
        ref = PolicyRef(
            kind=PolicyKind(resource["kind"]),
            namespace="avi-system",
            name=resource["metadata"]["name"],
        )
        objects[ref] = PolicyObject(ref=ref, spec=resource["spec"])
    assert {s.state for s in validate(objects, {}).statuses.values()} == {PolicyState.ACCEPTED}


AMKO_RESOURCES = """
apiVersion: amko.vmware.com/v1alpha1
kind: GSLBConfig
metadata: {name: gc-1, namespace: avi-system, uid: 1234}
spec:
  gslbLeader: {credentials: gslb-avi-secret, controllerVersion: 20.1.1, controllerIP: 10.10.10.10}
  memberClusters: [{clusterContext: s1az1}, {clusterContext: s2}]
  refreshInterval: 300
  logLevel: DEBUG
  useCustomGlobalFqdn: false
---
apiVersion: amko.vmware.com/v1alpha2
kind: GlobalDeploymentPolicy
metadata: {name: global-gdp, namespace: avi-system, labels: {team: web}}
spec:
  matchRules:
    appSelector: {label: {app: gslb}}
    namespaceSelector: {label: {ns: gslb}}
  matchClusters: [{cluster: s1az1}, {cluster: s2, syncVipOnly: true}]
  trafficSplit: [{cluster: s1az1, weight: 8, priority: 20}, {cluster: s2, weight: 2}]
  ttl: 10
  healthMonitorRefs: [my-health-monitor1]
  sitePersistenceRef: gap-1
  poolAlgorithmSettings: {lbAlgorithm: GSLB_ALGORITHM_CONSISTENT_HASH, hashMask: 24}
  downResponse: {type: GSLB_SERVICE_DOWN_RESPONSE_FALLBACK_IP, fallbackIP: 10.10.10.99}
status: {errorStatus: ""}
---
apiVersion: amko.vmware.com/v1alpha1
kind: GSLBHostRule
metadata: {name: hello-rule, namespace: avi-system}
spec:
  fqdn: hello.avi.iberia.local
  sitePersistence: {enabled: false}
  thirdPartyMembers: [{site: dc3, vip: 10.10.10.10}]
  trafficSplit: [{cluster: s1az1, weight: 15}, {cluster: dc3, weight: 5}]
  ttl: 30
  poolAlgorithmSettings:
    lbAlgorithm: GSLB_ALGORITHM_GEO
    geoFallback: {lbAlgorithm: GSLB_ALGORITHM_CONSISTENT_HASH, hashMask: 20}
"""


def amko_report() -> Report:
    return convert(yaml.safe_load_all(AMKO_RESOURCES))


def test_amko_resources_keep_their_names_and_map_their_fields() -> None:
    resources = by_kind(amko_report())
    assert resources["GSLBConfig"]["spec"] == {
        "memberClusters": [{"clusterContext": "s1az1"}, {"clusterContext": "s2"}],
        "refreshInterval": 300,
        "logLevel": "DEBUG",
    }
    gdp = resources["GlobalDeploymentPolicy"]
    assert gdp["metadata"] == {
        "name": "global-gdp",
        "namespace": "avi-system",
        "labels": {"team": "web"},
    }
    assert gdp["spec"] == {
        "matchRules": {
            "appSelector": {"label": {"app": "gslb"}},
            "namespaceSelector": {"label": {"ns": "gslb"}},
        },
        "matchClusters": [{"cluster": "s1az1"}, {"cluster": "s2", "syncVipOnly": True}],
        "trafficSplit": [
            {"cluster": "s1az1", "weight": 8, "priority": 20},
            {"cluster": "s2", "weight": 2},
        ],
        "ttl": 10,
        "poolAlgorithmSettings": {"lbAlgorithm": "ConsistentHash", "hashMask": 24},
        "downResponse": {"type": "FALLBACK_IP", "fallbackIP": "10.10.10.99"},
    }
    rule = resources["GSLBHostRule"]["spec"]
    assert rule["thirdPartyMembers"] == [{"vip": "10.10.10.10", "site": "dc3"}]
    assert rule["ttl"] == 30


def test_amko_fields_without_a_kgslb_equivalent_are_reported_with_the_reason() -> None:
    unsupported = dict(entry.split(": ", 1) for entry in amko_report().unsupported)
    assert set(unsupported) == {
        "document 1 (GSLBConfig).spec.gslbLeader",
        "document 1 (GSLBConfig).spec.useCustomGlobalFqdn",
        "document 1 (GSLBConfig).metadata.uid",
        "document 2 (GlobalDeploymentPolicy).spec.healthMonitorRefs",
        "document 2 (GlobalDeploymentPolicy).spec.sitePersistenceRef",
        "document 2 (GlobalDeploymentPolicy).status",
        "document 3 (GSLBHostRule).spec.sitePersistence",
    }
    assert (
        "write an inline healthMonitorTemplate"
        in (unsupported["document 2 (GlobalDeploymentPolicy).spec.healthMonitorRefs"])
    )


def test_geo_algorithm_becomes_geo_with_its_fallback_and_says_what_it_needs() -> None:
    report = amko_report()
    rule = by_kind(report)["GSLBHostRule"]["spec"]
    assert rule["poolAlgorithmSettings"] == {
        "lbAlgorithm": "Geo",
        "fallbackAlgorithm": {"lbAlgorithm": "ConsistentHash", "hashMask": 20},
    }
    assert any("memberClusters[].location" in entry for entry in report.warnings)


def test_topology_algorithm_becomes_its_fallback_and_says_how_to_use_topology() -> None:
    resource = {
        "apiVersion": "amko.vmware.com/v1alpha1",
        "kind": "GSLBHostRule",
        "metadata": {"name": "r", "namespace": "avi-system"},
        "spec": {
            "fqdn": "hello.avi.iberia.local",
            "poolAlgorithmSettings": {"lbAlgorithm": "GSLB_ALGORITHM_TOPOLOGY"},
        },
    }
    report = convert([resource])
    rule = by_kind(report)["GSLBHostRule"]["spec"]
    assert rule["poolAlgorithmSettings"] == {"lbAlgorithm": "RoundRobin"}
    assert any("add topology [{clientSubnet, site}]" in entry for entry in report.unsupported)


def test_a_kubernetes_list_of_resources_is_converted_item_by_item() -> None:
    documents = list(yaml.safe_load_all(AMKO_RESOURCES))
    report = convert([{"apiVersion": "v1", "kind": "List", "items": documents}])
    assert [r["kind"] for r in report.resources] == [
        "GSLBConfig",
        "GlobalDeploymentPolicy",
        "GSLBHostRule",
    ]


def test_a_document_that_is_not_amko_is_reported_and_skipped() -> None:
    report = convert([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}])
    assert report.resources == []
    assert report.unsupported == [
        "document 1 (ConfigMap): not an AMKO GSLBConfig, GlobalDeploymentPolicy or GSLBHostRule (v1)"
    ]


def test_what_kgslb_would_reject_is_warned_about_before_applying() -> None:
    values = {
        "configs": {"memberClusters": [{"clusterContext": "s1"}]},
        "globalDeploymentPolicy": {
            "appSelector": {"label": {"app": "x"}},
            "trafficSplit": [{"cluster": "s1", "weight": 30}],
        },
    }
    warnings = convert([values]).warnings
    assert any(
        "kgslb would reject it: GlobalDeploymentPolicy avi-system/global-gdp: "
        "spec.trafficSplit[0].weight = 30" in w
        for w in warnings
    )


def test_cli_writes_the_resources_and_reports_on_stderr(tmp_path: Path) -> None:
    out = tmp_path / "kgslb.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "kgslb", "import-amko", str(SEED_VALUES), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert [d["kind"] for d in yaml.safe_load_all(out.read_text())] == [
        "GSLBConfig",
        "GlobalDeploymentPolicy",
    ]
    assert "unsupported, not converted (11):" in done.stderr
    assert "'s1az1' is listed twice" in done.stderr


def test_cli_refuses_an_unreadable_file_with_exit_code_2(tmp_path: Path) -> None:
    broken = tmp_path / "values.yaml"
    broken.write_text("configs: [unclosed")
    done = subprocess.run(
        [sys.executable, "-m", "kgslb", "import-amko", str(broken)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "not valid YAML" in done.stderr
