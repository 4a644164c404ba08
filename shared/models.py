"""Messages between kgslb services: what was observed, what is desired, what is healthy.

Each model is one message kind on NATS (see `shared.wire` for the envelope and `shared.subjects`
for where it travels). Units are in the field names.
"""

from __future__ import annotations

import functools
import ipaddress
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from shared import subjects
from shared.wire import WireModel


def utcnow() -> datetime:
    return datetime.now(UTC)


@functools.lru_cache(maxsize=65536)
def normalize_ip(value: str) -> str:
    """An IPv4 or IPv6 address in its normal form; ValueError if it is none. Cached: the same
    few VIPs (AKO shares one per cluster) are parsed for every object, on every hop."""
    return str(ipaddress.ip_address(value))


IPAddress = Annotated[str, AfterValidator(normalize_ip)]
"""An IPv4 or IPv6 address, normalised (so members deduplicate by IP)."""


class Value(BaseModel):
    """An immutable value nested inside a message; camelCase on the wire, like Kubernetes."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


# Observed world (watcher -> reconciler) -----------------------------------------------------


class ObjectKind(StrEnum):
    """The kinds a watcher publishes (one source each, `services/watcher/sources/`)."""

    INGRESS = "Ingress"
    SERVICE = "Service"
    NAMESPACE = "Namespace"
    HTTP_ROUTE = "HTTPRoute"
    GRPC_ROUTE = "GRPCRoute"
    TLS_ROUTE = "TLSRoute"
    ROUTE = "Route"
    """OpenShift's route.openshift.io/v1 Route."""

    @property
    def labels_only(self) -> bool:
        """Observed for its labels alone (namespace selectors), never a member."""
        return self is ObjectKind.NAMESPACE

    @property
    def named_by_default_domain(self) -> bool:
        """Without a host of its own it serves `<name>.<namespace>.<defaultDomain>` (a
        LoadBalancer Service, as AMKO names one)."""
        return self is ObjectKind.SERVICE


class ObjectRef(Value):
    """Identity of one Kubernetes object in one member cluster."""

    cluster: str = Field(description="kubeconfig context name of the member cluster")
    kind: ObjectKind
    namespace: str = Field(description="empty for cluster-scoped kinds (Namespace)")
    name: str

    @property
    def subject(self) -> str:
        return subjects.event_subject(self.cluster, self.kind, self.namespace, self.name)

    @property
    def short(self) -> str:
        """`kind/namespace/name`, unique inside one cluster (used in sync markers)."""
        return f"{self.kind}/{self.namespace}/{self.name}"

    def __str__(self) -> str:
        return f"{self.kind.upper()}/{self.cluster}/{self.namespace}/{self.name}"


class HostPath(Value):
    host: str
    path: str = "/"


class ObservedObject(WireModel):
    """The last observation of an object of a member cluster (an `ObjectKind`)."""

    KIND = "ObservedObject"
    ref: ObjectRef
    resource_version: str
    labels: dict[str, str] = Field(default_factory=dict)
    hosts: list[str] = Field(
        default_factory=list,
        description="Ingress rule hosts; for a Service, the external-dns hostname annotation",
    )
    paths: list[HostPath] = Field(default_factory=list)
    tls_hosts: list[str] = Field(default_factory=list)
    vips: list[IPAddress] = Field(
        default_factory=list, description="IPs from status.loadBalancer.ingress"
    )
    ports: list[int] = Field(default_factory=list)
    disabled: bool = Field(
        default=False,
        description='annotation kgslb.io/disabled: "true": its members are neither probed nor '
        "answered",
    )
    observed_at: datetime = Field(default_factory=utcnow)
    resolved_from: list[str] = Field(
        default_factory=list,
        description="load-balancer hostnames the VIPs were resolved from (the object "
        "reports no IP); left out of the message when empty",
    )

    @model_serializer(mode="wrap")
    def _without_empty_resolved(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if not self.resolved_from and isinstance(data, dict):
            data.pop("resolvedFrom", None)
            data.pop("resolved_from", None)
        return data


class Tombstone(WireModel):
    """The object is gone from its cluster."""

    KIND = "Tombstone"
    ref: ObjectRef
    resource_version: str = ""
    deleted_at: datetime = Field(default_factory=utcnow)


class SyncMarker(WireModel):
    """After a (re)list, which objects of these kinds exist in the cluster: anything else the
    reconciler holds for them was deleted while nobody watched."""

    KIND = "SyncMarker"
    cluster: str
    kinds: list[ObjectKind]
    present: list[str] = Field(description="`ObjectRef.short` of every object that exists")
    listed_at: datetime = Field(default_factory=utcnow)


# Policies (home watcher / kgslb up -> reconciler) --------------------------------------------


class PolicyKind(StrEnum):
    GSLB_CONFIG = "GSLBConfig"
    GLOBAL_DEPLOYMENT_POLICY = "GlobalDeploymentPolicy"
    GSLB_HOST_RULE = "GSLBHostRule"


class PolicyRef(Value):
    kind: PolicyKind
    namespace: str
    name: str

    @property
    def subject(self) -> str:
        return subjects.policy_subject(self.kind, self.namespace, self.name)

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class PolicyObject(WireModel):
    """A kgslb custom resource as the home watcher saw it. The spec stays raw: the reconciler
    validates it, so an invalid CR is Rejected with a status instead of lost on the wire."""

    KIND = "PolicyObject"
    ref: PolicyRef
    generation: int = 1
    resource_version: str = ""
    spec: dict[str, Any]
    observed_at: datetime = Field(default_factory=utcnow)
    home_cluster: str = Field(
        default="",
        description="the home cluster whose watcher published it (empty: published without "
        "a home watcher, as `kgslb up`'s seed is)",
    )


class PolicyDeleted(WireModel):
    KIND = "PolicyDeleted"
    ref: PolicyRef
    deleted_at: datetime = Field(default_factory=utcnow)
    home_cluster: str = Field(default="", description="as in PolicyObject")


class PolicyState(StrEnum):
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"


class PolicyStatus(WireModel):
    """Status of one CR, for the home watcher to write through the status subresource."""

    KIND = "PolicyStatus"
    ref: PolicyRef
    state: PolicyState
    message: str
    observed_generation: int
    accepted_generation: int | None = Field(
        default=None,
        description="generation of the version in force (None: no version is in force); "
        "a Rejected edit keeps an older generation in force",
    )
    accepted_spec: dict[str, Any] | None = Field(
        default=None,
        description="the spec in force, so a restarted or new leader reconciler keeps it",
    )
    delegation: list[DelegationStatus] = Field(
        default_factory=list,
        description="GSLBConfig: per zone with automatic delegation, the last result in the "
        "parent zone; left out when empty, so other statuses encode as before",
    )

    @model_serializer(mode="wrap")
    def _without_empty_delegation(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if not self.delegation and isinstance(data, dict):
            data.pop("delegation", None)
        return data


class DelegationState(StrEnum):
    DELEGATED = "Delegated"
    """The parent holds the zone's NS, glue (and DS) as configured."""
    FAILED = "Failed"
    """The parent could not be read or refused the update; `message` says why."""


class DelegationStatus(Value):
    """The result of keeping one zone's delegation in its parent (automatic delegation)."""

    zone: str
    parent: str
    server: str = Field(description="the parent's primary, host:port")
    state: DelegationState
    message: str = Field(description="what the parent holds, or the error (BADKEY, REFUSED...)")
    since: datetime = Field(description="when the state or message last changed")


class MemberState(StrEnum):
    """A member in a policy's `status.serving` (written by the home watcher)."""

    SERVING = "Serving"
    STANDBY = "Standby"
    DOWN = "Down"
    DRAINED = "Drained"
    DISABLED = "Disabled"
    HELD = "Held"


class CopyState(StrEnum):
    """The state a standby home watcher writes into the status of its kgslb CRs (the active
    home's CRs get the reconciler's Accepted or Rejected)."""

    COPY = "Copy"
    """A copy of the version in force in the active home cluster."""
    NOT_ACTIVE = "NotActive"
    """An edit or a new CR in a standby home cluster: not applied."""


class ClusterState(StrEnum):
    CONNECTED = "Connected"
    UNREACHABLE = "Unreachable"


class ClusterStatus(WireModel):
    """A member cluster as its watcher reaches it (list and watch working, or the last API
    error). The home watcher writes every cluster's state into the GSLBConfig status."""

    KIND = "ClusterStatus"
    cluster: str = Field(description="kubeconfig context name of the member cluster")
    state: ClusterState
    message: str = Field(default="", description="why it is unreachable: the API errors")
    since: datetime = Field(description="when the cluster entered this state")


# Desired state (reconciler -> KV -> dns, health) --------------------------------------------


class MonitorKind(StrEnum):
    HTTP = "http"
    HTTPS = "https"
    TCP = "tcp"
    NONE = "none"
    """Control-plane only: a member is up while it exists and has a VIP."""


# One type for the policies' healthMonitorTemplate and the services' monitor: its ranges become
# the CRD schema (deploy/crds/generate.py) and hold for every service in KV; checks across
# fields (timeout at most the interval) are in the reconciler's validation.
class HealthMonitorSpec(Value):
    """How to probe a member: a policy's `healthMonitorTemplate`, carried as is into the GSLB
    services it shapes. Durations in seconds; defaults are AMKO's (HEAD / every 10 s, 4 s
    timeout, 3 successes up, 3 failures down)."""

    kind: MonitorKind = Field(
        default=MonitorKind.HTTP, description="none: control-plane only, never probed"
    )
    method: Literal["HEAD", "GET"] = "HEAD"
    path: str = Field(default="/", description="HTTP path; the Host header is the FQDN")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="default 80 for http, 443 for https"
    )
    expected_codes: list[Annotated[str, Field(pattern=r"^([1-5]xx|[1-5][0-9]{2})$")]] = Field(
        default_factory=lambda: ["2xx", "3xx"], description="status codes (200) or classes (2xx)"
    )
    body_contains: str | None = Field(default=None, description="text the body must contain")
    tls_verify: bool = Field(default=False, description="verify the server certificate (https)")
    interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    timeout_seconds: float = Field(default=4.0, gt=0, le=3600, description="at most the interval")
    successes_to_up: int = Field(default=3, ge=1, le=50)
    failures_to_down: int = Field(default=3, ge=1, le=50)


class Algorithm(StrEnum):
    ROUND_ROBIN = "RoundRobin"
    CONSISTENT_HASH = "ConsistentHash"
    TOPOLOGY = "Topology"
    GEO = "Geo"


class DownResponseType(StrEnum):
    NONE = "NONE"
    """No healthy member: treat the query as unhandled (the zone's respond/drop policy)."""
    ALL_RECORDS = "ALL_RECORDS"
    """No healthy member: answer every member, ignoring health."""
    FALLBACK_IP = "FALLBACK_IP"
    EMPTY = "EMPTY"
    """No healthy member: NOERROR with an empty answer."""


class DownResponse(Value):
    type: DownResponseType = DownResponseType.NONE
    fallback_ip: IPAddress | None = None


class Member(Value):
    """One place that can serve the FQDN."""

    ip: IPAddress = Field(description="the address answered (public IP when NATed)")
    cluster: str = Field(description="member cluster context, or the site of a third-party")
    weight: int = Field(
        ge=0, le=20, description="share in its group; 0: drained (probed, not answered)"
    )
    monitor_ip: IPAddress | None = Field(
        default=None, description="address to probe when it differs from the answered one"
    )
    sources: list[str] = Field(default_factory=list, description="objects that yield it")
    control_plane_only: bool = Field(
        default=False,
        description="not probed: up while it exists and has a VIP (GDP matchClusters "
        "syncVipOnly: the cluster syncs only its VIP, so it gets no active monitor)",
    )
    disabled: bool = Field(
        default=False,
        description="neither probed nor answered (trafficSplit disabled, or the "
        "kgslb.io/disabled annotation on an object that yields it)",
    )

    @property
    def probe_ip(self) -> str:
        return self.monitor_ip or self.ip

    @property
    def answered(self) -> bool:
        """Not drained (weight 0) and not disabled: the DNS may answer it."""
        return self.weight > 0 and not self.disabled


class TopologyEntry(Value):
    """Topology routing: clients inside `client_subnet` are answered from `site`."""

    client_subnet: str = Field(description="CIDR, normalised (e.g. 10.10.0.0/16)")
    site: str = Field(description="a member cluster, or the site of a third-party member")


class GeoLocation(Value):
    """Where a site is, for the Geo algorithm: coordinates, a country, a continent, or several
    of them (a client in the site's country prefers it; coordinates decide by distance)."""

    latitude: float | None = Field(default=None, ge=-90, le=90, description="degrees north")
    longitude: float | None = Field(default=None, ge=-180, le=180, description="degrees east")
    country: str | None = Field(
        default=None, pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 code, e.g. ES"
    )
    continent: Literal["AF", "AN", "AS", "EU", "NA", "OC", "SA"] | None = Field(
        default=None, description="continent code as in MaxMind databases, e.g. EU"
    )

    @model_validator(mode="after")
    def _something(self) -> GeoLocation:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("latitude and longitude go together: set both or neither")
        if self.latitude is None and self.country is None and self.continent is None:
            raise ValueError("a location needs latitude and longitude, a country or a continent")
        return self


class SiteLocation(Value):
    site: str = Field(description="a member cluster")
    location: GeoLocation


class PriorityGroup(Value):
    priority: int = Field(ge=0, le=100, description="the highest group with a healthy member wins")
    members: list[Member]


class GslbService(WireModel):
    """The desired GSLB service for one FQDN: what the DNS answers and health probes."""

    KIND = "GslbService"
    fqdn: str
    ttl_seconds: int = Field(ge=0, le=86400)
    algorithm: Algorithm = Algorithm.ROUND_ROBIN
    hash_mask_bits: int | None = Field(
        default=None, description="client prefix length for ConsistentHash (v4: 24 default)"
    )
    answers: int = Field(default=1, ge=1, description="distinct members per answer")
    topology: list[TopologyEntry] = Field(
        default_factory=list,
        description="Topology: client subnet -> site; the most specific subnet wins",
    )
    fallback_algorithm: Algorithm | None = Field(
        default=None,
        description="decides when the algorithm cannot: Topology with no matching subnet or "
        "no healthy member in the mapped site; ConsistentHash without a client address",
    )
    fallback_hash_mask_bits: int | None = Field(
        default=None, description="client prefix length when the fallback is ConsistentHash"
    )
    site_locations: list[SiteLocation] = Field(
        default_factory=list,
        description="Geo: where the member clusters are (from the GSLBConfig); left out when "
        "empty, so a service that is not Geo encodes as before",
    )
    groups: list[PriorityGroup] = Field(description="sorted by priority, highest first")
    health_monitor: HealthMonitorSpec = Field(default_factory=HealthMonitorSpec)
    down_response: DownResponse = Field(default_factory=DownResponse)
    policies: list[str] = Field(default_factory=list, description="policies that shaped it")
    manual_resume: bool = Field(
        default=False,
        description="a member that went down is held (KV kgslb_leases hold.<fqdn>.<ip>) and "
        "answered again only when an operator resumes it",
    )

    def all_members(self) -> list[Member]:
        return [member for group in self.groups for member in group.members]

    @model_serializer(mode="wrap")
    def _without_empty_locations(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if not self.site_locations and isinstance(data, dict):
            data.pop("siteLocations", None)
            data.pop("site_locations", None)
        return data


class SoaSpec(Value):
    mname: str = Field(description="primary name server, e.g. g-dns.iberia.local.")
    rname: str = Field(description="responsible mailbox as a name, e.g. hostmaster.iberia.local.")
    serial: int = Field(default=1, ge=0, le=2**32 - 1)
    refresh_seconds: int = 10800
    retry_seconds: int = 3600
    expire_seconds: int = 86400
    minimum_seconds: int = Field(default=30, description="negative-answer TTL (RFC 2308)")


class NameServer(Value):
    name: str
    glue: list[IPAddress] = Field(default_factory=list)


RecordType = Literal["A", "AAAA", "CNAME", "TXT", "SRV", "MX", "NS", "PTR"]


class StaticRecord(Value):
    name: str = Field(description="owner name, absolute or relative to the zone")
    type: RecordType
    value: str = Field(description="RDATA in zone-file presentation form")
    ttl_seconds: int | None = None


class UnhandledPolicy(StrEnum):
    RESPOND = "respond"
    DROP = "drop"


class DnssecAlgorithm(StrEnum):
    """DNSSEC signing algorithms kgslb signs with (RFC 8624: both MUST for validators)."""

    ECDSAP256SHA256 = "ECDSAP256SHA256"
    ED25519 = "ED25519"


DNSSEC_ALGORITHM_NUMBERS = {DnssecAlgorithm.ECDSAP256SHA256: 13, DnssecAlgorithm.ED25519: 15}


class ZoneDnssec(Value):
    """Online DNSSEC signing of one zone (see docs/architecture.md, "DNSSEC")."""

    enabled: bool = Field(default=False, description="sign the zone's answers (DO=1 queries)")
    algorithm: DnssecAlgorithm = Field(
        default=DnssecAlgorithm.ECDSAP256SHA256,
        description="ECDSAP256SHA256 (algorithm 13) or ED25519 (algorithm 15)",
    )


class ZoneSpec(WireModel):
    """A zone the DNS is authoritative for."""

    KIND = "ZoneSpec"
    name: str
    soa: SoaSpec
    nameservers: list[NameServer] = Field(default_factory=list)
    records: list[StaticRecord] = Field(default_factory=list)
    default_ttl_seconds: int = Field(default=30, ge=0, le=86400)
    unhandled: UnhandledPolicy = UnhandledPolicy.RESPOND
    dnssec: ZoneDnssec | None = Field(
        default=None, description="left out when the zone is not signed (reads as before)"
    )

    @model_serializer(mode="wrap")
    def _omit_unsigned(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.dnssec is None:
            data.pop("dnssec", None)
        return data

    @property
    def signed(self) -> bool:
        return self.dnssec is not None and self.dnssec.enabled


class KeyRole(StrEnum):
    KSK = "ksk"
    """Key signing key: signs the DNSKEY RRset; its DS is in the parent (flags 257)."""
    ZSK = "zsk"
    """Zone signing key: signs every other RRset (flags 256)."""


class KeyState(StrEnum):
    ACTIVE = "active"
    """Published in the DNSKEY RRset and signing."""
    PUBLISHED = "published"
    """Published only, not signing yet: a key being introduced (pre-publish rollover)."""
    RETIRED = "retired"
    """Published only, no longer signing: kept until signatures it made have expired from
    caches, then removed."""


class DnssecKey(Value):
    role: KeyRole
    algorithm: int = Field(description="DNSSEC algorithm number (13, 15)")
    public_key: str = Field(description="the DNSKEY public key field, base64")
    private_key: str = Field(
        repr=False, description="the PKCS#8 private key, encrypted (Fernet, --dnssec-key-secret)"
    )
    state: KeyState = KeyState.ACTIVE
    created_at: datetime
    state_since: datetime | None = Field(
        default=None, description="when the key entered its state (None: since created_at)"
    )

    @property
    def in_state_since(self) -> datetime:
        return self.state_since or self.created_at

    @property
    def flags(self) -> int:
        return 257 if self.role == KeyRole.KSK else 256


class ZoneKeys(WireModel):
    """The DNSSEC keys of one signed zone (KV `kgslb_keys`), the same for every DNS replica."""

    KIND = "ZoneKeys"
    zone: str
    keys: list[DnssecKey]


# Health (health -> KV -> dns) ---------------------------------------------------------------


class HealthState(StrEnum):
    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"


class MemberHealth(WireModel):
    KIND = "MemberHealth"
    fqdn: str
    ip: IPAddress
    cluster: str
    state: HealthState
    since: datetime
    last_probe_at: datetime | None = None
    last_result: str = ""
    last_error: str = ""
    response_time_ms: float | None = None
    replica: str = ""
    site: str = Field(
        default="",
        description="the vantage point: the site of the replica that probed; empty without "
        "sites (and then left out, so a record without sites reads as before)",
    )

    @property
    def key(self) -> str:
        return subjects.member_key(self.fqdn, self.ip)

    @model_serializer(mode="wrap")
    def _without_empty_site(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _omit_empty_site(self.site, handler(self))


class HealthHeartbeat(WireModel):
    """A health replica is alive. Rewritten to KV `kgslb_leases` (`health_replica_key`) every
    heartbeat period; a replica silent for `expires_at - heartbeat_at` is dead and its members
    move. A `MemberHealth` whose `replica` has no live heartbeat is stale."""

    KIND = "HealthHeartbeat"
    replica: str
    heartbeat_at: datetime
    expires_at: datetime
    members: int = Field(default=0, ge=0, description="members this replica probes")
    site: str = Field(
        default="",
        description="the replica's site (its vantage point); replicas share members only "
        "with replicas of the same site. Left out when empty, so a heartbeat without sites "
        "reads as before",
    )

    @model_serializer(mode="wrap")
    def _without_empty_site(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _omit_empty_site(self.site, handler(self))


def _omit_empty_site(site: str, data: Any) -> Any:
    """A consumer refuses unknown fields (`extra="forbid"`): a replica without a site writes
    exactly what it wrote before sites existed, so versions without `site` still read it."""
    if not site and isinstance(data, dict):
        data.pop("site", None)
    return data


# Leadership (reconciler replicas -> KV kgslb_leases) ------------------------------------------


class Lease(WireModel):
    """The reconciler leader lease. Replicas change it only by compare-and-set on the KV
    revision; a standby takes over a lease whose revision stayed unchanged for a whole TTL."""

    KIND = "Lease"
    holder: str = Field(description="replica that leads; empty when released on shutdown")
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime = Field(description="renewed_at + ttl_seconds, for humans")
    ttl_seconds: float


class Fence(WireModel):
    """The body of the delete marker a new reconciler leader writes at `subjects.FENCE_KEY` in
    each bucket it writes, before anything else: from then on JetStream refuses every write of
    an older term there (docs/architecture.md, "Leader fencing"). For humans and tests only;
    what fences is the marker's stream sequence."""

    KIND = "Fence"
    holder: str = Field(description="the replica that took over")
    lease_revision: int = Field(ge=1, description="KV revision of its lease when it fenced")
    fenced_at: datetime


# Home clusters (watchers, reconciler leader -> KV kgslb_leases) ------------------------------


class WatcherHeartbeat(WireModel):
    """A watcher is alive. Rewritten to KV `kgslb_leases` (`watcher_key`) every heartbeat
    period; the reconciler leader counts a home cluster reachable while its watcher's key keeps
    changing with state Connected, so a home whose whole site went dark (watcher included)
    is noticed too."""

    KIND = "WatcherHeartbeat"
    cluster: str
    state: ClusterState | None = Field(
        description="as in ClusterStatus; None until the first lists finished"
    )
    home: bool = Field(default=False, description="runs the home role (--home true)")
    publishing: bool = Field(
        default=False, description="publishes its kgslb CRs as the policy right now"
    )
    serving_term: int | None = Field(
        default=None,
        description="the `ActiveHome.term` in which it last published as the active home "
        "(0: as the one home of a setup without homeClusters; None: never): a restarted "
        "watcher whose term is still current resumes without resetting its CRs",
    )
    heartbeat_at: datetime
    interval_seconds: float
    replica: str = ""


class ActiveHome(WireModel):
    """Which possible home cluster holds the policy: its kgslb CRs are published, the other
    homes keep copies. KV `kgslb_leases`, key `home`; only the reconciler leader changes it,
    by compare-and-set, so every watcher and every later leader agrees."""

    KIND = "ActiveHome"
    active: str
    term: int = Field(ge=1, description="counts the changes of the active home, from 1")
    since: datetime
    reason: str
    home_clusters: list[str] = Field(description="the GSLBConfig's homeClusters, in order")


class MemberHold(WireModel):
    """A member of a name with manualResume that went down: not answered, even once healthy,
    until an operator resumes it (`kgslb member resume FQDN CLUSTER` deletes the key). KV
    `kgslb_leases`, key `hold.<fqdn>.<ip>`; written by the home watcher, followed by every DNS
    replica, so all of them agree."""

    KIND = "MemberHold"
    fqdn: str
    ip: IPAddress = Field(description="the member's answered address (the key has the probed one)")
    cluster: str
    since: datetime
    reason: str = Field(description="why, e.g. `down under manualResume`")


class ResyncRequest(WireModel):
    """The bus lost what the watchers published (JetStream state deleted and recreated empty):
    every watcher publishes everything it holds again, policies included, forgetting what it
    remembers having published. Core NATS on `kgslb.resync`, sent by the reconciler."""

    KIND = "ResyncRequest"
    requested_by: str = Field(description="the replica that asks")
    reason: str = Field(description="what was lost, e.g. `stream KGSLB_EVENTS created anew`")
    at: datetime


# DNS query log (dns -> stream) --------------------------------------------------------------


class DnsQueryLog(WireModel):
    KIND = "DnsQueryLog"
    time: datetime
    client: str
    qname: str
    qtype: str
    rcode: str
    answers: list[str] = Field(default_factory=list)
    clusters: list[str] = Field(default_factory=list)
    latency_us: float
    replica: str
    zone: str = ""
