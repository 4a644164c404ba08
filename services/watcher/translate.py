"""Kubernetes objects (decoded JSON, as the API serves them) into kgslb messages, and CR status
back. Pure: no I/O, no clock beyond the models' timestamps.

What is left out is only what no policy could use: an Ingress or LoadBalancer Service without
an IP in `status.loadBalancer.ingress`, and a Service that is not `type: LoadBalancer`.
Hostname-only load-balancer entries (`{hostname: abc.elb.amazonaws.com}`) are not addresses a
GSLB member can be answered with, so they are ignored; an object that has only those counts
as having no IP (the skip reason says so). Hosts are checked here too (`bad_hosts`), for the
logs and metrics of the cluster they come from; they are published as seen, so that the
reconciler can report them in the status of the policy that selects the object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.models import (
    ClusterStatus,
    HostPath,
    ObjectKind,
    ObjectRef,
    ObservedObject,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    PolicyStatus,
    normalize_ip,
)
from shared.names import BadName, hostname_problem

Obj = Mapping[str, Any]

EXTERNAL_DNS_HOSTNAME = "external-dns.alpha.kubernetes.io/hostname"
"""Service annotation naming its DNS names, comma-separated (as ExternalDNS reads it)."""
HTTP_PORT = 80
HTTPS_PORT = 443

POLICY_PLURALS: dict[PolicyKind, str] = {
    PolicyKind.GSLB_CONFIG: "gslbconfigs",
    PolicyKind.GLOBAL_DEPLOYMENT_POLICY: "globaldeploymentpolicies",
    PolicyKind.GSLB_HOST_RULE: "gslbhostrules",
}


class BadObject(ValueError):
    """An object that cannot be turned into a message; the text names it and the field."""


class Skip(StrEnum):
    """Why an object is not published (also a metric label, so a short fixed set)."""

    NO_ADDRESS = "no_address"
    HOSTNAME_ONLY = "hostname_only"
    NOT_LOAD_BALANCER = "not_load_balancer"


@dataclass(frozen=True)
class Observation:
    """An object translated: the message to publish, or why there is none."""

    ref: ObjectRef
    message: ObservedObject | None
    skip: Skip | None = None
    detail: str = ""
    bad_hosts: tuple[BadName, ...] = ()
    """Hosts of the message that are not DNS hostnames: the reconciler will not plan them."""


def bad_hosts(hosts: Iterable[str]) -> tuple[BadName, ...]:
    return tuple(bad for host in hosts if (bad := hostname_problem(host, wildcard=True)))


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
    )


# Metadata -----------------------------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strings(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in _mapping(value).items()}


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def object_ref(cluster: str, kind: ObjectKind, obj: Obj) -> ObjectRef:
    meta = _mapping(obj.get("metadata"))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise BadObject(f"{kind} in cluster {cluster} has no metadata.name")
    namespace = "" if kind == ObjectKind.NAMESPACE else str(meta.get("namespace") or "")
    return ObjectRef(cluster=cluster, kind=kind, namespace=namespace, name=name)


def resource_version(obj: Obj) -> str:
    return str(_mapping(obj.get("metadata")).get("resourceVersion") or "")


# Load-balancer status -----------------------------------------------------------------------


@dataclass(frozen=True)
class Addresses:
    ips: list[str]
    hostnames: list[str]
    invalid: list[str]


def load_balancer_addresses(obj: Obj) -> Addresses:
    """The IPs of `status.loadBalancer.ingress[]` (normalised, deduplicated, in order)."""
    ips: list[str] = []
    hostnames: list[str] = []
    invalid: list[str] = []
    entries = _list(_mapping(_mapping(obj.get("status")).get("loadBalancer")).get("ingress"))
    for entry in map(_mapping, entries):
        if ip := entry.get("ip"):
            try:
                ips.append(normalize_ip(str(ip)))
            except ValueError:
                invalid.append(str(ip))
        elif hostname := entry.get("hostname"):
            hostnames.append(str(hostname))
    return Addresses(_unique(ips), _unique(hostnames), invalid)


def _no_address(ref: ObjectRef, addresses: Addresses) -> Observation:
    where = f"{ref.kind} {ref.namespace}/{ref.name} in cluster {ref.cluster}"
    if addresses.hostnames:
        return Observation(
            ref,
            None,
            Skip.HOSTNAME_ONLY,
            f"{where}: status.loadBalancer.ingress has only hostnames "
            f"({', '.join(addresses.hostnames)}); a GSLB member needs an IP",
        )
    detail = f"{where}: no IP in status.loadBalancer.ingress yet"
    if addresses.invalid:
        detail += f" (not IP addresses: {', '.join(addresses.invalid)})"
    return Observation(ref, None, Skip.NO_ADDRESS, detail)


# Kinds --------------------------------------------------------------------------------------


def observe_ingress(cluster: str, obj: Obj) -> Observation:
    """An Ingress (networking.k8s.io/v1): its rule hosts, paths and TLS hosts, once it has an IP."""
    ref = object_ref(cluster, ObjectKind.INGRESS, obj)
    addresses = load_balancer_addresses(obj)
    if not addresses.ips:
        return _no_address(ref, addresses)
    spec = _mapping(obj.get("spec"))
    hosts: list[str] = []
    paths: list[HostPath] = []
    for rule in map(_mapping, _list(spec.get("rules"))):
        host = str(rule.get("host") or "").strip()
        if not host:
            continue  # a host-less rule names no FQDN a GSLB service could answer
        hosts.append(host)
        for entry in map(_mapping, _list(_mapping(rule.get("http")).get("paths"))):
            paths.append(HostPath(host=host, path=str(entry.get("path") or "/")))
    tls_hosts = _unique(
        str(host).strip()
        for tls in map(_mapping, _list(spec.get("tls")))
        for host in _list(tls.get("hosts"))
    )
    meta = _mapping(obj.get("metadata"))
    message = ObservedObject(
        ref=ref,
        resource_version=resource_version(obj),
        labels=_strings(meta.get("labels")),
        hosts=_unique(hosts),
        paths=list(dict.fromkeys(paths)),
        tls_hosts=tls_hosts,
        vips=addresses.ips,
        # The ingress controller serves HTTP, and HTTPS for the TLS hosts.
        ports=[HTTP_PORT, HTTPS_PORT] if tls_hosts else [HTTP_PORT],
    )
    return Observation(ref, message, bad_hosts=bad_hosts(message.hosts))


def service_hostnames(obj: Obj) -> list[str]:
    annotations = _strings(_mapping(obj.get("metadata")).get("annotations"))
    return _unique(h.strip() for h in annotations.get(EXTERNAL_DNS_HOSTNAME, "").split(","))


def observe_service(cluster: str, obj: Obj) -> Observation:
    """A Service of type LoadBalancer with an IP: VIPs, ports and external-dns hostnames."""
    ref = object_ref(cluster, ObjectKind.SERVICE, obj)
    spec = _mapping(obj.get("spec"))
    service_type = spec.get("type") or "ClusterIP"
    if service_type != "LoadBalancer":
        detail = f"Service {ref.namespace}/{ref.name} in cluster {cluster} is {service_type}"
        return Observation(ref, None, Skip.NOT_LOAD_BALANCER, detail)
    addresses = load_balancer_addresses(obj)
    if not addresses.ips:
        return _no_address(ref, addresses)
    ports = [
        port
        for entry in map(_mapping, _list(spec.get("ports")))
        if isinstance(port := entry.get("port"), int)
    ]
    message = ObservedObject(
        ref=ref,
        resource_version=resource_version(obj),
        labels=_strings(_mapping(obj.get("metadata")).get("labels")),
        hosts=service_hostnames(obj),
        vips=addresses.ips,
        ports=list(dict.fromkeys(ports)),
    )
    return Observation(ref, message, bad_hosts=bad_hosts(message.hosts))


def observe_namespace(cluster: str, obj: Obj) -> Observation:
    """A Namespace: only its labels matter (GDP namespace selectors)."""
    ref = object_ref(cluster, ObjectKind.NAMESPACE, obj)
    message = ObservedObject(
        ref=ref,
        resource_version=resource_version(obj),
        labels=_strings(_mapping(obj.get("metadata")).get("labels")),
    )
    return Observation(ref, message)


OBSERVERS = {
    ObjectKind.INGRESS: observe_ingress,
    ObjectKind.SERVICE: observe_service,
    ObjectKind.NAMESPACE: observe_namespace,
}


def observe(cluster: str, kind: ObjectKind, obj: Obj) -> Observation:
    return OBSERVERS[kind](cluster, obj)


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
