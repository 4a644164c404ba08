"""The resource types the simulator serves: a few built-ins plus whatever CRDs are installed."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubesim.patch import MergeKeys

Obj = dict[str, Any]

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class PrinterColumn:
    """A CRD additionalPrinterColumn (or a built-in's equivalent) for `kubectl get`."""

    name: str
    type: str
    json_path: str
    priority: int = 0
    description: str = ""


# Merge keys every kind shares through ObjectMeta.
_META_KEYS: dict[tuple[str, ...], str] = {
    ("metadata", "ownerReferences"): "uid",
    ("metadata", "finalizers"): "",
}
_POD_SPEC_KEYS = {
    ("containers",): "name",
    ("initContainers",): "name",
    ("containers", "*", "ports"): "containerPort",
    ("containers", "*", "env"): "name",
    ("containers", "*", "volumeMounts"): "mountPath",
    ("initContainers", "*", "env"): "name",
    ("initContainers", "*", "volumeMounts"): "mountPath",
    ("volumes",): "name",
    ("imagePullSecrets",): "name",
}


@dataclass(frozen=True)
class ResourceType:
    """One served resource (group/version/plural) with the semantics its kind needs."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    # Served from a CustomResourceDefinition: unstructured, no strategic merge patch,
    # and PUT must carry a resourceVersion.
    custom: bool = False
    has_status: bool = True
    # What the status is reset to on create; None removes it (CRDs: "create cannot set status").
    initial_status: Obj | None = None
    # DELETE answers with the object (true) or with a Status naming it (false).
    return_deleted_object: bool = False
    name_pattern: re.Pattern[str] = DNS1123_SUBDOMAIN
    name_max: int = 253
    # Strategic merge patch schema; None when the kind does not support that patch type.
    merge_keys: MergeKeys | None = field(default_factory=lambda: dict(_META_KEYS))
    printer_columns: tuple[PrinterColumn, ...] = ()
    # A CRD version's openAPIV3Schema: objects are defaulted, pruned and validated against it.
    schema: Obj | None = field(default=None, compare=False, hash=False)

    @property
    def key(self) -> tuple[str, str]:
        """Storage identity: versions of the same group/plural share one set of objects."""
        return (self.group, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """The `ingresses.networking.k8s.io` spelling used in Status messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


NAMESPACES = ResourceType(
    group="",
    version="v1",
    plural="namespaces",
    kind="Namespace",
    singular="namespace",
    namespaced=False,
    short_names=("ns",),
    initial_status={"phase": "Active"},
    return_deleted_object=True,
    name_pattern=DNS1123_LABEL,
    name_max=63,
)
SERVICES = ResourceType(
    group="",
    version="v1",
    plural="services",
    kind="Service",
    singular="service",
    namespaced=True,
    short_names=("svc",),
    categories=("all",),
    initial_status={"loadBalancer": {}},
    return_deleted_object=True,
    name_pattern=DNS1035_LABEL,
    name_max=63,
    merge_keys={**_META_KEYS, ("spec", "ports"): "port"},
)
INGRESSES = ResourceType(
    group="networking.k8s.io",
    version="v1",
    plural="ingresses",
    kind="Ingress",
    singular="ingress",
    namespaced=True,
    short_names=("ing",),
    initial_status={"loadBalancer": {}},
)
DEPLOYMENTS = ResourceType(
    group="apps",
    version="v1",
    plural="deployments",
    kind="Deployment",
    singular="deployment",
    namespaced=True,
    short_names=("deploy",),
    categories=("all",),
    initial_status={},
    merge_keys={
        **_META_KEYS,
        **{("spec", "template", "spec", *path): key for path, key in _POD_SPEC_KEYS.items()},
    },
)
# ServiceAccounts and RBAC, for kubesim.guard: tokens are minted for the one, the others are
# what requests are authorized by. Role names are path segments (ClusterRoles such as
# "system:controller:..." hold colons).
PATH_SEGMENT_NAME = re.compile(r"^(?!\.\.?$)[^/%]+$")
SERVICEACCOUNTS = ResourceType(
    group="",
    version="v1",
    plural="serviceaccounts",
    kind="ServiceAccount",
    singular="serviceaccount",
    namespaced=True,
    short_names=("sa",),
    has_status=False,
    return_deleted_object=True,
)
SECRETS = ResourceType(
    group="",
    version="v1",
    plural="secrets",
    kind="Secret",
    singular="secret",
    namespaced=True,
    has_status=False,
    return_deleted_object=True,
)
_RBAC = "rbac.authorization.k8s.io"
ROLES = ResourceType(
    group=_RBAC, version="v1", plural="roles", kind="Role", singular="role",
    namespaced=True, has_status=False, return_deleted_object=False,
    name_pattern=PATH_SEGMENT_NAME,
)  # fmt: skip
CLUSTERROLES = ResourceType(
    group=_RBAC, version="v1", plural="clusterroles", kind="ClusterRole",
    singular="clusterrole", namespaced=False, has_status=False,
    return_deleted_object=False, name_pattern=PATH_SEGMENT_NAME,
)  # fmt: skip
ROLEBINDINGS = ResourceType(
    group=_RBAC, version="v1", plural="rolebindings", kind="RoleBinding",
    singular="rolebinding", namespaced=True, has_status=False,
    return_deleted_object=False, name_pattern=PATH_SEGMENT_NAME,
)  # fmt: skip
CLUSTERROLEBINDINGS = ResourceType(
    group=_RBAC, version="v1", plural="clusterrolebindings", kind="ClusterRoleBinding",
    singular="clusterrolebinding", namespaced=False, has_status=False,
    return_deleted_object=False, name_pattern=PATH_SEGMENT_NAME,
)  # fmt: skip
GUARD_TYPES = (SERVICEACCOUNTS, SECRETS, ROLES, CLUSTERROLES, ROLEBINDINGS, CLUSTERROLEBINDINGS)
CRDS = ResourceType(
    group="apiextensions.k8s.io",
    version="v1",
    plural="customresourcedefinitions",
    kind="CustomResourceDefinition",
    singular="customresourcedefinition",
    namespaced=False,
    short_names=("crd", "crds"),
    categories=("api-extensions",),
    initial_status={},
    return_deleted_object=True,
    merge_keys={**_META_KEYS, ("spec", "versions"): "name"},
    printer_columns=(PrinterColumn("Created At", "date", ".metadata.creationTimestamp"),),
)
EVENTS = ResourceType(
    group="",
    version="v1",
    plural="events",
    kind="Event",
    singular="event",
    namespaced=True,
    short_names=("ev",),
    has_status=False,
    return_deleted_object=False,
)
BUILTINS = (NAMESPACES, SERVICES, INGRESSES, DEPLOYMENTS, CRDS, EVENTS)


def types_from_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    """The resource types an established CRD serves, one per served version."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    kind = names.get("kind", "")
    served = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        columns = tuple(
            PrinterColumn(
                name=c.get("name", ""),
                type=c.get("type", "string"),
                json_path=c.get("jsonPath", ""),
                priority=int(c.get("priority", 0)),
                description=c.get("description", ""),
            )
            for c in version.get("additionalPrinterColumns") or []
        )
        served.append(
            ResourceType(
                group=spec.get("group", ""),
                version=version.get("name", ""),
                plural=names.get("plural", ""),
                kind=kind,
                singular=names.get("singular") or kind.lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                custom=True,
                has_status="status" in (version.get("subresources") or {}),
                return_deleted_object=True,
                merge_keys=None,
                printer_columns=columns,
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
            )
        )
    return served


def crd_manifest(
    group: str, kind: str, plural: str, short_names: Iterable[str], version: str = "v1alpha1"
) -> Obj:
    """A namespaced CRD with a status subresource and a schema that keeps every field."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": list(short_names),
            },
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


CRD_DIR = Path(__file__).resolve().parents[1] / "deploy" / "crds"
"""The kgslb CRDs as deployed: the simulator installs these, schemas and columns included."""


def kgslb_crds() -> list[Obj]:
    """The three kgslb.io/v1alpha1 CRDs a kgslb cluster has installed: `deploy/crds/` of the
    repository, so that objects are validated as a real API server validates them; schema-less
    copies only where that folder is not there (an installed package without the repository)."""
    files = sorted(CRD_DIR.glob("*.kgslb.io.yaml"))
    if files:
        return [yaml.safe_load(path.read_text()) for path in files]
    return [
        crd_manifest("kgslb.io", "GSLBConfig", "gslbconfigs", ["gc"]),
        crd_manifest("kgslb.io", "GlobalDeploymentPolicy", "globaldeploymentpolicies", ["gdp"]),
        crd_manifest("kgslb.io", "GSLBHostRule", "gslbhostrules", ["ghr"]),
    ]


GATEWAY_GROUP = "gateway.networking.k8s.io"
OPENSHIFT_ROUTE_GROUP = "route.openshift.io"


def gateway_api_crds() -> list[Obj]:
    """The Gateway API kinds kgslb reads (standard channel, v1), and OpenShift's Route, which
    OpenShift serves itself (here a CRD stands in for it)."""
    return [
        crd_manifest(GATEWAY_GROUP, "Gateway", "gateways", ["gtw"], version="v1"),
        crd_manifest(GATEWAY_GROUP, "HTTPRoute", "httproutes", [], version="v1"),
        crd_manifest(GATEWAY_GROUP, "GRPCRoute", "grpcroutes", [], version="v1"),
        crd_manifest(GATEWAY_GROUP, "TLSRoute", "tlsroutes", [], version="v1"),
        crd_manifest(OPENSHIFT_ROUTE_GROUP, "Route", "routes", [], version="v1"),
    ]


class Registry:
    """Lookup of served types: the built-ins plus one entry per served version of each CRD."""

    def __init__(self) -> None:
        self._crd_types: dict[str, list[ResourceType]] = {}  # CRD name -> its types

    def all(self) -> list[ResourceType]:
        return [*BUILTINS, *GUARD_TYPES, *(t for types in self._crd_types.values() for t in types)]

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return next(
            (t for t in self.all() if (t.group, t.version, t.plural) == (group, version, plural)),
            None,
        )

    def by_key(self, key: tuple[str, str]) -> ResourceType | None:
        return next((t for t in self.all() if t.key == key), None)

    def set_crd(self, name: str, types: list[ResourceType]) -> None:
        if types:
            self._crd_types[name] = types
        else:
            self._crd_types.pop(name, None)

    def groups(self) -> dict[str, list[str]]:
        """Group name -> served versions, in registration order."""
        result: dict[str, list[str]] = {}
        for t in self.all():
            versions = result.setdefault(t.group, [])
            if t.version not in versions:
                versions.append(t.version)
        return result
