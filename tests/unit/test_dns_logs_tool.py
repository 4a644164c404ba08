"""`kgslb logs` without NATS: durations, CSV rows, the observed split against the weights,
the chi-square p-value and the chart."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kgslb.logs import (
    LogsError,
    chi_square_p_value,
    parse_since,
    traffic_split,
    write_chart,
    write_csv,
)
from shared.models import DnsQueryLog, GslbService, Member, PriorityGroup

HELLO = "hello.avi.iberia.local"
WEIGHTS = {"127.10.25.46": ("s1az1", 6), "127.10.26.40": ("s1az2", 3), "127.10.23.40": ("s2", 1)}


def configured(weights: dict[str, tuple[str, int]] = WEIGHTS) -> GslbService:
    members = [Member(ip=ip, cluster=c, weight=w) for ip, (c, w) in weights.items()]
    return GslbService(
        fqdn=HELLO, ttl_seconds=1, groups=[PriorityGroup(priority=10, members=members)]
    )


def record(ip: str, rcode: str = "NOERROR", qtype: str = "A") -> DnsQueryLog:
    cluster = WEIGHTS.get(ip, ("other", 0))[0]
    return DnsQueryLog(
        time=datetime(2020, 12, 23, 19, 40, tzinfo=UTC), client="192.0.2.1", qname=HELLO,
        qtype=qtype, rcode=rcode, answers=[ip] if rcode == "NOERROR" else [],
        clusters=[cluster] if rcode == "NOERROR" else [], latency_us=12.5, replica="dns-0",
        zone="avi.iberia.local",
    )  # fmt: skip


def logs(counts: dict[str, int]) -> list[DnsQueryLog]:
    return [record(ip) for ip, count in counts.items() for _ in range(count)]


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400)]
)
def test_since_accepts_seconds_minutes_hours_days(text: str, seconds: int) -> None:
    assert parse_since(text) == timedelta(seconds=seconds)


def test_a_bad_since_says_what_is_expected() -> None:
    with pytest.raises(
        LogsError, match=r"--since '10 minutes': expected a number with s, m, h or d"
    ):
        parse_since("10 minutes")


def test_csv_has_one_row_per_query_with_answers_and_clusters(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"

    write_csv([record("127.10.25.46"), record("127.10.23.40")], path)

    rows = list(csv.DictReader(path.open()))
    assert [(r["answers"], r["clusters"]) for r in rows] == [
        ("127.10.25.46", "s1az1"), ("127.10.23.40", "s2"),
    ]  # fmt: skip
    assert rows[0]["qname"] == HELLO and rows[0]["latency_us"] == "12.5"


def test_split_counts_the_first_answer_of_each_noerror_a_query() -> None:
    records = logs({"127.10.25.46": 6, "127.10.26.40": 3, "127.10.23.40": 1})
    records += [record("", rcode="NXDOMAIN"), record("127.10.25.46", qtype="AAAA")]

    report = traffic_split(HELLO, records, configured())

    assert report.answered == 10
    shares = {m.ip: (m.observed, m.share, m.expected) for m in report.members}
    assert shares["127.10.25.46"] == (6, 0.6, 0.6)
    assert shares["127.10.23.40"] == (1, 0.1, 0.1)


def test_split_sums_members_per_cluster() -> None:
    weights = {"127.10.25.46": ("s1", 1), "127.10.25.47": ("s1", 1), "127.10.23.40": ("s2", 2)}
    records = [record(ip) for ip in ("127.10.25.46", "127.10.25.47", "127.10.23.40")]

    report = traffic_split(HELLO, records, configured(weights))

    clusters = {c.cluster: (c.weight, c.expected) for c in report.clusters}
    assert clusters["s1"] == (2, 0.5)


def test_an_answer_outside_the_configured_group_is_shown_with_weight_zero() -> None:
    report = traffic_split(HELLO, logs({"127.10.25.46": 3, "192.0.2.250": 1}), configured())

    outsider = [m for m in report.members if m.ip == "192.0.2.250"]
    assert [(m.weight, m.observed) for m in outsider] == [(0, 1)]
    assert "outside the configured best group" in report.note


def test_without_a_configured_service_the_split_says_so() -> None:
    report = traffic_split(HELLO, logs({"127.10.25.46": 3}), None)

    assert "no GSLB service hello.avi.iberia.local" in report.note
    assert chi_square_p_value(report) is None


def test_counts_that_follow_the_weights_get_a_high_p_value() -> None:
    report = traffic_split(
        HELLO, logs({"127.10.25.46": 600, "127.10.26.40": 300, "127.10.23.40": 100}), configured()
    )

    p_value = chi_square_p_value(report)

    assert p_value is not None and p_value > 0.99


def test_counts_that_ignore_the_weights_get_a_tiny_p_value() -> None:
    report = traffic_split(
        HELLO, logs({"127.10.25.46": 334, "127.10.26.40": 333, "127.10.23.40": 333}), configured()
    )

    p_value = chi_square_p_value(report)

    assert p_value is not None and p_value < 1e-6


def test_the_chart_is_a_png(tmp_path: Path) -> None:
    report = traffic_split(HELLO, logs({"127.10.25.46": 6, "127.10.26.40": 3}), configured())
    path = tmp_path / "split.png"

    write_chart(report, path)

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
