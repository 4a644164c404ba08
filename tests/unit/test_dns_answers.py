"""What the DNS answers, packet in and packet out through the engine (response cache
included), read back with dnspython: zones, negative answers, EDNS, truncation, static records,
serials, and changes taking effect on the next query."""

from __future__ import annotations

from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from services.dns.server import DnsEngine
from services.dns.table import AnswerTable
from shared.models import (
    GslbService,
    Member,
    NameServer,
    PriorityGroup,
    SoaSpec,
    StaticRecord,
    UnhandledPolicy,
    ZoneSpec,
)

ZONE = "avi.iberia.local"
HELLO = f"hello.{ZONE}"
SEED = (("127.10.25.46", "s1az1", 6), ("127.10.26.40", "s1az2", 4), ("127.10.23.40", "s2", 2))
BIG_TXT = " ".join(f'"{"x" * 200}"' for _ in range(7))
"""About 1400 bytes of TXT: over 1232, under 4096."""


def zone_spec(name: str = ZONE, **overrides: Any) -> ZoneSpec:
    fields: dict[str, Any] = {
        "name": name,
        "soa": SoaSpec(mname="g-dns.iberia.local.", rname="johernandez.iberia.local."),
        "nameservers": [NameServer(name=f"g-dns.{name}.", glue=["127.0.0.1", "::1"])],
        "records": [
            StaticRecord(name="test", type="A", value="10.10.24.200"),
            StaticRecord(name="v6", type="AAAA", value="2001:db8::200"),
            StaticRecord(name="www", type="CNAME", value="hello"),
            StaticRecord(name="alias", type="CNAME", value="test"),
            StaticRecord(name="info", type="TXT", value='"kgslb zone" v=1'),
            StaticRecord(name="_http._tcp", type="SRV", value="0 5 80 test"),
            StaticRecord(name="@", type="MX", value="10 mail"),
            StaticRecord(name="mail", type="A", value="10.10.24.25"),
            StaticRecord(name="a.b.deep", type="A", value="10.10.24.7"),
            StaticRecord(name="big", type="TXT", value=BIG_TXT),
            StaticRecord(name="sub", type="NS", value="ns1.sub"),
            StaticRecord(name="ns1.sub", type="A", value="10.10.24.53"),
        ],
        "default_ttl_seconds": 30,
    }
    fields.update(overrides)
    return ZoneSpec(**fields)


def service(
    fqdn: str = HELLO,
    members: tuple[tuple[str, str, int], ...] = SEED,
    ttl: int = 30,
    **overrides: Any,
) -> GslbService:
    group = PriorityGroup(
        priority=10, members=[Member(ip=ip, cluster=c, weight=w) for ip, c, w in members]
    )
    return GslbService(fqdn=fqdn, ttl_seconds=ttl, groups=[group], **overrides)


def seeded_engine(*services: GslbService, zone: ZoneSpec | None = None, **kwargs: Any) -> DnsEngine:
    table = AnswerTable(udp_payload_limit=kwargs.pop("udp_payload_limit", 1232))
    table.set_zone(zone or zone_spec())
    for one in services or (service(),):
        table.set_service(one)
    return DnsEngine(table, "test-replica", **kwargs)


def ask_raw(
    engine: DnsEngine,
    name: str,
    rdtype: str = "A",
    udp: bool = True,
    client: str = "192.0.2.10",
    **kwargs: Any,
) -> bytes | None:
    query = dns.message.make_query(name, rdtype, **kwargs)
    return engine.respond(query.to_wire(), client, udp)


def ask(engine: DnsEngine, name: str, rdtype: str = "A", **kwargs: Any) -> dns.message.Message:
    reply = ask_raw(engine, name, rdtype, **kwargs)
    assert reply is not None, f"no reply to {name} {rdtype}"
    return dns.message.from_wire(reply)


def addresses(reply: dns.message.Message) -> list[str]:
    return [rr.address for rrset in reply.answer for rr in rrset if hasattr(rr, "address")]


# Zones and authority ---------------------------------------------------------------------------


def test_answers_inside_the_zone_are_authoritative() -> None:
    reply = ask(seeded_engine(), "test.avi.iberia.local")

    assert reply.flags & dns.flags.AA
    assert addresses(reply) == ["10.10.24.200"]


def test_a_name_outside_every_zone_is_refused_without_aa_ra_or_answer() -> None:
    reply = ask(seeded_engine(), "www.example.com")

    assert reply.rcode() == dns.rcode.REFUSED
    assert not reply.flags & (dns.flags.AA | dns.flags.RA)
    assert reply.answer == [] and reply.authority == []


def test_recursion_is_never_available_even_when_desired() -> None:
    reply = ask(seeded_engine(), HELLO)

    assert reply.flags & dns.flags.RD
    assert not reply.flags & dns.flags.RA


def test_an_unknown_name_in_the_zone_is_nxdomain_with_the_soa() -> None:
    reply = ask(seeded_engine(), "nope.avi.iberia.local")

    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.flags & dns.flags.AA
    assert reply.answer == []
    assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]
    assert reply.authority[0].name.to_text() == "avi.iberia.local."


def test_the_negative_ttl_is_the_lower_of_soa_ttl_and_minimum() -> None:
    zone = zone_spec(soa=SoaSpec(mname="ns.", rname="h.", minimum_seconds=5))

    reply = ask(seeded_engine(zone=zone), "nope.avi.iberia.local")

    assert reply.authority[0].ttl == 5


def test_aaaa_for_a_v4_only_gslb_name_is_nodata_with_the_soa() -> None:
    reply = ask(seeded_engine(), HELLO, "AAAA")

    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    assert reply.authority[0].rdtype == dns.rdatatype.SOA


def test_a_missing_type_on_a_static_name_is_nodata() -> None:
    reply = ask(seeded_engine(), "test.avi.iberia.local", "TXT")

    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == [] and reply.authority[0].rdtype == dns.rdatatype.SOA


def test_an_empty_non_terminal_is_nodata_not_nxdomain() -> None:
    reply = ask(seeded_engine(), "b.deep.avi.iberia.local")

    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []


def test_the_most_specific_zone_answers() -> None:
    engine = seeded_engine()
    engine.table.set_zone(zone_spec("inner.avi.iberia.local", records=[]))

    reply = ask(engine, "inner.avi.iberia.local", "SOA")

    assert reply.answer[0].name.to_text() == "inner.avi.iberia.local."


# Unhandled queries: respond or drop ------------------------------------------------------------


def drop_zone() -> ZoneSpec:
    return zone_spec(unhandled=UnhandledPolicy.DROP)


def test_drop_mode_stays_silent_for_an_unknown_name() -> None:
    assert ask_raw(seeded_engine(zone=drop_zone()), "nope.avi.iberia.local") is None


def test_drop_mode_stays_silent_for_aaaa_of_a_v4_only_name() -> None:
    assert ask_raw(seeded_engine(zone=drop_zone()), HELLO, "AAAA") is None


def test_drop_mode_still_answers_what_exists() -> None:
    assert addresses(ask(seeded_engine(zone=drop_zone()), HELLO)) == ["127.10.25.46"]


def test_drop_mode_still_refuses_names_outside_the_zone() -> None:
    reply = ask(seeded_engine(zone=drop_zone()), "example.com")

    assert reply.rcode() == dns.rcode.REFUSED


# Header and question ---------------------------------------------------------------------------


def test_id_is_copied() -> None:
    query = dns.message.make_query(HELLO, "A")
    query.id = 20425

    reply = seeded_engine().respond(query.to_wire(), "192.0.2.1", True)

    assert reply is not None and dns.message.from_wire(reply).id == 20425


@pytest.mark.parametrize("desired", [True, False])
def test_rd_is_copied(desired: bool) -> None:
    query = dns.message.make_query(HELLO, "A")
    if not desired:
        query.flags &= ~dns.flags.RD

    reply = seeded_engine().respond(query.to_wire(), "192.0.2.1", True)

    assert reply is not None
    assert bool(dns.message.from_wire(reply).flags & dns.flags.RD) is desired


def test_the_question_case_is_echoed_even_from_the_cache() -> None:
    engine = seeded_engine()
    ask(engine, "hello.avi.iberia.local")

    reply = ask(engine, "HeLLo.AVI.iberia.local")

    assert reply.question[0].name.to_text() == "HeLLo.AVI.iberia.local."
    assert reply.answer[0].name.to_text() == "HeLLo.AVI.iberia.local."


def test_a_malformed_packet_is_formerr_with_its_id() -> None:
    engine = seeded_engine()
    query = dns.message.make_query(HELLO, "A")
    query.id = 77
    data = query.to_wire()

    reply = engine.respond(data[:-3], "192.0.2.1", True)

    assert reply is not None
    parsed = dns.message.from_wire(reply, question_only=True)
    assert (parsed.id, parsed.rcode()) == (77, dns.rcode.FORMERR)
    assert engine.malformed == 1


def test_a_query_with_two_questions_is_formerr() -> None:
    data = bytearray(dns.message.make_query(HELLO, "A").to_wire())
    question = bytes(data[12:])
    data[5] = 2

    reply = seeded_engine().respond(bytes(data) + question, "192.0.2.1", True)

    assert reply is not None
    assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR


def test_a_query_of_class_chaos_is_refused() -> None:
    query = dns.message.make_query("version.bind", "TXT", rdclass=dns.rdataclass.CH)

    reply = seeded_engine().respond(query.to_wire(), "192.0.2.1", True)

    assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.REFUSED


# EDNS(0) and sizes -----------------------------------------------------------------------------


def test_an_edns_query_gets_an_opt_record_advertising_1232() -> None:
    reply = ask(seeded_engine(), HELLO, use_edns=0, payload=4096)

    assert reply.edns == 0
    assert reply.payload == 1232


def test_a_query_without_edns_gets_no_opt_record() -> None:
    assert ask(seeded_engine(), HELLO).edns == -1


def test_edns_version_1_is_badvers_with_an_opt_record() -> None:
    reply = ask(seeded_engine(), HELLO, use_edns=1)

    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0
    assert reply.answer == []


REPLY_PATHS = [
    (HELLO, "A"),
    ("test.avi.iberia.local", "A"),
    ("www.avi.iberia.local", "A"),
    ("nope.avi.iberia.local", "A"),
    (HELLO, "AAAA"),
    ("host.sub.avi.iberia.local", "A"),
    ("www.example.com", "A"),
    ("big.avi.iberia.local", "TXT"),
]
REPLY_PATH_IDS = [
    "GSLB answer", "static answer", "CNAME", "NXDOMAIN", "NODATA", "referral", "REFUSED",
    "truncated",
]  # fmt: skip


@pytest.mark.parametrize("dnssec_ok", [True, False], ids=["DO=1", "DO=0"])
@pytest.mark.parametrize(("name", "rdtype"), REPLY_PATHS, ids=REPLY_PATH_IDS)
def test_the_do_bit_of_the_query_is_copied_into_the_reply(
    name: str, rdtype: str, dnssec_ok: bool
) -> None:
    reply = ask(seeded_engine(), name, rdtype, use_edns=0, want_dnssec=dnssec_ok)

    assert reply.edns == 0
    assert bool(reply.ednsflags & dns.flags.DO) == dnssec_ok


@pytest.mark.parametrize("dnssec_ok", [True, False], ids=["DO=1", "DO=0"])
def test_badvers_copies_the_do_bit_too(dnssec_ok: bool) -> None:
    reply = ask(seeded_engine(), HELLO, use_edns=1, want_dnssec=dnssec_ok)

    assert reply.rcode() == dns.rcode.BADVERS
    assert bool(reply.ednsflags & dns.flags.DO) == dnssec_ok


def test_the_response_cache_keeps_queries_with_and_without_do_apart() -> None:
    engine = seeded_engine()
    names = (HELLO, "test.avi.iberia.local", "nope.avi.iberia.local")

    for name in names:
        for dnssec_ok in (True, False, True, False):
            reply = ask(engine, name, use_edns=0, want_dnssec=dnssec_ok)
            assert bool(reply.ednsflags & dns.flags.DO) == dnssec_ok, (name, dnssec_ok)

    assert len(engine.cache) == 2 * len(names)


def test_a_response_larger_than_512_is_truncated_for_a_client_without_edns() -> None:
    reply = ask(seeded_engine(), "big.avi.iberia.local", "TXT")

    assert reply.flags & dns.flags.TC
    assert reply.answer == []


def test_a_response_larger_than_our_limit_is_truncated_whatever_the_client_offers() -> None:
    reply = ask(seeded_engine(), "big.avi.iberia.local", "TXT", use_edns=0, payload=4096)

    assert reply.flags & dns.flags.TC
    assert reply.edns == 0


def test_a_raised_limit_lets_a_large_response_through_to_a_client_that_offers_it() -> None:
    engine = seeded_engine(udp_payload_limit=4096)

    reply = ask(engine, "big.avi.iberia.local", "TXT", use_edns=0, payload=4096)

    assert not reply.flags & dns.flags.TC
    assert len(reply.answer[0][0].strings) == 7


def test_the_client_size_is_honoured_below_our_limit() -> None:
    engine = seeded_engine(udp_payload_limit=4096)

    reply = ask(engine, "big.avi.iberia.local", "TXT", use_edns=0, payload=1232)

    assert reply.flags & dns.flags.TC


def test_over_tcp_the_large_response_is_whole() -> None:
    reply = ask(seeded_engine(), "big.avi.iberia.local", "TXT", udp=False)

    assert not reply.flags & dns.flags.TC
    assert len(reply.answer[0][0].strings) == 7


def test_glue_is_left_out_before_the_answer_is_truncated() -> None:
    servers = [NameServer(name=f"ns{i}.avi.iberia.local.", glue=["127.0.0.1"]) for i in range(12)]
    engine = seeded_engine(zone=zone_spec(nameservers=servers))

    reply = ask(engine, ZONE, "NS")

    assert not reply.flags & dns.flags.TC
    assert len(reply.answer[0]) == 12
    assert reply.additional == []


# Special types ---------------------------------------------------------------------------------


def test_any_gets_a_single_rrset() -> None:
    reply = ask(seeded_engine(), HELLO, "ANY")

    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.A]
    assert len(reply.answer[0]) == 1


def test_any_on_the_apex_gets_one_rrset_not_the_whole_zone() -> None:
    reply = ask(seeded_engine(), ZONE, "ANY")

    assert len(reply.answer) == 1


@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR"])
def test_zone_transfers_are_refused(rdtype: str) -> None:
    reply = ask(seeded_engine(), ZONE, rdtype, udp=False)

    assert reply.rcode() == dns.rcode.REFUSED
    assert reply.answer == []


# Static records --------------------------------------------------------------------------------


def test_static_aaaa() -> None:
    assert addresses(ask(seeded_engine(), "v6.avi.iberia.local", "AAAA")) == ["2001:db8::200"]


def test_static_txt_keeps_its_strings() -> None:
    reply = ask(seeded_engine(), "info.avi.iberia.local", "TXT")

    assert reply.answer[0][0].strings == (b"kgslb zone", b"v=1")


def test_static_srv() -> None:
    record = ask(seeded_engine(), "_http._tcp.avi.iberia.local", "SRV").answer[0][0]

    assert (record.priority, record.weight, record.port) == (0, 5, 80)
    assert record.target.to_text() == "test.avi.iberia.local."


def test_static_mx() -> None:
    record = ask(seeded_engine(), ZONE, "MX").answer[0][0]

    assert (record.preference, record.exchange.to_text()) == (10, "mail.avi.iberia.local.")


def test_cname_to_a_static_name_is_followed_inside_the_zone() -> None:
    reply = ask(seeded_engine(), "alias.avi.iberia.local")

    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert addresses(reply) == ["10.10.24.200"]


def test_cname_to_a_gslb_name_answers_a_member() -> None:
    reply = ask(seeded_engine(), "www.avi.iberia.local")

    assert reply.answer[0].rdtype == dns.rdatatype.CNAME
    assert addresses(reply)[0] in {ip for ip, _, _ in SEED}


def test_cname_query_gets_the_cname_only() -> None:
    reply = ask(seeded_engine(), "alias.avi.iberia.local", "CNAME")

    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME]


def test_ns_at_the_apex_comes_with_glue() -> None:
    reply = ask(seeded_engine(), ZONE, "NS", use_edns=0)

    assert reply.answer[0][0].target.to_text() == "g-dns.avi.iberia.local."
    glue = {rr.address for rrset in reply.additional for rr in rrset}
    assert glue == {"127.0.0.1", "::1"}


def test_a_name_below_a_delegation_gets_a_referral_with_glue() -> None:
    reply = ask(seeded_engine(), "host.sub.avi.iberia.local")

    assert reply.rcode() == dns.rcode.NOERROR
    assert not reply.flags & dns.flags.AA
    assert reply.answer == []
    assert reply.authority[0].rdtype == dns.rdatatype.NS
    assert reply.authority[0].name.to_text() == "sub.avi.iberia.local."
    assert [rr.address for rr in reply.additional[0]] == ["10.10.24.53"]


def test_soa_query_at_the_apex_answers_the_soa() -> None:
    reply = ask(seeded_engine(), ZONE, "SOA")

    assert reply.answer[0][0].mname.to_text() == "g-dns.iberia.local."


def test_a_bad_static_record_is_rejected_naming_the_zone_and_record() -> None:
    bad = zone_spec(records=[StaticRecord(name="x", type="A", value="not-an-ip")])

    with pytest.raises(ValueError, match=r"avi\.iberia\.local: records\[0\] x A 'not-an-ip'"):
        AnswerTable().set_zone(bad)


# SOA serial ------------------------------------------------------------------------------------


def soa_serial(engine: DnsEngine) -> int:
    return int(ask(engine, ZONE, "SOA").answer[0][0].serial)


def test_serial_increases_when_the_zone_changes() -> None:
    engine = seeded_engine()
    before = soa_serial(engine)

    engine.table.set_zone(zone_spec(default_ttl_seconds=60), revision=5)

    assert soa_serial(engine) > before


def test_serial_increases_when_a_service_in_the_zone_changes() -> None:
    engine = seeded_engine()
    engine.table.set_service(service(), revision=3)
    before = soa_serial(engine)

    engine.table.set_service(service(ttl=2), revision=4)

    assert soa_serial(engine) > before


def test_serial_increases_when_a_service_is_deleted() -> None:
    engine = seeded_engine()
    engine.table.set_service(service(), revision=3)
    before = soa_serial(engine)

    engine.table.remove_service(HELLO, revision=9)

    assert soa_serial(engine) > before


def test_serial_does_not_move_for_a_service_of_another_zone() -> None:
    engine = seeded_engine()
    before = soa_serial(engine)

    engine.table.set_service(service("app.other.example"), revision=50)

    assert soa_serial(engine) == before


def test_replicas_that_saw_the_same_updates_in_another_order_agree_on_the_serial() -> None:
    first, second = AnswerTable(), AnswerTable()
    first.set_zone(zone_spec(), revision=2)
    first.set_service(service(), revision=7)
    second.set_service(service(), revision=7)
    second.set_zone(zone_spec(), revision=2)

    assert first.serial(ZONE) == second.serial(ZONE) == 1 + 2 + 7


def test_after_the_buckets_were_lost_the_serial_goes_on_from_its_floor() -> None:
    table = AnswerTable()
    table.set_zone(zone_spec(), revision=40)
    table.set_service(service(), revision=90)
    before = table.serial(ZONE)

    # The buckets were created anew: revisions count from 1 again.
    table.forget_revisions()
    table.set_zone(zone_spec(), revision=1)
    after_zone = table.serial(ZONE)
    table.set_service(service(ttl=2), revision=2)
    after_service = table.serial(ZONE)

    assert before < after_zone < after_service
    # Once the new revisions pass the floor, the serial is the derived one again.
    table.set_service(service(ttl=3), revision=500)
    assert table.serial(ZONE) == 1 + 1 + 500


CREATED = 1_790_000_000
"""A bucket creation time (Sept. 2026), seconds since the Unix epoch."""
HOUR = 3600


def rfc1982_greater(a: int, b: int) -> bool:
    return 0 < (a - b) % 2**32 < 2**31


def replica(created: int, zone_revision: int, service_revision: int) -> AnswerTable:
    """A DNS that followed buckets created at `created` up to these revisions."""
    table = AnswerTable()
    table.set_store_epoch("kgslb_zones", created)
    table.set_zone(zone_spec(), revision=zone_revision)
    table.set_store_epoch("kgslb_services", created)
    table.set_service(service(), revision=service_revision)
    return table


def test_a_replica_started_after_a_lost_store_answers_a_higher_serial_than_before() -> None:
    # An hour of 3,600 changes (one a second), then the store is lost: the buckets are made
    # again and count from 1; a DNS that never saw the old ones follows the new ones.
    before = replica(CREATED, zone_revision=600, service_revision=3000).serial(ZONE)

    after = replica(CREATED + HOUR, zone_revision=1, service_revision=2).serial(ZONE)

    assert rfc1982_greater(after, before), (before, after)


def test_serials_of_replicas_agree_whatever_order_buckets_and_values_arrive_in() -> None:
    first = replica(CREATED, zone_revision=2, service_revision=7)
    second = AnswerTable()
    second.set_store_epoch("kgslb_services", CREATED)
    second.set_service(service(), revision=7)
    second.set_zone(zone_spec(), revision=2)
    second.set_store_epoch("kgslb_zones", CREATED)

    assert first.serial(ZONE) == second.serial(ZONE)


def test_a_bucket_opened_again_at_the_same_creation_time_does_not_move_the_serial() -> None:
    table = replica(CREATED, zone_revision=2, service_revision=7)
    before = table.serial(ZONE)

    table.set_store_epoch("kgslb_zones", CREATED)  # a reconnect: the same bucket
    table.set_store_epoch("kgslb_services", CREATED)

    assert table.serial(ZONE) == before


def test_a_running_replica_moves_its_serial_on_when_the_buckets_are_made_again() -> None:
    table = replica(CREATED, zone_revision=40, service_revision=90)
    before = table.serial(ZONE)

    table.forget_revisions()
    table.set_store_epoch("kgslb_zones", CREATED + 60)
    table.set_store_epoch("kgslb_services", CREATED + 60)

    assert rfc1982_greater(table.serial(ZONE), before)


def test_the_first_serial_with_store_epochs_is_ahead_of_one_without() -> None:
    """Upgrading to serials with store epochs moves them forward once, never back."""
    without = AnswerTable()
    without.set_zone(zone_spec(), revision=40)
    without.set_service(service(), revision=90)

    with_epochs = replica(CREATED, zone_revision=40, service_revision=90)

    assert rfc1982_greater(with_epochs.serial(ZONE), without.serial(ZONE))


# Changes take effect on the next query ---------------------------------------------------------


def test_a_ttl_change_takes_effect_on_the_next_query() -> None:
    engine = seeded_engine()
    assert ask(engine, HELLO).answer[0].ttl == 30

    engine.table.set_service(service(ttl=2))

    assert ask(engine, HELLO).answer[0].ttl == 2


def test_a_weight_change_takes_effect_on_the_next_cycle() -> None:
    engine = seeded_engine()
    [ask(engine, HELLO) for _ in range(5)]

    engine.table.set_service(
        service(members=(("127.10.25.46", "s1az1", 1), ("127.10.23.40", "s2", 3)))
    )

    shares = [addresses(ask(engine, HELLO))[0] for _ in range(4)]
    assert sorted(shares) == ["127.10.23.40"] * 3 + ["127.10.25.46"]


def test_a_removed_service_is_nxdomain_on_the_next_query() -> None:
    engine = seeded_engine()
    ask(engine, HELLO)

    engine.table.remove_service(HELLO)

    assert ask(engine, HELLO).rcode() == dns.rcode.NXDOMAIN


def test_a_cached_response_is_byte_identical_to_a_fresh_one_but_for_the_id() -> None:
    cached = seeded_engine()
    first = ask_raw(cached, "info.avi.iberia.local", "TXT", use_edns=0)
    again = ask_raw(cached, "info.avi.iberia.local", "TXT", use_edns=0)
    fresh = ask_raw(seeded_engine(), "info.avi.iberia.local", "TXT", use_edns=0)

    assert first is not None and again is not None and fresh is not None
    assert len(cached.cache) == 1
    assert again[2:] == first[2:] == fresh[2:]


def test_the_engine_counts_queries_by_rcode_type_and_zone_including_cache_hits() -> None:
    engine = seeded_engine()
    for _ in range(3):
        ask(engine, HELLO)
    ask(engine, "nope.avi.iberia.local")

    counts = engine.query_counts()

    assert counts[("NOERROR", "A", ZONE)] == 3
    assert counts[("NXDOMAIN", "A", ZONE)] == 1


def test_a_name_server_inside_the_zone_answers_its_glue_address() -> None:
    # One NS name per site, inside the zone (k8gb style): a resolver checks their addresses.
    servers = [
        NameServer(name="ns-s1az1.avi.iberia.local.", glue=["127.0.0.1"]),
        NameServer(name="ns-s2.avi.iberia.local.", glue=["127.0.0.3", "::3"]),
        NameServer(name="g-dns.iberia.local.", glue=["127.0.0.9"]),
    ]
    engine = seeded_engine(zone=zone_spec(nameservers=servers))

    reply = ask(engine, "ns-s2.avi.iberia.local")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert addresses(reply) == ["127.0.0.3"]
    assert addresses(ask(engine, "ns-s2.avi.iberia.local", "AAAA")) == ["::3"]
    # The glue still comes with the NS set, once per address.
    glue = sorted(rr.address for rrset in ask(engine, ZONE, "NS").additional for rr in rrset)
    assert glue == ["127.0.0.1", "127.0.0.3", "127.0.0.9", "::3"]
    # A name server outside the zone is not ours to answer.
    assert ask(engine, "g-dns.iberia.local").rcode() == dns.rcode.REFUSED
