"""GeoIP for the Geo algorithm: where a client is (`Place`, read from a MaxMind-format
record) and which located sites are nearest to it (`ranked_sites`). Pure, but for `GeoIp`,
the table's handle on the database it looks clients up in, which the service swaps when the
file changes (`services/dns/geoip_file.py`).

Preference, for a client the database places:
1. sites in the client's country;
2. then sites on the client's continent;
3. then, when the client has coordinates, every other site with coordinates.
Within each tier the nearest first (great-circle distance, when the client and the site both
have coordinates; the sites without after), then by name. A site that matches in none of
these ways is not a candidate: with no candidate left (or none with a healthy member), the
fallback algorithm decides, as for a client the database does not know.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from shared.models import SiteLocation

EARTH_RADIUS_KM = 6371.0088
CACHED_ADDRESSES = 65_536
"""Lookups remembered per database (a resolver asks again and again); cleared when full."""


class Place(NamedTuple):
    """Where the database puts a client (or where a site is): any of the parts may be unknown."""

    country: str | None = None
    continent: str | None = None
    latitude: float | None = None
    longitude: float | None = None

    @property
    def has_coordinates(self) -> bool:
        return self.latitude is not None and self.longitude is not None


class GeoSite(NamedTuple):
    site: str
    place: Place


def geo_sites(locations: Iterable[SiteLocation], interned: dict[str, str]) -> tuple[GeoSite, ...]:
    sites = []
    for entry in locations:
        where = entry.location
        site = interned.setdefault(entry.site, entry.site)
        place = Place(where.country, where.continent, where.latitude, where.longitude)
        sites.append(GeoSite(site, place))
    return tuple(sorted(sites))


def _text(record: Mapping[str, Any], key: str, field: str) -> str | None:
    part = record.get(key)
    value = part.get(field) if isinstance(part, Mapping) else None
    return value.upper() if isinstance(value, str) and value else None


def _number(location: Any, field: str) -> float | None:
    value = location.get(field) if isinstance(location, Mapping) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def place_of(record: Any) -> Place | None:
    """The place of a GeoIP2/GeoLite2 City or Country record: `country.iso_code` (else
    `registered_country.iso_code`), `continent.code`, `location.latitude`/`longitude`.
    None when the record places the client nowhere."""
    if not isinstance(record, Mapping):
        return None
    country = _text(record, "country", "iso_code") or _text(
        record, "registered_country", "iso_code"
    )
    location = record.get("location")
    latitude, longitude = _number(location, "latitude"), _number(location, "longitude")
    if latitude is None or longitude is None:
        latitude = longitude = None
    place = Place(country, _text(record, "continent", "code"), latitude, longitude)
    return None if place == Place() else place


def distance_km(a: Place, b: Place) -> float:
    """Great-circle (haversine) distance; both places must have coordinates."""
    assert a.latitude is not None and a.longitude is not None
    assert b.latitude is not None and b.longitude is not None
    lat1, lat2 = math.radians(a.latitude), math.radians(b.latitude)
    dlat = lat2 - lat1
    dlon = math.radians(b.longitude - a.longitude)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


@functools.lru_cache(maxsize=4096)
def ranked_sites(client: Place, sites: tuple[GeoSite, ...]) -> tuple[str, ...]:
    """The candidate sites for a client, best first (see the module's docstring)."""
    ranked = []
    for site, place in sites:
        if client.country is not None and place.country == client.country:
            tier = 0
        elif client.continent is not None and place.continent == client.continent:
            tier = 1
        elif client.has_coordinates and place.has_coordinates:
            tier = 2
        else:
            continue
        distance = (
            distance_km(client, place)
            if client.has_coordinates and place.has_coordinates
            else math.inf
        )
        ranked.append((tier, distance, site))
    return tuple(site for _, _, site in sorted(ranked))


Lookup = Callable[[str], tuple[Any, int]]
"""A database lookup: an address -> (its record or None, the prefix length of the network the
answer holds for), as `maxminddb.Reader.get_with_prefix_len`."""


class Located(NamedTuple):
    place: Place | None
    """None: the database does not know the client."""
    prefix: int
    """The client's network in the database: the answer holds for all of it."""


class GeoIp:
    """The database Geo names look clients up in: one per answer table, its lookup replaced
    when the file changes (`AnswerTable.set_geoip`, which also drops cached responses)."""

    __slots__ = ("_cache", "_lookup", "source")

    def __init__(self, lookup: Lookup | None = None, source: str = "") -> None:
        self._lookup = lookup
        self._cache: dict[str, Located] = {}
        self.source = source
        """What the lookup reads (the file), for logs and metrics."""

    @property
    def loaded(self) -> bool:
        return self._lookup is not None

    def replace(self, lookup: Lookup | None, source: str = "") -> None:
        self._lookup = lookup
        self.source = source
        self._cache = {}

    def locate(self, address: str) -> Located | None:
        """Where the client at `address` is; None without a database."""
        lookup = self._lookup
        if lookup is None:
            return None
        located = self._cache.get(address)
        if located is not None:
            return located
        try:
            record, prefix = lookup(address)
        except ValueError:  # not an address, or IPv6 in an IPv4-only database
            record, prefix = None, 0
        located = Located(place_of(record), prefix)
        if len(self._cache) >= CACHED_ADDRESSES:
            self._cache = {}
        self._cache[address] = located
        return located
