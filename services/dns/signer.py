"""Online DNSSEC signing, pure: given a zone's keys and an RRset, the RRSIGs; given a name that
does not exist (or a type it lacks), the NSEC records that prove it (RFC 4470 "minimally
covering" NSEC, the "white lies"); the zone's DNSKEY, CDS and CDNSKEY sets.

No I/O and no clock: the validity window (inception, expiration) is an input, and the same
inputs give the same bytes (dnspython signs ECDSA deterministically, RFC 6979, and Ed25519 is
deterministic), so two replicas sign the same RRset alike. Caching is the caller's
(`signed.py`): nothing here remembers anything.

Names are handled in wire form, lowercased (the table's keys). The canonical order of names is
RFC 4034 6.1: label by label from the right, each label compared as lowercase octets, a label
that is a prefix of another sorting first, and a name before its descendants.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

with warnings.catch_warnings():
    # dnspython's DSA module touches classes `cryptography` deprecates; kgslb never uses DSA.
    warnings.simplefilter("ignore")
    import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY

from services.dns.zone import RRSet, rrset
from shared.dnssec import PrivateKey, dnskey
from shared.models import DnssecKey, KeyRole, KeyState

DS, RRSIG, NSEC, DNSKEY, CDS, CDNSKEY = 43, 46, 47, 48, 59, 60
APEX_KEY_TYPES = (DNSKEY, CDS, CDNSKEY)
"""Signed by the KSK; every other RRset by the ZSK."""
MAX_LABEL = 63
MAX_NAME = 255


@dataclass(frozen=True, slots=True)
class SigningKey:
    key: DnssecKey
    private: PrivateKey


def labels(key: bytes) -> list[bytes]:
    out = []
    offset = 0
    while key[offset]:
        length = key[offset]
        out.append(key[offset + 1 : offset + 1 + length])
        offset += 1 + length
    return out


def from_labels(parts: Iterable[bytes]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in parts) + b"\x00"


def successor(key: bytes) -> bytes | None:
    """The name right after `key` among names that are not its descendants: its first label
    with a zero octet appended (`nope` -> `nope\\000`). None when no such name fits."""
    parts = labels(key)
    if len(parts[0]) < MAX_LABEL and len(key) < MAX_NAME:
        return from_labels([parts[0] + b"\x00", *parts[1:]])
    return None


def predecessor(key: bytes) -> bytes | None:
    """A name before `key`, after every name that can exist before it (RFC 4471's idea): the
    first label's last octet decremented and the label padded with 0xff octets (`nope` ->
    `nopd\\255\\255...`). A decrement that would land on an uppercase letter (which sorts as
    lowercase) takes `@` instead. A last octet 0 drops it and takes the highest child of what
    is left (`ab\\000` -> `\\255...\\255.ab`). None when no such name fits."""
    parts = labels(key)
    first, rest = parts[0], parts[1:]
    room = MAX_NAME - len(key)
    if first[-1] == 0:
        stem = first[:-1]
        if not stem:
            return None
        pad = min(MAX_LABEL, room)
        if pad < 1:
            return None
        return from_labels([b"\xff" * pad, stem, *rest])
    last = first[-1] - 1
    if 0x41 <= last <= 0x5A:
        last = 0x40
    stem = first[:-1] + bytes([last])
    pad = max(0, min(MAX_LABEL - len(stem), room))
    return from_labels([stem + b"\xff" * pad, *rest])


def type_bitmap(types: Iterable[int]) -> bytes:
    """The NSEC type bit maps field (RFC 4034 4.1.2)."""
    windows: dict[int, bytearray] = {}
    for rtype in sorted(set(types)):
        window, low = divmod(rtype, 256)
        bits = windows.setdefault(window, bytearray())
        index = low // 8
        if len(bits) <= index:
            bits.extend(bytes(index + 1 - len(bits)))
        bits[index] |= 0x80 >> (low % 8)
    return b"".join(struct.pack("!BB", w, len(b)) + bytes(b) for w, b in sorted(windows.items()))


def nsec_rdata(next_key: bytes, types: Iterable[int]) -> bytes:
    return next_key + type_bitmap(types)


class ZoneSigner:
    """One zone's keys, ready to sign with, and its apex key sets."""

    def __init__(
        self,
        zone_key: bytes,
        keys: Sequence[SigningKey],
        dnskey_ttl: int,
        inception: int,
        expiration: int,
    ) -> None:
        self.zone_key = zone_key
        self.signer = dns.name.from_wire(zone_key, 0)[0]
        self.inception = inception
        self.expiration = expiration
        published = [dnskey(k.key) for k in keys]
        self._dnskeys = {id(k): d for k, d in zip(keys, published, strict=True)}
        self.ksks = [
            k for k in keys if k.key.role == KeyRole.KSK and k.key.state == KeyState.ACTIVE
        ]
        self.zsks = [
            k for k in keys if k.key.role == KeyRole.ZSK and k.key.state == KeyState.ACTIVE
        ]
        if not self.ksks or not self.zsks:
            raise ValueError("a signed zone needs an active KSK and an active ZSK")
        self.dnskeys = rrset(DNSKEY, dnskey_ttl, (d.to_digestable() for d in published))
        # CDS/CDNSKEY (RFC 7344): what the parent should hold, the active KSKs.
        ksk_dnskeys = [self._dnskeys[id(k)] for k in self.ksks]
        self.cds = rrset(
            CDS,
            dnskey_ttl,
            (dns.dnssec.make_cds(self.signer, d, "SHA256").to_digestable() for d in ksk_dnskeys),
        )
        self.cdnskey = rrset(CDNSKEY, dnskey_ttl, (d.to_digestable() for d in ksk_dnskeys))

    def apex_set(self, rtype: int) -> RRSet:
        return {DNSKEY: self.dnskeys, CDS: self.cds, CDNSKEY: self.cdnskey}[rtype]

    def sign(self, owner: bytes, rtype: int, ttl: int, rdatas: Iterable[bytes]) -> RRSet:
        """The RRSIG records (without owner) of the RRset `owner`/`rtype`/`ttl` with these
        RDATAs (wire form, any order): one per active key of the right role."""
        name = dns.name.from_wire(owner, 0)[0]
        rdataset = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.RdataType(rtype), ttl=ttl)
        for data in rdatas:
            rdataset.add(
                dns.rdata.from_wire(
                    dns.rdataclass.IN, dns.rdatatype.RdataType(rtype), data, 0, len(data)
                )
            )
        signers = self.ksks if rtype in APEX_KEY_TYPES else self.zsks
        signatures = [
            dns.dnssec.sign(
                (name, rdataset),
                k.private,
                self.signer,
                self._dnskeys[id(k)],
                inception=self.inception,
                expiration=self.expiration,
            ).to_digestable()
            for k in signers
        ]
        return rrset(RRSIG, ttl, signatures)

    def sign_set(self, owner: bytes, found: RRSet) -> RRSet:
        """Sign a rendered RRset (its tails: type, class, TTL, RDATA length, RDATA)."""
        rtype, _, ttl = struct.unpack_from("!HHI", found.tails[0])
        return self.sign(owner, rtype, ttl, (tail[10:] for tail in found.tails))

    def nsec(self, owner: bytes, next_key: bytes, types: Iterable[int], ttl: int) -> RRSet:
        return rrset(NSEC, ttl, [nsec_rdata(next_key, (*types, RRSIG, NSEC))])


def nodata_proof(owner: bytes, types: Iterable[int]) -> tuple[bytes, bytes, tuple[int, ...]]:
    """The NSEC for NODATA at `owner`: owner itself, next = `\\000.owner` (its immediate
    successor), the types the name has. Raises ValueError when the name is too long."""
    next_key = b"\x01\x00" + owner
    if len(next_key) > MAX_NAME:
        raise ValueError("name too long for a NODATA proof")
    return owner, next_key, tuple(types)


def nxdomain_proofs(qname: bytes) -> list[tuple[bytes, bytes, tuple[int, ...]]]:
    """RFC 4470 3: one NSEC covering just the query name, and one covering just the wildcard
    at its closest encloser. A validator takes the closest encloser from the NSEC's names
    (their longest common ancestor with the query name), here the query name's parent, so
    the wildcard denied is `*.<parent>`. Raises ValueError when no such names fit."""
    parent = qname[1 + qname[0] :]
    wildcard = b"\x01*" + parent
    proofs: list[tuple[bytes, bytes, tuple[int, ...]]] = []
    for name in (qname, wildcard):
        before, after = predecessor(name), successor(name)
        if before is None or after is None:
            raise ValueError("name too long for an NXDOMAIN proof")
        proof: tuple[bytes, bytes, tuple[int, ...]] = (before, after, ())
        if proof not in proofs:
            proofs.append(proof)
    if qname == wildcard:
        return proofs[:1]
    return proofs
