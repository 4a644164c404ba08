"""What every source shares: the interface one watched kind implements, the observation it
returns, and the helpers for reading decoded Kubernetes JSON. Pure.

A source is one kind of object the watcher lists and watches (`Source.api`), how one object
of it turns into an observation (`Source.observe`), and which other objects that observation
reads (`Source.joins`): the Gateways a route attaches to, the load-balancer hostnames a
Service reports. The view (`view.py`) keeps the joined objects and re-observes an object when
one of its joins changes; the shell resolves the hostnames a source joins with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from shared.models import ObjectKind, ObjectRef, ObservedObject, normalize_ip
from shared.names import BadName, hostname_problem
from shared.policies import DISABLED_ANNOTATION

Obj = Mapping[str, Any]

HTTP_PORT = 80
HTTPS_PORT = 443
HOSTNAME = "hostname"
"""`JoinKey.source` of a load-balancer hostname: the shell resolves it to addresses."""


class BadObject(ValueError):
    """An object that cannot be turned into a message; the text names it and the field."""


class Skip(StrEnum):
    """Why an object is not published (also a metric label, so a short fixed set)."""

    NO_ADDRESS = "no_address"
    HOSTNAME_ONLY = "hostname_only"
    NOT_LOAD_BALANCER = "not_load_balancer"
    NOT_ACCEPTED = "not_accepted"
    """A route no parent Gateway accepted, or an OpenShift Route no router admitted."""
    NO_HOST = "no_host"
    """A route with no hostname (its own, or its listeners')."""


@dataclass(frozen=True)
class Observation:
    """An object translated: the message to publish, or why there is none."""

    ref: ObjectRef
    message: ObservedObject | None
    skip: Skip | None = None
    detail: str = ""
    bad_hosts: tuple[BadName, ...] = ()
    """Hosts of the message that are not DNS hostnames: the reconciler will not plan them."""
    warnings: tuple[str, ...] = ()
    """What the operator wrote that was not understood and was ignored (said once)."""


@dataclass(frozen=True, order=True)
class JoinKey:
    """Another object an observation reads: (source name, namespace, name), or
    (`HOSTNAME`, "", a load-balancer hostname) for a name the shell resolves."""

    source: str
    namespace: str
    name: str


@dataclass(frozen=True)
class Resolution:
    """A load-balancer hostname resolved by the shell: its addresses (normalised), or why not."""

    addresses: tuple[str, ...] = ()
    error: str = ""


class Lookup(Protocol):
    """What the view knows of the objects a source joins with."""

    def object(self, key: JoinKey) -> Obj | None: ...

    def resolution(self, hostname: str) -> Resolution | None: ...


class NoLookup:
    """Nothing joined is known (an observation on its own, as in the unit tests)."""

    def object(self, key: JoinKey) -> Obj | None:
        return None

    def resolution(self, hostname: str) -> Resolution | None:
        return None


NO_LOOKUP = NoLookup()


@dataclass(frozen=True)
class Api:
    """What to list and watch: the resource of the Kubernetes API."""

    group: str
    """"" for the core group."""
    version: str
    plural: str
    namespaced: bool = True
    optional: bool = False
    """Served by a CRD a cluster may lack: a 404 counts as a complete, empty list (and is
    tried again), so a cluster without Gateway API or OpenShift is not unreachable."""

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


@dataclass(frozen=True)
class Source:
    """One watched kind. Subclasses set the fields and implement `observe`."""

    name: str
    """The resource name in logs, metrics and the kube worker threads; the `ObjectKind`
    value for a published kind."""
    api: Api
    kind: ObjectKind | None
    """The kind of the published observations; None for a kind only joined with (Gateway)."""
    joined: tuple[str, ...] = field(default=())
    """Sources whose objects this one's observations read: a list of this kind is published
    only once theirs are listed, so a relist never publishes routes without their Gateways."""

    def observe(self, cluster: str, obj: Obj, lookup: Lookup = NO_LOOKUP) -> Observation:
        raise NotImplementedError(f"{self.name} publishes nothing")

    def joins(self, obj: Obj, lookup: Lookup = NO_LOOKUP) -> frozenset[JoinKey]:
        """The other objects `observe` reads for `obj` (none by default), given what is known
        of them (a route reads the hostnames its Gateways report)."""
        return frozenset()


# Reading JSON -------------------------------------------------------------------------------


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def strings(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in mapping(value).items()}


def unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def labels_of(obj: Obj) -> dict[str, str]:
    return strings(mapping(obj.get("metadata")).get("labels"))


def _disabled_value(obj: Obj) -> str | None:
    annotations = mapping(mapping(obj.get("metadata")).get("annotations"))
    value = annotations.get(DISABLED_ANNOTATION)
    return None if value is None else str(value).strip().lower()


def disabled(obj: Obj) -> bool:
    """The `kgslb.io/disabled` annotation says "true" (any case): the operator took the object's
    members out of service without deleting anything."""
    return _disabled_value(obj) == "true"


def annotation_warnings(obj: Obj) -> tuple[str, ...]:
    """kgslb annotations whose value is not understood: ignored, and said, so that a `yes`
    meant as "disable" does not leave the members answered without a word."""
    value = _disabled_value(obj)
    if value is None or value in ("true", "false"):
        return ()
    raw = mapping(mapping(obj.get("metadata")).get("annotations")).get(DISABLED_ANNOTATION)
    return (
        f'annotation {DISABLED_ANNOTATION}={raw!r} is not understood (allowed: "true" or '
        f'"false"): ignored, the members stay in service',
    )


def bad_hosts(hosts: Iterable[str]) -> tuple[BadName, ...]:
    return tuple(bad for host in hosts if (bad := hostname_problem(host, wildcard=True)))


def object_ref(cluster: str, kind: ObjectKind, obj: Obj) -> ObjectRef:
    meta = mapping(obj.get("metadata"))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise BadObject(f"{kind} in cluster {cluster} has no metadata.name")
    namespace = "" if kind == ObjectKind.NAMESPACE else str(meta.get("namespace") or "")
    return ObjectRef(cluster=cluster, kind=kind, namespace=namespace, name=name)


def name_of(obj: Obj) -> tuple[str, str]:
    """(namespace, name) of any object, "" where missing."""
    meta = mapping(obj.get("metadata"))
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def resource_version(obj: Obj) -> str:
    return str(mapping(obj.get("metadata")).get("resourceVersion") or "")


def published(observation: Observation, obj: Obj) -> Observation:
    """An observation with a message, its bad hosts and misunderstood annotations noted."""
    assert observation.message is not None
    return Observation(
        observation.ref,
        observation.message,
        bad_hosts=bad_hosts(observation.message.hosts),
        warnings=annotation_warnings(obj),
    )


# Addresses ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Addresses:
    ips: list[str]
    hostnames: list[str]
    invalid: list[str]


def split_addresses(entries: Iterable[tuple[str, str]]) -> Addresses:
    """(kind, value) pairs, kind "ip" or "hostname", into IPs (normalised, deduplicated, in
    order), hostnames, and IPs that are not addresses."""
    ips: list[str] = []
    hostnames: list[str] = []
    invalid: list[str] = []
    for kind, value in entries:
        if not value:
            continue
        if kind == "ip":
            try:
                ips.append(normalize_ip(value))
            except ValueError:
                invalid.append(value)
        else:
            hostnames.append(value.strip().rstrip(".").lower())
    return Addresses(unique(ips), unique(hostnames), invalid)


def load_balancer_addresses(obj: Obj) -> Addresses:
    """The IPs of `status.loadBalancer.ingress[]` (normalised, deduplicated, in order)."""
    entries = as_list(mapping(mapping(obj.get("status")).get("loadBalancer")).get("ingress"))
    pairs: list[tuple[str, str]] = []
    for entry in map(mapping, entries):
        if ip := entry.get("ip"):
            pairs.append(("ip", str(ip)))
        elif hostname := entry.get("hostname"):
            pairs.append(("hostname", str(hostname)))
    return split_addresses(pairs)


def hostname_joins(addresses: Addresses) -> frozenset[JoinKey]:
    """The hostnames to resolve: only an object that reports no IP needs them."""
    if addresses.ips:
        return frozenset()
    return frozenset(JoinKey(HOSTNAME, "", host) for host in addresses.hostnames)


@dataclass(frozen=True)
class Members:
    """The addresses an object is answered with, and the hostnames they were resolved from."""

    vips: list[str]
    resolved_from: list[str]


def member_addresses(addresses: Addresses, lookup: Lookup) -> Members:
    """The IPs the object reports; with none, the addresses its hostnames resolve to (those
    resolved so far). A reported IP wins over a hostname of the same object: the hostname is
    then the DNS name of the same load balancer."""
    if addresses.ips:
        return Members(addresses.ips, [])
    vips: list[str] = []
    resolved_from: list[str] = []
    for host in addresses.hostnames:
        resolution = lookup.resolution(host)
        if resolution is not None and resolution.addresses:
            vips.extend(resolution.addresses)
            resolved_from.append(host)
    return Members(unique(vips), resolved_from)


def no_address(ref: ObjectRef, addresses: Addresses, where_status: str) -> Observation:
    where = f"{ref.kind} {ref.namespace}/{ref.name} in cluster {ref.cluster}"
    if addresses.hostnames:
        return Observation(
            ref,
            None,
            Skip.HOSTNAME_ONLY,
            f"{where}: {where_status} has only hostnames "
            f"({', '.join(addresses.hostnames)}), not resolved to an address yet",
        )
    detail = f"{where}: no IP in {where_status} yet"
    if addresses.invalid:
        detail += f" (not IP addresses: {', '.join(addresses.invalid)})"
    return Observation(ref, None, Skip.NO_ADDRESS, detail)
