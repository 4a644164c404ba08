"""Stand-in for AKO (the Avi Kubernetes Operator): gives Ingresses and LoadBalancer Services a VIP.

Runs as a store controller. The VIP lands in status.loadBalancer.ingress through the status
subresource, so it bumps resourceVersion and emits MODIFIED without touching generation.
"""

from __future__ import annotations

from kubesim.resources import INGRESSES, SERVICES, Obj, ResourceType
from kubesim.store import ClusterStore, WatchEvent


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

    def _allocate(self, rtype: ResourceType) -> str | None:
        if not self._pool:
            return None
        if self._shared_ingress_vip:
            if rtype is INGRESSES:
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
