"""OpenShift Route (route.openshift.io/v1): the host from `spec.host`, the address from the
router that admitted it, as AMKO reads it.

A router admits a Route with an entry in `status.ingress[]` (its `host` the Route's, a
condition `Admitted` = "True"). The address is the Admitted condition's `message` when it is
an IP (AKO writes the virtual service's VIP there), else the entry's
`routerCanonicalHostname`: an IP as is, a hostname resolved by the shell like a load
balancer's. A Route no router admitted is not published.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.watcher.sources.base import (
    HTTP_PORT,
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
    no_address,
    object_ref,
    published,
    resource_version,
    split_addresses,
)
from shared.models import HostPath, ObjectKind, ObservedObject, normalize_ip

STATUS = "status.ingress (routerCanonicalHostname)"


def _is_ip(value: str) -> bool:
    try:
        normalize_ip(value)
    except ValueError:
        return False
    return True


def _host(obj: Obj) -> str:
    return str(mapping(obj.get("spec")).get("host") or "").strip().rstrip(".").lower()


def router_addresses(obj: Obj) -> tuple[bool, Addresses]:
    """(admitted by some router, the addresses of the routers that admitted it)."""
    host = _host(obj)
    admitted = False
    pairs: list[tuple[str, str]] = []
    for entry in map(mapping, as_list(mapping(obj.get("status")).get("ingress"))):
        if str(entry.get("host") or host).strip().rstrip(".").lower() != host:
            continue
        condition = next(
            (
                c
                for c in map(mapping, as_list(entry.get("conditions")))
                if c.get("type") == "Admitted"
            ),
            None,
        )
        if condition is None or condition.get("status") != "True":
            continue
        admitted = True
        message = str(condition.get("message") or "").strip()
        canonical = str(entry.get("routerCanonicalHostname") or "").strip()
        if message and _is_ip(message):
            pairs.append(("ip", message))
        elif canonical:
            pairs.append(("ip" if _is_ip(canonical) else "hostname", canonical))
    return admitted, split_addresses(pairs)


@dataclass(frozen=True)
class OpenShiftRouteSource(Source):
    def observe(self, cluster: str, obj: Obj, lookup: Lookup = NO_LOOKUP) -> Observation:
        ref = object_ref(cluster, ObjectKind.ROUTE, obj)
        host = _host(obj)
        where = f"Route {ref.namespace}/{ref.name} in cluster {cluster}"
        if not host:
            return Observation(ref, None, Skip.NO_HOST, f"{where}: no spec.host")
        admitted, addresses = router_addresses(obj)
        if not admitted:
            return Observation(ref, None, Skip.NOT_ACCEPTED, f"{where}: no router admitted it")
        members = member_addresses(addresses, lookup)
        if not members.vips:
            return no_address(ref, addresses, STATUS)
        spec = mapping(obj.get("spec"))
        tls = bool(mapping(spec.get("tls")))
        message = ObservedObject(
            ref=ref,
            resource_version=resource_version(obj),
            labels=labels_of(obj),
            disabled=disabled(obj),
            hosts=[host],
            paths=[HostPath(host=host, path=str(spec.get("path") or "/"))],
            tls_hosts=[host] if tls else [],
            vips=members.vips,
            ports=[HTTP_PORT, HTTPS_PORT] if tls else [HTTP_PORT],
            resolved_from=members.resolved_from,
        )
        return published(Observation(ref, message), obj)

    def joins(self, obj: Obj, lookup: Lookup = NO_LOOKUP) -> frozenset[JoinKey]:
        return hostname_joins(router_addresses(obj)[1])


OPENSHIFT_ROUTE = OpenShiftRouteSource(
    name=ObjectKind.ROUTE.value,
    api=Api("route.openshift.io", "v1", "routes", optional=True),
    kind=ObjectKind.ROUTE,
)
