"""The reconciler's brain: a pure function from the observed world and the policies to the
desired GSLB services, the zones and the status of every policy object. No I/O here.

Precedence for every per-FQDN knob: GSLBHostRule > GlobalDeploymentPolicy > defaults.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from shared.models import (
    Algorithm,
    DownResponse,
    DownResponseType,
    GslbService,
    HealthMonitorSpec,
    Member,
    ObjectKind,
    ObjectRef,
    ObservedObject,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    PolicyState,
    PolicyStatus,
    PriorityGroup,
    ZoneSpec,
)
from shared.policies import (
    DownResponseSpec,
    GlobalDeploymentPolicySpec,
    GSLBConfigSpec,
    GSLBHostRuleSpec,
    HealthMonitorTemplate,
    PoolAlgorithmSettings,
    Spec,
    TrafficSplit,
)
from shared.subjects import normalize_fqdn

DEFAULT_TTL_SECONDS = 30
DEFAULT_WEIGHT = 1
DEFAULT_PRIORITY = 10
SERVICE_HOSTNAME_ANNOTATION = "external-dns.alpha.kubernetes.io/hostname"


@dataclass(frozen=True)
class Plan:
    services: dict[str, GslbService]
    zones: dict[str, ZoneSpec]
    statuses: dict[PolicyRef, PolicyStatus]
    accepted: dict[PolicyRef, PolicyObject]
    """The policy objects in force: the newest valid version of each (see `plan`)."""
    log_level: str = "INFO"
    refresh_interval_seconds: int = 1800


@dataclass
class _Validated:
    configs: dict[PolicyRef, GSLBConfigSpec] = field(default_factory=dict)
    gdps: dict[PolicyRef, GlobalDeploymentPolicySpec] = field(default_factory=dict)
    host_rules: dict[PolicyRef, GSLBHostRuleSpec] = field(default_factory=dict)
    statuses: dict[PolicyRef, PolicyStatus] = field(default_factory=dict)
    accepted: dict[PolicyRef, PolicyObject] = field(default_factory=dict)


_SPEC_MODELS: dict[PolicyKind, type[Spec]] = {
    PolicyKind.GSLB_CONFIG: GSLBConfigSpec,
    PolicyKind.GLOBAL_DEPLOYMENT_POLICY: GlobalDeploymentPolicySpec,
    PolicyKind.GSLB_HOST_RULE: GSLBHostRuleSpec,
}


def describe_validation_error(ref: PolicyRef, exc: ValidationError) -> str:
    """One line per problem: object, field path (as in the CR), value, what is allowed."""
    problems = []
    for err in exc.errors():
        path = "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        problems.append(f"{path}{shown}: {err['msg']}")
    return f"{ref}: " + "; ".join(problems)


def _reject(ref: PolicyRef, generation: int, message: str) -> PolicyStatus:
    return PolicyStatus(
        ref=ref, state=PolicyState.REJECTED, message=message, observed_generation=generation
    )


def _accept(ref: PolicyRef, generation: int, message: str) -> PolicyStatus:
    return PolicyStatus(
        ref=ref, state=PolicyState.ACCEPTED, message=message, observed_generation=generation
    )


def _parse(obj: PolicyObject) -> tuple[Spec | None, str]:
    model = _SPEC_MODELS[obj.ref.kind]
    try:
        return model.model_validate(obj.spec), ""
    except ValidationError as exc:
        return None, describe_validation_error(obj.ref, exc)


def _cross_check(
    ref: PolicyRef, spec: Spec, members: set[str] | None, host_rule_owner: dict[str, PolicyRef]
) -> str:
    """Checks that need more than the object itself. Returns '' when fine."""
    problems: list[str] = []
    if isinstance(spec, GlobalDeploymentPolicySpec | GSLBHostRuleSpec):
        if spec.health_monitor_refs and spec.health_monitor_template is not None:
            problems.append(
                "spec.healthMonitorRefs and spec.healthMonitorTemplate are both set: "
                "use one of them"
            )
        if spec.health_monitor_refs:
            problems.append(
                f"spec.healthMonitorRefs = {spec.health_monitor_refs!r}: monitor references are "
                "not supported by kgslb; use spec.healthMonitorTemplate"
            )
        down = spec.down_response
        if down is not None and down.type == DownResponseType.FALLBACK_IP and not down.fallback_ip:
            problems.append(
                "spec.downResponse.type = FALLBACK_IP needs spec.downResponse.fallbackIP"
            )
        split = spec.traffic_split or []
        seen: set[str] = set()
        for index, entry in enumerate(split):
            if entry.cluster in seen:
                problems.append(
                    f"spec.trafficSplit[{index}].cluster = {entry.cluster!r}: listed twice"
                )
            seen.add(entry.cluster)
            third_party_sites = (
                {m.site for m in spec.third_party_members}
                if isinstance(spec, GSLBHostRuleSpec)
                else set()
            )
            if members is not None and entry.cluster not in members | third_party_sites:
                problems.append(
                    f"spec.trafficSplit[{index}].cluster = {entry.cluster!r}: not a member "
                    f"cluster (allowed: {', '.join(sorted(members)) or 'none'})"
                )
    if isinstance(spec, GlobalDeploymentPolicySpec) and members is not None:
        for index, match in enumerate(spec.match_clusters):
            if match.cluster not in members:
                problems.append(
                    f"spec.matchClusters[{index}].cluster = {match.cluster!r}: not a member "
                    f"cluster (allowed: {', '.join(sorted(members)) or 'none'})"
                )
    if isinstance(spec, GSLBHostRuleSpec):
        fqdn = normalize_fqdn(spec.fqdn)
        owner = host_rule_owner.get(fqdn)
        if owner is not None and owner != ref:
            problems.append(f"spec.fqdn = {spec.fqdn!r}: already governed by {owner}")
    if isinstance(spec, GSLBConfigSpec):
        names = [normalize_fqdn(zone.name) for zone in spec.zones]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(f"spec.zones: zone {duplicates[0]!r} is listed twice")
    return f"{ref}: " + "; ".join(problems) if problems else ""


def _validate(
    policies: Mapping[PolicyRef, PolicyObject], last_accepted: Mapping[PolicyRef, PolicyObject]
) -> _Validated:
    """Validate every policy. An invalid object is Rejected and its last accepted version, if
    any, stays in force: a typo never drops what was working."""
    out = _Validated()
    ordered = sorted(policies.values(), key=lambda o: (o.ref.namespace, o.ref.name))

    def in_force(obj: PolicyObject) -> tuple[PolicyObject | None, Spec | None, str]:
        spec, error = _parse(obj)
        if spec is not None:
            return obj, spec, ""
        previous = last_accepted.get(obj.ref)
        if previous is not None:
            previous_spec, _ = _parse(previous)
            return previous, previous_spec, error
        return None, None, error

    # GSLBConfig first: it defines the member clusters the others are checked against.
    members: set[str] | None = None
    active_config: PolicyRef | None = None
    for obj in (o for o in ordered if o.ref.kind == PolicyKind.GSLB_CONFIG):
        used, spec, error = in_force(obj)
        if active_config is not None:
            out.statuses[obj.ref] = _reject(
                obj.ref,
                obj.generation,
                f"{obj.ref}: only one GSLBConfig can be active and {active_config} is",
            )
            continue
        if spec is not None:
            error = error or _cross_check(obj.ref, spec, None, {})
        if error and (used is None or used is obj):
            out.statuses[obj.ref] = _reject(obj.ref, obj.generation, error)
            continue
        assert isinstance(spec, GSLBConfigSpec) and used is not None
        active_config = obj.ref
        out.configs[obj.ref] = spec
        out.accepted[obj.ref] = used
        members = {m.cluster_context for m in spec.member_clusters} or None
        out.statuses[obj.ref] = (
            _reject(obj.ref, obj.generation, f"{error} (keeping generation {used.generation})")
            if error
            else _accept(obj.ref, obj.generation, "active GSLBConfig")
        )

    host_rule_owner: dict[str, PolicyRef] = {}
    for obj in (o for o in ordered if o.ref.kind != PolicyKind.GSLB_CONFIG):
        used, spec, error = in_force(obj)
        if spec is not None:
            cross = _cross_check(obj.ref, spec, members, host_rule_owner)
            if cross and used is obj:
                error, used, spec = cross, None, None
                previous = last_accepted.get(obj.ref)
                if previous is not None:
                    previous_spec, _ = _parse(previous)
                    if previous_spec is not None and not _cross_check(
                        obj.ref, previous_spec, members, host_rule_owner
                    ):
                        used, spec = previous, previous_spec
            elif cross:
                error = f"{error}; {cross}"
        if used is None or spec is None:
            out.statuses[obj.ref] = _reject(obj.ref, obj.generation, error)
            continue
        out.accepted[obj.ref] = used
        if isinstance(spec, GSLBHostRuleSpec):
            host_rule_owner[normalize_fqdn(spec.fqdn)] = obj.ref
            out.host_rules[obj.ref] = spec
        elif isinstance(spec, GlobalDeploymentPolicySpec):
            out.gdps[obj.ref] = spec
        out.statuses[obj.ref] = (
            _reject(obj.ref, obj.generation, f"{error} (keeping generation {used.generation})")
            if error
            else _accept(obj.ref, obj.generation, "accepted")
        )
    return out


def _object_hosts(obj: ObservedObject, default_domain: str | None) -> list[str]:
    hosts = [normalize_fqdn(h) for h in obj.hosts if h and not h.startswith("*")]
    if not hosts and obj.ref.kind == ObjectKind.SERVICE and default_domain:
        hosts = [normalize_fqdn(f"{obj.ref.name}.{obj.ref.namespace}.{default_domain}")]
    return hosts


def select_objects(
    gdp: GlobalDeploymentPolicySpec,
    observed: Iterable[ObservedObject],
    namespace_labels: Mapping[tuple[str, str], Mapping[str, str]],
    members: set[str] | None,
) -> list[ObservedObject]:
    """The Ingresses and LoadBalancer Services a GDP selects: in a matched member cluster,
    with a VIP, and matching both selectors (ANDed). Empty matchRules select nothing."""
    rules = gdp.match_rules
    if rules.app_selector.is_empty and rules.namespace_selector.is_empty:
        return []
    clusters = {m.cluster for m in gdp.match_clusters} or members
    chosen = []
    for obj in observed:
        if obj.ref.kind == ObjectKind.NAMESPACE or not obj.vips:
            continue
        if clusters is not None and obj.ref.cluster not in clusters:
            continue
        if not rules.app_selector.matches(obj.labels):
            continue
        ns_labels = namespace_labels.get((obj.ref.cluster, obj.ref.namespace), {})
        if not rules.namespace_selector.matches(dict(ns_labels)):
            continue
        chosen.append(obj)
    return chosen


def _monitor(template: HealthMonitorTemplate | None) -> HealthMonitorSpec:
    if template is None:
        return HealthMonitorSpec()
    return HealthMonitorSpec.model_validate(template.model_dump())


def _down(spec: DownResponseSpec | None) -> DownResponse:
    if spec is None:
        return DownResponse()
    return DownResponse(type=spec.type, fallback_ip=spec.fallback_ip)


def _zone_ttl(fqdn: str, zones: Mapping[str, ZoneSpec]) -> int:
    best: ZoneSpec | None = None
    for name, zone in zones.items():
        if (fqdn == name or fqdn.endswith("." + name)) and (
            best is None or len(name) > len(best.name)
        ):
            best = zone
    return best.default_ttl_seconds if best else DEFAULT_TTL_SECONDS


def build_members(
    fqdn_objects: Iterable[ObservedObject],
    split: list[TrafficSplit],
    host_rule: GSLBHostRuleSpec | None,
) -> list[PriorityGroup]:
    """Members of one FQDN, deduplicated by answered IP, grouped by priority (highest first)."""
    by_cluster = {entry.cluster: entry for entry in split}
    public_ip = {p.cluster: p.ip for p in host_rule.public_ip} if host_rule else {}
    merged: dict[str, tuple[Member, int]] = {}

    def add(ip: str, cluster: str, source: str, monitor_ip: str | None) -> None:
        entry = by_cluster.get(cluster)
        weight = entry.weight if entry else DEFAULT_WEIGHT
        priority = entry.priority if entry else DEFAULT_PRIORITY
        if ip in merged:
            member, prio = merged[ip]
            sources = sorted({*member.sources, source})
            merged[ip] = (member.model_copy(update={"sources": sources}), prio)
            return
        member = Member(
            ip=ip, cluster=cluster, weight=weight, monitor_ip=monitor_ip, sources=[source]
        )
        merged[ip] = (member, priority)

    for obj in fqdn_objects:
        for vip in obj.vips:
            answered = public_ip.get(obj.ref.cluster, vip)
            add(answered, obj.ref.cluster, str(obj.ref), vip if answered != vip else None)
    if host_rule is not None:
        for third in host_rule.third_party_members:
            add(third.vip, third.site, f"THIRDPARTY/{third.site}/{third.vip}", None)

    groups: dict[int, list[Member]] = defaultdict(list)
    for member, priority in merged.values():
        groups[priority].append(member)
    return [
        PriorityGroup(
            priority=priority, members=sorted(groups[priority], key=lambda m: (m.cluster, m.ip))
        )
        for priority in sorted(groups, reverse=True)
    ]


def _algorithm(settings: PoolAlgorithmSettings | None) -> tuple[Algorithm, int | None]:
    if settings is None:
        return Algorithm.ROUND_ROBIN, None
    return settings.lb_algorithm, settings.hash_mask


def plan(
    observed: Mapping[ObjectRef, ObservedObject],
    policies: Mapping[PolicyRef, PolicyObject],
    last_accepted: Mapping[PolicyRef, PolicyObject] | None = None,
) -> Plan:
    """Decide the desired GSLB services, zones and policy statuses."""
    valid = _validate(policies, last_accepted or {})
    config = next(iter(valid.configs.values()), None)
    members = {m.cluster_context for m in config.member_clusters} if config else set()
    member_filter = members or None

    zones = {
        normalize_fqdn(zone.name): ZoneSpec(
            name=normalize_fqdn(zone.name),
            soa=zone.soa,
            nameservers=zone.nameservers,
            records=zone.records,
            default_ttl_seconds=zone.default_ttl_seconds,
            unhandled=zone.unhandled,
        )
        for zone in (config.zones if config else [])
    }

    namespace_labels = {
        (obj.ref.cluster, obj.ref.name): obj.labels
        for obj in observed.values()
        if obj.ref.kind == ObjectKind.NAMESPACE
    }
    rules_by_fqdn = {normalize_fqdn(r.fqdn): (ref, r) for ref, r in valid.host_rules.items()}

    # fqdn -> (the GDP that owns it, objects). The first GDP (by namespace/name) wins an FQDN.
    owners: dict[str, PolicyRef] = {}
    objects_by_fqdn: dict[str, list[ObservedObject]] = defaultdict(list)
    selected_count: dict[PolicyRef, int] = defaultdict(int)
    for gdp_ref in sorted(valid.gdps, key=lambda r: (r.namespace, r.name)):
        gdp = valid.gdps[gdp_ref]
        for obj in select_objects(gdp, observed.values(), namespace_labels, member_filter):
            for host in _object_hosts(obj, gdp.default_domain):
                if owners.setdefault(host, gdp_ref) != gdp_ref:
                    continue
                objects_by_fqdn[host].append(obj)
                selected_count[gdp_ref] += 1

    services: dict[str, GslbService] = {}
    for fqdn, objs in objects_by_fqdn.items():
        gdp_ref = owners[fqdn]
        gdp = valid.gdps[gdp_ref]
        rule_ref, rule = rules_by_fqdn.get(fqdn, (None, None))
        split = rule.traffic_split if rule and rule.traffic_split is not None else gdp.traffic_split
        groups = build_members(
            sorted(objs, key=lambda o: (o.ref.cluster, o.ref.namespace, o.ref.name)), split, rule
        )
        if not groups:
            continue
        algorithm, hash_mask = _algorithm(
            rule.pool_algorithm_settings
            if rule and rule.pool_algorithm_settings
            else gdp.pool_algorithm_settings
        )
        ttl = rule.ttl if rule and rule.ttl is not None else gdp.ttl
        services[fqdn] = GslbService(
            fqdn=fqdn,
            ttl_seconds=ttl if ttl is not None else _zone_ttl(fqdn, zones),
            algorithm=algorithm,
            hash_mask_bits=hash_mask,
            answers=gdp.answers,
            groups=groups,
            health_monitor=_monitor(
                rule.health_monitor_template
                if rule and rule.health_monitor_template
                else gdp.health_monitor_template
            ),
            down_response=_down(
                rule.down_response if rule and rule.down_response else gdp.down_response
            ),
            policies=sorted(str(r) for r in (gdp_ref, rule_ref) if r is not None),
        )

    statuses = dict(valid.statuses)
    for gdp_ref, gdp in valid.gdps.items():
        status = statuses[gdp_ref]
        if status.state == PolicyState.ACCEPTED:
            note = (
                "matchRules is empty: selects nothing"
                if gdp.match_rules.app_selector.is_empty
                and gdp.match_rules.namespace_selector.is_empty
                else f"selects {selected_count[gdp_ref]} object host(s)"
            )
            statuses[gdp_ref] = status.model_copy(update={"message": f"accepted: {note}"})

    return Plan(
        services=services,
        zones=zones,
        statuses=statuses,
        accepted=valid.accepted,
        log_level=config.log_level if config else "INFO",
        refresh_interval_seconds=config.refresh_interval if config else 1800,
    )


def changed_keys(
    desired: Mapping[str, BaseModel], current: Mapping[str, BaseModel]
) -> tuple[dict[str, BaseModel], list[str]]:
    """What to write and what to delete so that `current` becomes `desired`."""
    writes = {key: value for key, value in desired.items() if current.get(key) != value}
    deletes = sorted(key for key in current if key not in desired)
    return writes, deletes
