"""Zone delegation with a real recursive resolver: unbound (Debian) sends queries for
avi.iberia.local to the kgslb DNS through a stub-zone, as the company DNS would after the
seed's "New Delegation" wizard."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.asyncresolver
import dns.flags
import dns.message
import dns.query
import dns.resolver
import pytest
from nats.aio.client import Client

from kgslb.embedded import free_port
from tests.integration.conftest import Services, eventually
from tests.integration.test_pipeline import SEED_SHARES, publish_seed, serving_all_members
from tests.integration.unbound import UNBOUND, start, write_config

pytestmark = pytest.mark.skipif(
    UNBOUND is None, reason="unbound not installed (Debian package `unbound`)"
)


def unbound_config(directory: Path, port: int, kgslb_port: int) -> Path:
    return write_config(
        directory,
        port,
        """
    module-config: "iterator"
    # The parent zone iberia.local is the company's own; it names the kgslb DNS g-dns.
    local-zone: "iberia.local." transparent
    local-data: "g-dns.iberia.local. 3600 IN A 127.0.0.1"
    domain-insecure: "iberia.local."
    cache-max-ttl: 1
""",
        f"""
stub-zone:
    name: "avi.iberia.local."
    stub-addr: 127.0.0.1@{kgslb_port}
    stub-first: no
""",
    )


@pytest.fixture
def unbound(tmp_path: Path, services: Services) -> Iterator[int]:
    assert UNBOUND is not None
    kgslb_port = services.dns_port or services.start_dns()
    port = free_port()
    process = start(unbound_config(tmp_path, port, kgslb_port), port)
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)


def resolver(port: int) -> dns.asyncresolver.Resolver:
    res = dns.asyncresolver.Resolver(configure=False)
    res.nameservers = ["127.0.0.1"]
    res.port = port
    res.lifetime = 3
    return res


async def test_names_in_the_delegated_zone_resolve_through_the_company_resolver(
    nats_client: Client, services: Services, unbound: int
) -> None:
    services.start("reconciler", "reconciler")
    await publish_seed(nats_client)
    await eventually(lambda: serving_all_members(services.dns_port), timeout_seconds=20)

    static = await resolver(unbound).resolve("test.avi.iberia.local", "A")
    hello = await resolver(unbound).resolve("hello.avi.iberia.local", "A")

    assert [rr.address for rr in static] == ["10.10.24.200"]
    assert hello[0].address in SEED_SHARES
    # The answer came through recursion: the resolver sets RA, the kgslb DNS never does.
    assert hello.response.flags & dns.flags.RA


async def test_the_soa_that_validates_the_delegation_comes_from_kgslb(
    nats_client: Client, services: Services, unbound: int
) -> None:
    services.start("reconciler", "reconciler")
    await publish_seed(nats_client)
    await eventually(lambda: serving_all_members(services.dns_port), timeout_seconds=20)

    soa = await resolver(unbound).resolve("avi.iberia.local", "SOA")

    assert soa[0].mname.to_text() == "g-dns.iberia.local."
    direct = dns.query.udp(
        dns.message.make_query("avi.iberia.local", "SOA"), "127.0.0.1",
        port=services.dns_port, timeout=1,
    )  # fmt: skip
    assert direct.flags & dns.flags.AA and not direct.flags & dns.flags.RA


async def test_unknown_names_in_the_zone_are_nxdomain_through_the_resolver(
    nats_client: Client, services: Services, unbound: int
) -> None:
    services.start("reconciler", "reconciler")
    await publish_seed(nats_client)
    await eventually(lambda: serving_all_members(services.dns_port), timeout_seconds=20)

    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver(unbound).resolve("nothing-here.avi.iberia.local", "A")
