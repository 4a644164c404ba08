"""Per-second budgets: response rate limiting with slip, and the query-log throttle, both on
their own and through the engine."""

from __future__ import annotations

import socket

import dns.flags
import dns.message
import pytest

from services.dns.ratelimit import LogThrottle, ResponseRateLimiter, Verdict, prefix_key
from services.dns.server import DnsEngine
from shared.models import DnsQueryLog, UnhandledPolicy
from tests.unit.test_dns_answers import HELLO, SEED, ask, ask_raw, seeded_engine, zone_spec


def v4(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, ip)


def v6(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, ip)


def verdicts(limiter: ResponseRateLimiter, ip: bytes, count: int, second: int = 1) -> list[Verdict]:
    return [limiter.decide(limiter.key(ip), second) for _ in range(count)]


def test_responses_up_to_the_limit_are_sent() -> None:
    assert set(verdicts(ResponseRateLimiter(5), v4("192.0.2.1"), 5)) == {Verdict.SEND}


def test_past_the_limit_every_second_response_slips_and_the_rest_drop() -> None:
    over = verdicts(ResponseRateLimiter(5, slip=2), v4("192.0.2.1"), 11)[5:]

    assert over == [Verdict.DROP, Verdict.SLIP] * 3


def test_slip_zero_drops_everything_past_the_limit() -> None:
    assert set(verdicts(ResponseRateLimiter(2, slip=0), v4("192.0.2.1"), 8)[2:]) == {Verdict.DROP}


def test_slip_one_truncates_everything_past_the_limit() -> None:
    assert set(verdicts(ResponseRateLimiter(2, slip=1), v4("192.0.2.1"), 8)[2:]) == {Verdict.SLIP}


def test_clients_of_one_slash_24_share_a_budget() -> None:
    limiter = ResponseRateLimiter(3, slip=0)
    verdicts(limiter, v4("192.0.2.1"), 3)

    assert verdicts(limiter, v4("192.0.2.200"), 1) == [Verdict.DROP]


def test_another_slash_24_has_its_own_budget() -> None:
    limiter = ResponseRateLimiter(3, slip=0)
    verdicts(limiter, v4("192.0.2.1"), 3)

    assert verdicts(limiter, v4("192.0.3.1"), 1) == [Verdict.SEND]


def test_ipv6_clients_of_one_slash_56_share_a_budget() -> None:
    limiter = ResponseRateLimiter(1, slip=0)
    verdicts(limiter, v6("2001:db8:0:ab00::1"), 1)

    assert verdicts(limiter, v6("2001:db8:0:abff::9"), 1) == [Verdict.DROP]
    assert verdicts(limiter, v6("2001:db8:0:ac00::1"), 1) == [Verdict.SEND]


def test_a_new_second_restores_the_budget() -> None:
    limiter = ResponseRateLimiter(2, slip=0)
    verdicts(limiter, v4("192.0.2.1"), 5, second=1)

    assert verdicts(limiter, v4("192.0.2.1"), 2, second=2) == [Verdict.SEND] * 2


def test_prefix_keys_of_v4_and_v6_never_collide() -> None:
    assert prefix_key(v4("1.2.3.4"), 24) != prefix_key(v6("102:304::"), 24)


def test_prefix_key_masks_inside_a_byte() -> None:
    assert prefix_key(v4("10.0.0.255"), 25) == prefix_key(v4("10.0.0.128"), 25)
    assert prefix_key(v4("10.0.0.127"), 25) != prefix_key(v4("10.0.0.128"), 25)


def test_the_engine_rate_limits_udp_and_slips_with_tc() -> None:
    engine = seeded_engine(rate_limiter=ResponseRateLimiter(3, slip=2))

    replies = [ask_raw(engine, HELLO) for _ in range(7)]

    full = [
        r for r in replies if r is not None and not dns.message.from_wire(r).flags & dns.flags.TC
    ]
    slipped = [
        r for r in replies if r is not None and dns.message.from_wire(r).flags & dns.flags.TC
    ]
    assert (len(full), len(slipped), replies.count(None)) == (3, 2, 2)
    assert dns.message.from_wire(slipped[0]).question[0].name.to_text() == f"{HELLO}."


@pytest.mark.parametrize("dnssec_ok", [False, True], ids=["DO=0", "DO=1"])
def test_a_slip_to_an_edns_query_keeps_our_opt_record(dnssec_ok: bool) -> None:
    """RFC 6891 6.1.1: a reply to an EDNS query carries an OPT, the truncated slip too, so the
    client does not take the TC for a server without EDNS."""
    engine = seeded_engine(rate_limiter=ResponseRateLimiter(1, slip=1))

    replies = [ask_raw(engine, HELLO, use_edns=0, want_dnssec=dnssec_ok) for _ in range(2)]

    assert replies[1] is not None
    slipped = dns.message.from_wire(replies[1])
    assert slipped.flags & dns.flags.TC and not slipped.answer
    assert slipped.edns == 0 and slipped.payload == 1232
    assert bool(slipped.ednsflags & dns.flags.DO) == dnssec_ok


def test_a_slip_to_a_query_without_edns_has_no_opt_record() -> None:
    engine = seeded_engine(rate_limiter=ResponseRateLimiter(1, slip=1))

    replies = [ask_raw(engine, HELLO, use_edns=False) for _ in range(2)]

    assert replies[1] is not None
    slipped = dns.message.from_wire(replies[1])
    assert slipped.flags & dns.flags.TC and slipped.edns == -1


def test_the_engine_never_rate_limits_tcp() -> None:
    engine = seeded_engine(rate_limiter=ResponseRateLimiter(1, slip=0))

    replies = [ask_raw(engine, HELLO, udp=False) for _ in range(5)]

    assert None not in replies


# Query-log throttle -----------------------------------------------------------------------------


def test_the_throttle_allows_n_per_second() -> None:
    throttle = LogThrottle(3)

    assert [throttle.take() for _ in range(5)] == [True, True, True, False, False]
    assert not throttle.open


def test_the_throttle_reopens_each_second() -> None:
    throttle = LogThrottle(1)
    throttle.take()

    throttle.new_second()

    assert throttle.open and throttle.take()


def test_throttle_zero_logs_every_query() -> None:
    throttle = LogThrottle(0)

    assert all(throttle.take() for _ in range(1000))


def logging_engine(per_second: int = 0) -> tuple[list[DnsQueryLog], DnsEngine]:
    records: list[DnsQueryLog] = []
    engine = seeded_engine(log_sink=records.append, log_per_second=per_second, clock=lambda: 100.0)
    return records, engine


def test_a_gslb_answer_is_logged_lowercased_with_member_and_cluster() -> None:
    records, engine = logging_engine()

    ask(engine, "Hello.avi.iberia.local", client="198.51.100.7")

    record = records[0]
    assert (record.client, record.qname, record.qtype, record.rcode) == (
        "198.51.100.7", "hello.avi.iberia.local", "A", "NOERROR",
    )  # fmt: skip
    assert (record.answers, record.clusters) == (["127.10.25.46"], ["s1az1"])
    assert record.replica == "test-replica" and record.zone == "avi.iberia.local"
    assert record.latency_us > 0


def test_cached_answers_are_logged_with_the_member_actually_answered() -> None:
    records, engine = logging_engine()

    for _ in range(12):
        ask(engine, HELLO)

    logged = [r.answers[0] for r in records]
    assert sorted(logged) == sorted([SEED[0][0]] * 6 + [SEED[1][0]] * 4 + [SEED[2][0]] * 2)


def test_a_dropped_query_is_logged_as_dropped() -> None:
    records: list[DnsQueryLog] = []
    engine = seeded_engine(
        zone=zone_spec(unhandled=UnhandledPolicy.DROP), log_sink=records.append, log_per_second=0
    )

    ask_raw(engine, HELLO, "AAAA")

    assert records[0].rcode == "NOERROR(dropped)"


def test_an_out_of_zone_query_is_logged_without_a_zone() -> None:
    records, engine = logging_engine()

    ask(engine, "example.com")

    assert (records[0].rcode, records[0].zone) == ("REFUSED", "")


@pytest.mark.parametrize("per_second", [1, 4])
def test_the_engine_logs_at_most_the_throttle_in_one_second(per_second: int) -> None:
    records, engine = logging_engine(per_second)

    for _ in range(20):
        ask(engine, HELLO)

    assert len(records) == per_second
