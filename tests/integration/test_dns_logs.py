"""Query logs end to end: `kgslb dns` publishes them to kgslb.dnslog.<zone> (throttled), and
`kgslb logs export` / `kgslb logs split` read them back from stream KGSLB_DNSLOG."""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dns.asyncquery
import dns.message
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from kgslb.embedded import free_port
from shared import subjects, wire
from shared.models import DnsQueryLog
from tests.integration.conftest import Services, eventually
from tests.integration.test_dns_protocol import HELLO, SEED, ZONE, gslb, zone
from tests.integration.test_dns_updates import put_service, put_zone

LOGGED = f"logged.{ZONE}"
"""A name only the test asks for: readiness probes ask for HELLO."""


async def start_dns(nc: Client, services: Services, *flags: str) -> int:
    await put_zone(nc, zone())
    await put_service(nc, gslb(HELLO))
    await put_service(nc, gslb(LOGGED))
    port = free_port()
    services.start("dns", "dns", "--dns-port", str(port), "--replica", "dns-a", *flags)

    async def answering() -> bool:
        return bool((await ask(port, HELLO)).answer)

    await eventually(answering)
    return port


async def ask(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    return await dns.asyncquery.udp(
        dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=2
    )


async def next_record(logs: Subscription, qname: str) -> DnsQueryLog:
    """The first record for `qname` (records of earlier probes may still be in flight)."""
    try:
        while True:
            record = wire.decode((await logs.next_msg(timeout=5)).data, DnsQueryLog)
            if record.qname == qname:
                return record
    finally:
        await logs.unsubscribe()


def kgslb(nats_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kgslb", *args, "--nats-url", nats_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_a_query_log_record_reaches_the_zone_subject_with_every_field(
    nats_client: Client, services: Services
) -> None:
    port = await start_dns(nats_client, services, "--log-per-second", "0")
    logs = await nats_client.subscribe(subjects.dnslog_subject(ZONE))
    await nats_client.flush()  # the server knows the subscription before queries

    reply = await ask(port, "Logged.Avi.Iberia.Local")

    record = await next_record(logs, LOGGED)
    answered = reply.answer[0][0].address
    assert (record.qname, record.qtype, record.rcode) == (LOGGED, "A", "NOERROR")
    assert record.client == "127.0.0.1" and record.replica == "dns-a" and record.zone == ZONE
    assert record.answers == [answered]
    assert record.clusters == [next(c for ip, c, _ in SEED if ip == answered)]
    assert record.latency_us > 0


async def test_a_refused_query_is_logged_on_the_no_zone_subject(
    nats_client: Client, services: Services
) -> None:
    port = await start_dns(nats_client, services, "--log-per-second", "0")
    logs = await nats_client.subscribe(subjects.dnslog_subject(""))
    await nats_client.flush()  # the server knows the subscription before queries

    await ask(port, "www.example.com")

    record = await next_record(logs, "www.example.com")
    assert (record.qname, record.rcode, record.zone) == ("www.example.com", "REFUSED", "")


async def test_the_throttle_keeps_n_records_per_second(
    nats_client: Client, services: Services
) -> None:
    port = await start_dns(nats_client, services, "--log-per-second", "3")
    await asyncio.sleep(1.1)  # the readiness probes' second is over
    logs = await nats_client.subscribe(subjects.dnslog_subject(ZONE))
    await nats_client.flush()  # the server knows the subscription before queries

    for _ in range(30):
        await ask(port, HELLO)
    await asyncio.sleep(1.5)

    received = 0
    while logs.pending_msgs:
        await logs.next_msg(timeout=1)
        received += 1
    await logs.unsubscribe()
    # 30 queries take well under a second, so they span at most two throttle windows.
    assert 3 <= received <= 6


async def test_logs_export_writes_every_logged_query_as_csv(
    nats_client: Client, services: Services, tmp_path: Path
) -> None:
    port = await start_dns(nats_client, services, "--log-per-second", "0")
    for _ in range(24):
        await ask(port, LOGGED)
    await ask(port, f"test.{ZONE}")
    out = tmp_path / "logged.csv"

    async def exported_all() -> list[dict[str, str]]:
        result = kgslb(services.nats.url, "logs", "export", LOGGED, "--since", "10m",
                       "--csv", str(out))  # fmt: skip
        assert result.returncode == 0, result.stderr
        rows = list(csv.DictReader(out.open()))
        return rows if len(rows) == 24 else []

    rows = await eventually(exported_all)
    picked = Counter(row["answers"] for row in rows)
    assert {row["qname"] for row in rows} == {LOGGED}
    assert picked == {ip: 2 * weight for ip, _, weight in SEED}


async def test_logs_split_compares_the_observed_shares_with_the_weights(
    nats_client: Client, services: Services, tmp_path: Path
) -> None:
    port = await start_dns(nats_client, services, "--log-per-second", "0")
    for _ in range(120):
        await ask(port, LOGGED)
    chart = tmp_path / "split.png"

    async def split() -> str:
        result = kgslb(services.nats.url, "logs", "split", LOGGED, "--since", "10m",
                       "--png", str(chart))  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout if "120 answers" in result.stdout else ""

    out = await eventually(split)
    assert "p-value: 1.0000" in out
    for ip, cluster, weight in SEED:
        assert ip in out and cluster in out
        assert f"{100 * weight / 12:.1f}" in out
    assert chart.read_bytes()[:4] == b"\x89PNG"


async def test_logs_export_refuses_a_bad_since_with_a_clear_message(
    nats_client: Client, services: Services, tmp_path: Path
) -> None:
    # The old form, `--fqdn NAME`, still works, with a note to give the name as the argument.
    result = kgslb(services.nats.url, "logs", "export", "--fqdn", HELLO, "--since", "soon",
                   "--csv", str(tmp_path / "x.csv"))  # fmt: skip

    assert result.returncode == 2
    assert "--fqdn is deprecated, give the name as the first argument" in result.stderr
    assert "--since 'soon': expected a number with s, m, h or d" in result.stderr
