"""Just enough OpenAPI v3 for kubectl: it learns from the PATCH operations that the server
validates fields itself (fieldValidation), so `kubectl apply` needs no schemas and no
`--validate=false`. The schemas of custom resources whose CRD has one are published (with
their group/version/kind), so `kubectl explain gdp.spec.trafficSplit` works; built-ins have none.
"""

from __future__ import annotations

import hashlib
import json

from kubesim.resources import Obj, Registry, ResourceType

_QUERY_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "force")
# No strategic merge here on purpose: kubectl then computes it from its compiled-in types
# for built-ins and falls back to JSON merge patch for custom resources, as it does for CRDs.
_PATCH_MEDIA_TYPES = ("application/json-patch+json", "application/merge-patch+json")


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _item_path(rtype: ResourceType) -> str:
    namespace = "namespaces/{namespace}/" if rtype.namespaced else ""
    return f"/{_gv_path(rtype.group, rtype.version)}/{namespace}{rtype.plural}/{{name}}"


def group_version_doc(registry: Registry, group: str, version: str) -> Obj | None:
    """The OpenAPI document of one group/version, or None if it is not served."""
    types = [t for t in registry.all() if (t.group, t.version) == (group, version)]
    if not types:
        return None
    paths = {}
    schemas: Obj = {}
    for rtype in types:
        gvk = {"group": rtype.group, "version": rtype.version, "kind": rtype.kind}
        if rtype.schema:
            name = ".".join([*reversed(rtype.group.split(".")), rtype.version, rtype.kind])
            schemas[name] = {**rtype.schema, "x-kubernetes-group-version-kind": [gvk]}
        paths[_item_path(rtype)] = {
            "patch": {
                "operationId": f"patch{rtype.kind}",
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                    for name in _QUERY_PARAMS
                ],
                "requestBody": {
                    "content": {
                        media: {"schema": {"type": "object"}} for media in _PATCH_MEDIA_TYPES
                    }
                },
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (kubesim)", "version": "v1.34.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def root_doc(registry: Registry) -> Obj:
    """`/openapi/v3`: where each group/version document lives, keyed by a content hash."""
    paths = {}
    for group, versions in registry.groups().items():
        for version in versions:
            doc = group_version_doc(registry, group, version)
            digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]
            path = _gv_path(group, version)
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest.upper()}"}
    return {"paths": paths}
