"""DNS wire format at the edge: parse a query into a typed value, render records to bytes.

Parsing is hand-written because it runs for every packet that misses the response cache; it
accepts exactly what an authoritative server must understand (RFC 1035 header and question,
EDNS(0) OPT from RFC 6891 with the Client Subnet option of RFC 7871) and reports anything else
as a `QueryError` carrying the rcode to answer with (or None to stay silent). Rendering writes
names uncompressed except the query name, which answers point to at offset 12, so a
pre-rendered record is valid in any response to that name.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

# RR types and classes we name.
A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, OPT, AXFR, IXFR, ANY = (
    1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 252, 251, 255,
)  # fmt: skip
CLASS_IN = 1
TYPE_NAMES = {
    A: "A", NS: "NS", CNAME: "CNAME", SOA: "SOA", PTR: "PTR", MX: "MX", TXT: "TXT",
    AAAA: "AAAA", SRV: "SRV", OPT: "OPT", AXFR: "AXFR", IXFR: "IXFR", ANY: "ANY",
}  # fmt: skip
TYPE_CODES = {name: code for code, name in TYPE_NAMES.items()}

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
               5: "REFUSED", 16: "BADVERS"}  # fmt: skip

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_CD = 0x0010
OPCODE_MASK = 0x7800
COPIED_FLAGS = OPCODE_MASK | FLAG_RD | FLAG_CD
"""Copied from the query into the reply: the opcode and RD (RFC 1035 4.1.1), and CD, which a
name server must copy whether or not it signs (RFC 4035 3.1.6)."""
QUESTION_NAME_POINTER = b"\xc0\x0c"
CLASSIC_UDP_SIZE = 512
DEFAULT_EDNS_UDP_SIZE = 1232
"""What we advertise and the most we send over UDP (the DNS Flag Day 2020 value)."""
OPTION_ECS = 8
EDNS_FLAG_DO = 0x8000
"""DNSSEC OK, in the OPT record's flags (RFC 3225)."""
ECS_FAMILY_BITS = {1: 32, 2: 128}


def type_name(qtype: int) -> str:
    return TYPE_NAMES.get(qtype, f"TYPE{qtype}")


def rcode_name(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, str(rcode))


class QueryError(Exception):
    """A packet we will not answer normally: `rcode` to reply with, or None for silence."""

    def __init__(
        self,
        reason: str,
        rcode: int | None,
        query_id: int = 0,
        flags: int = 0,
        question: bytes = b"",
    ) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.query_id = query_id
        self.flags = flags
        self.question = question
        """The question section to echo, when it could be read."""


@dataclass(frozen=True, slots=True)
class ClientSubnet:
    """The EDNS Client Subnet option of a query (RFC 7871)."""

    family: int
    """1 for IPv4, 2 for IPv6."""
    source_prefix: int
    address: bytes
    """The address octets as sent: `ceil(source_prefix / 8)` of them."""

    @property
    def ip(self) -> str:
        size = 4 if self.family == 1 else 16
        padded = self.address + bytes(size - len(self.address))
        return str(ipaddress.ip_address(padded))

    def option(self, scope_prefix: int) -> bytes:
        """The option for the response: the query's family, source and address, our scope."""
        body = struct.pack("!HBB", self.family, self.source_prefix, scope_prefix) + self.address
        return struct.pack("!HH", OPTION_ECS, len(body)) + body


@dataclass(slots=True)
class Query:
    id: int
    flags: int
    question: bytes
    """The question section exactly as received (echoes the client's case)."""
    key: bytes
    """The query name in wire form, lowercased: the table's lookup key."""
    label_offsets: tuple[int, ...]
    """Offset of each label inside `key`, so every suffix (parent zone) is key[offset:]."""
    qtype: int
    qclass: int
    edns: bool
    edns_udp_size: int
    edns_version: int
    client_subnet: ClientSubnet | None = None
    dnssec_ok: bool = False
    """The DO bit of the query's OPT record: copied into the reply's OPT (RFC 3225 3)."""

    def max_udp_size(self, server_limit: int = DEFAULT_EDNS_UDP_SIZE) -> int:
        """RFC 6891 6.2.5: the client's advertised size, never under 512, capped by ours."""
        if not self.edns:
            return CLASSIC_UDP_SIZE
        return max(CLASSIC_UDP_SIZE, min(self.edns_udp_size, server_limit))

    @property
    def qname(self) -> str:
        return wire_to_name(self.key)


def parse_query(packet: bytes) -> Query:
    if len(packet) < 12:
        raise QueryError("shorter than a DNS header", None)
    query_id, flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!6H", packet)
    if flags & FLAG_QR:
        raise QueryError("a response, not a query", None)
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        raise QueryError(
            f"opcode {opcode} not implemented", NOTIMP, query_id, flags, _question_of(packet)
        )
    if qdcount != 1:
        raise QueryError(f"QDCOUNT is {qdcount}, expected 1", FORMERR, query_id, flags)
    if ancount or nscount:
        raise QueryError("a query with answer or authority records", FORMERR, query_id, flags)
    offset = 12
    offsets: list[int] = []
    end = len(packet)
    while True:
        if offset >= end:
            raise QueryError("question name runs past the packet", FORMERR, query_id, flags)
        length = packet[offset]
        if length == 0:
            offset += 1
            break
        if length & 0xC0:
            raise QueryError("compressed or extended label in question", FORMERR, query_id, flags)
        offsets.append(offset - 12)
        offset += 1 + length
    if offset - 12 > 255:
        raise QueryError("question name longer than 255 octets", FORMERR, query_id, flags)
    if offset + 4 > end:
        raise QueryError("question truncated", FORMERR, query_id, flags)
    qtype, qclass = struct.unpack_from("!2H", packet, offset)
    name_end = offset
    offset += 4
    edns = False
    udp_size = 0
    version = 0
    dnssec_ok = False
    subnet: ClientSubnet | None = None
    for _ in range(arcount):
        record_start = offset
        owner_end = _skip_name(packet, offset, query_id, flags)
        if owner_end + 10 > end:
            raise QueryError("additional record truncated", FORMERR, query_id, flags)
        rtype, rclass, ttl, rdlength = struct.unpack_from("!HHIH", packet, owner_end)
        rdata_start = owner_end + 10
        offset = rdata_start + rdlength
        if offset > end:
            raise QueryError(
                "additional record data runs past the packet", FORMERR, query_id, flags
            )
        if rtype != OPT:
            # TSIG and friends: nothing we act on, skipped by their length.
            continue
        if owner_end != record_start + 1:
            raise QueryError("OPT record with a non-root owner", FORMERR, query_id, flags)
        if edns:
            raise QueryError("more than one OPT record", FORMERR, query_id, flags)
        edns, udp_size, version = True, rclass, (ttl >> 16) & 0xFF
        dnssec_ok = bool(ttl & EDNS_FLAG_DO)
        subnet = _parse_options(packet, rdata_start, offset, query_id, flags)
    if offset != end:
        raise QueryError("trailing bytes after the last record", FORMERR, query_id, flags)
    return Query(
        id=query_id,
        flags=flags,
        question=packet[12 : name_end + 4],
        key=packet[12:name_end].lower(),
        label_offsets=tuple(offsets),
        qtype=qtype,
        qclass=qclass,
        edns=edns,
        edns_udp_size=udp_size,
        edns_version=version,
        client_subnet=subnet,
        dnssec_ok=dnssec_ok,
    )


def _question_of(packet: bytes) -> bytes:
    """The single question of a packet as sent, or b"" when it has not exactly one readable
    question (uncompressed name, within 255 octets)."""
    if len(packet) < 12 or struct.unpack_from("!H", packet, 4)[0] != 1:
        return b""
    offset = 12
    while offset < len(packet) and (length := packet[offset]) and not length & 0xC0:
        offset += 1 + length
    if offset >= len(packet) or packet[offset] or offset - 12 >= 255 or offset + 5 > len(packet):
        return b""
    return packet[12 : offset + 5]


def _parse_options(
    packet: bytes, start: int, end: int, query_id: int, flags: int
) -> ClientSubnet | None:
    subnet: ClientSubnet | None = None
    offset = start
    while offset < end:
        if offset + 4 > end:
            raise QueryError("EDNS option header truncated", FORMERR, query_id, flags)
        code, length = struct.unpack_from("!HH", packet, offset)
        body = packet[offset + 4 : offset + 4 + length]
        offset += 4 + length
        if offset > end:
            raise QueryError("EDNS option runs past the OPT record", FORMERR, query_id, flags)
        if code == OPTION_ECS:
            subnet = _client_subnet(body, query_id, flags)
    return subnet


def _client_subnet(body: bytes, query_id: int, flags: int) -> ClientSubnet:
    """RFC 7871 6: a malformed option SHOULD get FORMERR."""
    if len(body) < 4:
        raise QueryError("client subnet option shorter than 4 octets", FORMERR, query_id, flags)
    family, source, _scope = struct.unpack_from("!HBB", body)
    bits = ECS_FAMILY_BITS.get(family)
    if bits is None:
        raise QueryError(f"client subnet family {family} unknown", FORMERR, query_id, flags)
    if source > bits:
        raise QueryError(f"client subnet /{source} too long", FORMERR, query_id, flags)
    address = body[4:]
    if len(address) != (source + 7) // 8:
        raise QueryError(
            "client subnet address length does not match its prefix", FORMERR, query_id, flags
        )
    if source % 8 and address[-1] & (0xFF >> (source % 8)):
        raise QueryError(
            "client subnet address has bits set past its prefix", FORMERR, query_id, flags
        )
    return ClientSubnet(family, source, address)


def _skip_name(packet: bytes, offset: int, query_id: int, flags: int) -> int:
    while offset < len(packet):
        length = packet[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length & 0xC0:
            raise QueryError("extended label type", FORMERR, query_id, flags)
        offset += 1 + length
    raise QueryError("name runs past the packet", FORMERR, query_id, flags)


# Names ----------------------------------------------------------------------------------------


def name_to_wire(name: str) -> bytes:
    """`Hello.Example.` -> wire form, lowercased. Raises ValueError on an invalid name."""
    name = name.strip().rstrip(".").lower()
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"invalid label {label!r} in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name {name!r} is longer than 255 octets")
    return bytes(out)


def wire_to_name(wire: bytes) -> str:
    labels = []
    offset = 0
    while offset < len(wire) and wire[offset]:
        length = wire[offset]
        labels.append(wire[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    return ".".join(labels) + "."


def parents(key: bytes) -> list[bytes]:
    """Every strict suffix of a wire-form name, nearest first, the root last."""
    out = []
    offset = 0
    while key[offset] != 0:
        offset += 1 + key[offset]
        out.append(key[offset:])
    return out


def label_offsets(key: bytes) -> list[int]:
    """Where each label of a wire-form name starts: key[offset:] is that ancestor."""
    out = []
    offset = 0
    while key[offset] != 0:
        out.append(offset)
        offset += 1 + key[offset]
    return out


def absolute(name: str, zone: str) -> str:
    """A zone-file name: `@` is the zone, a name without a trailing dot is relative to it."""
    name = name.strip()
    if name in ("@", ""):
        return zone
    if name.endswith("."):
        return name.rstrip(".").lower()
    return f"{name}.{zone}".lower()


# Records --------------------------------------------------------------------------------------


def rdata(rtype: int, value: str, zone: str) -> bytes:
    """Presentation-form RDATA (as in a zone file) to wire form, by dnspython's parser: names
    relative to `zone` made absolute, and in canonical form (RFC 4034 6.2: lowercase,
    uncompressed), as the signer and every replica render them. Rendered once per zone
    change, never per query."""
    if rtype not in STATIC_RECORD_TYPES:
        raise ValueError(f"record type {type_name(rtype)} is not supported in static records")
    origin = dns.name.from_text(zone)
    try:
        parsed = dns.rdata.from_text(
            dns.rdataclass.IN,
            dns.rdatatype.RdataType(rtype),
            value,
            origin=origin,
            relativize=False,
        )
    except dns.exception.DNSException as exc:
        raise ValueError(f"not valid {type_name(rtype)} RDATA: {exc}") from None
    return parsed.to_digestable(origin)


STATIC_RECORD_TYPES = frozenset({1, 2, 5, 12, 15, 16, 28, 33})
"""A, NS, CNAME, PTR, MX, TXT, AAAA, SRV: the types a zone's static records may have."""


def soa_rdata(
    mname: str, rname: str, serial: int, refresh: int, retry: int, expire: int, minimum: int
) -> bytes:
    return (
        name_to_wire(mname)
        + name_to_wire(rname)
        + struct.pack("!5I", serial, refresh, retry, expire, minimum)
    )


def record(owner: bytes, rtype: int, ttl: int, data: bytes) -> bytes:
    """One resource record. `owner` is wire form or QUESTION_NAME_POINTER."""
    return owner + struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(data)) + data


def opt_record(
    udp_size: int = DEFAULT_EDNS_UDP_SIZE,
    ext_rcode: int = 0,
    options: bytes = b"",
    dnssec_ok: bool = False,
) -> bytes:
    flags = EDNS_FLAG_DO if dnssec_ok else 0
    return (
        b"\x00" + struct.pack("!HHBBHH", OPT, udp_size, ext_rcode, 0, flags, len(options)) + options
    )


def header(
    query_id: int,
    query_flags: int,
    rcode: int,
    aa: bool,
    counts: tuple[int, int, int, int],
    tc: bool = False,
) -> bytes:
    flags = FLAG_QR | (query_flags & COPIED_FLAGS) | (rcode & 0xF)
    if aa:
        flags |= FLAG_AA
    if tc:
        flags |= FLAG_TC
    return struct.pack("!6H", query_id, flags, *counts)


def error_response(
    query_id: int, query_flags: int, rcode: int, question: bytes = b"", opt: bytes = b""
) -> bytes:
    """A reply to a query we do not answer: its question echoed when it could be read (a
    NOTIMP for a NOTIFY or an UPDATE), else none; `opt`, our OPT record, when the query had
    one (RFC 6891 6.1.1: a reply to an EDNS query carries an OPT, errors included)."""
    counts = (1 if question else 0, 0, 0, 1 if opt else 0)
    return header(query_id, query_flags, rcode, False, counts) + question + opt


def find_opt(packet: bytes) -> tuple[int, int] | None:
    """Where the one OPT record of a packet's additional section starts and ends, walking
    every section (names compressed or not). None when it has none, several, one with a
    non-root owner, or the packet cannot be walked to its end: for replies to packets the
    parser refused, and for RRL's slip, which both must keep an EDNS client's OPT."""
    try:
        qdcount, ancount, nscount, arcount = struct.unpack_from("!4H", packet, 4)
        offset = 12
        for _ in range(qdcount):
            offset = _skip_name(packet, offset, 0, 0) + 4
        found: tuple[int, int] | None = None
        for index in range(ancount + nscount + arcount):
            start = offset
            owner_end = _skip_name(packet, offset, 0, 0)
            rtype, rdlength = struct.unpack_from("!H6xH", packet, owner_end)
            offset = owner_end + 10 + rdlength
            if rtype == OPT:
                if found is not None or owner_end != start + 1 or index < ancount + nscount:
                    return None
                found = (start, offset)
    except (QueryError, struct.error):
        return None
    return found if offset <= len(packet) else None


def reply_opt(packet: bytes, udp_size: int = DEFAULT_EDNS_UDP_SIZE) -> bytes:
    """Our OPT record for an error reply to `packet`: b"" when it has no usable OPT record,
    else our UDP size with the query's DO bit copied (RFC 3225 3)."""
    where = find_opt(packet)
    if where is None:
        return b""
    ttl = struct.unpack_from("!I", packet, where[0] + 5)[0]
    return opt_record(udp_size, dnssec_ok=bool(ttl & EDNS_FLAG_DO))
