"""The reconciler's shell: replay the events stream into the `Planner`, hold the leader lease,
and, as leader, write to KV only the services that changed and publish policy statuses.

Every replica replays the stream and plans, so a standby that takes over has the world in
memory already: it reloads what the buckets and the status stream hold, and writes only what
differs (nothing, when the old leader had converged). A restart is a takeover by a new replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from services.reconciler.channels import Channels
from services.reconciler.first_sync import FirstSync, Verdict
from services.reconciler.gc_tuning import GcTuning
from services.reconciler.home_keeper import HomeKeeper
from services.reconciler.lease import Leadership
from services.reconciler.lease_io import lease_step, release_lease
from services.reconciler.metrics import (
    DRIFT_REPAIRS,
    EVENTS_APPLIED_BY_KIND,
    FIRST_SYNC_MISSING,
    FIRST_SYNC_WAIT,
    LEADER,
    LEADERSHIP,
    PLAN_SECONDS,
    PLANS,
    REBUILDS,
    REJECTED,
    REJECTED_NAMES,
    REPLANNED,
    RESYNCS,
    SERVICES,
    UNPLANNED_NAMES,
)
from services.reconciler.names import RejectedName, newly_rejected
from services.reconciler.plan import PlanDelta, Planner
from services.reconciler.settings import ReconcilerSettings
from services.reconciler.writes import (
    FencedOut,
    KvMirror,
    LostLeadership,
    StreamFence,
    in_flight,
)
from services.reconciler.zone_keys import KeysAndDelegation
from shared import bus, subjects, wire
from shared.logs import set_level
from shared.models import (
    GslbService,
    ObservedObject,
    PolicyDeleted,
    PolicyObject,
    PolicyRef,
    PolicyState,
    PolicyStatus,
    SyncMarker,
    Tombstone,
)
from shared.names import NameProblem
from shared.runtime import replica_name, run_service

log = logging.getLogger(__name__)
SERVICE = "reconciler"
PLAN_CHUNK_FQDNS = 2_000
YIELD_EVERY_EVENTS = 256
EVENTS_HEARTBEAT_SECONDS = 1.0
"""The events consumer notices a restarted nats-server after two missed heartbeats and
resumes; nats-py's default of 5 s left the reconciler deaf for up to 10 s after an outage."""

EVENT_KINDS: tuple[type[wire.WireModel], ...] = (
    ObservedObject,
    Tombstone,
    SyncMarker,
    PolicyObject,
    PolicyDeleted,
)
DEFAULT_REFRESH_INTERVAL_SECONDS = 1800
REBUILT_FROM_MEMORY = frozenset(
    {
        subjects.STREAM_EVENTS,
        subjects.STREAM_STATUS,
        bus.kv_stream(subjects.KV_SERVICES),
        bus.kv_stream(subjects.KV_ZONES),
    }
)
"""Streams whose loss makes the leader write the desired state and statuses again."""


ENCODE_CHUNK = 2_000
"""Services encoded between turns of the event loop when a takeover writes the whole plan."""


async def encoded_in_turns(services: Mapping[str, GslbService]) -> dict[str, bytes]:
    """KV key -> encoded value of every service, letting the event loop turn every
    `ENCODE_CHUNK`: encoded in one go, 100,000 services held the loop for over a second, the
    lease renewal with it, and with a 1 s lease every takeover lost its lease before writing
    (a leader that never led: "the lease ran out while taking over", again and again)."""
    encoded: dict[str, bytes] = {}
    for index, (fqdn, service) in enumerate(services.items(), 1):
        encoded[subjects.fqdn_key(fqdn)] = wire.encode(service)
        if index % ENCODE_CHUNK == 0:
            await asyncio.sleep(0)
    return encoded


class Reconciler:
    def __init__(self, settings: ReconcilerSettings, nc: Client, js: JetStreamContext) -> None:
        self.settings = settings
        self.nc = nc
        self.js = js
        self.replica = replica_name(settings)
        self.planner = Planner()
        self.gc_tuning = GcTuning()
        self.leadership = Leadership(self.replica, settings.lease_ttl_seconds)
        self.published_status: dict[PolicyRef, PolicyStatus] = {}
        self._rejected_names: dict[str, RejectedName] = {}
        self.caught_up = asyncio.Event()
        self._dirty = asyncio.Event()
        self._replayed = 0
        self._planned = False
        self._leading = False
        """Leader and converged: the bucket mirrors are current and writes go out."""
        self._resync_due = False
        self._converge_all_due = False
        self._last_resync = time.monotonic()
        self._log_level = ""
        self._services: KvMirror | None = None
        self._zones: KvMirror | None = None
        self._statuses: StreamFence | None = None
        self._leases: KeyValue | None = None
        self._lease_nc: Client | None = None
        self._homes: HomeKeeper | None = None
        self.first_sync = FirstSync(
            settings.first_sync_timeout_seconds,
            settings.first_sync_max_wait_seconds,
            started_at=time.monotonic(),
        )
        self._first_sync_verdict: Verdict | None = None
        self.keeper = bus.StateKeeper(nc, settings.stream_replicas, settings.state_check_seconds)
        self._rebuild_due = False
        """JetStream lost its state: write everything again as soon as leading."""
        self._events: JetStreamContext.PushSubscription | None = None
        self.delegation = KeysAndDelegation.of(self)
        self.channels = Channels(nc)

    @property
    def ready(self) -> bool:
        """Caught up with the stream and planned: able to lead at once. Leadership is not
        readiness (a standby is a healthy replica); it shows in `readiness_detail`."""
        intact = self.keeper.intact and not self._rebuild_due
        return self.caught_up.is_set() and self._planned and intact

    def readiness_detail(self) -> str:
        role = "leader" if self._leading else "standby"
        verdict = self._first_sync_verdict
        if verdict and not verdict.open:
            role += f", {verdict.reason}"
        if state := self.keeper.describe():
            return f"{role}; {state}"
        return f"{role}; rebuilding the desired state" if self._rebuild_due else role

    async def run(self) -> None:
        await self.keeper.bootstrap()
        self.keeper.on_loss(self._state_lost)
        # The lease has a connection of its own: on the events connection its replies queue
        # behind a replay's flood of messages, and at 300,000 events the leader timed out
        # renewing, stood down and sat idle for 100 s (bench/e2e_scale.py --fqdns 100000).
        self._lease_nc = await bus.connect(self.settings, f"kgslb-{SERVICE}-{self.replica}-lease")
        self._leases = await self._lease_nc.jetstream().key_value(subjects.KV_LEASES)
        self._services = KvMirror(self.js, subjects.KV_SERVICES, self.leadership)
        self._zones = KvMirror(self.js, subjects.KV_ZONES, self.leadership)
        self._statuses = StreamFence(
            self.js, subjects.STREAM_STATUS, subjects.STATUS_FENCE_SUBJECT, self.leadership
        )
        await self._load_statuses()
        self._homes = HomeKeeper(
            self._leases, self.leadership, lambda: self.planner.policies.config, self.settings
        )
        self._events = await self._subscribe_events()
        events = self._events
        info = await events.consumer_info()
        if info.num_pending == 0 and events.delivered == 0:
            self.caught_up.set()
            self._dirty.set()
        try:
            await asyncio.gather(
                self._plan_loop(),
                self._lease_loop(),
                self._resync_loop(),
                self._homes.run(),
                self.keeper.run(),
                self.delegation.run(),
            )
        finally:
            with contextlib.suppress(Exception):
                if self._events is not None:
                    await self._events.unsubscribe()
            await self._release()
            if self._lease_nc is not None:
                with contextlib.suppress(Exception):
                    await self._lease_nc.drain()

    # Inputs ---------------------------------------------------------------------------------

    async def _subscribe_events(self) -> JetStreamContext.PushSubscription:
        return await self.js.subscribe(
            subjects.EVENTS_STREAM_SUBJECTS[0],
            stream=subjects.STREAM_EVENTS,
            cb=self._on_event,
            ordered_consumer=True,
            idle_heartbeat=EVENTS_HEARTBEAT_SECONDS,
            deliver_policy=DeliverPolicy.ALL,
            config=ConsumerConfig(filter_subjects=list(subjects.EVENTS_STREAM_SUBJECTS)),
        )

    async def _state_lost(self, lost: frozenset[str]) -> None:
        """JetStream lost streams or buckets (created anew, empty): follow the new events
        stream from its start (an ordered consumer would resume after the old stream's last
        sequence and miss everything up to it), write the whole desired state again from
        memory, and ask the watchers to publish everything they hold again."""
        if lost & REBUILT_FROM_MEMORY:
            self._rebuild_due = True
            self._dirty.set()
        if subjects.STREAM_EVENTS not in lost:
            return
        old, self._events = self._events, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()
        self._events = await self._subscribe_events()
        request = await self.channels.request_resync(
            self.replica, "lost " + ", ".join(sorted(lost))
        )
        log.warning(
            "asked the watchers to publish everything again on %s", subjects.RESYNC_SUBJECT,
            extra={"reason": request.reason},
        )  # fmt: skip

    async def _load_statuses(self) -> None:
        """Statuses already published: not republished, and the versions they say are in
        force stay in force while a newer version is invalid, across restarts and takeovers."""
        messages = await bus.read_last_per_subject(
            self.js, subjects.STREAM_STATUS, f"{subjects.STATUS_PREFIX}.>"
        )
        adopted = []
        for msg in messages:
            if subjects.is_status_fence(msg.subject):
                continue
            with contextlib.suppress(wire.WireError):
                status = wire.decode(msg.data, PolicyStatus)
                self.published_status[status.ref] = status
                if status.accepted_spec is not None and status.accepted_generation is not None:
                    adopted.append(
                        PolicyObject(
                            ref=status.ref,
                            generation=status.accepted_generation,
                            spec=status.accepted_spec,
                        )
                    )
        self.planner.adopt_accepted(adopted)

    async def _on_event(self, msg: Msg) -> None:
        try:
            message = wire.decode_any(msg.data, EVENT_KINDS)
        except wire.WireError as exc:
            await bus.dead_letter(
                self.nc, SERVICE, msg.subject, msg.data, str(exc), bus.stream_position(msg)
            )
        else:
            self.first_sync.observe(message, time.monotonic())
            if not await self._from_inactive_home(message):
                self.planner.apply(message)
                EVENTS_APPLIED_BY_KIND(message.KIND).inc()
        # Live events too: a cold start's 300,000 arrive live, and with none frozen each
        # collection of the oldest generation rescanned everything applied so far (decoding
        # alone took twice as long).
        self.gc_tuning.event_applied()
        if not self.caught_up.is_set():
            self._replayed += 1
            if self._replayed % YIELD_EVERY_EVENTS == 0:
                # A replay delivers faster than it is applied; let the lease, the ops
                # endpoint and the NATS reader run in between.
                await asyncio.sleep(0)
        if not self.caught_up.is_set() and msg.metadata.num_pending == 0:
            self.gc_tuning.replay_done()
            log.info(
                "replayed events stream",
                extra={
                    "observed": len(self.planner.observed),
                    "policies": len(self.planner.policy_objects),
                },
            )
            self.caught_up.set()
        if self.caught_up.is_set():
            self._dirty.set()

    async def _from_inactive_home(self, message: wire.WireModel) -> bool:
        """A live policy change from a home cluster that is not the active one is ignored
        (the replay keeps what the stream holds: the active home rewrites it on takeover)."""
        if not isinstance(message, PolicyObject | PolicyDeleted) or self._homes is None:
            return False
        if not self.caught_up.is_set() or not message.home_cluster:
            return False
        if not await self._homes.from_inactive_home(message.home_cluster):
            return False
        active = self._homes.current.active if self._homes.current else "?"
        log.warning(
            "ignored %s of %s from home cluster %s: the active home cluster is %s",
            message.KIND, message.ref, message.home_cluster, active,
            extra={"policy": str(message.ref), "cluster": message.home_cluster},
        )  # fmt: skip
        return True

    # Leadership -----------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        """Renew or contend for the lease four times per TTL."""
        assert self._leases is not None
        period = self.settings.lease_ttl_seconds / 4
        while True:
            try:
                await self._lease_step(self._leases)
            except Exception as exc:  # NATS away: the belief simply runs out
                log.warning("lease step failed: %s", exc)
            leader = self.leadership.is_leader(time.monotonic())
            LEADER.set(1 if leader and self._leading else 0)
            if leader and not self._leading:
                self._dirty.set()
            if not leader and self._leading:
                self._step_down()
            await asyncio.sleep(period)

    async def _lease_step(self, leases: KeyValue) -> None:
        await lease_step(leases, self.leadership)

    def _step_down(self) -> None:
        LEADER.set(0)
        if self._leading:
            self._leading = False
            LEADERSHIP.labels("lost").inc()
            log.warning("lost the leader lease; standing by")

    async def _release(self) -> None:
        """On shutdown, hand the lease over at once instead of after a TTL."""
        if self._leases is not None:
            await release_lease(self._leases, self.leadership)

    async def _resync_loop(self) -> None:
        """Ask for a full resync every GSLBConfig refreshInterval while leading."""
        while True:
            await asyncio.sleep(0.25)
            config = self.planner.policies.config
            interval = config.refresh_interval if config else DEFAULT_REFRESH_INTERVAL_SECONDS
            if interval and self._leading and time.monotonic() - self._last_resync >= interval:
                self._resync_due = True
                self._dirty.set()

    # Planning and writing -------------------------------------------------------------------

    async def _plan_loop(self) -> None:
        while True:
            verdict = self._first_sync_verdict
            with contextlib.suppress(TimeoutError):
                # While the first lists are awaited, look again when a timeout runs out.
                await asyncio.wait_for(
                    self._dirty.wait(), verdict.retry_in_seconds if verdict else None
                )
            # Coalesce a burst of events into one plan.
            await asyncio.sleep(self.settings.debounce_seconds)
            self._dirty.clear()
            if not self.caught_up.is_set() or not self._first_sync_open():
                continue
            try:
                await self.reconcile()
            except FencedOut as fenced:
                # Whatever our clock says, a newer leader took over: stand by until the lease
                # says otherwise (docs/architecture.md, "Leader fencing").
                log.warning("%s; standing by", fenced)
                self.leadership.lost()
                self._step_down()
            except LostLeadership as lost:
                if not self._leading:  # (a leader says so in _step_down)
                    log.warning("the lease ran out while taking over (%s); standing by", lost)
                self._step_down()
            except Exception:
                log.exception("reconcile failed; retrying")
                self.keeper.notice()  # a bucket may be missing
                # The plan moved on but some writes may not have landed: compare every key.
                self._converge_all_due = True
                await asyncio.sleep(1)
                self._dirty.set()

    def _first_sync_open(self) -> bool:
        """Names are planned (and written) once the member clusters' first lists are in, so
        a cold start writes each name once (first_sync.py)."""
        if self.first_sync.opened is not None:
            return True
        members = self.planner.refresh_policies().members
        verdict = self._first_sync_verdict = self.first_sync.decide(members, time.monotonic())
        if verdict.open:
            waited = time.monotonic() - self.first_sync.started_at
            FIRST_SYNC_WAIT.set(waited)
            FIRST_SYNC_MISSING.set(len(verdict.missing))
            extra = {"waited_seconds": round(waited, 2), "missing": list(verdict.missing)}
            if verdict.missing:
                log.warning(
                    "planning without the first list of cluster(s) %s: %s",
                    ", ".join(verdict.missing), verdict.reason, extra=extra,
                )  # fmt: skip
            else:
                log.info("planning: %s", verdict.reason, extra=extra)
        return verdict.open

    async def _replan_in_parts(self) -> PlanDelta:
        """Everything applied so far planned, in parts of PLAN_CHUNK_FQDNS: a plan of
        100,000 FQDNs takes seconds, and in one go it starved the lease renewal and the NATS
        reader (one synchronous plan lost the lease at that size). Every plan goes this way:
        the event-driven one, a takeover's and the periodic resync's full one."""
        delta = self.gc_tuning.replan(self.planner, limit=PLAN_CHUNK_FQDNS)
        while delta.more:
            await asyncio.sleep(0)
            part = self.gc_tuning.replan(self.planner, limit=PLAN_CHUNK_FQDNS)
            delta.services.update(part.services)
            delta = PlanDelta(
                delta.services, delta.replanned + part.replanned, delta.full or part.full,
                part.more,
            )  # fmt: skip
        return delta

    async def reconcile(self) -> None:
        started = time.perf_counter()
        delta = await self._replan_in_parts()
        PLAN_SECONDS.observe(time.perf_counter() - started)
        PLANS.labels("full" if delta.full else "incremental").inc()
        REPLANNED.inc(delta.replanned)
        self._planned = True
        self._apply_log_level()
        log.debug(
            "planned",
            extra={
                "replanned": delta.replanned,
                "changed": len(delta.services),
                "full": delta.full,
            },
        )
        SERVICES.set(len(self.planner.services))
        REJECTED.set(sum(s.state == PolicyState.REJECTED for s in self.planner.statuses.values()))
        self._report_rejected_names()
        if not self.leadership.is_leader(time.monotonic()):
            if self._leading:
                self._step_down()
            self._rebuild_due = False  # a takeover reads the buckets anyway
            return
        if not self._leading:
            await self._take_over()
            self._rebuild_due = False
        elif self._rebuild_due:
            await self._rebuild()
        elif self._resync_due:
            await self._resync()
        elif self._converge_all_due:
            self._converge_all_due = False
            await self._converge_all()
        else:
            writes = await in_flight(
                self._write_service(fqdn, service) for fqdn, service in delta.services.items()
            )
            writes += await self._write_zones()
            await self._publish_statuses()
            if writes:
                log.info(
                    "applied plan",
                    extra={"kv_writes": writes, "services": len(self.planner.services)},
                )

    def _report_rejected_names(self) -> None:
        """Log and count each rejected name once, not on every re-plan (the statuses of the
        policies that selected them say it for as long as it lasts)."""
        current = self.planner.rejected_names
        for rejected in newly_rejected(self._rejected_names, current):
            REJECTED_NAMES.labels(rejected.bad.problem.value).inc()
            log.warning(
                "%s: %s", rejected.policy, rejected.describe(),
                extra={"policy": str(rejected.policy), "reason": rejected.bad.problem.value},
            )  # fmt: skip
        self._rejected_names = dict(current)
        for problem in NameProblem:
            UNPLANNED_NAMES.labels(problem.value).set(
                sum(r.bad.problem == problem for r in current.values())
            )

    def _apply_log_level(self) -> None:
        config = self.planner.policies.config
        level = config.log_level if config else self.settings.log_level
        if level != self._log_level:
            set_level(level)
            self._log_level = level

    async def _write_service(self, fqdn: str, service: GslbService | None) -> bool:
        assert self._services is not None
        key = subjects.fqdn_key(fqdn)
        if service is None:
            return await self._services.delete(key)
        return await self._services.put(key, wire.encode(service))

    async def _write_zones(self) -> int:
        assert self._zones is not None
        return await self._zones.converge(
            {subjects.fqdn_key(z): wire.encode(s) for z, s in self.planner.policies.zones.items()}
        )

    async def _converge_all(self) -> int:
        """Make both buckets hold exactly the plan, comparing every key."""
        assert self._services is not None
        writes = await self._services.converge(await encoded_in_turns(self.planner.services))
        writes += await self._write_zones()
        await self._publish_statuses()
        return writes

    async def _fence_and_load(self) -> None:
        """Start our term in both buckets and the status stream (no older term's write lands
        after this), then read what the buckets hold."""
        assert self._services is not None and self._zones is not None
        assert self._statuses is not None
        await self._services.fence()
        await self._zones.fence()
        await self._statuses.fence()
        await self._services.load()
        await self._zones.load()

    async def _take_over(self) -> None:
        """Become the writer: fence the buckets (no write of an older term lands after this),
        learn what they and the statuses hold now (the previous leader wrote them), then
        write only the differences."""
        await self._fence_and_load()
        await self._load_statuses()
        await self._replan_in_parts()
        writes = await self._converge_all()
        self._leading = True
        self._last_resync = time.monotonic()
        LEADER.set(1)
        LEADERSHIP.labels("acquired").inc()
        log.info(
            "leading",
            extra={"kv_writes": writes, "services": len(self.planner.services)},
        )

    async def _rebuild(self) -> None:
        """After lost JetStream state: the buckets and the status stream hold nothing (or
        what was written since); write the whole plan and every status again. The term's
        fence markers went with them, so the term is fenced again first (its writes are
        conditional on markers that no longer exist)."""
        await self._fence_and_load()
        self.published_status.clear()
        writes = await self._converge_all()
        self._rebuild_due = False
        REBUILDS.inc()
        log.warning(
            "rebuilt the desired state after lost JetStream state",
            extra={"kv_writes": writes, "services": len(self.planner.services)},
        )

    async def _resync(self) -> None:
        """Full resync: re-read the buckets and re-plan everything; keys edited or deleted
        by hand are written back."""
        assert self._services is not None and self._zones is not None
        self._resync_due = False
        self._last_resync = time.monotonic()
        await self._services.load()
        await self._zones.load()
        self.planner.invalidate()
        await self._replan_in_parts()
        writes = await self._converge_all()
        RESYNCS.inc()
        if writes:
            DRIFT_REPAIRS.inc(writes)
            log.warning("resync repaired drift", extra={"kv_writes": writes})

    async def _publish_statuses(self) -> None:
        statuses = self.delegation.with_results(self.planner.statuses, self.published_status)
        for ref, status in statuses.items():
            if self.published_status.get(ref) == status:
                continue
            if status.state == PolicyState.REJECTED:
                log.warning("policy rejected: %s", status.message, extra={"policy": str(ref)})
            assert self._statuses is not None
            await self._statuses.publish(
                subjects.status_subject(ref.kind, ref.namespace, ref.name), wire.encode(status)
            )
            self.published_status[ref] = status
        for ref in [r for r in self.published_status if r not in statuses]:
            # The object is gone: so is its status, so a CR created again under the same
            # name never inherits the spec its predecessor had in force.
            del self.published_status[ref]
            subject = subjects.status_subject(ref.kind, ref.namespace, ref.name)
            try:
                await self.js.purge_stream(subjects.STREAM_STATUS, subject=subject)
            except Exception as exc:
                log.warning(
                    "could not purge the status of deleted %s (needs publish on "
                    "$JS.API.STREAM.PURGE.%s): %s",
                    ref,
                    subjects.STREAM_STATUS,
                    exc,
                )


async def main(settings: ReconcilerSettings) -> None:
    async def build(nc: Client) -> Reconciler:
        return Reconciler(settings, nc, nc.jetstream())

    await run_service(SERVICE, settings, build)
