"""Property: no packet, however broken, makes the engine raise, answer as if it were a
query it is not, or stop answering good queries."""

from __future__ import annotations

import struct

import dns.message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.dns.server import DnsEngine
from tests.unit.test_dns_answers import HELLO, seeded_engine, service

ENGINE = seeded_engine(service(answers=2))

VALID = [
    dns.message.make_query(name, rdtype, **kwargs).to_wire()  # type: ignore[arg-type]
    for name, rdtype, kwargs in (
        (HELLO, "A", {}),
        (HELLO, "AAAA", {"use_edns": 0}),
        ("big.avi.iberia.local", "TXT", {"use_edns": 0, "payload": 4096}),
        ("avi.iberia.local", "NS", {"use_edns": 0}),
        ("nope.avi.iberia.local", "MX", {}),
        ("www.avi.iberia.local", "A", {"want_dnssec": True}),
    )
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "count"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif len(data) >= 12:
            struct.pack_into(
                "!H", data, draw(st.sampled_from([4, 6, 8, 10])), draw(st.integers(0, 65535))
            )
    return bytes(data)


def answers_hello(engine: DnsEngine) -> bool:
    reply = engine.respond(VALID[0], "192.0.2.1", True)
    assert reply is not None
    parsed = dns.message.from_wire(reply)
    return len(parsed.answer[0]) == 2


def check(engine: DnsEngine, data: bytes, udp: bool) -> None:
    reply = engine.respond(data, "192.0.2.1", udp)
    if reply is not None:
        assert len(reply) >= 12
        assert reply[2] & 0x80, "a reply must have QR set"
        assert reply[:2] == data[:2], "a reply carries the query's ID"
    assert answers_hello(engine)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=700), st.booleans())
def test_random_bytes_never_break_the_engine(data: bytes, udp: bool) -> None:
    check(ENGINE, data, udp)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.booleans())
def test_mutated_queries_never_break_the_engine(data: bytes, udp: bool) -> None:
    check(ENGINE, data, udp)
