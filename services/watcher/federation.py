"""Several possible home clusters (GSLBConfig homeClusters): a home watcher's role, and what it
writes into its own cluster so that its kgslb CRs are copies of the policies in force. Pure:
the shell reads the `home` key and statuses, and does the writes.

The active home publishes its CRs, as a single home always did. A standby home publishes
nothing: it keeps a copy of every policy in force (the `acceptedSpec` of the reconciler's
statuses), marked with the `kgslb.io/copy-of` annotation, undoes edits to those copies and
says in their status which cluster is active. A standby that becomes active first makes its
CRs exactly the policies in force, then publishes them, so a failover changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from services.watcher.translate import (
    BadObject,
    Obj,
    cluster_entries,
    cr_status,
    policy_ref,
    status_patch,
)
from shared.models import (
    ActiveHome,
    ClusterStatus,
    CopyState,
    PolicyDeleted,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    PolicyStatus,
)
from shared.policies import API_GROUP, API_VERSION, COPY_OF_ANNOTATION

DELETED = "DELETED"


class Role(StrEnum):
    WAITING = "waiting"
    """homeClusters is set but no active home is named yet: publish nothing, write nothing."""
    ACTIVE = "active"
    """Publishes its CRs as the policy and writes the reconciler's verdict into their status."""
    STANDBY = "standby"
    """Keeps copies of the policies in force; publishes nothing."""


def home_role(
    me: str,
    key: ActiveHome | None,
    home_clusters_in_force: Sequence[str],
    now: Role,
    other_publisher: str | None = None,
) -> Role:
    """The role of the home watcher of cluster `me`. The `home` key decides once it exists.
    Without it, a setup without homeClusters has one home, which is active as always; with
    homeClusters just switched on, or while another home publishes the policy, a home that
    publishes keeps doing so and a starting one waits until the reconciler leader names the
    active home (two homes must never both publish: the one without the CRs would delete
    them)."""
    if key is not None:
        return Role.ACTIVE if key.active == me else Role.STANDBY
    if (home_clusters_in_force or other_publisher) and now != Role.ACTIVE:
        return Role.WAITING
    return Role.ACTIVE


class Activation(StrEnum):
    """What a home does to its CRs before it publishes them as the active home."""

    RESUME = "resume"
    """Nothing: it published in this very term before (a restart, edits made meanwhile are
    meant), or it is the one home of a setup without homeClusters."""
    ADOPT = "adopt"
    """The one home of a setup that only now lists homeClusters (term 1): its own CRs stay as
    they are; policies in force it lacks are created and marked copies become its own."""
    RESET = "reset"
    """A takeover: the CRs become exactly the policies in force, whatever the cluster held."""


def activation(key: ActiveHome | None, serving_term: int | None) -> Activation:
    """How a home watcher whose last heartbeat says `serving_term` becomes the active home
    the key names."""
    if key is None or serving_term == key.term:
        return Activation.RESUME
    if serving_term == 0 and key.term == 1:
        return Activation.ADOPT
    return Activation.RESET


@dataclass(frozen=True)
class InForce:
    spec: dict[str, Any]
    generation: int
    """Its generation in the home cluster that published it."""


@dataclass(frozen=True)
class Write:
    """One change to a kgslb CR of this cluster: create, replace (with the resourceVersion
    read, so a concurrent edit makes it fail and be decided again) or delete."""

    op: Literal["create", "replace", "delete"]
    ref: PolicyRef
    body: dict[str, Any] | None = None
    resource_version: str = ""

    def __str__(self) -> str:
        return f"{self.op} {self.ref}"


def _meta(obj: Obj) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def copy_of(obj: Obj) -> str | None:
    """The active home cluster a CR is a copy from (None: not a copy)."""
    annotations = _meta(obj).get("annotations")
    if not isinstance(annotations, Mapping):
        return None
    value = annotations.get(COPY_OF_ANNOTATION)
    return str(value) if value is not None else None


def _spec(obj: Obj) -> Any:
    return obj.get("spec") or {}


def _generation(obj: Obj) -> int:
    value = _meta(obj).get("generation")
    return value if isinstance(value, int) else 0


def cr_body(
    ref: PolicyRef, spec: dict[str, Any], copied_from: str | None, current: Obj | None
) -> dict[str, Any]:
    """The CR to create or to replace `current` with: `spec`, and the copy-of annotation set
    to `copied_from` (removed when None); everything else in its metadata stays."""
    metadata: dict[str, Any] = (
        {key: value for key, value in _meta(current).items() if key != "annotations"}
        if current is not None
        else {"name": ref.name, "namespace": ref.namespace}
    )
    annotations = {
        key: value
        for key, value in dict(_meta(current).get("annotations") or {} if current else {}).items()
        if key != COPY_OF_ANNOTATION
    }
    if copied_from is not None:
        annotations[COPY_OF_ANNOTATION] = copied_from
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": ref.kind.value,
        "metadata": metadata,
        "spec": spec,
    }


@dataclass
class HomeMirror:
    """The kgslb CRs of this home cluster beside the policies in force, in every role (so a
    role change needs no relist)."""

    cluster: str
    crs: dict[PolicyRef, dict[str, Any]] = field(default_factory=dict)
    in_force: dict[PolicyRef, InForce] = field(default_factory=dict)
    refused: dict[PolicyRef, int] = field(default_factory=dict)
    """CRs whose edit was not applied (standby): the generation of that edit."""
    clusters: dict[str, ClusterStatus] = field(default_factory=dict)
    _deleted: set[PolicyRef] = field(default_factory=set)
    _publishers: dict[PolicyRef, str] = field(default_factory=dict)
    """The home cluster whose message is the stream's last word on each policy."""
    _listed: set[PolicyKind] = field(default_factory=set)
    _written: dict[PolicyRef, Any] = field(default_factory=dict)
    """The spec our last write of each CR sent: its watch event is no edit, even when it
    arrives after the next version came into force."""

    # What the cluster holds -------------------------------------------------------------

    @property
    def all_listed(self) -> bool:
        return self._listed == set(PolicyKind)

    def objects(self, kind: PolicyKind) -> list[dict[str, Any]]:
        return [obj for ref, obj in self.crs.items() if ref.kind == kind]

    def listed(self, kind: PolicyKind, objects: Iterable[Obj]) -> None:
        self.crs = {ref: obj for ref, obj in self.crs.items() if ref.kind != kind}
        for obj in objects:
            try:
                self.crs[policy_ref(kind, obj)] = dict(obj)
            except BadObject:
                continue  # PolicyView reports it
        self._listed.add(kind)

    def changed(self, kind: PolicyKind, event_type: str, obj: Obj, *, standby: bool) -> None:
        """A watch event. In a standby home, a new generation whose spec is not the version in
        force is an edit that will not be applied (it is undone, and its status says so)."""
        try:
            ref = policy_ref(kind, obj)
        except BadObject:
            return
        if event_type == DELETED:
            self.crs.pop(ref, None)
            return
        before = self.crs.get(ref)
        self.crs[ref] = dict(obj)
        edited = before is None or _generation(before) != _generation(obj)
        want = self.in_force.get(ref)
        ours = ref in self._written and _spec(obj) == self._written[ref]
        if standby and edited and not ours and (want is None or _spec(obj) != want.spec):
            self.refused[ref] = _generation(obj)

    def writing(self, write: Write) -> None:
        """A write is about to be sent."""
        if write.body is not None:
            self._written[write.ref] = write.body.get("spec")

    def wrote(self, ref: PolicyRef, obj: Obj | None) -> None:
        """The object a write returned (None: deleted)."""
        if obj is None:
            self.crs.pop(ref, None)
            self._written.pop(ref, None)
        else:
            self.crs[ref] = dict(obj)

    def record_status(self, ref: PolicyRef, status: dict[str, Any]) -> None:
        if ref in self.crs:
            self.crs[ref] = {**self.crs[ref], "status": status}

    # What is in force -------------------------------------------------------------------

    def status(self, status: PolicyStatus) -> None:
        """The reconciler's verdict: its `acceptedSpec` is what copies hold."""
        ref = status.ref
        if ref in self._deleted:
            return  # a late status of a deleted policy
        if status.accepted_spec is None or status.accepted_generation is None:
            self.in_force.pop(ref, None)
            return
        new = InForce(status.accepted_spec, status.accepted_generation)
        if self.in_force.get(ref) != new:
            self.in_force[ref] = new
            self.refused.pop(ref, None)

    def policy(self, message: PolicyObject | PolicyDeleted) -> None:
        """The policy stream: a deleted policy has no copy (its status is purged, which the
        status stream's consumers never see)."""
        self._publishers[message.ref] = message.home_cluster
        if isinstance(message, PolicyDeleted):
            self._deleted.add(message.ref)
            self.in_force.pop(message.ref, None)
            self.refused.pop(message.ref, None)
        else:
            self._deleted.discard(message.ref)

    def other_publisher(self) -> str | None:
        """Another home cluster that published policies (None: only this one, or nobody)."""
        others = sorted(set(self._publishers.values()) - {"", self.cluster})
        return others[0] if others else None

    def became_active(self) -> None:
        """Edits are applied from now on: none is refused any more."""
        self.refused.clear()

    def cluster_state(self, status: ClusterStatus) -> None:
        self.clusters[status.cluster] = status

    def home_clusters_in_force(self) -> list[str]:
        """homeClusters of the GSLBConfig in force (only one is)."""
        for ref, version in sorted(self.in_force.items(), key=lambda item: str(item[0])):
            if ref.kind == PolicyKind.GSLB_CONFIG:
                clusters = version.spec.get("homeClusters")
                if isinstance(clusters, list) and clusters:
                    return [str(cluster) for cluster in clusters]
        return []

    # What to write ----------------------------------------------------------------------

    def standby_writes(self, active: str) -> list[Write]:
        """Copies of every policy in force (created, or replaced where they differ or lost
        the mark), and copies whose policy is gone deleted. CRs that are not copies stay:
        their status says they are not applied."""
        writes = []
        for ref, want in sorted(self.in_force.items(), key=lambda item: str(item[0])):
            current = self.crs.get(ref)
            if current is None:
                writes.append(Write("create", ref, cr_body(ref, want.spec, active, None)))
            elif _spec(current) != want.spec or copy_of(current) != active:
                writes.append(self._replace(ref, want.spec, active, current))
        for ref, current in sorted(self.crs.items(), key=lambda item: str(item[0])):
            if ref not in self.in_force and copy_of(current) is not None:
                writes.append(Write("delete", ref, resource_version=_version(current)))
        return writes

    def activation_writes(self, mode: Activation) -> list[Write]:
        """What becoming the active home writes first, so that what it then publishes is
        what was in force (RESET), or its own CRs plus what was in force and it lacked
        (ADOPT). Nothing stays marked as a copy."""
        if mode == Activation.RESUME:
            return []
        reset = mode == Activation.RESET
        writes = []
        for ref, want in sorted(self.in_force.items(), key=lambda item: str(item[0])):
            current = self.crs.get(ref)
            if current is None:
                writes.append(Write("create", ref, cr_body(ref, want.spec, None, None)))
            elif copy_of(current) is not None or (reset and _spec(current) != want.spec):
                writes.append(self._replace(ref, want.spec, None, current))
        for ref, current in sorted(self.crs.items(), key=lambda item: str(item[0])):
            if ref not in self.in_force and (reset or copy_of(current) is not None):
                writes.append(Write("delete", ref, resource_version=_version(current)))
        return writes

    def _replace(
        self, ref: PolicyRef, spec: dict[str, Any], copied_from: str | None, current: Obj
    ) -> Write:
        body = cr_body(ref, spec, copied_from, current)
        return Write("replace", ref, body, _version(current))

    def standby_status_patches(
        self, active: str, is_home: bool
    ) -> list[tuple[PolicyRef, dict[str, Any]]]:
        """Status merge patches for the CRs of a standby home: `Copy` for a copy of the
        version in force, `NotActive` for an edit or a CR that is not applied, each naming the
        active home cluster."""
        patches = []
        for ref, obj in sorted(self.crs.items(), key=lambda item: str(item[0])):
            wanted = self._standby_status(ref, active, is_home)
            patch = status_patch(cr_status(obj), wanted)
            if patch is not None:
                patches.append((ref, patch))
        return patches

    def _standby_status(self, ref: PolicyRef, active: str, is_home: bool) -> dict[str, Any]:
        want = self.in_force.get(ref)
        where = f"the active home cluster is {active}"
        if not is_home:
            state = CopyState.NOT_ACTIVE
            message = (
                f"not applied: {self.cluster} is not one of the GSLBConfig's homeClusters; {where}"
            )
        elif ref in self.refused and want is not None:
            state = CopyState.NOT_ACTIVE
            message = (
                f"not applied: {where}; edit the policy there (generation "
                f"{self.refused[ref]} of this copy was reset to the version in force)"
            )
        elif want is not None:
            state = CopyState.COPY
            message = (
                f"copy of the version in force in {active}, the active home cluster "
                f"(generation {want.generation} there); edit the policy there"
            )
        else:
            state = CopyState.NOT_ACTIVE
            message = f"not applied: {where}; create the policy there"
        wanted: dict[str, Any] = {
            "state": state.value,
            "message": message,
            "activeHome": active,
            "observedGeneration": None,
            "acceptedGeneration": None,
        }
        if ref.kind == PolicyKind.GSLB_CONFIG and self.clusters:
            wanted["clusters"] = cluster_entries(self.clusters.values())
        return wanted


def _version(obj: Obj) -> str:
    return str(_meta(obj).get("resourceVersion") or "")
