"""Automatic delegation, the decisions (pure): which records the parent zone must hold for a
zone kgslb serves (its NS set, the glue of the name servers inside it, and its DS when the
zone has one), what the parent holds now (read from its referral), and the one RFC 2136
update that makes the one into the other.

kgslb owns, in the parent, only the records *at or below the zone's cut*: the NS and DS
RRsets at the zone's name and the A/AAAA glue of name servers inside the zone. Every delete
and add is checked against that (`owned`) before it is sent, so no other name of the parent
is ever touched. A name server outside the zone (`g-dns.iberia.local.` in the seed) gets an
NS record and no glue: its address is the parent's own business.

The shell is `delegation_keeper.py` (when to check, the status) and `delegation_io.py`
(DNS over TCP with dnspython, TSIG).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import dns.message
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from shared.policies import DelegationSpec, ZoneConfig
from shared.subjects import normalize_fqdn

NS, A, AAAA, DS = "NS", "A", "AAAA", "DS"

RRsetKey = tuple[str, str]
"""(owner name without the trailing dot, type)."""


@dataclass(frozen=True)
class RRset:
    ttl: int
    rdatas: frozenset[str]
    """Presentation form, normalised: absolute names with a dot, addresses compressed."""


Records = Mapping[RRsetKey, RRset]


def owned(name: str, zone: str) -> bool:
    """At or below the zone's cut: the only names of the parent kgslb writes."""
    return name == zone or name.endswith("." + zone)


def parent_of(zone: str, spec: DelegationSpec) -> str:
    if spec.parent_zone:
        return normalize_fqdn(spec.parent_zone)
    return zone.partition(".")[2]


def delegation_problem(zone: str, spec: DelegationSpec) -> str:
    """Why this zone cannot be delegated as configured, or ''."""
    parent = parent_of(zone, spec)
    if not parent or not zone.endswith("." + parent):
        return f"parentZone {parent or '(none)'!r} is not a parent of {zone}"
    return ""


def _absolute(name: str) -> str:
    return normalize_fqdn(name) + "."


def _normal(rdtype: str, text: str) -> str:
    if rdtype in (A, AAAA):
        return str(ipaddress.ip_address(text))
    if rdtype == NS:
        return _absolute(text)
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
    return str(rdata.to_text())


def wanted(zone_config: ZoneConfig, ttl: int, ds: Iterable[str] | None) -> dict[RRsetKey, RRset]:
    """What the parent must hold for the zone: NS, glue of in-zone name servers, DS (None:
    the zone has no DS to publish, and the parent's DS is left alone)."""
    zone = normalize_fqdn(zone_config.name)
    records: dict[RRsetKey, RRset] = {}
    names = frozenset(_absolute(ns.name) for ns in zone_config.nameservers)
    if names:
        records[(zone, NS)] = RRset(ttl, names)
    for ns in zone_config.nameservers:
        name = normalize_fqdn(ns.name)
        if not owned(name, zone):
            continue
        for rdtype, version in ((A, 4), (AAAA, 6)):
            ips = frozenset(
                str(ip) for ip in map(ipaddress.ip_address, ns.glue) if ip.version == version
            )
            if ips:
                records[(name, rdtype)] = RRset(ttl, ips)
    if ds is not None:
        texts = frozenset(_normal(DS, text) for text in ds)
        if texts:
            records[(zone, DS)] = RRset(ttl, texts)
    return records


def held(
    referral: dns.message.Message, ds_answer: dns.message.Message | None, zone: str
) -> dict[RRsetKey, RRset]:
    """What the parent holds for the zone, from its answer to `zone NS` (a referral: NS in
    authority, glue in additional; or an answer) and, when DS is managed, to `zone DS`."""
    records: dict[RRsetKey, RRset] = {}
    messages = [referral] + ([ds_answer] if ds_answer is not None else [])
    for message in messages:
        for section in (message.answer, message.authority, message.additional):
            for rrset in section:
                name = normalize_fqdn(rrset.name.to_text())
                rdtype = dns.rdatatype.to_text(rrset.rdtype)
                if not owned(name, zone) or rdtype not in (NS, A, AAAA, DS):
                    continue
                if rdtype in (NS, DS) and name != zone:
                    continue  # a cut below ours is the zone's own business, not the parent's
                texts = frozenset(_normal(rdtype, rdata.to_text()) for rdata in rrset)
                records[(name, rdtype)] = RRset(rrset.ttl, texts)
    return records


@dataclass(frozen=True)
class Update:
    """One RFC 2136 update of the parent zone, as data: RRsets to delete, then records to add."""

    parent: str
    deletes: tuple[RRsetKey, ...]
    adds: tuple[tuple[str, str, int, str], ...]
    """(name, type, ttl, rdata)."""

    def describe(self) -> str:
        parts = [f"delete {name} {rdtype}" for name, rdtype in self.deletes]
        parts += [f"add {name} {ttl} {rdtype} {rdata}" for name, rdtype, ttl, rdata in self.adds]
        return "; ".join(parts)


class NotOwned(ValueError):
    """An update would touch a name outside the zone's cut (a bug, never sent)."""


def update_for(
    zone: str, parent: str, want: Records, have: Records, manage_ds: bool
) -> Update | None:
    """The update that turns what the parent holds into what it must hold; None when it
    already does. An RRset that differs is replaced whole (delete, then add every record)."""
    deletes: list[RRsetKey] = []
    adds: list[tuple[str, str, int, str]] = []
    for key in sorted(want):
        if have.get(key) != want[key]:
            # Replaced whole; deleting an RRset the parent lacks is a no-op (RFC 2136 2.5.2),
            # and covers what the read may not have shown.
            deletes.append(key)
            rrset = want[key]
            adds += [(key[0], key[1], rrset.ttl, rdata) for rdata in sorted(rrset.rdatas)]
    for key in sorted(have):
        if key in want or (key[1] == DS and not manage_ds):
            continue
        deletes.append(key)
    for name, _ in deletes:
        if not owned(name, zone):
            raise NotOwned(f"{name} is outside {zone}: kgslb never changes it in {parent}")
    for name, _, _, _ in adds:
        if not owned(name, zone):
            raise NotOwned(f"{name} is outside {zone}: kgslb never changes it in {parent}")
    if not deletes and not adds:
        return None
    return Update(parent, tuple(dict.fromkeys(deletes)), tuple(adds))


def summary(want: Records) -> str:
    """What the parent holds once delegated, for the status message."""
    parts = []
    for (name, rdtype), rrset in sorted(want.items()):
        parts.append(f"{name} {rdtype} {', '.join(sorted(rrset.rdatas))}")
    return "; ".join(parts)
