"""Query parsing at the edge: what a packet means, and which packets are refused how."""

from __future__ import annotations

import struct

import dns.edns
import dns.message
import pytest

from services.dns import wire


def packet(name: str = "Hello.Avi.Iberia.Local", rdtype: str = "A", **kwargs: object) -> bytes:
    query = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    query.id = 0x4FC9
    return query.to_wire()


def error_of(data: bytes) -> wire.QueryError:
    with pytest.raises(wire.QueryError) as caught:
        wire.parse_query(data)
    return caught.value


def test_question_is_kept_as_sent_and_the_key_is_lowercase() -> None:
    query = wire.parse_query(packet())

    assert query.id == 0x4FC9
    assert query.question[:-4] == b"\x05Hello\x03Avi\x06Iberia\x05Local\x00"
    assert query.key == b"\x05hello\x03avi\x06iberia\x05local\x00"
    assert query.key[query.label_offsets[1] :] == b"\x03avi\x06iberia\x05local\x00"


def test_a_plain_query_allows_512_bytes_over_udp() -> None:
    assert wire.parse_query(packet()).max_udp_size() == 512


def test_edns_size_is_honoured_up_to_our_limit_and_never_below_512() -> None:
    big = wire.parse_query(packet(use_edns=0, payload=4096))
    small = wire.parse_query(packet(use_edns=0, payload=100))
    middle = wire.parse_query(packet(use_edns=0, payload=1000))

    assert big.max_udp_size(1232) == 1232
    assert small.max_udp_size(1232) == 512
    assert middle.max_udp_size(1232) == 1000


def test_edns_version_is_read_from_the_opt_ttl() -> None:
    assert wire.parse_query(packet(use_edns=1)).edns_version == 1


def test_client_subnet_option_is_parsed() -> None:
    ecs = dns.edns.ECSOption("198.51.100.0", 24)

    subnet = wire.parse_query(packet(use_edns=0, options=[ecs])).client_subnet

    assert subnet is not None
    assert (subnet.family, subnet.source_prefix, subnet.ip) == (1, 24, "198.51.100.0")


def test_client_subnet_echo_keeps_family_source_and_address_with_our_scope() -> None:
    subnet = wire.ClientSubnet(2, 56, bytes.fromhex("20010db8000000"))

    option = subnet.option(48)

    assert option == struct.pack("!HHHBB", 8, 11, 2, 56, 48) + bytes.fromhex("20010db8000000")


@pytest.mark.parametrize(
    "body",
    [
        struct.pack("!HBB", 1, 24, 0) + bytes([198, 51, 100, 7]),  # one octet too many
        struct.pack("!HBB", 1, 20, 0) + bytes([198, 51, 255]),  # bits set past /20
        struct.pack("!HBB", 3, 8, 0) + bytes([10]),  # unknown family
        struct.pack("!HBB", 1, 33, 0) + bytes(5),  # longer than an IPv4 address
    ],
)
def test_malformed_client_subnet_is_formerr(body: bytes) -> None:
    option = struct.pack("!HH", wire.OPTION_ECS, len(body)) + body
    opt = b"\x00" + struct.pack("!HHIH", wire.OPT, 1232, 0, len(option)) + option
    data = bytearray(packet())
    struct.pack_into("!H", data, 10, 1)

    assert error_of(bytes(data) + opt).rcode == wire.FORMERR


@pytest.mark.parametrize("qdcount", [0, 2])
def test_qdcount_other_than_one_is_formerr(qdcount: int) -> None:
    data = bytearray(packet())
    struct.pack_into("!H", data, 4, qdcount)

    error = error_of(bytes(data))

    assert error.rcode == wire.FORMERR
    assert error.query_id == 0x4FC9


def test_a_response_packet_gets_silence() -> None:
    data = bytearray(packet())
    data[2] |= 0x80

    assert error_of(bytes(data)).rcode is None


def test_a_packet_shorter_than_a_header_gets_silence() -> None:
    assert error_of(b"\x12\x34\x01").rcode is None


def test_an_unknown_opcode_is_notimp() -> None:
    data = bytearray(packet())
    data[2] |= 2 << 3  # opcode 2, STATUS

    assert error_of(bytes(data)).rcode == wire.NOTIMP


def test_two_opt_records_are_formerr() -> None:
    data = bytearray(packet(use_edns=0))
    opt = data[-11:]
    struct.pack_into("!H", data, 10, 2)

    assert error_of(bytes(data) + opt).rcode == wire.FORMERR


def test_trailing_bytes_are_formerr() -> None:
    assert error_of(packet() + b"\x00").rcode == wire.FORMERR


def test_a_question_name_running_past_the_packet_is_formerr() -> None:
    assert error_of(packet()[:20]).rcode == wire.FORMERR


def test_a_compression_pointer_in_the_question_is_formerr() -> None:
    data = packet()[:12] + b"\xc0\x0c" + struct.pack("!HH", 1, 1)

    assert error_of(data).rcode == wire.FORMERR


# Static records' RDATA, rendered by dnspython's zone-file parser -----------------------------


@pytest.mark.parametrize(
    ("rtype", "value", "expected"),
    [
        (1, "10.10.24.200", bytes([10, 10, 24, 200])),
        (15, "10 Test", b"\x00\x0a\x04test\x03avi\x06iberia\x05local\x00"),
        (5, "Other.Example.", b"\x05other\x07example\x00"),
        (33, "0 5 80 test", b"\x00\x00\x00\x05\x00\x50\x04test\x03avi\x06iberia\x05local\x00"),
        (16, '"kgslb zone" two', b"\x0akgslb zone\x03two"),
        (2, "@", b"\x03avi\x06iberia\x05local\x00"),
    ],
    ids=["A", "MX relative", "CNAME absolute", "SRV", "TXT two strings", "NS apex"],
)
def test_static_rdata_is_rendered_absolute_and_canonical(
    rtype: int, value: str, expected: bytes
) -> None:
    assert wire.rdata(rtype, value, "avi.iberia.local") == expected


@pytest.mark.parametrize(
    ("rtype", "value", "reason"),
    [
        (1, "10.10.24", "not valid A RDATA"),
        (28, "10.10.24.200", "not valid AAAA RDATA"),
        (15, "ten test", "not valid MX RDATA"),
        (16, '"' + "x" * 256 + '"', "not valid TXT RDATA: string too long"),
        (6, "a b 1 2 3 4 5", "record type SOA is not supported in static records"),
    ],
    ids=["short A", "A as AAAA", "MX preference", "TXT string over 255", "SOA"],
)
def test_bad_static_rdata_is_refused_saying_why(rtype: int, value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        wire.rdata(rtype, value, "avi.iberia.local")
