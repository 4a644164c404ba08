"""The short CI fuzz of the DNS engine (bench/fuzz_dns.py runs a million packets): names
outside the served zones are never answered however the query is built or broken, and a
flood of random names cannot grow the engine's memory without bound."""

from __future__ import annotations

import random
import struct
import tracemalloc

import dns.exception
import dns.message
import dns.name
import dns.rcode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.dns.server import DnsEngine
from tests.unit.test_dns_answers import ZONE, seeded_engine, service

ZONE_NAME = dns.name.from_text(ZONE)
OUTSIDE = ("example.com", "iberia.local", "local", "avi.iberia.local.evil.org", "")
QTYPES = ("A", "AAAA", "ANY", "TXT", "MX", "NS", "SOA", "SRV", "CNAME", "AXFR", "IXFR", "CAA")
ENGINE = seeded_engine(service())
label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_*", min_size=1, max_size=20)


@st.composite
def outside_queries(draw: st.DrawFn) -> bytes:
    labels = draw(st.lists(label, max_size=4))
    name = ".".join([*labels, draw(st.sampled_from(OUTSIDE))]).strip(".") or "."
    kwargs: dict[str, object] = draw(
        st.sampled_from([{}, {"use_edns": False}, {"use_edns": 0, "want_dnssec": True}])
    )
    return dns.message.make_query(name, draw(st.sampled_from(QTYPES)), **kwargs).to_wire()  # type: ignore[arg-type]


@st.composite
def mutated_outside_queries(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(outside_queries()))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(12, max(len(data) - 1, 12)))
        if position < len(data):
            data[position] ^= draw(st.integers(1, 255))
    return bytes(data)


def question_outside(packet: bytes) -> bool:
    try:
        message = dns.message.from_wire(packet, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError, IndexError):
        return False
    return len(message.question) == 1 and not message.question[0].name.is_subdomain(ZONE_NAME)


def answer_count(reply: bytes) -> int:
    return int(struct.unpack("!H", reply[6:8])[0])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(outside_queries(), st.booleans())
def test_a_name_outside_the_zones_is_refused_and_never_answered(packet: bytes, udp: bool) -> None:
    reply = ENGINE.respond(packet, "192.0.2.1", udp)

    assert reply is not None
    assert dns.message.from_wire(reply).rcode() == dns.rcode.REFUSED
    assert answer_count(reply) == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_outside_queries(), st.booleans())
def test_a_broken_query_for_an_outside_name_gets_no_answer(packet: bytes, udp: bool) -> None:
    reply = ENGINE.respond(packet, "192.0.2.1", udp)

    if reply is not None and question_outside(packet):
        assert answer_count(reply) == 0


def random_names(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [
        dns.message.make_query(f"{rng.getrandbits(64):x}.{ZONE}", "A").to_wire()
        for _ in range(count)
    ]


def flood(engine: DnsEngine, packets: list[bytes]) -> None:
    for packet in packets:
        reply = engine.respond(packet, "192.0.2.1", True)
        assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.NXDOMAIN


def test_random_names_are_nxdomain_and_the_response_cache_stays_within_its_bound() -> None:
    engine = seeded_engine(service(), cache_entries=500)

    flood(engine, random_names(3000, seed=1))

    assert len(engine.cache) <= 500


def test_memory_is_flat_over_a_flood_of_random_names() -> None:
    engine = seeded_engine(service(), cache_entries=500)
    warm, first, second = (random_names(4000, seed) for seed in (1, 2, 3))
    flood(engine, warm)
    tracemalloc.start()
    try:
        flood(engine, first)
        after_first, _ = tracemalloc.get_traced_memory()
        flood(engine, second)
        after_second, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # One more cache's worth (500 entries) is the most a second flood may add.
    assert after_second - after_first < 500 * 2048
