"""The shell of a watcher's home role among several possible home clusters (GSLBConfig
homeClusters), around the pure `federation`: the heartbeat every watcher writes, following the
`home` key, the copies a standby home keeps, and the takeover of a home that becomes active.

A home watcher learns the active home (the key, the statuses, the policy stream and its own
last heartbeat) before it lists anything, so a home that comes back after a failover never
publishes what it held before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from services.watcher.backoff import Backoff
from services.watcher.federation import (
    Activation,
    HomeMirror,
    Role,
    Write,
    activation,
    home_role,
)
from services.watcher.kube import CONNECT_TIMEOUT_SECONDS, REQUEST_TIMEOUT_SECONDS, describe_error
from services.watcher.settings import WatcherSettings
from services.watcher.translate import POLICY_PLURALS, Obj
from services.watcher.view import Outgoing, PolicyView
from shared import bus, subjects, wire
from shared.models import (
    ActiveHome,
    ClusterStatus,
    PolicyDeleted,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    PolicyStatus,
    WatcherHeartbeat,
    utcnow,
)
from shared.policies import API_GROUP, API_VERSION

log = logging.getLogger(__name__)

ROLE = Gauge(
    "kgslb_watcher_home_role",
    "1 for this home watcher's role: active (publishes its CRs), standby (keeps copies) or "
    "waiting (for the reconciler leader to name the active home)",
    ["cluster", "role"],
)
COPY_WRITES = Counter(
    "kgslb_watcher_copy_writes_total",
    "Writes to the kgslb CRs of this cluster that keep copies of the policies in force, or "
    "reset them on takeover, by operation and result (ok, conflict, error)",
    ["cluster", "op", "result"],
)
TAKEOVERS = Counter(
    "kgslb_watcher_home_takeovers_total",
    "Times this home became active and published its CRs over another home's",
    ["cluster"],
)
HEARTBEAT_ERRORS = Counter(
    "kgslb_watcher_heartbeat_errors_total", "Heartbeats that could not be written", ["cluster"]
)

Publish = Callable[[Sequence[Outgoing]], Awaitable[None]]


class Heartbeat:
    """Rewrites `watcher.<cluster>` in KV `kgslb_leases` every `heartbeat_seconds`, so the
    reconciler leader can tell a home that went dark with its whole site from one that is up."""

    def __init__(
        self,
        kv: KeyValue,
        cluster: str,
        settings: WatcherSettings,
        state: Callable[[], ClusterStatus | None],
        replica: str,
    ) -> None:
        self.kv = kv
        self.cluster = cluster
        self.settings = settings
        self.state = state
        self.replica = replica
        self.publishing = False
        self.serving_term: int | None = None

    async def previous(self) -> WatcherHeartbeat | None:
        """The last heartbeat of this cluster's watcher (a previous process of it)."""
        try:
            entry = await self.kv.get(subjects.watcher_key(self.cluster))
        except KeyNotFoundError:
            return None
        with contextlib.suppress(wire.WireError):
            return wire.decode(entry.value or b"", WatcherHeartbeat)
        return None

    async def beat(self) -> None:
        status = self.state()
        heartbeat = WatcherHeartbeat(
            cluster=self.cluster,
            state=status.state if status else None,
            home=self.settings.home,
            publishing=self.publishing,
            serving_term=self.serving_term,
            heartbeat_at=utcnow(),
            interval_seconds=self.settings.heartbeat_seconds,
            replica=self.replica,
        )
        try:
            await self.kv.put(subjects.watcher_key(self.cluster), wire.encode(heartbeat))
        except Exception as exc:
            HEARTBEAT_ERRORS.labels(self.cluster).inc()
            log.warning("heartbeat of %s not written: %s", self.cluster, exc or type(exc).__name__)

    async def run(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(self.settings.heartbeat_seconds)


class Home:
    """The home role: `publishing` says whether the CRs of this cluster go to the policy
    stream now; the shell sends every CR list and watch event to `observe` in any role."""

    def __init__(
        self,
        cluster: str,
        settings: WatcherSettings,
        api: client.ApiClient,
        policies: PolicyView,
        heartbeat: Heartbeat,
        lock: asyncio.Lock,
        status_dirty: asyncio.Event,
    ) -> None:
        self.cluster = cluster
        self.settings = settings
        self.api = api
        self.policies = policies
        self.heartbeat = heartbeat
        self.lock = lock
        """Held while policy messages are decided and published: a takeover publishes in
        between two batches of the watch events."""
        self.status_dirty = status_dirty
        self.mirror = HomeMirror(cluster)
        self.role = Role.WAITING
        self.key: ActiveHome | None = None
        self.publishing = False
        self._listed = asyncio.Event()
        self._copies_dirty = asyncio.Event()
        self._activation: asyncio.Task[None] | None = None
        self._js: JetStreamContext | None = None
        self._publish: Publish | None = None
        self._subscription: JetStreamContext.PushSubscription | None = None
        self._failing: dict[PolicyRef, str] = {}
        self._show_role()

    # Start: learn the active home before anything is listed or published ------------------

    async def start(self, js: JetStreamContext, publish: Publish) -> None:
        self._js, self._publish = js, publish
        backoff = Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds)
        while True:
            try:
                await self._learn(js)
                return
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning(
                    "cluster %s: cannot learn the active home cluster yet: %s; retrying in "
                    "%.1f s (nothing is published meanwhile)",
                    self.cluster, exc or type(exc).__name__, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def _learn(self, js: JetStreamContext) -> None:
        for msg in await bus.read_last_per_subject(
            js, subjects.STREAM_EVENTS, f"{subjects.POLICY_PREFIX}.>"
        ):
            with contextlib.suppress(wire.WireError):
                policy = wire.decode_any(msg.data, (PolicyObject, PolicyDeleted))
                self.mirror.policy(cast(PolicyObject | PolicyDeleted, policy))
        for msg in await bus.read_last_per_subject(
            js, subjects.STREAM_STATUS, f"{subjects.STATUS_PREFIX}.>"
        ):
            if subjects.is_status_fence(msg.subject):
                continue
            with contextlib.suppress(wire.WireError):
                self.on_status(wire.decode_any(msg.data, (PolicyStatus, ClusterStatus)))
        previous = await self.heartbeat.previous()
        self.heartbeat.serving_term = previous.serving_term if previous else None
        self.key = await self._read_key()
        in_force = self.mirror.home_clusters_in_force()
        other = self.mirror.other_publisher()
        self.role = home_role(self.cluster, self.key, in_force, Role.WAITING, other)
        if self.role == Role.WAITING and self.key is None and other and not in_force:
            log.error(
                "cluster %s runs as a home (--home true), but home cluster %s publishes the "
                "policy and no GSLBConfig in force lists homeClusters: waiting (list both in "
                "homeClusters of the GSLBConfig in %s)",
                self.cluster, other, other,
            )  # fmt: skip
        mode = activation(self.key, self.heartbeat.serving_term)
        if self.role == Role.ACTIVE and mode == Activation.RESUME:
            # A restart of the active home (or the one home of a setup without homeClusters):
            # its CRs are the policy, edits made while it was away included.
            self._serving()
        elif self.role == Role.ACTIVE:
            self._start_activation(mode)
        self._show_role()
        log.info(
            "cluster %s: home role %s (active home: %s)",
            self.cluster, self.role.value, self.key.active if self.key else "this one",
            extra={"cluster": self.cluster, "role": self.role.value},
        )  # fmt: skip

    async def run(self) -> None:
        await self.resubscribe()
        try:
            await asyncio.gather(self._follow(), self._keep_copies())
        finally:
            if self._subscription is not None:
                with contextlib.suppress(Exception):
                    await self._subscription.unsubscribe()
            if self._activation is not None:
                self._activation.cancel()

    async def resubscribe(self) -> None:
        """Follow the policies of the events stream (again, from its start: after the stream
        was created anew an ordered consumer would resume after its old last sequence)."""
        assert self._js is not None
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        self._subscription = await self._js.subscribe(
            f"{subjects.POLICY_PREFIX}.>",
            stream=subjects.STREAM_EVENTS,
            cb=self._on_policy,
            ordered_consumer=True,
            idle_heartbeat=1.0,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )

    # Inputs ---------------------------------------------------------------------------------

    def observe_listed(self, kind: PolicyKind, objects: Sequence[Obj]) -> None:
        self.mirror.listed(kind, objects)
        if self.mirror.all_listed:
            self._listed.set()
        self._copies_dirty.set()

    def observe_changed(self, kind: PolicyKind, event_type: str, obj: Obj) -> None:
        self.mirror.changed(kind, event_type, obj, standby=self.role == Role.STANDBY)
        self._copies_dirty.set()

    def on_status(self, status: wire.WireModel) -> None:
        if isinstance(status, PolicyStatus):
            self.mirror.status(status)
        elif isinstance(status, ClusterStatus):
            self.mirror.cluster_state(status)
        self._copies_dirty.set()

    async def _on_policy(self, msg: Msg) -> None:
        try:
            message = wire.decode_any(msg.data, (PolicyObject, PolicyDeleted))
        except wire.WireError:
            return  # the reconciler dead-letters it
        policy = cast(PolicyObject | PolicyDeleted, message)
        self.mirror.policy(policy)
        self._copies_dirty.set()
        if policy.home_cluster not in ("", self.cluster) and self.publishing:
            try:
                await self._heal(policy)
            except Exception as exc:  # NATS away: the next foreign message tries again
                log.warning("could not publish %s again: %s", policy.ref, exc)

    async def _heal(self, foreign: PolicyObject | PolicyDeleted) -> None:
        """Another home published over one of our policies (it had not learned yet that this
        home took over; the reconciler ignored it): our version goes out again, so the stream
        holds the active home's word."""
        if not self.mirror.all_listed or self._publish is None:
            return
        self.key = await self._read_key()
        if self.key is None or self.key.active != self.cluster:
            # Only the home the key names heals: without a key two homes would undo each
            # other, and a home the key does not name steps down in `_follow`.
            return
        ref = foreign.ref
        async with self.lock:
            self.policies.forget(ref)
            current = self.mirror.crs.get(ref)
            if current is not None:
                messages = self.policies.changed(ref.kind, "MODIFIED", current).messages
            else:
                messages = [(ref.subject, self.policies.deleted(ref))]
            await self._publish(messages)
        log.warning(
            "home cluster %s published %s, but %s is the active home; published ours again",
            foreign.home_cluster, ref, self.cluster, extra={"policy": str(ref)},
        )  # fmt: skip

    # Role changes ---------------------------------------------------------------------------

    async def _read_key(self) -> ActiveHome | None:
        assert self.heartbeat.kv is not None
        try:
            entry = await self.heartbeat.kv.get(subjects.HOME_KEY)
        except KeyNotFoundError:
            return None
        try:
            return wire.decode(entry.value or b"", ActiveHome)
        except wire.WireError as exc:
            log.error("the home key of %s is unreadable: %s", subjects.KV_LEASES, exc)
            return self.key

    async def _follow(self) -> None:
        """Heartbeat, then look at the key; as often as the heartbeat."""
        while True:
            await self.heartbeat.beat()
            try:
                key = await self._read_key()
            except Exception as exc:
                log.warning("cannot read the home key: %s", exc or type(exc).__name__)
            else:
                await self._apply(key)
            await asyncio.sleep(self.settings.heartbeat_seconds)

    async def _apply(self, key: ActiveHome | None) -> None:
        self.key = key
        role = home_role(
            self.cluster,
            key,
            self.mirror.home_clusters_in_force(),
            self.role,
            self.mirror.other_publisher(),
        )
        mode = activation(key, self.heartbeat.serving_term)
        # A home that publishes and is named in a new term (the first key, or back after
        # a failover it slept through) becomes active again, the way that term requires.
        new_term = role == Role.ACTIVE and self.publishing and mode != Activation.RESUME
        idle = self._activation is None or self._activation.done()
        stalled = role == Role.ACTIVE and not self.publishing and idle
        if role == self.role and not new_term and not stalled:
            return
        previous, self.role = self.role, role
        self._show_role()
        if previous != role:
            log.warning(
                "cluster %s: home role %s -> %s (active home: %s%s)",
                self.cluster, previous.value, role.value, key.active if key else "none yet",
                f", term {key.term}: {key.reason}" if key else "",
                extra={"cluster": self.cluster, "role": role.value},
            )  # fmt: skip
        if role == Role.ACTIVE:
            if self._activation is None or self._activation.done():
                if mode != Activation.ADOPT:
                    async with self.lock:
                        self.publishing = False
                self._start_activation(mode)
            return
        if self._activation is not None:
            self._activation.cancel()
            self._activation = None
        async with self.lock:
            self.publishing = False
        self.heartbeat.publishing = False
        self._copies_dirty.set()
        self.status_dirty.set()

    def _start_activation(self, mode: Activation) -> None:
        self._activation = asyncio.create_task(self._activate(mode))
        self._activation.add_done_callback(self._activation_ended)

    def _activation_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # Nothing was published as active: the next look at the key starts again.
            log.error(
                "cluster %s could not become the active home: %s; retrying",
                self.cluster, task.exception(), exc_info=task.exception(),
            )  # fmt: skip

    async def _activate(self, mode: Activation) -> None:
        """Become the active home: once the CRs are listed (and written as `mode` requires),
        publish them over whatever the stream holds."""
        await self._listed.wait()
        if mode == Activation.RESET and not self.mirror.in_force:
            log.error(
                "cluster %s takes over as the active home, but no policy in force is known "
                "(stream %s holds no accepted spec): its CRs are published as they are",
                self.cluster, subjects.STREAM_STATUS,
            )  # fmt: skip
        else:
            backoff = Backoff(
                self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds
            )
            while writes := self.mirror.activation_writes(mode):
                log.info(
                    "cluster %s becomes the active home (%s): %d CR write(s) to match the "
                    "policies in force", self.cluster, mode.value, len(writes),
                )  # fmt: skip
                if not await self._execute_all(writes):
                    await asyncio.sleep(backoff.next_delay())
        if mode == Activation.RESET:
            TAKEOVERS.labels(self.cluster).inc()
        assert self._js is not None and self._publish is not None
        stream = await bus.read_last_per_subject(
            self._js, subjects.STREAM_EVENTS, f"{subjects.POLICY_PREFIX}.>"
        )
        known = []
        for msg in stream:
            with contextlib.suppress(wire.WireError):
                known.append(wire.decode_any(msg.data, (PolicyObject, PolicyDeleted)))
        async with self.lock:
            self.policies.restart_from(known)
            messages: list[Outgoing] = []
            for kind in PolicyKind:
                messages += self.policies.listed(kind, self.mirror.objects(kind)).messages
            await self._publish(messages)
            self._serving()
        log.warning(
            "cluster %s is the active home (term %s): published %d policy message(s)",
            self.cluster, self.key.term if self.key else "-", len(messages),
            extra={"cluster": self.cluster},
        )  # fmt: skip
        await self.heartbeat.beat()
        self.status_dirty.set()

    def _serving(self) -> None:
        self.publishing = True
        self.mirror.became_active()
        self.policies.active_home = self.key.active if self.key else None
        self.heartbeat.publishing = True
        self.heartbeat.serving_term = self.key.term if self.key else 0

    def _show_role(self) -> None:
        for role in Role:
            ROLE.labels(self.cluster, role.value).set(1 if role == self.role else 0)

    # Standby: copies ------------------------------------------------------------------------

    async def _keep_copies(self) -> None:
        backoff = Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds)
        while True:
            await self._copies_dirty.wait()
            self._copies_dirty.clear()
            key = self.key
            if self.role != Role.STANDBY or key is None or not self.mirror.all_listed:
                continue
            if self.cluster in key.home_clusters:
                writes = self.mirror.standby_writes(key.active)
                if writes and not await self._execute_all(writes):
                    await asyncio.sleep(backoff.next_delay())
                    self._copies_dirty.set()
                    continue
            backoff.reset()
            self.status_dirty.set()

    def status_patches(self) -> list[tuple[PolicyRef, dict[str, Any]]]:
        if self.publishing:
            return self.policies.status_patches()
        if self.role == Role.STANDBY and self.key is not None:
            is_home = self.cluster in self.key.home_clusters
            return self.mirror.standby_status_patches(self.key.active, is_home)
        return []

    def record_status(self, ref: PolicyRef, status: dict[str, Any]) -> None:
        self.policies.record_status(ref, status)
        self.mirror.record_status(ref, status)

    @property
    def problems(self) -> list[str]:
        return list(self._failing.values())

    async def _execute_all(self, writes: list[Write]) -> bool:
        """Every write, in order; False if one failed (the caller decides again later, from
        what the watch then shows)."""
        ok = True
        for write in writes:
            self.mirror.writing(write)
            try:
                result = await asyncio.to_thread(_send, self.api, write)
            except ApiException as exc:
                if exc.status == 404 and write.op != "create":
                    COPY_WRITES.labels(self.cluster, write.op, "ok").inc()
                    self.mirror.wrote(write.ref, None)  # already gone
                    continue
                result_label = "conflict" if exc.status == 409 else "error"
                COPY_WRITES.labels(self.cluster, write.op, result_label).inc()
                self._failed(write, exc)
                ok = False
                continue
            except Exception as exc:
                COPY_WRITES.labels(self.cluster, write.op, "error").inc()
                self._failed(write, exc)
                ok = False
                continue
            COPY_WRITES.labels(self.cluster, write.op, "ok").inc()
            self._failing.pop(write.ref, None)
            self.mirror.wrote(write.ref, result)
            log.info(
                "%s in cluster %s%s", write, self.cluster,
                f" (copy of {self.key.active})" if self.key and self.role == Role.STANDBY else "",
                extra={"policy": str(write.ref)},
            )  # fmt: skip
        return ok

    def _failed(self, write: Write, exc: BaseException) -> None:
        detail = describe_error(exc, self.cluster, write.ref.kind)
        if isinstance(exc, ApiException) and exc.status == 404 and write.op == "create":
            detail += (
                f" (create namespace {write.ref.namespace} in cluster {self.cluster}: "
                "a home cluster keeps the kgslb CRs in the namespaces of the active one)"
            )
        elif isinstance(exc, ApiException) and exc.status == 409:
            # Routine: a status write or an edit changed the object since it was read.
            log.info(
                "%s: changed meanwhile; deciding again", write, extra={"policy": str(write.ref)}
            )
            return
        self._failing[write.ref] = f"{write}: {detail}"
        log.warning("could not %s: %s", write, detail, extra={"policy": str(write.ref)})


def _send(api: client.ApiClient, write: Write) -> dict[str, Any] | None:
    """One write through the API (on a worker thread); the object it returns."""
    custom = client.CustomObjectsApi(api)
    ref = write.ref
    where = (API_GROUP, API_VERSION, ref.namespace, POLICY_PLURALS[ref.kind])
    timeout = (CONNECT_TIMEOUT_SECONDS, REQUEST_TIMEOUT_SECONDS)
    if write.body is not None and write.op == "create":
        created = custom.create_namespaced_custom_object(
            *where, write.body, _request_timeout=timeout
        )
        return cast(dict[str, Any], created)
    if write.body is not None and write.op == "replace":
        replaced = custom.replace_namespaced_custom_object(
            *where, ref.name, write.body, _request_timeout=timeout
        )
        return cast(dict[str, Any], replaced)
    options = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(resource_version=write.resource_version or None)
    )
    custom.delete_namespaced_custom_object(*where, ref.name, body=options, _request_timeout=timeout)
    return None
