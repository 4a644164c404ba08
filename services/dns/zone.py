"""One zone as the DNS answers it: static records, SOA, NS glue and delegations pre-rendered
to wire bytes, and what the zone says when it has no answer (referral, NXDOMAIN, NODATA).

SOA serials are derived, not stored: serial = configured serial + the KV revision of the zone
+ the highest KV revision of any GSLB service inside the zone (deletions included). KV
revisions are JetStream sequence numbers, identical for every DNS replica that has seen the same
updates, they only grow, and any change to the zone or one of its services raises one of them,
so the serial increases with every change and agrees across replicas without coordination.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from services.dns import wire
from shared.models import UnhandledPolicy, ZoneSpec
from shared.subjects import normalize_fqdn

SERIAL_MODULO = 2**32
DS = 43


def record_tail(rtype: int, ttl: int, data: bytes) -> bytes:
    """One record without its owner name: type, class, TTL, RDATA."""
    return struct.pack("!HHIH", rtype, wire.CLASS_IN, ttl, len(data)) + data


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

    @property
    def first_target(self) -> bytes:
        """The RDATA of the first record: the target name of a CNAME."""
        return self.tails[0][10:]

    def render(self, owner: bytes = wire.QUESTION_NAME_POINTER) -> bytes:
        return b"".join(owner + tail for tail in self.tails)


def rrset(rtype: int, ttl: int, datas: Iterable[bytes], ips: tuple[str, ...] = ()) -> RRSet:
    return RRSet(tuple(record_tail(rtype, ttl, data) for data in datas), ips)


@dataclass(slots=True)
class Section:
    """Answer, authority and additional records being assembled for one response."""

    answer: list[bytes] = field(default_factory=list)
    answer_count: int = 0
    authority: bytes = b""
    authority_count: int = 0
    additional: bytes = b""
    additional_count: int = 0


@dataclass(frozen=True, slots=True)
class Delegation:
    """A zone cut below the apex: NS records (owner = the cut) and their glue."""

    key: bytes
    ns: RRSet
    glue: bytes
    glue_count: int

    def referral(self) -> Section:
        """RFC 1034 4.3.2: below a zone cut we are not authoritative; point to its servers."""
        return Section(
            authority=self.ns.render(self.key),
            authority_count=self.ns.count,
            additional=self.glue,
            additional_count=self.glue_count,
        )


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
    apex_glue_owned: tuple[tuple[bytes, RRSet], ...] = ()
    """The address RRsets in `apex_glue` that are the zone's own data (a name server named
    inside the zone, above every cut, with no declared glue beside them): signed, their RRSIGs
    go with them in the additional section (RFC 4035 3.1.1)."""

    def delegation(self, key: bytes, qtype: int) -> Delegation | None:
        """The zone cut at or above `key` (below the apex) that makes us refer, if any. DS at
        the cut itself is the parent side's record (RFC 4035 3.1.4.1), so it is not referred."""
        if not self.cuts or key == self.key:
            return None
        for suffix in reversed([key, *strict_ancestors(key, self.key)]):
            cut = self.cuts.get(suffix)
            if cut is not None and not (suffix == key and qtype == DS):
                return cut
        return None

    def static_answer(self, key: bytes, qtype: int) -> tuple[Section, RRSet] | None:
        """The static records of `key` and `qtype` under the question pointer (the apex SOA
        and the apex NS with its glue included), or None when the name has no such set."""
        rrsets = self.static.get(key)
        if rrsets is None:
            return None
        apex = key == self.key
        found = self.soa if apex and qtype == wire.SOA else rrsets.get(qtype)
        if found is None:
            return None
        section = Section([found.render()], found.count)
        if qtype == wire.NS and apex:
            section.additional, section.additional_count = self.apex_glue
        return section, found

    @property
    def negative_ttl(self) -> int:
        """RFC 2308: min(SOA TTL, SOA minimum); also the NSEC TTL (RFC 9077)."""
        return min(self.spec.default_ttl_seconds, self.spec.soa.minimum_seconds)

    def negative(self) -> Section:
        """NXDOMAIN and NODATA carry the SOA in authority (RFC 2308)."""
        return Section(authority=self.negative_soa, authority_count=1)


STORE_EPOCH_BASE = 1_735_689_600
"""2025-01-01T00:00:00Z: store epochs count seconds from here, so that serials stay well
within RFC 1982's half range of what they were before epochs (a one-time jump forward)."""


def store_epoch(created_seconds: int) -> int:
    """A bucket's part of the serial besides its revisions: the seconds from STORE_EPOCH_BASE
    to its creation. A bucket created anew after a lost store counts revisions from 1 again
    but was created later: its epoch plus its revisions pass the old ones whenever the old
    bucket took fewer writes than it lived seconds."""
    return max(0, created_seconds - STORE_EPOCH_BASE)


def zone_serial(spec: ZoneSpec, zone_revision: int, services_revision: int, epoch: int = 0) -> int:
    return (spec.soa.serial + epoch + zone_revision + services_revision) % SERIAL_MODULO


def _soa(spec: ZoneSpec, serial: int) -> tuple[RRSet, bytes]:
    """The SOA answer and its negative-answer form (RFC 2308: TTL = min(SOA TTL, minimum))."""
    soa = spec.soa
    data = wire.soa_rdata(
        soa.mname, soa.rname, serial, soa.refresh_seconds, soa.retry_seconds,
        soa.expire_seconds, soa.minimum_seconds,
    )  # fmt: skip
    key = wire.name_to_wire(normalize_fqdn(spec.name))
    negative_ttl = min(spec.default_ttl_seconds, soa.minimum_seconds)
    return rrset(wire.SOA, spec.default_ttl_seconds, [data]), wire.record(
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
    for ns_key in list(declared_glue):
        # A name server inside the zone is a name of the zone: a resolver asks for its
        # address and must get the glue as an authoritative answer, not NXDOMAIN.
        if is_under(ns_key, key) and not _has_address(datas, ns_key):
            for ip in declared_glue.pop(ns_key):
                address = ipaddress.ip_address(ip)
                rtype = wire.A if address.version == 4 else wire.AAAA
                datas[ns_key][rtype].append((ttl, address.packed, str(address)))
    static: dict[bytes, dict[int, RRSet]] = {}
    for owner_key, types in datas.items():
        static[owner_key] = {}
        for rtype, entries in types.items():
            # One TTL per RRset (RFC 2181 5.2): the lowest of its records.
            rrset_ttl = min(entry[0] for entry in entries)
            ips = tuple(entry[2] for entry in entries if entry[2])
            static[owner_key][rtype] = rrset(rtype, rrset_ttl, (e[1] for e in entries), ips)
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
        apex_glue_owned=_owned_glue(static[key].get(wire.NS), static, declared_glue, cuts, key),
    )


def _owned_glue(
    ns_set: RRSet | None,
    static: Mapping[bytes, Mapping[int, RRSet]],
    declared: Mapping[bytes, list[str]],
    cuts: Mapping[bytes, Delegation],
    key: bytes,
) -> tuple[tuple[bytes, RRSet], ...]:
    owned: list[tuple[bytes, RRSet]] = []
    for tail in ns_set.tails if ns_set is not None else ():
        target = tail[10:]
        below_cut = any(a in cuts for a in (target, *strict_ancestors(target, key)))
        if not is_under(target, key) or declared.get(target) or below_cut:
            continue
        owned += [
            (target, r) for t, r in static.get(target, {}).items() if t in (wire.A, wire.AAAA)
        ]
    return tuple(owned)


def _has_address(datas: Mapping[bytes, Mapping[int, Sequence[object]]], owner_key: bytes) -> bool:
    types = datas.get(owner_key, {})
    return bool(types.get(wire.A) or types.get(wire.AAAA))


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
            out.append(target + record_tail(rtype, ttl, address.packed))
            count += 1
        for rtype in (wire.A, wire.AAAA):
            found = static.get(target, {}).get(rtype)
            if found is not None:
                out.append(found.render(target))
                count += found.count
    return b"".join(out), count


def is_under(key: bytes, zone_key: bytes) -> bool:
    """Whether wire-form `key` ends at a label boundary with `zone_key`."""
    return zone_key in wire.parents(key)


def strict_ancestors(owner: bytes, stop: bytes) -> list[bytes]:
    """Wire-form suffixes of `owner` strictly between it and `stop` (for empty
    non-terminals: a name with descendants answers NODATA, not NXDOMAIN)."""
    out = []
    for suffix in wire.parents(owner):
        if suffix == stop or suffix == b"\x00":
            break
        out.append(suffix)
    return out
