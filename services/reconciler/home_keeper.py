"""The reconciler's part in home failover, as I/O around `homes.choose_active_home`: listen to
the home watchers' heartbeats (every replica does, so a new leader has heard them already),
and, as leader, keep KV `kgslb_leases/home` naming the active home cluster.

The key changes only by compare-and-set on its revision, so a leader that lost its lease in
the middle can never overwrite a newer decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from services.reconciler.homes import HomeChoice, choose_active_home
from services.reconciler.lease import Leadership
from services.reconciler.settings import ReconcilerSettings
from shared import subjects, wire
from shared.models import ActiveHome, ClusterState, WatcherHeartbeat, utcnow
from shared.policies import GSLBConfigSpec

log = logging.getLogger(__name__)

ACTIVE_HOME = Gauge(
    "kgslb_reconciler_active_home",
    "1 for the active home cluster the `home` key names",
    ["cluster"],
)
HOME_CHANGES = Counter(
    "kgslb_reconciler_home_changes_total",
    "Changes of the active home cluster written by this replica, by reason (first, failover, "
    "removed: no longer in homeClusters)",
    ["reason"],
)
HEARTBEAT_AGE = Gauge(
    "kgslb_reconciler_home_heartbeat_age_seconds",
    "Seconds since a Connected heartbeat of the home cluster's watcher was last heard",
    ["cluster"],
)
INACTIVE_HOME_POLICIES = Counter(
    "kgslb_reconciler_inactive_home_policies_total",
    "Policy messages ignored because a home cluster that is not active published them",
    ["cluster"],
)


class HomeKeeper:
    def __init__(
        self,
        leases: KeyValue,
        leadership: Leadership,
        config: Callable[[], GSLBConfigSpec | None],
        settings: ReconcilerSettings,
    ) -> None:
        self.leases = leases
        self.leadership = leadership
        self.config = config
        self.settings = settings
        self._listening_since: dict[str, float] = {}
        """When this replica first looked at each home's heartbeat: silence before that is
        no evidence of an outage."""
        self.current: ActiveHome | None = None
        """What the `home` key holds, as last read or written."""
        self._revision: int | None = None
        self._seen_revision: dict[str, int] = {}
        self.last_heard: dict[str, float] = {}
        self.listing: dict[str, float] = {}
        """When a heartbeat of each home's watcher still reading its first lists last came."""
        self._publishing: set[str] = set()
        self._silent: str | None = None
        """The active home while it is unreachable: say so once, not every step."""
        self._shown_active: str | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception as exc:  # NATS away: decide again once it is back
                log.warning("home cluster check failed: %s", exc or type(exc).__name__)
            await asyncio.sleep(self.settings.home_check_seconds)

    async def step(self) -> None:
        await self.read_key()
        config = self.config()
        homes = list(config.home_clusters) if config else []
        now = time.monotonic()
        for cluster in homes:
            since = self._listening_since.setdefault(cluster, now)
            await self._listen(cluster, now)
            HEARTBEAT_AGE.labels(cluster).set(now - self.last_heard.get(cluster, since))
        if not homes or config is None or not self.leadership.is_leader(now):
            return
        watching_since = max(self._listening_since[cluster] for cluster in homes)
        current = self.current.active if self.current else None
        choice = choose_active_home(
            homes,
            current,
            self.last_heard,
            now,
            failover_after_seconds=config.home_failover_seconds,
            automatic=config.automatic_home_failover,
            watching_since=watching_since,
            fresh_within_seconds=self.settings.home_heartbeat_timeout_seconds,
            publishing=self._publishing,
            listing=self.listing,
        )
        self._report_silence(choice, current, now, watching_since)
        if choice.active is None:
            return
        if self.current and (self.current.active, self.current.home_clusters) == (
            choice.active,
            homes,
        ):
            return
        await self._write(choice, homes)

    async def read_key(self) -> ActiveHome | None:
        try:
            entry = await self.leases.get(subjects.HOME_KEY)
        except KeyNotFoundError:
            self.current, self._revision = None, None
        else:
            self._revision = entry.revision
            try:
                self.current = wire.decode(entry.value or b"", ActiveHome)
            except wire.WireError as exc:
                # Rewritten by the next decision: the compare-and-set is on the revision.
                log.error("the home key of %s is unreadable: %s", subjects.KV_LEASES, exc)
                self.current = None
        self._show_active()
        return self.current

    def _show_active(self) -> None:
        active = self.current.active if self.current else None
        if active == self._shown_active:
            return
        if self._shown_active is not None:
            ACTIVE_HOME.labels(self._shown_active).set(0)
        if active is not None:
            ACTIVE_HOME.labels(active).set(1)
        self._shown_active = active

    async def from_inactive_home(self, home_cluster: str) -> bool:
        """A policy message that a home cluster which is not active published (a watcher that
        has not learned yet that another home took over): it must not change the policy."""
        if not home_cluster:
            return False
        if self.current is None or self.current.active != home_cluster:
            # The key may have just changed: a home that took over publishes right after.
            with contextlib.suppress(Exception):
                await self.read_key()
        if self.current is None or self.current.active == home_cluster:
            return False
        INACTIVE_HOME_POLICIES.labels(home_cluster).inc()
        return True

    async def _listen(self, cluster: str, now: float) -> None:
        """A heartbeat counts when its key changed since the last look (one left behind by a
        dead watcher never changes again) and says the home role reaches its cluster."""
        try:
            entry = await self.leases.get(subjects.watcher_key(cluster))
        except KeyNotFoundError:
            return
        seen = self._seen_revision.get(cluster)
        self._seen_revision[cluster] = entry.revision or 0
        if seen == entry.revision:
            return
        try:
            heartbeat = wire.decode(entry.value or b"", WatcherHeartbeat)
        except wire.WireError as exc:
            log.warning("heartbeat of the watcher of %s is unreadable: %s", cluster, exc)
            return
        if heartbeat.publishing:
            self._publishing.add(cluster)
        else:
            self._publishing.discard(cluster)
        # Only a watcher with the home role can publish the policy: a member's watcher of
        # the same cluster (started without --home) does not make it a reachable home.
        if seen is None or not heartbeat.home:
            return
        if heartbeat.state == ClusterState.CONNECTED:
            self.last_heard[cluster] = now
        elif heartbeat.state is None:  # alive, its first lists still being read
            self.listing[cluster] = now

    def _report_silence(
        self, choice: HomeChoice, current: str | None, now: float, watching_since: float
    ) -> None:
        if current is None:
            return
        heard = max(
            self.last_heard.get(current, watching_since),
            self.listing.get(current, watching_since),
            watching_since,
        )
        silent = now - heard > self.settings.home_heartbeat_timeout_seconds
        if silent and self._silent != current:
            self._silent = current
            log.warning("active home cluster %s: %s", current, choice.reason)
        elif not silent and self._silent == current:
            self._silent = None
            log.info("active home cluster %s is reachable again", current)

    async def _write(self, choice: HomeChoice, homes: list[str]) -> None:
        assert choice.active is not None
        previous = self.current
        changed = previous is None or previous.active != choice.active
        value = ActiveHome(
            active=choice.active,
            term=(previous.term + 1 if changed else previous.term) if previous else 1,
            since=utcnow() if changed or previous is None else previous.since,
            reason=choice.reason if changed or previous is None else previous.reason,
            home_clusters=homes,
        )
        if not self.leadership.is_leader(time.monotonic()):
            return
        try:
            if self._revision is None:
                revision = await self.leases.create(subjects.HOME_KEY, wire.encode(value))
            else:
                revision = await self.leases.update(
                    subjects.HOME_KEY, wire.encode(value), last=self._revision
                )
        except KeyWrongLastSequenceError:
            log.info("the home key changed meanwhile; deciding again")
            return
        self.current, self._revision = value, revision
        self._show_active()
        if not changed:
            log.info("homeClusters now %s; active home cluster %s", homes, value.active)
            return
        if previous is None:
            kind = "first"
        elif previous.active in homes:
            kind = "failover"
        else:
            kind = "removed"
        HOME_CHANGES.labels(kind).inc()
        log.warning(
            "active home cluster: %s (term %d): %s",
            value.active, value.term, value.reason,
            extra={"previous": previous.active if previous else "", "term": value.term},
        )  # fmt: skip
