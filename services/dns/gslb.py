"""A GSLB name as the DNS holds it: its desired state reduced to what answering needs
(`NameSpec`), the rotations its members form under the current health (`GslbName`), and
`decide`, the one GSLB decision that a name asked directly and a CNAME target share."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from services.dns import wire
from services.dns.algorithms import NO_GEOIP, Client, GslbAlgorithm, Pick, algorithm_for
from services.dns.geo import GeoIp
from services.dns.rotation import Rotation, Target, family_matches
from shared.models import DownResponseType, GslbService, HealthState, Member
from shared.subjects import member_key, normalize_fqdn


@dataclass(frozen=True, slots=True)
class NameSpec:
    """A GSLB name reduced to what answering needs: a compact stand-in for `GslbService`,
    so that tens of thousands of names stay small in memory."""

    fqdn: str
    ttl: int
    answers: int
    down: DownResponseType
    fallback_ip: str | None
    groups: tuple[tuple[Target, ...], ...]
    """Member groups, highest priority first."""
    algorithm: GslbAlgorithm
    """Chosen here, once per name; a query never asks which algorithm it is."""

    @classmethod
    def of(
        cls, service: GslbService, interned: dict[str, str], geoip: GeoIp = NO_GEOIP
    ) -> NameSpec:
        fqdn = normalize_fqdn(service.fqdn)

        def target(member: Member) -> Target:
            cluster = interned.setdefault(member.cluster, member.cluster)
            return Target(member.ip, cluster, member.weight, member_key(fqdn, member.probe_ip))

        groups = sorted(service.groups, key=lambda g: -g.priority)
        return cls(
            fqdn=fqdn,
            ttl=service.ttl_seconds,
            answers=service.answers,
            down=service.down_response.type,
            fallback_ip=service.down_response.fallback_ip,
            groups=tuple(tuple(target(m) for m in g.members) for g in groups),
            algorithm=algorithm_for(service, interned, geoip),
        )

    def targets(self) -> list[Target]:
        return [target for group in self.groups for target in group]


class GslbName:
    """One GSLB name under the current health: per address family, the members of the best
    priority group with a member that is not down (or the down response), and per site its
    algorithm asks for, that site's members. Rebuilt when a member's health flips."""

    __slots__ = ("a", "aaaa", "has_a", "has_aaaa", "sites", "spec")

    def __init__(self, spec: NameSpec, health: Mapping[str, HealthState]) -> None:
        self.spec = spec
        targets = spec.targets()
        self.has_a = any(family_matches(t.ip, wire.A) for t in targets)
        self.has_aaaa = any(family_matches(t.ip, wire.AAAA) for t in targets)
        self.a = self._build(wire.A, health) if self.has_a else None
        self.aaaa = self._build(wire.AAAA, health) if self.has_aaaa else None
        self.sites: dict[tuple[str, int], Rotation] = {}
        """Per (site, qtype), the site's healthy members in round robin."""
        for site in spec.algorithm.sites:
            for qtype in (wire.A, wire.AAAA):
                rotation = self._build_site(site, qtype, health)
                if rotation is not None:
                    self.sites[(site, qtype)] = rotation

    def rotation(self, qtype: int) -> Rotation | None:
        return self.a if qtype == wire.A else self.aaaa

    def site_rotation(self, site: str, qtype: int) -> Rotation | None:
        return self.sites.get((site, qtype))

    def has_family(self, qtype: int) -> bool:
        return self.has_a if qtype == wire.A else self.has_aaaa

    @property
    def all_down_is_empty(self) -> bool:
        """EMPTY answers NODATA even in a zone that drops unhandled queries."""
        return self.spec.down == DownResponseType.EMPTY

    def answers_by_member(self) -> Iterator[tuple[Target, int]]:
        for rotation in (self.a, self.aaaa, *self.sites.values()):
            if rotation is not None:
                yield from rotation.answers_by_member().items()

    def _build(self, qtype: int, health: Mapping[str, HealthState]) -> Rotation | None:
        spec = self.spec
        for group in spec.groups:
            alive = [
                t
                for t in group
                if family_matches(t.ip, qtype) and health.get(t.health_key) != HealthState.DOWN
            ]
            if alive:
                return Rotation(alive, qtype, spec.ttl, spec.answers)
        if spec.down == DownResponseType.ALL_RECORDS:
            everyone = [t for t in spec.targets() if family_matches(t.ip, qtype)]
            return Rotation(everyone, qtype, spec.ttl, len(everyone))
        fallback_ip = spec.fallback_ip
        if spec.down == DownResponseType.FALLBACK_IP and fallback_ip:
            if not family_matches(fallback_ip, qtype):
                return None
            return Rotation([Target(fallback_ip, "fallback", 1, "")], qtype, spec.ttl, 1)
        return None

    def _build_site(
        self, site: str, qtype: int, health: Mapping[str, HealthState]
    ) -> Rotation | None:
        spec = self.spec
        for group in spec.groups:
            alive = [
                t
                for t in group
                if t.cluster == site
                and family_matches(t.ip, qtype)
                and health.get(t.health_key) != HealthState.DOWN
            ]
            if alive:
                return Rotation(alive, qtype, spec.ttl, spec.answers)
        return None


def decide(name: GslbName, qtype: int, client: Client) -> Pick | None:
    """Which of the name's members answer this client for an A or AAAA query, the ECS scope
    to echo, and how the response may be cached. None: the name has nothing of this family
    to answer, not even a down response."""
    rotation = name.rotation(qtype)
    if rotation is None:
        return None
    return name.spec.algorithm.choose(name, rotation, client)
