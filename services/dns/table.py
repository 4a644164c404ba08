"""The in-memory answer table: zones, static records and GSLB names, pre-rendered to wire
bytes, and the lookup that turns one parsed query into one response. A query never waits on
anything; the table is rebuilt piecewise as KV updates arrive.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.dns import wire
from services.dns.selection import client_bucket, distinct_from, rendezvous_pick, smooth_wrr_order
from shared.models import (
    Algorithm,
    DownResponseType,
    GslbService,
    HealthState,
    Member,
    UnhandledPolicy,
    ZoneSpec,
)
from shared.subjects import member_key, normalize_fqdn

_NO_MEMBERS: tuple[Member, ...] = ()


@dataclass(slots=True)
class RRSet:
    rendered: bytes
    count: int


@dataclass
class Zone:
    name: str
    key: bytes
    spec: ZoneSpec
    serial: int
    soa_authority: RRSet
    """The SOA with its full owner name, for negative answers (RFC 2308)."""
    drop_unhandled: bool
    static: dict[bytes, dict[int, RRSet]]
    glue: RRSet


@dataclass(slots=True)
class Response:
    packet: bytes | None
    rcode: int
    members: tuple[Member, ...] = _NO_MEMBERS
    zone: str = ""


def _family_matches(member: Member, qtype: int) -> bool:
    return (ipaddress.ip_address(member.ip).version == 4) == (qtype == wire.A)


@dataclass
class _FamilyAnswers:
    members: list[Member]
    records: list[bytes]
    weights: list[int]
    order: list[int]
    answers: int
    consistent_hash: bool
    hash_mask_bits: int | None
    counter: int = 0

    def pick(self, client_ip: str) -> tuple[bytes, int, tuple[Member, ...]]:
        if self.consistent_hash and client_ip:
            keys = [m.ip for m in self.members]
            first = rendezvous_pick(
                client_bucket(client_ip, self.hash_mask_bits), keys, self.weights
            )
            start = self.order.index(first)
        else:
            start = self.counter % len(self.order)
            self.counter += 1
        if self.answers == 1:
            index = self.order[start]
            return self.records[index], 1, (self.members[index],)
        chosen = distinct_from(self.order, start, self.answers)
        return (
            b"".join(self.records[i] for i in chosen),
            len(chosen),
            tuple(self.members[i] for i in chosen),
        )


class GslbAnswerer:
    """Answers for one GSLB name under the current health: members of the best priority group
    with a member that is not down, in smooth WRR order (or consistent hash)."""

    def __init__(self, service: GslbService, health: Mapping[str, HealthState]) -> None:
        self.service = service
        self.ttl = service.ttl_seconds
        self.by_type: dict[int, _FamilyAnswers | None] = {}
        self.has_family: dict[int, bool] = {}
        for qtype in (wire.A, wire.AAAA):
            family = [m for m in service.all_members() if _family_matches(m, qtype)]
            self.has_family[qtype] = bool(family)
            self.by_type[qtype] = self._build(qtype, health) if family else None

    def _records(self, members: list[Member], qtype: int) -> list[bytes]:
        return [
            wire.record(
                wire.QUESTION_NAME_POINTER, qtype, self.ttl, ipaddress.ip_address(m.ip).packed
            )
            for m in members
        ]

    def _build(self, qtype: int, health: Mapping[str, HealthState]) -> _FamilyAnswers | None:
        service = self.service
        for group in service.groups:
            alive = [
                m
                for m in group.members
                if _family_matches(m, qtype)
                and health.get(member_key(service.fqdn, m.probe_ip)) != HealthState.DOWN
            ]
            if alive:
                return self._family(alive, qtype, service.answers)
        down = service.down_response
        if down.type == DownResponseType.ALL_RECORDS:
            everyone = [m for m in service.all_members() if _family_matches(m, qtype)]
            return self._family(everyone, qtype, len(everyone))
        if down.type == DownResponseType.FALLBACK_IP and down.fallback_ip:
            fallback = Member(ip=down.fallback_ip, cluster="fallback", weight=1)
            if _family_matches(fallback, qtype):
                return self._family([fallback], qtype, 1)
        return None

    def _family(self, members: list[Member], qtype: int, answers: int) -> _FamilyAnswers:
        weights = [m.weight for m in members]
        return _FamilyAnswers(
            members=members,
            records=self._records(members, qtype),
            weights=weights,
            order=smooth_wrr_order(weights),
            answers=min(answers, len(members)),
            consistent_hash=self.service.algorithm == Algorithm.CONSISTENT_HASH,
            hash_mask_bits=self.service.hash_mask_bits,
        )

    def all_down_is_unhandled(self) -> bool:
        return self.service.down_response.type == DownResponseType.NONE


def build_zone(spec: ZoneSpec, serial: int | None = None) -> Zone:
    """Pre-render one zone's SOA, NS, glue and static records. Raises ValueError on a bad
    record, naming it."""
    name = normalize_fqdn(spec.name)
    key = wire.name_to_wire(name)
    soa = spec.soa
    soa_serial = soa.serial if serial is None else serial
    soa_data = wire.soa_rdata(
        soa.mname, soa.rname, soa_serial, soa.refresh_seconds, soa.retry_seconds,
        soa.expire_seconds, soa.minimum_seconds,
    )  # fmt: skip
    # RFC 2308: the negative-answer TTL is min(SOA TTL, SOA minimum).
    negative_ttl = min(spec.default_ttl_seconds, soa.minimum_seconds)
    static: dict[bytes, dict[int, list[bytes]]] = defaultdict(lambda: defaultdict(list))
    static[key][wire.SOA].append(
        wire.record(wire.QUESTION_NAME_POINTER, wire.SOA, spec.default_ttl_seconds, soa_data)
    )
    glue: list[bytes] = []
    for ns in spec.nameservers:
        ns_name = normalize_fqdn(ns.name)
        static[key][wire.NS].append(
            wire.record(
                wire.QUESTION_NAME_POINTER, wire.NS, spec.default_ttl_seconds,
                wire.name_to_wire(ns_name),
            )
        )  # fmt: skip
        for ip in ns.glue:
            rtype = wire.A if ipaddress.ip_address(ip).version == 4 else wire.AAAA
            glue.append(
                wire.record(
                    wire.name_to_wire(ns_name), rtype, spec.default_ttl_seconds,
                    ipaddress.ip_address(ip).packed,
                )
            )  # fmt: skip
    for index, rec in enumerate(spec.records):
        owner = wire.absolute(rec.name, name)
        if owner != name and not owner.endswith("." + name):
            raise ValueError(f"zone {name}: records[{index}].name {rec.name!r} is outside it")
        rtype = wire.TYPE_CODES[rec.type]
        ttl = rec.ttl_seconds if rec.ttl_seconds is not None else spec.default_ttl_seconds
        try:
            data = wire.rdata(rtype, rec.value, name)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"zone {name}: records[{index}] {rec.name} {rec.type} {rec.value!r}: {exc}"
            ) from None
        static[wire.name_to_wire(owner)][rtype].append(
            wire.record(wire.QUESTION_NAME_POINTER, rtype, ttl, data)
        )
    return Zone(
        name=name,
        key=key,
        spec=spec,
        serial=soa_serial,
        soa_authority=RRSet(wire.record(key, wire.SOA, negative_ttl, soa_data), 1),
        drop_unhandled=spec.unhandled == UnhandledPolicy.DROP,
        static={
            owner: {rtype: RRSet(b"".join(rrs), len(rrs)) for rtype, rrs in types.items()}
            for owner, types in static.items()
        },
        glue=RRSet(b"".join(glue), len(glue)),
    )


@dataclass
class AnswerTable:
    zones: dict[bytes, Zone] = field(default_factory=dict)
    services: dict[str, GslbService] = field(default_factory=dict)
    health: dict[str, HealthState] = field(default_factory=dict)
    gslb: dict[bytes, GslbAnswerer] = field(default_factory=dict)
    _members_index: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    _ancestors: Counter[bytes] = field(default_factory=Counter)

    # Updates ----------------------------------------------------------------------------

    def set_zone(self, spec: ZoneSpec) -> None:
        zone = build_zone(spec)
        old = self.zones.get(zone.key)
        if old is not None:
            self._count_ancestors(old, -1)
        self.zones[zone.key] = zone
        self._count_ancestors(zone, +1)

    def remove_zone(self, name: str) -> None:
        zone = self.zones.pop(wire.name_to_wire(name), None)
        if zone is not None:
            self._count_ancestors(zone, -1)

    def _count_ancestors(self, zone: Zone, sign: int) -> None:
        for owner in zone.static:
            for parent in _strict_ancestors(owner, zone.key):
                self._ancestors[parent] += sign

    def set_service(self, service: GslbService) -> None:
        fqdn = normalize_fqdn(service.fqdn)
        self.remove_service(fqdn)
        self.services[fqdn] = service
        key = wire.name_to_wire(fqdn)
        self.gslb[key] = GslbAnswerer(service, self.health)
        for member in service.all_members():
            self._members_index[member_key(fqdn, member.probe_ip)].add(fqdn)
        for parent in _strict_ancestors(key, b""):
            self._ancestors[parent] += 1

    def remove_service(self, fqdn: str) -> None:
        fqdn = normalize_fqdn(fqdn)
        service = self.services.pop(fqdn, None)
        if service is None:
            return
        key = wire.name_to_wire(fqdn)
        self.gslb.pop(key, None)
        for member in service.all_members():
            owners = self._members_index.get(member_key(fqdn, member.probe_ip))
            if owners is not None:
                owners.discard(fqdn)
        for parent in _strict_ancestors(key, b""):
            self._ancestors[parent] -= 1

    def set_health(self, key: str, state: HealthState | None) -> None:
        if state is None:
            self.health.pop(key, None)
        else:
            if self.health.get(key) == state:
                return
            self.health[key] = state
        for fqdn in self._members_index.get(key, ()):
            service = self.services[fqdn]
            self.gslb[wire.name_to_wire(fqdn)] = GslbAnswerer(service, self.health)

    # Lookup -----------------------------------------------------------------------------

    def find_zone(self, query: wire.Query) -> Zone | None:
        key = query.key
        zones = self.zones
        for offset in query.label_offsets:
            zone = zones.get(key[offset:])
            if zone is not None:
                return zone
        return zones.get(b"\x00")

    def answer(self, query: wire.Query, client_ip: str, udp: bool = True) -> Response:
        if query.edns and query.edns_version > 0:
            # RFC 6891 6.1.3: BADVERS is 16, so the upper 8 bits go in the OPT record.
            packet = (
                wire.header(query.id, query.flags, 0, False, (1, 0, 0, 1))
                + query.question
                + wire.opt_record(ext_rcode=wire.BADVERS >> 4)
            )
            return Response(packet, wire.BADVERS)
        zone = self.find_zone(query)
        qtype = query.qtype
        if zone is None or query.qclass != wire.CLASS_IN or qtype in (wire.AXFR, wire.IXFR):
            return self._reply(query, wire.REFUSED, False, udp)
        key = query.key
        rrsets = zone.static.get(key)
        gslb = self.gslb.get(key)
        if qtype == wire.ANY:
            # RFC 8482: a minimal answer, one RRset, is enough.
            qtype = wire.A if gslb is not None or (rrsets and wire.A in rrsets) else 0
            if qtype == 0 and rrsets:
                qtype = next(iter(rrsets))
        if gslb is not None and qtype in (wire.A, wire.AAAA):
            family = gslb.by_type.get(qtype)
            if family is not None:
                records, count, members = family.pick(client_ip)
                return self._reply(
                    query, wire.NOERROR, True, udp, zone, records, count, members=members
                )
            if gslb.has_family[qtype] and gslb.all_down_is_unhandled():
                return self._unhandled(query, zone, wire.NOERROR, udp)
            if gslb.has_family[qtype]:
                return self._reply(query, wire.NOERROR, True, udp, zone, soa=True)
        if rrsets is not None:
            rrset = rrsets.get(qtype)
            if rrset is not None:
                glue = zone.glue if qtype == wire.NS and key == zone.key else None
                return self._reply(
                    query, wire.NOERROR, True, udp, zone, rrset.rendered, rrset.count, glue
                )
            cname = rrsets.get(wire.CNAME)
            if cname is not None:
                return self._reply(
                    query, wire.NOERROR, True, udp, zone, cname.rendered, cname.count
                )
        if rrsets is not None or gslb is not None or self._ancestors.get(key):
            return self._unhandled(query, zone, wire.NOERROR, udp)
        return self._unhandled(query, zone, wire.NXDOMAIN, udp)

    def _unhandled(self, query: wire.Query, zone: Zone, rcode: int, udp: bool) -> Response:
        """NXDOMAIN or NODATA: answered with the SOA, or dropped if the zone says so."""
        if zone.drop_unhandled:
            return Response(None, rcode, zone=zone.name)
        return self._reply(query, rcode, True, udp, zone, soa=True)

    def _reply(
        self,
        query: wire.Query,
        rcode: int,
        aa: bool,
        udp: bool,
        zone: Zone | None = None,
        answers: bytes = b"",
        answer_count: int = 0,
        glue: RRSet | None = None,
        soa: bool = False,
        members: tuple[Member, ...] = _NO_MEMBERS,
    ) -> Response:
        authority = zone.soa_authority if soa and zone is not None else None
        opt = wire.opt_record() if query.edns else b""
        extra = glue.rendered if glue else b""
        extra_count = (glue.count if glue else 0) + (1 if opt else 0)
        packet = b"".join(
            (
                wire.header(
                    query.id, query.flags, rcode, aa,
                    (1, answer_count, 1 if authority else 0, extra_count),
                ),
                query.question,
                answers,
                authority.rendered if authority else b"",
                extra,
                opt,
            )
        )  # fmt: skip
        if udp and len(packet) > query.max_udp_size:
            packet = _truncated(query, rcode, aa, opt)
        return Response(packet, rcode, members, zone.name if zone else "")


def _truncated(query: wire.Query, rcode: int, aa: bool, opt: bytes) -> bytes:
    head = bytearray(wire.header(query.id, query.flags, rcode, aa, (1, 0, 0, 1 if opt else 0)))
    flags = struct.unpack_from("!H", head, 2)[0] | wire.FLAG_TC
    struct.pack_into("!H", head, 2, flags)
    return bytes(head) + query.question + opt


def _strict_ancestors(owner: bytes, stop: bytes) -> list[bytes]:
    """Wire-form suffixes of `owner` strictly between it and `stop` (for empty
    non-terminals: a name with descendants answers NODATA, not NXDOMAIN)."""
    out = []
    offset = 0
    while owner[offset] != 0:
        offset += 1 + owner[offset]
        suffix = owner[offset:]
        if suffix == stop or suffix == b"\x00":
            break
        out.append(suffix)
    return out
