"""Kubernetes objects (decoded JSON, as the API serves them) into kgslb messages, and CR status
back. Pure: no I/O, no clock beyond the models' timestamps.

The kinds of a member cluster are sources, one module each in `sources/`; this module names
them for the view (`observe`) and keeps what the home watcher does with the kgslb CRs. What a
source leaves out is only what no policy could use: an object with no address yet, a Service
that is not `type: LoadBalancer`, a route no Gateway accepted. Hosts are checked here too
(`bad_hosts`), for the logs and metrics of the cluster they come from; they are published as
seen, so that the reconciler can report them in the status of the policy that selects the
object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from services.watcher.sources import PUBLISHING
from services.watcher.sources.base import (
    HTTP_PORT,
    HTTPS_PORT,
    NO_LOOKUP,
    Addresses,
    BadObject,
    Lookup,
    Obj,
    Observation,
    Skip,
    bad_hosts,
    load_balancer_addresses,
    object_ref,
    resource_version,
)
from services.watcher.sources.ingress import INGRESS
from services.watcher.sources.namespace import NAMESPACE
from services.watcher.sources.service import (
    EXTERNAL_DNS_HOSTNAME,
    SERVICE,
    service_hostnames,
)
from shared.models import (
    ClusterStatus,
    ObjectKind,
    ObservedObject,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    PolicyStatus,
)

__all__ = [
    "EXTERNAL_DNS_HOSTNAME",
    "HTTPS_PORT",
    "HTTP_PORT",
    "Addresses",
    "BadObject",
    "Obj",
    "Observation",
    "Skip",
    "bad_hosts",
    "load_balancer_addresses",
    "object_ref",
    "resource_version",
    "service_hostnames",
]

POLICY_PLURALS: dict[PolicyKind, str] = {
    PolicyKind.GSLB_CONFIG: "gslbconfigs",
    PolicyKind.GLOBAL_DEPLOYMENT_POLICY: "globaldeploymentpolicies",
    PolicyKind.GSLB_HOST_RULE: "gslbhostrules",
}


Fingerprint = tuple[object, ...]
"""What an observation says, without its resourceVersion and timestamp: equal fingerprints
mean republishing would tell the reconciler nothing new."""


def fingerprint(message: ObservedObject) -> Fingerprint:
    return (
        tuple(sorted(message.labels.items())),
        tuple(message.hosts),
        tuple((p.host, p.path) for p in message.paths),
        tuple(message.tls_hosts),
        tuple(message.vips),
        tuple(message.ports),
        tuple(message.resolved_from),
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def observe_ingress(cluster: str, obj: Obj, lookup: Lookup = NO_LOOKUP) -> Observation:
    return INGRESS.observe(cluster, obj, lookup)


def observe_service(cluster: str, obj: Obj, lookup: Lookup = NO_LOOKUP) -> Observation:
    return SERVICE.observe(cluster, obj, lookup)


def observe_namespace(cluster: str, obj: Obj, lookup: Lookup = NO_LOOKUP) -> Observation:
    return NAMESPACE.observe(cluster, obj, lookup)


OBSERVERS = {source.kind: source.observe for source in PUBLISHING if source.kind is not None}


def observe(cluster: str, kind: ObjectKind, obj: Obj, lookup: Lookup = NO_LOOKUP) -> Observation:
    return OBSERVERS[kind](cluster, obj, lookup)


# kgslb custom resources ---------------------------------------------------------------------


def policy_ref(kind: PolicyKind, obj: Obj) -> PolicyRef:
    meta = _mapping(obj.get("metadata"))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise BadObject(f"{kind} has no metadata.name")
    return PolicyRef(kind=kind, namespace=str(meta.get("namespace") or ""), name=name)


def policy_object(kind: PolicyKind, obj: Obj) -> PolicyObject:
    """The CR with its spec untouched: validating it is the reconciler's job."""
    ref = policy_ref(kind, obj)
    spec = obj.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise BadObject(
            f"{ref}: spec is a {type(spec).__name__}, expected an object "
            "(the CRD schema in deploy/crds/ enforces this)"
        )
    generation = _mapping(obj.get("metadata")).get("generation")
    return PolicyObject(
        ref=ref,
        generation=generation if isinstance(generation, int) and generation > 0 else 1,
        resource_version=resource_version(obj),
        spec=dict(spec),
    )


def cr_status(obj: Obj) -> dict[str, Any]:
    return dict(_mapping(obj.get("status")))


# Status write-back --------------------------------------------------------------------------


def status_fields(status: PolicyStatus) -> dict[str, Any]:
    """What the home watcher writes under a CR's `status` (merge-patch, status subresource):

    ``state`` Accepted|Rejected, ``message``, ``observedGeneration`` (the generation the
    reconciler judged) and ``acceptedGeneration`` (the generation in force; absent when none
    is, so a Rejected edit shows which older version still serves); a GSLBConfig's also
    ``delegation``, per zone with automatic delegation: ``zone``, ``parent``, ``server``,
    ``state`` Delegated|Failed, ``message`` and ``lastTransitionTime``.
    """
    fields: dict[str, Any] = {
        "state": status.state.value,
        "message": status.message,
        "observedGeneration": status.observed_generation,
        "acceptedGeneration": status.accepted_generation,
    }
    if status.ref.kind == PolicyKind.GSLB_CONFIG:
        # Automatic delegation, per zone; None removes the entry of a delegation turned off.
        fields["delegation"] = [
            {
                "zone": entry.zone,
                "parent": entry.parent,
                "server": entry.server,
                "state": entry.state.value,
                "message": entry.message,
                "lastTransitionTime": entry.since.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            for entry in status.delegation
        ] or None
    return fields


def cluster_entries(statuses: Iterable[ClusterStatus]) -> list[dict[str, str]]:
    """The GSLBConfig's `status.clusters`: one entry per member cluster whose watcher
    reported, sorted by cluster: ``cluster``, ``state`` Connected|Unreachable, ``message``
    (the API errors while unreachable) and ``lastTransitionTime`` (RFC 3339)."""
    return [
        {
            "cluster": status.cluster,
            "state": status.state.value,
            "message": status.message,
            "lastTransitionTime": status.since.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        for status in sorted(statuses, key=lambda s: s.cluster)
    ]


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch that makes `current` hold `desired` (None where a key must go), or None
    when it already does. Other status keys are left alone."""
    if all(current.get(key) == value for key, value in desired.items()):
        return None
    return {"status": dict(desired)}
