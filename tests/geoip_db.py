"""A small MaxMind-format database for the Geo tests, written with `mmdb-writer` (nothing is
downloaded): the records have the shape of GeoIP2 City records (country, continent,
location), for documentation networks and loopback-free test blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdb_writer import MmdbF64, MMDBWriter
from netaddr import IPSet

ES_V4 = "198.51.100.0/24"
"""Madrid, Spain."""
ES_V6 = "2001:db8:e5::/48"
JP_V4 = "203.0.113.0/24"
"""Tokyo, Japan."""
FR_NO_COORDINATES = "192.0.2.0/25"
"""France, country and continent only."""
CONTINENT_ONLY = "192.0.2.128/25"
"""Only a continent: North America."""
UNKNOWN_V4 = "100.64.0.1"
"""In no block of the database."""

MADRID = (40.4168, -3.7038)
TOKYO = (35.6762, 139.6503)


def city(country: str, continent: str, where: tuple[float, float] | None) -> dict[str, Any]:
    record: dict[str, Any] = {"country": {"iso_code": country}, "continent": {"code": continent}}
    if where is not None:
        record["location"] = {"latitude": MmdbF64(where[0]), "longitude": MmdbF64(where[1])}
    return record


BLOCKS: dict[str, dict[str, Any]] = {
    ES_V4: city("ES", "EU", MADRID),
    ES_V6: city("ES", "EU", MADRID),
    JP_V4: city("JP", "AS", TOKYO),
    FR_NO_COORDINATES: city("FR", "EU", None),
    CONTINENT_ONLY: {"continent": {"code": "NA"}},
}


def write_database(
    path: Path, blocks: dict[str, dict[str, Any]] | None = None, ip_version: int = 6
) -> Path:
    writer = MMDBWriter(
        ip_version=ip_version, ipv4_compatible=ip_version == 6, database_type="GeoIP2-City"
    )
    for network, record in (BLOCKS if blocks is None else blocks).items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path
