"""The reconciler's shell: replay the events stream into memory, run `plan`, and write to KV
only what changed. Restarting rebuilds everything from the stream and writes nothing new."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge, Histogram

from services.reconciler.plan import Plan, plan
from shared import bus, subjects, wire
from shared.logs import set_level
from shared.models import (
    ObjectRef,
    ObservedObject,
    PolicyDeleted,
    PolicyObject,
    PolicyRef,
    PolicyState,
    PolicyStatus,
    SyncMarker,
    Tombstone,
)
from shared.runtime import run_service
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)
SERVICE = "reconciler"

EVENTS_APPLIED = Counter("kgslb_reconciler_events_total", "Events applied", ["kind"])
PLANS = Counter("kgslb_reconciler_plans_total", "Plans computed")
PLAN_SECONDS = Histogram("kgslb_reconciler_plan_seconds", "Time to compute one plan")
KV_WRITES = Counter("kgslb_reconciler_kv_writes_total", "KV writes", ["bucket", "op"])
REJECTED = Gauge("kgslb_reconciler_rejected_objects", "Policy objects currently Rejected")
SERVICES = Gauge("kgslb_reconciler_services", "Desired GSLB services")

EVENT_KINDS: tuple[type[wire.WireModel], ...] = (
    ObservedObject,
    Tombstone,
    SyncMarker,
    PolicyObject,
    PolicyDeleted,
)


class ReconcilerSettings(ServiceSettings):
    debounce_seconds: float = 0.005


class World:
    """Everything observed and every policy, as the events stream says now."""

    def __init__(self) -> None:
        self.observed: dict[ObjectRef, ObservedObject] = {}
        self.policies: dict[PolicyRef, PolicyObject] = {}

    def apply(self, message: wire.WireModel) -> None:
        match message:
            case ObservedObject(ref=ref):
                self.observed[ref] = message
            case Tombstone(ref=ref):
                self.observed.pop(ref, None)
            case SyncMarker(cluster=cluster, kinds=kinds, present=present):
                keep = set(present)
                for ref in [
                    r
                    for r in self.observed
                    if r.cluster == cluster and r.kind in kinds and r.short not in keep
                ]:
                    del self.observed[ref]
            case PolicyObject(ref=ref):
                self.policies[ref] = message
            case PolicyDeleted(ref=ref):
                self.policies.pop(ref, None)


class KvMirror:
    """A KV bucket and what we know it holds, so unchanged values are never rewritten."""

    def __init__(self, kv: KeyValue, bucket: str) -> None:
        self.kv = kv
        self.bucket = bucket
        self.values: dict[str, bytes] = {}

    async def load(self) -> None:
        watcher = await self.kv.watchall(ignore_deletes=True)
        async for entry in watcher:
            if entry is None:
                break
            if entry.value:
                self.values[entry.key] = entry.value
        await watcher.stop()

    async def converge(self, desired: dict[str, bytes]) -> int:
        writes = 0
        for key, value in desired.items():
            if self.values.get(key) != value:
                await self.kv.put(key, value)
                self.values[key] = value
                KV_WRITES.labels(self.bucket, "put").inc()
                writes += 1
        for key in [k for k in self.values if k not in desired]:
            await self.kv.delete(key)
            del self.values[key]
            KV_WRITES.labels(self.bucket, "delete").inc()
            writes += 1
        return writes


class Reconciler:
    def __init__(self, settings: ReconcilerSettings, nc: Client, js: JetStreamContext) -> None:
        self.settings = settings
        self.nc = nc
        self.js = js
        self.world = World()
        self.accepted: dict[PolicyRef, PolicyObject] = {}
        self.published_status: dict[PolicyRef, PolicyStatus] = {}
        self.caught_up = asyncio.Event()
        self._dirty = asyncio.Event()
        self.last_plan: Plan | None = None
        self._services: KvMirror | None = None
        self._zones: KvMirror | None = None

    @property
    def ready(self) -> bool:
        return self.caught_up.is_set() and self.last_plan is not None

    async def run(self) -> None:
        buckets = await bus.bootstrap(self.js)
        self._services = KvMirror(buckets[subjects.KV_SERVICES], subjects.KV_SERVICES)
        self._zones = KvMirror(buckets[subjects.KV_ZONES], subjects.KV_ZONES)
        await self._services.load()
        await self._zones.load()
        await self._load_published_status()
        sub = await self.js.subscribe(
            subjects.EVENTS_STREAM_SUBJECTS[0],
            stream=subjects.STREAM_EVENTS,
            cb=self._on_event,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            config=ConsumerConfig(filter_subjects=list(subjects.EVENTS_STREAM_SUBJECTS)),
        )
        info = await sub.consumer_info()
        if info.num_pending == 0 and sub.delivered == 0:
            self.caught_up.set()
            self._dirty.set()
        try:
            await self._plan_loop()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _load_published_status(self) -> None:
        """Statuses already in the stream, so a restart does not republish them."""
        messages = await bus.read_last_per_subject(
            self.js, subjects.STREAM_STATUS, f"{subjects.STATUS_PREFIX}.>"
        )
        for msg in messages:
            with contextlib.suppress(wire.WireError):
                status = wire.decode(msg.data, PolicyStatus)
                self.published_status[status.ref] = status

    async def _on_event(self, msg: Msg) -> None:
        try:
            message = wire.decode_any(msg.data, EVENT_KINDS)
        except wire.WireError as exc:
            await bus.dead_letter(self.nc, SERVICE, msg.subject, msg.data, str(exc))
        else:
            self.world.apply(message)
            EVENTS_APPLIED.labels(message.KIND).inc()
        if not self.caught_up.is_set() and msg.metadata.num_pending == 0:
            log.info(
                "replayed events stream",
                extra={"observed": len(self.world.observed), "policies": len(self.world.policies)},
            )
            self.caught_up.set()
        if self.caught_up.is_set():
            self._dirty.set()

    async def _plan_loop(self) -> None:
        while True:
            await self._dirty.wait()
            # Coalesce a burst of events into one plan.
            await asyncio.sleep(self.settings.debounce_seconds)
            self._dirty.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile failed; retrying")
                await asyncio.sleep(1)
                self._dirty.set()

    async def reconcile(self) -> None:
        assert self._services is not None and self._zones is not None
        started = time.perf_counter()
        result = plan(self.world.observed, self.world.policies, self.accepted)
        PLAN_SECONDS.observe(time.perf_counter() - started)
        PLANS.inc()
        self.accepted = result.accepted
        set_level(result.log_level)
        writes = await self._services.converge(
            {subjects.fqdn_key(f): wire.encode(s) for f, s in result.services.items()}
        )
        writes += await self._zones.converge(
            {subjects.fqdn_key(z): wire.encode(spec) for z, spec in result.zones.items()}
        )
        await self._publish_statuses(result)
        SERVICES.set(len(result.services))
        REJECTED.set(sum(s.state == PolicyState.REJECTED for s in result.statuses.values()))
        self.last_plan = result
        if writes:
            log.info("applied plan", extra={"kv_writes": writes, "services": len(result.services)})

    async def _publish_statuses(self, result: Plan) -> None:
        for ref, status in result.statuses.items():
            if self.published_status.get(ref) == status:
                continue
            if status.state == PolicyState.REJECTED:
                log.warning("policy rejected: %s", status.message, extra={"policy": str(ref)})
            await self.js.publish(
                subjects.status_subject(ref.kind, ref.namespace, ref.name), wire.encode(status)
            )
            self.published_status[ref] = status


async def main(settings: ReconcilerSettings) -> None:
    async def build(nc: Client) -> Reconciler:
        return Reconciler(settings, nc, nc.jetstream())

    await run_service(SERVICE, settings, build)
