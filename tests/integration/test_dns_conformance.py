"""DNS conformance as outside testers probe it: a signed zone served by a real `kgslb dns` (keys
made by a real reconciler), asked with dnspython and raw packets, and checked by validators
that are not ours: BIND's `delv` (Debian `bind9-dnsutils`) and a real `unbound` (Debian
`unbound`) with the DS that `kgslb dnssec ds` prints. What each probe found and which RFC it
follows is listed in docs/reliability.md, "Conformance".

The zone is the seed's `avi.iberia.local` (6:4:2 `hello`, static `test` A) with a few more
static records: CNAMEs that end at a missing name, at an empty non-terminal, at a name without
the type asked, and at the GSLB name. One zone for the module: these tests only read."""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.dnssec
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from kgslb.embedded import ManagedProcess, NatsServer, free_port, service_process
from kgslb.up import load_stack_config, seed_messages
from shared import bus, wire
from shared.dnssec import new_secret
from shared.models import PolicyObject
from shared.settings import NatsSettings
from tests.integration.conftest import TEST_FIRST_SYNC
from tests.integration.test_dnssec import ds_record
from tests.integration.test_pipeline import SEED
from tests.integration.unbound import UNBOUND, start, write_config

ZONE = "avi.iberia.local"
HELLO = f"hello.{ZONE}"
EXTRA_RECORDS = [
    {"name": "dangling", "type": "CNAME", "value": "missing"},
    {"name": "toent", "type": "CNAME", "value": "ent"},
    {"name": "deep.ent", "type": "A", "value": "10.0.0.9"},
    {"name": "www", "type": "CNAME", "value": "test"},
    {"name": "chain", "type": "CNAME", "value": "www"},
    {"name": "alias", "type": "CNAME", "value": "hello"},
]
"""Static records added to the seed zone: `dangling` ends at no name, `toent` at an empty
non-terminal, `chain` (chain -> www -> test) at a name with only an A record, `alias` at the
GSLB name."""
IN_ZONE_NS = {"name": f"ns-test.{ZONE}.", "glue": ["127.0.0.1"]}
OUT_OF_ZONE_NS = {"name": "ns.example.net.", "glue": ["127.0.0.9"]}
"""Name servers besides the seed's one per site: the address of one named inside the zone is
the zone's own data, that of one outside it is glue we only pass on."""
DELV = shutil.which("delv")
needs_delv = pytest.mark.skipif(DELV is None, reason="delv not installed (bind9-dnsutils)")
needs_unbound = pytest.mark.skipif(UNBOUND is None, reason="unbound not installed (unbound)")
needs_dig = pytest.mark.skipif(
    shutil.which("dig") is None, reason="dig not installed (bind9-dnsutils)"
)


@dataclass
class Signed:
    port: int
    nats_url: str
    dnskeys: dns.rrset.RRset
    workdir: Path


async def publish(nats_url: str) -> None:
    """The seed's policies and observed objects, as its watchers publish them, with the
    GSLBConfig's zone carrying EXTRA_RECORDS."""
    nc = await bus.connect(NatsSettings(nats_url=nats_url), "kgslb-test-conformance")
    try:
        js = nc.jetstream()
        await bus.bootstrap(js)
        for subject, message in seed_messages(load_stack_config(SEED)):
            if isinstance(message, PolicyObject) and "zones" in message.spec:
                spec = dict(message.spec)
                zones = [dict(z) for z in spec["zones"]]
                zones[0]["records"] = [*zones[0].get("records", []), *EXTRA_RECORDS]
                zones[0]["nameservers"] = [*zones[0]["nameservers"], IN_ZONE_NS, OUT_OF_ZONE_NS]
                spec["zones"] = zones
                message = message.model_copy(update={"spec": spec})
            await js.publish(subject, wire.encode(message))
    finally:
        await nc.drain()


def query(
    port: int, name: str, rdtype: str = "A", do: bool = False, tcp: bool = False
) -> dns.message.Message:
    message = dns.message.make_query(name, rdtype, want_dnssec=do)
    if tcp:
        return dns.query.tcp(message, "127.0.0.1", port=port, timeout=3)
    return dns.query.udp(message, "127.0.0.1", port=port, timeout=3)


def wait_for(check: object, timeout_seconds: float, what: str) -> object:
    loop = asyncio.new_event_loop()
    try:
        deadline = loop.time() + timeout_seconds
        while loop.time() < deadline:
            try:
                result = check()  # type: ignore[operator]
                if result:
                    return result
            except (dns.exception.DNSException, OSError):
                pass
            loop.run_until_complete(asyncio.sleep(0.2))
    finally:
        loop.close()
    raise AssertionError(f"{what}: not within {timeout_seconds} s")


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    workdir = tmp_path_factory.mktemp("dns-conformance")
    nats = NatsServer(workdir / "jetstream")
    nats.start()
    secret = {"KGSLB_DNSSEC_KEY_SECRET": new_secret(), "KGSLB_NATS_URL": nats.url}
    port = free_port()
    processes: list[ManagedProcess] = [
        service_process(
            "reconciler", ["reconciler"], workdir / "logs", {**secret, **TEST_FIRST_SYNC}
        ),
        service_process(
            "dns",
            ["dns", "--dns-port", str(port), "--log-per-second", "0"],
            workdir / "logs",
            secret,
        ),
    ]
    try:
        for process in processes:
            process.start()
        asyncio.run(publish(nats.url))
        wait_for(lambda: query(port, f"dangling.{ZONE}").answer, 60, "the extra records")
        wait_for(lambda: query(port, HELLO).answer, 60, "the GSLB name")

        def keys() -> dns.rrset.RRset | None:
            reply = query(port, ZONE, "DNSKEY", do=True)
            found = reply.get_rrset(
                dns.message.ANSWER, dns.name.from_text(ZONE), 1, dns.rdatatype.DNSKEY
            )
            return found if found is not None and any(k.flags == 257 for k in found) else None

        dnskeys = wait_for(keys, 60, "the zone's DNSKEY")
        assert isinstance(dnskeys, dns.rrset.RRset)
        yield Signed(port, nats.url, dnskeys, workdir)
    finally:
        for process in processes:
            process.stop()
        nats.stop()


@pytest.fixture
def port(signed: Signed) -> int:
    return signed.port


# CNAME chains that end without the type asked: RFC 6604 and RFC 2308 ------------------------


def soa_of(reply: dns.message.Message) -> dns.rrset.RRset:
    (soa,) = [r for r in reply.authority if r.rdtype == dns.rdatatype.SOA]
    return soa


@pytest.mark.parametrize("do", [False, True], ids=["DO=0", "DO=1"])
def test_a_cname_to_a_missing_name_of_the_zone_is_nxdomain_with_the_soa(
    port: int, do: bool
) -> None:
    reply = query(port, f"dangling.{ZONE}", do=do)

    assert reply.rcode() == dns.rcode.NXDOMAIN, reply
    assert reply.flags & dns.flags.AA
    (cname,) = [r for r in reply.answer if r.rdtype == dns.rdatatype.CNAME]
    assert str(cname[0].target) == f"missing.{ZONE}."
    soa = soa_of(reply)
    assert soa.ttl == min(soa[0].minimum, 30)  # RFC 2308 5: min(SOA TTL, SOA minimum)


@pytest.mark.parametrize(
    ("name", "rdtype", "last"),
    [
        (f"toent.{ZONE}", "A", f"ent.{ZONE}."),
        (f"chain.{ZONE}", "AAAA", f"test.{ZONE}."),
        (f"alias.{ZONE}", "MX", f"{HELLO}."),
    ],
    ids=["empty non-terminal", "three-link chain, A only", "GSLB name, MX"],
)
def test_a_cname_chain_ending_at_a_name_without_the_type_is_nodata_with_the_soa(
    port: int, name: str, rdtype: str, last: str
) -> None:
    reply = query(port, name, rdtype)

    assert reply.rcode() == dns.rcode.NOERROR, reply
    assert str(reply.answer[-1][0].target) == last
    assert all(r.rdtype == dns.rdatatype.CNAME for r in reply.answer)
    assert soa_of(reply)[0].serial > 0


def canonical(name: str) -> dns.name.Name:
    return dns.name.from_text(name)


def validate_every_rrset(reply: dns.message.Message, dnskeys: dns.rrset.RRset) -> None:
    """Every RRset of answer and authority verifies against the zone's keys (dnspython)."""
    keys = {dnskeys.name: dnskeys}
    for section in (reply.answer, reply.authority):
        sigs = {(r.name, r.covers): r for r in section if r.rdtype == dns.rdatatype.RRSIG}
        for rrset in section:
            if rrset.rdtype == dns.rdatatype.RRSIG:
                continue
            dns.dnssec.validate(rrset, sigs[(rrset.name, rrset.rdtype)], keys)


def test_a_signed_cname_to_a_missing_name_carries_the_nsec_that_denies_the_target(
    signed: Signed,
) -> None:
    reply = query(signed.port, f"dangling.{ZONE}", do=True)

    assert reply.rcode() == dns.rcode.NXDOMAIN, reply
    validate_every_rrset(reply, signed.dnskeys)
    target = canonical(f"missing.{ZONE}")
    nsecs = [r for r in reply.authority if r.rdtype == dns.rdatatype.NSEC]
    covering = [n for n in nsecs if n.name < target < n[0].next]
    assert covering, f"no NSEC covers {target}: {nsecs}"
    wildcard = canonical(f"*.{ZONE}")
    assert any(n.name < wildcard < n[0].next for n in nsecs), "no wildcard denial"


def test_a_signed_cname_to_an_empty_non_terminal_carries_its_nodata_nsec(signed: Signed) -> None:
    reply = query(signed.port, f"toent.{ZONE}", do=True)

    assert reply.rcode() == dns.rcode.NOERROR, reply
    validate_every_rrset(reply, signed.dnskeys)
    (nsec,) = [r for r in reply.authority if r.rdtype == dns.rdatatype.NSEC]
    assert nsec.name == canonical(f"ent.{ZONE}")
    assert dns.rdatatype.A not in nsec_types(nsec[0])


def test_the_apex_ns_answer_signs_the_addresses_of_name_servers_inside_the_zone(
    signed: Signed,
) -> None:
    reply = query(signed.port, ZONE, "NS", do=True)

    validate_every_rrset(reply, signed.dnskeys)
    keys = {signed.dnskeys.name: signed.dnskeys}
    zone = dns.name.from_text(ZONE)
    addresses = [r for r in reply.additional if r.rdtype == dns.rdatatype.A]
    sigs = {r.name: r for r in reply.additional if r.rdtype == dns.rdatatype.RRSIG}
    inside = {r.name for r in addresses if r.name.is_subdomain(zone)}
    assert dns.name.from_text(f"ns-test.{ZONE}") in inside
    assert dns.name.from_text(OUT_OF_ZONE_NS["name"]) in {r.name for r in addresses}
    assert set(sigs) == inside  # glue of a name outside the zone is not ours to sign
    for rrset in addresses:
        if rrset.name in inside:
            dns.dnssec.validate(rrset, sigs[rrset.name], keys)


# The NSEC type itself: the bitmap of every proof says the name has one ----------------------


def nsec_types(rdata: dns.rdata.Rdata) -> set[dns.rdatatype.RdataType]:
    """The types in an NSEC's bitmap, read from its presentation form (next name, types)."""
    return {dns.rdatatype.from_text(t) for t in rdata.to_text().split()[1:]}


@pytest.mark.parametrize("do", [False, True], ids=["DO=0", "DO=1"])
def test_a_query_for_nsec_at_a_name_that_exists_gets_its_nsec(signed: Signed, do: bool) -> None:
    reply = query(signed.port, f"test.{ZONE}", "NSEC", do=do)

    assert reply.rcode() == dns.rcode.NOERROR, reply
    (nsec,) = [r for r in reply.answer if r.rdtype == dns.rdatatype.NSEC]
    assert nsec_types(nsec[0]) == {dns.rdatatype.A, dns.rdatatype.RRSIG, dns.rdatatype.NSEC}
    if do:
        validate_every_rrset(reply, signed.dnskeys)


def delv(signed: Signed, name: str, rdtype: str) -> str:
    assert DELV is not None
    ksk = next(k for k in signed.dnskeys if k.flags == 257)
    anchors = signed.workdir / "anchors.conf"
    key = base64.b64encode(ksk.key).decode()
    anchors.write_text(
        f'trust-anchors {{ "{ZONE}." static-key 257 3 {int(ksk.algorithm)} "{key}"; }};\n'
    )
    result = subprocess.run(
        [DELV, "@127.0.0.1", "-p", str(signed.port), "-a", str(anchors), f"+root={ZONE}",
         name, rdtype],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return result.stdout + result.stderr


@needs_delv
@pytest.mark.parametrize(
    ("name", "rdtype", "expected"),
    [
        (f"test.{ZONE}", "NSEC", "; fully validated"),
        (ZONE, "NSEC", "; fully validated"),
        (f"dangling.{ZONE}", "A", "NXDOMAIN"),
        (f"toent.{ZONE}", "A", "NXRRSET"),
        (f"chain.{ZONE}", "AAAA", "NXRRSET"),
        (f"alias.{ZONE}", "A", "; fully validated"),
    ],
)
def test_delv_validates_nsec_queries_and_cname_chains(
    signed: Signed, name: str, rdtype: str, expected: str
) -> None:
    out = delv(signed, name, rdtype)

    assert expected in out, out
    assert "fully validated" in out, out


@pytest.fixture(scope="module")
def unbound(signed: Signed) -> Iterator[int]:
    directory = signed.workdir / "unbound"
    directory.mkdir()
    port = free_port()
    config = write_config(
        directory,
        port,
        f"""
    module-config: "validator iterator"
    trust-anchor: "{ds_record(signed.nats_url)}"
    val-log-level: 2
    cache-max-ttl: 1
""",
        f"""
stub-zone:
    name: "{ZONE}."
    stub-addr: 127.0.0.1@{signed.port}
""",
    )
    process = start(config, port)
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)


@needs_unbound
@pytest.mark.parametrize(
    ("name", "rdtype", "rcode"),
    [
        (f"dangling.{ZONE}", "A", dns.rcode.NXDOMAIN),
        (f"toent.{ZONE}", "A", dns.rcode.NOERROR),
        (f"chain.{ZONE}", "AAAA", dns.rcode.NOERROR),
        (f"alias.{ZONE}", "A", dns.rcode.NOERROR),
        (f"test.{ZONE}", "NSEC", dns.rcode.NOERROR),
    ],
)
def test_unbound_with_the_ds_resolves_chains_and_nsec_as_secure(
    unbound: int, name: str, rdtype: str, rcode: dns.rcode.Rcode
) -> None:
    message = dns.message.make_query(name, rdtype, want_dnssec=True)
    message.flags |= dns.flags.RD | dns.flags.AD
    reply = dns.query.udp(message, "127.0.0.1", port=unbound, timeout=10)

    assert reply.rcode() == rcode, reply
    assert reply.flags & dns.flags.AD, reply


# Every reply to an EDNS query carries an OPT record (RFC 6891 6.1.1), errors included ---------


def raw_udp(port: int, data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(data, ("127.0.0.1", port))
        return sock.recv(65535)


def opt(do: bool = False) -> bytes:
    return b"\x00" + struct.pack("!HHBBHH", 41, 1232, 0, 0, 0x8000 if do else 0, 0)


QUESTION = dns.name.from_text(HELLO).to_wire() + struct.pack("!HH", 1, 1)
ZONE_SOA = dns.name.from_text(ZONE).to_wire() + struct.pack("!HH", 6, 1)
"""The zone section of an UPDATE (RFC 2136 2.3: the zone's name, type SOA)."""
ERROR_QUERIES = {
    "NOTIFY": (struct.pack("!6H", 7, 0x2000 | 0x0400, 1, 0, 0, 1) + QUESTION, dns.rcode.NOTIMP),
    "UPDATE": (struct.pack("!6H", 7, 0x2800, 1, 0, 0, 1) + ZONE_SOA, dns.rcode.NOTIMP),
    "QDCOUNT 0": (struct.pack("!6H", 7, 0, 0, 0, 0, 1), dns.rcode.FORMERR),
    "QDCOUNT 2": (struct.pack("!6H", 7, 0, 2, 0, 0, 1) + QUESTION * 2, dns.rcode.FORMERR),
    "compressed question": (
        struct.pack("!6H", 7, 0, 1, 0, 0, 1) + b"\xc0\x0c\x00\x01\x00\x01", dns.rcode.FORMERR,
    ),
}  # fmt: skip


@pytest.mark.parametrize("do", [False, True], ids=["DO=0", "DO=1"])
@pytest.mark.parametrize("case", list(ERROR_QUERIES))
def test_an_error_reply_to_an_edns_query_carries_our_opt(port: int, case: str, do: bool) -> None:
    packet, rcode = ERROR_QUERIES[case]

    reply = dns.message.from_wire(raw_udp(port, packet + opt(do)), ignore_trailing=True)

    assert reply.rcode() == rcode
    assert reply.edns == 0, f"{case}: no OPT in the {dns.rcode.to_text(rcode)} reply"
    assert reply.payload == 1232
    assert bool(reply.ednsflags & dns.flags.DO) == do


@pytest.mark.parametrize("case", list(ERROR_QUERIES))
def test_an_error_reply_to_a_query_without_edns_has_no_opt(port: int, case: str) -> None:
    packet, rcode = ERROR_QUERIES[case]
    packet = packet[:10] + b"\x00\x00" + packet[12:]  # ARCOUNT 0, no OPT appended

    reply = dns.message.from_wire(raw_udp(port, packet), ignore_trailing=True)

    assert reply.rcode() == rcode
    assert reply.edns == -1


@needs_dig
def test_dig_notify_with_edns_gets_notimp_without_the_retry_without_edns_warning(
    port: int,
) -> None:
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+time=2", "+tries=1", "+opcode=notify",
         ZONE, "SOA"],
        capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip

    assert "status: NOTIMP" in out, out
    assert "OPT PSEUDOSECTION" in out, out
    assert "retry with '+noedns'" not in out, out


# Probes that passed when first made, kept so that they keep passing -------------------------


@pytest.mark.parametrize(
    "option",
    [
        dns.edns.GenericOption(65001, b"ab"),
        dns.edns.GenericOption(10, b"clientck"),  # COOKIE, client part only
        dns.edns.GenericOption(10, b"clientck" + b"s" * 16),  # client and server parts
        dns.edns.GenericOption(12, bytes(40)),  # PADDING
        dns.edns.GenericOption(11, b""),  # TCP keepalive
        dns.edns.GenericOption(3, b""),  # NSID
    ],
    ids=["unknown", "cookie", "cookie+server", "padding", "keepalive", "nsid"],
)
def test_edns_options_we_do_not_implement_are_ignored(port: int, option: dns.edns.Option) -> None:
    message = dns.message.make_query(HELLO, "A", use_edns=0, options=[option])

    reply = dns.query.udp(message, "127.0.0.1", port=port, timeout=3)

    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer and reply.edns == 0
    assert not reply.options


@pytest.mark.parametrize(
    ("name", "rdclass"),
    [("version.bind", "CH"), ("hostname.bind", "CH"), ("id.server", "CH"), (HELLO, "ANY")],
)
def test_other_classes_are_refused_without_aa(port: int, name: str, rdclass: str) -> None:
    reply = dns.query.udp(
        dns.message.make_query(name, "TXT", rdclass=rdclass), "127.0.0.1", port=port, timeout=3
    )

    assert reply.rcode() == dns.rcode.REFUSED
    assert not reply.flags & dns.flags.AA


def test_a_buffer_under_512_counts_as_512_and_a_larger_answer_is_truncated_with_do_kept(
    port: int,
) -> None:
    message = dns.message.make_query(f"nothing.{ZONE}", "A", use_edns=0, payload=100,
                                     want_dnssec=True)  # fmt: skip

    reply = dns.query.udp(message, "127.0.0.1", port=port, timeout=3, ignore_trailing=False)
    whole = dns.query.tcp(message, "127.0.0.1", port=port, timeout=3)

    assert len(whole.to_wire()) > 512 and not whole.flags & dns.flags.TC
    assert whole.rcode() == dns.rcode.NXDOMAIN
    assert reply.flags & dns.flags.TC
    assert reply.edns == 0 and reply.ednsflags & dns.flags.DO
    small = dns.message.make_query(HELLO, "A", use_edns=0, payload=100, want_dnssec=True)
    fits = dns.query.udp(small, "127.0.0.1", port=port, timeout=3)
    assert 100 < len(fits.to_wire()) <= 512
    assert fits.answer and not fits.flags & dns.flags.TC
