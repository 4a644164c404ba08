"""When the reconciler may plan names after it starts: once every member cluster's watcher has
published its first complete list (a sync marker covering every object kind). Pure.

Planning while the first lists still arrive writes a name with one cluster's members and again
with all of them (10,000 FQDNs x 3 clusters cost 20,000 KV writes); waiting writes each name
once. An unreachable cluster must not hold back the others, so the wait is bounded:

1. every expected cluster has synced: plan;
2. `timeout_seconds` after the first expected cluster synced: plan without the missing ones;
3. nothing heard from any expected cluster `timeout_seconds` after the start (no watcher is
   publishing, so nothing is on its way): plan;
4. `max_wait_seconds` after the start, whatever arrived (a watcher that publishes but never
   completes a list, say one kind it may not read): plan.

The expected clusters are the member clusters of the GSLBConfig in force, or, when it lists
none, every cluster heard from. Markers replayed from the events stream count like live ones,
so a restarted reconciler whose stream holds every cluster's marker plans right after the
replay. The gate opens once; later lists and markers are ordinary events.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, field

from shared.models import ObjectKind, ObservedObject, SyncMarker, Tombstone
from shared.wire import WireModel

EVERY_KIND = frozenset(ObjectKind)


@dataclass(frozen=True)
class Verdict:
    open: bool
    reason: str
    missing: tuple[str, ...] = ()
    """Expected clusters planned without their first sync (after a timeout)."""
    retry_in_seconds: float | None = None
    """While closed: when the verdict changes by itself (a timeout), if nothing arrives."""


@dataclass
class FirstSync:
    timeout_seconds: float
    max_wait_seconds: float
    started_at: float
    synced_at: dict[str, float] = field(default_factory=dict)
    """Cluster -> when its first marker covering every object kind was seen."""
    heard: set[str] = field(default_factory=set)
    """Clusters that published any object, tombstone or marker."""
    opened: Verdict | None = None

    def observe(self, message: WireModel, now: float) -> None:
        match message:
            case SyncMarker(cluster=cluster, kinds=kinds):
                self.heard.add(cluster)
                if set(kinds) >= EVERY_KIND:
                    self.synced_at.setdefault(cluster, now)
            case ObservedObject(ref=ref) | Tombstone(ref=ref):
                self.heard.add(ref.cluster)

    def decide(self, members: Set[str] | None, now: float) -> Verdict:
        """Open or not, given the member clusters of the GSLBConfig in force (None: it lists
        none). Once open, always open."""
        if self.opened is None:
            verdict = self._verdict(members, now)
            if not verdict.open:
                return verdict
            self.opened = verdict
        return self.opened

    def _verdict(self, members: Set[str] | None, now: float) -> Verdict:
        expected = sorted(members if members else self.heard)
        missing = tuple(c for c in expected if c not in self.synced_at)
        waited = now - self.started_at
        if expected and not missing:
            return Verdict(True, f"first sync of every cluster ({', '.join(expected)})")
        synced = [self.synced_at[c] for c in expected if c in self.synced_at]
        deadlines = [self.started_at + self.max_wait_seconds]
        if synced:
            first = min(synced)
            deadlines.append(first + self.timeout_seconds)
            if now >= first + self.timeout_seconds:
                return Verdict(
                    True,
                    f"no first sync within {self.timeout_seconds:g} s of the first cluster's",
                    missing,
                )
        elif not self.heard.intersection(expected):
            deadlines.append(self.started_at + self.timeout_seconds)
            if waited >= self.timeout_seconds:
                return Verdict(
                    True, f"nothing heard from any cluster in {self.timeout_seconds:g} s", missing
                )
        if waited >= self.max_wait_seconds:
            return Verdict(True, f"waited the longest, {self.max_wait_seconds:g} s", missing)
        waiting_for = ", ".join(missing) if missing else "any cluster"
        return Verdict(
            False,
            f"waiting for the first sync of {waiting_for}",
            missing,
            retry_in_seconds=max(0.0, min(deadlines) - now),
        )
