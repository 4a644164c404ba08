"""A Geo name answered by a real DNS process over real NATS, asked with dnspython and an EDNS
Client Subnet: the database (tests/geoip_db.py, written by mmdb-writer) puts the ES block in
Madrid and the JP block in Tokyo; the DNS reads it from `--geoip-database` and again when the
file changes."""

from __future__ import annotations

import os
from pathlib import Path

import dns.asyncquery
import dns.edns
import dns.message
from nats.aio.client import Client

from kgslb.embedded import free_port
from shared.models import (
    Algorithm,
    GeoLocation,
    GslbService,
    Member,
    PriorityGroup,
    SiteLocation,
)
from tests.geoip_db import ES_V4, JP_V4, MADRID, UNKNOWN_V4, city, write_database
from tests.integration.conftest import Services, eventually
from tests.integration.test_dns_protocol import ZONE, zone
from tests.integration.test_dns_updates import put_service, put_zone

GEO = f"geo.{ZONE}"
SITES = {
    "es": ("127.10.1.1", GeoLocation(latitude=40.4168, longitude=-3.7038, country="ES")),
    "us-west": ("127.10.2.1", GeoLocation(latitude=37.7749, longitude=-122.4194, country="US")),
    "de": ("127.10.3.1", GeoLocation(latitude=50.1109, longitude=8.6821, country="DE")),
}
ADDRESS = {site: ip for site, (ip, _) in SITES.items()}


def geo_service() -> GslbService:
    return GslbService(
        fqdn=GEO,
        ttl_seconds=30,
        algorithm=Algorithm.GEO,
        fallback_algorithm=Algorithm.ROUND_ROBIN,
        groups=[
            PriorityGroup(
                priority=10,
                members=[Member(ip=ip, cluster=site, weight=1) for site, (ip, _) in SITES.items()],
            )
        ],
        site_locations=[SiteLocation(site=s, location=loc) for s, (_, loc) in SITES.items()],
    )


async def ask(port: int, subnet: str, prefix: int = 24) -> dns.message.Message:
    query = dns.message.make_query(
        GEO, "A", use_edns=0, options=[dns.edns.ECSOption(subnet, prefix)]
    )
    return await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=2)


async def answer(port: int, subnet: str, prefix: int = 24) -> str:
    return str((await ask(port, subnet, prefix)).answer[0][0].address)


def echoed_scope(response: dns.message.Message) -> int:
    (option,) = [o for o in response.options if isinstance(o, dns.edns.ECSOption)]
    return int(option.scopelen)


async def geo_dns(nc: Client, services: Services, database: Path) -> int:
    await put_zone(nc, zone())
    await put_service(nc, geo_service())
    port = free_port()
    services.start(
        "dns", "dns", "--dns-port", str(port), "--log-per-second", "0",
        "--geoip-database", str(database), "--geoip-check-seconds", "0.2",
    )  # fmt: skip
    await eventually(lambda: answer(port, ES_V4.split("/")[0]), timeout_seconds=30)
    return port


async def test_clients_get_their_countrys_site_or_the_nearest_one_by_their_ecs_subnet(
    nats_client: Client, services: Services, tmp_path: Path
) -> None:
    port = await geo_dns(nats_client, services, write_database(tmp_path / "geo.mmdb"))

    spain = await ask(port, "198.51.100.0")
    assert [str(r.address) for r in spain.answer[0]] == [ADDRESS["es"]]
    assert echoed_scope(spain) == 24  # the ES block is a /24 in the database
    for _ in range(3):  # the same answer every time, not a rotation over the sites
        assert await answer(port, "198.51.100.128", 25) == ADDRESS["es"]
    # Tokyo: no site in Japan or Asia; San Francisco is nearer than Frankfurt and Madrid.
    assert await answer(port, JP_V4.split("/")[0]) == ADDRESS["us-west"]


async def test_unknown_clients_get_the_fallback_round_robin_over_every_site(
    nats_client: Client, services: Services, tmp_path: Path
) -> None:
    port = await geo_dns(nats_client, services, write_database(tmp_path / "geo.mmdb"))

    answered = {await answer(port, UNKNOWN_V4, 32) for _ in range(9)}
    assert answered == set(ADDRESS.values())
    # Without ECS the client is the source address, 127.0.0.1: unknown to the database too.
    plain = dns.message.make_query(GEO, "A")
    seen = set()
    for _ in range(9):
        response = await dns.asyncquery.udp(plain, "127.0.0.1", port=port, timeout=2)
        seen.add(str(response.answer[0][0].address))
    assert seen == set(ADDRESS.values())


async def test_a_changed_database_file_is_read_again_and_answers_follow_it(
    nats_client: Client, services: Services, tmp_path: Path
) -> None:
    database = write_database(tmp_path / "geo.mmdb")
    port = await geo_dns(nats_client, services, database)
    jp = JP_V4.split("/")[0]
    assert await answer(port, jp) == ADDRESS["us-west"]

    # A new version of the database, written beside it and renamed over it (as geoipupdate
    # does), puts the JP block in Madrid.
    replacement = write_database(tmp_path / "geo.mmdb.new", {JP_V4: city("ES", "EU", MADRID)})
    os.replace(replacement, database)

    async def moved() -> bool:
        return await answer(port, jp) == ADDRESS["es"]

    await eventually(moved, timeout_seconds=30)
    # The ES block is gone from the new file: those clients now get the fallback.
    assert {await answer(port, "198.51.100.0") for _ in range(9)} == set(ADDRESS.values())
