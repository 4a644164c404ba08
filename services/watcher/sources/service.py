"""Service (v1) of type LoadBalancer: VIPs, ports and the external-dns hostnames, once its
load balancer reports an address (an IP, or a hostname the shell resolves)."""

from __future__ import annotations

from dataclasses import dataclass

from services.watcher.sources.base import (
    NO_LOOKUP,
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
    load_balancer_addresses,
    mapping,
    member_addresses,
    no_address,
    object_ref,
    published,
    resource_version,
    strings,
    unique,
)
from shared.models import ObjectKind, ObservedObject

EXTERNAL_DNS_HOSTNAME = "external-dns.alpha.kubernetes.io/hostname"
"""Service annotation naming its DNS names, comma-separated (as ExternalDNS reads it)."""
STATUS = "status.loadBalancer.ingress"


def service_hostnames(obj: Obj) -> list[str]:
    annotations = strings(mapping(obj.get("metadata")).get("annotations"))
    return unique(h.strip() for h in annotations.get(EXTERNAL_DNS_HOSTNAME, "").split(","))


def is_load_balancer(obj: Obj) -> bool:
    return mapping(obj.get("spec")).get("type") == "LoadBalancer"


@dataclass(frozen=True)
class ServiceSource(Source):
    def observe(self, cluster: str, obj: Obj, lookup: Lookup = NO_LOOKUP) -> Observation:
        ref = object_ref(cluster, ObjectKind.SERVICE, obj)
        spec = mapping(obj.get("spec"))
        service_type = spec.get("type") or "ClusterIP"
        if service_type != "LoadBalancer":
            detail = f"Service {ref.namespace}/{ref.name} in cluster {cluster} is {service_type}"
            return Observation(ref, None, Skip.NOT_LOAD_BALANCER, detail)
        addresses = load_balancer_addresses(obj)
        members = member_addresses(addresses, lookup)
        if not members.vips:
            return no_address(ref, addresses, STATUS)
        ports = [
            port
            for entry in map(mapping, as_list(spec.get("ports")))
            if isinstance(port := entry.get("port"), int)
        ]
        message = ObservedObject(
            ref=ref,
            resource_version=resource_version(obj),
            labels=labels_of(obj),
            disabled=disabled(obj),
            hosts=service_hostnames(obj),
            vips=members.vips,
            ports=list(dict.fromkeys(ports)),
            resolved_from=members.resolved_from,
        )
        return published(Observation(ref, message), obj)

    def joins(self, obj: Obj, lookup: Lookup = NO_LOOKUP) -> frozenset[JoinKey]:
        if not is_load_balancer(obj):
            return frozenset()
        return hostname_joins(load_balancer_addresses(obj))


SERVICE = ServiceSource(
    name=ObjectKind.SERVICE, api=Api("", "v1", "services"), kind=ObjectKind.SERVICE
)
