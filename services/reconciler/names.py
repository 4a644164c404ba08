"""Which names can be GSLB services: a hostname inside a zone of the GSLBConfig. Names that
selected objects bring and that fail are never planned; the selecting policy says why."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.reconciler.messages import allowed_values
from shared.models import ObjectRef, PolicyRef, ZoneSpec
from shared.names import BadName, NameProblem, hostname_problem


def _in_zones(fqdn: str, zones: Mapping[str, ZoneSpec]) -> bool:
    dot = -1
    while True:
        if fqdn[dot + 1 :] in zones:
            return True
        dot = fqdn.find(".", dot + 1)
        if dot < 0:
            return False


def gslb_name_problem(fqdn: str, zones: Mapping[str, ZoneSpec]) -> BadName | None:
    """Why a (normalised) FQDN cannot be a GSLB service, or None: it must be a hostname, and
    lie in a zone of the GSLBConfig when it has any (the DNS answers nothing else). Without
    zones nothing is answered anyway, and the services are still planned and probed."""
    if (bad := hostname_problem(fqdn)) is not None:
        return bad
    if zones and not _in_zones(fqdn, zones):
        return BadName(
            fqdn,
            NameProblem.OUTSIDE_ZONES,
            f"lies outside every zone of the GSLBConfig (zones: {allowed_values(list(zones))})",
        )
    return None


@dataclass(frozen=True)
class RejectedName:
    """An FQDN that objects selected by a GDP would serve, and that is never planned."""

    fqdn: str
    bad: BadName
    policy: PolicyRef
    """The GDP whose selection brought the name (the one that would own it)."""
    objects: tuple[ObjectRef, ...]

    def describe(self) -> str:
        first = self.objects[0]
        others = f" (and {len(self.objects) - 1} more)" if len(self.objects) > 1 else ""
        where = f"{first.kind} {first.cluster}/{first.namespace}/{first.name}{others}"
        return f"{where}: {self.bad.describe()}; not planned"


def newly_rejected(
    before: Mapping[str, RejectedName], now: Mapping[str, RejectedName]
) -> list[RejectedName]:
    """Rejections that are new or now have another reason: what to log, once."""
    return [
        rejected
        for fqdn, rejected in sorted(now.items())
        if fqdn not in before or before[fqdn].bad != rejected.bad
    ]
