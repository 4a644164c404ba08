"""How a GSLB name chooses its answer among the members health allows: one value per name,
chosen when the name is built (as CoreDNS's loadbalance picks its shuffle in setup), never a
branch at query time.

An algorithm is a pure function of (the name's rotations under the current health, the
client): it returns a `Pick`, the rotation position to answer (or "the next round-robin
turn"), the ECS scope to echo and how the response may be cached. It renders nothing and
changes nothing; taking the turn and counting the answer is `Pick.take_position`.

To add an algorithm: write a class with `sites` and `choose` (see `GslbAlgorithm`) and an
`of(service, interned, geoip)` constructor, and register it in `ALGORITHMS` under its
`shared.models.Algorithm`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple, Protocol

from services.dns import wire
from services.dns.geo import GeoIp, GeoSite, geo_sites, ranked_sites
from services.dns.rotation import Rotation
from services.dns.selection import client_bucket, rendezvous_pick
from shared.models import Algorithm, GslbService, TopologyEntry


class Client(NamedTuple):
    """Whom a query's answer is for, worked out once per query: the EDNS Client Subnet when
    the query carries one, else the address the query came from."""

    address: str
    """The subnet's address or the source address; "" when neither is known."""
    subnet_prefix: int | None = None
    """The ECS SOURCE PREFIX-LENGTH when `address` is the query's subnet; None when it is
    the source address, which the query packet does not carry."""

    @classmethod
    def of(cls, subnet: wire.ClientSubnet | None, source_ip: str) -> Client:
        # RFC 7871 7.1.2: a SOURCE PREFIX-LENGTH of 0 gives no client information.
        if subnet is not None and subnet.source_prefix > 0:
            return cls(subnet.ip, subnet.source_prefix)
        return cls(source_ip)


class Caching(Enum):
    """What the response cache, keyed by the query packet, may do with the answer."""

    NEVER = "never"
    """The answer follows the source address, which the packet does not carry."""
    FIXED = "fixed"
    """This packet always gets this answer (a pick by the ECS subnet it carries)."""
    TURNS = "turns"
    """This packet gets the rotation's next turn: cache one response per position."""


class Pick(NamedTuple):
    """An algorithm's decision for one query."""

    rotation: Rotation
    client_position: int | None
    """The position picked for the client; None: the rotation's next round-robin turn."""
    ecs_scope: int
    """RFC 7871 SCOPE PREFIX-LENGTH: how much of the client subnet the answer depends on."""
    caching: Caching

    def take_position(self) -> int:
        """The position to answer: take the turn, or count the client's pick (the answer
        metrics read both from the rotation)."""
        if self.client_position is None:
            return self.rotation.next_position()
        return self.rotation.count_pick(self.client_position)


class SiteRotations(Protocol):
    def site_rotation(self, site: str, qtype: int) -> Rotation | None:
        """The site's healthy members of the family, best priority group first, or None."""
        ...


class GslbAlgorithm(Protocol):
    @property
    def sites(self) -> frozenset[str]:
        """Sites whose healthy members need a rotation of their own."""
        ...

    def choose(self, name: SiteRotations, rotation: Rotation, client: Client) -> Pick:
        """`rotation` holds the members of the best priority group with a healthy member
        (or the down response's), in smooth-WRR order."""
        ...


NO_SITES: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RoundRobin:
    """Weighted round robin: every query takes the name's next turn, whoever asks."""

    @classmethod
    def of(cls, service: GslbService, interned: dict[str, str], geoip: GeoIp) -> RoundRobin:
        return ROUND_ROBIN

    @property
    def sites(self) -> frozenset[str]:
        return NO_SITES

    def choose(self, name: SiteRotations, rotation: Rotation, client: Client) -> Pick:
        return Pick(rotation, None, 0, Caching.TURNS)


ROUND_ROBIN = RoundRobin()


@dataclass(frozen=True, slots=True)
class ConsistentHash:
    """Weighted rendezvous hashing of the client's masked address: a client subnet keeps
    its member while the member set is unchanged. Without a client address, round robin."""

    mask_bits: int | None
    """Client prefix length hashed; None: /24 for IPv4, /56 for IPv6."""

    @classmethod
    def of(cls, service: GslbService, interned: dict[str, str], geoip: GeoIp) -> ConsistentHash:
        return cls(service.hash_mask_bits)

    @property
    def sites(self) -> frozenset[str]:
        return NO_SITES

    def choose(self, name: SiteRotations, rotation: Rotation, client: Client) -> Pick:
        if not client.address:
            return Pick(rotation, None, 0, Caching.NEVER)
        owner = rendezvous_pick(
            client_bucket(client.address, self.mask_bits),
            [m.ip for m in rotation.members],
            [m.weight for m in rotation.members],
        )
        position = rotation.position_led_by(owner)
        if client.subnet_prefix is None:
            return Pick(rotation, position, 0, Caching.NEVER)
        return Pick(rotation, position, self.scope(rotation.qtype), Caching.FIXED)

    def scope(self, qtype: int) -> int:
        if self.mask_bits is not None:
            return self.mask_bits
        return 24 if qtype == wire.A else 56


class TopologyRule(NamedTuple):
    """Clients whose address is inside `network` (family, base address, prefix) go to `site`."""

    version: int
    network: int
    prefix: int
    site: str

    def contains(self, version: int, address: int, bits: int) -> bool:
        shift = bits - self.prefix
        return version == self.version and address >> shift == self.network >> shift


def topology_rules(
    entries: Iterable[TopologyEntry], interned: dict[str, str]
) -> tuple[TopologyRule, ...]:
    rules = []
    for entry in entries:
        network = ipaddress.ip_network(entry.client_subnet, strict=False)
        site = interned.setdefault(entry.site, entry.site)
        rules.append(
            TopologyRule(network.version, int(network.network_address), network.prefixlen, site)
        )
    # The most specific subnet wins: longest prefix first.
    return tuple(sorted(rules, key=lambda rule: -rule.prefix))


def site_of(rules: tuple[TopologyRule, ...], client_ip: str) -> str | None:
    """The site of the most specific rule containing the client, if any."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return None
    version, value, bits = address.version, int(address), address.max_prefixlen
    for rule in rules:
        if rule.contains(version, value, bits):
            return rule.site
    return None


@dataclass(frozen=True, slots=True)
class Topology:
    """Clients inside a rule's subnet are answered by the healthy members of its site, in
    round robin; clients no rule maps, or whose site has no healthy member of the family,
    by the fallback algorithm."""

    rules: tuple[TopologyRule, ...]
    """Client subnet -> site, most specific first."""
    fallback: RoundRobin | ConsistentHash

    @classmethod
    def of(cls, service: GslbService, interned: dict[str, str], geoip: GeoIp) -> Topology:
        return cls(topology_rules(service.topology, interned), fallback_of(service))

    @property
    def sites(self) -> frozenset[str]:
        return frozenset(rule.site for rule in self.rules)

    def choose(self, name: SiteRotations, rotation: Rotation, client: Client) -> Pick:
        site = site_of(self.rules, client.address) if client.address else None
        site_rotation = None if site is None else name.site_rotation(site, rotation.qtype)
        if site_rotation is not None:
            pick = Pick(site_rotation, None, 0, Caching.TURNS)
        else:
            pick = self.fallback.choose(name, rotation, client)
        # The answer depends on the client's site: valid for exactly the subnet asked about
        # (SCOPE = SOURCE), and never cached for a bare source address.
        if client.subnet_prefix is None:
            return pick._replace(ecs_scope=0, caching=Caching.NEVER)
        return pick._replace(ecs_scope=client.subnet_prefix)


def fallback_of(service: GslbService) -> RoundRobin | ConsistentHash:
    # The model allows any algorithm as a fallback; only these two need no topology or
    # database, and anything else has always meant round robin.
    if service.fallback_algorithm == Algorithm.CONSISTENT_HASH:
        return ConsistentHash(service.fallback_hash_mask_bits)
    return ROUND_ROBIN


@dataclass(frozen=True, slots=True)
class Geo:
    """Clients the GeoIP database places are answered by the healthy members of the nearest
    located site (`geo.ranked_sites`: same country, same continent, then by distance), in
    round robin; clients it does not know, or near no located site with a healthy member of
    the family, by the fallback algorithm."""

    sites: frozenset[str]
    located: tuple[GeoSite, ...]
    fallback: RoundRobin | ConsistentHash
    geoip: GeoIp
    """The table's database handle: replaced in place when the file changes."""

    @classmethod
    def of(cls, service: GslbService, interned: dict[str, str], geoip: GeoIp) -> Geo:
        located = geo_sites(service.site_locations, interned)
        return cls(frozenset(s.site for s in located), located, fallback_of(service), geoip)

    def choose(self, name: SiteRotations, rotation: Rotation, client: Client) -> Pick:
        found = self.geoip.locate(client.address) if client.address else None
        pick = None
        if found is not None and found.place is not None:
            for site in ranked_sites(found.place, self.located):
                site_rotation = name.site_rotation(site, rotation.qtype)
                if site_rotation is not None:
                    pick = Pick(site_rotation, None, 0, Caching.TURNS)
                    break
        if pick is None:
            pick = self.fallback.choose(name, rotation, client)
        if client.subnet_prefix is None:
            return pick._replace(ecs_scope=0, caching=Caching.NEVER)
        # With a database the answer holds for the client's whole network in it (and, for a
        # fallback that hashes, for the hashed prefix); without one, or for an address the
        # database cannot look up (IPv6 in an IPv4 database), for the subnet asked.
        if found is None or found.prefix == 0:
            scope = client.subnet_prefix
        else:
            scope = max(found.prefix, pick.ecs_scope)
        return pick._replace(ecs_scope=scope)


AlgorithmFactory = Callable[[GslbService, dict[str, str], GeoIp], GslbAlgorithm]
"""Builds a name's algorithm from its service (`interned` shares site name strings; `geoip`
is the table's GeoIP database)."""

ALGORITHMS: dict[Algorithm, AlgorithmFactory] = {
    Algorithm.ROUND_ROBIN: RoundRobin.of,
    Algorithm.CONSISTENT_HASH: ConsistentHash.of,
    Algorithm.TOPOLOGY: Topology.of,
    Algorithm.GEO: Geo.of,
}

NO_GEOIP = GeoIp()
"""No database: every Geo client goes to the fallback."""


def algorithm_for(
    service: GslbService, interned: dict[str, str], geoip: GeoIp = NO_GEOIP
) -> GslbAlgorithm:
    return ALGORITHMS[service.algorithm](service, interned, geoip)
