"""Online DNSSEC signing, packet in and packet out through the engine, read back and checked
with dnspython's own validator (`dns.dnssec.validate`): every answer RRset signed for a DO
query, the apex key sets, minimally covering NSEC for NXDOMAIN and NODATA, signatures made
once per distinct RRset, and nothing added for a query without DO."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from services.dns.denial import SigningKey, nxdomain_proofs, predecessor, successor
from services.dns.server import DnsEngine
from services.dns.table import AnswerTable
from services.dns.wire import name_to_wire
from shared import dnssec
from shared.models import DnssecAlgorithm, ZoneDnssec, ZoneKeys
from tests.unit.test_dns_answers import HELLO, ZONE, service, zone_spec

SECRET = dnssec.load_secret(dnssec.new_secret())
ORIGIN = dns.name.from_text(ZONE)


def signed_engine(
    algorithm: DnssecAlgorithm = DnssecAlgorithm.ECDSAP256SHA256,
) -> tuple[DnsEngine, ZoneKeys]:
    table = AnswerTable()
    table.set_zone(zone_spec(dnssec=ZoneDnssec(enabled=True, algorithm=algorithm)))
    table.set_service(service())
    keys = dnssec.new_zone_keys(ZONE + ".", algorithm, SECRET, datetime.now(UTC))
    table.set_zone_keys(
        ZONE, [SigningKey(k, dnssec.private_key(k, SECRET)) for k in keys.keys], int(time.time())
    )
    return DnsEngine(table, "test-replica"), keys


def ask(engine: DnsEngine, name: str, rdtype: str, do: bool = True) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, want_dnssec=do)
    reply = engine.respond(query.to_wire(), "127.0.0.1", True)
    assert reply is not None
    return dns.message.from_wire(reply)


def dnskeys(keys: ZoneKeys) -> dict[dns.name.Name, dns.rrset.RRset]:
    rrset = dns.rrset.RRset(ORIGIN, dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    for key in keys.keys:
        rrset.add(dnssec.dnskey(key))
    return {ORIGIN: rrset}


def validate_section(
    section: list[dns.rrset.RRset], keys: ZoneKeys, now: float | None = None
) -> list[dns.rrset.RRset]:
    """Every RRset but the RRSIGs validated with its RRSIG; returns the data RRsets."""
    sigs = {(r.name, r.covers): r for r in section if r.rdtype == dns.rdatatype.RRSIG}
    data = [r for r in section if r.rdtype != dns.rdatatype.RRSIG]
    for rrset in data:
        dns.dnssec.validate(rrset, sigs[(rrset.name, rrset.rdtype)], dnskeys(keys), now=now)
    return data


@pytest.mark.parametrize("algorithm", list(DnssecAlgorithm))
def test_every_answer_of_the_rotation_is_signed_and_validates(algorithm: DnssecAlgorithm) -> None:
    engine, keys = signed_engine(algorithm)
    seen: Counter[frozenset[str]] = Counter()
    for _ in range(12):
        reply = ask(engine, HELLO, "A")
        assert reply.rcode() == dns.rcode.NOERROR
        (answer,) = validate_section(reply.answer, keys)
        seen[frozenset(r.address for r in answer)] += 1
    assert sum(seen.values()) == 12 and len(seen) > 1
    assert all(r.algorithm == dnssec.DNSSEC_ALGORITHM_NUMBERS[algorithm]  # type: ignore[attr-defined]
               for r in reply.answer if r.rdtype == dns.rdatatype.RRSIG for r in r)  # fmt: skip


def test_the_rotation_stays_exact_when_signed() -> None:
    plain_engine, _ = signed_engine()
    signed, _ = signed_engine()
    plain = [
        tuple(r.address for r in ask(plain_engine, HELLO, "A", do=False).answer[0])
        for _ in range(24)
    ]
    with_do = [tuple(r.address for r in ask(signed, HELLO, "A").answer[0]) for _ in range(24)]
    assert plain == with_do


def test_each_distinct_answer_is_signed_once() -> None:
    engine, _ = signed_engine()
    signed = engine.table.signed[name_to_wire(ZONE)]
    for _ in range(30):
        ask(engine, HELLO, "A")
    made = [key for key in signed.signatures if key[0] == name_to_wire(HELLO)]
    # 6:4:2 with two answers: the distinct member sets of the cycle, each signed once.
    rotation = engine.table.gslb[name_to_wire(HELLO)].a
    assert rotation is not None
    assert len(made) == len({frozenset(c) for c in rotation.cycle.chosen})
    assert engine.table.signatures_made[name_to_wire(ZONE)] == len(made)


def test_static_records_soa_ns_and_cname_are_signed() -> None:
    engine, keys = signed_engine()
    for name, rdtype in (
        (f"test.{ZONE}", "A"), (ZONE, "SOA"), (ZONE, "NS"), (f"info.{ZONE}", "TXT"),
        (f"alias.{ZONE}", "A"), (f"www.{ZONE}", "A"),
    ):  # fmt: skip
        reply = ask(engine, name, rdtype)
        assert reply.rcode() == dns.rcode.NOERROR, (name, rdtype)
        assert validate_section(reply.answer, keys), (name, rdtype)


def test_apex_key_sets() -> None:
    engine, keys = signed_engine()
    reply = ask(engine, ZONE, "DNSKEY")
    (keyset,) = validate_section(reply.answer, keys)
    assert {r.flags for r in keyset} == {256, 257}
    (cds,) = validate_section(ask(engine, ZONE, "CDS").answer, keys)
    expected = dns.dnssec.make_ds(ORIGIN, next(r for r in keyset if r.flags == 257), "SHA256")
    assert [r.digest for r in cds] == [expected.digest]
    (cdnskey,) = validate_section(ask(engine, ZONE, "CDNSKEY").answer, keys)
    assert [r.flags for r in cdnskey] == [257]
    (plain,) = ask(engine, ZONE, "DNSKEY", do=False).answer
    assert plain.rdtype == dns.rdatatype.DNSKEY and len(plain) == 2


def covers(owner: dns.name.Name, next_name: dns.name.Name, name: dns.name.Name) -> bool:
    return owner < name < next_name


def test_nxdomain_is_proven_by_two_minimal_nsec() -> None:
    engine, keys = signed_engine()
    qname = dns.name.from_text(f"nope.{ZONE}")
    reply = ask(engine, qname.to_text(), "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    data = validate_section(reply.authority, keys)
    nsecs = [r for r in data if r.rdtype == dns.rdatatype.NSEC]
    assert len(nsecs) == 2
    wildcard = dns.name.from_text(f"*.{ZONE}")
    assert any(covers(n.name, n[0].next, qname) for n in nsecs)
    assert any(covers(n.name, n[0].next, wildcard) for n in nsecs)
    existing = [dns.name.from_text(n) for n in (HELLO, f"test.{ZONE}", f"mail.{ZONE}", ZONE)]
    for nsec in nsecs:
        assert not any(covers(nsec.name, nsec[0].next, e) or nsec.name == e for e in existing)


def test_nodata_has_the_nsec_of_the_name_without_the_type() -> None:
    engine, keys = signed_engine()
    reply = ask(engine, HELLO, "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    data = validate_section(reply.authority, keys)
    (nsec,) = [r for r in data if r.rdtype == dns.rdatatype.NSEC]
    assert nsec.name == dns.name.from_text(HELLO)
    types = {t for window, bits in nsec[0].windows for t in _types(window, bits)}
    assert dns.rdatatype.A in types and dns.rdatatype.AAAA not in types


def _types(window: int, bits: bytes) -> list[int]:
    return [
        window * 256 + i * 8 + j
        for i, byte in enumerate(bits)
        for j in range(8)
        if byte & 0x80 >> j
    ]


def test_without_do_nothing_is_added() -> None:
    engine, _ = signed_engine()
    for name, rdtype in ((HELLO, "A"), (f"nope.{ZONE}", "A"), (HELLO, "AAAA")):
        reply = ask(engine, name, rdtype, do=False)
        sections = reply.answer + reply.authority
        assert not any(r.rdtype in (dns.rdatatype.RRSIG, dns.rdatatype.NSEC) for r in sections)


def test_an_unsigned_zone_ignores_do() -> None:
    table = AnswerTable()
    table.set_zone(zone_spec())
    table.set_service(service())
    reply = ask(DnsEngine(table, "r"), HELLO, "A")
    assert not any(r.rdtype == dns.rdatatype.RRSIG for r in reply.answer)


def test_refresh_resigns_when_due() -> None:
    engine, keys = signed_engine()
    table = engine.table
    first = ask(engine, f"test.{ZONE}", "A")
    signed_at = table.signed[name_to_wire(ZONE)].signed_at
    assert table.refresh_signatures(signed_at + 10) == []
    due = signed_at + table.dnssec_window.resign_seconds
    assert table.refresh_signatures(due) == [ZONE]
    second = ask(engine, f"test.{ZONE}", "A")
    old = next(r for r in first.answer if r.rdtype == dns.rdatatype.RRSIG)[0]
    new = next(r for r in second.answer if r.rdtype == dns.rdatatype.RRSIG)[0]
    assert new.expiration - old.expiration == due - signed_at
    validate_section(second.answer, keys, now=due)


def test_predecessor_and_successor_bracket_only_the_name() -> None:
    for text in ("nope", "a", "zz9", "x[", "ab\\000", "-"):
        key = name_to_wire_escaped(f"{text}.{ZONE}")
        name = dns.name.from_wire(key, 0)[0]
        before, after = predecessor(key), successor(key)
        assert before is not None and after is not None
        assert dns.name.from_wire(before, 0)[0] < name < dns.name.from_wire(after, 0)[0]
    assert len(nxdomain_proofs(name_to_wire(f"*.{ZONE}"))) == 1


def name_to_wire_escaped(text: str) -> bytes:
    wire = dns.name.from_text(text).canonicalize().to_wire()
    assert wire is not None
    return wire


def test_new_keys_take_over_at_once() -> None:
    engine, _ = signed_engine()
    ask(engine, f"test.{ZONE}", "A")
    newer = dnssec.new_zone_keys(ZONE + ".", DnssecAlgorithm.ED25519, SECRET, datetime.now(UTC))
    signing = [SigningKey(k, dnssec.private_key(k, SECRET)) for k in newer.keys]
    signed_at = engine.table.signed[name_to_wire(ZONE)].signed_at
    engine.table.set_zone_keys(ZONE, signing, signed_at)  # the same second: no stale reuse
    reply = ask(engine, f"test.{ZONE}", "A")
    validate_section(reply.answer, newer)


def test_a_zone_whose_signing_is_turned_off_answers_unsigned() -> None:
    engine, _ = signed_engine()
    engine.table.set_zone(zone_spec(dnssec=ZoneDnssec(enabled=False)))
    reply = ask(engine, f"test.{ZONE}", "A")
    assert [r.rdtype for r in reply.answer] == [dns.rdatatype.A]
    assert not ask(engine, ZONE, "DNSKEY").answer


def test_keys_without_an_active_zsk_are_refused_and_the_old_ones_stay() -> None:
    engine, keys = signed_engine()
    ksk_only = [k for k in keys.keys if k.role.value == "ksk"]
    with pytest.raises(ValueError, match="active KSK and an active ZSK"):
        engine.table.set_zone_keys(
            ZONE, [SigningKey(k, dnssec.private_key(k, SECRET)) for k in ksk_only], 0
        )
    validate_section(ask(engine, f"test.{ZONE}", "A").answer, keys)


def test_a_query_for_rrsig_gets_the_signatures_of_the_name() -> None:
    engine, _ = signed_engine()
    reply = ask(engine, f"test.{ZONE}", "RRSIG")
    assert [(r.rdtype, r[0].type_covered) for r in reply.answer] == [
        (dns.rdatatype.RRSIG, dns.rdatatype.A)
    ]
    apex = ask(engine, ZONE, "RRSIG")
    covered = {rdata.type_covered for rrset in apex.answer for rdata in rrset}
    assert covered >= {dns.rdatatype.SOA, dns.rdatatype.NS, dns.rdatatype.DNSKEY}
    hello = ask(engine, HELLO, "RRSIG", do=False)
    assert {rdata.type_covered for rrset in hello.answer for rdata in rrset} == {dns.rdatatype.A}


def test_a_cname_to_a_name_without_the_type_proves_it() -> None:
    engine, keys = signed_engine()
    reply = ask(engine, f"www.{ZONE}", "AAAA")  # www -> hello, which has only A
    assert reply.rcode() == dns.rcode.NOERROR
    (cname,) = validate_section(reply.answer, keys)
    assert cname.rdtype == dns.rdatatype.CNAME
    data = validate_section(reply.authority, keys)
    (nsec,) = [r for r in data if r.rdtype == dns.rdatatype.NSEC]
    assert nsec.name == dns.name.from_text(HELLO)
    assert any(r.rdtype == dns.rdatatype.SOA for r in data)
