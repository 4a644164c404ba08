"""GSLB selection as answered on the wire: priority groups and health, weighted round robin
with exact ratios, consistent hashing on the client or its ECS subnet, `answers: N`, and the
down responses."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable

import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from services.dns.server import DnsEngine
from shared.models import (
    Algorithm,
    DownResponse,
    DownResponseType,
    GslbService,
    HealthState,
    Member,
    PriorityGroup,
    TopologyEntry,
    UnhandledPolicy,
)
from shared.subjects import member_key
from tests.unit.test_dns_answers import (
    HELLO,
    SEED,
    addresses,
    ask,
    ask_raw,
    seeded_engine,
    service,
    zone_spec,
)

PRIMARY = (("127.10.25.46", "s1az1", 1), ("127.10.26.40", "s1az2", 1))
BACKUP = (("127.10.23.40", "s2", 1),)


def grouped(**overrides: object) -> GslbService:
    groups = [
        PriorityGroup(
            priority=prio, members=[Member(ip=ip, cluster=c, weight=w) for ip, c, w in ms]
        )
        for prio, ms in ((5, BACKUP), (10, PRIMARY))
    ]
    return GslbService(fqdn=HELLO, ttl_seconds=30, groups=groups, **overrides)  # type: ignore[arg-type]


def mark(engine: DnsEngine, ip: str, state: HealthState) -> None:
    engine.table.set_health(member_key(HELLO, ip), state)


def picks(engine: DnsEngine, count: int, **kwargs: object) -> list[str]:
    return [addresses(ask(engine, HELLO, **kwargs))[0] for _ in range(count)]  # type: ignore[arg-type]


# Priority groups and health ---------------------------------------------------------------------


def test_members_come_from_the_highest_priority_group() -> None:
    assert set(picks(seeded_engine(grouped()), 10)) == {"127.10.25.46", "127.10.26.40"}


def test_a_down_member_is_not_answered() -> None:
    engine = seeded_engine(grouped())

    mark(engine, "127.10.25.46", HealthState.DOWN)

    assert set(picks(engine, 6)) == {"127.10.26.40"}


def test_an_unknown_member_is_still_answered() -> None:
    engine = seeded_engine(grouped())

    mark(engine, "127.10.25.46", HealthState.UNKNOWN)

    assert set(picks(engine, 6)) == {"127.10.25.46", "127.10.26.40"}


def test_the_next_group_answers_when_the_best_has_no_healthy_member() -> None:
    engine = seeded_engine(grouped())

    for ip, _, _ in PRIMARY:
        mark(engine, ip, HealthState.DOWN)

    assert set(picks(engine, 4)) == {"127.10.23.40"}


def test_a_recovered_member_is_answered_again() -> None:
    engine = seeded_engine(grouped())
    mark(engine, "127.10.25.46", HealthState.DOWN)

    mark(engine, "127.10.25.46", HealthState.UP)

    assert set(picks(engine, 6)) == {"127.10.25.46", "127.10.26.40"}


# Weighted round robin ---------------------------------------------------------------------------


def test_every_window_of_twelve_answers_has_the_seed_split_6_4_2() -> None:
    sequence = picks(seeded_engine(), 12 * 5)

    for start in range(0, len(sequence) - 12):
        window = Counter(sequence[start : start + 12])
        assert window == {"127.10.25.46": 6, "127.10.26.40": 4, "127.10.23.40": 2}


def test_round_robin_is_shared_by_clients_with_different_query_packets() -> None:
    engine = seeded_engine()
    answers = []
    for turn in range(12):
        kwargs: dict[str, object] = {"use_edns": 0} if turn % 2 else {}
        answers.append(addresses(ask(engine, HELLO if turn % 3 else HELLO.upper(), **kwargs))[0])  # type: ignore[arg-type]

    assert Counter(answers) == {"127.10.25.46": 6, "127.10.26.40": 4, "127.10.23.40": 2}


@pytest.mark.parametrize("weights", [(6, 4, 2), (20, 20, 1)], ids=["seed 6:4:2", "canary 20:20:1"])
def test_ten_thousand_answers_are_within_one_point_of_the_weights(weights: tuple[int, ...]) -> None:
    members = tuple((ip, c, w) for (ip, c, _), w in zip(SEED, weights, strict=True))
    engine = seeded_engine(service(members=members))
    packet = dns.message.make_query(HELLO, "A").to_wire()

    # One A record and no OPT: the answered address is the last four bytes of the reply.
    replies = [engine.respond(packet, "192.0.2.1", True) for _ in range(10_000)]
    counts = Counter(socket.inet_ntoa(reply[-4:]) for reply in replies if reply is not None)

    for ip, _, weight in members:
        assert abs(counts[ip] / 10_000 - weight / sum(weights)) < 0.01


def test_answers_n_gives_n_distinct_members() -> None:
    engine = seeded_engine(service(answers=2))

    for _ in range(12):
        answered = addresses(ask(engine, HELLO))
        assert len(answered) == len(set(answered)) == 2


def test_answers_n_larger_than_the_members_gives_every_member_once() -> None:
    answered = addresses(ask(seeded_engine(service(answers=5)), HELLO))

    assert sorted(answered) == sorted(ip for ip, _, _ in SEED)


# Consistent hash --------------------------------------------------------------------------------


def hashed(**overrides: object) -> GslbService:
    return service(algorithm=Algorithm.CONSISTENT_HASH, **overrides)  # type: ignore[arg-type]


def test_one_client_subnet_always_gets_the_same_member() -> None:
    engine = seeded_engine(hashed())

    seen = {addresses(ask(engine, HELLO, client=f"198.51.100.{n}"))[0] for n in range(1, 40)}

    assert len(seen) == 1


def test_client_subnets_spread_over_the_members() -> None:
    engine = seeded_engine(hashed())

    seen = {addresses(ask(engine, HELLO, client=f"10.{n}.7.1"))[0] for n in range(60)}

    assert seen == {ip for ip, _, _ in SEED}


def test_the_ecs_subnet_decides_instead_of_the_resolver_address() -> None:
    engine = seeded_engine(hashed())
    ecs = dns.edns.ECSOption("203.0.113.0", 24)
    direct = addresses(ask(engine, HELLO, client="203.0.113.9"))[0]

    via_resolvers = {
        addresses(ask(engine, HELLO, client=f"10.{n}.0.53", use_edns=0, options=[ecs]))[0]
        for n in range(30)
    }

    assert via_resolvers == {direct}


def test_a_hashed_answer_echoes_ecs_with_the_mask_as_scope() -> None:
    engine = seeded_engine(hashed(hash_mask_bits=20))
    ecs = dns.edns.ECSOption("203.0.112.0", 22)

    reply = ask(engine, HELLO, use_edns=0, options=[ecs])

    echoed = [o for o in reply.options if isinstance(o, dns.edns.ECSOption)]
    assert [(o.address, o.srclen, o.scopelen) for o in echoed] == [("203.0.112.0", 22, 20)]


def test_a_round_robin_answer_echoes_ecs_with_scope_zero() -> None:
    ecs = dns.edns.ECSOption("203.0.113.0", 24)

    reply = ask(seeded_engine(), HELLO, use_edns=0, options=[ecs])

    echoed = [o for o in reply.options if isinstance(o, dns.edns.ECSOption)]
    assert [(o.srclen, o.scopelen) for o in echoed] == [(24, 0)]


def test_ecs_with_source_zero_hashes_the_resolver_and_scopes_zero() -> None:
    engine = seeded_engine(hashed())
    ecs = dns.edns.ECSOption("0.0.0.0", 0)
    direct = addresses(ask(engine, HELLO, client="192.0.2.53"))[0]

    reply = ask(engine, HELLO, client="192.0.2.53", use_edns=0, options=[ecs])

    echoed = [o for o in reply.options if isinstance(o, dns.edns.ECSOption)]
    assert addresses(reply) == [direct]
    assert echoed[0].scopelen == 0


def test_a_client_keeps_its_member_when_another_member_goes_down() -> None:
    engine = seeded_engine(hashed())
    clients = [f"10.{n}.9.1" for n in range(40)]
    before = {c: addresses(ask(engine, HELLO, client=c))[0] for c in clients}
    gone = "127.10.26.40"

    mark(engine, gone, HealthState.DOWN)

    after = {c: addresses(ask(engine, HELLO, client=c))[0] for c in clients}
    assert all(after[c] == before[c] for c in clients if before[c] != gone)
    assert gone not in after.values()


# Down responses ---------------------------------------------------------------------------------


def all_down(engine: DnsEngine) -> DnsEngine:
    for ip, _, _ in SEED:
        mark(engine, ip, HealthState.DOWN)
    return engine


def with_down(kind: DownResponseType, fallback: str | None = None, drop: bool = False) -> DnsEngine:
    zone = zone_spec(unhandled=UnhandledPolicy.DROP if drop else UnhandledPolicy.RESPOND)
    down = DownResponse(type=kind, fallback_ip=fallback)
    return all_down(seeded_engine(service(down_response=down), zone=zone))


def test_down_none_is_treated_as_unhandled_and_answers_nodata() -> None:
    reply = ask(with_down(DownResponseType.NONE), HELLO)

    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == [] and reply.authority[0].rdtype == dns.rdatatype.SOA


def test_down_none_in_a_drop_zone_stays_silent() -> None:
    assert ask_raw(with_down(DownResponseType.NONE, drop=True), HELLO) is None


def test_down_empty_answers_nodata_even_in_a_drop_zone() -> None:
    reply = ask(with_down(DownResponseType.EMPTY, drop=True), HELLO)

    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []


def test_down_all_records_answers_every_member_ignoring_health() -> None:
    answered = addresses(ask(with_down(DownResponseType.ALL_RECORDS), HELLO))

    assert sorted(answered) == sorted(ip for ip, _, _ in SEED)


def test_down_fallback_ip_answers_the_fallback() -> None:
    engine = with_down(DownResponseType.FALLBACK_IP, fallback="192.0.2.250")

    assert addresses(ask(engine, HELLO)) == ["192.0.2.250"]


def test_down_fallback_ip_of_the_other_family_is_nodata() -> None:
    engine = with_down(DownResponseType.FALLBACK_IP, fallback="2001:db8::250")

    reply = ask(engine, HELLO)

    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []


def test_a_healthy_member_again_ends_the_down_response() -> None:
    engine = with_down(DownResponseType.FALLBACK_IP, fallback="192.0.2.250")

    mark(engine, "127.10.23.40", HealthState.UP)

    assert addresses(ask(engine, HELLO)) == ["127.10.23.40"]


def test_a_dual_stack_name_answers_each_family_from_its_members() -> None:
    members = (("127.10.25.46", "s1az1", 1), ("2001:db8::46", "s1az1", 1))
    engine = seeded_engine(service(members=members))

    assert addresses(ask(engine, HELLO, rdtype="A")) == ["127.10.25.46"]
    assert addresses(ask(engine, HELLO, rdtype="AAAA")) == ["2001:db8::46"]


# Topology ---------------------------------------------------------------------------------------

S1AZ1_IP, S1AZ2_IP, S2_IP = (ip for ip, _, _ in SEED)
RULES = (("10.1.0.0/16", "s1az1"), ("10.1.2.0/24", "s2"), ("2001:db8::/32", "s1az2"))


def topology(fallback: Algorithm | None = None, **overrides: object) -> GslbService:
    return service(
        algorithm=Algorithm.TOPOLOGY,
        topology=[TopologyEntry(client_subnet=net, site=site) for net, site in RULES],
        fallback_algorithm=fallback,
        **overrides,
    )  # type: ignore[arg-type]


def test_a_client_inside_a_rule_is_answered_from_its_site() -> None:
    assert set(picks(seeded_engine(topology()), 12, client="10.1.5.9")) == {S1AZ1_IP}


def test_the_most_specific_subnet_wins() -> None:
    assert set(picks(seeded_engine(topology()), 12, client="10.1.2.7")) == {S2_IP}


def test_ipv6_clients_match_ipv6_rules() -> None:
    assert set(picks(seeded_engine(topology()), 6, client="2001:db8:5::1")) == {S1AZ2_IP}


def test_a_client_no_rule_maps_gets_the_weighted_round_robin() -> None:
    answered = Counter(picks(seeded_engine(topology()), 12, client="192.0.2.10"))

    assert answered == {S1AZ1_IP: 6, S1AZ2_IP: 4, S2_IP: 2}


def test_the_ecs_subnet_decides_the_site_and_is_echoed_with_its_own_length() -> None:
    engine = seeded_engine(topology())
    ecs = dns.edns.ECSOption("10.1.2.0", 24)

    replies = [ask(engine, HELLO, client="192.0.2.53", use_edns=0, options=[ecs]) for _ in range(6)]

    assert {addresses(r)[0] for r in replies} == {S2_IP}
    echoed = [o for o in replies[0].options if isinstance(o, dns.edns.ECSOption)]
    assert [(o.srclen, o.scopelen) for o in echoed] == [(24, 24)]


def test_the_same_packet_from_resolvers_in_different_sites_is_not_served_from_cache() -> None:
    engine = seeded_engine(topology())
    packet = dns.message.make_query(HELLO, "A", id=7).to_wire()

    first = engine.respond(packet, "10.1.5.9", True)
    second = engine.respond(packet, "10.1.2.7", True)

    assert first is not None and second is not None
    assert [addresses(dns.message.from_wire(r)) for r in (first, second)] == [[S1AZ1_IP], [S2_IP]]
    assert engine.cache == {}


def test_a_site_without_a_healthy_member_falls_back_to_the_others() -> None:
    engine = seeded_engine(topology())

    mark(engine, S2_IP, HealthState.DOWN)

    assert Counter(picks(engine, 10, client="10.1.2.7")) == {S1AZ1_IP: 6, S1AZ2_IP: 4}


def test_a_recovered_site_member_takes_its_clients_back() -> None:
    engine = seeded_engine(topology())
    mark(engine, S2_IP, HealthState.DOWN)

    mark(engine, S2_IP, HealthState.UP)

    assert set(picks(engine, 4, client="10.1.2.7")) == {S2_IP}


def test_a_consistent_hash_fallback_keeps_an_unmapped_client_on_one_member() -> None:
    engine = seeded_engine(topology(fallback=Algorithm.CONSISTENT_HASH))

    per_client = [set(picks(engine, 5, client=f"198.51.{n}.7")) for n in range(40)]

    assert all(len(seen) == 1 for seen in per_client)
    assert set().union(*per_client) == {S1AZ1_IP, S1AZ2_IP, S2_IP}


def test_a_site_with_several_members_shares_its_clients_by_weight() -> None:
    members = (("127.10.25.46", "s1az1", 3), ("127.10.25.47", "s1az1", 1), (S2_IP, "s2", 2))
    engine = seeded_engine(topology(members=members))

    assert Counter(picks(engine, 8, client="10.1.9.9")) == {"127.10.25.46": 6, "127.10.25.47": 2}


def test_topology_answers_are_counted_for_the_site_members() -> None:
    engine = seeded_engine(topology())

    picks(engine, 5, client="10.1.2.7")
    picks(engine, 12, client="192.0.2.10")

    counted = {(c, ip): n for (_, c, ip), n in engine.answers_by_member().items() if n}
    assert counted == {("s1az1", S1AZ1_IP): 6, ("s1az2", S1AZ2_IP): 4, ("s2", S2_IP): 2 + 5}


# One decision, asked directly or through a CNAME ------------------------------------------------

WWW = "www.avi.iberia.local"
"""A static CNAME to HELLO in the test zone."""
S2_SUBNET = dns.edns.ECSOption("10.1.2.0", 24)
"""Mapped to site s2 by the topology RULES."""
S2_HASHED_SUBNET = dns.edns.ECSOption("203.0.6.0", 24)
"""A subnet that weighted rendezvous hashing over the SEED members gives to s2."""
RESOLVERS = [f"10.{n}.0.53" for n in range(6)]
"""Six resolvers, outside every topology rule, that hash to different SEED members."""


def six_answers(engine: DnsEngine, name: str, subnet: dns.edns.ECSOption) -> list[str]:
    """One answer per resolver, each forwarding the same client subnet."""
    return [
        addresses(ask(engine, name, client=resolver, use_edns=0, options=[subnet]))[0]
        for resolver in RESOLVERS
    ]


@pytest.mark.parametrize(
    ("name_service", "subnet"),
    [(topology, S2_SUBNET), (hashed, S2_HASHED_SUBNET)],
    ids=["Topology", "ConsistentHash"],
)
def test_the_ecs_subnet_decides_alike_asked_directly_and_through_a_cname(
    name_service: Callable[[], GslbService], subnet: dns.edns.ECSOption
) -> None:
    engine = seeded_engine(name_service())

    assert six_answers(engine, HELLO, subnet) == [S2_IP] * 6
    assert six_answers(engine, WWW, subnet) == [S2_IP] * 6


@pytest.mark.parametrize(
    ("name_service", "subnet", "scope"),
    [
        (topology, S2_SUBNET, 24),
        (lambda: hashed(hash_mask_bits=20), S2_HASHED_SUBNET, 20),
        (service, S2_SUBNET, 0),
    ],
    ids=["Topology: the source length", "ConsistentHash: the hash mask", "RoundRobin: zero"],
)
def test_an_answer_through_a_cname_echoes_the_scope_the_name_asked_directly_echoes(
    name_service: Callable[[], GslbService], subnet: dns.edns.ECSOption, scope: int
) -> None:
    engine = seeded_engine(name_service())

    for name in (HELLO, WWW):
        reply = ask(engine, name, use_edns=0, options=[subnet])
        echoed = [o for o in reply.options if isinstance(o, dns.edns.ECSOption)]
        assert [(o.srclen, o.scopelen) for o in echoed] == [(24, scope)], name


def test_through_a_cname_a_topology_client_without_ecs_is_answered_by_its_own_site() -> None:
    engine = seeded_engine(topology())

    answered = {addresses(ask(engine, WWW, client="10.1.2.7"))[0] for _ in range(6)}

    assert answered == {S2_IP}
