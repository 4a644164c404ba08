"""The specs of the kgslb custom resources: GSLBConfig, GlobalDeploymentPolicy, GSLBHostRule.

Field names follow AMKO's CRDs where they mean the same (camelCase on the wire, snake_case in
Python), so an AMKO user finds every knob where they expect it. Types and ranges live here and
become the CRD schemas in deploy/crds/; checks that need more than one field or the whole world
(a cluster that is not a member) live in the reconciler's validation.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from shared.models import (
    Algorithm,
    DownResponseType,
    GeoLocation,
    HealthMonitorSpec,
    IPAddress,
    NameServer,
    SoaSpec,
    StaticRecord,
    UnhandledPolicy,
    ZoneDnssec,
)

API_GROUP = "kgslb.io"
API_VERSION = "v1alpha1"
COPY_OF_ANNOTATION = f"{API_GROUP}/copy-of"
"""On a kgslb CR in a standby home cluster: the active home cluster it is a copy from."""
DISABLED_ANNOTATION = f"{API_GROUP}/disabled"
"""On an Ingress or LoadBalancer Service: `"true"` disables the members it yields (kept in the
GSLB service and its status, neither probed nor answered); "false" or none does not; any other
value does not either, and the watcher warns about it."""


class Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


def _cidr(value: str) -> str:
    return str(ipaddress.ip_network(value, strict=False))


Cidr = Annotated[str, AfterValidator(_cidr)]
"""An IPv4 or IPv6 network, normalised (host bits cleared)."""

_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
DNS_NAME_PATTERN = rf"^({_LABEL}\.)*{_LABEL}\.?$"
DnsName = Annotated[str, Field(pattern=DNS_NAME_PATTERN, max_length=253)]
"""A DNS name (labels of 1-63 letters, digits, `-` or `_`), no wildcard."""

ClusterName = Annotated[str, Field(min_length=1, max_length=253)]

_AMKO_ALGORITHMS = {
    "GSLB_ALGORITHM_ROUND_ROBIN": "RoundRobin",
    "GSLB_ALGORITHM_CONSISTENT_HASH": "ConsistentHash",
    "GSLB_ALGORITHM_TOPOLOGY": "Topology",
    "GSLB_ALGORITHM_GEO": "Geo",
}
_AMKO_DOWN = {
    f"GSLB_SERVICE_DOWN_RESPONSE_{name}": name
    for name in ("NONE", "ALL_RECORDS", "FALLBACK_IP", "EMPTY")
}


def _amko_name(table: dict[str, str]) -> BeforeValidator:
    """Accept AMKO's enum spellings (GSLB_ALGORITHM_ROUND_ROBIN) for the kgslb ones."""
    return BeforeValidator(
        lambda value: table.get(value, value) if isinstance(value, str) else value
    )


# GlobalDeploymentPolicy ---------------------------------------------------------------------


class LabelSelectorRequirement(Spec):
    """A Kubernetes label selector requirement."""

    key: str = Field(min_length=1, description="label key")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(
        default_factory=list,
        description="non-empty for In and NotIn, empty for Exists and DoesNotExist",
    )


class Selector(Spec):
    """Labels to match: AMKO's `label` map, the Kubernetes `matchLabels` map and
    `matchExpressions`, all ANDed. Every label must match, not just one."""

    label: dict[str, str] = Field(default_factory=dict, description="AMKO form: key: value")
    match_labels: dict[str, str] = Field(default_factory=dict, description="Kubernetes form")
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        for wanted in (self.label, self.match_labels):
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
    """Which Ingresses and LoadBalancer Services are selected: both selectors must match.
    With neither, nothing is selected (as in AMKO)."""

    app_selector: Selector = Field(
        default_factory=Selector, description="labels of the Ingress or Service"
    )
    namespace_selector: Selector = Field(
        default_factory=Selector, description="labels of the object's Namespace"
    )


class MatchCluster(Spec):
    cluster: ClusterName = Field(description="a member cluster (kubeconfig context)")
    sync_vip_only: bool = Field(
        default=False,
        description="only the VIP is synced: members from this cluster get no active health "
        "monitor and are up while they exist and have a VIP (control-plane only)",
    )


class TrafficSplit(Spec):
    cluster: ClusterName = Field(
        description="a member cluster, or (in a GSLBHostRule) the site of a third-party member"
    )
    weight: int = Field(
        default=1,
        ge=0,
        le=20,
        description="share inside its priority group; 0 drains the cluster: its members stay, "
        "are probed, and are not answered",
    )
    priority: int = Field(
        default=10,
        ge=0,
        le=100,
        description="the highest priority with a healthy member answers; the others stand by",
    )
    disabled: bool = Field(
        default=False,
        description="the cluster's members stay in the GSLB service and its status, and are "
        "neither probed nor answered",
    )


_INLINE_MONITOR = "An inline health monitor. Durations in seconds."
"""What the CRDs say of `healthMonitorTemplate`, whose type (`HealthMonitorSpec`) is also the
GSLB service's monitor."""


class TopologyRule(Spec):
    client_subnet: Cidr = Field(description="clients in this CIDR (the most specific wins)")
    site: ClusterName = Field(
        description="are answered from this member cluster or third-party site"
    )


class FallbackAlgorithm(Spec):
    """What decides when the main algorithm cannot (see PoolAlgorithmSettings)."""

    lb_algorithm: Annotated[
        Literal["RoundRobin", "ConsistentHash"], _amko_name(_AMKO_ALGORITHMS)
    ] = "RoundRobin"
    hash_mask: int | None = Field(
        default=None, ge=1, le=128, description="client prefix length, for ConsistentHash only"
    )


class PoolAlgorithmSettings(Spec):
    """How members of the winning priority group are chosen."""

    lb_algorithm: Annotated[Algorithm, _amko_name(_AMKO_ALGORITHMS)] = Field(
        default=Algorithm.ROUND_ROBIN,
        description="RoundRobin (weighted), ConsistentHash (client subnet), Topology, or Geo "
        "(the nearest member cluster by GeoIP; locations in the GSLBConfig's memberClusters)",
    )
    hash_mask: int | None = Field(
        default=None,
        ge=1,
        le=128,
        description="client prefix length for ConsistentHash (default /24 IPv4, /56 IPv6)",
    )
    topology: list[TopologyRule] = Field(
        default_factory=list, description="client subnet -> site map, for Topology only"
    )
    fallback_algorithm: FallbackAlgorithm | None = Field(
        default=None,
        description="Topology: for clients no rule maps, or whose site has no healthy member "
        "(default RoundRobin); Geo: for clients the GeoIP database does not place near a "
        "located site with a healthy member (default RoundRobin); ConsistentHash: for queries "
        "without a client address",
    )


class DownResponseSpec(Spec):
    """The answer when no member of the service is healthy."""

    type: Annotated[DownResponseType, _amko_name(_AMKO_DOWN)] = Field(
        default=DownResponseType.NONE,
        description="NONE: unhandled query; ALL_RECORDS: every member; FALLBACK_IP; "
        "EMPTY: NOERROR without answer",
    )
    fallback_ip: IPAddress | None = Field(
        default=None, alias="fallbackIP", description="the address answered for FALLBACK_IP"
    )


class GlobalDeploymentPolicySpec(Spec):
    """Selects objects in member clusters; one GSLB service per FQDN gathers their VIPs."""

    match_rules: MatchRules = Field(default_factory=MatchRules)
    match_clusters: list[MatchCluster] = Field(
        default_factory=list, description="clusters the rules apply to (default: every member)"
    )
    traffic_split: list[TrafficSplit] = Field(
        default_factory=list, description="per cluster weight and priority (default 1 and 10)"
    )
    ttl: int | None = Field(
        default=None, ge=0, le=86400, description="seconds (default: the zone's default TTL)"
    )
    health_monitor_refs: list[str] = Field(
        default_factory=list,
        description="AMKO's references to controller monitors: not supported, use "
        "healthMonitorTemplate",
    )
    health_monitor_template: HealthMonitorSpec | None = Field(
        default=None, description=_INLINE_MONITOR
    )
    pool_algorithm_settings: PoolAlgorithmSettings | None = None
    down_response: DownResponseSpec | None = None
    default_domain: DnsName | None = Field(
        default=None,
        description="LoadBalancer Services without a hostname get <name>.<namespace>.<this>",
    )
    answers: int = Field(default=1, ge=1, le=16, description="distinct members per answer")
    manual_resume: bool = Field(
        default=False,
        description="a member that goes down is held: not answered, even once healthy, until "
        "an operator resumes it (kgslb member resume FQDN CLUSTER)",
    )


# GSLBHostRule -------------------------------------------------------------------------------


class ThirdPartyMember(Spec):
    """A member outside Kubernetes."""

    vip: IPAddress = Field(description="its address, answered and probed")
    site: ClusterName = Field(description="its site name (usable in trafficSplit and topology)")


class PublicIP(Spec):
    """Answer `ip` instead of the VIPs of `cluster` (a NATed VIP); the VIP is still probed."""

    cluster: ClusterName
    ip: IPAddress


class GSLBHostRuleSpec(Spec):
    """Overrides for one FQDN. Each field set here replaces the GDP's whole field."""

    fqdn: DnsName = Field(description="the GSLB service this rule governs")
    ttl: int | None = Field(default=None, ge=0, le=86400, description="seconds")
    traffic_split: list[TrafficSplit] | None = None
    health_monitor_refs: list[str] = Field(
        default_factory=list, description="not supported, use healthMonitorTemplate"
    )
    health_monitor_template: HealthMonitorSpec | None = Field(
        default=None, description=_INLINE_MONITOR
    )
    pool_algorithm_settings: PoolAlgorithmSettings | None = None
    down_response: DownResponseSpec | None = None
    third_party_members: list[ThirdPartyMember] = Field(default_factory=list)
    public_ip: list[PublicIP] = Field(default_factory=list, alias="publicIP")
    manual_resume: bool | None = Field(
        default=None, description="overrides the GDP's manualResume for this FQDN"
    )


# GSLBConfig ---------------------------------------------------------------------------------


class MemberCluster(Spec):
    cluster_context: ClusterName = Field(description="kubeconfig context of a member cluster")
    location: GeoLocation | None = Field(
        default=None,
        description="where the cluster serves from, for lbAlgorithm Geo: latitude and "
        "longitude, a country (ISO 3166-1 alpha-2) and/or a continent code",
    )


def _host_port(value: str) -> str:
    """`host`, `host:port` or `[v6]:port`, normalised to `host:port` (port 53 by default)."""
    host, port = split_host_port(value)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(value: str) -> tuple[str, int]:
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif not host or not all(part for part in host.split(".")):
        raise ValueError(f"{value!r} is not host, host:port or [IPv6]:port")
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError(f"port {port_text!r} is not 1-65535")
    return host, int(port_text or 53)


class SecretKeyRef(Spec):
    """A key of a Kubernetes Secret in kgslb's namespace. The reconciler reads it from the
    Secret's volume: the file `<--tsig-secrets-dir>/<name>/<key>` (mount the Secret there)."""

    name: str = Field(
        min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="the Secret's name",
    )  # fmt: skip
    key: str = Field(
        default="secret", min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$",
        description="the key that holds the base64 TSIG secret, as in BIND's key statement",
    )  # fmt: skip


class TsigKeySpec(Spec):
    """The TSIG key the parent's primary server allows dynamic updates with."""

    name: DnsName = Field(description="the key's name, as the parent's server knows it")
    algorithm: Literal[
        "hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5"
    ] = "hmac-sha256"
    secret_ref: SecretKeyRef = Field(description="where its secret is")


class DelegationSpec(Spec):
    """Keep the zone's NS records, their glue (and, when the zone is signed, its DS) in the
    parent zone up to date with RFC 2136 dynamic updates."""

    parent_zone: DnsName | None = Field(
        default=None, description="the parent zone (default: the zone without its first label)"
    )
    primary: Annotated[str, AfterValidator(_host_port)] = Field(
        description="the parent zone's primary server that takes updates: host, host:port or "
        "[IPv6]:port (port 53 by default)"
    )
    tsig_key: TsigKeySpec
    ttl_seconds: int = Field(
        default=3600, ge=0, le=604800, description="TTL of the NS, glue and DS in the parent"
    )


class ZoneConfig(Spec):
    """A zone the DNS service is authoritative for (delegated to it by the company DNS)."""

    name: DnsName
    soa: SoaSpec
    nameservers: list[NameServer] = Field(
        default_factory=list, description="NS records, with glue addresses"
    )
    records: list[StaticRecord] = Field(default_factory=list, description="static records")
    default_ttl_seconds: int = Field(default=30, ge=0, le=86400)
    unhandled: UnhandledPolicy = Field(
        default=UnhandledPolicy.RESPOND,
        description="respond: NXDOMAIN/NODATA with SOA; drop: no reply (clients wait)",
    )
    dnssec: ZoneDnssec | None = Field(
        default=None,
        description="online DNSSEC signing: {enabled: true, algorithm: ECDSAP256SHA256 or "
        "ED25519}; keys are made by the reconciler, `kgslb dnssec ds ZONE` prints the DS",
    )
    delegation: DelegationSpec | None = Field(
        default=None,
        description="automatic delegation: kgslb writes the zone's NS, glue (and DS) into the "
        "parent zone with TSIG-signed RFC 2136 updates, and reports the result in status",
    )


def _each_once(clusters: list[str]) -> list[str]:
    twice = sorted({cluster for cluster in clusters if clusters.count(cluster) > 1})
    if twice:
        raise ValueError(f"lists {', '.join(twice)} more than once; name each cluster once")
    return clusters


class GSLBConfigSpec(Spec):
    """The one active GSLB configuration: member clusters, zones, runtime knobs."""

    member_clusters: list[MemberCluster] = Field(
        default_factory=list, description="clusters whose objects can become members"
    )
    refresh_interval: int = Field(
        default=1800,
        ge=0,
        le=86400,
        description="seconds between full resyncs that repair drift in KV (0: never)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "WARN", "ERROR"] = Field(
        default="INFO", description="reconciler log level, applied at runtime"
    )
    zones: list[ZoneConfig] = Field(default_factory=list)
    home_clusters: Annotated[list[ClusterName], AfterValidator(_each_once)] = Field(
        default_factory=list,
        description="possible home clusters in failover order: the active one's kgslb custom "
        "resources are the policy and are copied to the others (empty: one home cluster, as "
        "before, no copies and no failover)",
    )
    automatic_home_failover: bool = Field(
        default=False,
        description="when the active home cluster stays unreachable for homeFailoverSeconds, "
        "the next reachable one in homeClusters becomes active",
    )
    home_failover_seconds: int = Field(
        default=30,
        ge=3,
        le=86400,
        description="seconds the active home cluster must stay unreachable before the next "
        "one takes over (automaticHomeFailover)",
    )
