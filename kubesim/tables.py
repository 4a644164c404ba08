"""Server-side `Table` rendering (meta.k8s.io/v1), the columns `kubectl get` prints."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubesim.resources import (
    CRDS,
    DEPLOYMENTS,
    INGRESSES,
    NAMESPACES,
    SERVICES,
    Obj,
    PrinterColumn,
    ResourceType,
)

TABLE_MEDIA_TYPE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration, the AGE column format."""
    s = int(seconds)
    if s < 0:
        return "0s" if s > -1 else "<invalid>"
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 192:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 730:
        return f"{d}d"
    y = d // 365
    return f"{y}y{d % 365}d" if y < 8 and d % 365 else f"{y}y"


def _age(obj: Obj) -> str:
    created = obj["metadata"].get("creationTimestamp")
    if not created:
        return "<unknown>"
    then = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return human_duration((datetime.now(UTC) - then).total_seconds())


def _json_path(obj: Any, path: str) -> Any:
    """The `.a.b[0].c` subset of JSONPath used by printer columns."""
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        if name and isinstance(obj, dict):
            obj = obj.get(name)
        elif index and isinstance(obj, list) and int(index) < len(obj):
            obj = obj[int(index)]
        else:
            return None
    return obj


def _lb_addresses(obj: Obj) -> list[str]:
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return [i.get("ip") or i.get("hostname", "") for i in ingress]


def _ingress_cells(obj: Obj) -> list[Any]:
    spec = obj.get("spec") or {}
    hosts = [r["host"] for r in spec.get("rules") or [] if r.get("host")]
    return [
        spec.get("ingressClassName") or "<none>",
        ",".join(hosts) or "*",
        ",".join(_lb_addresses(obj)),
        "80, 443" if spec.get("tls") else "80",
    ]


def _service_cells(obj: Obj) -> list[Any]:
    spec = obj.get("spec") or {}
    kind = spec.get("type", "ClusterIP")
    external = spec.get("externalIPs") or []
    if kind == "LoadBalancer":
        external = _lb_addresses(obj) + external or ["<pending>"]
    ports = [
        f"{p['port']}:{p['nodePort']}/{p.get('protocol', 'TCP')}"
        if p.get("nodePort")
        else f"{p['port']}/{p.get('protocol', 'TCP')}"
        for p in spec.get("ports") or []
    ]
    selector = ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items())
    return [
        kind,
        spec.get("clusterIP", "<none>"),
        ",".join(external) or "<none>",
        ",".join(ports) or "<none>",
        selector or "<none>",
    ]


def _deployment_cells(obj: Obj) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    return [
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
        ",".join(c.get("name", "") for c in containers),
        ",".join(c.get("image", "") for c in containers),
    ]


_BUILTIN_COLUMNS: dict[tuple[str, str], tuple[list[PrinterColumn], Callable[[Obj], list[Any]]]] = {
    NAMESPACES.key: (
        [PrinterColumn("Status", "string", ".status.phase")],
        lambda o: [(o.get("status") or {}).get("phase", "")],
    ),
    INGRESSES.key: (
        [
            PrinterColumn("Class", "string", ""),
            PrinterColumn("Hosts", "string", ""),
            PrinterColumn("Address", "string", ""),
            PrinterColumn("Ports", "string", ""),
        ],
        _ingress_cells,
    ),
    SERVICES.key: (
        [
            PrinterColumn("Type", "string", ""),
            PrinterColumn("Cluster-IP", "string", ""),
            PrinterColumn("External-IP", "string", ""),
            PrinterColumn("Port(s)", "string", ""),
            PrinterColumn("Selector", "string", "", priority=1),
        ],
        _service_cells,
    ),
    DEPLOYMENTS.key: (
        [
            PrinterColumn("Ready", "string", ""),
            PrinterColumn("Up-to-date", "integer", ""),
            PrinterColumn("Available", "integer", ""),
            PrinterColumn("Containers", "string", "", priority=1),
            PrinterColumn("Images", "string", "", priority=1),
        ],
        _deployment_cells,
    ),
    CRDS.key: (
        [PrinterColumn("Created At", "date", "")],
        lambda o: [o["metadata"].get("creationTimestamp", "")],
    ),
}

_AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp")


def _layout(rtype: ResourceType) -> tuple[list[PrinterColumn], Callable[[Obj], list[Any]]]:
    """Columns after Name, and how to fill them, as kube-apiserver's printers would."""
    if not rtype.custom and rtype.key in _BUILTIN_COLUMNS:
        columns, cells = _BUILTIN_COLUMNS[rtype.key]
        if rtype is CRDS:
            return columns, cells
        # Age sits before the wide-only (priority 1) columns, as in kubectl output.
        narrow = [c for c in columns if c.priority == 0]
        wide = [c for c in columns if c.priority != 0]

        def with_age(obj: Obj) -> list[Any]:
            values = cells(obj)
            return [*values[: len(narrow)], _age(obj), *values[len(narrow) :]]

        return [*narrow, _AGE, *wide], with_age
    columns = list(rtype.printer_columns) or [_AGE]

    def custom_cells(obj: Obj) -> list[Any]:
        values = []
        for column in columns:
            value = _json_path(obj, column.json_path)
            if column.type == "date" and isinstance(value, str):
                value = _age({"metadata": {"creationTimestamp": value}})
            values.append(value)
        return values

    return columns, custom_cells


def render_table(
    rtype: ResourceType,
    objects: list[Obj],
    include_object: str,
    metadata: Obj,
) -> Obj:
    """A Table of `objects`; rows carry the object, its metadata, or nothing per includeObject."""
    columns, cells = _layout(rtype)
    definitions = [
        {
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": "Name must be unique within a namespace.",
            "priority": 0,
        },
        *(
            {
                "name": c.name,
                "type": c.type,
                "format": "",
                "description": c.description,
                "priority": c.priority,
            }
            for c in columns
        ),
    ]
    rows = []
    for obj in objects:
        row: Obj = {"cells": [obj["metadata"]["name"], *cells(obj)]}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    }
