"""Each service's NATS user, from deploy/nats/ exactly as deployed, against a real
nats-server: every service does its job under its own user, and nothing more."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import dns.asyncquery
import dns.message
import httpx
import nats
import pytest
from kubernetes import client, config
from nats.aio.client import Client

from kgslb.embedded import NatsServer, free_port
from kgslb.up import load_stack_config, seed_messages
from kubesim import KubeSim
from shared import bus, subjects, wire
from shared.policies import API_GROUP, API_VERSION
from shared.settings import NatsSettings
from tests.integration.conftest import Services, eventually

ROOT = Path(__file__).resolve().parents[2]
NATS_DIR = ROOT / "deploy" / "nats"
SEED = ROOT / "examples" / "seed" / "kgslb.yaml"
HELLO = "hello.avi.iberia.local"
SEED_VIPS = {"127.10.25.46", "127.10.26.40", "127.10.23.40"}
USERS = ("watcher", "reconciler", "health", "dns", "admin", "system")
PASSWORDS = {user: f"{user}-pw-7f3a9c" for user in USERS}


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """nats-server configured from deploy/nats/accounts.conf (replaces conftest's)."""
    server = NatsServer(tmp_path / "jetstream", config=NATS_DIR / "accounts.conf")
    server.env.update({f"NATS_PASSWORD_{u.upper()}": pw for u, pw in PASSWORDS.items()})
    server.start()
    yield server
    server.stop()


def credentials(user: str) -> dict[str, str]:
    return {"KGSLB_NATS_USER": user, "KGSLB_NATS_PASSWORD": PASSWORDS[user]}


async def connect_as(server: NatsServer, user: str, errors: list[str]) -> Client:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    return await nats.connect(
        server.url, user=user, password=PASSWORDS[user], error_cb=on_error, connect_timeout=2
    )


async def publish_seed_as_watcher(server: NatsServer) -> None:
    settings = NatsSettings(
        nats_url=server.url, nats_user="watcher", nats_password=PASSWORDS["watcher"]
    )
    nc = await bus.connect(settings, "kgslb-test-watcher")
    try:
        js = nc.jetstream()
        await bus.bootstrap(js)
        for subject, message in seed_messages(load_stack_config(SEED)):
            await js.publish(subject, wire.encode(message))
    finally:
        await nc.drain()


def start_dns(services: Services) -> int:
    port = free_port()
    services.start(
        "dns", "dns", "--dns-port", str(port), "--log-per-second", "0", env=credentials("dns")
    )
    return port


async def answered(port: int) -> set[str]:
    query = dns.message.make_query(HELLO, "A")
    reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=1)
    return {rr.address for rrset in reply.answer for rr in rrset}


async def all_members_answered(port: int) -> bool:
    seen: set[str] = set()
    for _ in range(12):
        seen |= await answered(port)
    return seen == SEED_VIPS


async def ready(services: Services, name: str) -> bool:
    url = f"http://127.0.0.1:{services.ops_ports[name]}/readyz"
    async with httpx.AsyncClient() as client:
        return (await client.get(url, timeout=1)).status_code == 200


def refusals(services: Services) -> list[str]:
    return [
        line
        for process in services.running.values()
        for line in process.log_path.read_text().splitlines()
        if "permissions violation" in line.lower()
    ]


async def dnslog_messages(server: NatsServer) -> int:
    errors: list[str] = []
    nc = await connect_as(server, "admin", errors)
    try:
        info = await nc.jetstream().stream_info(subjects.STREAM_DNSLOG)
        return info.state.messages
    finally:
        await nc.drain()


async def test_every_service_does_its_job_under_its_own_user_without_a_refusal(
    nats_server: NatsServer, services: Services
) -> None:
    services.start("reconciler", "reconciler", env=credentials("reconciler"))
    await eventually(lambda: ready(services, "reconciler"), timeout_seconds=15)
    services.start("health", "health", env=credentials("health"))
    port = start_dns(services)
    await publish_seed_as_watcher(nats_server)

    await eventually(lambda: all_members_answered(port), timeout_seconds=20)
    await eventually(lambda: dnslog_messages(nats_server), timeout_seconds=10)

    assert refusals(services) == []


async def test_read_only_dns_waits_for_the_reconciler_to_create_what_it_reads(
    nats_server: NatsServer, services: Services
) -> None:
    port = start_dns(services)
    dns_log = services.running["dns"].log_path
    await eventually(lambda: "waiting for stream" in dns_log.read_text(), timeout_seconds=15)

    services.start("reconciler", "reconciler", env=credentials("reconciler"))
    services.start("health", "health", env=credentials("health"))
    await publish_seed_as_watcher(nats_server)

    await eventually(lambda: all_members_answered(port), timeout_seconds=30)


async def test_the_home_watcher_publishes_and_writes_status_back_under_its_own_user(
    nats_server: NatsServer, services: Services, tmp_path: Path
) -> None:
    sim = KubeSim(["s1az1"], vip_pools={"s1az1": ["127.10.25.46"]})
    await sim.start()
    api = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=sim.write_kubeconfig(str(tmp_path / "gslb-members")), context="s1az1"
    )
    custom = client.CustomObjectsApi(api)
    try:
        services.start("reconciler", "reconciler", env=credentials("reconciler"))
        await eventually(lambda: ready(services, "reconciler"), timeout_seconds=15)
        services.start(
            "watcher", "watcher", "--kubeconfig", str(tmp_path / "gslb-members"),
            "--context", "s1az1", "--home", "true", env=credentials("watcher"),
        )  # fmt: skip
        policy = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": "GlobalDeploymentPolicy",
            "metadata": {"name": "global-gdp", "namespace": "default"},
            "spec": {"trafficSplit": [{"cluster": "s1az1", "weight": 6}]},
        }
        await asyncio.to_thread(
            custom.create_namespaced_custom_object, API_GROUP, API_VERSION, "default",
            "globaldeploymentpolicies", policy,
        )  # fmt: skip

        async def written_back() -> str:
            current = await asyncio.to_thread(
                custom.get_namespaced_custom_object, API_GROUP, API_VERSION, "default",
                "globaldeploymentpolicies", "global-gdp",
            )  # fmt: skip
            return str((current.get("status") or {}).get("state", ""))

        assert await eventually(written_back, timeout_seconds=20) == "Accepted"
        assert refusals(services) == []
    finally:
        api.close()
        await sim.stop()


@pytest.mark.parametrize(
    "subject",
    [
        subjects.event_subject("s1az1", "Ingress", "default", "hello"),
        subjects.policy_subject("GlobalDeploymentPolicy", "avi-system", "global-gdp"),
        subjects.status_subject("GlobalDeploymentPolicy", "avi-system", "global-gdp"),
        f"$KV.{subjects.KV_SERVICES}.{subjects.fqdn_key(HELLO)}",
        f"$KV.{subjects.KV_HEALTH}.{subjects.member_key(HELLO, '127.10.25.46')}",
        f"$JS.API.STREAM.DELETE.{subjects.STREAM_EVENTS}",
        f"$JS.API.STREAM.PURGE.KV_{subjects.KV_SERVICES}",
    ],
)
async def test_the_dns_user_cannot_publish_outside_its_subjects(
    nats_server: NatsServer, subject: str
) -> None:
    errors: list[str] = []
    dns_client = await connect_as(nats_server, "dns", errors)
    admin = await connect_as(nats_server, "admin", [])
    witness = await admin.subscribe(subject)
    await admin.flush()

    await dns_client.publish(subject, b"{}")
    await dns_client.flush()
    await eventually(lambda: errors, timeout_seconds=5)

    assert errors == [f'nats: permissions violation for publish to "{subject.lower()}"']
    assert witness.pending_msgs == 0
    await dns_client.close()
    await admin.close()


async def test_the_dns_user_may_publish_query_logs(nats_server: NatsServer) -> None:
    errors: list[str] = []
    dns_client = await connect_as(nats_server, "dns", errors)
    admin = await connect_as(nats_server, "admin", [])
    witness = await admin.subscribe(f"{subjects.DNSLOG_PREFIX}.>")
    await admin.flush()

    await dns_client.publish(subjects.dnslog_subject("avi.iberia.local"), b"{}")
    await dns_client.flush()

    message = await witness.next_msg(timeout=5)
    assert message.subject == subjects.dnslog_subject("avi.iberia.local")
    assert errors == []
    await dns_client.close()
    await admin.close()


async def test_the_dns_user_cannot_subscribe_to_the_events(nats_server: NatsServer) -> None:
    errors: list[str] = []
    dns_client = await connect_as(nats_server, "dns", errors)

    await dns_client.subscribe(f"{subjects.EVENTS_PREFIX}.>")
    await dns_client.flush()
    await eventually(lambda: errors, timeout_seconds=5)

    assert errors == [
        f'nats: permissions violation for subscription to "{subjects.EVENTS_PREFIX}.>"'
    ]
    await dns_client.close()


async def test_a_wrong_password_is_refused(nats_server: NatsServer) -> None:
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(
            nats_server.url, user="dns", password="guess", connect_timeout=2,
            max_reconnect_attempts=0, allow_reconnect=False,
        )  # fmt: skip


async def test_service_logs_never_contain_a_password(
    nats_server: NatsServer, services: Services
) -> None:
    userinfo_url = nats_server.url.replace(
        "nats://", f"nats://reconciler:{PASSWORDS['reconciler']}@"
    )
    services.start("reconciler", "reconciler", env={"KGSLB_NATS_URL": userinfo_url})
    services.start("health", "health", env=credentials("health"))
    port = start_dns(services)
    await publish_seed_as_watcher(nats_server)
    await eventually(lambda: all_members_answered(port), timeout_seconds=20)
    services.stop_all()

    logs = "\n".join(p.log_path.read_text() for p in services.running.values())
    assert "started" in logs
    assert not [pw for pw in PASSWORDS.values() if pw in logs]
