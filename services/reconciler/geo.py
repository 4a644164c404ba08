"""The Geo algorithm's share of planning, pure: which member clusters have a location (from
the GSLBConfig), and what a Geo service carries of them."""

from __future__ import annotations

from collections.abc import Iterable

from shared.models import Algorithm, PriorityGroup, SiteLocation
from shared.policies import GSLBConfigSpec, PoolAlgorithmSettings


def located_clusters(config: GSLBConfigSpec | None) -> frozenset[str]:
    """Member clusters whose GSLBConfig entry gives a location."""
    if config is None:
        return frozenset()
    return frozenset(m.cluster_context for m in config.member_clusters if m.location is not None)


def site_locations(
    config: GSLBConfigSpec | None, groups: Iterable[PriorityGroup]
) -> list[SiteLocation]:
    """The locations of the clusters that have members in `groups`, sorted by cluster: a Geo
    service carries only the sites it can answer from."""
    if config is None:
        return []
    clusters = {member.cluster for group in groups for member in group.members}
    return [
        SiteLocation(site=m.cluster_context, location=m.location)
        for m in sorted(config.member_clusters, key=lambda m: m.cluster_context)
        if m.location is not None and m.cluster_context in clusters
    ]


def check_geo(settings: PoolAlgorithmSettings, located: frozenset[str] | None) -> list[str]:
    """A Geo policy needs at least one located member cluster; None: not known (no
    GSLBConfig lists member clusters), nothing to check."""
    if settings.lb_algorithm != Algorithm.GEO or located is None or located:
        return []
    return [
        "spec.poolAlgorithmSettings.lbAlgorithm: Geo needs a location on at least one member "
        "cluster (GSLBConfig spec.memberClusters[].location: latitude and longitude, country "
        "or continent); none has one"
    ]
