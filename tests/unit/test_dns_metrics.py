"""What the DNS metrics say: answers per GSLB name and member, exact whether a reply came from
the response cache, the batched UDP path, a CNAME or a consistent-hash pick, and kept across
health changes; and a latency histogram fed by the transports."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import dns.edns
import dns.message
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.dns.server import (
    LATENCY_BUCKETS,
    DnsEngine,
    LatencyHistogram,
    QueryCountCollector,
    bind_udp_socket,
)
from services.dns.settings import DnsSettings
from services.dns.udp import BatchUdpServer, PlainUdpServer
from shared.models import Algorithm, HealthState
from shared.settings import SettingsError, load_settings
from shared.subjects import member_key
from tests.unit.test_dns_answers import HELLO, SEED, ZONE, ask, seeded_engine, service

S1AZ1, S1AZ2, S2 = ((cluster, ip) for ip, cluster, _ in SEED)


def answers(engine: DnsEngine, fqdn: str = HELLO) -> dict[tuple[str, str], int]:
    """(cluster, ip) -> answers, for one name, as the metric reports it."""
    return {
        (cluster, ip): count
        for (name, cluster, ip), count in engine.answers_by_member().items()
        if name == fqdn and count
    }


def ask_many(engine: DnsEngine, count: int, name: str = HELLO, **kwargs: object) -> None:
    for _ in range(count):
        ask(engine, name, **kwargs)  # type: ignore[arg-type]


def scrape(
    engine: DnsEngine, answer_metrics: str = "member"
) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    registry.register(QueryCountCollector(engine, answer_metrics))
    text = generate_latest(registry).decode()
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


# Answers by name and member ---------------------------------------------------------------------


def test_the_seed_split_is_counted_per_member_whatever_path_answered() -> None:
    engine = seeded_engine()

    # The first query of a packet goes through the table; the other eleven are cache hits.
    ask_many(engine, 12)

    assert answers(engine) == {S1AZ1: 6, S1AZ2: 4, S2: 2}


def test_a_partial_cycle_counts_the_positions_already_answered() -> None:
    engine = seeded_engine()

    ask_many(engine, 13)

    assert sum(answers(engine).values()) == 13
    assert answers(engine)[S1AZ1] in (6, 7)


def test_answers_n_counts_every_member_in_each_answer() -> None:
    engine = seeded_engine(service(answers=2))

    ask_many(engine, 12)

    assert sum(answers(engine).values()) == 24


def test_different_query_packets_share_one_count() -> None:
    engine = seeded_engine()

    ask_many(engine, 6)
    ask_many(engine, 6, name=HELLO.upper())
    ask_many(engine, 6, use_edns=0)

    assert answers(engine) == {S1AZ1: 9, S1AZ2: 6, S2: 3}


def test_counts_survive_a_member_going_down_and_coming_back() -> None:
    engine = seeded_engine()
    ask_many(engine, 12)
    down = member_key(HELLO, SEED[2][0])

    engine.table.set_health(down, HealthState.DOWN)
    ask_many(engine, 10)
    engine.table.set_health(down, HealthState.UP)
    ask_many(engine, 12)

    assert answers(engine) == {S1AZ1: 6 + 6 + 6, S1AZ2: 4 + 4 + 4, S2: 2 + 0 + 2}


def test_counts_survive_a_change_of_weights() -> None:
    engine = seeded_engine()
    ask_many(engine, 12)

    engine.table.set_service(service(members=tuple((ip, c, 1) for ip, c, _ in SEED)))
    ask_many(engine, 3)

    assert answers(engine) == {S1AZ1: 7, S1AZ2: 5, S2: 3}


def test_a_removed_name_is_no_longer_reported() -> None:
    engine = seeded_engine()
    ask_many(engine, 12)

    engine.table.remove_service(HELLO)

    assert answers(engine) == {}


def test_a_cname_to_a_gslb_name_counts_for_the_gslb_name() -> None:
    engine = seeded_engine()

    ask_many(engine, 12, name=f"www.{ZONE}")

    assert answers(engine) == {S1AZ1: 6, S1AZ2: 4, S2: 2}
    assert answers(engine, f"www.{ZONE}") == {}


def test_consistent_hash_picks_are_counted_for_the_picked_member() -> None:
    engine = seeded_engine(service(algorithm=Algorithm.CONSISTENT_HASH))

    ask_many(engine, 5, client="198.51.100.7")

    counted = answers(engine)
    assert list(counted.values()) == [5]


def test_consistent_hash_picks_for_an_ecs_subnet_count_their_cache_hits() -> None:
    engine = seeded_engine(service(algorithm=Algorithm.CONSISTENT_HASH))
    ecs = dns.edns.ECSOption("203.0.113.0", 24)

    ask_many(engine, 7, use_edns=0, options=[ecs])
    assert list(answers(engine).values()) == [7]

    engine.flush_cache()
    ask_many(engine, 3, use_edns=0, options=[ecs])

    assert list(answers(engine).values()) == [10]


def test_the_answers_metric_is_labelled_by_fqdn_cluster_and_ip() -> None:
    engine = seeded_engine()
    ask_many(engine, 12)

    samples = scrape(engine)["kgslb_dns_answers"]

    assert sorted((s["fqdn"], s["cluster"], s["ip"], v) for s, v in samples) == sorted(
        (HELLO, cluster, ip, float(weight)) for ip, cluster, weight in SEED
    )


def test_answers_summed_per_cluster_keep_a_series_per_cluster_only() -> None:
    engine = seeded_engine(service(), service(fqdn=f"other.{ZONE}"))
    ask_many(engine, 12)
    ask_many(engine, 12, name=f"other.{ZONE}")

    samples = scrape(engine, "cluster")["kgslb_dns_answers"]

    assert sorted((s["cluster"], v) for s, v in samples) == [
        ("s1az1", 12.0), ("s1az2", 8.0), ("s2", 4.0),
    ]  # fmt: skip
    assert all(set(s) == {"cluster"} for s, _ in samples)


def test_answer_metrics_off_exports_no_answer_family() -> None:
    engine = seeded_engine()
    ask_many(engine, 12)

    families = scrape(engine, "off")

    assert "kgslb_dns_answers" not in families
    assert "kgslb_dns_queries" in families


def test_an_unknown_answer_metrics_mode_is_refused_naming_the_choices() -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(DnsSettings, {"answer_metrics": "fqdn"}, environ={})

    assert "--answer-metrics" in str(refused.value)
    assert "member" in str(refused.value) and "cluster" in str(refused.value)


# Batched UDP ------------------------------------------------------------------------------------


@pytest.fixture
def client() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


def exchange(
    server: BatchUdpServer | PlainUdpServer, client: socket.socket, count: int
) -> list[dns.message.Message]:
    address = server.sock.getsockname()
    for query_id in range(count):
        query = dns.message.make_query(HELLO, "A", id=query_id)
        client.sendto(query.to_wire(), address)
    server.on_readable()
    return [dns.message.from_wire(client.recv(512)) for _ in range(count)]


@pytest.mark.parametrize("kind", [BatchUdpServer, PlainUdpServer])
def test_udp_answers_are_counted_and_timed(
    kind: type[BatchUdpServer] | type[PlainUdpServer], client: socket.socket
) -> None:
    server = kind(bind_udp_socket("127.0.0.1", 0, reuse_port=False), seeded_engine())

    replies = exchange(server, client, 24)

    assert len(replies) == 24
    assert answers(server.engine) == {S1AZ1: 12, S1AZ2: 8, S2: 4}
    udp = server.engine.latency["udp"]
    assert sum(udp.counts) == 24
    assert 0 < udp.total < 24 * 1.0


# Latency histogram ------------------------------------------------------------------------------


def test_an_observation_of_many_queries_lands_in_one_bucket() -> None:
    histogram = LatencyHistogram()

    histogram.observe(0.000_03, times=64)

    buckets = dict(histogram.buckets())
    assert buckets["2.5e-05"] == 0
    assert buckets["5e-05"] == 64
    assert buckets["+Inf"] == 64
    assert histogram.total == pytest.approx(0.000_03 * 64)


def test_buckets_are_cumulative_and_end_with_inf() -> None:
    histogram = LatencyHistogram()
    for seconds in (0.000_001, 0.000_2, 0.003, 7.0):
        histogram.observe(seconds)

    buckets = histogram.buckets()

    assert [b for b, _ in buckets][-1] == "+Inf"
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    counts = [c for _, c in buckets]
    assert counts == sorted(counts) and counts[0] == 1 and counts[-1] == 4
    assert dict(buckets)["0.1"] == 3


def test_tcp_and_udp_are_separate_series_of_one_histogram() -> None:
    engine = seeded_engine()
    engine.latency["tcp"].observe(0.000_1, times=2)

    samples = scrape(engine)["kgslb_dns_response_seconds"]

    counts = {s["transport"]: v for s, v in samples if s.get("le") == "+Inf"}
    assert counts == {"tcp": 2.0, "udp": 0.0}
