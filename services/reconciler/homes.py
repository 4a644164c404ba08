"""Which possible home cluster is active: the pure decision behind automatic home failover.

The reconciler leader calls `choose_active_home` a few times per second with what it heard from
the home watchers' heartbeats. Time is the leader's own monotonic clock: a home is heard when
its heartbeat key changed (with state Connected) since the previous look, so neither clock skew
nor a heartbeat left behind by a dead watcher can make a dead home look alive.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class HomeChoice:
    active: str | None
    """The home cluster that should be active; None: decide nothing yet (no key is written)."""
    reason: str


def _reachable(cluster: str, last_heard: Mapping[str, float], now: float, fresh: float) -> bool:
    heard = last_heard.get(cluster)
    return heard is not None and now - heard <= fresh


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def choose_active_home(
    home_clusters: Sequence[str],
    current: str | None,
    last_heard: Mapping[str, float],
    now: float,
    *,
    failover_after_seconds: float,
    automatic: bool,
    watching_since: float,
    fresh_within_seconds: float,
    publishing: Collection[str] = (),
    listing: Mapping[str, float] | None = None,
) -> HomeChoice:
    """The active home cluster, given:

    - `home_clusters`: the GSLBConfig's homeClusters, in failover order (empty: one home, no
      decision to make);
    - `current`: the active home the `home` key names (None: no key yet);
    - `last_heard`: per cluster, when (monotonic) a heartbeat with state Connected last arrived;
    - `watching_since`: when this replica started listening, so a leader that just started
      does not take the silence before it listened for an outage;
    - `fresh_within_seconds`: a home heard this recently is reachable;
    - `publishing`: homes whose heartbeat says they publish their CRs today (before any key,
      the single home of the setup), so switching homeClusters on keeps that home active;
    - `listing`: per cluster, when a heartbeat of a home watcher still reading its first lists
      (no state yet, no API error) last arrived. The active home is not silent while it lists
      (a first list of 100,000 objects takes longer than homeFailoverSeconds, and a restarted
      home watcher lists again); a home that lists is no candidate until it is Connected (a
      home made active publishes what it holds, and it holds nothing yet).

    The active home stays until it has been silent for `failover_after_seconds`; then, with
    `automatic` on, the next reachable home after it in list order (wrapping around) takes
    over. A home that comes back after a failover does not take over again (no flapping).
    """
    if not home_clusters:
        return HomeChoice(current, "no homeClusters: one home cluster, nothing to decide")
    if current is None:
        return _first_choice(
            home_clusters, last_heard, now, watching_since, fresh_within_seconds, publishing
        )

    def reachable(cluster: str) -> bool:
        return _reachable(cluster, last_heard, now, fresh_within_seconds)

    if current not in home_clusters:
        following = next((c for c in home_clusters if reachable(c)), None)
        if following is None:
            return HomeChoice(
                current,
                f"{current} is no longer in homeClusters, and no home "
                "cluster listed there is reachable yet",
            )
        return HomeChoice(
            following,
            f"{current} is no longer in homeClusters; {following} "
            "is the first reachable one listed",
        )
    lists = (listing or {}).get(current, -math.inf)
    silent = now - max(last_heard.get(current, -math.inf), lists, watching_since)
    if silent < failover_after_seconds:
        if reachable(current):
            return HomeChoice(current, f"{current} is reachable")
        if now - lists <= fresh_within_seconds:
            return HomeChoice(current, f"{current} is alive and still reading its first lists")
        return HomeChoice(
            current,
            f"{current} unreachable for {_seconds(silent)}, failover "
            f"after {_seconds(failover_after_seconds)}",
        )
    if not automatic:
        return HomeChoice(
            current, f"{current} unreachable for {_seconds(silent)}; automaticHomeFailover is off"
        )
    index = home_clusters.index(current)
    for candidate in [*home_clusters[index + 1 :], *home_clusters[:index]]:
        if reachable(candidate):
            return HomeChoice(
                candidate,
                f"{current} unreachable for {_seconds(silent)} (homeFailoverSeconds "
                f"{failover_after_seconds:g}); {candidate} is the next reachable home cluster",
            )
    return HomeChoice(
        current,
        f"{current} unreachable for {_seconds(silent)}, and no other home cluster is reachable",
    )


def _first_choice(
    home_clusters: Sequence[str],
    last_heard: Mapping[str, float],
    now: float,
    watching_since: float,
    fresh_within_seconds: float,
    publishing: Collection[str],
) -> HomeChoice:
    """The first active home, once homeClusters is set: the first listed home that already
    publishes (the one home of the setup until now), else the first listed. It waits until
    every listed home was heard, or could have been, so it does not pass over one."""
    heard = [c for c in home_clusters if _reachable(c, last_heard, now, fresh_within_seconds)]
    if len(heard) < len(home_clusters) and now - watching_since < fresh_within_seconds:
        return HomeChoice(None, "listening to the home watchers' heartbeats first")
    for cluster in heard:
        if cluster in publishing:
            return HomeChoice(
                cluster, f"{cluster} publishes the policy today and is listed in homeClusters"
            )
    return HomeChoice(home_clusters[0], f"{home_clusters[0]} is the first of homeClusters")
