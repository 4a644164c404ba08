"""The watcher's shell: a member cluster's sources (`sources/`; with `--home true` the kgslb
CRs) onto the events stream; CR status back. Threads list and watch (`kube`), the event loop
resolves hostnames (`hostnames`), decides what to publish (`view`) and publishes it in order
with JetStream acks (`publisher`). An unreachable or unauthorised
cluster, or one whose API stops answering (a frozen API server accepts connections and says
nothing), is logged, counted (`kgslb_watcher_api_errors_total`,
`kgslb_watcher_dead_watches_total`), turns /readyz false, is retried with backoff, and is
published as a `ClusterStatus` that the home watcher writes into the GSLBConfig's
`status.clusters`; each cluster has its own watcher process, so the others keep flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

from kubernetes import client
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from prometheus_client import Counter, Gauge

from services.watcher import channels, kube
from services.watcher.backoff import Backoff
from services.watcher.federation import Role
from services.watcher.home import Heartbeat, Home
from services.watcher.hostnames import Hostnames
from services.watcher.publisher import OrderedPublisher
from services.watcher.serving_follow import ServingTracker
from services.watcher.settings import WatcherSettings
from services.watcher.sources import BY_NAME, select
from services.watcher.status_writer import StatusWriter
from services.watcher.translate import Skip
from services.watcher.view import (
    LIST_STEP,
    ClusterView,
    Decision,
    PolicyView,
    run_steps_in_turns,
)
from shared import bus, subjects, wire
from shared.broker import ServiceBroker
from shared.collector import LongLivedState
from shared.models import (
    ClusterState,
    ClusterStatus,
    PolicyDeleted,
    PolicyKind,
    PolicyObject,
    PolicyStatus,
    ResyncRequest,
    SyncMarker,
    utcnow,
)
from shared.runtime import replica_name, run_service

log = logging.getLogger(__name__)
SERVICE = "watcher"
BATCH = 512
STATUS_HEARTBEAT_SECONDS = 1.0
RESYNC_DEBOUNCE_SECONDS = 0.5
"""Queue items decided and published together (a list result counts as one)."""

PUBLISHED = Counter(
    "kgslb_watcher_events_published_total",
    "Messages stored in JetStream, by message kind",
    ["cluster", "kind"],
)
KUBE_EVENTS = Counter(
    "kgslb_watcher_kube_events_total",
    "Watch events received from the Kubernetes API",
    ["cluster", "resource", "type"],
)
RELISTS = Counter(
    "kgslb_watcher_relists_total",
    "Relists after a failed list or watch, by reason (expired, dropped, dead, error)",
    ["cluster", "resource", "reason"],
)
DEAD_WATCHES = Counter(
    "kgslb_watcher_dead_watches_total",
    "Watches abandoned after receiving nothing, not even a bookmark, for --dead-watch-seconds",
    ["cluster", "kind"],
)
OBJECT_WARNINGS = Counter(
    "kgslb_watcher_object_warnings_total",
    "Published objects with a kgslb annotation whose value was not understood (ignored); "
    "counted and logged once per object and value",
    ["cluster"],
)
INVALID_HOSTS = Counter(
    "kgslb_watcher_invalid_hosts_total",
    "Hosts of published Ingresses and Services that are not DNS hostnames (never planned)",
    ["cluster", "reason"],
)
API_ERRORS = Counter(
    "kgslb_watcher_api_errors_total",
    "Kubernetes API requests that failed (unreachable, refused, unauthorised)",
    ["cluster", "resource"],
)
REACHABLE = Gauge(
    "kgslb_watcher_cluster_reachable", "1 while every list/watch of the cluster works", ["cluster"]
)
SKIPPED = Counter(
    "kgslb_watcher_skipped_objects_total",
    "Objects not published because no policy could use them",
    ["cluster", "reason"],
)
BAD_OBJECTS = Counter(
    "kgslb_watcher_bad_objects_total", "Objects that could not be read", ["cluster"]
)
SYNC_MARKER_BYTES = Gauge(
    "kgslb_watcher_sync_marker_bytes", "Size on the wire of the last sync marker", ["cluster"]
)
RESYNCS = Counter(
    "kgslb_watcher_resyncs_total",
    "Times everything was published again: JetStream lost its state, or the reconciler asked "
    "on kgslb.resync",
    ["cluster"],
)

POLICY_KINDS: dict[str, PolicyKind] = {kind.value: kind for kind in PolicyKind}


def cluster_name(settings: WatcherSettings) -> str:
    """--cluster, else --context, else the kubeconfig's current context."""
    if settings.cluster:
        return settings.cluster
    if settings.context:
        return settings.context
    if settings.kubeconfig:
        return kube.current_context(settings.kubeconfig)
    raise kube.KubeConfigError("in-cluster config needs --cluster (the member cluster's name)")


class Watcher:
    def __init__(
        self, settings: WatcherSettings, nc: Client, api: client.ApiClient, cluster: str
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.api = api
        self.cluster = cluster
        self.sources = select(settings.sources.split(","))
        self.view = ClusterView(cluster, self.sources)
        self.long_lived = LongLivedState()
        self.policies = PolicyView(cluster if settings.home else "")
        self.home: Home | None = None
        """The home role (--home true): publishes the CRs, or keeps copies of them."""
        self._policy_lock = asyncio.Lock()
        self.calls = kube.list_calls(api, settings.home, self.sources)
        self.resources = list(self.calls)
        self._listed: set[str] = set()
        self._failing: dict[str, str] = {}
        self._unanswered: dict[str, str] = {}
        """Resources whose request has waited longer than --unreachable-grace-seconds."""
        self._warned_hostname_only: set[str] = set()
        self._warned_annotations: set[str] = set()
        """Object and annotation warnings said already (persistent until the object changes)."""
        self.hostnames = Hostnames(
            cluster, settings, self.view, self._policy_lock, lambda d: self._report(d)
        )
        self._status_dirty = asyncio.Event()
        self._publisher: OrderedPublisher | None = None
        self._cluster_status: ClusterStatus | None = None
        self._cluster_changed = asyncio.Event()
        self.keeper = bus.StateKeeper(nc, settings.stream_replicas, settings.state_check_seconds)
        self._resync_wanted = asyncio.Event()
        self._watches: list[kube.ListWatch] = []
        self._status_subscription: JetStreamContext.PushSubscription | None = None
        REACHABLE.labels(cluster).set(0)

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds)

    def _problems(self) -> dict[str, str]:
        """What makes the cluster unreachable now: API errors and unanswered requests."""
        return {**self._unanswered, **self._failing}

    @property
    def ready(self) -> bool:
        """Every resource listed and published, none failing, JetStream acking."""
        healthy = self._publisher is not None and self._publisher.healthy
        listed = self._listed == set(self.resources) and not self._resync_wanted.is_set()
        return healthy and not self._problems() and listed and self.keeper.intact

    def readiness_detail(self) -> str:
        waiting = [r for r in self.resources if r not in self._listed]
        parts = [f"cluster {self.cluster}"]
        if waiting:
            parts.append(f"waiting for the first list of {', '.join(waiting)}")
        if problems := self._problems():
            parts.append("failing: " + "; ".join(problems.values()))
        if self._publisher is not None and not self._publisher.healthy:
            parts.append("JetStream does not ack")
        if state := self.keeper.describe():
            parts.append(state)
        if self.home is not None:
            parts.append(f"home role {self.home.role.value}")
            parts.extend(self.home.problems)
        return ", ".join(parts)

    async def run(self) -> None:
        js = self.nc.jetstream()
        buckets = await self.keeper.bootstrap()
        self.keeper.on_loss(self._state_lost)
        sink = kube.Sink(asyncio.get_running_loop(), self.settings.max_pending_changes)
        self._publisher = OrderedPublisher(
            js, self.cluster, lambda: self.nc.max_payload, self._backoff(), self._published,
            self.keeper.notice,
        )  # fmt: skip
        tasks = [
            self._consume(sink, self._publisher),
            self._report_cluster(js),
            self.keeper.run(),
            self._resync_loop(),
            self.hostnames.run(self._publisher.publish),
        ]
        broker = ServiceBroker(self.nc)
        broker.include_router(channels.router(self._on_resync))
        await broker.start()
        heartbeat = Heartbeat(
            buckets[subjects.KV_LEASES],
            self.cluster,
            self.settings,
            lambda: self._cluster_status,
            replica_name(self.settings),
        )
        if self.settings.home:
            await self._seed_policies(js)
            self.home = Home(
                self.cluster,
                self.settings,
                self.api,
                self.policies,
                heartbeat,
                self._policy_lock,
                self._status_dirty,
            )
            # Before anything is listed: a home back after a failover publishes nothing.
            await self.home.start(js, self._publisher.publish)
            tasks.append(self.home.run())
            self._status_subscription = await self._subscribe_statuses(js)
            writer = StatusWriter(
                self.api, self.cluster, replica_name(self.settings), self.home,
                self._status_dirty, self._backoff,
            )  # fmt: skip
            tasks.append(writer.run())
            if self.settings.serving_status:
                home = self.home
                tracker = ServingTracker(
                    self.nc, self.settings, self.policies, self._status_dirty,
                    buckets[subjects.KV_LEASES], self.keeper.notice,
                    lambda: home.role == Role.ACTIVE,
                )  # fmt: skip
                tasks.append(tracker.run())
        else:
            tasks.append(heartbeat.run())
        watches = [
            kube.ListWatch(
                self.cluster,
                resource,
                call,
                sink,
                self._backoff(),
                page_size=self.settings.page_size,
                watch_timeout_seconds=self.settings.watch_timeout_seconds,
                dead_watch_seconds=self.settings.dead_watch_seconds,
                optional=resource in BY_NAME and BY_NAME[resource].api.optional,
                absent_recheck_seconds=self.settings.absent_recheck_seconds,
            )
            for resource, call in self.calls.items()
        ]
        tasks.append(self._judge_liveness(watches))
        self._watches = watches
        for watch in watches:
            watch.start()
        try:
            await asyncio.gather(*tasks)
        finally:
            for watch in watches:
                watch.stop()
            with contextlib.suppress(Exception):
                await broker.stop()
            if self._status_subscription is not None:
                with contextlib.suppress(Exception):
                    await self._status_subscription.unsubscribe()

    async def _subscribe_statuses(self, js: JetStreamContext) -> JetStreamContext.PushSubscription:
        return await js.subscribe(
            f"{subjects.STATUS_PREFIX}.>",
            stream=subjects.STREAM_STATUS,
            cb=self._on_status,
            ordered_consumer=True,
            # As the reconciler's events consumer: nats-py notices a restarted server only
            # after two missed heartbeats, 5 s each by default.
            idle_heartbeat=STATUS_HEARTBEAT_SECONDS,
            deliver_policy=DeliverPolicy.ALL,
        )

    # Lost JetStream state -> publish everything again ------------------------------------------

    async def _state_lost(self, lost: frozenset[str]) -> None:
        """Streams created anew, empty: consumers of them start over (an ordered consumer
        would resume after the old stream's last sequence), and everything is published
        again, whether or not the reconciler asks."""
        js = self.nc.jetstream()
        if subjects.STREAM_STATUS in lost and self._status_subscription is not None:
            with contextlib.suppress(Exception):
                await self._status_subscription.unsubscribe()
            self._status_subscription = await self._subscribe_statuses(js)
        if subjects.STREAM_STATUS in lost:
            self._cluster_changed.set()  # its state, published again
        if subjects.STREAM_EVENTS in lost:
            if self.home is not None:
                await self.home.resubscribe()
            self._resync_wanted.set()

    async def _on_resync(self, request: ResyncRequest) -> None:
        log.warning(
            "%s asks for a resync (%s): publishing everything again",
            request.requested_by, request.reason, extra={"cluster": self.cluster},
        )  # fmt: skip
        self._resync_wanted.set()

    async def _resync_loop(self) -> None:
        """Forget what was published and list every resource again: every object, tombstone,
        sync marker and (home) policy goes out again; the cluster's state too."""
        while True:
            await self._resync_wanted.wait()
            await asyncio.sleep(RESYNC_DEBOUNCE_SECONDS)  # a loss and a request come together
            async with self._policy_lock:
                self._resync_wanted.clear()
                self.policies.forget_all()
                self._listed.clear()
            RESYNCS.labels(self.cluster).inc()
            for watch in self._watches:
                watch.relist()
            self._cluster_status = None
            self._update_cluster_status()
            self._cluster_changed.set()

    # Kubernetes -> stream -------------------------------------------------------------------

    async def _consume(self, sink: kube.Sink, publisher: OrderedPublisher) -> None:
        while True:
            batch = [await sink.queue.get()]
            while len(batch) < BATCH and not sink.queue.empty():
                batch.append(sink.queue.get_nowait())
            outgoing = []
            listed = []
            answers = await self.hostnames.prepare(batch)
            async with self._policy_lock:
                outgoing.extend(self.hostnames.apply(answers))
                for item in batch:
                    decision = await self._decide(item)
                    if decision is not None:
                        outgoing.extend(decision.messages)
                    if isinstance(item, kube.Listed):
                        listed.append(item.resource)
                await publisher.publish(outgoing)
            for resource in listed:
                self._listed.add(resource)
            if listed:
                self.long_lived.settled()  # what a list built stays (shared.collector)
            else:
                self.long_lived.changed(len(batch))
            REACHABLE.labels(self.cluster).set(0 if self._problems() else 1)
            self._update_cluster_status()
            sink.done(len(batch))
            if self.settings.home:
                self._status_dirty.set()

    async def _decide(self, item: kube.Item) -> Decision | None:
        if isinstance(item, kube.Failed):
            self._failed(item)
            return None
        kind = POLICY_KINDS.get(item.resource)
        if isinstance(item, kube.Listed):
            recovered = self._failing.pop(item.resource, None)
            if recovered is not None:
                log.info(
                    "cluster %s: %s listed again", self.cluster, item.resource,
                    extra={"cluster": self.cluster, "resource": item.resource},
                )  # fmt: skip
            if kind is not None:
                decision = self._policies_listed(kind, item)
            else:
                decision = await run_steps_in_turns(
                    self.view.listed_in_steps(item.resource, item.items),
                    # What the observing builds lives on too (shared.collector).
                    between=functools.partial(self.long_lived.changed, LIST_STEP),
                )
            log.info(
                "listed %d %s at resourceVersion %s",
                len(item.items), item.resource, item.resource_version,
                extra={"cluster": self.cluster, "published": len(decision.messages)},
            )  # fmt: skip
        else:
            KUBE_EVENTS.labels(self.cluster, item.resource, item.type).inc()
            if kind is not None:
                decision = self._policies_changed(kind, item)
            else:
                decision = self.view.changed(item.resource, item.type, item.obj)
        self._report(decision)
        return decision

    def _policies_listed(self, kind: PolicyKind, listed: kube.Listed) -> Decision:
        """The home role sees every list; the CRs become policy only while it publishes."""
        if self.home is not None:
            self.home.observe_listed(kind, listed.items)
            if not self.home.publishing:
                return Decision()
        return self.policies.listed(kind, listed.items)

    def _policies_changed(self, kind: PolicyKind, changed: kube.Changed) -> Decision:
        if self.home is not None:
            self.home.observe_changed(kind, changed.type, changed.obj)
            if not self.home.publishing:
                return Decision()
        return self.policies.changed(kind, changed.type, changed.obj)

    def _failed(self, failure: kube.Failed) -> None:
        RELISTS.labels(self.cluster, failure.resource, failure.reason).inc()
        if failure.reason == "error":
            API_ERRORS.labels(self.cluster, failure.resource).inc()
            self._failing[failure.resource] = failure.error
            REACHABLE.labels(self.cluster).set(0)
            log.warning(
                "%s; retrying in %.1f s", failure.error, failure.retry_in_seconds,
                extra={"cluster": self.cluster, "resource": failure.resource},
            )  # fmt: skip
        elif failure.reason == "dead":
            DEAD_WATCHES.labels(self.cluster, failure.resource).inc()
            log.warning(
                "%s; relisting in %.1f s", failure.error, failure.retry_in_seconds,
                extra={"cluster": self.cluster, "resource": failure.resource},
            )  # fmt: skip
        else:
            log.info(
                "%s watch %s (%s); relisting in %.1f s",
                failure.resource, failure.reason, failure.error, failure.retry_in_seconds,
                extra={"cluster": self.cluster, "resource": failure.resource},
            )  # fmt: skip

    def _report(self, decision: Decision) -> None:
        for problem in decision.problems:
            BAD_OBJECTS.labels(self.cluster).inc()
            log.warning("skipping object: %s", problem, extra={"cluster": self.cluster})
        for observation in decision.bad_hosts:
            ref = observation.ref
            for bad in observation.bad_hosts:
                INVALID_HOSTS.labels(self.cluster, bad.problem.value).inc()
                log.warning(
                    "%s %s/%s in cluster %s: %s; the reconciler will not plan it",
                    ref.kind, ref.namespace, ref.name, ref.cluster, bad.describe(),
                    extra={"cluster": self.cluster, "reason": bad.problem.value},
                )  # fmt: skip
        for observation in decision.warned:
            for warning in observation.warnings:
                said = f"{observation.ref} {warning}"
                if said in self._warned_annotations:
                    continue
                self._warned_annotations.add(said)
                OBJECT_WARNINGS.labels(self.cluster).inc()
                ref = observation.ref
                log.warning(
                    "%s %s/%s in cluster %s: %s",
                    ref.kind, ref.namespace, ref.name, ref.cluster, warning,
                    extra={"cluster": self.cluster},
                )  # fmt: skip
        for skipped in decision.skipped:
            assert skipped.skip is not None
            SKIPPED.labels(self.cluster, skipped.skip.value).inc()
            if skipped.skip == Skip.HOSTNAME_ONLY:
                # Persistent until the object changes: say it once, not on every event.
                if str(skipped.ref) not in self._warned_hostname_only:
                    self._warned_hostname_only.add(str(skipped.ref))
                    log.warning(skipped.detail, extra={"cluster": self.cluster})
            else:
                log.debug(skipped.detail, extra={"cluster": self.cluster})

    def _published(self, message: wire.WireModel, size: int) -> None:
        PUBLISHED.labels(self.cluster, message.KIND).inc()
        if isinstance(message, SyncMarker):
            SYNC_MARKER_BYTES.labels(self.cluster).set(size)

    # Cluster reachability -> GSLBConfig status (through the home watcher) ---------------------

    async def _judge_liveness(self, watches: list[kube.ListWatch]) -> None:
        """A frozen API server accepts connections and never answers: the worker threads
        block in their reads, so the event loop looks at how long each request has waited.
        Beyond the grace the cluster is Unreachable, until the request is answered."""
        grace = self.settings.unreachable_grace_seconds
        while True:
            await asyncio.sleep(min(1.0, grace / 2))
            pending = {watch.resource: watch.pending_since for watch in watches}
            late = kube.unanswered(pending, time.monotonic(), grace)
            if late == set(self._unanswered):
                continue
            for resource in late - set(self._unanswered):
                self._unanswered[resource] = (
                    f"cluster {self.cluster}: {resource}: no answer from the API server in "
                    f"{grace:g} s (frozen, overloaded, or the link is dead?)"
                )
                log.warning(
                    "%s", self._unanswered[resource],
                    extra={"cluster": self.cluster, "resource": resource},
                )  # fmt: skip
            for resource in set(self._unanswered) - late:
                del self._unanswered[resource]
                log.info(
                    "cluster %s: %s: the API server answers again", self.cluster, resource,
                    extra={"cluster": self.cluster, "resource": resource},
                )  # fmt: skip
            REACHABLE.labels(self.cluster).set(0 if self._problems() else 1)
            self._update_cluster_status()

    def _update_cluster_status(self) -> None:
        if problems := self._problems():
            state, message = ClusterState.UNREACHABLE, "; ".join(sorted(problems.values()))
        elif self._listed == set(self.resources):
            state, message = ClusterState.CONNECTED, ""
        else:
            return
        current = self._cluster_status
        if current is None or (current.state, current.message) != (state, message):
            self._cluster_status = ClusterStatus(
                cluster=self.cluster, state=state, message=message, since=utcnow()
            )
            self._cluster_changed.set()

    async def _report_cluster(self, js: JetStreamContext) -> None:
        """Publish the latest ClusterStatus, apart from the events so that a NATS user
        without permission for it (see deploy/nats/) can never hold the events up."""
        backoff = self._backoff()
        subject = subjects.cluster_status_subject(self.cluster)
        while True:
            await self._cluster_changed.wait()
            self._cluster_changed.clear()
            status = self._cluster_status
            if status is None:
                continue
            try:
                await js.publish(subject, wire.encode(status), timeout=5)
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning(
                    "could not publish the state of cluster %s on %s: %s; retrying in %.1f s",
                    self.cluster, subject, exc or type(exc).__name__, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                self._cluster_changed.set()
                continue
            backoff.reset()
            log.info(
                "cluster %s is %s", self.cluster, status.state.value,
                extra={"cluster": self.cluster, "reason": status.message},
            )  # fmt: skip

    # Home cluster: policies and status --------------------------------------------------------

    async def _seed_policies(self, js: JetStreamContext) -> None:
        """What the stream holds for the CRs, so CRs deleted meanwhile get a PolicyDeleted."""
        messages = await bus.read_last_per_subject(
            js, subjects.STREAM_EVENTS, f"{subjects.POLICY_PREFIX}.>"
        )
        known = []
        for msg in messages:
            with contextlib.suppress(wire.WireError):
                known.append(wire.decode_any(msg.data, (PolicyObject, PolicyDeleted)))
        self.policies.seed(known)
        log.info("policies in the stream: %d", len(self.policies.published_refs()))

    async def _on_status(self, msg: Msg) -> None:
        if subjects.is_status_fence(msg.subject):
            return  # the reconciler leader's fence, not a status
        try:
            status = wire.decode_any(msg.data, (PolicyStatus, ClusterStatus))
        except wire.WireError as exc:
            await bus.dead_letter(
                self.nc, SERVICE, msg.subject, msg.data, str(exc), bus.stream_position(msg)
            )
            return
        if isinstance(status, PolicyStatus):
            self.policies.want_status(status)
        elif isinstance(status, ClusterStatus):
            self.policies.want_cluster(status)
        if self.home is not None:
            self.home.on_status(status)
        self._status_dirty.set()


async def main(settings: WatcherSettings) -> None:
    try:
        cluster = cluster_name(settings)
        api = kube.load_api_client(settings.kubeconfig, settings.context)
    except kube.KubeConfigError as exc:
        raise SystemExit(f"kgslb watcher: {exc}") from None

    async def build(nc: Client) -> Watcher:
        return Watcher(settings, nc, api, cluster)

    try:
        await run_service(SERVICE, settings, build)
    finally:
        api.close()  # type: ignore[no-untyped-call]
