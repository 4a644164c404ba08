"""The specs of the kgslb custom resources: GSLBConfig, GlobalDeploymentPolicy, GSLBHostRule.

Field names follow AMKO's CRDs where they mean the same (camelCase on the wire, snake_case in
Python), so an AMKO user finds every knob where they expect it. Range checks live here; checks
that need the whole world (a cluster that is not a member) live in the reconciler's `plan`.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shared.models import (
    Algorithm,
    DownResponseType,
    IPAddress,
    MonitorKind,
    NameServer,
    SoaSpec,
    StaticRecord,
    UnhandledPolicy,
)


class Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


def _cidr(value: str) -> str:
    return str(ipaddress.ip_network(value, strict=False))


Cidr = Annotated[str, AfterValidator(_cidr)]

_AMKO_ALGORITHMS = {
    "GSLB_ALGORITHM_ROUND_ROBIN": "RoundRobin",
    "GSLB_ALGORITHM_CONSISTENT_HASH": "ConsistentHash",
    "GSLB_ALGORITHM_TOPOLOGY": "Topology",
}
_AMKO_DOWN = {
    f"GSLB_SERVICE_DOWN_RESPONSE_{name}": name
    for name in ("NONE", "ALL_RECORDS", "FALLBACK_IP", "EMPTY")
}


def _amko_name(table: dict[str, str]) -> AfterValidator | BeforeValidator:
    return BeforeValidator(
        lambda value: table.get(value, value) if isinstance(value, str) else value
    )


class LabelSelectorRequirement(Spec):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class Selector(Spec):
    """AMKO's `{label: {k: v}}` form, ANDed with Kubernetes `matchExpressions`."""

    label: dict[str, str] = Field(default_factory=dict)
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        wanted = {**self.label, **self.match_labels}
        if any(labels.get(key) != value for key, value in wanted.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and labels.get(req.key) not in req.values:
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True

    @property
    def is_empty(self) -> bool:
        return not (self.label or self.match_labels or self.match_expressions)


class MatchRules(Spec):
    app_selector: Selector = Field(default_factory=Selector)
    namespace_selector: Selector = Field(default_factory=Selector)


class MatchCluster(Spec):
    cluster: str
    sync_vip_only: bool = False


class TrafficSplit(Spec):
    cluster: str
    weight: int = Field(default=1, ge=1, le=20)
    priority: int = Field(default=10, ge=0, le=100)


class HealthMonitorTemplate(Spec):
    """An inline monitor. Durations in seconds."""

    kind: MonitorKind = MonitorKind.HTTP
    method: Literal["HEAD", "GET"] = "HEAD"
    path: str = "/"
    port: int | None = Field(default=None, ge=1, le=65535)
    expected_codes: list[Annotated[str, Field(pattern=r"^([1-5]xx|[1-5][0-9]{2})$")]] = Field(
        default_factory=lambda: ["2xx", "3xx"]
    )
    body_contains: str | None = None
    tls_verify: bool = False
    interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    timeout_seconds: float = Field(default=4.0, gt=0, le=3600)
    successes_to_up: int = Field(default=3, ge=1, le=50)
    failures_to_down: int = Field(default=3, ge=1, le=50)


class TopologyRule(Spec):
    client_subnet: Cidr
    site: str


class PoolAlgorithmSettings(Spec):
    lb_algorithm: Annotated[Algorithm, _amko_name(_AMKO_ALGORITHMS)] = Algorithm.ROUND_ROBIN
    hash_mask: int | None = Field(default=None, ge=1, le=128)
    fallback_algorithm: PoolAlgorithmSettings | None = None
    topology: list[TopologyRule] = Field(default_factory=list)


class DownResponseSpec(Spec):
    type: Annotated[DownResponseType, _amko_name(_AMKO_DOWN)] = DownResponseType.NONE
    fallback_ip: IPAddress | None = Field(default=None, alias="fallbackIP")


class GlobalDeploymentPolicySpec(Spec):
    match_rules: MatchRules = Field(default_factory=MatchRules)
    match_clusters: list[MatchCluster] = Field(default_factory=list)
    traffic_split: list[TrafficSplit] = Field(default_factory=list)
    ttl: int | None = Field(default=None, ge=0, le=86400)
    health_monitor_refs: list[str] = Field(default_factory=list)
    health_monitor_template: HealthMonitorTemplate | None = None
    pool_algorithm_settings: PoolAlgorithmSettings | None = None
    down_response: DownResponseSpec | None = None
    default_domain: str | None = None
    answers: int = Field(default=1, ge=1, le=16)


class ThirdPartyMember(Spec):
    vip: IPAddress
    site: str


class PublicIP(Spec):
    cluster: str
    ip: IPAddress


class GSLBHostRuleSpec(Spec):
    fqdn: str
    ttl: int | None = Field(default=None, ge=0, le=86400)
    traffic_split: list[TrafficSplit] | None = None
    health_monitor_refs: list[str] = Field(default_factory=list)
    health_monitor_template: HealthMonitorTemplate | None = None
    pool_algorithm_settings: PoolAlgorithmSettings | None = None
    down_response: DownResponseSpec | None = None
    third_party_members: list[ThirdPartyMember] = Field(default_factory=list)
    public_ip: list[PublicIP] = Field(default_factory=list, alias="publicIP")


class MemberCluster(Spec):
    cluster_context: str


class ZoneConfig(Spec):
    name: str
    soa: SoaSpec
    nameservers: list[NameServer] = Field(default_factory=list)
    records: list[StaticRecord] = Field(default_factory=list)
    default_ttl_seconds: int = Field(default=30, ge=0, le=86400)
    unhandled: UnhandledPolicy = UnhandledPolicy.RESPOND


class GSLBConfigSpec(Spec):
    member_clusters: list[MemberCluster] = Field(default_factory=list)
    refresh_interval: int = Field(default=1800, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "WARN", "ERROR"] = "INFO"
    zones: list[ZoneConfig] = Field(default_factory=list)
