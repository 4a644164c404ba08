"""`kgslb status` against a real nats-server: each GSLB service in KV with its members and
their health, and no service whose key was deleted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
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
    assert "│ up " in outvoted
    assert "s1az1 down, s1az2 down (silent), s2 up" in outvoted
    assert "│ down " in withdrawn
    assert "s1az1 down, s2 down" in withdrawn
    assert any("vantage points" in row for row in rows)
