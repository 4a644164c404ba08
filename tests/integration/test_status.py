"""`kgslb status` against a real nats-server: each GSLB service in KV with its members and
their health, and no service whose key was deleted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from nats.aio.client import Client

from kgslb.embedded import NatsServer
from kgslb.status import StatusSettings, show_status
from shared import subjects, wire
from shared.models import (
    GslbService,
    HealthHeartbeat,
    HealthState,
    Member,
    MemberHealth,
    PriorityGroup,
)

HELLO = "hello.avi.iberia.local"
GONE = "gone.avi.iberia.local"
UP_IP, UNPROBED_IP = "127.10.25.46", "127.10.23.40"


def columns(row: str) -> list[str]:
    """The cells of a row of plain output (stdout is not a terminal here)."""
    return re.split(r"\s{2,}", row.strip())


def service(fqdn: str) -> GslbService:
    members = [
        Member(ip=UP_IP, cluster="s1az1", weight=6),
        Member(ip=UNPROBED_IP, cluster="s2", weight=1),
    ]
    return GslbService(
        fqdn=fqdn, ttl_seconds=30, groups=[PriorityGroup(priority=10, members=members)]
    )


async def test_status_shows_each_service_in_kv_with_its_members_health(
    nats_server: NatsServer,
    nats_client: Client,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    js = nats_client.jetstream()
    services = await js.key_value(subjects.KV_SERVICES)
    health = await js.key_value(subjects.KV_HEALTH)
    await services.put(subjects.fqdn_key(HELLO), wire.encode(service(HELLO)))
    await services.put(subjects.fqdn_key(GONE), wire.encode(service(GONE)))
    await services.delete(subjects.fqdn_key(GONE))
    up = MemberHealth(
        fqdn=HELLO, ip=UP_IP, cluster="s1az1", state=HealthState.UP, since=datetime.now(UTC)
    )
    await health.put(subjects.member_key(HELLO, UP_IP), wire.encode(up))
    monkeypatch.setenv("COLUMNS", "200")

    await show_status(StatusSettings(nats_url=nats_server.url))

    rows = capsys.readouterr().out.splitlines()
    up_row = next(row for row in rows if UP_IP in row)
    unprobed_row = next(row for row in rows if UNPROBED_IP in row)
    assert HELLO in up_row and "s1az1" in up_row and "up" in up_row
    assert "s2" in unprobed_row and "unknown" in unprobed_row
    assert not any(GONE in row for row in rows)
    assert not any("vantage points" in row for row in rows), "one vantage point, no column"


async def test_status_shows_each_vantage_points_verdict_and_the_state_they_combine_to(
    nats_server: NatsServer,
    nats_client: Client,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    js = nats_client.jetstream()
    await (await js.key_value(subjects.KV_SERVICES)).put(
        subjects.fqdn_key(HELLO), wire.encode(service(HELLO))
    )
    health = await js.key_value(subjects.KV_HEALTH)
    leases = await js.key_value(subjects.KV_LEASES)
    now = datetime.now(UTC)
    # s1az1 and s2 heartbeat; s1az2's replica stopped a minute ago.
    for site, beat_at in (("s1az1", now), ("s1az2", now - timedelta(minutes=1)), ("s2", now)):
        beat = HealthHeartbeat(
            replica=f"health-{site}",
            heartbeat_at=beat_at,
            expires_at=beat_at + timedelta(seconds=6),
            site=site,
        )
        await leases.put(subjects.health_replica_key(beat.replica), wire.encode(beat))
    verdicts = {
        (UP_IP, "s1az1"): HealthState.DOWN,
        (UP_IP, "s1az2"): HealthState.DOWN,
        (UP_IP, "s2"): HealthState.UP,
        (UNPROBED_IP, "s1az1"): HealthState.DOWN,
        (UNPROBED_IP, "s2"): HealthState.DOWN,
    }
    for (ip, site), state in verdicts.items():
        record = MemberHealth(
            fqdn=HELLO, ip=ip, cluster="c", state=state, since=now, replica=f"health-{site}"
        )
        key = subjects.health_key(subjects.member_key(HELLO, ip), site)
        await health.put(key, wire.encode(record.model_copy(update={"site": site})))
    monkeypatch.setenv("COLUMNS", "250")

    await show_status(StatusSettings(nats_url=nats_server.url))

    rows = capsys.readouterr().out.splitlines()
    outvoted = next(row for row in rows if UP_IP in row)
    withdrawn = next(row for row in rows if UNPROBED_IP in row)
    # One of two heartbeating sites says down: a tie, answered.
    assert columns(outvoted)[7:9] == ["up", "s1az1 down, s1az2 down (silent), s2 up"]
    assert columns(withdrawn)[7:9] == ["down", "s1az1 down, s2 down"]
    assert any("vantage points" in row for row in rows)


LONG = "a-rather-long-application-name-for-an-eighty-column-terminal.avi.iberia.local"
SOURCES = ["Ingress/s1az1/production-namespace/a-rather-long-ingress-name", "Service/s1az1/x/y"]


async def seed_long_name(nats_client: Client) -> None:
    members = [
        Member(ip="127.10.25.146", cluster="s1az1", weight=6, sources=SOURCES),
        Member(ip="127.10.23.140", cluster="s2", weight=1),
    ]
    long = GslbService(
        fqdn=LONG, ttl_seconds=30, groups=[PriorityGroup(priority=10, members=members)]
    )
    services = await nats_client.jetstream().key_value(subjects.KV_SERVICES)
    await services.put(subjects.fqdn_key(LONG), wire.encode(long))


def kgslb_status(url: str, *args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    """`kgslb status ... | cat` in an 80-column terminal: stdout is a pipe."""
    return subprocess.run(
        [sys.executable, "-m", "kgslb", "status", "--nats-url", url, *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": str(columns)},
    )  # fmt: skip


async def test_status_piped_shows_whole_names_addresses_and_sources(
    nats_server: NatsServer, nats_client: Client, tmp_path: Path
) -> None:
    await seed_long_name(nats_client)

    result = kgslb_status(nats_server.url, "--state-dir", str(tmp_path))

    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "127.10.25.146" in line)
    assert columns(row)[:7] == [LONG, "30", "RoundRobin", "10", "127.10.25.146", "s1az1", "6"]
    assert columns(row)[-1] == ", ".join(SOURCES)
    assert "…" not in result.stdout and "│" not in result.stdout


@pytest.mark.parametrize("output", ["json", "yaml"])
async def test_status_output_json_and_yaml_parse_and_hold_the_members(
    nats_server: NatsServer, nats_client: Client, tmp_path: Path, output: str
) -> None:
    await seed_long_name(nats_client)

    result = kgslb_status(nats_server.url, "-o", output, "--state-dir", str(tmp_path))

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout) if output == "json" else yaml.safe_load(result.stdout)
    (shown,) = document["services"]
    assert shown["fqdn"] == LONG
    assert [(m["ip"], m["cluster"], m["weight"], m["health"]) for m in shown["members"]] == [
        ("127.10.25.146", "s1az1", 6, "unknown"),
        ("127.10.23.140", "s2", 1, "unknown"),
    ]
    assert shown["members"][0]["sources"] == SOURCES
    assert document["rejected"] == []


async def test_status_refuses_an_unknown_output(nats_server: NatsServer) -> None:
    result = kgslb_status(nats_server.url, "-o", "xml")

    assert result.returncode == 2
    assert "--output='xml': 'xml' is not one of table, json, yaml" in result.stderr
