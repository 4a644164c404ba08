"""The health service's shell: follow the desired services, the member health and the replica
heartbeats in KV, probe this replica's rendezvous share of the members, and write a member's
health only when its state changes (or when it claims a member from a dead replica).

With a `--site`, the replica is one vantage point among the sites': it reads and writes only
its site's verdicts (keys `<fqdn>.<ip>.<site>`) and shares members only with its site's
replicas; the DNS combines the sites' verdicts (services/dns/quorum.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from nats.aio.client import Client
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.health.monitor import (
    MemberState,
    ProbeResult,
    ProbeTarget,
    Sighting,
    advance,
    health_record,
    initial_state,
    live_replicas,
    needs_write,
    orphan_keys,
    owner,
    targets_of,
)
from services.health.probes import Prober
from services.health.scheduler import ProbeScheduler
from services.health.settings import HealthSettings
from shared import bus, subjects, wire
from shared.collector import LongLivedState
from shared.follow import BucketFollower, Change
from shared.kv_window import ConditionalPut, WindowedPuts
from shared.metrics import Children
from shared.models import GslbService, HealthHeartbeat, HealthState, MemberHealth, utcnow
from shared.runtime import replica_name, run_service

log = logging.getLogger(__name__)
SERVICE = "health"
WRITE_BATCH = 256

PROBES = Counter(
    "kgslb_health_probes_total", "Probes by monitor kind and outcome", ["kind", "outcome"]
)
TRANSITIONS = Counter("kgslb_health_transitions_total", "Member state changes", ["state"])
KV_WRITES = Counter(
    "kgslb_health_kv_writes_total",
    "Writes to KV kgslb_health (conflict: another replica wrote first)",
    ["op"],
)
PROBE_COUNTS = Children(PROBES)
WRITE_COUNTS = Children(KV_WRITES)
BAD_VALUES = Counter(
    "kgslb_health_bad_values_total", "KV values that could not be decoded", ["bucket"]
)


@dataclass(frozen=True, slots=True)
class Known:
    """The newest value of a key in KV kgslb_health as this replica knows it."""

    health: MemberHealth | None
    """None when the value could not be decoded."""
    revision: int


class HealthService:
    def __init__(self, settings: HealthSettings, nc: Client) -> None:
        self.settings = settings
        self.nc = nc
        self._windows = WindowedPuts(nc)
        self.long_lived = LongLivedState()
        self.replica = replica_name(settings)
        self.site = settings.site
        source = str(settings.probe_source) if settings.probe_source is not None else None
        self.scheduler = ProbeScheduler(
            Prober(settings.tls_ca_file, source).probe, self._on_result, settings.max_connections
        )
        self.targets: dict[str, ProbeTarget] = {}
        self.members_of: dict[str, set[str]] = {}
        """KV kgslb_services key -> keys of its members."""
        self.known: dict[str, Known] = {}
        self._live_sent: dict[str, HealthState] = {}
        """Members whose last verdict went out live but not (yet) to the KV: that state."""
        self.owned: dict[str, MemberState] = {}
        self.sightings: dict[str, Sighting] = {}
        """Peers of this replica's site: they share the members."""
        self.elsewhere: dict[str, Sighting] = {}
        """Replicas of other sites: watched only to bury their heartbeat when they die."""
        self.live: frozenset[str] = frozenset({self.replica})
        self._reannounce = asyncio.Event()
        self.keeper = bus.StateKeeper(nc, settings.stream_replicas, settings.state_check_seconds)
        missing = self.keeper.notice
        services = BucketFollower(nc, subjects.KV_SERVICES, self._apply_service, on_missing=missing)
        self._followers = [
            BucketFollower(
                nc,
                subjects.KV_LEASES,
                self._apply_lease,
                subjects.HEALTH_REPLICA_KEYS,
                on_loss=self._reannounce.set,
                on_missing=missing,
            ),
            BucketFollower(
                nc,
                subjects.KV_HEALTH,
                self._apply_health,
                subjects.health_keys_of_site(self.site),
                on_loss=self._health_lost,
                on_missing=missing,
                # Once loaded, mostly our own writes coming back: members to judge first.
                defer_to=[services],
            ),
            services,
        ]
        self._started = False
        self._vouched = False
        self._pending_writes: dict[str, None] = {}
        self._write_wanted = asyncio.Event()
        self._pending_live: dict[str, None] = {}
        self._live_wanted = asyncio.Event()
        self._orphans_seen: set[str] = set()
        self._health_kv: KeyValue | None = None
        self._leases_kv: KeyValue | None = None
        REGISTRY.register(_StateCollector(self))

    @property
    def ready(self) -> bool:
        """Loaded and probing, vouching for every member it owns, with every bucket there
        (not rebuilding a lost store)."""
        missing = any(f.missing for f in self._followers)
        return self._started and self._vouching() and not missing and self.keeper.intact

    def _vouching(self) -> bool:
        """Every member this replica owns has a verdict in the KV written by this replica: a
        replica that just started (a site restored) counts as a vantage point for the DNS
        only then, so a failure right after must not find it still claiming. Checked until
        it first holds."""
        if not self._vouched:
            mine = self.replica
            self._vouched = all(self._written_by(key, mine) for key in self.owned)
        return self._vouched

    def readiness_detail(self) -> str:
        parts = [f"owned {len(self.owned)} of {len(self.targets)} members"]
        if self._started and not self._vouching():
            mine = self.replica
            claiming = sum(1 for key in self.owned if not self._written_by(key, mine))
            parts.append(f"{claiming} verdicts not yet written by this replica")
        if missing := [f.bucket for f in self._followers if f.missing]:
            parts.append("missing: " + ", ".join(missing))
        if state := self.keeper.describe():
            parts.append(state)
        return "; ".join(parts)

    def _written_by(self, key: str, replica: str) -> bool:
        known = self.known.get(key)
        return known is not None and known.health is not None and known.health.replica == replica

    def _health_lost(self) -> None:
        """KV kgslb_health was created anew, empty: every verdict this replica owns is
        written again (create, not update: the revisions known are gone)."""
        self.known.clear()
        for key in self.owned:
            self._request_write(key)
        log.warning("KV %s lost: rewriting %d verdicts", subjects.KV_HEALTH, len(self.owned))

    @property
    def _valid_for_seconds(self) -> float:
        return self.settings.heartbeat_seconds * self.settings.dead_after_heartbeats

    async def run(self) -> None:
        buckets = await self.keeper.bootstrap()
        self._health_kv = buckets[subjects.KV_HEALTH]
        self._leases_kv = buckets[subjects.KV_LEASES]
        # Announce first: peers re-shard before this replica probes anything.
        await self._heartbeat()
        try:
            await asyncio.gather(
                *(follower.run() for follower in self._followers),
                self.keeper.run(),
                self._start_when_loaded(),
                self._heartbeat_loop(),
                self._sweep_loop(),
                self._write_loop(),
                self._live_loop(),
                self.scheduler.run(),
            )
        finally:
            # Leave at once rather than after missed heartbeats: peers take over right away.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await self._leases_kv.delete(subjects.health_replica_key(self.replica))

    # Following KV ---------------------------------------------------------------------------

    async def _all_caught_up(self) -> None:
        await asyncio.gather(*(follower.wait_caught_up() for follower in self._followers))

    def _decode(self, entry: Change | KeyValue.Entry, model: type[wire.M]) -> wire.M | None:
        try:
            return wire.decode(entry.value or b"", model)
        except wire.WireError as exc:
            BAD_VALUES.labels(entry.bucket).inc()
            log.error("ignoring bad %s value for %s: %s", entry.bucket, entry.key, exc)
            return None

    async def _start_when_loaded(self) -> None:
        await self._all_caught_up()
        self.long_lived.settled()
        self._started = True
        self._reshard()
        log.info(
            "probing",
            extra={
                "members": len(self.targets),
                "owned": len(self.owned),
                "live": sorted(self.live),
                "site": self.site,
            },
        )

    def _apply_service(self, entry: Change) -> None:
        self.long_lived.changed()
        targets: dict[str, ProbeTarget] = {}
        if entry.value is not None:
            service = self._decode(entry, GslbService)
            if service is None:
                return
            targets = targets_of(service)
        for key in self.members_of.pop(entry.key, set()) - targets.keys():
            del self.targets[key]
            self._release(key)
        self.targets.update(targets)
        if targets:
            self.members_of[entry.key] = set(targets)
        if self._started:
            for key in targets:
                self._place(key)

    def _apply_health(self, entry: Change) -> None:
        # The follower's filter passes only this site's keys; internally a member is its
        # member key, whatever the site.
        try:
            key, _ = subjects.split_health_key(entry.key)
        except ValueError:
            return
        self.long_lived.changed()
        current = self.known.get(key)
        if current is not None and entry.revision <= current.revision:
            return
        if entry.value is None:
            self.known.pop(key, None)
            if key in self.owned:
                self._request_write(key)
            return
        health = self._decode(entry, MemberHealth)
        self.known[key] = Known(health, entry.revision)
        if health is not None and key in self.owned and health.replica != self.replica:
            # Another replica probes it too while ownership moves: go on from its verdict.
            self.owned[key] = initial_state(health, utcnow())

    def _apply_lease(self, entry: Change) -> None:
        try:
            replica = subjects.decode_token(entry.key.split(".", 1)[1])
        except ValueError:
            return
        if replica == self.replica:
            if entry.value is None:
                self._reannounce.set()
            return
        if entry.value is None:
            self.sightings.pop(replica, None)
            self.elsewhere.pop(replica, None)
        else:
            heartbeat = self._decode(entry, HealthHeartbeat)
            if heartbeat is None:
                return
            valid_for = (heartbeat.expires_at - heartbeat.heartbeat_at).total_seconds()
            sighting = Sighting(asyncio.get_running_loop().time(), valid_for)
            if heartbeat.site == self.site:
                self.sightings[replica] = sighting
                self.elsewhere.pop(replica, None)
            else:
                # Another vantage point: it probes every member itself, shares none with us.
                self.elsewhere[replica] = sighting
                self.sightings.pop(replica, None)
        self._refresh_live()

    # Sharding -------------------------------------------------------------------------------

    def _refresh_live(self) -> None:
        now = asyncio.get_running_loop().time()
        live = live_replicas(self.sightings, self.replica, now)
        if live == self.live:
            return
        log.info("live replicas changed", extra={"live": sorted(live), "was": sorted(self.live)})
        self.live = live
        if self._started:
            self._reshard()

    def _reshard(self) -> None:
        for key in [key for key in self.owned if key not in self.targets]:
            self._release(key)
        for key in self.targets:
            self._place(key)

    def _place(self, key: str) -> None:
        if owner(key, self.live) != self.replica:
            self._release(key)
            return
        if key not in self.owned:
            known = self.known.get(key)
            self.owned[key] = initial_state(known.health if known else None, utcnow())
        # Claims the member if its recorded prober is gone, writes `unknown` if it is new.
        self._request_write(key)
        self.scheduler.schedule(self.targets[key])

    def _release(self, key: str) -> None:
        self.owned.pop(key, None)
        self._live_sent.pop(key, None)
        self.scheduler.cancel(key)

    # Probing --------------------------------------------------------------------------------

    def _on_result(self, target: ProbeTarget, result: ProbeResult) -> None:
        state = self.owned.get(target.key)
        if state is None:
            return
        PROBE_COUNTS(target.monitor.kind.value, result.outcome.value).inc()
        new = advance(state, result, target.monitor, utcnow())
        self.owned[target.key] = new
        if new.state is not state.state:
            TRANSITIONS.labels(new.state.value).inc()
            # A member's first verdict `up` is news to nobody: at the cold start of a large
            # install it was a log line per member (300,000 at 100,000 names, several CPU-s).
            first_up = state.state is HealthState.UNKNOWN and new.state is HealthState.UP
            log.log(
                logging.DEBUG if first_up else logging.INFO,
                "member %s %s (cluster %s): %s -> %s",
                target.fqdn,
                target.ip,
                target.cluster,
                state.state.value,
                new.state.value,
                extra={
                    "member": target.key,
                    "fqdn": target.fqdn,
                    "ip": target.ip,
                    "cluster": target.cluster,
                    "result": result.summary,
                    "error": result.error,
                },
            )
        known = self.known.get(target.key)
        live_behind = self._live_sent.get(target.key, new.state) != new.state
        if live_behind or needs_write(known.health if known else None, new, self.live):
            self._request_write(target.key)

    # Writing --------------------------------------------------------------------------------

    def _request_write(self, key: str) -> None:
        self._pending_writes[key] = None
        self._write_wanted.set()
        if self._live_due(key):
            self._pending_live[key] = None
            self._live_wanted.set()

    def _live_due(self, key: str) -> bool:
        """Whether the member's verdict must go out on core NATS. Only a verdict that changes
        answers is urgent: to or from down (unknown is answered like up), so a cold start's
        thousands of first verdicts go through the KV alone. A verdict sent live whose KV
        write has not landed (a stream electing its leader) is followed live by the next one,
        even when that one equals what the KV still holds."""
        state = self.owned.get(key)
        if state is None:
            return False
        sent = self._live_sent.get(key)
        if sent is not None:
            return sent is not state.state
        known = self.known.get(key)
        return answers_change(known.health if known else None, state.state)

    async def _live_loop(self) -> None:
        """Verdicts on core NATS, apart from the KV writes: a KV write that waits for a
        stream's election (its leader was on a lost site) must not hold back the verdict the
        DNS of every surviving site applies at once (subjects.HEALTH_LIVE_PREFIX)."""
        while True:
            await self._live_wanted.wait()
            self._live_wanted.clear()
            while self._pending_live:
                key = next(iter(self._pending_live))
                del self._pending_live[key]
                if self._live_due(key):
                    await self._publish_live(key)

    async def _publish_live(self, key: str) -> None:
        state, target = self.owned.get(key), self.targets.get(key)
        if state is None or target is None:
            return
        known = self.known.get(key)
        record = health_record(target, state, self.replica, known.health if known else None,
                               self.site)  # fmt: skip
        with contextlib.suppress(Exception):
            await self.nc.publish(
                subjects.health_live_subject(subjects.health_key(key, self.site)),
                wire.encode(record),
            )
            self._live_sent[key] = state.state

    async def _write_loop(self) -> None:
        while True:
            await self._write_wanted.wait()
            self._write_wanted.clear()
            while self._pending_writes:
                batch = list(itertools.islice(self._pending_writes, WRITE_BATCH))
                for key in batch:
                    del self._pending_writes[key]
                await self._write_window(batch)

    async def _write_window(self, keys: list[str]) -> None:
        """The verdicts of `keys` that need writing, in one window of conditional puts; a
        put whose condition fails goes the one-key way (`_write`): a create of a key deleted
        before needs the tombstone's revision, an update another replica's value."""
        if self._health_kv is None:
            return
        puts: list[tuple[str, MemberHealth, ConditionalPut]] = []
        for key in keys:
            if (due := self._due(key)) is None:
                continue
            record, known = due
            kv_key = subjects.health_key(key, self.site)
            last = known.revision if known is not None else 0
            puts.append((key, record, ConditionalPut(kv_key, wire.encode(record), last)))
        if not puts:
            return
        outcomes = await self._windows.put(self._health_kv, [put for _, _, put in puts])
        retry: list[str] = []
        failed: list[tuple[str, Exception]] = []
        for (key, record, put), outcome in zip(puts, outcomes, strict=True):
            if isinstance(outcome, KeyWrongLastSequenceError):
                retry.append(key)
            elif isinstance(outcome, Exception):
                failed.append((key, outcome))
            else:
                WRITE_COUNTS("update" if put.last else "create").inc()
                self._written(key, record, outcome)
        if failed:
            # The next probe of these members tries again. One line for the window: NATS
            # away fails them all alike.
            key, exc = failed[0]
            log.warning(
                "could not write health of %s%s: %s", key,
                f" and {len(failed) - 1} other member(s)" if len(failed) > 1 else "",
                exc or type(exc).__name__, extra={"member": key, "failed": len(failed)},
            )  # fmt: skip
            self.keeper.notice()  # the bucket may be missing
        for key in retry:
            await self._write(key)

    def _due(self, key: str) -> tuple[MemberHealth, Known | None] | None:
        """The verdict to write for a member this replica owns, with what the KV holds for
        it as far as we know; None when nothing needs writing."""
        state, target = self.owned.get(key), self.targets.get(key)
        if state is None or target is None:
            return None
        known = self.known.get(key)
        previous = known.health if known else None
        if not needs_write(previous, state, self.live):
            return None
        return health_record(target, state, self.replica, previous, self.site), known

    async def _write(self, key: str) -> None:
        if self._health_kv is None or (due := self._due(key)) is None:
            return
        record, known = due
        data = wire.encode(record)
        kv_key = subjects.health_key(key, self.site)
        try:
            if known is None:
                revision = await self._health_kv.create(kv_key, data)
                WRITE_COUNTS("create").inc()
            else:
                revision = await self._health_kv.update(kv_key, data, last=known.revision)
                WRITE_COUNTS("update").inc()
        except KeyWrongLastSequenceError:
            WRITE_COUNTS("conflict").inc()
            await self._reload(key)
            return
        except Exception as exc:
            # The next probe of this member tries again.
            log.warning("could not write health of %s: %s", key, exc, extra={"member": key})
            self.keeper.notice()  # the bucket may be missing
            return
        self._written(key, record, revision)

    def _written(self, key: str, record: MemberHealth, revision: int) -> None:
        current = self.known.get(key)
        if current is None or current.revision < revision:
            self.known[key] = Known(record, revision)
        if self._live_sent.get(key) == record.state:
            del self._live_sent[key]  # the KV holds it: the live copy needs no follow-up

    async def _reload(self, key: str) -> None:
        """Another replica wrote first: take its value as the truth and go on from it."""
        assert self._health_kv is not None
        try:
            entry = await self._health_kv.get(subjects.health_key(key, self.site))
        except (KeyNotFoundError, KeyDeletedError):
            self.known.pop(key, None)
            return
        except Exception as exc:
            log.warning("could not read health of %s: %s", key, exc, extra={"member": key})
            return
        health = self._decode(entry, MemberHealth)
        self.known[key] = Known(health, entry.revision or 0)
        if health is not None and key in self.owned:
            self.owned[key] = initial_state(health, utcnow())

    # Heartbeats -----------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        assert self._leases_kv is not None
        now = utcnow()
        heartbeat = HealthHeartbeat(
            replica=self.replica,
            heartbeat_at=now,
            expires_at=now + timedelta(seconds=self._valid_for_seconds),
            members=len(self.owned),
            site=self.site,
        )
        try:
            await self._leases_kv.put(
                subjects.health_replica_key(self.replica), wire.encode(heartbeat)
            )
        except Exception as exc:
            log.warning("heartbeat not written: %s", exc)

    async def _heartbeat_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.heartbeat_seconds):
                    await self._reannounce.wait()
            self._reannounce.clear()
            await self._heartbeat()
            await self._bury_dead_peers()

    async def _bury_dead_peers(self) -> None:
        assert self._leases_kv is not None
        now = asyncio.get_running_loop().time()
        for sightings in (self.sightings, self.elsewhere):
            dead = [r for r, s in sightings.items() if now - s.seen_at > s.valid_for_seconds]
            for replica in dead:
                # Its lease's deletion may have removed it while we awaited another delete.
                if sightings.pop(replica, None) is None:
                    continue
                if sightings is self.sightings:
                    log.warning("replica %s stopped heartbeating; its members move", replica)
                else:
                    log.warning("replica %s of another site stopped heartbeating", replica)
                # Every survivor deletes it; the duplicates are harmless and keep the bucket
                # clean, and the DNS stops counting its verdicts at once.
                with contextlib.suppress(Exception):
                    await self._leases_kv.delete(subjects.health_replica_key(replica))
        self._refresh_live()

    async def _sweep_loop(self) -> None:
        """Delete the health of members no service lists any more, once they were orphans at
        two sweeps in a row (a service being replaced is not an orphan). Apart from the
        heartbeat, so deleting a large service never delays it."""
        await self._all_caught_up()
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            orphans = orphan_keys(self.known, self.targets, self.live, self.replica)
            doomed = sorted(orphans & self._orphans_seen)
            for start in range(0, len(doomed), WRITE_BATCH):
                await asyncio.gather(
                    *(self._delete(k) for k in doomed[start : start + WRITE_BATCH])
                )
            self._orphans_seen = orphans

    async def _delete(self, key: str) -> None:
        assert self._health_kv is not None
        try:
            await self._health_kv.delete(subjects.health_key(key, self.site))
            WRITE_COUNTS("delete").inc()
        except Exception as exc:
            log.warning("could not delete health of %s: %s", key, exc, extra={"member": key})


class _StateCollector(Collector):
    """Gauges computed at scrape time from the live maps, so probes never update them."""

    def __init__(self, service: HealthService) -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        members = GaugeMetricFamily(
            "kgslb_health_members", "Members this replica probes, by state", labels=["state"]
        )
        tally = Tally(state.state for state in list(self.service.owned.values()))
        for state in HealthState:
            members.add_metric([state.value], tally[state])
        yield members
        yield GaugeMetricFamily(
            "kgslb_health_replicas_live",
            "Health replicas of this one's site this one counts as alive, itself included",
            value=len(self.service.live),
        )
        site = GaugeMetricFamily(
            "kgslb_health_site_info",
            "The site this replica probes from (its vantage point; empty: no sites)",
            labels=["site"],
        )
        site.add_metric([self.service.site], 1)
        yield site
        yield GaugeMetricFamily(
            "kgslb_health_probes_in_flight",
            "Probes waiting for an answer",
            value=self.service.scheduler.in_flight,
        )


async def main(settings: HealthSettings) -> None:
    async def build(nc: Client) -> HealthService:
        return HealthService(settings, nc)

    await run_service(SERVICE, settings, build)


def answers_change(previous: MemberHealth | None, state: HealthState) -> bool:
    """Whether the DNS answers differently after this verdict: down withdraws a member,
    anything else (up, unknown) answers it."""
    was_down = previous is not None and previous.state is HealthState.DOWN
    return was_down != (state is HealthState.DOWN)
