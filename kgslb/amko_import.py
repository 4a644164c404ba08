"""`kgslb import-amko`: AMKO helm values, or AMKO GSLBConfig / GlobalDeploymentPolicy /
GSLBHostRule resources, as kgslb custom resources.

Every AMKO field is either mapped or reported as unsupported with the reason, and likely
mistakes (the seed's `matchClusters` lists s1az1 twice and forgets s1az2) are warned about.
The conversion is pure; the result is checked with the reconciler's own validation, so what
would be Rejected is said before it is applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.reconciler.validation import validate
from shared.models import PolicyKind, PolicyObject, PolicyRef, PolicyState
from shared.policies import API_GROUP, API_VERSION

AMKO_API_GROUPS = ("amko.vmware.com", "amko.k8s.io", "avilb.k8s.io")
DEFAULT_NAMESPACE = "avi-system"
HELM_GSLBCONFIG_NAME = "gc-1"
HELM_GDP_NAME = "global-gdp"

NO_AVI = "kgslb serves DNS itself: there is no Avi controller to reach"
POD_SETTING = "a setting of the AMKO pod; deploy kgslb with its own manifests (deploy/)"
INLINE_MONITOR = (
    "names a monitor on the Avi controller; write an inline healthMonitorTemplate "
    "(kind, path, expectedCodes, intervalSeconds, timeoutSeconds, successesToUp, failuresToDown)"
)
SITE_PERSISTENCE = (
    "cookie site persistence needs the Avi data plane; use poolAlgorithmSettings "
    "lbAlgorithm ConsistentHash (client subnet) for stickiness"
)

ALGORITHMS = {
    "GSLB_ALGORITHM_ROUND_ROBIN": "RoundRobin",
    "GSLB_ALGORITHM_CONSISTENT_HASH": "ConsistentHash",
}
DOWN_RESPONSES = {
    f"GSLB_SERVICE_DOWN_RESPONSE_{name}": name
    for name in ("NONE", "ALL_RECORDS", "FALLBACK_IP", "EMPTY")
}


class AmkoInputError(ValueError):
    """The input cannot be read as AMKO configuration; the message says why."""


@dataclass
class Report:
    resources: list[dict[str, Any]] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    """`path: reason` for every AMKO field that has no kgslb equivalent."""
    warnings: list[str] = field(default_factory=list)

    def drop(self, path: str, reason: str) -> None:
        self.unsupported.append(f"{path}: {reason}")

    def warn(self, path: str, text: str) -> None:
        self.warnings.append(f"{path}: {text}")


def _resource(kind: PolicyKind, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": kind.value,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


# Field converters ---------------------------------------------------------------------------


def _member_clusters(value: Any, path: str, report: Report) -> list[dict[str, str]]:
    members: list[dict[str, str]] = []
    for index, entry in enumerate(value or []):
        context = entry.get("clusterContext") if isinstance(entry, Mapping) else entry
        if not isinstance(context, str) or not context:
            report.drop(f"{path}[{index}]", f"{entry!r} is not a cluster context")
            continue
        if any(m["clusterContext"] == context for m in members):
            report.warn(f"{path}[{index}]", f"{context!r} is listed twice; kept once")
            continue
        members.append({"clusterContext": context})
    return members


def _match_clusters(
    value: Any, path: str, members: list[str], report: Report
) -> list[dict[str, Any]]:
    """AMKO takes plain context names (old charts) or `{cluster, syncVipOnly}`."""
    clusters: list[dict[str, Any]] = []
    for index, entry in enumerate(value or []):
        item = {"cluster": entry} if isinstance(entry, str) else dict(entry or {})
        name = item.get("cluster")
        if not isinstance(name, str) or not name:
            report.drop(f"{path}[{index}]", f"{entry!r} names no cluster")
            continue
        if any(c["cluster"] == name for c in clusters):
            report.warn(f"{path}[{index}]", f"{name!r} is listed twice; kept once")
            continue
        unknown = set(item) - {"cluster", "syncVipOnly"}
        for key in sorted(unknown):
            report.drop(f"{path}[{index}].{key}", "unknown AMKO field")
        clusters.append({k: v for k, v in item.items() if k not in unknown})
    listed = {c["cluster"] for c in clusters}
    missing = [m for m in members if m not in listed]
    if clusters and missing:
        report.warn(
            path,
            f"member cluster(s) {', '.join(missing)} not listed, so their objects are not "
            "selected (a typo for a name listed twice?)",
        )
    return clusters


def _selector(value: Any, path: str, report: Report) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        report.drop(path, f"{value!r} is not a selector")
        return {}
    selector: dict[str, Any] = {}
    for key, inner in value.items():
        if key in ("label", "matchLabels", "matchExpressions"):
            selector[key] = inner
        else:
            report.drop(f"{path}.{key}", "unknown selector field")
    return selector


def _algorithm(value: Any, path: str, report: Report) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        report.drop(path, f"{value!r} is not an object")
        return None
    name = value.get("lbAlgorithm", "GSLB_ALGORITHM_ROUND_ROBIN")
    settings: dict[str, Any] = {}
    if name in ALGORITHMS:
        settings["lbAlgorithm"] = ALGORITHMS[name]
        if value.get("hashMask") is not None:
            settings["hashMask"] = value["hashMask"]
    elif name == "GSLB_ALGORITHM_GEO":
        settings["lbAlgorithm"] = "Geo"
        fallback = value.get("geoFallback") or {}
        if fallback:
            fallback_name = ALGORITHMS.get(str(fallback.get("lbAlgorithm", "")), "RoundRobin")
            settings["fallbackAlgorithm"] = {"lbAlgorithm": fallback_name}
            if fallback_name == "ConsistentHash" and fallback.get("hashMask") is not None:
                settings["fallbackAlgorithm"]["hashMask"] = fallback["hashMask"]
        report.warn(
            f"{path}.lbAlgorithm",
            "Geo needs a location on the GSLBConfig's member clusters (memberClusters[]."
            "location: latitude/longitude, country or continent) and a MaxMind database for the "
            "DNS (--geoip-database); until then every client gets the fallback",
        )
    elif name == "GSLB_ALGORITHM_TOPOLOGY":
        fallback = value.get("geoFallback") or {}
        fallback_name = ALGORITHMS.get(str(fallback.get("lbAlgorithm", "")), "RoundRobin")
        report.drop(
            f"{path}.lbAlgorithm",
            f"{name} uses the Avi controller's geo database or topology policies; kgslb's "
            "Topology takes an explicit map: add topology [{clientSubnet, site}] and set "
            f"lbAlgorithm Topology (converted to its fallback {fallback_name} meanwhile)",
        )
        settings["lbAlgorithm"] = fallback_name
        if fallback_name == "ConsistentHash" and fallback.get("hashMask") is not None:
            settings["hashMask"] = fallback["hashMask"]
    else:
        report.drop(f"{path}.lbAlgorithm", f"unknown AMKO algorithm {name!r}")
        return None
    for key in sorted(set(value) - {"lbAlgorithm", "hashMask", "geoFallback"}):
        report.drop(f"{path}.{key}", "unknown AMKO field")
    if "geoFallback" in value and name not in ("GSLB_ALGORITHM_GEO", "GSLB_ALGORITHM_TOPOLOGY"):
        report.drop(f"{path}.geoFallback", f"AMKO uses it only with GSLB_ALGORITHM_GEO, not {name}")
    return settings


def _down_response(value: Any, path: str, report: Report) -> dict[str, Any] | None:
    if not isinstance(value, Mapping) or value.get("type") not in DOWN_RESPONSES:
        report.drop(path, f"{value!r} is not an AMKO down response")
        return None
    down: dict[str, Any] = {"type": DOWN_RESPONSES[value["type"]]}
    if value.get("fallbackIP"):
        down["fallbackIP"] = value["fallbackIP"]
    for key in sorted(set(value) - {"type", "fallbackIP"}):
        report.drop(f"{path}.{key}", "unknown AMKO field")
    return down


def _traffic_split(value: Any, path: str, report: Report) -> list[dict[str, Any]]:
    split: list[dict[str, Any]] = []
    for index, entry in enumerate(value or []):
        if not isinstance(entry, Mapping) or not entry.get("cluster"):
            report.drop(f"{path}[{index}]", f"{entry!r} names no cluster")
            continue
        if any(s["cluster"] == entry["cluster"] for s in split):
            report.warn(f"{path}[{index}]", f"{entry['cluster']!r} is listed twice; kept the first")
            continue
        for key in sorted(set(entry) - {"cluster", "weight", "priority"}):
            report.drop(f"{path}[{index}].{key}", "unknown AMKO field")
        split.append({k: v for k, v in entry.items() if k in ("cluster", "weight", "priority")})
    return split


def _monitors(spec: Mapping[str, Any], path: str, out: dict[str, Any], report: Report) -> None:
    if spec.get("healthMonitorRefs"):
        report.drop(f"{path}.healthMonitorRefs", INLINE_MONITOR)
    if spec.get("healthMonitorTemplate"):
        report.drop(f"{path}.healthMonitorTemplate", INLINE_MONITOR)
    if spec.get("controlPlaneHmOnly"):
        out["healthMonitorTemplate"] = {"kind": "none"}


_GDP_FIELDS = {
    "appSelector",
    "namespaceSelector",
    "matchRules",
    "matchClusters",
    "trafficSplit",
    "ttl",
    "healthMonitorRefs",
    "healthMonitorTemplate",
    "controlPlaneHmOnly",
    "sitePersistenceRef",
    "pkiProfileRef",
    "poolAlgorithmSettings",
    "downResponse",
    "defaultDomain",
}


def convert_gdp_spec(
    spec: Mapping[str, Any], path: str, members: list[str], report: Report
) -> dict[str, Any]:
    """An AMKO GDP spec (CR form with `matchRules`, or helm values form) as a kgslb one."""
    out: dict[str, Any] = {}
    rules = dict(spec.get("matchRules") or {})
    rules_path = f"{path}.matchRules" if "matchRules" in spec else path
    for key in ("appSelector", "namespaceSelector"):
        if spec.get(key) is not None:
            rules[key] = spec[key]
    match_rules = {
        key: _selector(rules[key], f"{rules_path}.{key}", report)
        for key in ("appSelector", "namespaceSelector")
        if rules.get(key) is not None
    }
    for key in sorted(set(rules) - {"appSelector", "namespaceSelector"}):
        report.drop(f"{rules_path}.{key}", "unknown AMKO field")
    if match_rules:
        out["matchRules"] = match_rules
    else:
        report.warn(path, "no appSelector or namespaceSelector: the policy selects nothing")
    if "matchClusters" in spec:
        out["matchClusters"] = _match_clusters(
            spec["matchClusters"], f"{path}.matchClusters", members, report
        )
    if "trafficSplit" in spec:
        out["trafficSplit"] = _traffic_split(spec["trafficSplit"], f"{path}.trafficSplit", report)
    if spec.get("ttl") is not None:
        out["ttl"] = spec["ttl"]
    _monitors(spec, path, out, report)
    for key in ("sitePersistenceRef", "pkiProfileRef"):
        if spec.get(key):
            report.drop(f"{path}.{key}", SITE_PERSISTENCE)
    if spec.get("poolAlgorithmSettings"):
        settings = _algorithm(
            spec["poolAlgorithmSettings"], f"{path}.poolAlgorithmSettings", report
        )
        if settings:
            out["poolAlgorithmSettings"] = settings
    if spec.get("downResponse"):
        down = _down_response(spec["downResponse"], f"{path}.downResponse", report)
        if down:
            out["downResponse"] = down
    if spec.get("defaultDomain"):
        out["defaultDomain"] = spec["defaultDomain"]
    for key in sorted(set(spec) - _GDP_FIELDS):
        report.drop(f"{path}.{key}", "unknown AMKO field")
    return out


def convert_host_rule_spec(spec: Mapping[str, Any], path: str, report: Report) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.get("fqdn"):
        out["fqdn"] = spec["fqdn"]
    if spec.get("ttl") is not None:
        out["ttl"] = spec["ttl"]
    if "trafficSplit" in spec:
        out["trafficSplit"] = _traffic_split(spec["trafficSplit"], f"{path}.trafficSplit", report)
    third_party = []
    for index, member in enumerate(spec.get("thirdPartyMembers") or []):
        where = f"{path}.thirdPartyMembers[{index}]"
        if member.get("publicIP"):
            report.drop(f"{where}.publicIP", "kgslb answers a third-party member's vip as is")
        third_party.append({k: member[k] for k in ("vip", "site") if k in member})
        for key in sorted(set(member) - {"vip", "site", "publicIP"}):
            report.drop(f"{where}.{key}", "unknown AMKO field")
    if third_party:
        out["thirdPartyMembers"] = third_party
    if spec.get("publicIP"):
        out["publicIP"] = [
            {"cluster": p.get("cluster"), "ip": p.get("ip")} for p in spec["publicIP"]
        ]
    _monitors(spec, path, out, report)
    if spec.get("sitePersistence"):
        report.drop(f"{path}.sitePersistence", SITE_PERSISTENCE)
    if spec.get("poolAlgorithmSettings"):
        settings = _algorithm(
            spec["poolAlgorithmSettings"], f"{path}.poolAlgorithmSettings", report
        )
        if settings:
            out["poolAlgorithmSettings"] = settings
    if spec.get("downResponse"):
        down = _down_response(spec["downResponse"], f"{path}.downResponse", report)
        if down:
            out["downResponse"] = down
    known = {
        "fqdn",
        "ttl",
        "trafficSplit",
        "thirdPartyMembers",
        "publicIP",
        "healthMonitorRefs",
        "healthMonitorTemplate",
        "controlPlaneHmOnly",
        "sitePersistence",
        "poolAlgorithmSettings",
        "downResponse",
    }
    for key in sorted(set(spec) - known):
        report.drop(f"{path}.{key}", "unknown AMKO field")
    return out


def convert_config_spec(spec: Mapping[str, Any], path: str, report: Report) -> dict[str, Any]:
    """AMKO's GSLBConfig spec, or the helm values' `configs`."""
    out: dict[str, Any] = {}
    if "memberClusters" in spec:
        out["memberClusters"] = _member_clusters(
            spec["memberClusters"], f"{path}.memberClusters", report
        )
    if spec.get("refreshInterval") is not None:
        out["refreshInterval"] = spec["refreshInterval"]
    if spec.get("logLevel"):
        out["logLevel"] = spec["logLevel"]
    for key in ("gslbLeader", "gslbLeaderController", "controllerVersion", "tenant"):
        if key in spec:
            report.drop(f"{path}.{key}", NO_AVI)
    if "useCustomGlobalFqdn" in spec:
        report.drop(
            f"{path}.useCustomGlobalFqdn",
            "kgslb names a GSLB service after the object's own host (AKO HostRules are not read)",
        )
    known = {
        "memberClusters",
        "refreshInterval",
        "logLevel",
        "gslbLeader",
        "gslbLeaderController",
        "controllerVersion",
        "tenant",
        "useCustomGlobalFqdn",
    }
    for key in sorted(set(spec) - known):
        report.drop(f"{path}.{key}", "unknown AMKO setting")
    report.warn(
        path,
        "add spec.zones (the delegated zone with its SOA and NS): AMKO kept them on the Avi "
        "DNS virtual service, and kgslb's DNS answers only the zones listed there",
    )
    return out


# Whole documents ----------------------------------------------------------------------------

_POD_KEYS = {
    "replicaCount",
    "image",
    "imagePullSecrets",
    "serviceAccount",
    "resources",
    "service",
    "persistentVolumeClaim",
    "mountPath",
    "logFile",
    "federatorLogFile",
    "rbac",
    "federation",
    "podSecurityContext",
    "securityContext",
    "nodeSelector",
    "tolerations",
    "affinity",
    "podAnnotations",
    "podLabels",
    "multiClusterIngress",
}


def convert_values(values: Mapping[str, Any], namespace: str, report: Report) -> None:
    """AMKO helm values: `configs` -> GSLBConfig gc-1, `globalDeploymentPolicy` (or the older
    `gdpConfig`) -> GlobalDeploymentPolicy global-gdp, as AMKO's chart creates them."""
    configs = values.get("configs") or {}
    config_spec = convert_config_spec(configs, "configs", report)
    report.resources.append(
        _resource(PolicyKind.GSLB_CONFIG, HELM_GSLBCONFIG_NAME, namespace, config_spec)
    )
    members = [m["clusterContext"] for m in config_spec.get("memberClusters", [])]
    for key in ("globalDeploymentPolicy", "gdpConfig"):
        if isinstance(values.get(key), Mapping):
            spec = convert_gdp_spec(values[key], key, members, report)
            report.resources.append(
                _resource(PolicyKind.GLOBAL_DEPLOYMENT_POLICY, HELM_GDP_NAME, namespace, spec)
            )
    if "gslbLeaderCredentials" in values:
        report.drop("gslbLeaderCredentials", NO_AVI)
    for key in sorted(set(values) & _POD_KEYS):
        report.drop(key, POD_SETTING)
    known = _POD_KEYS | {"configs", "globalDeploymentPolicy", "gdpConfig", "gslbLeaderCredentials"}
    for key in sorted(set(values) - known):
        report.drop(key, "unknown AMKO helm value")


_KINDS = {kind.value: kind for kind in PolicyKind}


def convert_resource(
    document: Mapping[str, Any], index: int, members: list[str], report: Report
) -> None:
    kind = _KINDS.get(str(document.get("kind")))
    where = f"document {index + 1} ({document.get('kind')})"
    if kind is None or str(document.get("apiVersion", "")).split("/")[0] not in AMKO_API_GROUPS:
        report.drop(
            where,
            f"not an AMKO GSLBConfig, GlobalDeploymentPolicy or GSLBHostRule ({document.get('apiVersion')})",
        )
        return
    metadata = document.get("metadata") or {}
    spec = document.get("spec") or {}
    path = f"{where}.spec"
    if kind == PolicyKind.GSLB_CONFIG:
        converted = convert_config_spec(spec, path, report)
    elif kind == PolicyKind.GLOBAL_DEPLOYMENT_POLICY:
        converted = convert_gdp_spec(spec, path, members, report)
    else:
        converted = convert_host_rule_spec(spec, path, report)
    resource = _resource(
        kind,
        str(metadata.get("name", "")),
        str(metadata.get("namespace") or DEFAULT_NAMESPACE),
        converted,
    )
    if metadata.get("labels"):
        resource["metadata"]["labels"] = dict(metadata["labels"])
    for key in sorted(set(metadata) - {"name", "namespace", "labels"}):
        report.drop(
            f"{where}.metadata.{key}", "not carried over (set by the API server or by AMKO)"
        )
    if "status" in document:
        report.drop(f"{where}.status", "written by the reconciler, not converted")
    report.resources.append(resource)


def _flatten(documents: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for document in documents:
        if isinstance(document, Mapping) and document.get("kind") == "List":
            out.extend(document.get("items") or [])
        elif document is not None:
            out.append(document)
    return out


def convert(documents: Iterable[Any], namespace: str = DEFAULT_NAMESPACE) -> Report:
    """Helm values (one document without `kind`) or AMKO resources, as kgslb resources."""
    report = Report()
    docs = _flatten(documents)
    if not docs:
        raise AmkoInputError("no YAML document found")
    if any(not isinstance(d, Mapping) for d in docs):
        raise AmkoInputError("every YAML document must be a mapping")
    resources = [d for d in docs if "kind" in d]
    if not resources:
        for values in docs:
            convert_values(values, namespace, report)
    else:
        members = [
            str(m.get("clusterContext"))
            for d in resources
            if d.get("kind") == PolicyKind.GSLB_CONFIG.value
            for m in (d.get("spec") or {}).get("memberClusters") or []
            if isinstance(m, Mapping)
        ]
        for index, document in enumerate(docs):
            if "kind" not in document:
                report.drop(
                    f"document {index + 1}",
                    "helm values mixed with resources: convert them on their own",
                )
                continue
            convert_resource(document, index, members, report)
    _check(report)
    return report


def _check(report: Report) -> None:
    """What the reconciler would say of the converted resources."""
    objects = {}
    for resource in report.resources:
        meta = resource["metadata"]
        ref = PolicyRef(
            kind=PolicyKind(resource["kind"]), namespace=meta["namespace"], name=meta["name"]
        )
        objects[ref] = PolicyObject(ref=ref, spec=resource["spec"])
    for status in validate(objects, {}).statuses.values():
        if status.state == PolicyState.REJECTED:
            report.warn(str(status.ref), f"kgslb would reject it: {status.message}")


def load(path: Path) -> list[Any]:
    try:
        return list(yaml.safe_load_all(path.read_text()))
    except OSError as exc:
        raise AmkoInputError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise AmkoInputError(f"{path}: not valid YAML: {exc}") from None


def render(resources: list[dict[str, Any]], source: str) -> str:
    header = (
        f"# kgslb resources converted from AMKO configuration {source} by `kgslb import-amko`.\n"
    )
    return header + yaml.safe_dump_all(resources, sort_keys=False, explicit_start=True)


def describe(report: Report, source: str) -> str:
    lines = [f"{source}: {len(report.resources)} kgslb resource(s)"]
    if report.unsupported:
        lines.append(f"unsupported, not converted ({len(report.unsupported)}):")
        lines += [f"  {item}" for item in report.unsupported]
    if report.warnings:
        lines.append(f"warnings ({len(report.warnings)}):")
        lines += [f"  {item}" for item in report.warnings]
    return "\n".join(lines)
