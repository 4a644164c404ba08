"""The pipeline the fault tests break: simulator -> watchers -> reconciler -> health -> DNS,
with hello backends on the seed VIPs and a quick TCP monitor, plus the helpers they share."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import httpx
from nats.aio.client import Client

from kgslb.backends import HelloBackends, HelloSite
from kgslb.up import load_stack_config
from tests.integration.conftest import Services, eventually
from tests.integration.test_watcher import HOST, VIPS, Kube, start_watcher
from tests.integration.test_watcher_pipeline import publish_seed_policies

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "kgslb.yaml"
ZONE = "avi.iberia.local"
INTERVAL_SECONDS = 0.3
FAILURES_TO_DOWN = 3
SUCCESSES_TO_UP = 2


def quick_monitor(port: int, kind: str = "tcp") -> dict[str, Any]:
    return {
        "kind": kind,
        "port": port,
        "intervalSeconds": INTERVAL_SECONDS,
        "timeoutSeconds": 0.25,
        "successesToUp": SUCCESSES_TO_UP,
        "failuresToDown": FAILURES_TO_DOWN,
    }


def seed_gdp(monitor: dict[str, Any]) -> dict[str, Any]:
    """The seed's GDP (all three clusters, split 6:4:2) with `monitor` as its template."""
    spec = dict(load_stack_config(SEED).global_deployment_policies[0].spec)
    spec["healthMonitorTemplate"] = monitor
    return spec


@contextlib.asynccontextmanager
async def hello_backends(
    port: int, hosts: tuple[str, ...] = (HOST,)
) -> AsyncIterator[HelloBackends]:
    backends = HelloBackends(
        HelloSite(cluster, vip, port, cluster.upper(), hosts) for cluster, vip in VIPS.items()
    )
    await backends.start()
    try:
        yield backends
    finally:
        await backends.stop()


async def start_pipeline(
    nc: Client, services: Services, kube: Kube, backend_port: int, clusters: Iterable[str]
) -> int:
    """Policies on NATS, one watcher per cluster, reconciler, health and DNS; the DNS port."""
    await publish_seed_policies(nc, seed_gdp(quick_monitor(backend_port)))
    for cluster in clusters:
        start_watcher(services, kube, cluster)
    services.start("reconciler", "reconciler")
    services.start("health", "health")
    return services.start_dns()


async def addresses(port: int, name: str = HOST, count: int = 12) -> set[str]:
    out: set[str] = set()
    for _ in range(count):
        query = dns.message.make_query(name, "A")
        reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=1)
        out.update(rr.address for rrset in reply.answer for rr in rrset)
    return out


async def soa_serial(port: int) -> int:
    """The zone's serial as the DNS answers it: proof that it serves the zone."""
    query = dns.message.make_query(ZONE, "SOA")
    reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=1)
    return int(reply.answer[0][0].serial)


async def answering(port: int, expected: set[str], name: str = HOST) -> bool:
    return await addresses(port, name) == expected


async def ready(services: Services, name: str) -> bool:
    async with httpx.AsyncClient() as http:
        url = f"http://127.0.0.1:{services.ops_ports[name]}/readyz"
        try:
            return (await http.get(url, timeout=1)).status_code == 200
        except httpx.HTTPError:
            return False


async def all_ready(services: Services) -> bool:
    return all([await ready(services, name) for name in services.running])


async def wait_all_ready(services: Services, timeout_seconds: float = 20) -> None:
    await eventually(lambda: all_ready(services), timeout_seconds=timeout_seconds)
