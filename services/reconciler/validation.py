"""Which version of each policy object is in force, and why the others are Rejected.

Pure: the policy objects and what was accepted before go in, `Policies` comes out. Every
problem names the object, the field as written in the CR, the value and what is allowed. A
rejected edit keeps the last accepted version in force, so a typo never drops a service.
How a problem is worded and bounded is in messages.py; which names can be GSLB services in
names.py.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from services.reconciler.delegation import delegation_problem
from services.reconciler.geo import check_geo, located_clusters
from services.reconciler.messages import (
    allowed_values,
    bounded_message,
    describe_validation_error,
    problem,
)
from shared.models import (
    Algorithm,
    DownResponseType,
    HealthMonitorSpec,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    PolicyState,
    PolicyStatus,
    StaticRecord,
    ZoneSpec,
)
from shared.names import hostname_problem
from shared.policies import (
    DNS_NAME_PATTERN,
    DownResponseSpec,
    GlobalDeploymentPolicySpec,
    GSLBConfigSpec,
    GSLBHostRuleSpec,
    PoolAlgorithmSettings,
    Selector,
    Spec,
    TrafficSplit,
)
from shared.subjects import normalize_fqdn

SPEC_MODELS: dict[PolicyKind, type[Spec]] = {
    PolicyKind.GSLB_CONFIG: GSLBConfigSpec,
    PolicyKind.GLOBAL_DEPLOYMENT_POLICY: GlobalDeploymentPolicySpec,
    PolicyKind.GSLB_HOST_RULE: GSLBHostRuleSpec,
}


@dataclass(frozen=True)
class AcceptedGdp:
    """A GlobalDeploymentPolicy in force, with what selection needs precomputed."""

    ref: PolicyRef
    spec: GlobalDeploymentPolicySpec
    clusters: frozenset[str] | None
    """Clusters it selects from: matchClusters, else every member; None: any cluster."""
    vip_only: frozenset[str]
    """Clusters marked syncVipOnly: their members are control-plane only."""

    @property
    def selects_anything(self) -> bool:
        rules = self.spec.match_rules
        return not (rules.app_selector.is_empty and rules.namespace_selector.is_empty)


@dataclass(frozen=True)
class Policies:
    """The policy set in force and the status of every policy object."""

    config_ref: PolicyRef | None = None
    config: GSLBConfigSpec | None = None
    members: frozenset[str] | None = None
    """Member clusters of the active GSLBConfig; None: no GSLBConfig lists any."""
    gdps: tuple[AcceptedGdp, ...] = ()
    """In precedence order: the first GDP that selects an FQDN's objects owns the FQDN."""
    host_rules: Mapping[str, tuple[PolicyRef, GSLBHostRuleSpec]] = field(default_factory=dict)
    zones: Mapping[str, ZoneSpec] = field(default_factory=dict)
    statuses: Mapping[PolicyRef, PolicyStatus] = field(default_factory=dict)
    accepted: Mapping[PolicyRef, PolicyObject] = field(default_factory=dict)
    """The version in force of every policy object that has one."""
    default_domains: frozenset[str] = frozenset()

    def in_force(self) -> dict[PolicyRef, dict[str, Any]]:
        """What shapes the services: equal values mean equal plans."""
        return {ref: obj.spec for ref, obj in self.accepted.items()}


# Checks that span fields --------------------------------------------------------------------


def _check_selector(path: str, selector: Selector) -> list[str]:
    out = []
    for index, req in enumerate(selector.match_expressions):
        where = f"{path}.matchExpressions[{index}]"
        if req.operator in ("In", "NotIn") and not req.values:
            out.append(problem(f"{where}.values", req.values, f"{req.operator} needs values"))
        if req.operator in ("Exists", "DoesNotExist") and req.values:
            out.append(problem(f"{where}.values", req.values, f"{req.operator} takes no values"))
    return out


def _check_split(path: str, split: Sequence[TrafficSplit], sites: set[str] | None) -> list[str]:
    out = []
    seen: set[str] = set()
    for index, entry in enumerate(split):
        where = f"{path}[{index}].cluster"
        if entry.cluster in seen:
            out.append(problem(where, entry.cluster, "listed twice"))
        seen.add(entry.cluster)
        if sites is not None and entry.cluster not in sites:
            out.append(
                problem(
                    where, entry.cluster, f"not a member cluster (allowed: {allowed_values(sites)})"
                )
            )
    return out


def _check_monitor(refs: Sequence[str], template: HealthMonitorSpec | None) -> list[str]:
    if refs and template is not None:
        return [
            "spec.healthMonitorRefs and spec.healthMonitorTemplate are both set: use one of "
            "them (kgslb supports healthMonitorTemplate)"
        ]
    out = []
    if refs:
        out.append(
            problem(
                "spec.healthMonitorRefs",
                list(refs),
                "references to controller monitors are not supported (allowed: an inline "
                "spec.healthMonitorTemplate)",
            )
        )
    if template is not None and template.timeout_seconds > template.interval_seconds:
        out.append(
            problem(
                "spec.healthMonitorTemplate.timeoutSeconds",
                template.timeout_seconds,
                f"longer than intervalSeconds {template.interval_seconds} (allowed: at most "
                "the interval)",
            )
        )
    return out


def _check_down(down: DownResponseSpec | None) -> list[str]:
    if down is None:
        return []
    if down.type == DownResponseType.FALLBACK_IP and not down.fallback_ip:
        return ["spec.downResponse.type = FALLBACK_IP needs spec.downResponse.fallbackIP"]
    if down.type != DownResponseType.FALLBACK_IP and down.fallback_ip:
        return [
            problem(
                "spec.downResponse.fallbackIP",
                down.fallback_ip,
                f"only used with type FALLBACK_IP (type is {down.type})",
            )
        ]
    return []


def _check_algorithm(
    settings: PoolAlgorithmSettings | None, sites: set[str] | None, located: frozenset[str] | None
) -> list[str]:
    if settings is None:
        return []
    path = "spec.poolAlgorithmSettings"
    algorithm = settings.lb_algorithm
    out = check_geo(settings, located)
    if settings.hash_mask is not None and algorithm != Algorithm.CONSISTENT_HASH:
        out.append(
            problem(
                f"{path}.hashMask",
                settings.hash_mask,
                f"only used with lbAlgorithm ConsistentHash (lbAlgorithm is {algorithm})",
            )
        )
    if algorithm == Algorithm.TOPOLOGY and not settings.topology:
        out.append(f"{path}.topology: Topology needs at least one clientSubnet -> site rule")
    if algorithm != Algorithm.TOPOLOGY and settings.topology:
        out.append(
            problem(
                f"{path}.topology",
                [r.client_subnet for r in settings.topology],
                f"only used with lbAlgorithm Topology (lbAlgorithm is {algorithm})",
            )
        )
    subnets: set[str] = set()
    for index, rule in enumerate(settings.topology):
        where = f"{path}.topology[{index}]"
        if rule.client_subnet in subnets:
            out.append(problem(f"{where}.clientSubnet", rule.client_subnet, "listed twice"))
        subnets.add(rule.client_subnet)
        if sites is not None and rule.site not in sites:
            out.append(
                problem(
                    f"{where}.site",
                    rule.site,
                    f"not a member cluster or third-party site (allowed: {allowed_values(sites)})",
                )
            )
    fallback = settings.fallback_algorithm
    if fallback is not None:
        if algorithm == Algorithm.ROUND_ROBIN:
            out.append(
                f"{path}.fallbackAlgorithm: RoundRobin always decides, so it takes no fallback (allowed with ConsistentHash, Topology or Geo)"
            )
        if fallback.hash_mask is not None and fallback.lb_algorithm != "ConsistentHash":
            out.append(
                problem(
                    f"{path}.fallbackAlgorithm.hashMask",
                    fallback.hash_mask,
                    "only used with fallback lbAlgorithm ConsistentHash",
                )
            )
    return out


def _zone_of(owner: str, zone: str) -> bool:
    return owner == zone or owner.endswith("." + zone)


def _absolute(name: str, zone: str) -> str:
    """Zone-file names: `@` is the zone, a name without a trailing dot is relative to it."""
    name = name.strip()
    if name in ("@", ""):
        return zone
    if name.endswith("."):
        return normalize_fqdn(name)
    return normalize_fqdn(f"{name}.{zone}")


def _is_name(value: str) -> bool:
    return value.strip() == "@" or re.fullmatch(DNS_NAME_PATTERN, value.strip()) is not None


def _is_u16(text: str) -> bool:
    return text.isdigit() and int(text) <= 65535


def _record_value_problem(record: StaticRecord) -> str:
    """What is wrong with a static record's RDATA, or ''."""
    value = record.value.strip()
    fields = value.split()
    match record.type:
        case "A" | "AAAA":
            version = 4 if record.type == "A" else 6
            try:
                ok = ipaddress.ip_address(value).version == version
            except ValueError:
                ok = False
            return "" if ok else f"not an IPv{version} address (type {record.type})"
        case "CNAME" | "NS" | "PTR":
            return "" if _is_name(value) else f"not a DNS name (type {record.type})"
        case "MX":
            ok = len(fields) == 2 and _is_u16(fields[0]) and _is_name(fields[1])
            return "" if ok else "not '<preference> <exchange>' (type MX)"
        case "SRV":
            ok = len(fields) == 4 and all(map(_is_u16, fields[:3])) and _is_name(fields[3])
            return "" if ok else "not '<priority> <weight> <port> <target>' (type SRV)"
    return ""


def _check_config(spec: GSLBConfigSpec) -> list[str]:
    out = []
    seen: set[str] = set()
    for index, member in enumerate(spec.member_clusters):
        if member.cluster_context in seen:
            out.append(
                problem(
                    f"spec.memberClusters[{index}].clusterContext",
                    member.cluster_context,
                    "listed twice",
                )
            )
        seen.add(member.cluster_context)
    zones: set[str] = set()
    for index, zone in enumerate(spec.zones):
        name = normalize_fqdn(zone.name)
        if name in zones:
            out.append(problem(f"spec.zones[{index}].name", zone.name, "listed twice"))
        zones.add(name)
        if zone.delegation is not None:
            where = f"spec.zones[{index}].delegation"
            if wrong := delegation_problem(name, zone.delegation):
                out.append(problem(f"{where}.parentZone", zone.delegation.parent_zone, wrong))
            if not zone.nameservers:
                out.append(f"{where}: the zone lists no nameservers to delegate to")
        for r_index, record in enumerate(zone.records):
            where = f"spec.zones[{index}].records[{r_index}]"
            if not _is_name(record.name):
                out.append(problem(f"{where}.name", record.name, "not a DNS name"))
            elif not _zone_of(_absolute(record.name, name), name):
                out.append(problem(f"{where}.name", record.name, f"outside zone {name}"))
            if wrong := _record_value_problem(record):
                out.append(problem(f"{where}.value", record.value, wrong))
            if record.ttl_seconds is not None and not 0 <= record.ttl_seconds <= 86400:
                out.append(
                    problem(f"{where}.ttlSeconds", record.ttl_seconds, "allowed: 0 to 86400")
                )
    return out


def _check_gdp(
    spec: GlobalDeploymentPolicySpec, members: frozenset[str] | None, located: frozenset[str] | None
) -> list[str]:
    sites = set(members) if members is not None else None
    out = _check_selector("spec.matchRules.appSelector", spec.match_rules.app_selector)
    out += _check_selector("spec.matchRules.namespaceSelector", spec.match_rules.namespace_selector)
    seen: set[str] = set()
    for index, match in enumerate(spec.match_clusters):
        where = f"spec.matchClusters[{index}].cluster"
        if match.cluster in seen:
            out.append(problem(where, match.cluster, "listed twice"))
        seen.add(match.cluster)
        if sites is not None and match.cluster not in sites:
            out.append(
                problem(
                    where, match.cluster, f"not a member cluster (allowed: {allowed_values(sites)})"
                )
            )
    out += _check_split("spec.trafficSplit", spec.traffic_split, sites)
    out += _check_monitor(spec.health_monitor_refs, spec.health_monitor_template)
    out += _check_algorithm(spec.pool_algorithm_settings, sites, located)
    out += _check_down(spec.down_response)
    return out


def _check_host_rule(
    spec: GSLBHostRuleSpec,
    members: frozenset[str] | None,
    other_owner: PolicyRef | None,
    located: frozenset[str] | None,
) -> list[str]:
    out = []
    if (bad := hostname_problem(spec.fqdn)) is not None:
        out.append(problem("spec.fqdn", spec.fqdn, f"not a hostname: {bad.detail}"))
    if other_owner is not None:
        out.append(problem("spec.fqdn", spec.fqdn, f"already governed by {other_owner}"))
    third_party = {m.site for m in spec.third_party_members}
    sites = (set(members) | third_party) if members is not None else None
    vips: set[str] = set()
    for index, member in enumerate(spec.third_party_members):
        where = f"spec.thirdPartyMembers[{index}]"
        if member.vip in vips:
            out.append(problem(f"{where}.vip", member.vip, "listed twice"))
        vips.add(member.vip)
        if members is not None and member.site in members:
            out.append(
                problem(
                    f"{where}.site",
                    member.site,
                    "is a member cluster; a third-party member needs a site name of its own",
                )
            )
    public: set[str] = set()
    for index, entry in enumerate(spec.public_ip):
        where = f"spec.publicIP[{index}].cluster"
        if entry.cluster in public:
            out.append(problem(where, entry.cluster, "listed twice"))
        public.add(entry.cluster)
        if members is not None and entry.cluster not in members:
            out.append(
                problem(
                    where,
                    entry.cluster,
                    f"not a member cluster (allowed: {allowed_values(members)})",
                )
            )
    if spec.traffic_split is not None:
        out += _check_split("spec.trafficSplit", spec.traffic_split, sites)
    out += _check_monitor(spec.health_monitor_refs, spec.health_monitor_template)
    out += _check_algorithm(spec.pool_algorithm_settings, sites, located)
    out += _check_down(spec.down_response)
    return out


# Deciding what is in force ------------------------------------------------------------------


def parse(obj: PolicyObject) -> tuple[Spec | None, list[str]]:
    model = SPEC_MODELS[obj.ref.kind]
    try:
        return model.model_validate(obj.spec), []
    except ValidationError as exc:
        return None, describe_validation_error(model, exc)


def _status(
    obj: PolicyObject, state: PolicyState, message: str, used: PolicyObject | None
) -> PolicyStatus:
    return PolicyStatus(
        ref=obj.ref,
        state=state,
        message=message,
        observed_generation=obj.generation,
        accepted_generation=used.generation if used else None,
        accepted_spec=used.spec if used else None,
    )


def _rejected(
    obj: PolicyObject, problems: Sequence[str], used: PolicyObject | None
) -> PolicyStatus:
    keeping = f" (keeping generation {used.generation})" if used is not None else ""
    message = bounded_message(f"{obj.ref}: ", problems, keeping)
    return _status(obj, PolicyState.REJECTED, message, used)


def _in_force(
    obj: PolicyObject,
    last_accepted: Mapping[PolicyRef, PolicyObject],
    check: Callable[[Any], list[str]],
    previous_usable: Callable[[Any], bool] = lambda _: True,
) -> tuple[PolicyObject | None, Any, list[str]]:
    """The version in force and the problems of the newest one. An invalid newest version
    leaves the last accepted one in force, if there is one that can still be used."""
    spec, problems = parse(obj)
    if spec is not None:
        problems = check(spec)
    if not problems:
        return obj, spec, []
    previous = last_accepted.get(obj.ref)
    if previous is not None:
        previous_spec, _ = parse(previous)
        if previous_spec is not None and previous_usable(previous_spec):
            return previous, previous_spec, problems
    return None, None, problems


def _zones(config: GSLBConfigSpec | None) -> dict[str, ZoneSpec]:
    zones = {}
    for zone in config.zones if config else []:
        name = normalize_fqdn(zone.name)
        zones[name] = ZoneSpec(
            name=name,
            soa=zone.soa,
            nameservers=zone.nameservers,
            records=zone.records,
            default_ttl_seconds=zone.default_ttl_seconds,
            unhandled=zone.unhandled,
            dnssec=zone.dnssec,
        )
    return zones


def validate(
    policies: Mapping[PolicyRef, PolicyObject], last_accepted: Mapping[PolicyRef, PolicyObject]
) -> Policies:
    """Decide the version in force of every policy object, and its status.

    Where only one object may win (the active GSLBConfig, the GSLBHostRule of an FQDN), the
    incumbent (the one accepted before) keeps winning; among newcomers, namespace/name order.
    """
    ordered = sorted(
        policies.values(),
        key=lambda o: (o.ref not in last_accepted, o.ref.namespace, o.ref.name),
    )
    statuses: dict[PolicyRef, PolicyStatus] = {}
    accepted: dict[PolicyRef, PolicyObject] = {}

    config_ref: PolicyRef | None = None
    config: GSLBConfigSpec | None = None
    for obj in (o for o in ordered if o.ref.kind == PolicyKind.GSLB_CONFIG):
        if config_ref is not None:
            statuses[obj.ref] = _rejected(
                obj, [f"only one GSLBConfig can be active and {config_ref} is"], None
            )
            continue
        used, spec, problems = _in_force(obj, last_accepted, _check_config)
        if used is None:
            statuses[obj.ref] = _rejected(obj, problems, None)
            continue
        config_ref, config = obj.ref, spec
        accepted[obj.ref] = used
        statuses[obj.ref] = (
            _rejected(obj, problems, used)
            if problems
            else _status(obj, PolicyState.ACCEPTED, "active GSLBConfig", used)
        )
    members = frozenset(m.cluster_context for m in config.member_clusters) if config else None
    members = members or None
    located = located_clusters(config) if members is not None else None

    gdps: list[AcceptedGdp] = []
    host_rules: dict[str, tuple[PolicyRef, GSLBHostRuleSpec]] = {}
    for obj in (o for o in ordered if o.ref.kind != PolicyKind.GSLB_CONFIG):
        if obj.ref.kind == PolicyKind.GLOBAL_DEPLOYMENT_POLICY:
            used, spec, problems = _in_force(
                obj, last_accepted, lambda s: _check_gdp(s, members, located)
            )
        else:

            def owner_other_than(
                spec: GSLBHostRuleSpec, ref: PolicyRef = obj.ref
            ) -> PolicyRef | None:
                owner = host_rules.get(normalize_fqdn(spec.fqdn))
                return owner[0] if owner is not None and owner[0] != ref else None

            used, spec, problems = _in_force(
                obj,
                last_accepted,
                lambda s: _check_host_rule(s, members, owner_other_than(s), located),
                lambda s: owner_other_than(s) is None,
            )
        if used is None:
            statuses[obj.ref] = _rejected(obj, problems, None)
            continue
        accepted[obj.ref] = used
        if isinstance(spec, GSLBHostRuleSpec):
            host_rules[normalize_fqdn(spec.fqdn)] = (obj.ref, spec)
        else:
            assert isinstance(spec, GlobalDeploymentPolicySpec)
            gdps.append(
                AcceptedGdp(
                    ref=obj.ref,
                    spec=spec,
                    clusters=frozenset(m.cluster for m in spec.match_clusters) or members,
                    vip_only=frozenset(m.cluster for m in spec.match_clusters if m.sync_vip_only),
                )
            )
        statuses[obj.ref] = (
            _rejected(obj, problems, used)
            if problems
            else _status(obj, PolicyState.ACCEPTED, "accepted", used)
        )

    gdps.sort(key=lambda g: (g.ref.namespace, g.ref.name))
    return Policies(
        config_ref=config_ref,
        config=config,
        members=members,
        gdps=tuple(gdps),
        host_rules=host_rules,
        zones=_zones(config),
        statuses=statuses,
        accepted=accepted,
        default_domains=frozenset(
            normalize_fqdn(g.spec.default_domain) for g in gdps if g.spec.default_domain
        ),
    )
