"""Gateway API (gateway.networking.k8s.io): a Gateway gives addresses (`status.addresses`);
an HTTPRoute, GRPCRoute or TLSRoute gives hostnames and, through `spec.parentRefs`, the
Gateways whose addresses serve them.

A parent counts only when the route's `status.parents` says that parent Accepted the route
(the Gateway's controller decides attachment: allowed namespaces and kinds, listener
matching). The route's hostnames are restricted by the hostnames of the listeners it attaches
to (the parentRef's `sectionName` and `port`, or every listener of a protocol the route kind
attaches to), as the Gateway API specifies: a listener without a hostname takes the route's
hostnames as they are; a route without hostnames takes the listener's; otherwise a route
hostname is kept when it equals the listener's or falls under its wildcard, and a route
wildcard narrows to a listener hostname it covers. With several accepted parents the route's
observation carries the union of their hostnames and addresses.

Gateways are not published: they are joined. Their `status.addresses` of type `IPAddress`
(the default type) are members; a Gateway that reports only addresses of type `Hostname` (a
cloud load balancer's name) has them resolved by the shell, as a LoadBalancer Service's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from services.watcher.sources.base import (
    HTTPS_PORT,
    NO_LOOKUP,
    Addresses,
    Api,
    JoinKey,
    Lookup,
    Obj,
    Observation,
    Skip,
    Source,
    as_list,
    disabled,
    hostname_joins,
    labels_of,
    mapping,
    member_addresses,
    object_ref,
    published,
    resource_version,
    split_addresses,
    unique,
)
from shared.models import ObjectKind, ObservedObject

GROUP = "gateway.networking.k8s.io"
GATEWAY_NAME = "Gateway"
TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})


@dataclass(frozen=True)
class GatewaySource(Source):
    """Listed and watched so that routes can be joined with it; publishes nothing itself."""

    def joins(self, obj: Obj, lookup: Lookup = NO_LOOKUP) -> frozenset[JoinKey]:
        """The hostnames it reports instead of IPs: resolved before it is decided."""
        return hostname_joins(gateway_addresses(obj))


GATEWAY = GatewaySource(
    name=GATEWAY_NAME, api=Api(GROUP, "v1", "gateways", optional=True), kind=None
)


@dataclass(frozen=True, order=True)
class ParentKey:
    group: str
    kind: str
    namespace: str
    name: str
    section: str
    port: int


def parent_key(ref: Obj, route_namespace: str) -> ParentKey:
    """A parentRef with the Gateway API's defaults filled in."""
    port = ref.get("port")
    return ParentKey(
        group=str(ref.get("group") if ref.get("group") is not None else GROUP),
        kind=str(ref.get("kind") or GATEWAY_NAME),
        namespace=str(ref.get("namespace") or route_namespace),
        name=str(ref.get("name") or ""),
        section=str(ref.get("sectionName") or ""),
        port=port if isinstance(port, int) else 0,
    )


def accepted_parents(route: Obj, route_namespace: str) -> set[ParentKey]:
    """The parents whose entry in `status.parents` has condition Accepted=True."""
    accepted = set()
    for entry in map(mapping, as_list(mapping(route.get("status")).get("parents"))):
        conditions = map(mapping, as_list(entry.get("conditions")))
        if any(c.get("type") == "Accepted" and c.get("status") == "True" for c in conditions):
            accepted.add(parent_key(mapping(entry.get("parentRef")), route_namespace))
    return accepted


def _normal(host: object) -> str:
    return str(host or "").strip().rstrip(".").lower()


def intersect(route_host: str, listener_host: str) -> str | None:
    """The hostname a route hostname yields on a listener, or None when they do not match."""
    if not listener_host or route_host == listener_host:
        return route_host
    if listener_host.startswith("*.") and route_host.endswith(listener_host[1:]):
        return route_host  # a name, or a narrower wildcard, under the listener's wildcard
    if route_host.startswith("*.") and listener_host.endswith(route_host[1:]):
        return listener_host  # the route's wildcard covers the listener's hostname
    return None


def effective_hostnames(route_hosts: Iterable[str], listener_host: str) -> list[str]:
    hosts = list(route_hosts)
    if not hosts:
        return [listener_host] if listener_host else []
    return unique(h for host in hosts if (h := intersect(host, listener_host)) is not None)


ADDRESS_TYPES = {"IPAddress": "ip", "Hostname": "hostname"}


def gateway_addresses(gateway: Obj) -> Addresses:
    """The IPs and hostnames of `status.addresses` (other address types are left out)."""
    pairs = [
        (ADDRESS_TYPES.get(str(entry.get("type") or "IPAddress"), "other"), str(value))
        for entry in map(mapping, as_list(mapping(gateway.get("status")).get("addresses")))
        if (value := entry.get("value"))
    ]
    return split_addresses(p for p in pairs if p[0] != "other")


@dataclass(frozen=True)
class RouteSource(Source):
    """An HTTPRoute, GRPCRoute or TLSRoute joined with its parent Gateways."""

    protocols: frozenset[str] = frozenset()
    """Listener protocols this route kind attaches to."""

    def _kind(self) -> ObjectKind:
        assert self.kind is not None
        return self.kind

    def parents(self, obj: Obj) -> list[ParentKey]:
        namespace = str(mapping(obj.get("metadata")).get("namespace") or "")
        keys = [
            parent_key(mapping(ref), namespace)
            for ref in as_list(mapping(obj.get("spec")).get("parentRefs"))
        ]
        return [k for k in dict.fromkeys(keys) if (k.group, k.kind) == (GROUP, GATEWAY_NAME)]

    def joins(self, obj: Obj, lookup: Lookup = NO_LOOKUP) -> frozenset[JoinKey]:
        keys = {JoinKey(GATEWAY_NAME, k.namespace, k.name) for k in self.parents(obj)}
        hostnames: set[JoinKey] = set()
        for key in keys:
            if (gateway := lookup.object(key)) is not None:
                hostnames |= hostname_joins(gateway_addresses(gateway))
        return frozenset(keys | hostnames)

    def observe(self, cluster: str, obj: Obj, lookup: Lookup = NO_LOOKUP) -> Observation:
        ref = object_ref(cluster, self._kind(), obj)
        where = f"{ref.kind} {ref.namespace}/{ref.name} in cluster {cluster}"
        route_hosts = unique(_normal(h) for h in as_list(mapping(obj.get("spec")).get("hostnames")))
        accepted = accepted_parents(obj, ref.namespace)
        parents = [p for p in self.parents(obj) if p in accepted]
        if not parents:
            return Observation(
                ref, None, Skip.NOT_ACCEPTED, f"{where}: no parent Gateway accepted it yet"
            )
        hosts: list[str] = []
        tls_hosts: list[str] = []
        vips: list[str] = []
        resolved_from: list[str] = []
        ports: list[int] = []
        missing: list[str] = []
        for parent in parents:
            gateway = lookup.object(JoinKey(GATEWAY_NAME, parent.namespace, parent.name))
            if gateway is None:
                missing.append(f"{parent.namespace}/{parent.name}")
                continue
            members = member_addresses(gateway_addresses(gateway), lookup)
            served = False
            for listener in map(mapping, as_list(mapping(gateway.get("spec")).get("listeners"))):
                protocol = str(listener.get("protocol") or "")
                if parent.section and listener.get("name") != parent.section:
                    continue
                if parent.port and listener.get("port") != parent.port:
                    continue
                if protocol not in self.protocols:
                    continue
                names = effective_hostnames(route_hosts, _normal(listener.get("hostname")))
                if not names:
                    continue
                served = True
                hosts.extend(names)
                if protocol in TLS_PROTOCOLS:
                    tls_hosts.extend(names)
                port = listener.get("port")
                ports.append(port if isinstance(port, int) else HTTPS_PORT)
            if served:
                vips.extend(members.vips)
                resolved_from.extend(members.resolved_from)
        hosts = unique(hosts)
        if len(missing) == len(parents):
            return Observation(
                ref, None, Skip.NO_ADDRESS, f"{where}: no Gateway {', '.join(missing)} (yet)"
            )
        if not hosts:
            return Observation(
                ref, None, Skip.NO_HOST, f"{where}: no hostname on the listeners it attaches to"
            )
        vips = unique(vips)
        if not vips:
            return Observation(
                ref,
                None,
                Skip.NO_ADDRESS,
                f"{where}: its Gateways have no address in status.addresses (yet)",
            )
        message = ObservedObject(
            ref=ref,
            resource_version=resource_version(obj),
            labels=labels_of(obj),
            disabled=disabled(obj),
            hosts=hosts,
            tls_hosts=unique(tls_hosts),
            vips=vips,
            ports=sorted(set(ports)),
            resolved_from=unique(resolved_from),
        )
        return published(Observation(ref, message), obj)


def _route(kind: ObjectKind, version: str, plural: str, protocols: Iterable[str]) -> RouteSource:
    return RouteSource(
        name=kind.value,
        api=Api(GROUP, version, plural, optional=True),
        kind=kind,
        joined=(GATEWAY_NAME,),
        protocols=frozenset(protocols),
    )


HTTP_ROUTE = _route(ObjectKind.HTTP_ROUTE, "v1", "httproutes", ("HTTP", "HTTPS"))
GRPC_ROUTE = _route(ObjectKind.GRPC_ROUTE, "v1", "grpcroutes", ("HTTP", "HTTPS"))
TLS_ROUTE = _route(ObjectKind.TLS_ROUTE, "v1", "tlsroutes", ("TLS",))
"""TLSRoute is in the standard channel (v1) since Gateway API v1.5; the experimental
channel's v1alpha2 of older releases is not read."""
