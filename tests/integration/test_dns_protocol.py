"""The DNS protocol over real sockets: a `kgslb dns` process mirroring a real nats-server's KV,
asked by dnspython, by raw sockets and by `dig` (Debian package bind9-dnsutils) where
installed. One server for the module: these tests only read."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import struct
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kgslb.embedded import ManagedProcess, NatsServer, free_port, service_process
from shared import bus, subjects, wire
from shared.models import (
    Algorithm,
    GslbService,
    Member,
    NameServer,
    PriorityGroup,
    SoaSpec,
    StaticRecord,
    TopologyEntry,
    UnhandledPolicy,
    ZoneSpec,
)
from shared.settings import NatsSettings

ZONE = "avi.iberia.local"
DROP_ZONE = "drop.test"
HELLO = f"hello.{ZONE}"
CANARY = f"canary.{ZONE}"
STICKY = f"sticky.{ZONE}"
NEAREST = f"nearest.{ZONE}"
S2_IP = "127.10.23.40"
S2_SUBNET = dns.edns.ECSOption("10.1.2.0", 24)
"""Mapped to site s2 by NEAREST's topology."""
S2_HASHED_SUBNET = dns.edns.ECSOption("203.0.6.0", 24)
"""A subnet that weighted rendezvous hashing over the SEED members gives to s2."""
SEED = (("127.10.25.46", "s1az1", 6), ("127.10.26.40", "s1az2", 4), ("127.10.23.40", "s2", 2))
BIG_TXT = " ".join(f'"{"x" * 200}"' for _ in range(7))


def zone(name: str = ZONE, unhandled: UnhandledPolicy = UnhandledPolicy.RESPOND) -> ZoneSpec:
    return ZoneSpec(
        name=name,
        soa=SoaSpec(mname="g-dns.iberia.local.", rname="johernandez.iberia.local."),
        nameservers=[NameServer(name=f"g-dns.{name}.", glue=["127.0.0.1"])],
        records=[
            StaticRecord(name="test", type="A", value="10.10.24.200"),
            StaticRecord(name="v6", type="AAAA", value="2001:db8::200"),
            StaticRecord(name="www", type="CNAME", value="test"),
            StaticRecord(name="info", type="TXT", value='"kgslb zone"'),
            StaticRecord(name="_http._tcp", type="SRV", value="0 5 80 test"),
            StaticRecord(name="@", type="MX", value="10 test"),
            StaticRecord(name="big", type="TXT", value=BIG_TXT),
            StaticRecord(name="near", type="CNAME", value="nearest"),
            StaticRecord(name="sticky-alias", type="CNAME", value="sticky"),
        ],
        unhandled=unhandled,
    )


def gslb(
    fqdn: str,
    members: tuple[tuple[str, str, int], ...] = SEED,
    ttl: int = 30,
    **overrides: object,
) -> GslbService:
    group = PriorityGroup(
        priority=10, members=[Member(ip=ip, cluster=c, weight=w) for ip, c, w in members]
    )
    return GslbService(fqdn=fqdn, ttl_seconds=ttl, groups=[group], **overrides)  # type: ignore[arg-type]


CANARY_MEMBERS = (
    ("127.10.25.46", "s1az1", 20),
    ("127.10.26.40", "s1az2", 20),
    ("127.10.23.40", "s2", 1),
)
SERVICES = [
    gslb(HELLO),
    gslb(CANARY, CANARY_MEMBERS),
    gslb(STICKY, algorithm=Algorithm.CONSISTENT_HASH),
    gslb(
        NEAREST,
        algorithm=Algorithm.TOPOLOGY,
        topology=[TopologyEntry(client_subnet="10.1.2.0/24", site="s2")],
    ),
    gslb(f"hello.{DROP_ZONE}"),
]


async def seed_kv(nats_url: str, zones: list[ZoneSpec], services: list[GslbService]) -> None:
    nc = await bus.connect(NatsSettings(nats_url=nats_url), "kgslb-test-seed")
    try:
        buckets = await bus.bootstrap(nc.jetstream())
        for spec in zones:
            await buckets[subjects.KV_ZONES].put(subjects.fqdn_key(spec.name), wire.encode(spec))
        for service in services:
            await buckets[subjects.KV_SERVICES].put(
                subjects.fqdn_key(service.fqdn), wire.encode(service)
            )
    finally:
        await nc.drain()


def query(
    port: int, name: str, rdtype: str = "A", tcp: bool = False, **kwargs: object
) -> dns.message.Message:
    message = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    if tcp:
        return dns.query.tcp(message, "127.0.0.1", port=port, timeout=2)
    return dns.query.udp(message, "127.0.0.1", port=port, timeout=2, ignore_trailing=False)


def wait_for_answers(port: int, names: list[str], timeout_seconds: float = 30.0) -> None:
    deadline = asyncio.get_event_loop_policy().new_event_loop().time() + timeout_seconds
    loop = asyncio.new_event_loop()
    try:
        while loop.time() < deadline:
            try:
                if all(query(port, name).answer for name in names):
                    return
            except (dns.exception.Timeout, OSError):
                pass
            loop.run_until_complete(asyncio.sleep(0.1))
    finally:
        loop.close()
    raise AssertionError(f"kgslb dns on port {port} never answered {names}")


def start_seeded_dns(
    workdir: Path, zones: list[ZoneSpec], services: list[GslbService], *flags: str
) -> tuple[NatsServer, ManagedProcess, int]:
    nats = NatsServer(workdir / "jetstream")
    nats.start()
    asyncio.run(seed_kv(nats.url, zones, services))
    port = free_port()
    process = service_process(
        "dns",
        ["dns", "--dns-port", str(port), *flags],
        workdir / "logs",
        {"KGSLB_NATS_URL": nats.url},
    )
    process.start()
    wait_for_answers(port, [s.fqdn for s in services])
    return nats, process, port


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, ManagedProcess]]:
    workdir = tmp_path_factory.mktemp("dns-protocol")
    nats, process, port = start_seeded_dns(
        workdir,
        [zone(), zone(DROP_ZONE, UnhandledPolicy.DROP)],
        SERVICES,
        "--tcp-idle-seconds", "1",
    )  # fmt: skip
    yield port, process
    process.stop()
    nats.stop()


@pytest.fixture
def port(dns_server: tuple[int, ManagedProcess]) -> int:
    return dns_server[0]


def dig(port: int, *args: str) -> str:
    if shutil.which("dig") is None:
        pytest.skip("dig is not installed (Debian package bind9-dnsutils)")
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+time=2", "+tries=1", *args],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    return out.stdout


def raw_udp(port: int, data: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def addresses(reply: dns.message.Message) -> list[str]:
    return [rr.address for rrset in reply.answer for rr in rrset if hasattr(rr, "address")]


# Zones and authority ---------------------------------------------------------------------------


def test_dig_sees_an_authoritative_answer_without_recursion(port: int) -> None:
    out = dig(port, HELLO, "A")

    assert "status: NOERROR" in out
    flags = out.split("flags:")[1].split(";")[0].split()
    assert "aa" in flags and "ra" not in flags


def test_a_name_outside_the_zones_is_refused_with_nothing_in_the_answer(port: int) -> None:
    reply = query(port, "www.example.com")

    assert reply.rcode() == dns.rcode.REFUSED
    assert not reply.flags & (dns.flags.AA | dns.flags.RA)
    assert reply.answer == []


def test_dig_sees_nxdomain_with_the_soa_for_an_unknown_name(port: int) -> None:
    out = dig(port, f"nope.{ZONE}", "A")

    assert "status: NXDOMAIN" in out
    assert "AUTHORITY: 1" in out
    authority = out.split(";; AUTHORITY SECTION:")[1]
    assert "SOA\tg-dns.iberia.local. johernandez.iberia.local." in authority


def test_aaaa_for_the_v4_only_gslb_name_is_nodata_with_the_soa(port: int) -> None:
    reply = query(port, HELLO, "AAAA")

    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    assert reply.authority[0].rdtype == dns.rdatatype.SOA


def test_a_drop_zone_stays_silent_for_aaaa_and_answers_a(port: int) -> None:
    name = f"hello.{DROP_ZONE}"

    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(dns.message.make_query(name, "AAAA"), "127.0.0.1", port=port, timeout=0.5)
    assert addresses(query(port, name))


# EDNS, truncation and TCP ----------------------------------------------------------------------


def test_dig_sees_our_opt_record_advertising_1232(port: int) -> None:
    out = dig(port, "+bufsize=4096", HELLO)

    assert "; EDNS: version: 0" in out and "udp: 1232" in out


def test_dig_edns_version_1_gets_badvers(port: int) -> None:
    out = dig(port, "+edns=1", "+noednsnegotiation", HELLO)

    assert "status: BADVERS" in out


def test_a_large_answer_is_truncated_over_udp(port: int) -> None:
    reply = query(port, f"big.{ZONE}", "TXT", use_edns=0, payload=4096)

    assert reply.flags & dns.flags.TC
    assert reply.answer == []


def test_the_same_large_answer_comes_whole_over_tcp_on_the_same_port(port: int) -> None:
    reply = query(port, f"big.{ZONE}", "TXT", tcp=True)

    assert not reply.flags & dns.flags.TC
    assert len(reply.answer[0][0].strings) == 7


def test_dig_retries_a_truncated_answer_over_tcp(port: int) -> None:
    out = dig(port, f"big.{ZONE}", "TXT")

    assert "Truncated, retrying in TCP mode" in out
    assert "ANSWER: 1" in out


def framed(name: str, query_id: int) -> bytes:
    message = dns.message.make_query(name, "A")
    message.id = query_id
    data = message.to_wire()
    return struct.pack("!H", len(data)) + data


def read_framed(sock: socket.socket) -> dns.message.Message:
    size = struct.unpack("!H", sock.recv(2, socket.MSG_WAITALL))[0]
    return dns.message.from_wire(sock.recv(size, socket.MSG_WAITALL))


def test_several_queries_share_one_tcp_connection(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(framed(HELLO, 1) + framed(f"test.{ZONE}", 2) + framed(CANARY, 3))
        replies = [read_framed(sock) for _ in range(3)]
        sock.sendall(framed(f"nope.{ZONE}", 4))
        later = read_framed(sock)

    assert [r.id for r in replies] == [1, 2, 3]
    assert addresses(replies[1]) == ["10.10.24.200"]
    assert later.rcode() == dns.rcode.NXDOMAIN


def test_an_idle_tcp_connection_is_closed_by_the_server(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(framed(HELLO, 9))
        read_framed(sock)

        assert sock.recv(1) == b"", "the server closes after --tcp-idle-seconds"


# Header, question and malformed input ----------------------------------------------------------


def test_id_and_rd_are_copied_and_the_question_case_is_echoed(port: int) -> None:
    message = dns.message.make_query("HeLLo.Avi.IBERIA.local", "A")
    message.id = 20425
    message.flags &= ~dns.flags.RD

    reply = dns.query.udp(message, "127.0.0.1", port=port, timeout=2)

    assert reply.id == 20425
    assert not reply.flags & dns.flags.RD
    assert reply.question[0].name.to_text() == "HeLLo.Avi.IBERIA.local."


def test_a_truncated_query_gets_formerr_with_its_id(port: int) -> None:
    message = dns.message.make_query(HELLO, "A")
    message.id = 4242

    reply = raw_udp(port, message.to_wire()[:-2])

    assert reply is not None
    parsed = dns.message.from_wire(reply, question_only=True)
    assert (parsed.id, parsed.rcode()) == (4242, dns.rcode.FORMERR)


def test_two_questions_get_formerr(port: int) -> None:
    data = bytearray(dns.message.make_query(HELLO, "A").to_wire())
    question = bytes(data[12:])
    data[5] = 2

    reply = raw_udp(port, bytes(data) + question)

    assert reply is not None
    assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR


def test_a_zero_question_query_gets_formerr(port: int) -> None:
    data = bytearray(dns.message.make_query(HELLO, "A").to_wire()[:12])
    data[5] = 0

    reply = raw_udp(port, bytes(data))

    assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR


def test_a_response_packet_gets_silence(port: int) -> None:
    data = bytearray(dns.message.make_query(HELLO, "A").to_wire())
    data[2] |= 0x80

    assert raw_udp(port, bytes(data), timeout=0.3) is None
    assert addresses(query(port, HELLO))


def test_any_gets_one_rrset(port: int) -> None:
    reply = query(port, HELLO, "ANY")

    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.A]


def test_axfr_over_tcp_is_refused(port: int) -> None:
    reply = query(port, ZONE, "AXFR", tcp=True)

    assert reply.rcode() == dns.rcode.REFUSED and reply.answer == []


def test_ixfr_is_refused(port: int) -> None:
    assert query(port, ZONE, "IXFR", tcp=True).rcode() == dns.rcode.REFUSED


# Static records --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rdtype", "expected"),
    [
        (f"test.{ZONE}", "A", "10.10.24.200"),
        (f"v6.{ZONE}", "AAAA", "2001:db8::200"),
        (f"www.{ZONE}", "CNAME", "test.avi.iberia.local."),
        (f"info.{ZONE}", "TXT", '"kgslb zone"'),
        (f"_http._tcp.{ZONE}", "SRV", "0 5 80 test.avi.iberia.local."),
        (ZONE, "MX", "10 test.avi.iberia.local."),
        (ZONE, "NS", "g-dns.avi.iberia.local."),
    ],
)
def test_dig_reads_static_records(port: int, name: str, rdtype: str, expected: str) -> None:
    out = dig(port, "+noall", "+answer", name, rdtype)

    assert out.strip().endswith(expected), out


def test_dig_gets_glue_with_the_apex_ns(port: int) -> None:
    out = dig(port, "+noall", "+additional", ZONE, "NS")

    assert "g-dns.avi.iberia.local.\t30\tIN\tA\t127.0.0.1" in out


def test_dig_follows_the_cname_to_the_static_address(port: int) -> None:
    out = dig(port, "+noall", "+answer", f"www.{ZONE}", "A")

    assert "CNAME\ttest.avi.iberia.local." in out and "A\t10.10.24.200" in out


# Selection over the wire -----------------------------------------------------------------------


def shares_over(port: int, name: str, count: int) -> Counter[str]:
    """`count` sequential queries over one UDP socket. Replies are read by hand: one A record
    and no OPT, so the address is the last four bytes (dnspython would triple the run time)."""
    seen: Counter[str] = Counter()
    question = dns.message.make_query(name, "A").to_wire()[2:]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))
        for turn in range(count):
            query_id = struct.pack("!H", turn & 0xFFFF)
            sock.send(query_id + question)
            reply = sock.recv(4096)
            assert reply[:2] == query_id
            assert struct.unpack_from("!H", reply, 6)[0] == 1, "one answer record"
            seen[socket.inet_ntoa(reply[-4:])] += 1
    return seen


@pytest.mark.parametrize(
    ("name", "members"), [(HELLO, SEED), (CANARY, CANARY_MEMBERS)], ids=["6:4:2", "20:20:1"]
)
def test_ten_thousand_queries_follow_the_weights_within_one_point(
    port: int, name: str, members: tuple[tuple[str, str, int], ...]
) -> None:
    seen = shares_over(port, name, 10_000)

    total = sum(weight for _, _, weight in members)
    for ip, _, weight in members:
        assert abs(seen[ip] / 10_000 - weight / total) < 0.01, seen


def test_an_ecs_subnet_is_hashed_and_echoed_with_its_scope(port: int) -> None:
    ecs = dns.edns.ECSOption("203.0.113.0", 24)

    replies = [query(port, STICKY, use_edns=0, options=[ecs]) for _ in range(5)]

    assert len({addresses(r)[0] for r in replies}) == 1
    echoed = [o for o in replies[0].options if isinstance(o, dns.edns.ECSOption)]
    assert [(o.address, o.srclen, o.scopelen) for o in echoed] == [("203.0.113.0", 24, 24)]


@pytest.mark.parametrize(
    ("name", "alias", "subnet"),
    [(NEAREST, f"near.{ZONE}", S2_SUBNET), (STICKY, f"sticky-alias.{ZONE}", S2_HASHED_SUBNET)],
    ids=["Topology", "ConsistentHash"],
)
def test_the_ecs_subnet_decides_alike_asked_directly_and_through_a_cname(
    port: int, name: str, alias: str, subnet: dns.edns.ECSOption
) -> None:
    direct = [addresses(query(port, name, use_edns=0, options=[subnet])) for _ in range(6)]
    aliased = [addresses(query(port, alias, use_edns=0, options=[subnet])) for _ in range(6)]

    assert direct == [[S2_IP]] * 6
    assert aliased == [[S2_IP]] * 6


# DNSSEC OK (RFC 3225) --------------------------------------------------------------------------


@pytest.mark.parametrize("dnssec_ok", [True, False], ids=["DO=1", "DO=0"])
def test_the_do_bit_is_copied_into_the_reply(port: int, dnssec_ok: bool) -> None:
    reply = query(port, HELLO, use_edns=0, want_dnssec=dnssec_ok)

    assert bool(reply.ednsflags & dns.flags.DO) == dnssec_ok


@pytest.mark.parametrize(
    ("name", "status"),
    [(HELLO, "NOERROR"), (f"nope.{ZONE}", "NXDOMAIN")],
    ids=["answer", "NXDOMAIN"],
)
def test_dig_dnssec_sees_do_in_our_opt_record(port: int, name: str, status: str) -> None:
    out = dig(port, "+dnssec", name, "A")

    assert f"status: {status}" in out
    assert "; EDNS: version: 0, flags: do;" in out


@pytest.mark.parametrize("checking_disabled", [True, False], ids=["CD=1", "CD=0"])
def test_the_cd_bit_is_copied_into_the_reply(port: int, checking_disabled: bool) -> None:
    """RFC 4035 3.1.6: a name server copies CD from the query, signed zone or not."""
    message = dns.message.make_query(HELLO, "A", use_edns=0, want_dnssec=True)
    if checking_disabled:
        message.flags |= dns.flags.CD
    reply = dns.query.udp(message, "127.0.0.1", port=port, timeout=2)

    assert bool(reply.flags & dns.flags.CD) == checking_disabled
    assert reply.answer


def test_dig_cdflag_sees_cd_in_the_reply(port: int) -> None:
    out = dig(port, "+cdflag", HELLO, "A")

    assert re.search(r";; flags: qr aa rd cd;", out), out


@pytest.mark.parametrize(
    "opcode",
    [dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS, dns.opcode.IQUERY],
    ids=["NOTIFY", "UPDATE", "STATUS", "IQUERY"],
)
def test_an_opcode_other_than_query_gets_notimp_with_its_opcode_and_question(
    port: int, opcode: int
) -> None:
    """RFC 1035 4.1.1: the opcode is copied into the response; the question is echoed, so a
    primary sending NOTIFY or a client sending UPDATE reads a clear NOTIMP."""
    message = dns.message.make_query(ZONE, "SOA")
    message.set_opcode(opcode)
    reply = dns.query.udp(message, "127.0.0.1", port=port, timeout=2)

    assert reply.rcode() == dns.rcode.NOTIMP
    assert reply.opcode() == opcode
    assert reply.id == message.id
    assert [q.to_text() for q in reply.question] == [f"{ZONE}. IN SOA"]
    assert not reply.answer


def test_an_update_with_a_compressed_question_gets_notimp_without_a_question(port: int) -> None:
    """A question we cannot read is not echoed (a pointer at offset 12 points at itself)."""
    header = struct.pack("!6H", 0x4242, dns.opcode.to_flags(dns.opcode.UPDATE), 1, 0, 0, 0)
    reply = raw_udp(port, header + b"\xc0\x0c" + struct.pack("!2H", 6, 1))

    assert reply is not None
    query_id, flags, qdcount = struct.unpack_from("!3H", reply)
    assert (query_id, qdcount) == (0x4242, 0)
    assert dns.opcode.from_flags(flags) == dns.opcode.UPDATE
    assert flags & 0xF == dns.rcode.NOTIMP


def test_dig_without_dnssec_sees_no_do(port: int) -> None:
    out = dig(port, HELLO, "A")

    assert "; EDNS: version: 0, flags:;" in out


# Property: random and broken packets -----------------------------------------------------------

GOOD = dns.message.make_query(HELLO, "A").to_wire()


@st.composite
def broken_packets(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    data = bytearray(GOOD)
    for _ in range(draw(st.integers(1, 5))):
        position = draw(st.integers(0, len(data) - 1)) if data else 0
        match draw(st.sampled_from(["flip", "cut", "insert"])):
            case "flip" if data:
                data[position] ^= draw(st.integers(1, 255))
            case "cut":
                del data[position:]
            case _:
                data[position:position] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(packets=st.lists(broken_packets(), min_size=1, max_size=10))
def test_broken_packets_never_stop_the_server(
    dns_server: tuple[int, ManagedProcess], packets: list[bytes]
) -> None:
    port, process = dns_server
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for data in packets:
            sock.sendto(data, ("127.0.0.1", port))

    reply = query(port, HELLO)

    assert process.running
    assert reply.id and addresses(reply)
