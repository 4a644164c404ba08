"""The Gateway API and OpenShift Route sources end to end: objects applied to the Kubernetes
API simulator with the official client (its AKO stand-in assigns the Gateway's address,
accepts the routes and admits the Route) -> a real watcher process -> NATS -> reconciler ->
DNS answers; and a LoadBalancer Service that reports only a hostname, resolved by the watcher.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from nats.aio.client import Client

from kubesim.resources import CRDS, gateway_api_crds
from shared import subjects, wire
from shared.follow import read_values
from shared.models import GslbService
from tests.integration.conftest import Services, eventually
from tests.integration.test_watcher import (
    SERVICE_VIPS,
    VIPS,
    Kube,
    call,
    kube,
    metric,
    start_watcher,
    wait_ready,
)
from tests.integration.test_watcher_pipeline import publish_seed_policies, start_pipeline

__all__ = ["kube"]  # the fixture, shared with test_watcher

SHOP = "shop.avi.iberia.local"
GROUP = "gateway.networking.k8s.io"
ANSWER_WITHIN_SECONDS = 5.0
"""The issue's bound from apply (or delete) to the DNS answer (or its withdrawal)."""


async def addresses(port: int, name: str = SHOP) -> set[str]:
    query = dns.message.make_query(name, "A")
    reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=1)
    return {rr.address for rrset in reply.answer for rr in rrset}


async def settled(services: Services, port: int, *watchers: str) -> None:
    """The zone is served, the watchers have listed everything and the reconciler plans (its
    first-sync gate waits up to 10 s for the seed's clusters whose watcher does not run)."""
    soa = dns.message.make_query("avi.iberia.local", "SOA")
    await eventually(lambda: dns.asyncquery.udp(soa, "127.0.0.1", port=port, timeout=1), 30)
    for name in ("reconciler", *(watchers or ("watcher-s2",))):
        await wait_ready(services, name)


async def timed(check: Any, timeout: float = ANSWER_WITHIN_SECONDS) -> float:
    started = time.monotonic()
    await eventually(check, timeout_seconds=timeout, interval_seconds=0.05)
    return time.monotonic() - started


def gateway(
    name: str = "shop-gw", hostname: str | None = None, protocol: str = "HTTP", port: int = 80
) -> dict[str, Any]:
    listener: dict[str, Any] = {"name": "l", "protocol": protocol, "port": port}
    if hostname:
        listener["hostname"] = hostname
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"gatewayClassName": "avi-lb", "listeners": [listener]},
    }


def route(kind: str, name: str, hostnames: list[str], gateway_name: str = "shop-gw") -> Any:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "gslb"}},
        "spec": {"parentRefs": [{"name": gateway_name}], "hostnames": hostnames},
    }


async def create(kube: Kube, plural: str, body: dict[str, Any], version: str = "v1") -> None:
    group = body["apiVersion"].split("/")[0]
    await call(
        kube.custom("s2").create_namespaced_custom_object, group, version, "default", plural, body
    )


async def delete(kube: Kube, group: str, plural: str, name: str, version: str = "v1") -> None:
    await call(
        kube.custom("s2").delete_namespaced_custom_object, group, version, "default", plural, name
    )


async def gateway_address(kube: Kube, name: str = "shop-gw") -> str:
    async def assigned() -> str | None:
        obj = await call(
            kube.custom("s2").get_namespaced_custom_object, GROUP, "v1", "default", "gateways", name
        )
        found = (obj.get("status") or {}).get("addresses") or []
        return str(found[0]["value"]) if found else None

    await eventually(assigned)
    address = await assigned()
    assert address is not None
    return address


@pytest.mark.parametrize(
    ("kind", "plural", "protocol"),
    [("HTTPRoute", "httproutes", "HTTP"), ("GRPCRoute", "grpcroutes", "HTTPS"),
     ("TLSRoute", "tlsroutes", "TLS")],
)  # fmt: skip
async def test_a_gateway_route_makes_dns_answer_with_the_gateways_address_and_its_delete_withdraws_it(
    nats_client: Client, services: Services, kube: Kube, kind: str, plural: str, protocol: str
) -> None:
    port = start_pipeline(services)
    await publish_seed_policies(nats_client)
    start_watcher(services, kube, "s2")
    await settled(services, port)
    await create(
        kube, "gateways", gateway(protocol=protocol, port=80 if protocol == "HTTP" else 443)
    )
    address = await gateway_address(kube)
    assert address == VIPS["s2"], "the AKO stand-in gives a Gateway the shared VIP"

    await create(kube, plural, route(kind, "shop", [SHOP]))
    answered = await timed(lambda: _equals(addresses(port), {address}))

    await delete(kube, GROUP, plural, "shop")
    withdrawn = await timed(lambda: _equals(addresses(port), set()))
    print(f"{kind}: answered in {answered:.2f} s, withdrawn in {withdrawn:.2f} s")


async def test_listener_hostnames_restrict_the_routes_and_a_route_without_label_is_not_selected(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    port = start_pipeline(services)
    await publish_seed_policies(nats_client)
    start_watcher(services, kube, "s2")
    await settled(services, port)
    await create(kube, "gateways", gateway(hostname="*.avi.iberia.local"))
    address = await gateway_address(kube)
    other = "shop.example.org"
    body = route("HTTPRoute", "shop", [SHOP, other])
    await create(kube, "httproutes", body)
    await eventually(lambda: _equals(addresses(port), {address}), timeout_seconds=20)
    assert await _kv_keys(nats_client) == [SHOP], "the listener's wildcard leaves only shop"

    # The address is the Gateway's: its status changes, the answer follows.
    status = {"status": {"addresses": [{"type": "IPAddress", "value": "127.10.23.99"}]}}
    await call(
        kube.custom("s2").patch_namespaced_custom_object_status,
        GROUP, "v1", "default", "gateways", "shop-gw", status,
    )  # fmt: skip
    await eventually(lambda: _equals(addresses(port), {"127.10.23.99"}), timeout_seconds=20)

    unlabelled = route("HTTPRoute", "hidden", ["hidden.avi.iberia.local"])
    unlabelled["metadata"]["labels"] = {"app": "other"}
    await create(kube, "httproutes", unlabelled)
    await asyncio.sleep(2)
    assert await addresses(port, "hidden.avi.iberia.local") == set()


async def test_a_route_whose_gateway_does_not_exist_is_not_accepted_until_it_does(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    port = start_pipeline(services)
    await publish_seed_policies(nats_client)
    start_watcher(services, kube, "s2")
    await settled(services, port)
    await create(kube, "httproutes", route("HTTPRoute", "shop", [SHOP], gateway_name="later"))
    await asyncio.sleep(2)
    assert await addresses(port) == set(), "no parent accepted the route"

    await create(kube, "gateways", gateway("later"))
    address = await gateway_address(kube, "later")
    await eventually(lambda: _equals(addresses(port), {address}), timeout_seconds=20)

    await delete(kube, GROUP, "gateways", "later")
    await eventually(lambda: _equals(addresses(port), set()), timeout_seconds=20)


async def test_an_openshift_route_makes_dns_answer_with_the_routers_address(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    port = start_pipeline(services)
    await publish_seed_policies(nats_client)
    start_watcher(services, kube, "s2")
    await settled(services, port)
    body = {
        "apiVersion": "route.openshift.io/v1",
        "kind": "Route",
        "metadata": {"name": "shop", "namespace": "default", "labels": {"app": "gslb"}},
        "spec": {"host": SHOP, "to": {"kind": "Service", "name": "shop"}},
    }
    await create(kube, "routes", body)
    answered = await timed(lambda: _equals(addresses(port), {VIPS["s2"]}))

    await delete(kube, "route.openshift.io", "routes", "shop")
    withdrawn = await timed(lambda: _equals(addresses(port), set()))
    print(f"Route: answered in {answered:.2f} s, withdrawn in {withdrawn:.2f} s")


# Load balancers that report only a hostname ------------------------------------------------


def lb_service(name: str, hostname: str, labels: dict[str, str] | None = None) -> Any:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": labels or {"app": "gslb"},
            "annotations": {"external-dns.alpha.kubernetes.io/hostname": SHOP},
        },
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
    }


async def set_lb_status(kube: Kube, cluster: str, name: str, entries: list[dict[str, str]]) -> None:
    body = {"status": {"loadBalancer": {"ingress": entries}}}
    await call(kube.core(cluster).patch_namespaced_service_status, name, "default", body)


async def _kv_keys(nc: Client) -> list[str]:
    keys = await read_values(nc.jetstream(), subjects.KV_SERVICES)
    return sorted(subjects.fqdn_from_key(k) for k in keys)


async def _service(nc: Client, fqdn: str) -> GslbService | None:
    kv = await nc.jetstream().key_value(subjects.KV_SERVICES)
    try:
        entry = await kv.get(subjects.fqdn_key(fqdn))
    except Exception:
        return None
    return wire.decode(entry.value, GslbService) if entry.value else None


async def _equals(value: Any, expected: Any) -> bool:
    return await value == expected


class LocalDns:
    """A tiny authoritative DNS server on loopback for one name, whose A records the test
    changes; TTL 1 s so that the watcher's TTL-driven refresh is quick."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.addresses: list[str] = []
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        server = self

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                server.queries += 1
                query = dns.message.from_wire(data)
                reply = dns.message.make_response(query)
                question = query.question[0]
                if str(question.name).rstrip(".") != server.name:
                    reply.set_rcode(dns.rcode.NXDOMAIN)
                elif question.rdtype == dns.rdatatype.A and server.addresses:
                    reply.answer.append(
                        dns.rrset.from_text_list(question.name, 1, "IN", "A", server.addresses)
                    )
                assert self.transport is not None
                self.transport.sendto(reply.to_wire(), addr)

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport  # type: ignore[assignment]

            transport: asyncio.DatagramTransport | None = None

        transport, _ = await loop.create_datagram_endpoint(Protocol, sock=self.sock)
        self._transport = transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


@pytest.fixture
async def local_dns() -> AsyncIterator[LocalDns]:
    server = LocalDns("lb-1234.elb.example.test")
    await server.start()
    try:
        yield server
    finally:
        server.close()


async def test_a_load_balancer_that_reports_only_a_hostname_is_a_member_kept_fresh(
    nats_client: Client, services: Services, kube: Kube, local_dns: LocalDns
) -> None:
    port = start_pipeline(services)
    await publish_seed_policies(nats_client)
    local_dns.addresses = ["127.10.23.71"]
    start_watcher(
        services, kube, "s2",
        "--hostname-resolver", f"127.0.0.1:{local_dns.port}",
        "--hostname-min-refresh-seconds", "0.5",
        "--hostname-refresh-seconds", "2",
    )  # fmt: skip
    start_watcher(services, kube, "s1az1")
    await settled(services, port, "watcher-s2", "watcher-s1az1")
    await call(kube.core("s2").create_namespaced_service, "default", lb_service("shop", ""))
    await set_lb_status(kube, "s2", "shop", [{"hostname": local_dns.name}])
    await eventually(lambda: _equals(addresses(port), {"127.10.23.71"}), timeout_seconds=20)
    service = await _service(nats_client, SHOP)
    assert service is not None
    [member] = service.all_members()
    assert member.sources == [f"SERVICE/s2/default/shop via {local_dns.name}"]

    # The load balancer's addresses change behind its name: the TTL-driven refresh follows.
    local_dns.addresses = ["127.10.23.72", "127.10.23.73"]
    await eventually(
        lambda: _equals(_all_answers(port), {"127.10.23.72", "127.10.23.73"}), timeout_seconds=20
    )

    # Mixed members: an IP-reporting load balancer in s1az1 beside the hostname one in s2.
    await call(kube.core("s1az1").create_namespaced_service, "default", lb_service("shop", ""))
    expected = {"127.10.23.72", "127.10.23.73", SERVICE_VIPS["s1az1"]}
    await eventually(lambda: _equals(_all_answers(port), expected), timeout_seconds=20)

    # A name that stops resolving keeps the addresses resolved before (and the watcher says
    # so in its log and kgslb_watcher_hostnames{state="failing"}); asked again each period.
    local_dns.addresses = []
    queries = local_dns.queries
    await eventually(lambda: _more(local_dns, queries + 4))
    assert await _all_answers(port) == expected
    failing = metric(services, "watcher-s2", "kgslb_watcher_hostnames", state="failing")
    assert await failing == 1


async def test_the_system_resolver_resolves_localhost(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    port = start_pipeline(services)
    await publish_seed_policies(nats_client)
    start_watcher(services, kube, "s2")
    await settled(services, port)
    await call(kube.core("s2").create_namespaced_service, "default", lb_service("shop", ""))
    await set_lb_status(kube, "s2", "shop", [{"hostname": "localhost"}])
    await eventually(lambda: _equals(addresses(port), {"127.0.0.1"}), timeout_seconds=20)


async def _more(server: LocalDns, count: int) -> bool:
    return server.queries >= count


async def _all_answers(port: int) -> set[str]:
    seen: set[str] = set()
    for _ in range(12):
        seen |= await addresses(port)
    return seen


async def test_a_cluster_without_the_gateway_api_is_ready_and_picks_it_up_once_installed(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    store = kube.sim.store("s2")
    crds = {crd["metadata"]["name"]: crd for crd in gateway_api_crds()}
    for name in crds:
        store.delete(CRDS, None, name)
    port = start_pipeline(services)
    await publish_seed_policies(nats_client)
    start_watcher(services, kube, "s2", "--absent-recheck-seconds", "1")
    await settled(services, port)  # ready, with no Gateway API and no Route served

    for crd in crds.values():
        store.create(CRDS, None, crd)
    await create(kube, "gateways", gateway())
    address = await gateway_address(kube)
    await create(kube, "httproutes", route("HTTPRoute", "shop", [SHOP]))
    await eventually(lambda: _equals(addresses(port), {address}), timeout_seconds=20)
