"""The shell of `status.serving`: a home watcher follows KV `kgslb_services`, `kgslb_health` and
the health replicas' heartbeats (`kgslb_leases`, `health.*`), combines the verdicts with the
DNS's quorum rule, and hands each policy's serving members to the `PolicyView`, which writes
them with the reconciler's verdict. What to write is decided in `serving.py`.

Under manualResume it also holds members that go down: it creates `hold.<fqdn>.<ip>` in KV
`kgslb_leases` (`MemberHold`), which every DNS replica follows, so all agree the member stays
out until `kgslb member resume` deletes the key. A create of a key that exists changes nothing,
so several home watchers may race for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from nats.aio.client import Client
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.watcher.serving import (
    MemberView,
    NameView,
    holds_due,
    name_entry,
    policy_ref_of,
    serving_counts,
    serving_fields,
)
from services.watcher.settings import WatcherSettings
from services.watcher.view import PolicyView
from shared import subjects, wire
from shared.collector import LongLivedState
from shared.follow import BucketFollower, Change
from shared.models import (
    GslbService,
    HealthState,
    MemberHealth,
    MemberHold,
    utcnow,
)
from shared.quorum import HealthBook, Quorum, State, Written, apply_heartbeat, apply_hold

log = logging.getLogger(__name__)

EXPIRE_SECONDS = 0.5
"""How often silent health replicas are looked for, as the DNS does."""
DEBOUNCE_SECONDS = 0.05
"""Changes that arrive together (a verdict per site) make one status write."""
STANDBY_CHECK_SECONDS = 0.5
"""How often a standby home with marked names looks whether it became active."""
POLICY_REFRESH_SECONDS = 0.5
"""A policy's `status.serving` is rebuilt at most this often, and never more than a tenth of
the time (its rebuild walks every name of the policy: at a cold start of 10,000 names a rebuild
per debounce was half of the home watcher's CPU). Holds are not delayed by it."""


class ServingMembers(Collector):
    """`kgslb_watcher_serving_members{fqdn,cluster}`, computed at scrape time from the active
    tracker's entries. A gauge child per FQDN and cluster, set on every change, was a tenth of
    the home watcher's CPU at a cold start of 10,000 names (30,000 children created)."""

    def __init__(self) -> None:
        self.tracker: ServingTracker | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "kgslb_watcher_serving_members",
            "Members answered now (state Serving in the policy's status.serving), per FQDN "
            "and cluster; written by the active home watcher",
            labels=["fqdn", "cluster"],
        )
        tracker = self.tracker
        # A standby home's entries wait for it to become active: only the active one exports.
        entries = dict(tracker.entries) if tracker is not None and tracker.is_active() else {}
        for fqdn, entry in sorted(entries.items()):
            for cluster, count in sorted(serving_counts(entry).items()):
                family.add_metric([fqdn, cluster], count)
        yield family


SERVING_MEMBERS = ServingMembers()
REGISTRY.register(SERVING_MEMBERS)


class ServingTracker:
    def __init__(
        self,
        nc: Client,
        settings: WatcherSettings,
        policies: PolicyView,
        status_dirty: asyncio.Event,
        leases: KeyValue,
        on_missing: Callable[[], None] | None = None,
        is_active: Callable[[], bool] = lambda: True,
    ) -> None:
        self.is_active = is_active
        """Only the active home writes status and holds: a standby follows (to take over with
        everything known) but leaves its marks until it becomes active."""
        self.leases = leases
        self.held: set[str] = set()
        """Health keys of the members held under manualResume."""
        self.policies = policies
        self.status_dirty = status_dirty
        self.limit = settings.serving_status_max_fqdns
        self.book = HealthBook(Quorum.parse(settings.health_quorum))
        self.names: dict[str, NameView] = {}
        self.entries: dict[str, dict[str, Any]] = {}
        """FQDN -> its `status.serving` item."""
        self._by_policy: dict[str, set[str]] = defaultdict(set)
        self._by_member: dict[str, str] = {}
        """Health member key -> FQDN."""
        self._dirty_names: set[str] = set()
        self._dirty_policies: set[str] = set()
        self._changed = asyncio.Event()
        self.long_lived = LongLivedState()
        SERVING_MEMBERS.tracker = self
        services = BucketFollower(nc, subjects.KV_SERVICES, self._service, on_missing=on_missing)
        self.followers = [
            BucketFollower(
                nc,
                subjects.KV_LEASES,
                self._heartbeat,
                subjects.HEALTH_REPLICA_KEYS,
                on_missing=on_missing,
            ),
            BucketFollower(
                nc, subjects.KV_LEASES, self._hold, subjects.HOLD_KEYS, on_missing=on_missing
            ),
            # Names before verdicts, as the DNS does (shared.follow, `defer_to`).
            BucketFollower(
                nc, subjects.KV_HEALTH, self._health, on_missing=on_missing, defer_to=[services]
            ),
            services,
        ]

    async def run(self) -> None:
        await asyncio.gather(
            *(follower.run() for follower in self.followers), self._expire(), self._publish()
        )

    # Following ----------------------------------------------------------------------------

    def _service(self, change: Change) -> None:
        if subjects.is_fence_key(change.key):
            return
        self.long_lived.changed()
        fqdn = subjects.normalize_fqdn(subjects.fqdn_from_key(change.key))
        old = self.names.pop(fqdn, None)
        if old is not None:
            for member in old.members:
                self._by_member.pop(member.health_key, None)
            for policy in old.policies:
                self._by_policy[policy].discard(fqdn)
                self._dirty_policies.add(policy)
        if change.value is not None:
            with contextlib.suppress(wire.WireError):
                name = NameView.of(wire.decode(change.value, GslbService))
                self.names[fqdn] = name
                for member in name.members:
                    self._by_member[member.health_key] = fqdn
                for policy in name.policies:
                    self._by_policy[policy].add(fqdn)
                    self._dirty_policies.add(policy)
        self._dirty_names.add(fqdn)
        self._changed.set()

    def _health(self, change: Change) -> None:
        try:
            member, vantage = subjects.split_health_key(change.key)
        except ValueError:
            return
        self.long_lived.changed()
        written = None
        if change.value is not None:
            try:
                health = wire.decode(change.value, MemberHealth)
            except wire.WireError:
                return
            written = Written(HealthState(health.state), health.replica)
        self._combined(self.book.set_verdict(member, vantage, written))

    def _heartbeat(self, change: Change) -> None:
        now = asyncio.get_running_loop().time()
        with contextlib.suppress(ValueError):  # wire.WireError included
            self._combined(apply_heartbeat(self.book, change.key, change.value, now))

    def _hold(self, change: Change) -> None:
        try:
            member = apply_hold(self.held, change.key, change.value)
        except ValueError:
            return
        self._combined({member: None})

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_SECONDS)
            self._combined(self.book.expire(asyncio.get_running_loop().time()))

    def _combined(self, changes: dict[str, State]) -> None:
        for member in changes:
            if (fqdn := self._by_member.get(member)) is not None:
                self._dirty_names.add(fqdn)
                self._changed.set()

    # Publishing -----------------------------------------------------------------------------

    async def _publish(self) -> None:
        loop = asyncio.get_running_loop()
        policies_due = 0.0
        while True:
            await self._changed.wait()
            await asyncio.sleep(DEBOUNCE_SECONDS)
            if not self.is_active():
                await asyncio.sleep(STANDBY_CHECK_SECONDS)
                continue  # still marked: computed once it becomes active
            self._changed.clear()
            for fqdn, member in self.refresh_names():
                await self._write_hold(fqdn, member)
            if not self._dirty_policies:
                continue
            if (started := loop.time()) < policies_due:
                loop.call_at(policies_due, self._changed.set)
                continue
            self.refresh_policies()
            spent = loop.time() - started
            policies_due = started + max(POLICY_REFRESH_SECONDS, 10 * spent)

    async def _write_hold(self, fqdn: str, member: MemberView) -> None:
        hold = MemberHold(
            fqdn=fqdn,
            ip=member.ip,
            cluster=member.cluster,
            since=utcnow(),
            reason="down under manualResume",
        )
        try:
            await self.leases.create(subjects.hold_key(member.health_key), wire.encode(hold))
        except KeyWrongLastSequenceError:
            return  # held already (another home watcher, or a restart of this one)
        except Exception as exc:
            log.warning(
                "hold of %s %s %s not written: %s; retried on its next change",
                fqdn, member.cluster, member.ip, exc or type(exc).__name__,
            )  # fmt: skip
            return
        log.warning(
            "%s: %s %s went down under manualResume: held until `kgslb member resume %s %s`",
            fqdn, member.cluster, member.ip, fqdn, member.cluster,
            extra={"fqdn": fqdn, "cluster": member.cluster},
        )  # fmt: skip

    def refresh_names(self) -> list[tuple[str, MemberView]]:
        """Recompute the names that changed (their entries), mark the policies they changed,
        and say which members to hold."""
        holds: list[tuple[str, MemberView]] = []
        names, self._dirty_names = self._dirty_names, set()
        for fqdn in names:
            before = self.entries.pop(fqdn, None)
            name = self.names.get(fqdn)
            if name is None:
                continue
            entry = name_entry(name, self.book.combined, self.held)
            self.entries[fqdn] = entry
            holds += [(fqdn, m) for m in holds_due(name, self.book.combined, self.held)]
            if entry != before:  # _service marks the policies of a name it changed
                self._dirty_policies.update(name.policies)
        return holds

    def refresh_policies(self) -> None:
        """Hand every marked policy's `status.serving` to the view."""
        policies, self._dirty_policies = self._dirty_policies, set()
        for policy in policies:
            ref = policy_ref_of(policy)
            if ref is None:
                continue
            fqdns = self._by_policy.get(policy, set())
            entries = [self.entries[f] for f in fqdns if f in self.entries]
            self.policies.want_serving(ref, serving_fields(entries, self.limit))
            if not fqdns:
                self._by_policy.pop(policy, None)
        if policies:
            self.status_dirty.set()
