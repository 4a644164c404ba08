"""Stand-in for AKO (the Avi Kubernetes Operator): gives Ingresses and LoadBalancer Services a VIP,
Gateways their addresses, and accepts the routes (Gateway API) and admits the OpenShift Routes
it serves.

Runs as a store controller. What it decides lands through the status subresource, so it bumps
resourceVersion and emits MODIFIED without touching generation:

- an Ingress or a LoadBalancer Service: `status.loadBalancer.ingress: [{ip}]`;
- a Gateway: `status.addresses: [{type: IPAddress, value}]`, conditions Accepted and
  Programmed (with `shared_ingress_vip`, the shared address as an Ingress gets, so that the
  demo backends of `kgslb up` serve it; otherwise its own);
- an HTTPRoute, GRPCRoute or TLSRoute: one `status.parents` entry per Gateway parentRef,
  Accepted "True" when that Gateway exists (reason Accepted), else "False" (NoMatchingParent);
  re-evaluated when a Gateway comes or goes;
- an OpenShift Route with a `spec.host`: `status.ingress: [{host, routerName: ako, conditions:
  [{type: Admitted, status: "True", message: <VIP>}]}]`, the VIP in the message as AKO writes
  it (the shared Ingress VIP).
"""

from __future__ import annotations

from typing import Any

from kubesim.resources import (
    GATEWAY_GROUP,
    INGRESSES,
    OPENSHIFT_ROUTE_GROUP,
    SERVICES,
    Obj,
    ResourceType,
)
from kubesim.store import ClusterStore, WatchEvent

GATEWAYS = (GATEWAY_GROUP, "gateways")
ROUTE_KINDS = {(GATEWAY_GROUP, plural) for plural in ("httproutes", "grpcroutes", "tlsroutes")}
OPENSHIFT_ROUTES = (OPENSHIFT_ROUTE_GROUP, "routes")
CONTROLLER_NAME = "ako.vmware.com/avi-lb"
ROUTER_NAME = "ako"


class VipAllocator:
    """Hands out IPs from one cluster's pool.

    With `shared_ingress_vip` (AKO's default, one shared virtual service per cluster) every
    Ingress gets the first pool address and LoadBalancer Services draw from the rest;
    otherwise each object gets its own address. An object keeps its address until deleted.
    """

    def __init__(self, pool: list[str], *, shared_ingress_vip: bool = True) -> None:
        self._pool = list(pool)
        self._shared_ingress_vip = shared_ingress_vip
        self._assigned: dict[tuple[str, str, str], str] = {}  # (plural, ns, name) -> ip

    def adopt(self, store: ClusterStore) -> None:
        """Take over the addresses objects restored into `store` already hold."""
        for rtype in (INGRESSES, SERVICES):
            for obj in store.iter_objects(rtype):
                ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress")
                if ingress and ingress[0].get("ip"):
                    meta = obj["metadata"]
                    self._assigned[(rtype.plural, meta["namespace"], meta["name"])] = ingress[0][
                        "ip"
                    ]

    def __call__(self, store: ClusterStore, event: WatchEvent) -> None:
        rtype = store.registry.by_key(event.resource)
        if rtype is None:
            return
        if event.resource == GATEWAYS:
            self._gateway(store, rtype, event)
            return
        if event.resource in ROUTE_KINDS:
            if event.type != "DELETED":
                self._accept_route(store, rtype, event.obj)
            return
        if event.resource == OPENSHIFT_ROUTES:
            if event.type != "DELETED":
                self._admit_route(store, rtype, event.obj)
            return
        if rtype is not INGRESSES and rtype is not SERVICES:
            return
        meta = event.obj["metadata"]
        key = (rtype.plural, meta["namespace"], meta["name"])
        wants_vip = rtype is INGRESSES or (event.obj.get("spec") or {}).get("type") == (
            "LoadBalancer"
        )
        if event.type == "DELETED":
            self._assigned.pop(key, None)
            return
        if not wants_vip:
            # A Service that stopped being a LoadBalancer loses its address, as with AKO.
            if self._assigned.pop(key, None) is not None:
                self._publish(store, rtype, event.obj, [])
            return
        if ((event.obj.get("status") or {}).get("loadBalancer") or {}).get("ingress"):
            return  # AKO (or a test) already published an address
        ip = self._assigned.get(key) or self._allocate(rtype)
        if ip is None:
            return  # pool exhausted or not configured: the object stays pending
        self._assigned[key] = ip
        self._publish(store, rtype, event.obj, [{"ip": ip}])

    # Gateway API -----------------------------------------------------------------------------

    def _gateway(self, store: ClusterStore, rtype: ResourceType, event: WatchEvent) -> None:
        meta = event.obj["metadata"]
        key = (rtype.plural, meta["namespace"], meta["name"])
        if event.type == "DELETED":
            self._assigned.pop(key, None)
        elif not (event.obj.get("status") or {}).get("addresses"):
            ip = self._assigned.get(key) or self._allocate(rtype)
            if ip is None:
                return  # pool exhausted or not configured: the Gateway stays pending
            self._assigned[key] = ip
            conditions = [
                _condition(kind, "True", kind, event.obj) for kind in ("Accepted", "Programmed")
            ]
            status = {"addresses": [{"type": "IPAddress", "value": ip}], "conditions": conditions}
            _write_status(store, rtype, event.obj, status)
        if event.type in ("ADDED", "DELETED"):
            for route_key in ROUTE_KINDS:
                route_type = store.registry.by_key(route_key)
                if route_type is None:
                    continue
                for route in list(store.iter_objects(route_type)):
                    self._accept_route(store, route_type, route)

    @staticmethod
    def _accept_route(store: ClusterStore, rtype: ResourceType, route: Obj) -> None:
        namespace = route["metadata"]["namespace"]
        gateways = store.registry.by_key(GATEWAYS)
        parents = []
        for ref in (route.get("spec") or {}).get("parentRefs") or []:
            if (ref.get("group") or GATEWAY_GROUP, ref.get("kind") or "Gateway") != (
                GATEWAY_GROUP,
                "Gateway",
            ):
                continue
            gateway_ns = ref.get("namespace") or namespace
            exists = gateways is not None and any(
                g["metadata"]["name"] == ref.get("name")
                for g in store.iter_objects(gateways, gateway_ns)
            )
            reason = "Accepted" if exists else "NoMatchingParent"
            parents.append(
                {
                    "parentRef": {
                        k: v
                        for k, v in {
                            "group": GATEWAY_GROUP,
                            "kind": "Gateway",
                            "namespace": gateway_ns,
                            "name": ref.get("name"),
                            "sectionName": ref.get("sectionName"),
                            "port": ref.get("port"),
                        }.items()
                        if v is not None
                    },
                    "controllerName": CONTROLLER_NAME,
                    "conditions": [
                        _condition("Accepted", "True" if exists else "False", reason, route)
                    ],
                }
            )
        if (route.get("status") or {}).get("parents") != parents:
            _write_status(store, rtype, route, {"parents": parents})

    # OpenShift Route ---------------------------------------------------------------------------

    def _admit_route(self, store: ClusterStore, rtype: ResourceType, route: Obj) -> None:
        host = (route.get("spec") or {}).get("host")
        if not host or not self._pool:
            return
        ip = self._pool[0] if self._shared_ingress_vip else self._route_vip(rtype, route)
        if ip is None:
            return
        admitted = {"type": "Admitted", "status": "True", "message": ip}
        ingress = [{"host": host, "routerName": ROUTER_NAME, "conditions": [admitted]}]
        if (route.get("status") or {}).get("ingress") != ingress:
            _write_status(store, rtype, route, {"ingress": ingress})

    def _route_vip(self, rtype: ResourceType, route: Obj) -> str | None:
        meta = route["metadata"]
        key = (rtype.plural, meta["namespace"], meta["name"])
        ip = self._assigned.get(key) or self._allocate(rtype)
        if ip is not None:
            self._assigned[key] = ip
        return ip

    def _allocate(self, rtype: ResourceType) -> str | None:
        if not self._pool:
            return None
        if self._shared_ingress_vip:
            if rtype is INGRESSES or rtype.key == GATEWAYS:
                return self._pool[0]
            candidates = self._pool[1:]
        else:
            candidates = self._pool
        in_use = set(self._assigned.values())
        return next((ip for ip in candidates if ip not in in_use), None)

    @staticmethod
    def _publish(store: ClusterStore, rtype: ResourceType, obj: Obj, ingress: list[Obj]) -> None:
        meta = obj["metadata"]
        status = dict(obj.get("status") or {})
        status["loadBalancer"] = {"ingress": ingress} if ingress else {}
        store.update(
            rtype, meta["namespace"], meta["name"], {**obj, "status": status}, subresource="status"
        )


def _condition(kind: str, status: str, reason: str, obj: Obj) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": "" if status == "True" else "no such Gateway",
        "observedGeneration": obj["metadata"].get("generation", 1),
    }


def _write_status(store: ClusterStore, rtype: ResourceType, obj: Obj, status: Obj) -> None:
    meta = obj["metadata"]
    merged = {**(obj.get("status") or {}), **status}
    store.update(
        rtype, meta["namespace"], meta["name"], {**obj, "status": merged}, subresource="status"
    )
