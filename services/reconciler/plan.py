"""The reconciler's brain: from the observed world and the policies to the desired GSLB
services, the zones and the status of every policy object. No I/O and no process-wide side
effects here (the shell tunes the garbage collector: gc_tuning.py).

`plan_fqdn` decides one GSLB service; `Planner` keeps every service current as events arrive,
re-planning only the FQDNs an object change touches (a policy change re-plans them all);
`plan` is the whole picture at once. Precedence for every per-FQDN knob: GSLBHostRule >
GlobalDeploymentPolicy > defaults, each field taken whole from the first that sets it.
"""

from __future__ import annotations

import itertools
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from services.reconciler.geo import site_locations
from services.reconciler.names import RejectedName, gslb_name_problem
from services.reconciler.statuses import final_statuses
from services.reconciler.validation import AcceptedGdp, Policies, validate
from shared.models import (
    Algorithm,
    DownResponse,
    GslbService,
    HealthMonitorSpec,
    Member,
    ObjectRef,
    ObservedObject,
    PolicyDeleted,
    PolicyObject,
    PolicyRef,
    PolicyStatus,
    PriorityGroup,
    SyncMarker,
    Tombstone,
    TopologyEntry,
    ZoneSpec,
)
from shared.policies import (
    DownResponseSpec,
    FallbackAlgorithm,
    GSLBHostRuleSpec,
    PoolAlgorithmSettings,
    TrafficSplit,
)
from shared.subjects import normalize_fqdn
from shared.wire import WireModel

DEFAULT_TTL_SECONDS = 30
DEFAULT_WEIGHT = 1
DEFAULT_PRIORITY = 10
DEFAULT_MONITOR = HealthMonitorSpec()
"""The policy's monitor goes into the service as is (one type, frozen); this one when none
sets it."""

NamespaceKey = tuple[str, str]
"""(cluster, namespace name)."""


@dataclass(frozen=True)
class Plan:
    services: dict[str, GslbService]
    zones: dict[str, ZoneSpec]
    statuses: dict[PolicyRef, PolicyStatus]
    accepted: dict[PolicyRef, PolicyObject]
    """The policy objects in force: the newest valid version of each."""
    log_level: str = "INFO"
    refresh_interval_seconds: int = 1800
    rejected_names: dict[str, RejectedName] = field(default_factory=dict)
    """FQDNs that selected objects would serve and that are not planned, with why."""


@dataclass(frozen=True)
class FqdnPlan:
    service: GslbService | None
    owner: PolicyRef | None
    """The GDP whose objects make the service."""
    shadowed: tuple[PolicyRef, ...] = ()
    """Later GDPs that select objects of this FQDN too, and leave it to the owner."""
    rejected: RejectedName | None = None
    """Selected objects would serve the FQDN, but it cannot be a GSLB service."""


# Selection ----------------------------------------------------------------------------------


def _explicit_hosts(obj: ObservedObject) -> tuple[str, ...]:
    return tuple(sorted({normalize_fqdn(h) for h in obj.hosts if h and not h.startswith("*")}))


def object_hosts(obj: ObservedObject, default_domain: str | None) -> tuple[str, ...]:
    """FQDNs an object serves for one GDP: its hosts, or for a LoadBalancer Service without a
    hostname, `<name>.<namespace>.<defaultDomain>`."""
    hosts = _explicit_hosts(obj)
    if hosts or not obj.ref.kind.named_by_default_domain or not default_domain:
        return hosts
    return (normalize_fqdn(f"{obj.ref.name}.{obj.ref.namespace}.{default_domain}"),)


def candidate_hosts(obj: ObservedObject, default_domains: Iterable[str]) -> frozenset[str]:
    """Every FQDN an object could serve under any GDP (what the FQDN index holds)."""
    if obj.ref.kind.labels_only:
        return frozenset()
    hosts = _explicit_hosts(obj)
    if hosts or not obj.ref.kind.named_by_default_domain:
        return frozenset(hosts)
    return frozenset(object_hosts(obj, domain)[0] for domain in default_domains)


def selects(
    gdp: AcceptedGdp, obj: ObservedObject, namespace_labels: Mapping[NamespaceKey, dict[str, str]]
) -> bool:
    """A GDP selects an object (an Ingress, a LoadBalancer Service, a route) that has a VIP,
    lives in one of its clusters and matches both selectors (ANDed)."""
    if not obj.vips or not gdp.selects_anything or obj.ref.kind.labels_only:
        return False
    if gdp.clusters is not None and obj.ref.cluster not in gdp.clusters:
        return False
    rules = gdp.spec.match_rules
    if not rules.app_selector.matches(obj.labels):
        return False
    labels = namespace_labels.get((obj.ref.cluster, obj.ref.namespace), {})
    return rules.namespace_selector.matches(labels)


# One GSLB service ---------------------------------------------------------------------------


def object_source(obj: ObservedObject) -> str:
    """How a member names the object it comes from (`kgslb status` shows it): the object,
    and the load-balancer hostnames its addresses were resolved from, if any."""
    if obj.resolved_from:
        return f"{obj.ref} via {', '.join(obj.resolved_from)}"
    return str(obj.ref)


def build_members(
    objects: Iterable[ObservedObject],
    split: Sequence[TrafficSplit],
    host_rule: GSLBHostRuleSpec | None,
    vip_only: frozenset[str] = frozenset(),
) -> list[PriorityGroup]:
    """Members of one FQDN, deduplicated by answered IP, grouped by priority (highest first);
    disabled by its trafficSplit entry or any `kgslb.io/disabled` object, drained by weight 0."""
    by_cluster = {entry.cluster: entry for entry in split}
    public_ip = {p.cluster: p.ip for p in host_rule.public_ip} if host_rule else {}
    merged: dict[str, tuple[Member, int]] = {}

    def add(ip: str, cluster: str, source: str, monitor_ip: str | None, off: bool) -> None:
        if ip in merged:
            member, priority = merged[ip]
            sources = sorted({*member.sources, source})
            update = {"sources": sources, "disabled": member.disabled or off}
            merged[ip] = (member.model_copy(update=update), priority)
            return
        entry = by_cluster.get(cluster)
        # Every input is already a validated value (VIPs, weights, host-rule IPs): skipping
        # re-validation here is most of the time of a full plan.
        member = construct(
            Member,
            _MEMBER_FIELDS,
            {
                "ip": ip,
                "cluster": cluster,
                "weight": entry.weight if entry else DEFAULT_WEIGHT,
                "monitor_ip": monitor_ip,
                "sources": [source],
                "control_plane_only": cluster in vip_only,
                "disabled": off or (entry is not None and entry.disabled),
            },
        )
        merged[ip] = (member, entry.priority if entry else DEFAULT_PRIORITY)

    for obj in objects:
        for vip in obj.vips:
            answered = public_ip.get(obj.ref.cluster, vip)
            monitor_ip = vip if answered != vip else None
            add(answered, obj.ref.cluster, object_source(obj), monitor_ip, obj.disabled)
    if host_rule is not None:
        for third in host_rule.third_party_members:
            add(third.vip, third.site, f"THIRDPARTY/{third.site}/{third.vip}", None, False)

    groups: dict[int, list[Member]] = defaultdict(list)
    for member, priority in merged.values():
        groups[priority].append(member)
    return [
        construct(
            PriorityGroup,
            _GROUP_FIELDS,
            {
                "priority": priority,
                "members": sorted(groups[priority], key=lambda m: (m.cluster, m.ip)),
            },
        )
        for priority in sorted(groups, reverse=True)
    ]


def _down(spec: DownResponseSpec | None) -> DownResponse:
    if spec is None:
        return DownResponse()
    return DownResponse(type=spec.type, fallback_ip=spec.fallback_ip)


def _zone_ttl(fqdn: str, zones: Mapping[str, ZoneSpec]) -> int:
    """The default TTL of the most specific zone holding the FQDN."""
    labels = fqdn.split(".")
    for index in range(len(labels)):
        zone = zones.get(".".join(labels[index:]))
        if zone is not None:
            return zone.default_ttl_seconds
    return DEFAULT_TTL_SECONDS


def _algorithm_fields(settings: PoolAlgorithmSettings | None) -> dict[str, object]:
    if settings is None:
        return {}
    algorithm = settings.lb_algorithm
    fallback = settings.fallback_algorithm
    if fallback is None and algorithm in (Algorithm.TOPOLOGY, Algorithm.GEO):
        fallback = FallbackAlgorithm()
    fields: dict[str, object] = {"algorithm": algorithm}
    if algorithm == Algorithm.CONSISTENT_HASH:
        fields["hash_mask_bits"] = settings.hash_mask
    if algorithm == Algorithm.TOPOLOGY:
        fields["topology"] = [
            TopologyEntry(client_subnet=rule.client_subnet, site=rule.site)
            for rule in settings.topology
        ]
    if fallback is not None:
        fields["fallback_algorithm"] = Algorithm(fallback.lb_algorithm)
        fields["fallback_hash_mask_bits"] = fallback.hash_mask
    return fields


def plan_fqdn(
    fqdn: str,
    candidates: Sequence[ObservedObject],
    policies: Policies,
    namespace_labels: Mapping[NamespaceKey, dict[str, str]],
) -> FqdnPlan:
    """The GSLB service of one FQDN from the objects that may serve it (in a stable order).

    The first GDP (by namespace/name) that selects any of them owns the FQDN; the service
    gathers the VIPs of the objects that GDP selects, in every cluster.
    """
    owner: AcceptedGdp | None = None
    chosen: list[ObservedObject] = []
    shadowed: list[PolicyRef] = []
    for gdp in policies.gdps:
        picked = [
            obj
            for obj in candidates
            if selects(gdp, obj, namespace_labels)
            and fqdn in object_hosts(obj, gdp.spec.default_domain)
        ]
        if not picked:
            continue
        if owner is None:
            owner, chosen = gdp, picked
        else:
            shadowed.append(gdp.ref)
    if owner is None:
        return FqdnPlan(None, None)
    if (bad := gslb_name_problem(fqdn, policies.zones)) is not None:
        refs = tuple(obj.ref for obj in chosen)
        return FqdnPlan(None, None, rejected=RejectedName(fqdn, bad, owner.ref, refs))

    spec = owner.spec
    rule_ref, rule = policies.host_rules.get(fqdn, (None, None))
    split = rule.traffic_split if rule and rule.traffic_split is not None else spec.traffic_split
    groups = build_members(chosen, split, rule, owner.vip_only)
    ttl = rule.ttl if rule and rule.ttl is not None else spec.ttl
    resume = rule.manual_resume if rule and rule.manual_resume is not None else spec.manual_resume
    monitor = (rule and rule.health_monitor_template) or spec.health_monitor_template
    algorithm = _algorithm_fields(
        rule.pool_algorithm_settings if rule and rule.pool_algorithm_settings
        else spec.pool_algorithm_settings
    )  # fmt: skip
    if algorithm.get("algorithm") == Algorithm.GEO:
        algorithm["site_locations"] = site_locations(policies.config, groups)
    # Every value below is already validated (the policies, the members): constructing the
    # service skips validating it again, a third of the time of a plan (test_plan.py checks
    # that what is built equals what validation builds, for every kind of service).
    values: dict[str, Any] = {
        "fqdn": fqdn,
        "ttl_seconds": ttl if ttl is not None else _zone_ttl(fqdn, policies.zones),
        "algorithm": Algorithm.ROUND_ROBIN,
        "hash_mask_bits": None,
        "answers": spec.answers,
        "topology": [],
        "fallback_algorithm": None,
        "fallback_hash_mask_bits": None,
        "site_locations": [],
        "groups": groups,
        "health_monitor": monitor or DEFAULT_MONITOR,
        "down_response": _down((rule and rule.down_response) or spec.down_response),
        "policies": sorted(str(r) for r in (owner.ref, rule_ref) if r is not None),
        "manual_resume": resume,
    }
    values.update(algorithm)  # (an update keeps the field order)
    service = construct(GslbService, _SERVICE_FIELDS, values)
    return FqdnPlan(service, owner.ref, tuple(shadowed))


# Incremental planning -----------------------------------------------------------------------


@dataclass(frozen=True)
class PlanDelta:
    services: dict[str, GslbService | None]
    """FQDNs whose service changed: the new service, or None when it is gone."""
    replanned: int
    full: bool
    """The policies in force changed, so every FQDN was re-planned."""
    more: bool = False
    """`replan(limit=...)` left FQDNs to plan: call it again (statuses wait for the last)."""


M = TypeVar("M", bound=BaseModel)


def construct(model: type[M], fields_set: set[str], values: dict[str, Any]) -> M:
    """A model from values already validated, one for every field, in field order: what
    `model_construct` does without its per-field default and alias lookups (24 µs a Member,
    a third of a full plan's time, now ~1 µs). `test_plan.py` checks the result equals the
    validated model."""
    obj = model.__new__(model)
    object.__setattr__(obj, "__dict__", values)
    object.__setattr__(obj, "__pydantic_fields_set__", fields_set)
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


_REF_FIELDS = set(ObjectRef.model_fields)
_OBSERVED_FIELDS = set(ObservedObject.model_fields)
_MEMBER_FIELDS = set(Member.model_fields)
_GROUP_FIELDS = set(PriorityGroup.model_fields)
_SERVICE_FIELDS = set(GslbService.model_fields)
"""Shared `model_fields_set`s (pydantic uses a given set as is): a set per object is ~0.5 KB,
a quarter of what an observed object costs to keep. Nothing serializes with exclude_unset."""


class Compactor:
    """Keeps observed objects small: one copy of each cluster, namespace and label set, one
    fields-set per model type. At 30,000 objects this is ~40 MB of the reconciler's RSS."""

    def __init__(self) -> None:
        self._labels: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}

    def observed(self, obj: ObservedObject) -> ObservedObject:
        ref = obj.ref
        compact_ref = construct(
            ObjectRef,
            _REF_FIELDS,
            {
                "cluster": sys.intern(ref.cluster),
                "kind": ref.kind,
                "namespace": sys.intern(ref.namespace),
                "name": ref.name,
            },
        )
        values = dict(obj.__dict__)
        values["ref"] = compact_ref
        values["labels"] = self._shared_labels(obj.labels)
        return construct(ObservedObject, _OBSERVED_FIELDS, values)

    def _shared_labels(self, labels: dict[str, str]) -> dict[str, str]:
        # Shared dicts are never mutated: models are frozen and the planner only reads them.
        key = tuple(sorted(labels.items()))
        shared = self._labels.get(key)
        if shared is None:
            shared = {sys.intern(k): sys.intern(v) for k, v in key}
            if len(self._labels) < MAX_SHARED_LABEL_SETS:
                self._labels[key] = shared
        return shared


MAX_SHARED_LABEL_SETS = 100_000


def _ref_order(ref: ObjectRef) -> tuple[str, str, str, str]:
    return (ref.cluster, ref.namespace, ref.name, ref.kind)


class Planner:
    """The world as the events stream says it, indexed by FQDN, with the desired services kept
    current: an object change re-plans only the FQDNs the object had or has; a namespace
    label change, those of the objects in it; a change to the policies in force, all."""

    def __init__(self, last_accepted: Mapping[PolicyRef, PolicyObject] | None = None) -> None:
        self.observed: dict[ObjectRef, ObservedObject] = {}
        self.policy_objects: dict[PolicyRef, PolicyObject] = {}
        self.last_accepted: dict[PolicyRef, PolicyObject] = dict(last_accepted or {})
        self.policies = Policies()
        self.services: dict[str, GslbService] = {}
        self.statuses: dict[PolicyRef, PolicyStatus] = {}
        self._hosts: dict[ObjectRef, frozenset[str]] = {}
        self._by_fqdn: dict[str, set[ObjectRef]] = defaultdict(set)
        self._by_namespace: dict[NamespaceKey, set[ObjectRef]] = defaultdict(set)
        self._namespace_labels: dict[NamespaceKey, dict[str, str]] = {}
        self._owner: dict[str, PolicyRef] = {}
        self._shadowed: dict[str, tuple[PolicyRef, ...]] = {}
        self._owned_count: Counter[PolicyRef] = Counter()
        self._shadowed_count: Counter[PolicyRef] = Counter()
        self.rejected_names: dict[str, RejectedName] = {}
        """FQDNs that selected objects would serve and that cannot be GSLB services."""
        self._dirty: set[str] = set()
        self._policies_changed = True
        self._compactor = Compactor()
        self._statuses_stale = False
        self._full = False
        """The policies in force changed since the last `replan` returned."""

    # Events ---------------------------------------------------------------------------------

    def apply(self, message: WireModel) -> None:
        match message:
            case ObservedObject(ref=ref) if ref.kind.labels_only:
                self.observed[ref] = message
                self._set_namespace_labels((ref.cluster, ref.name), message.labels)
            case ObservedObject(ref=ref):
                self._unindex(ref)
                kept = self._compactor.observed(message)
                self.observed[kept.ref] = kept
                self._index(kept)
            case Tombstone(ref=ref):
                self._remove(ref)
            case SyncMarker(cluster=cluster, kinds=kinds, present=present):
                keep = set(present)
                for ref in [
                    r
                    for r in self.observed
                    if r.cluster == cluster and r.kind in kinds and r.short not in keep
                ]:
                    self._remove(ref)
            case PolicyObject(ref=ref):
                self.policy_objects[ref] = message
                self._policies_changed = True
            case PolicyDeleted(ref=ref):
                self.policy_objects.pop(ref, None)
                self._policies_changed = True

    def adopt_accepted(self, accepted: Iterable[PolicyObject]) -> None:
        """Versions accepted by an earlier leader (from the published statuses): they stay in
        force while the newest version is invalid. The higher generation wins."""
        for obj in accepted:
            mine = self.last_accepted.get(obj.ref)
            if mine is None or mine.generation < obj.generation:
                self.last_accepted[obj.ref] = obj
                self._policies_changed = True

    def invalidate(self) -> None:
        """Re-plan everything on the next `replan` (the periodic full resync)."""
        self._policies_changed = True
        self._dirty |= set(self._by_fqdn) | set(self.services)

    def _set_namespace_labels(self, key: NamespaceKey, labels: dict[str, str] | None) -> None:
        if self._namespace_labels.get(key) == labels:
            return
        if labels is None:
            self._namespace_labels.pop(key, None)
        else:
            self._namespace_labels[key] = labels
        for ref in self._by_namespace.get(key, ()):
            self._dirty |= self._hosts.get(ref, frozenset())

    def _remove(self, ref: ObjectRef) -> None:
        if self.observed.pop(ref, None) is None:
            return
        if ref.kind.labels_only:
            self._set_namespace_labels((ref.cluster, ref.name), None)
        else:
            self._unindex(ref)

    def _index(self, obj: ObservedObject) -> None:
        hosts = candidate_hosts(obj, self.policies.default_domains)
        self._hosts[obj.ref] = hosts
        for host in hosts:
            self._by_fqdn[host].add(obj.ref)
        self._by_namespace[(obj.ref.cluster, obj.ref.namespace)].add(obj.ref)
        self._dirty |= hosts

    def _unindex(self, ref: ObjectRef) -> None:
        hosts = self._hosts.pop(ref, frozenset())
        for host in hosts:
            refs = self._by_fqdn[host]
            refs.discard(ref)
            if not refs:
                del self._by_fqdn[host]
        namespace = self._by_namespace.get((ref.cluster, ref.namespace))
        if namespace is not None:
            namespace.discard(ref)
        self._dirty |= hosts

    # Planning -------------------------------------------------------------------------------

    def refresh_policies(self) -> Policies:
        """Validate the policy objects applied so far, if they changed, and return the policies
        in force; the FQDNs this affects are left for `replan`."""
        if self._policies_changed:
            self._policies_changed = False
            self._statuses_stale = True
            previous = self.policies
            self.policies = validate(self.policy_objects, self.last_accepted)
            self.last_accepted = dict(self.policies.accepted)
            if self.policies.default_domains != previous.default_domains:
                for obj in [o for o in self.observed.values() if o.ref in self._hosts]:
                    self._unindex(obj.ref)
                    self._index(obj)
            if self.policies.in_force() != previous.in_force():
                self._full = True
                self._dirty |= set(self._by_fqdn) | set(self.services)
        return self.policies

    def replan(self, limit: int | None = None) -> PlanDelta:
        """Bring the services and statuses up to date with everything applied so far; with
        `limit`, plan at most that many FQDNs and say whether more are left, so that a caller
        on an event loop can let other work run between parts of a 100,000-FQDN plan."""
        self.refresh_policies()
        full, self._full = self._full, False
        # Statuses depend on the policies, on which GDP owns which FQDN and on which FQDNs
        # have a service; most object changes touch none of these.
        statuses_stale = self._statuses_stale
        changed: dict[str, GslbService | None] = {}
        batch = self._dirty
        if limit is not None and len(batch) > limit:
            batch = set(itertools.islice(self._dirty, limit))
        replanned = len(batch)
        for fqdn in batch:
            refs = sorted(self._by_fqdn.get(fqdn, ()), key=_ref_order)
            result = plan_fqdn(
                fqdn, [self.observed[r] for r in refs], self.policies, self._namespace_labels
            )
            statuses_stale |= self._record_owner(fqdn, result)
            statuses_stale |= self._record_rejected(fqdn, result)
            previous_service = self.services.get(fqdn)
            if result.service != previous_service:
                changed[fqdn] = result.service
                statuses_stale |= result.service is None or previous_service is None
                if result.service is None:
                    del self.services[fqdn]
                else:
                    self.services[fqdn] = result.service
        if batch is self._dirty:
            self._dirty.clear()
        else:
            self._dirty -= batch
        more = bool(self._dirty)
        self._statuses_stale = statuses_stale and more
        if statuses_stale and not more:
            self.statuses = final_statuses(
                self.policies,
                self._owned_count,
                self._shadowed_count,
                self.services,
                self.rejected_names,
            )
        return PlanDelta(services=changed, replanned=replanned, full=full, more=more)

    def _record_owner(self, fqdn: str, result: FqdnPlan) -> bool:
        """Record which GDPs own and shadow the FQDN; True when that changed."""
        old_owner = self._owner.pop(fqdn, None)
        old_shadowed = self._shadowed.pop(fqdn, ())
        if old_owner is not None:
            self._owned_count[old_owner] -= 1
        for ref in old_shadowed:
            self._shadowed_count[ref] -= 1
        if result.owner is not None:
            self._owner[fqdn] = result.owner
            self._owned_count[result.owner] += 1
        if result.shadowed:
            self._shadowed[fqdn] = result.shadowed
            for ref in result.shadowed:
                self._shadowed_count[ref] += 1
        return old_owner != result.owner or old_shadowed != result.shadowed

    def _record_rejected(self, fqdn: str, result: FqdnPlan) -> bool:
        """Record whether the FQDN is a rejected name; True when that changed."""
        before = self.rejected_names.pop(fqdn, None)
        if result.rejected is not None:
            self.rejected_names[fqdn] = result.rejected
        return before != result.rejected

    def snapshot(self) -> Plan:
        config = self.policies.config
        return Plan(
            services=dict(self.services),
            zones=dict(self.policies.zones),
            statuses=dict(self.statuses),
            accepted=dict(self.policies.accepted),
            log_level=config.log_level if config else "INFO",
            refresh_interval_seconds=config.refresh_interval if config else 1800,
            rejected_names=dict(self.rejected_names),
        )


def plan(
    observed: Mapping[ObjectRef, ObservedObject],
    policies: Mapping[PolicyRef, PolicyObject],
    last_accepted: Mapping[PolicyRef, PolicyObject] | None = None,
) -> Plan:
    """Decide the desired GSLB services, zones and policy statuses, all at once."""
    planner = Planner(last_accepted)
    for policy in policies.values():
        planner.apply(policy)
    for obj in observed.values():
        planner.apply(obj)
    planner.replan()
    return planner.snapshot()
