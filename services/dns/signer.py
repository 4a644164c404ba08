"""Online DNSSEC signing, pure: given a zone's keys and an RRset, the RRSIGs; given a name that
does not exist (or a type it lacks), the NSEC records that prove it (RFC 4470 "minimally
covering" NSEC, the "white lies"); the zone's DNSKEY, CDS and CDNSKEY sets.

No I/O and no clock: the validity window (inception, expiration) is an input, and the same
inputs give the same bytes (dnspython signs ECDSA deterministically, RFC 6979, and Ed25519 is
deterministic), so two replicas sign the same RRset alike. Caching is the caller's
(`signed.py`): nothing here remembers anything.

The NSEC names and type numbers are `denial.py`'s. dnspython's DNSSEC module and
`cryptography` are loaded with this module, which `signed.py` imports only once a zone has
keys: a DNS without a signed zone does not carry them (about 10 MB).
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterable, Sequence

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

from services.dns.denial import (
    APEX_KEY_TYPES,
    CDNSKEY,
    CDS,
    DNSKEY,
    NSEC,
    RRSIG,
    SigningKey,
    nsec_rdata,
)
from services.dns.zone import RRSet, rrset
from shared.dnssec import dnskey
from shared.models import KeyRole, KeyState


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
