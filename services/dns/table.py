"""The in-memory answer table: zones, static records and GSLB names pre-rendered to wire
bytes, and the lookup that turns one parsed query into one response. A query never waits on
anything; the table is rebuilt piecewise as KV updates arrive, and every change bumps
`generation` so that the server's response cache knows to start over.

SOA serials are derived, not stored: serial = configured serial + the KV revision of the zone
+ the highest KV revision of any GSLB service inside the zone (deletions included). KV
revisions are JetStream sequence numbers, identical for every DNS replica that has seen the same
updates, they only grow, and any change to the zone or one of its services raises one of them,
so the serial increases with every change and agrees across replicas without coordination.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import itertools
import struct
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from services.dns import wire
from services.dns.selection import client_bucket, distinct_from, rendezvous_pick, smooth_wrr_order
from shared.models import (
    Algorithm,
    DownResponseType,
    GslbService,
    HealthState,
    Member,
    TopologyEntry,
    UnhandledPolicy,
    ZoneSpec,
)
from shared.names import BadName, hostname_problem
from shared.subjects import member_key, normalize_fqdn

SERIAL_MODULO = 2**32
MAX_CNAME_CHAIN = 8
DS = 43
ANY_PREFERENCE = (wire.A, wire.AAAA, wire.CNAME, wire.MX, wire.TXT, wire.SRV, wire.NS, wire.SOA)
"""RFC 8482: ANY gets one RRset; the first of these the name has."""


@dataclass(frozen=True, slots=True)
class RRSet:
    """Records of one owner and type. `tails` are each record without its owner name, so the
    set renders under the question pointer or under any owner (CNAME targets, referrals)."""

    tails: tuple[bytes, ...]
    ips: tuple[str, ...] = ()
    """The addresses of an A/AAAA set, for query logs."""

    @property
    def count(self) -> int:
        return len(self.tails)

    def render(self, owner: bytes = wire.QUESTION_NAME_POINTER) -> bytes:
        return b"".join(owner + tail for tail in self.tails)


def _tail(rtype: int, ttl: int, data: bytes) -> bytes:
    return struct.pack("!HHIH", rtype, wire.CLASS_IN, ttl, len(data)) + data


def _rrset(rtype: int, ttl: int, datas: Iterable[bytes], ips: tuple[str, ...] = ()) -> RRSet:
    return RRSet(tuple(_tail(rtype, ttl, data) for data in datas), ips)


@dataclass(frozen=True, slots=True)
class Delegation:
    """A zone cut below the apex: NS records (owner = the cut) and their glue."""

    key: bytes
    ns: RRSet
    glue: bytes
    glue_count: int


@dataclass
class Zone:
    name: str
    key: bytes
    spec: ZoneSpec
    serial: int
    soa: RRSet
    """Kept apart from `static` so that a new serial re-renders only the SOA."""
    negative_soa: bytes
    """The SOA with its full owner name and the negative TTL, for NXDOMAIN/NODATA."""
    drop_unhandled: bool
    static: dict[bytes, dict[int, RRSet]]
    """Owner -> type -> records; the apex is always present, without its SOA."""
    apex_glue: tuple[bytes, int]
    cuts: dict[bytes, Delegation]


class Target(NamedTuple):
    """A member as the DNS needs it: what to answer, where it runs, and its health key."""

    ip: str
    cluster: str
    weight: int
    health_key: str


class TopologyRule(NamedTuple):
    """Clients whose address is inside `network` (family, base address, prefix) go to `site`."""

    version: int
    network: int
    prefix: int
    site: str

    def contains(self, version: int, address: int, bits: int) -> bool:
        shift = bits - self.prefix
        return version == self.version and address >> shift == self.network >> shift


def topology_rules(
    entries: Iterable[TopologyEntry], interned: dict[str, str]
) -> tuple[TopologyRule, ...]:
    rules = []
    for entry in entries:
        network = ipaddress.ip_network(entry.client_subnet, strict=False)
        site = interned.setdefault(entry.site, entry.site)
        rules.append(
            TopologyRule(network.version, int(network.network_address), network.prefixlen, site)
        )
    # The most specific subnet wins: longest prefix first.
    return tuple(sorted(rules, key=lambda rule: -rule.prefix))


def site_of(rules: tuple[TopologyRule, ...], client_ip: str) -> str | None:
    """The site of the most specific rule containing the client, if any."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return None
    version, value, bits = address.version, int(address), address.max_prefixlen
    for rule in rules:
        if rule.contains(version, value, bits):
            return rule.site
    return None


@dataclass(frozen=True, slots=True)
class NameSpec:
    """A GSLB name reduced to what answering needs: a compact stand-in for `GslbService`,
    so that tens of thousands of names stay small in memory."""

    fqdn: str
    ttl: int
    consistent_hash: bool
    hash_mask_bits: int | None
    answers: int
    down: DownResponseType
    fallback_ip: str | None
    groups: tuple[tuple[Target, ...], ...]
    """Member groups, highest priority first."""
    topology: tuple[TopologyRule, ...] = ()
    """Topology: client subnet -> site, most specific first. Empty for other algorithms."""

    @classmethod
    def of(cls, service: GslbService, interned: dict[str, str]) -> NameSpec:
        fqdn = normalize_fqdn(service.fqdn)

        def target(member: Member) -> Target:
            cluster = interned.setdefault(member.cluster, member.cluster)
            return Target(member.ip, cluster, member.weight, member_key(fqdn, member.probe_ip))

        groups = sorted(service.groups, key=lambda g: -g.priority)
        topology = service.algorithm == Algorithm.TOPOLOGY
        # Topology names fall back to `fallback_algorithm` (RoundRobin unless set) for clients
        # no rule maps, or whose site has no healthy member: the name's own rotation.
        hashed = service.algorithm == Algorithm.CONSISTENT_HASH or (
            topology and service.fallback_algorithm == Algorithm.CONSISTENT_HASH
        )
        return cls(
            fqdn=fqdn,
            ttl=service.ttl_seconds,
            consistent_hash=hashed,
            hash_mask_bits=service.fallback_hash_mask_bits if topology else service.hash_mask_bits,
            answers=service.answers,
            down=service.down_response.type,
            fallback_ip=service.down_response.fallback_ip,
            groups=tuple(tuple(target(m) for m in g.members) for g in groups),
            topology=topology_rules(service.topology, interned) if topology else (),
        )

    def targets(self) -> list[Target]:
        return [target for group in self.groups for target in group]


@dataclass(frozen=True, slots=True)
class Cycle:
    """One smooth-WRR cycle for a weight vector and answer count: which members answer at
    each position. Shared by every name with the same weights (most names have a few)."""

    order: tuple[int, ...]
    chosen: tuple[tuple[int, ...], ...]
    first_position: dict[int, int]


@functools.lru_cache(maxsize=4096)
def cycle_for(weights: tuple[int, ...], answers: int) -> Cycle:
    order = tuple(smooth_wrr_order(weights))
    interned: dict[tuple[int, ...], tuple[int, ...]] = {}
    chosen = tuple(
        interned.setdefault(c, c)
        for c in (tuple(distinct_from(order, p, answers)) for p in range(len(order)))
    )
    return Cycle(order, chosen, {index: order.index(index) for index in set(order)})


class Rotation:
    """What one GSLB name answers for one address family under the current health: the
    members of the best priority group in one smooth-WRR cycle, with every position's answer
    records rendered once. `next_position` is the shared round-robin turn."""

    __slots__ = (
        "_turns", "consistent_hash", "count", "cycle", "hash_mask_bits", "members",
        "next_position", "picks", "qtype", "records", "tails",
    )  # fmt: skip

    def __init__(
        self,
        members: list[Target],
        qtype: int,
        ttl: int,
        answers: int,
        spec: NameSpec,
        consistent_hash: bool | None = None,
    ) -> None:
        self.members = tuple(members)
        self.qtype = qtype
        self.count = min(answers, len(members))
        self.cycle = cycle_for(tuple(m.weight for m in members), self.count)
        self.tails = tuple(_tail(qtype, ttl, ipaddress.ip_address(m.ip).packed) for m in members)
        records: dict[tuple[int, ...], bytes] = {}
        for chosen in self.cycle.chosen:
            if chosen not in records:
                records[chosen] = b"".join(
                    wire.QUESTION_NAME_POINTER + self.tails[i] for i in chosen
                )
        self.records = [records[chosen] for chosen in self.cycle.chosen]
        """Per cycle position, the answer records under the question pointer (shared bytes)."""
        self.consistent_hash = spec.consistent_hash if consistent_hash is None else consistent_hash
        self.hash_mask_bits = spec.hash_mask_bits
        # The turn counter is the only per-query state: position = turns mod cycle length,
        # so how often each position (and so each member) was answered follows from one
        # integer, read at scrape time instead of counted per query. map + count stay in C.
        self._turns = itertools.count()
        self.next_position: Callable[[], int] = map(
            len(self.cycle.order).__rmod__, self._turns
        ).__next__
        self.picks: list[int] | None = None
        """Per position, answers picked by consistent hash instead of taking a turn."""

    @property
    def turns(self) -> int:
        """Round-robin turns taken so far (itertools.count shows its value only in repr)."""
        return int(repr(self._turns)[6:-1])

    def count_pick(self, position: int) -> int:
        if self.picks is None:
            self.picks = [0] * len(self.cycle.order)
        self.picks[position] += 1
        return position

    def answers_by_member(self) -> Counter[Target]:
        """How many answers each member was in: every turn so far (a whole number of cycles
        and the first positions of the next) and every consistent-hash pick."""
        chosen = self.cycle.chosen
        turns = self.turns
        full_cycles, partial = divmod(turns, len(chosen))
        per_position = [full_cycles + (1 if p < partial else 0) for p in range(len(chosen))]
        if self.picks is not None:
            per_position = [t + p for t, p in zip(per_position, self.picks, strict=True)]
        counts: Counter[Target] = Counter()
        for position, times in enumerate(per_position):
            if times:
                for index in chosen[position]:
                    counts[self.members[index]] += times
        return counts

    def chosen(self, position: int) -> tuple[Target, ...]:
        return tuple(self.members[i] for i in self.cycle.chosen[position])

    def position_for(self, client_ip: str) -> int:
        """Consistent hash: the position whose first member owns the client's subnet."""
        owner = rendezvous_pick(
            client_bucket(client_ip, self.hash_mask_bits),
            [m.ip for m in self.members],
            [m.weight for m in self.members],
        )
        return self.cycle.first_position[owner]

    @property
    def scope_prefix(self) -> int:
        """RFC 7871 SCOPE: how much of the client subnet the answer depends on."""
        if not self.consistent_hash:
            return 0
        if self.hash_mask_bits is not None:
            return self.hash_mask_bits
        return 24 if self.qtype == wire.A else 56

    def render(self, position: int, owner: bytes) -> bytes:
        if owner == wire.QUESTION_NAME_POINTER:
            return self.records[position]
        return b"".join(owner + self.tails[i] for i in self.cycle.chosen[position])


def _family_matches(ip: str, qtype: int) -> bool:
    return (":" not in ip) == (qtype == wire.A)


class GslbAnswerer:
    """Answers for one GSLB name under the current health: members of the best priority group
    with a member that is not down, in smooth WRR order (or by consistent hash)."""

    __slots__ = ("a", "aaaa", "has_a", "has_aaaa", "sites", "spec")

    def __init__(self, spec: NameSpec, health: Mapping[str, HealthState]) -> None:
        self.spec = spec
        targets = spec.targets()
        self.has_a = any(_family_matches(t.ip, wire.A) for t in targets)
        self.has_aaaa = any(_family_matches(t.ip, wire.AAAA) for t in targets)
        self.a = self._build(wire.A, health) if self.has_a else None
        self.aaaa = self._build(wire.AAAA, health) if self.has_aaaa else None
        self.sites: dict[tuple[str, int], Rotation] = {}
        """Topology: per (site, qtype), the site's healthy members in round robin."""
        for site in {rule.site for rule in spec.topology}:
            for qtype in (wire.A, wire.AAAA):
                rotation = self._build_site(site, qtype, health)
                if rotation is not None:
                    self.sites[(site, qtype)] = rotation

    def topology_rotation(self, qtype: int, client_ip: str) -> Rotation | None:
        """The rotation of the client's site, or None: no rule maps the client, or its site
        has no healthy member of this family (then the name's fallback decides)."""
        site = site_of(self.spec.topology, client_ip)
        return None if site is None else self.sites.get((site, qtype))

    def _build_site(
        self, site: str, qtype: int, health: Mapping[str, HealthState]
    ) -> Rotation | None:
        spec = self.spec
        for group in spec.groups:
            alive = [
                t
                for t in group
                if t.cluster == site
                and _family_matches(t.ip, qtype)
                and health.get(t.health_key) != HealthState.DOWN
            ]
            if alive:
                return Rotation(alive, qtype, spec.ttl, spec.answers, spec, consistent_hash=False)
        return None

    def rotation(self, qtype: int) -> Rotation | None:
        return self.a if qtype == wire.A else self.aaaa

    def has_family(self, qtype: int) -> bool:
        return self.has_a if qtype == wire.A else self.has_aaaa

    def _build(self, qtype: int, health: Mapping[str, HealthState]) -> Rotation | None:
        spec = self.spec
        for group in spec.groups:
            alive = [
                t
                for t in group
                if _family_matches(t.ip, qtype) and health.get(t.health_key) != HealthState.DOWN
            ]
            if alive:
                return Rotation(alive, qtype, spec.ttl, spec.answers, spec)
        if spec.down == DownResponseType.ALL_RECORDS:
            everyone = [t for t in spec.targets() if _family_matches(t.ip, qtype)]
            return Rotation(everyone, qtype, spec.ttl, len(everyone), spec)
        fallback_ip = spec.fallback_ip
        if spec.down == DownResponseType.FALLBACK_IP and fallback_ip:
            if not _family_matches(fallback_ip, qtype):
                return None
            return Rotation([Target(fallback_ip, "fallback", 1, "")], qtype, spec.ttl, 1, spec)
        return None

    def answers_by_member(self) -> Iterator[tuple[Target, int]]:
        for rotation in (self.a, self.aaaa, *self.sites.values()):
            if rotation is not None:
                yield from rotation.answers_by_member().items()

    @property
    def all_down_is_empty(self) -> bool:
        """EMPTY answers NODATA even in a zone that drops unhandled queries."""
        return self.spec.down == DownResponseType.EMPTY


@dataclass(slots=True)
class Response:
    """One answer: the packet (None: stay silent) and what the query log and cache need."""

    packet: bytes | None
    rcode: int
    zone: str = ""
    members: tuple[Target, ...] = ()
    ips: tuple[str, ...] = ()
    """Addresses answered: the members', or a static A/AAAA set's."""
    rotation: Rotation | None = None
    """Set when the answer is a round-robin turn that depends on nothing but the packet:
    the response cache may then serve `variants[rotation.next_position()]`."""
    variants: tuple[bytes, ...] = ()
    cacheable: bool = False
    """The same packet always gets this response (or the rotation's next variant)."""


@dataclass(slots=True)
class _Section:
    """Answer, authority and additional records being assembled for one response."""

    answer: list[bytes] = field(default_factory=list)
    answer_count: int = 0
    authority: bytes = b""
    authority_count: int = 0
    additional: bytes = b""
    additional_count: int = 0


def _soa(spec: ZoneSpec, serial: int) -> tuple[RRSet, bytes]:
    """The SOA answer and its negative-answer form (RFC 2308: TTL = min(SOA TTL, minimum))."""
    soa = spec.soa
    data = wire.soa_rdata(
        soa.mname, soa.rname, serial, soa.refresh_seconds, soa.retry_seconds,
        soa.expire_seconds, soa.minimum_seconds,
    )  # fmt: skip
    key = wire.name_to_wire(normalize_fqdn(spec.name))
    negative_ttl = min(spec.default_ttl_seconds, soa.minimum_seconds)
    return _rrset(wire.SOA, spec.default_ttl_seconds, [data]), wire.record(
        key, wire.SOA, negative_ttl, data
    )


def with_serial(zone: Zone, serial: int) -> Zone:
    soa, negative_soa = _soa(zone.spec, serial)
    return dataclasses.replace(zone, serial=serial, soa=soa, negative_soa=negative_soa)


def build_zone(spec: ZoneSpec, serial: int | None = None) -> Zone:
    """Pre-render one zone's SOA, NS, glue, delegations and static records. Raises ValueError
    on a bad record, naming the zone, the record and the problem."""
    name = normalize_fqdn(spec.name)
    key = wire.name_to_wire(name)
    ttl = spec.default_ttl_seconds
    datas: dict[bytes, dict[int, list[tuple[int, bytes, str]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    datas[key] = defaultdict(list)
    declared_glue: dict[bytes, list[str]] = {}
    for ns in spec.nameservers:
        ns_key = wire.name_to_wire(normalize_fqdn(ns.name))
        datas[key][wire.NS].append((ttl, ns_key, ""))
        declared_glue[ns_key] = list(ns.glue)
    for index, rec in enumerate(spec.records):
        owner = wire.absolute(rec.name, name)
        if owner != name and not owner.endswith("." + name):
            raise ValueError(f"zone {name}: records[{index}].name {rec.name!r} is outside it")
        rtype = wire.TYPE_CODES[rec.type]
        try:
            data = wire.rdata(rtype, rec.value, name)
            owner_key = wire.name_to_wire(owner)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"zone {name}: records[{index}] {rec.name} {rec.type} {rec.value!r}: {exc}"
            ) from None
        ip = rec.value.strip() if rtype in (wire.A, wire.AAAA) else ""
        datas[owner_key][rtype].append(
            (rec.ttl_seconds if rec.ttl_seconds is not None else ttl, data, ip)
        )
    static: dict[bytes, dict[int, RRSet]] = {}
    for owner_key, types in datas.items():
        static[owner_key] = {}
        for rtype, entries in types.items():
            # One TTL per RRset (RFC 2181 5.2): the lowest of its records.
            rrset_ttl = min(entry[0] for entry in entries)
            ips = tuple(entry[2] for entry in entries if entry[2])
            static[owner_key][rtype] = _rrset(rtype, rrset_ttl, (e[1] for e in entries), ips)
    cuts: dict[bytes, Delegation] = {}
    for owner_key, rrsets in static.items():
        ns_set = rrsets.get(wire.NS)
        if owner_key != key and ns_set is not None:
            glue, count = _glue(ns_set, static, declared_glue)
            cuts[owner_key] = Delegation(owner_key, ns_set, glue, count)
    soa_serial = spec.soa.serial if serial is None else serial
    soa, negative_soa = _soa(spec, soa_serial)
    return Zone(
        name=name,
        key=key,
        spec=spec,
        serial=soa_serial,
        soa=soa,
        negative_soa=negative_soa,
        drop_unhandled=spec.unhandled == UnhandledPolicy.DROP,
        static=static,
        apex_glue=_glue(static[key].get(wire.NS), static, declared_glue),
        cuts=cuts,
    )


def _glue(
    ns_set: RRSet | None,
    static: Mapping[bytes, Mapping[int, RRSet]],
    declared: Mapping[bytes, list[str]],
) -> tuple[bytes, int]:
    """A/AAAA records for the NS targets: declared glue, then static records of the target."""
    if ns_set is None:
        return b"", 0
    out: list[bytes] = []
    count = 0
    for tail in ns_set.tails:
        target = tail[10:]
        for ip in declared.get(target, ()):
            address = ipaddress.ip_address(ip)
            rtype = wire.A if address.version == 4 else wire.AAAA
            ttl = struct.unpack_from("!I", tail, 4)[0]
            out.append(target + _tail(rtype, ttl, address.packed))
            count += 1
        for rtype in (wire.A, wire.AAAA):
            rrset = static.get(target, {}).get(rtype)
            if rrset is not None:
                out.append(rrset.render(target))
                count += rrset.count
    return b"".join(out), count


def _is_under(key: bytes, zone_key: bytes) -> bool:
    """Whether wire-form `key` ends at a label boundary with `zone_key`."""
    return zone_key in wire.parents(key)


def _strict_ancestors(owner: bytes, stop: bytes) -> list[bytes]:
    """Wire-form suffixes of `owner` strictly between it and `stop` (for empty
    non-terminals: a name with descendants answers NODATA, not NXDOMAIN)."""
    out = []
    for suffix in wire.parents(owner):
        if suffix == stop or suffix == b"\x00":
            break
        out.append(suffix)
    return out


@dataclass
class AnswerTable:
    udp_payload_limit: int = wire.DEFAULT_EDNS_UDP_SIZE
    """The most we send over UDP and what our OPT record advertises."""
    zones: dict[bytes, Zone] = field(default_factory=dict)
    health: dict[str, HealthState] = field(default_factory=dict)
    gslb: dict[bytes, GslbAnswerer] = field(default_factory=dict)
    generation: int = 0
    """Bumped on every change: responses cached under an older generation are stale."""
    _by_health_key: dict[str, bytes] = field(default_factory=dict)
    """Member health key -> the GSLB name it belongs to (the key embeds the name)."""
    _interned: dict[str, str] = field(default_factory=dict)
    _ancestors: Counter[bytes] = field(default_factory=Counter)
    _zone_revisions: dict[bytes, int] = field(default_factory=dict)
    _service_revisions: dict[bytes, int] = field(default_factory=dict)
    """The last KV revision seen for each GSLB name, deletions included (for serials)."""
    _zone_services_revisions: dict[bytes, int] = field(default_factory=dict)
    """Per zone, the highest of `_service_revisions` at or under it."""
    _retired_answers: dict[str, Counter[tuple[str, str]]] = field(default_factory=dict)
    """Per fqdn, answers counted on rotations that a change has since replaced, by (cluster,
    ip). Forgotten when the name is removed, so deleted names do not accumulate."""

    # Updates ----------------------------------------------------------------------------

    def set_zone(self, spec: ZoneSpec, revision: int = 0) -> None:
        key = wire.name_to_wire(normalize_fqdn(spec.name))
        services_revision = self._zone_services_revisions.get(key)
        if services_revision is None:
            services_revision = self._services_revision(key)
        zone = build_zone(spec, self._serial(spec, revision, services_revision))
        old = self.zones.get(zone.key)
        if old is not None:
            self._count_ancestors(old, -1)
        self.zones[zone.key] = zone
        self._zone_revisions[zone.key] = revision
        self._zone_services_revisions[zone.key] = services_revision
        self._count_ancestors(zone, +1)
        self.generation += 1

    def remove_zone(self, name: str) -> None:
        zone = self.zones.pop(wire.name_to_wire(normalize_fqdn(name)), None)
        if zone is not None:
            self._count_ancestors(zone, -1)
            self._zone_revisions.pop(zone.key, None)
            self._zone_services_revisions.pop(zone.key, None)
            self.generation += 1

    def _count_ancestors(self, zone: Zone, sign: int) -> None:
        for owner in zone.static:
            for parent in _strict_ancestors(owner, zone.key):
                self._ancestors[parent] += sign

    def set_service(self, service: GslbService, revision: int = 0) -> BadName | None:
        """Answer `service` from now on. A name that is not a hostname (never planned; written
        by hand or by an older reconciler) is refused and returned, and nothing changes."""
        if (bad := hostname_problem(service.fqdn)) is not None:
            return bad
        spec = NameSpec.of(service, self._interned)
        key = wire.name_to_wire(spec.fqdn)
        self._drop_service(key)
        self.gslb[key] = GslbAnswerer(spec, self.health)
        for target in spec.targets():
            self._by_health_key[target.health_key] = key
        for parent in _strict_ancestors(key, b""):
            self._ancestors[parent] += 1
        self._service_changed(key, revision)
        return None

    def remove_service(self, fqdn: str, revision: int = 0) -> None:
        if hostname_problem(fqdn) is not None:
            return  # never set: nothing to remove
        key = wire.name_to_wire(normalize_fqdn(fqdn))
        self._drop_service(key)
        self._retired_answers.pop(normalize_fqdn(fqdn), None)
        self._service_changed(key, revision)

    def _drop_service(self, key: bytes) -> None:
        answerer = self.gslb.pop(key, None)
        if answerer is None:
            return
        self._retire(answerer)
        for target in answerer.spec.targets():
            self._by_health_key.pop(target.health_key, None)
        for parent in _strict_ancestors(key, b""):
            self._ancestors[parent] -= 1

    def set_health(self, key: str, state: HealthState | None) -> None:
        """Only `down` removes a member: `unknown` (not probed yet) keeps answering."""
        was_down = self.health.get(key) == HealthState.DOWN
        if state is None:
            self.health.pop(key, None)
        else:
            self.health[key] = state
        if was_down == (state == HealthState.DOWN):
            return
        name = self._by_health_key.get(key)
        if name is not None:
            old = self.gslb[name]
            self._retire(old)
            self.gslb[name] = GslbAnswerer(old.spec, self.health)
            self.generation += 1

    def _retire(self, answerer: GslbAnswerer) -> None:
        """Keep what a replaced answerer counted: the answer counters only grow."""
        retired = self._retired_answers.setdefault(answerer.spec.fqdn, Counter())
        for target, times in answerer.answers_by_member():
            retired[(target.cluster, target.ip)] += times

    def answers_by_member(self) -> Counter[tuple[str, str, str]]:
        """Answers given per (fqdn, cluster, ip) since start: a scrape-time sum, not a
        per-query count. Response-cache hits are turns too, so they are included."""
        counts: Counter[tuple[str, str, str]] = Counter()
        for fqdn, retired in list(self._retired_answers.items()):
            for (cluster, ip), times in list(retired.items()):
                counts[(fqdn, cluster, ip)] += times
        for answerer in list(self.gslb.values()):
            fqdn = answerer.spec.fqdn
            for target, times in answerer.answers_by_member():
                counts[(fqdn, target.cluster, target.ip)] += times
        return counts

    # Serials ----------------------------------------------------------------------------

    @staticmethod
    def _serial(spec: ZoneSpec, zone_revision: int, services_revision: int) -> int:
        return (spec.soa.serial + zone_revision + services_revision) % SERIAL_MODULO

    def _services_revision(self, zone_key: bytes) -> int:
        """The highest revision of any GSLB name at or under the zone, deletions included, and
        names of sub-zones too, so that adding a sub-zone never lowers it. Scans every name:
        only for a zone that appears; names that change later raise it in `_service_changed`."""
        return max(
            (
                revision
                for key, revision in self._service_revisions.items()
                if key == zone_key or (key.endswith(zone_key) and _is_under(key, zone_key))
            ),
            default=0,
        )

    def _service_changed(self, key: bytes, revision: int) -> None:
        # KV revisions only grow, so a running maximum is the maximum over everything seen.
        self._service_revisions[key] = max(revision, self._service_revisions.get(key, 0))
        for suffix in (key, *wire.parents(key)):
            zone = self.zones.get(suffix)
            if zone is None or revision <= self._zone_services_revisions.get(suffix, 0):
                continue
            self._zone_services_revisions[suffix] = revision
            serial = self._serial(zone.spec, self._zone_revisions.get(suffix, 0), revision)
            self.zones[suffix] = with_serial(zone, serial)
        self.generation += 1

    def serial(self, zone: str) -> int:
        return self.zones[wire.name_to_wire(normalize_fqdn(zone))].serial

    # Lookup -----------------------------------------------------------------------------

    def find_zone(self, key: bytes, label_offsets: Iterable[int]) -> Zone | None:
        zones = self.zones
        for offset in label_offsets:
            zone = zones.get(key[offset:])
            if zone is not None:
                return zone
        return zones.get(b"\x00")

    def answer(self, query: wire.Query, client_ip: str, udp: bool = True) -> Response:
        if query.edns and query.edns_version > 0:
            return self._badvers(query)
        zone = self.find_zone(query.key, query.label_offsets)
        qtype = query.qtype
        if zone is None or query.qclass != wire.CLASS_IN or qtype in (wire.AXFR, wire.IXFR):
            return self._reply(query, wire.REFUSED, False, udp, None, _Section())
        key = query.key
        for suffix in self._below_apex(key, zone):
            cut = zone.cuts.get(suffix)
            if cut is not None and not (suffix == key and qtype == DS):
                return self._referral(query, udp, zone, cut)
        rrsets = zone.static.get(key)
        gslb = self.gslb.get(key)
        apex = key == zone.key
        if qtype == wire.ANY:
            qtype = self._any_type(rrsets, gslb, apex)
        section = _Section()
        if gslb is not None and qtype in (wire.A, wire.AAAA):
            rotation = gslb.rotation(qtype)
            if rotation is not None:
                return self._gslb_reply(query, udp, zone, gslb, rotation, client_ip)
            if gslb.has_family(qtype) and gslb.all_down_is_empty:
                section.authority, section.authority_count = zone.negative_soa, 1
                return self._reply(query, wire.NOERROR, True, udp, zone, section)
        if rrsets is not None:
            rrset = zone.soa if apex and qtype == wire.SOA else rrsets.get(qtype)
            if rrset is not None:
                section.answer.append(rrset.render())
                section.answer_count = rrset.count
                if qtype == wire.NS and apex:
                    section.additional, section.additional_count = zone.apex_glue
                return self._reply(query, wire.NOERROR, True, udp, zone, section, rrset.ips)
            cname = rrsets.get(wire.CNAME)
            if cname is not None:
                return self._cname_reply(query, udp, zone, cname, qtype, client_ip)
        if rrsets is not None or gslb is not None or self._ancestors.get(key):
            return self._unhandled(query, zone, wire.NOERROR, udp)
        return self._unhandled(query, zone, wire.NXDOMAIN, udp)

    @staticmethod
    def _below_apex(key: bytes, zone: Zone) -> Iterable[bytes]:
        """The name and its ancestors strictly below the zone apex, apex-side first."""
        if not zone.cuts or key == zone.key:
            return ()
        return reversed([key, *_strict_ancestors(key, zone.key)])

    @staticmethod
    def _any_type(rrsets: Mapping[int, RRSet] | None, gslb: GslbAnswerer | None, apex: bool) -> int:
        if gslb is not None:
            for qtype in (wire.A, wire.AAAA):
                if gslb.rotation(qtype) is not None:
                    return qtype
        for qtype in ANY_PREFERENCE:
            if rrsets is not None and (qtype in rrsets or (apex and qtype == wire.SOA)):
                return qtype
        return wire.ANY

    def _gslb_reply(
        self,
        query: wire.Query,
        udp: bool,
        zone: Zone,
        gslb: GslbAnswerer,
        rotation: Rotation,
        client_ip: str,
    ) -> Response:
        subnet = query.client_subnet
        # RFC 7871 7.1.2: a SOURCE PREFIX-LENGTH of 0 gives no client information.
        use_subnet = subnet is not None and subnet.source_prefix > 0
        hashed = subnet.ip if subnet is not None and use_subnet else client_ip
        scope = rotation.scope_prefix if use_subnet else 0
        by_client = rotation.consistent_hash
        if gslb.spec.topology:
            # The answer depends on the client's site: valid for exactly the subnet asked
            # about (SCOPE = SOURCE), and never cached for a bare resolver address.
            by_client = True
            if subnet is not None and use_subnet:
                scope = subnet.source_prefix
            site_rotation = gslb.topology_rotation(rotation.qtype, hashed) if hashed else None
            if site_rotation is not None:
                rotation = site_rotation
        if rotation.consistent_hash and hashed:
            position = rotation.count_pick(rotation.position_for(hashed))
        else:
            position = rotation.next_position()
        members = rotation.chosen(position)
        ips = tuple(m.ip for m in members)
        response = self._reply(
            query, wire.NOERROR, True, udp, zone,
            _Section([rotation.records[position]], rotation.count), ips, scope,
        )  # fmt: skip
        response.members = members
        if rotation.consistent_hash:
            # The answer follows the client's address unless the packet carries its subnet.
            response.cacheable = use_subnet
            return response
        if by_client and not use_subnet:
            response.cacheable = False
            return response
        if udp and response.packet is not None:
            response.rotation = rotation
            if len(rotation.cycle.order) == 1 or response.packet[2] & 0x02:
                response.variants = (response.packet,) * len(rotation.cycle.order)
            else:
                response.variants = tuple(
                    self._reply(
                        query, wire.NOERROR, True, udp, zone,
                        _Section([records], rotation.count), (), scope,
                    ).packet or b""
                    for records in rotation.records
                )  # fmt: skip
        return response

    def _cname_reply(
        self, query: wire.Query, udp: bool, zone: Zone, cname: RRSet, qtype: int, client_ip: str
    ) -> Response:
        """RFC 1034 4.3.2: answer the CNAME and, while the target is ours, its records."""
        section = _Section([cname.render()], cname.count)
        members: tuple[Target, ...] = ()
        ips: tuple[str, ...] = ()
        cacheable = True
        seen = {query.key}
        target = cname.tails[0][10:]
        while len(seen) <= MAX_CNAME_CHAIN and target not in seen:
            seen.add(target)
            target_zone = self.find_zone(target, wire.label_offsets(target))
            if target_zone is None or any(
                s in target_zone.cuts for s in self._below_apex(target, target_zone)
            ):
                break
            gslb = self.gslb.get(target)
            rotation = (
                gslb.rotation(qtype) if gslb is not None and qtype in (wire.A, wire.AAAA) else None
            )
            if rotation is not None and gslb is not None and gslb.spec.topology and client_ip:
                rotation = gslb.topology_rotation(qtype, client_ip) or rotation
            if rotation is not None:
                position = (
                    rotation.count_pick(rotation.position_for(client_ip))
                    if rotation.consistent_hash and client_ip
                    else rotation.next_position()
                )
                section.answer.append(rotation.render(position, target))
                section.answer_count += rotation.count
                members = rotation.chosen(position)
                ips = tuple(m.ip for m in members)
                cacheable = False
                break
            rrsets = target_zone.static.get(target, {})
            rrset = rrsets.get(qtype)
            if rrset is not None:
                section.answer.append(rrset.render(target))
                section.answer_count += rrset.count
                ips = rrset.ips
                break
            next_cname = rrsets.get(wire.CNAME)
            if next_cname is None:
                break
            section.answer.append(next_cname.render(target))
            section.answer_count += next_cname.count
            target = next_cname.tails[0][10:]
        response = self._reply(query, wire.NOERROR, True, udp, zone, section, ips)
        response.members = members
        response.cacheable = response.cacheable and cacheable
        return response

    def _referral(self, query: wire.Query, udp: bool, zone: Zone, cut: Delegation) -> Response:
        """RFC 1034 4.3.2: below a zone cut we are not authoritative; point to its servers."""
        section = _Section(
            authority=cut.ns.render(cut.key),
            authority_count=cut.ns.count,
            additional=cut.glue,
            additional_count=cut.glue_count,
        )
        return self._reply(query, wire.NOERROR, False, udp, zone, section)

    def _unhandled(self, query: wire.Query, zone: Zone, rcode: int, udp: bool) -> Response:
        """NXDOMAIN or NODATA: answered with the SOA, or dropped if the zone says so."""
        if zone.drop_unhandled:
            return Response(None, rcode, zone.name, cacheable=False)
        section = _Section(authority=zone.negative_soa, authority_count=1)
        return self._reply(query, rcode, True, udp, zone, section)

    def _badvers(self, query: wire.Query) -> Response:
        # RFC 6891 6.1.3: BADVERS is 16, so the upper 8 bits go in the OPT record.
        packet = (
            wire.header(query.id, query.flags, wire.BADVERS & 0xF, False, (1, 0, 0, 1))
            + query.question
            + wire.opt_record(self.udp_payload_limit, ext_rcode=wire.BADVERS >> 4)
        )
        return Response(packet, wire.BADVERS, cacheable=True)

    def _reply(
        self,
        query: wire.Query,
        rcode: int,
        aa: bool,
        udp: bool,
        zone: Zone | None,
        section: _Section,
        ips: tuple[str, ...] = (),
        ecs_scope: int = 0,
    ) -> Response:
        opt = b""
        if query.edns:
            subnet = query.client_subnet
            options = subnet.option(ecs_scope) if subnet is not None else b""
            opt = wire.opt_record(self.udp_payload_limit, options=options)
        opt_count = 1 if opt else 0
        answer = b"".join(section.answer)
        head = (1, section.answer_count, section.authority_count)
        packet = b"".join(
            (
                wire.header(query.id, query.flags, rcode, aa, (*head, section.additional_count + opt_count)),
                query.question,
                answer,
                section.authority,
                section.additional,
                opt,
            )
        )  # fmt: skip
        if udp and len(packet) > query.max_udp_size(self.udp_payload_limit):
            packet = self._fit(query, rcode, aa, head, answer, section.authority, opt)
        return Response(packet, rcode, zone.name if zone else "", ips=ips, cacheable=True)

    def _fit(
        self,
        query: wire.Query,
        rcode: int,
        aa: bool,
        head: tuple[int, int, int],
        answer: bytes,
        authority: bytes,
        opt: bytes,
    ) -> bytes:
        """RFC 2181 9: drop the additional section first; set TC only when the answer and
        authority themselves do not fit."""
        opt_count = 1 if opt else 0
        without_extra = b"".join(
            (
                wire.header(query.id, query.flags, rcode, aa, (*head, opt_count)),
                query.question, answer, authority, opt,
            )
        )  # fmt: skip
        if len(without_extra) <= query.max_udp_size(self.udp_payload_limit):
            return without_extra
        return (
            wire.header(query.id, query.flags, rcode, aa, (1, 0, 0, opt_count), tc=True)
            + query.question
            + opt
        )
