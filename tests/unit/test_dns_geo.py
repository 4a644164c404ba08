"""The Geo algorithm: where a GeoIP record puts a client, which located site is nearest, and
the decision for a name (the nearest site with a healthy member, else the fallback), with a
small real MaxMind-format database written by `mmdb-writer` (tests/geoip_db.py)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import maxminddb
import pytest

from services.dns import wire
from services.dns.algorithms import Caching, Client
from services.dns.geo import GeoIp, GeoSite, Place, distance_km, place_of, ranked_sites
from services.dns.geoip_file import GeoIpFile
from services.dns.gslb import GslbName, NameSpec, decide
from services.dns.table import AnswerTable
from shared.models import (
    Algorithm,
    GeoLocation,
    GslbService,
    HealthState,
    Member,
    PriorityGroup,
    SiteLocation,
)
from shared.subjects import member_key
from tests.geoip_db import (
    CONTINENT_ONLY,
    ES_V4,
    ES_V6,
    FR_NO_COORDINATES,
    JP_V4,
    MADRID,
    TOKYO,
    UNKNOWN_V4,
    city,
    write_database,
)

FQDN = "geo.avi.iberia.local"
LOCATIONS = {
    "es": GeoLocation(latitude=40.4168, longitude=-3.7038, country="ES", continent="EU"),
    "us-west": GeoLocation(latitude=37.7749, longitude=-122.4194, country="US", continent="NA"),
    "de": GeoLocation(latitude=50.1109, longitude=8.6821, country="DE", continent="EU"),
}
MEMBERS = {"es": "127.10.1.1", "us-west": "127.10.2.1", "de": "127.10.3.1", "plain": "127.10.4.1"}
"""One member per cluster; `plain` has no location."""
SITES = tuple(
    sorted(
        GeoSite(site, Place(loc.country, loc.continent, loc.latitude, loc.longitude))
        for site, loc in LOCATIONS.items()
    )
)


def first_address(network: str) -> str:
    return network.split("/")[0]


def client_in(network: str, prefix: int = 24) -> Client:
    """A client known by its ECS subnet inside `network`."""
    return Client(first_address(network), prefix)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> GeoIp:
    path = write_database(tmp_path_factory.mktemp("geoip") / "test.mmdb")
    reader = maxminddb.open_database(str(path), maxminddb.MODE_MEMORY)
    return GeoIp(reader.get_with_prefix_len, str(path))


def geo_name(
    geoip: GeoIp, down: tuple[str, ...] = (), fallback: Algorithm | None = None
) -> GslbName:
    members = [Member(ip=ip, cluster=cluster, weight=1) for cluster, ip in MEMBERS.items()]
    service = GslbService(
        fqdn=FQDN,
        ttl_seconds=30,
        algorithm=Algorithm.GEO,
        fallback_algorithm=fallback,
        groups=[PriorityGroup(priority=10, members=members)],
        site_locations=[SiteLocation(site=s, location=loc) for s, loc in LOCATIONS.items()],
    )
    health = {member_key(FQDN, MEMBERS[cluster]): HealthState.DOWN for cluster in down}
    return GslbName(NameSpec.of(service, {}, geoip), health)


def answered_clusters(name: GslbName, client: Client, qtype: int = wire.A) -> set[str]:
    pick = decide(name, qtype, client)
    assert pick is not None
    return {member.cluster for member in pick.rotation.members}


# Where a record puts a client ------------------------------------------------------------


def test_a_city_record_gives_country_continent_and_coordinates() -> None:
    record = {
        "city": {"names": {"en": "Madrid"}},
        "continent": {"code": "EU"},
        "country": {"iso_code": "ES"},
        "location": {"latitude": MADRID[0], "longitude": MADRID[1], "accuracy_radius": 20},
    }
    assert place_of(record) == Place("ES", "EU", *MADRID)


def test_a_country_record_has_no_coordinates_and_registered_country_stands_in() -> None:
    assert place_of({"country": {"iso_code": "fr"}, "continent": {"code": "EU"}}) == Place(
        "FR", "EU"
    )
    assert place_of({"registered_country": {"iso_code": "JP"}}) == Place("JP")


@pytest.mark.parametrize(
    "record",
    [None, {}, "ES", {"country": "ES"}, {"location": {"latitude": 1.0}}, {"traits": {"x": 1}}],
)
def test_a_record_that_places_nothing_is_no_place(record: object) -> None:
    assert place_of(record) is None


def test_distance_is_great_circle() -> None:
    madrid, tokyo = (
        Place(latitude=MADRID[0], longitude=MADRID[1]),
        Place(latitude=TOKYO[0], longitude=TOKYO[1]),
    )
    assert distance_km(madrid, tokyo) == pytest.approx(10_770, rel=0.01)
    assert distance_km(madrid, madrid) == 0


# Which site is nearest -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        (Place("ES", "EU", *MADRID), ("es", "de", "us-west")),
        (Place("JP", "AS", *TOKYO), ("us-west", "de", "es")),
        (Place("FR", "EU"), ("de", "es")),
        (Place("PT", "EU", 38.72, -9.14), ("es", "de", "us-west")),
        (Place(continent="NA"), ("us-west",)),
        (Place(continent="AF"), ()),
        (Place("DE"), ("de",)),
    ],
    ids=[
        "Spain: its country's site first, then its continent's",
        "Japan, no site in its country or continent: by distance",
        "France without coordinates: the sites of its continent, by name",
        "Lisbon: the continent's sites nearest first, then the rest by distance",
        "only a continent: that continent's site",
        "a continent with no site and no coordinates: no candidate (the fallback decides)",
        "only a country: that country's site",
    ],
)
def test_sites_are_ranked_by_country_then_continent_then_distance(
    client: Place, expected: tuple[str, ...]
) -> None:
    assert ranked_sites(client, SITES) == expected


# The decision ----------------------------------------------------------------------------


def test_a_client_in_the_es_block_gets_the_spanish_site(database: GeoIp) -> None:
    name = geo_name(database)
    assert answered_clusters(name, client_in(ES_V4)) == {"es"}
    assert answered_clusters(name, Client(first_address(ES_V6), 56), wire.A) == {"es"}


def test_a_client_in_the_jp_block_gets_the_nearest_configured_site(database: GeoIp) -> None:
    assert answered_clusters(geo_name(database), client_in(JP_V4)) == {"us-west"}


def test_a_site_without_healthy_members_hands_over_to_the_next_nearest(
    database: GeoIp,
) -> None:
    assert answered_clusters(geo_name(database, down=("es",)), client_in(ES_V4)) == {"de"}


def test_unknown_clients_get_the_fallback_over_every_healthy_member(database: GeoIp) -> None:
    name = geo_name(database)
    everyone = set(MEMBERS)
    assert answered_clusters(name, Client(UNKNOWN_V4, 32)) == everyone
    assert answered_clusters(name, Client("")) == everyone
    # Placed, but near no located site: also the fallback.
    assert answered_clusters(geo_name(database, down=("us-west",)), client_in(CONTINENT_ONLY)) == (
        everyone - {"us-west"}
    )


def test_without_a_database_every_client_gets_the_fallback() -> None:
    name = geo_name(GeoIp())
    pick = decide(name, wire.A, client_in(ES_V4))
    assert pick is not None
    assert {m.cluster for m in pick.rotation.members} == set(MEMBERS)
    assert (pick.client_position, pick.ecs_scope, pick.caching) == (None, 24, Caching.TURNS)


def test_the_ecs_scope_is_the_clients_network_in_the_database(database: GeoIp) -> None:
    name = geo_name(database)
    es = decide(name, wire.A, client_in(ES_V4, 32))
    assert es is not None and (es.ecs_scope, es.caching) == (24, Caching.TURNS)
    fr = decide(name, wire.A, client_in(FR_NO_COORDINATES, 24))
    assert fr is not None and fr.ecs_scope == 25
    # A consistent-hash fallback depends on the hashed /24 as well.
    unknown = decide(
        geo_name(database, fallback=Algorithm.CONSISTENT_HASH), wire.A, Client(UNKNOWN_V4, 32)
    )
    assert unknown is not None and unknown.client_position is not None
    assert unknown.ecs_scope == 24 and unknown.caching == Caching.FIXED


def test_a_client_known_by_its_source_address_is_never_cached(database: GeoIp) -> None:
    pick = decide(geo_name(database), wire.A, Client(first_address(ES_V4)))
    assert pick is not None
    assert {m.cluster for m in pick.rotation.members} == {"es"}
    assert (pick.ecs_scope, pick.caching) == (0, Caching.NEVER)


def test_the_name_keeps_a_rotation_for_each_located_site_only(database: GeoIp) -> None:
    name = geo_name(database)
    assert {site for site, _ in name.sites} == set(LOCATIONS)


# Reading the file, and again when it changes ----------------------------------------------


def test_the_database_is_read_again_when_the_file_changes(tmp_path: Path) -> None:
    path = write_database(tmp_path / "geo.mmdb")
    table = AnswerTable()
    watcher = GeoIpFile(str(path), table, check_seconds=1)

    async def scenario() -> None:
        assert await watcher.check()
        name = geo_name(table.geoip)
        assert answered_clusters(name, client_in(JP_V4)) == {"us-west"}
        generation = table.generation
        assert not await watcher.check()  # unchanged: not read again
        assert table.generation == generation
        # The JP block moves to Spain in a new version of the file.
        write_database(path, {JP_V4: city("ES", "EU", MADRID)})
        os.utime(path, ns=(1, 1))  # a different mtime even within the clock's resolution
        assert await watcher.check()
        assert table.generation > generation  # cached responses are dropped
        assert answered_clusters(name, client_in(JP_V4)) == {"es"}
        # A broken file keeps the database in use; a missing one too.
        path.write_bytes(b"not a database")
        assert not await watcher.check()
        assert answered_clusters(name, client_in(JP_V4)) == {"es"}
        path.unlink()
        assert not await watcher.check()
        assert answered_clusters(name, client_in(JP_V4)) == {"es"}

    asyncio.run(scenario())


def test_a_missing_file_at_start_means_no_database_until_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "later.mmdb"
    table = AnswerTable()
    watcher = GeoIpFile(str(path), table, check_seconds=1)

    async def scenario() -> None:
        assert not await watcher.check()
        assert not table.geoip.loaded
        write_database(path)
        assert await watcher.check()
        assert answered_clusters(geo_name(table.geoip), client_in(ES_V4)) == {"es"}

    asyncio.run(scenario())


def test_an_address_the_database_cannot_look_up_echoes_the_subnet_asked(tmp_path: Path) -> None:
    path = write_database(tmp_path / "v4.mmdb", {ES_V4: city("ES", "EU", MADRID)}, ip_version=4)
    reader = maxminddb.open_database(str(path), maxminddb.MODE_MEMORY)
    name = geo_name(GeoIp(reader.get_with_prefix_len))
    pick = decide(name, wire.A, Client("2001:db8:e5::", 48))
    assert pick is not None
    assert {m.cluster for m in pick.rotation.members} == set(MEMBERS)  # the fallback
    assert pick.ecs_scope == 48  # not 0, which would let every client share the answer
