"""Ingress (networking.k8s.io/v1): its rule hosts, paths and TLS hosts, once its load
balancer reports an address (an IP, or a hostname the shell resolves)."""

from __future__ import annotations

from dataclasses import dataclass

from services.watcher.sources.base import (
    HTTP_PORT,
    HTTPS_PORT,
    NO_LOOKUP,
    Api,
    JoinKey,
    Lookup,
    Obj,
    Observation,
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
    unique,
)
from shared.models import HostPath, ObjectKind, ObservedObject

STATUS = "status.loadBalancer.ingress"


@dataclass(frozen=True)
class IngressSource(Source):
    def observe(self, cluster: str, obj: Obj, lookup: Lookup = NO_LOOKUP) -> Observation:
        ref = object_ref(cluster, ObjectKind.INGRESS, obj)
        addresses = load_balancer_addresses(obj)
        members = member_addresses(addresses, lookup)
        if not members.vips:
            return no_address(ref, addresses, STATUS)
        spec = mapping(obj.get("spec"))
        hosts: list[str] = []
        paths: list[HostPath] = []
        for rule in map(mapping, as_list(spec.get("rules"))):
            host = str(rule.get("host") or "").strip()
            if not host:
                continue  # a host-less rule names no FQDN a GSLB service could answer
            hosts.append(host)
            for entry in map(mapping, as_list(mapping(rule.get("http")).get("paths"))):
                paths.append(HostPath(host=host, path=str(entry.get("path") or "/")))
        tls_hosts = unique(
            str(host).strip()
            for tls in map(mapping, as_list(spec.get("tls")))
            for host in as_list(tls.get("hosts"))
        )
        message = ObservedObject(
            ref=ref,
            resource_version=resource_version(obj),
            labels=labels_of(obj),
            disabled=disabled(obj),
            hosts=unique(hosts),
            paths=list(dict.fromkeys(paths)),
            tls_hosts=tls_hosts,
            vips=members.vips,
            # The ingress controller serves HTTP, and HTTPS for the TLS hosts.
            ports=[HTTP_PORT, HTTPS_PORT] if tls_hosts else [HTTP_PORT],
            resolved_from=members.resolved_from,
        )
        return published(Observation(ref, message), obj)

    def joins(self, obj: Obj, lookup: Lookup = NO_LOOKUP) -> frozenset[JoinKey]:
        return hostname_joins(load_balancer_addresses(obj))


INGRESS = IngressSource(
    name=ObjectKind.INGRESS,
    api=Api("networking.k8s.io", "v1", "ingresses"),
    kind=ObjectKind.INGRESS,
)
