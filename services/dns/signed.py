"""The signed side of answers: for each signed zone, its `ZoneSigner` and the signatures made so
far. Signing happens when an RRset is first answered after its data, the keys or the validity
window changed; every later answer reuses the bytes. A GSLB name's rotation has one RRset per
distinct set of members answered (a 6:4:2 cycle of two answers has three), each signed once,
so the smooth-WRR order stays exact and DO=1 costs a dictionary lookup per response-cache miss.

The window is refreshed by the shell calling `refresh(now)`: signatures made more than
`resign_seconds` ago are dropped (the table's generation moves, so the response cache starts
over) and made again on the next query, long before they expire.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from services.dns import wire
from services.dns.denial import APEX_KEY_TYPES, NSEC, SigningKey, nodata_proof, nxdomain_proofs
from services.dns.gslb import GslbName
from services.dns.rotation import Rotation
from services.dns.zone import RRSet, Section, Zone

if TYPE_CHECKING:
    from services.dns.signer import ZoneSigner

INCEPTION_SLACK_SECONDS = 3600
"""Inception an hour back, for validators whose clock runs behind ours."""
MAX_CACHED_SIGNATURES = 200_000
"""Per zone; random NXDOMAIN names each get their own NSEC, so the cache starts over past this."""


@dataclass(frozen=True, slots=True)
class Window:
    validity_seconds: int = 7 * 86400
    resign_seconds: int = 86400


@dataclass
class SignedZone:
    signer: ZoneSigner
    signed_at: int
    signatures: dict[tuple[bytes, int, int, frozenset[bytes]], RRSet] = field(default_factory=dict)
    made: Counter[bytes] = field(default_factory=Counter)
    """RRsets signed so far, per zone key: shared by the table's signers, read by /metrics."""

    def rrsig(self, owner: bytes, rtype: int, ttl: int, rdatas: Iterable[bytes]) -> RRSet:
        datas = frozenset(rdatas)
        key = (owner, rtype, ttl, datas)
        found = self.signatures.get(key)
        if found is None:
            if len(self.signatures) >= MAX_CACHED_SIGNATURES:
                self.signatures.clear()
            found = self.signer.sign(owner, rtype, ttl, sorted(datas))
            self.made[self.signer.zone_key] += 1
            self.signatures[key] = found
        return found

    def rrsig_of(self, owner: bytes, rrset: RRSet) -> RRSet:
        rtype, _, ttl = struct.unpack_from("!HHI", rrset.tails[0])
        return self.rrsig(owner, rtype, ttl, (tail[10:] for tail in rrset.tails))

    def add_rrsig(self, section: Section, owner: bytes, rrset: RRSet, render_as: bytes) -> None:
        """Append the RRSIGs of `rrset` (owner `owner`) to the answer, rendered under
        `render_as` (the question pointer, or the owner itself)."""
        sigs = self.rrsig_of(owner, rrset)
        section.answer.append(sigs.render(render_as))
        section.answer_count += sigs.count

    def add_negative(
        self, section: Section, zone: Zone, rcode: int, qname: bytes, types: Iterable[int]
    ) -> None:
        """The SOA's RRSIG and the NSEC proof (with RRSIGs) in the authority section of an
        NXDOMAIN or NODATA answer. Left unsigned for a name too long for a proof."""
        soa_tail = zone.negative_soa[len(zone.key) :]
        _, _, ttl = struct.unpack_from("!HHI", soa_tail)
        soa_sigs = self.rrsig(zone.key, wire.SOA, ttl, [soa_tail[10:]])
        try:
            if rcode == wire.NXDOMAIN:
                proofs = nxdomain_proofs(qname)
            else:
                proofs = [nodata_proof(qname, types)]
        except ValueError:
            return
        parts = [section.authority, soa_sigs.render(zone.key)]
        count = section.authority_count + soa_sigs.count
        for owner, next_key, proof_types in proofs:
            nsec = self.signer.nsec(owner, next_key, proof_types, ttl)
            sigs = self.rrsig_of(owner, nsec)
            parts += [nsec.render(owner), sigs.render(owner)]
            count += nsec.count + sigs.count
        section.authority = b"".join(parts)
        section.authority_count = count

    def add_glue_rrsigs(self, section: Section, zone: Zone) -> None:
        """The RRSIGs of the apex NS answer's additional addresses that are the zone's own
        data, after them (RFC 4035 3.1.1; glue below a cut stays unsigned)."""
        parts, count = [section.additional], section.additional_count
        for owner, found in zone.apex_glue_owned:
            sigs = self.rrsig_of(owner, found)
            parts.append(sigs.render(owner))
            count += sigs.count
        section.additional, section.additional_count = b"".join(parts), count

    def nsec_answer(
        self,
        zone: Zone,
        owner: bytes,
        rrsets: Mapping[int, RRSet] | None,
        gslb: GslbName | None,
        dnssec_ok: bool,
    ) -> Section | None:
        """The answer to a query for type NSEC at a name that exists: the NSEC its NODATA
        proofs carry (whose bitmap says the name has one), with its RRSIG for a DO query.
        None for a name too long for it."""
        try:
            _, next_key, types = nodata_proof(owner, types_at(zone, owner, rrsets, gslb, NSEC))
        except ValueError:
            return None
        nsec = self.signer.nsec(owner, next_key, types, zone.negative_ttl)
        section = Section([nsec.render()], nsec.count)
        if dnssec_ok:
            self.add_rrsig(section, owner, nsec, wire.QUESTION_NAME_POINTER)
        return section

    def all_rrsigs(
        self,
        zone: Zone,
        key: bytes,
        rrsets: Mapping[int, RRSet] | None,
        rotations: Iterable[Rotation],
    ) -> Section | None:
        """The answer to a query for type RRSIG: the signatures of every RRset at the name (of
        a GSLB name, the set its cycle starts with). None when the name has none."""
        sets = list((rrsets or {}).values())
        if key == zone.key:
            sets += [zone.soa, *(self.signer.apex_set(t) for t in APEX_KEY_TYPES)]
        for rotation in rotations:
            sets.append(RRSet(tuple(rotation.tails[i] for i in rotation.cycle.chosen[0])))
        if not sets:
            return None
        section = Section()
        for rrset in sets:
            self.add_rrsig(section, key, rrset, wire.QUESTION_NAME_POINTER)
        return section

    def add_no_ds(self, section: Section, cut: bytes, ttl: int) -> None:
        """A referral to an unsigned child: the NSEC at the cut shows it has no DS (RFC 4035
        3.1.4), so validators treat the child as insecure rather than bogus."""
        nsec = self.signer.nsec(cut, b"\x01\x00" + cut, (wire.NS,), ttl)
        sigs = self.rrsig_of(cut, nsec)
        section.authority += nsec.render(cut) + sigs.render(cut)
        section.authority_count += nsec.count + sigs.count


def types_at(
    zone: Zone,
    key: bytes,
    rrsets: Mapping[int, RRSet] | None,
    gslb: GslbName | None,
    qtype: int,
) -> set[int]:
    """The types a signed zone's name has, for its NSEC, without the one asked for."""
    types = set(rrsets or ())
    if key == zone.key:
        types.update((wire.SOA, wire.NS, *APEX_KEY_TYPES))
    if gslb is not None:
        types.update(t for t in (wire.A, wire.AAAA) if gslb.rotation(t) is not None)
    types.discard(qtype)
    return types


def rotation_section(
    rotation: Rotation, position: int, owner: bytes, signed: SignedZone | None
) -> Section:
    """One cycle position's answer; signed, the RRSIG of its set of members (the same
    set at another position in another order reuses the signature)."""
    section = Section([rotation.records[position]], rotation.count)
    if signed is not None:
        tails = rotation.tails
        sigs = signed.rrsig(
            owner,
            rotation.qtype,
            struct.unpack_from("!I", tails[0], 4)[0],
            (tails[i][10:] for i in rotation.cycle.chosen[position]),
        )
        section.answer.append(sigs.render())
        section.answer_count += sigs.count
    return section


def make_signer(
    zone: Zone, keys: Sequence[SigningKey], now: int, window: Window, made: Counter[bytes]
) -> SignedZone:
    from services.dns.signer import ZoneSigner  # dnspython's DNSSEC and `cryptography`: lazily

    signer = ZoneSigner(
        zone.key,
        keys,
        zone.spec.default_ttl_seconds,
        now - INCEPTION_SLACK_SECONDS,
        now + window.validity_seconds,
    )
    return SignedZone(signer, now, made=made)
