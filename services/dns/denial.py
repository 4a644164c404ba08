"""Authenticated denial for online signing, pure and crypto-free: the names of RFC 4470
"minimally covering" NSEC records (the "white lies": a predecessor and a successor of the
query name that no existing name can fall between), their type bitmaps, and the DNSSEC type
numbers. Signing them is `signer.py`'s; this module imports neither dnspython's DNSSEC nor
`cryptography`, so a DNS without a signed zone never loads them.

Names are handled in wire form, lowercased (the table's keys). The canonical order of names is
RFC 4034 6.1: label by label from the right, each label compared as lowercase octets, a label
that is a prefix of another sorting first, and a name before its descendants.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.models import DnssecKey

if TYPE_CHECKING:
    from shared.dnssec import PrivateKey

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
