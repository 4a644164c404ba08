"""What one watcher has told the events stream, and what to tell it next. Pure and stateful.

`ClusterView` turns list results and watch events of a member cluster into `ObservedObject`,
`Tombstone` and `SyncMarker` messages; `PolicyView` does the same for the kgslb CRs of the
home cluster and decides which CR status needs writing back. The shell publishes the returned
messages in order, so per subject the stream always ends with the newest word.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.watcher.translate import (
    BadObject,
    Fingerprint,
    Obj,
    Observation,
    cluster_entries,
    cr_status,
    fingerprint,
    object_ref,
    observe,
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

    def publish(self, observation: Observation) -> None:
        assert observation.message is not None
        self.messages.append((observation.ref.subject, observation.message))
        if observation.bad_hosts:
            self.bad_hosts.append(observation)


class ClusterView:
    """The Ingresses, LoadBalancer Services and Namespaces of one cluster as published.

    A relist republishes every object (duplicates are harmless, and a stream that lost
    messages heals), tombstones what vanished since the last list, then publishes a sync
    marker. A watch event publishes only what changes what the reconciler knows: an object
    that loses its IP or stops being a LoadBalancer gets a tombstone, a MODIFIED event that
    only touched annotations or status conditions publishes nothing.
    """

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self._published: dict[ObjectKind, dict[ObjectRef, Fingerprint]] = {}

    @property
    def listed_kinds(self) -> list[ObjectKind]:
        return [kind for kind in ObjectKind if kind in self._published]

    def listed(self, kind: ObjectKind, objects: Iterable[Obj]) -> Decision:
        decision = Decision()
        before = self._published.get(kind, {})
        now: dict[ObjectRef, Fingerprint] = {}
        for obj in objects:
            observation = self._observe(kind, obj, decision)
            if observation is None:
                continue
            if observation.message is None:
                decision.skipped.append(observation)
                continue
            now[observation.ref] = fingerprint(observation.message)
            decision.publish(observation)
        for ref in before.keys() - now.keys():
            decision.messages.append((ref.subject, Tombstone(ref=ref)))
        self._published[kind] = now
        decision.messages.append((sync_subject(self.cluster), self.marker()))
        return decision

    def changed(self, kind: ObjectKind, event_type: str, obj: Obj) -> Decision:
        decision = Decision()
        published = self._published.setdefault(kind, {})
        if event_type == DELETED:
            try:
                ref = object_ref(self.cluster, kind, obj)
            except BadObject as exc:
                decision.problems.append(str(exc))
                return decision
            if published.pop(ref, None) is not None:
                tombstone = Tombstone(ref=ref, resource_version=resource_version(obj))
                decision.messages.append((ref.subject, tombstone))
            return decision
        observation = self._observe(kind, obj, decision)
        if observation is None:
            return decision
        ref, message = observation.ref, observation.message
        if message is None:
            decision.skipped.append(observation)
            if published.pop(ref, None) is not None:
                tombstone = Tombstone(ref=ref, resource_version=resource_version(obj))
                decision.messages.append((ref.subject, tombstone))
            return decision
        new = fingerprint(message)
        if published.get(ref) != new:
            published[ref] = new
            decision.publish(observation)
        return decision

    def marker(self) -> SyncMarker:
        """Which objects exist, for the kinds listed so far: a kind still waiting for its
        first list is left out, so the reconciler does not drop its objects meanwhile."""
        kinds = self.listed_kinds
        present = sorted(ref.short for kind in kinds for ref in self._published[kind])
        return SyncMarker(cluster=self.cluster, kinds=kinds, present=present)

    def _observe(self, kind: ObjectKind, obj: Obj, decision: Decision) -> Observation | None:
        try:
            return observe(self.cluster, kind, obj)
        except (BadObject, ValueError) as exc:
            decision.problems.append(str(exc))
            return None


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
