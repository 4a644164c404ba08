"""Namespace (v1): only its labels matter (GDP namespace selectors)."""

from __future__ import annotations

from dataclasses import dataclass

from services.watcher.sources.base import (
    NO_LOOKUP,
    Api,
    Lookup,
    Obj,
    Observation,
    Source,
    labels_of,
    object_ref,
    resource_version,
)
from shared.models import ObjectKind, ObservedObject


@dataclass(frozen=True)
class NamespaceSource(Source):
    def observe(self, cluster: str, obj: Obj, lookup: Lookup = NO_LOOKUP) -> Observation:
        ref = object_ref(cluster, ObjectKind.NAMESPACE, obj)
        message = ObservedObject(
            ref=ref, resource_version=resource_version(obj), labels=labels_of(obj)
        )
        return Observation(ref, message)


NAMESPACE = NamespaceSource(
    name=ObjectKind.NAMESPACE,
    api=Api("", "v1", "namespaces", namespaced=False),
    kind=ObjectKind.NAMESPACE,
)
