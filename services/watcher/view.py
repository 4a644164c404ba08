"""What one watcher has told the events stream, and what to tell it next. Pure and stateful.

`ClusterView` turns list results and watch events of a member cluster into `ObservedObject`,
`Tombstone` and `SyncMarker` messages; `PolicyView` does the same for the kgslb CRs of the
home cluster and decides which CR status needs writing back. The shell publishes the returned
messages in order, so per subject the stream always ends with the newest word.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from services.watcher.sources import BY_NAME, SOURCES
from services.watcher.sources.base import HOSTNAME, JoinKey, Resolution, Source, name_of
from services.watcher.translate import (
    BadObject,
    Fingerprint,
    Obj,
    Observation,
    cluster_entries,
    cr_status,
    fingerprint,
    object_ref,
    policy_object,
    policy_ref,
    resource_version,
    status_fields,
    status_patch,
)
from shared.models import (
    ClusterStatus,
    ObjectKind,
    ObjectRef,
    PolicyDeleted,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    PolicyStatus,
    SyncMarker,
    Tombstone,
)
from shared.subjects import sync_subject
from shared.wire import WireModel

DELETED = "DELETED"
LIST_STEP = 1_000
"""Objects of a list observed between two pauses of `ClusterView.listed_in_steps`."""

T = TypeVar("T")
Steps = Generator[None, None, T]
"""Work done in parts: each `yield` is a pause, the return value the result."""


def run_steps(steps: Steps[T]) -> T:
    """Do all the parts at once."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def run_steps_in_turns(steps: Steps[T], between: Callable[[], None] | None = None) -> T:
    """Do the parts one by one, letting the event loop turn between them (after
    `between()`, if given)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if between is not None:
            between()
        await asyncio.sleep(0)


Outgoing = tuple[str, WireModel]
"""(subject, message), published in list order."""


@dataclass
class Decision:
    """Messages to publish, plus what was left out and what could not be read, for logs."""

    messages: list[Outgoing] = field(default_factory=list)
    skipped: list[Observation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    bad_hosts: list[Observation] = field(default_factory=list)
    """Published observations with hosts that are not DNS hostnames (said once per change)."""
    warned: list[Observation] = field(default_factory=list)
    """Published observations with annotations that were not understood."""

    def publish(self, observation: Observation) -> None:
        assert observation.message is not None
        self.messages.append((observation.ref.subject, observation.message))
        if observation.bad_hosts:
            self.bad_hosts.append(observation)
        if observation.warnings:
            self.warned.append(observation)


class ClusterView:
    """The objects of one cluster's sources (`sources/`) as published.

    A relist republishes every object (duplicates are harmless, and a stream that lost
    messages heals), tombstones what vanished since the last list, then publishes a sync
    marker. A watch event publishes only what changes what the reconciler knows: an object
    that loses its IP or stops being a LoadBalancer gets a tombstone, a MODIFIED event that
    only touched annotations or status conditions publishes nothing.

    Joins: the objects of a source another one joins with (Gateways) are kept, and so is
    every object whose observation reads another (a route, a Service whose load balancer
    reports only a hostname); when a joined object or a resolved hostname changes, its
    dependents are observed again. A list of a source waits until the sources it joins with
    are listed, so that a relist never publishes routes without their Gateways.
    """

    def __init__(self, cluster: str, sources: Sequence[Source] = SOURCES) -> None:
        self.cluster = cluster
        self._sources = {source.name: source for source in sources}
        self._published: dict[ObjectKind, dict[ObjectRef, Fingerprint]] = {
            source.kind: {}
            for source in SOURCES
            if source.kind is not None and source.name not in self._sources
        }
        """Kinds not watched (`--sources`) count as listed and empty: nothing of them exists."""
        self._store: dict[str, dict[tuple[str, str], Obj]] = {}
        """Objects of the sources others join with, once listed."""
        self._pending: dict[str, dict[tuple[str, str], Obj]] = {}
        """Lists waiting for the sources they join with, kept current by watch events."""
        self._raw: dict[JoinKey, Obj] = {}
        self._joins_of: dict[JoinKey, frozenset[JoinKey]] = {}
        self._dependents: dict[JoinKey, set[JoinKey]] = {}
        self._resolved: dict[str, Resolution] = {}

    @property
    def listed_kinds(self) -> list[ObjectKind]:
        return [kind for kind in ObjectKind if kind in self._published]

    # Lookup (what the sources read of their joins) -----------------------------------------

    def object(self, key: JoinKey) -> Obj | None:
        return self._store.get(key.source, {}).get((key.namespace, key.name))

    def resolution(self, hostname: str) -> Resolution | None:
        return self._resolved.get(hostname)

    # Lists and events -----------------------------------------------------------------------

    def listed(self, name: str, objects: Iterable[Obj]) -> Decision:
        return run_steps(self.listed_in_steps(name, objects))

    def listed_in_steps(self, name: str, objects: Iterable[Obj]) -> Steps[Decision]:
        """`listed`, pausing after every `LIST_STEP` objects observed: a caller on an event
        loop lets it turn there (a list of 100,000 Ingresses is ~6 s of work; heartbeats, acks
        and the ops endpoint must not wait that long)."""
        source = self._source(name)
        if source.kind is None:
            before = self._store.get(source.name, {})
            now = _keyed(objects)
            self._store[source.name] = now
            decision = Decision()
            changed = {k for k in before.keys() | now.keys() if before.get(k) != now.get(k)}
            for key in sorted(changed):
                self._refresh(JoinKey(source.name, *key), decision)
            yield from self._release_pending(decision)
            return decision
        if not self._joins_listed(source):
            self._pending[source.name] = _keyed(objects)
            return Decision()
        return (yield from self._list(source, objects))

    def changed(self, name: str, event_type: str, obj: Obj) -> Decision:
        source = self._source(name)
        decision = Decision()
        if source.kind is None:
            store = self._store.setdefault(source.name, {})
            key = name_of(obj)
            if event_type == DELETED:
                store.pop(key, None)
            else:
                store[key] = obj
            self._refresh(JoinKey(source.name, *key), decision)
            return decision
        if source.name in self._pending:
            pending = self._pending[source.name]
            if event_type == DELETED:
                pending.pop(name_of(obj), None)
            else:
                pending[name_of(obj)] = obj
            return decision
        self._change(source, event_type, obj, decision)
        return decision

    def resolved(self, hostname: str, resolution: Resolution) -> Decision:
        """A load-balancer hostname resolved (again): its dependents are observed again when
        its addresses changed. A failed resolution keeps the addresses resolved before."""
        decision = Decision()
        before = self._resolved.get(hostname)
        if resolution.error and before is not None and before.addresses:
            resolution = Resolution(before.addresses, resolution.error)
        self._resolved[hostname] = resolution
        if before is None or before.addresses != resolution.addresses:
            self._refresh(JoinKey(HOSTNAME, "", hostname), decision)
        return decision

    def unresolved(self, name: str, objects: Iterable[Obj]) -> set[str]:
        """Hostnames these objects' observations read that were never resolved."""
        source = self._source(name)
        return {
            key.name
            for obj in objects
            for key in source.joins(obj, self)
            if key.source == HOSTNAME and key.name not in self._resolved
        }

    def hostnames(self) -> list[str]:
        """Every load-balancer hostname an object reads now (to resolve again); resolutions
        no object reads any more are forgotten."""
        wanted = {k.name for k in self._dependents if k.source == HOSTNAME}
        for host in [h for h in self._resolved if h not in wanted]:
            del self._resolved[host]
        return sorted(wanted)

    def resolutions(self) -> dict[str, Resolution]:
        return dict(self._resolved)

    def marker(self) -> SyncMarker:
        """Which objects exist, for the kinds listed so far: a kind still waiting for its
        first list is left out, so the reconciler does not drop its objects meanwhile."""
        kinds = self.listed_kinds
        present = sorted(ref.short for kind in kinds for ref in self._published[kind])
        return SyncMarker(cluster=self.cluster, kinds=kinds, present=present)

    # Inside ---------------------------------------------------------------------------------

    def _source(self, name: str) -> Source:
        source = self._sources.get(name) or BY_NAME.get(name)
        if source is None:
            raise KeyError(f"no source {name!r}")
        return source

    def _joins_listed(self, source: Source) -> bool:
        return all(joined in self._store for joined in source.joined)

    def _release_pending(self, decision: Decision) -> Steps[None]:
        for name in list(self._pending):
            source = self._source(name)
            if self._joins_listed(source):
                objects = self._pending.pop(name)
                listed = yield from self._list(source, objects.values())
                decision.messages.extend(listed.messages)
                decision.skipped.extend(listed.skipped)
                decision.problems.extend(listed.problems)
                decision.bad_hosts.extend(listed.bad_hosts)
                decision.warned.extend(listed.warned)

    def _list(self, source: Source, objects: Iterable[Obj]) -> Steps[Decision]:
        assert source.kind is not None
        decision = Decision()
        before = self._published.get(source.kind, {})
        now: dict[ObjectRef, Fingerprint] = {}
        for key in [k for k in self._joins_of if k.source == source.name]:
            self._untrack(key)
        for index, obj in enumerate(objects, 1):
            if index % LIST_STEP == 0:
                yield
            self._track(source, obj)
            observation = self._observe(source, obj, decision)
            if observation is None:
                continue
            if observation.message is None:
                decision.skipped.append(observation)
                continue
            now[observation.ref] = fingerprint(observation.message)
            decision.publish(observation)
        for ref in before.keys() - now.keys():
            decision.messages.append((ref.subject, Tombstone(ref=ref)))
        self._published[source.kind] = now
        decision.messages.append((sync_subject(self.cluster), self.marker()))
        return decision

    def _change(self, source: Source, event_type: str, obj: Obj, decision: Decision) -> None:
        assert source.kind is not None
        published = self._published.setdefault(source.kind, {})
        if event_type == DELETED:
            self._untrack(JoinKey(source.name, *name_of(obj)))
            try:
                ref = object_ref(self.cluster, source.kind, obj)
            except BadObject as exc:
                decision.problems.append(str(exc))
                return
            if published.pop(ref, None) is not None:
                tombstone = Tombstone(ref=ref, resource_version=resource_version(obj))
                decision.messages.append((ref.subject, tombstone))
            return
        self._track(source, obj)
        observation = self._observe(source, obj, decision)
        if observation is None:
            return
        ref, message = observation.ref, observation.message
        if message is None:
            decision.skipped.append(observation)
            if published.pop(ref, None) is not None:
                tombstone = Tombstone(ref=ref, resource_version=resource_version(obj))
                decision.messages.append((ref.subject, tombstone))
            return
        new = fingerprint(message)
        if published.get(ref) != new:
            published[ref] = new
            decision.publish(observation)

    def _refresh(self, joined: JoinKey, decision: Decision) -> None:
        """Observe again every object that reads `joined` (and is not waiting for a list)."""
        for key in sorted(self._dependents.get(joined, ())):
            source = self._source(key.source)
            if source.name in self._pending or key not in self._raw:
                continue
            self._change(source, "MODIFIED", self._raw[key], decision)

    def _track(self, source: Source, obj: Obj) -> None:
        key = JoinKey(source.name, *name_of(obj))
        joins = source.joins(obj, self)
        if self._joins_of.get(key) == joins:
            if joins:
                self._raw[key] = obj
            return
        self._untrack(key)
        if joins:
            self._raw[key] = obj
            self._joins_of[key] = joins
            for joined in joins:
                self._dependents.setdefault(joined, set()).add(key)

    def _untrack(self, key: JoinKey) -> None:
        self._raw.pop(key, None)
        for joined in self._joins_of.pop(key, frozenset()):
            dependents = self._dependents.get(joined)
            if dependents is not None:
                dependents.discard(key)
                if not dependents:
                    del self._dependents[joined]

    def _observe(self, source: Source, obj: Obj, decision: Decision) -> Observation | None:
        try:
            return source.observe(self.cluster, obj, self)
        except (BadObject, ValueError) as exc:
            decision.problems.append(str(exc))
            return None


def _keyed(objects: Iterable[Obj]) -> dict[tuple[str, str], Obj]:
    return {name_of(obj): obj for obj in objects}


@dataclass
class _PolicyState:
    generation: int
    spec: dict[str, Any]


class PolicyView:
    """The kgslb CRs of the home cluster: what the stream holds for them and their status.

    Seeded from the stream at start, so a CR deleted while no watcher ran gets its
    `PolicyDeleted` after the first list, and an unchanged CR is not republished (every
    republished policy makes the reconciler re-plan everything). Status-only updates of a CR
    (including the ones this watcher writes) are not republished either.
    """

    def __init__(self, home_cluster: str = "") -> None:
        self.home_cluster = home_cluster
        """Stamped on every policy message, so the reconciler can tell which home sent it."""
        self.active_home: str | None = None
        """Written into every CR's status as `activeHome` once several homes are configured."""
        self._published: dict[PolicyRef, _PolicyState] = {}
        self._status: dict[PolicyRef, dict[str, Any]] = {}
        """Current `status` of every CR that exists, from list, watch and our own writes."""
        self._desired: dict[PolicyRef, dict[str, Any]] = {}
        self._clusters: dict[str, ClusterStatus] = {}
        self._serving: dict[PolicyRef, dict[str, Any]] = {}
        """`status.serving` and `servingOmitted` of the GDPs and host rules (serving.py)."""

    def seed(self, messages: Iterable[WireModel]) -> None:
        """What this home published before (another home's messages are not ours to delete)."""
        ours = ("", self.home_cluster)
        for message in messages:
            if not isinstance(message, PolicyObject | PolicyDeleted):
                continue
            if message.home_cluster not in ours:
                continue
            if isinstance(message, PolicyObject):
                self._published[message.ref] = _PolicyState(message.generation, message.spec)
            elif isinstance(message, PolicyDeleted):
                self._published.pop(message.ref, None)

    def restart_from(self, messages: Iterable[WireModel]) -> None:
        """A home cluster that becomes active: every CR it holds is published (stamped with
        its name), and every policy of the stream that it does not hold is deleted, whoever
        published it."""
        self._published.clear()
        for message in messages:
            if isinstance(message, PolicyObject):
                # Generation 0 never matches a CR's: each is published again.
                self._published[message.ref] = _PolicyState(0, message.spec)

    def forget_all(self) -> None:
        """The stream lost what was published: the next list publishes every CR again (and
        deletes nothing, the stream holding nothing to delete)."""
        self._published.clear()

    def forget(self, ref: PolicyRef) -> None:
        """The stream's last word on `ref` is no longer ours: publish it again."""
        self._published.pop(ref, None)

    def published_refs(self) -> list[PolicyRef]:
        return sorted(self._published, key=str)

    def listed(self, kind: PolicyKind, objects: Sequence[Obj]) -> Decision:
        decision = Decision()
        present: set[PolicyRef] = set()
        for obj in objects:
            self._upsert(kind, obj, decision, present)
        for ref in [r for r in self._published if r.kind == kind and r not in present]:
            del self._published[ref]
            decision.messages.append((ref.subject, self.deleted(ref)))
        for known in (self._status, self._desired):
            for ref in [r for r in known if r.kind == kind and r not in present]:
                del known[ref]
        return decision

    def changed(self, kind: PolicyKind, event_type: str, obj: Obj) -> Decision:
        decision = Decision()
        if event_type != DELETED:
            self._upsert(kind, obj, decision, set())
            return decision
        try:
            ref = policy_ref(kind, obj)
        except BadObject as exc:
            decision.problems.append(str(exc))
            return decision
        self._status.pop(ref, None)
        self._desired.pop(ref, None)
        if self._published.pop(ref, None) is not None:
            decision.messages.append((ref.subject, self.deleted(ref)))
        return decision

    def deleted(self, ref: PolicyRef) -> PolicyDeleted:
        return PolicyDeleted(ref=ref, home_cluster=self.home_cluster)

    def _upsert(self, kind: PolicyKind, obj: Obj, decision: Decision, seen: set[PolicyRef]) -> None:
        try:
            message = policy_object(kind, obj)
        except BadObject as exc:
            decision.problems.append(str(exc))
            return
        if self.home_cluster:
            message = message.model_copy(update={"home_cluster": self.home_cluster})
        ref = message.ref
        seen.add(ref)
        self._status[ref] = cr_status(obj)
        state = _PolicyState(message.generation, message.spec)
        if self._published.get(ref) != state:
            self._published[ref] = state
            decision.messages.append((ref.subject, message))

    # Status -----------------------------------------------------------------------------

    def want_status(self, status: PolicyStatus) -> None:
        self._desired[status.ref] = status_fields(status)

    def want_cluster(self, status: ClusterStatus) -> None:
        """A member cluster's reachability, for `status.clusters` of every GSLBConfig."""
        self._clusters[status.cluster] = status

    def want_serving(self, ref: PolicyRef, fields: dict[str, Any]) -> None:
        """The members serving each name the policy governs, for its status."""
        self._serving[ref] = fields

    def status_of(self, ref: PolicyRef) -> dict[str, Any]:
        """The CR's status as the API server holds it (list, watch and our own writes)."""
        return self._status.get(ref, {})

    def _wanted(self, ref: PolicyRef) -> dict[str, Any]:
        wanted = dict(self._desired.get(ref, {}))
        if wanted and ref in self._serving:
            wanted.update(self._serving[ref])
        if wanted and self.active_home is not None:
            wanted["activeHome"] = self.active_home
        if ref.kind == PolicyKind.GSLB_CONFIG and self._clusters:
            wanted["clusters"] = cluster_entries(self._clusters.values())
        return wanted

    def status_patches(self) -> list[tuple[PolicyRef, dict[str, Any]]]:
        """Merge patches for every existing CR whose status differs from what the reconciler
        (and, for a GSLBConfig, the member watchers) said. A CR that does not exist yet gets
        its status when its watch event brings it."""
        patches = []
        for ref in sorted(self._status, key=str):
            wanted = self._wanted(ref)
            if wanted and (patch := status_patch(self._status[ref], wanted)) is not None:
                patches.append((ref, patch))
        return patches

    def record_status(self, ref: PolicyRef, status: dict[str, Any]) -> None:
        """The status a write returned, so it is not written again before the watch says so."""
        if ref in self._status:
            self._status[ref] = status
