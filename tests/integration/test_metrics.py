"""Every service serves Prometheus /metrics with the families an operator needs, scraped from
real processes after the seed went through them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.message
import httpx
import pytest
import pytest_asyncio
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from kgslb.embedded import NatsServer
from kgslb.up import load_stack_config, seed_messages
from kubesim import KubeSim
from shared import bus, wire
from shared.settings import NatsSettings
from tests.integration.conftest import Services, eventually

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "examples" / "seed" / "kgslb.yaml"
HELLO = "hello.avi.iberia.local"
ZONE = "avi.iberia.local"

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def scrape(services: Services, name: str) -> dict[str, Metric]:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{services.ops_ports[name]}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def value(family: Metric, **labels: str) -> float:
    return sum(
        sample.value
        for sample in family.samples
        if labels.items() <= sample.labels.items() and not sample.name.endswith("_created")
    )


async def ready(services: Services, name: str) -> bool:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{services.ops_ports[name]}/readyz")
    return response.status_code == 200


async def answered(port: int) -> bool:
    query = dns.message.make_query(HELLO, "A")
    reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=1)
    return bool(reply.answer)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Services]:
    """reconciler, health, dns and a watcher of s1az1 on one nats-server, with the seed
    answered once; shared by the module because every test only reads /metrics."""
    state = tmp_path_factory.mktemp("metrics")
    nats = NatsServer(state / "jetstream")
    nats.start()
    services = Services(nats, state / "logs")
    sim = KubeSim(["s1az1"])
    await sim.start()
    nc = await bus.connect(NatsSettings(nats_url=nats.url), "kgslb-test")
    try:
        js = nc.jetstream()
        await bus.bootstrap(js)
        kubeconfig = sim.write_kubeconfig(str(state / "gslb-members"))
        services.start("reconciler", "reconciler")
        services.start("health", "health")
        services.start("watcher", "watcher", "--kubeconfig", kubeconfig, "--context", "s1az1")
        port = services.start_dns()
        for subject, message in seed_messages(load_stack_config(SEED)):
            await js.publish(subject, wire.encode(message))
        await eventually(lambda: answered(port), timeout_seconds=20)
        for name in services.running:
            await eventually(lambda name=name: ready(services, name), timeout_seconds=20)
        yield services
    finally:
        await nc.drain()
        services.stop_all()
        await sim.stop()
        nats.stop()


@pytest.mark.parametrize("service", ["reconciler", "health", "dns", "watcher"])
async def test_every_service_serves_process_and_bad_message_metrics(
    running: Services, service: str
) -> None:
    families = await scrape(running, service)

    assert value(families["process_cpu_seconds"]) > 0
    assert "kgslb_bad_messages" in families


async def test_dns_counts_queries_by_rcode_qtype_and_zone(running: Services) -> None:
    families = await scrape(running, "dns")

    assert value(families["kgslb_dns_queries"], rcode="NOERROR", qtype="A", zone=ZONE) >= 1


async def test_dns_counts_answers_by_fqdn_and_member(running: Services) -> None:
    before = value((await scrape(running, "dns"))["kgslb_dns_answers"], fqdn=HELLO)
    members: set[str] = set()

    for _ in range(30):
        reply = await dns.asyncquery.udp(
            dns.message.make_query(HELLO, "A"), "127.0.0.1", port=running.dns_port, timeout=2
        )
        members |= {rr.address for rrset in reply.answer for rr in rrset}

    families = await scrape(running, "dns")
    assert value(families["kgslb_dns_answers"], fqdn=HELLO) - before == 30
    labelled = {
        sample.labels["ip"]
        for sample in families["kgslb_dns_answers"].samples
        if sample.labels["fqdn"] == HELLO and sample.value > 0
    }
    assert labelled >= members
    assert all(s.labels["cluster"] for s in families["kgslb_dns_answers"].samples)


async def test_dns_has_a_latency_histogram_per_transport(running: Services) -> None:
    def observed(families: dict[str, Metric], transport: str) -> float:
        return next(
            s.value
            for s in families["kgslb_dns_response_seconds"].samples
            if s.name.endswith("_count") and s.labels["transport"] == transport
        )

    before = await scrape(running, "dns")
    for _ in range(5):
        query = dns.message.make_query(HELLO, "A")
        await dns.asyncquery.udp(query, "127.0.0.1", port=running.dns_port, timeout=2)
        await dns.asyncquery.tcp(query, "127.0.0.1", port=running.dns_port, timeout=2)

    after = await scrape(running, "dns")
    assert after["kgslb_dns_response_seconds"].type == "histogram"
    assert observed(after, "udp") - observed(before, "udp") == 5
    assert observed(after, "tcp") - observed(before, "tcp") == 5
    total = [s for s in after["kgslb_dns_response_seconds"].samples if s.name.endswith("_sum")]
    assert all(0 < s.value < 10 for s in total)


async def test_reconciler_counts_plans_rejected_objects_and_kv_writes(running: Services) -> None:
    families = await scrape(running, "reconciler")

    assert value(families["kgslb_reconciler_plans"]) >= 1
    assert [s.value for s in families["kgslb_reconciler_rejected_objects"].samples] == [0]
    assert value(families["kgslb_reconciler_kv_writes"], bucket="kgslb_services", op="put") >= 1


async def test_health_counts_probes_by_result_and_members_by_state(running: Services) -> None:
    async def probed() -> dict[str, Metric] | None:
        families = await scrape(running, "health")
        return families if value(families["kgslb_health_probes"]) > 0 else None

    families = await eventually(probed, timeout_seconds=30)

    assert all("outcome" in s.labels for s in families["kgslb_health_probes"].samples)
    assert value(families["kgslb_health_members"]) >= 1
    assert {s.labels["state"] for s in families["kgslb_health_members"].samples} >= {"up", "down"}


async def test_watcher_counts_events_relists_and_api_errors_per_cluster(running: Services) -> None:
    families = await scrape(running, "watcher")

    assert value(families["kgslb_watcher_events_published"], cluster="s1az1") >= 1
    assert {k for s in families["kgslb_watcher_relists"].samples for k in s.labels} <= {
        "cluster", "resource", "reason",
    }  # fmt: skip
    assert "kgslb_watcher_api_errors" in families
    assert value(families["kgslb_watcher_cluster_reachable"], cluster="s1az1") == 1
