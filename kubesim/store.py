"""In-memory object store of one simulated cluster, with kube-apiserver write and read semantics.

No I/O: the HTTP layer (server.py) and the AKO stand-in (ako.py) drive it. It owns the
cluster-wide resourceVersion counter, metadata bookkeeping (uid, generation, timestamps,
finalizers), the bounded event history that watches resume from, and consistent paging.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import builtins
import copy
import itertools
import json
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubesim import schema
from kubesim.patch import PatchError, json_merge_patch, json_patch, strategic_merge_patch
from kubesim.resources import (
    CRDS,
    DEPLOYMENTS,
    NAMESPACES,
    SERVICES,
    Obj,
    Registry,
    ResourceType,
    types_from_crd,
)
from kubesim.selectors import FieldSelector, LabelSelector
from kubesim.validation import builtin_errors, rejection

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH)

PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's generateName alphabet


class ApiError(Exception):
    """An error kube-apiserver reports as a `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Obj:
        status: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            status["details"] = self.details
        return status


def _details(rtype: ResourceType, name: str, **extra: Any) -> Obj:
    return {"name": name, "group": rtype.group, "kind": rtype.plural, **extra}


def not_found(rtype: ResourceType, name: str) -> ApiError:
    message = f'{rtype.group_resource} "{name}" not found'
    return ApiError(404, "NotFound", message, _details(rtype, name))


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(rtype: ResourceType, name: str, field: str, message: str) -> ApiError:
    kind = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind
    cause = {"reason": "FieldValueInvalid", "message": message, "field": field}
    details = {"name": name, "group": rtype.group, "kind": rtype.kind, "causes": [cause]}
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {message}', details)


def schema_invalid(rtype: ResourceType, name: str, errors: list[tuple[str, str]]) -> ApiError:
    """422 naming every field the CRD's schema refuses, as kube-apiserver words it."""
    kind = f"{rtype.kind}.{rtype.group}" if rtype.group else rtype.kind
    causes = [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in errors]
    details = {"name": name, "group": rtype.group, "kind": rtype.kind, "causes": causes}
    messages = [message for _, message in errors]
    text = messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {text}', details)


def forbidden(rtype: ResourceType, name: str, why: str) -> ApiError:
    message = f'{rtype.group_resource} "{name}" is forbidden: {why}'
    return ApiError(403, "Forbidden", message, _details(rtype, name))


def conflict(rtype: ResourceType, name: str, why: str) -> ApiError:
    message = f'Operation cannot be fulfilled on {rtype.group_resource} "{name}": {why}'
    return ApiError(409, "Conflict", message, _details(rtype, name))


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


MAX_LIST_SNAPSHOTS = 8
DEFAULT_HISTORY_SECONDS = 300.0
"""Like an API server whose etcd compacts every 5 minutes (kube-apiserver's default): watches
resume from up to that far back (and at most `history_size` events), older ones get 410."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class WatchEvent:
    """One committed change; `old` is the object before it (None for ADDED)."""

    type: str
    rv: int
    resource: tuple[str, str]
    obj: Obj
    old: Obj | None
    at: float = 0.0
    """time.monotonic() of the commit, for the history's age bound."""


@dataclass(frozen=True)
class ListPage:
    items: list[Obj]
    resource_version: int
    continue_token: str | None = None
    remaining: int | None = None


Listener = Callable[[WatchEvent], None]
Controller = Callable[["ClusterStore", WatchEvent], None]


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj["metadata"]
    return (meta.get("namespace", ""), meta["name"])


def _content(obj: Obj) -> Obj:
    """What generation tracks: everything except metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


class ClusterStore:
    """All objects of one simulated cluster; every write bumps the single resourceVersion."""

    def __init__(
        self,
        history_size: int = 1000,
        history_seconds: float | None = DEFAULT_HISTORY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        if history_seconds is not None and history_seconds <= 0:
            raise ValueError("history_seconds must be positive (or None: no age bound)")
        self.history_seconds = history_seconds
        self._clock = clock
        self.registry = Registry()
        self.rv = 0
        # Watches may resume from any resourceVersion >= compacted_rv.
        self.compacted_rv = 0
        self._objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self._history: deque[WatchEvent] = deque(maxlen=history_size)
        self._snapshots: dict[
            tuple[tuple[str, str], int], tuple[list[tuple[str, str]], list[Obj]]
        ] = {}
        self._listeners: list[Listener] = []
        self._controllers: list[Controller] = [ClusterStore._reconcile_crd]
        self._cluster_ips = itertools.count(10)
        for name in ("default", "kube-system"):
            self.create(NAMESPACES, None, {"metadata": {"name": name}})

    # ----- persistence -------------------------------------------------------------------

    def snapshot(self) -> Obj:
        """Every object and the resourceVersion, JSON-serialisable, for `restore`."""
        keys = sorted(self._objects, key=lambda key: key != CRDS.key)  # CRDs first
        return {
            "resourceVersion": self.rv,
            "resources": [
                {"resource": list(key), "items": list(self._objects[key].values())}
                for key in keys
                if self._objects[key]
            ],
        }

    def restore(self, snapshot: Obj) -> int:
        """Replace every object by those of `snapshot` (as an API server restarted on its
        etcd): the same uids, resourceVersions and statuses, the CRDs' types served again,
        no controller run. The watch history starts empty, so a watch from before gets 410
        and relists. Returns the number of objects."""
        objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        for entry in snapshot.get("resources") or []:
            group, plural = entry["resource"]
            objects[(group, plural)] = {_key(obj): obj for obj in entry["items"]}
        self.registry = Registry()
        for crd in objects.get(CRDS.key, {}).values():
            self.registry.set_crd(crd["metadata"]["name"], types_from_crd(crd))
        self._objects = objects
        self.rv = max(self.rv, int(snapshot.get("resourceVersion") or 0))
        self.compacted_rv = self.rv
        self._history.clear()
        self._snapshots.clear()
        used = [
            _cluster_ip_index((service.get("spec") or {}).get("clusterIP"))
            for service in objects.get(SERVICES.key, {}).values()
        ]
        self._cluster_ips = itertools.count(max((n for n in used if n is not None), default=9) + 1)
        return sum(len(items) for items in objects.values())

    # ----- observation -------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` synchronously for every committed event; returns the unsubscriber."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def add_controller(self, controller: Controller) -> None:
        """Run `controller` after every commit, like an in-cluster controller reacting to it."""
        self._controllers.append(controller)

    def events_since(self, rtype: ResourceType, resource_version: int) -> list[WatchEvent]:
        """History of `rtype` strictly after `resource_version`; 410 once it was compacted."""
        if resource_version < self.compacted_rv:
            raise expired(f"too old resource version: {resource_version} ({self.compacted_rv + 1})")
        return [e for e in self._history if e.rv > resource_version and e.resource == rtype.key]

    def expire_history(self) -> None:
        """Forget all history, as an etcd compaction would."""
        self._history.clear()
        self.compacted_rv = self.rv

    # ----- reads -------------------------------------------------------------------------

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        return copy.deepcopy(self._require(rtype, namespace, name))

    def list(
        self,
        rtype: ResourceType,
        namespace: str | None = None,
        *,
        label_selector: LabelSelector | None = None,
        field_selector: FieldSelector | None = None,
        limit: int = 0,
        continue_token: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
        read_only: bool = False,
    ) -> ListPage:
        """A (page of a) list, consistent at one resourceVersion across continuations.

        `read_only` items are shallow copies sharing the stored objects' nested values, for a
        caller that only serializes them (the HTTP list): deep copies of 10,000 Ingresses per
        list were most of the simulator's CPU at a cold start. Stored objects are replaced,
        never edited in place, so sharing them is safe for a reader."""
        clone: Callable[[Obj], Obj] = dict if read_only else copy.deepcopy
        start_after: tuple[str, str] | None = None
        if continue_token:
            if resource_version or resource_version_match:
                raise bad_request("specifying resource version is not allowed when using continue")
            at, start_after = _decode_continue(continue_token)
            if at < self.compacted_rv:
                raise expired(
                    "The provided continue parameter is too old to display a consistent list"
                    " result. You can start a new list without the continue parameter."
                )
        else:
            at = self._list_rv(resource_version, resource_version_match)
        labels = label_selector or LabelSelector()
        fields = field_selector or FieldSelector()
        keys, objects = self._sorted_at(rtype, at)
        # Keys are (namespace, name): one namespace is one contiguous run of the sorted keys.
        low, high = 0, len(keys)
        if namespace is not None:
            low = bisect.bisect_left(keys, (namespace,))
            high = bisect.bisect_left(keys, (namespace + "\0",))
        if start_after is not None:
            low = max(low, bisect.bisect_right(keys, start_after))
        page: builtins.list[Obj] = []
        index = low
        while index < high and (not limit or len(page) <= limit):
            obj = objects[index]
            if labels.matches(obj["metadata"].get("labels")) and fields.matches(obj):
                page.append(obj)
            index += 1
        if not limit or len(page) <= limit:
            return ListPage([clone(o) for o in page], at)
        page = page[:limit]
        token = _encode_continue(at, _key(page[-1]))
        # Like etcd-backed lists, the count is only known when no selector filters it.
        after = bisect.bisect_right(keys, _key(page[-1]), low, high)
        remaining = high - after if labels.empty and not fields.clauses else None
        return ListPage([clone(o) for o in page], at, token, remaining)

    def _sorted_at(
        self, rtype: ResourceType, rv: int
    ) -> tuple[builtins.list[tuple[str, str]], builtins.list[Obj]]:
        """The objects of `rtype` at `rv` in key order. The pages of one paged list share one
        sorted snapshot, so listing N objects costs O(N log N), not O(N^2 / limit) (a real
        API server serves each page from etcd in O(limit))."""
        cache_key = (rtype.key, rv)
        cached = self._snapshots.pop(cache_key, None)
        if cached is not None:
            # Least recently used goes first: a 100,000-object list read page by page must
            # not lose its snapshot to the small lists other clients make meanwhile (evicted
            # first-in-first-out, it was sorted again dozens of times per list).
            self._snapshots[cache_key] = cached
            return cached
        items = sorted(self._state_at(rtype, rv).items(), key=lambda kv: kv[0])
        keys = [key for key, _ in items]
        objects = [obj for _, obj in items]
        if len(self._snapshots) >= MAX_LIST_SNAPSHOTS:
            self._snapshots.pop(next(iter(self._snapshots)))
        # The state at `rv` is history: later commits add events after it and objects are
        # replaced, never edited in place, so the snapshot stays right until `restore`. (Keyed
        # on the current revision too, every status write or Event of a busy cluster made each
        # page of a 100,000-object list sort it all again.)
        self._snapshots[cache_key] = (keys, objects)
        return keys, objects

    def _list_rv(self, resource_version: str | None, match: str | None) -> int:
        if match and not resource_version:
            raise bad_request(
                "resourceVersionMatch is forbidden unless resourceVersion is provided"
            )
        if match not in (None, "", "Exact", "NotOlderThan"):
            raise bad_request(f'resourceVersionMatch "{match}" is not supported')
        if not resource_version or resource_version == "0":
            if match == "Exact":
                raise bad_request(
                    'resourceVersionMatch "Exact" is forbidden for resourceVersion "0"'
                )
            return self.rv
        wanted = _parse_rv(resource_version)
        if wanted > self.rv:
            message = f"Too large resource version: {wanted}, current: {self.rv}"
            raise ApiError(504, "Timeout", message, {"retryAfterSeconds": 1})
        if match == "Exact":
            if wanted < self.compacted_rv:
                raise expired("The resourceVersion for the provided list is too old.")
            return wanted
        return self.rv

    def _state_at(self, rtype: ResourceType, rv: int) -> dict[tuple[str, str], Obj]:
        """The objects of `rtype` as they were at `rv`, rebuilt by undoing later history."""
        state = dict(self._objects.get(rtype.key, {}))
        for event in reversed(self._history):
            if event.rv <= rv:
                break
            if event.resource != rtype.key:
                continue
            if event.type == "ADDED":
                state.pop(_key(event.obj), None)
            elif event.old is not None:
                state[_key(event.old)] = event.old
        return state

    def iter_objects(self, rtype: ResourceType, namespace: str | None = None) -> Iterator[Obj]:
        """Current objects in key order (no copies: callers must not mutate)."""
        for key, obj in sorted(self._objects.get(rtype.key, {}).items()):
            if namespace is None or key[0] == namespace:
                yield obj

    # ----- writes ------------------------------------------------------------------------

    def create(
        self,
        rtype: ResourceType,
        namespace: str | None,
        body: Any,
        *,
        dry_run: bool = False,
        field_validation: str = "",
    ) -> Obj:
        obj = self._typed_body(rtype, body)
        meta = obj["metadata"]
        if rtype.namespaced:
            namespace = namespace or meta.get("namespace") or "default"
            if meta.get("namespace", namespace) != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent"
                    " on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choices(_SUFFIX_ALPHABET, k=5))
            meta["name"] = f"{meta['generateName']}{suffix}"
        name = meta.get("name") or ""
        if not name:
            raise invalid(
                rtype,
                "",
                "metadata.name",
                "metadata.name: Required value: name or generateName is required",
            )
        if rtype.namespaced:
            self._check_namespace_open(rtype, meta["namespace"], name)
        if _key(obj) in self._objects.get(rtype.key, {}):
            message = f'{rtype.group_resource} "{name}" already exists'
            raise ApiError(409, "AlreadyExists", message, _details(rtype, name))
        if meta.get("resourceVersion"):
            raise ApiError(
                500, "InternalError", "resourceVersion should not be set on objects to be created"
            )
        for transient in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(transient, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        if rtype.has_status:
            # Status belongs to the status subresource; create cannot set it.
            if rtype.initial_status is None:
                obj.pop("status", None)
            else:
                obj["status"] = copy.deepcopy(rtype.initial_status)
        self._default(rtype, obj, None)
        obj = self._check_schema(rtype, obj, field_validation)
        self._validate(rtype, obj)
        if dry_run:
            return obj
        return self._commit("ADDED", rtype, obj, None)

    def update(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "",
    ) -> Obj:
        """PUT: optimistic concurrency on metadata.resourceVersion when the body carries one."""
        old = self._require(rtype, namespace, name)
        new = self._typed_body(rtype, body)
        if not new["metadata"].get("resourceVersion") and rtype.custom:
            raise invalid(
                rtype,
                name,
                "metadata.resourceVersion",
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            )
        return self._update(rtype, old, new, subresource, dry_run, field_validation)

    def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        patch_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "",
    ) -> Obj:
        old = self._require(rtype, namespace, name)
        try:
            if patch_type == JSON_PATCH:
                patched = json_patch(old, patch)
            elif not isinstance(patch, dict):
                raise bad_request("the patch body must be a JSON object")
            elif patch_type == MERGE_PATCH:
                patched = json_merge_patch(old, patch)
            elif patch_type == STRATEGIC_PATCH and rtype.merge_keys is not None:
                patched = strategic_merge_patch(old, patch, rtype.merge_keys)
            else:
                accepted = ", ".join(
                    t for t in PATCH_TYPES if rtype.merge_keys is not None or t != STRATEGIC_PATCH
                )
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types"
                    f" include: {accepted}",
                )
        except PatchError as error:
            if error.invalid:
                raise invalid(rtype, name, "patch", str(error)) from error
            raise bad_request(str(error)) from error
        patched = self._typed_body(rtype, patched)
        return self._update(rtype, old, patched, subresource, dry_run, field_validation)

    def delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        *,
        preconditions: Obj | None = None,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Returns the object and whether it is gone (False: finalizers hold it, terminating)."""
        old = self._require(rtype, namespace, name)
        meta = old["metadata"]
        for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            wanted = (preconditions or {}).get(field)
            if wanted and wanted != meta.get(field):
                raise conflict(
                    rtype,
                    name,
                    f"Precondition failed: {label} in precondition: {wanted},"
                    f" {label} in object meta: {meta.get(field)}",
                )
        if rtype is NAMESPACES and name in PROTECTED_NAMESPACES:
            raise forbidden(rtype, name, "this namespace may not be deleted")
        if dry_run:
            return copy.deepcopy(old), True
        if rtype is NAMESPACES:
            for other in self.registry.all():
                if other.namespaced and other.key != rtype.key:
                    for obj in list(self.iter_objects(other, name)):
                        self.delete(other, name, obj["metadata"]["name"])
        if meta.get("finalizers") or (rtype is NAMESPACES and self._namespace_has_content(name)):
            if meta.get("deletionTimestamp"):
                return copy.deepcopy(old), False
            terminating = copy.deepcopy(old)
            terminating["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
            if rtype is NAMESPACES:
                terminating["status"] = {"phase": "Terminating"}
            return self._commit("MODIFIED", rtype, terminating, old), False
        return self._remove(rtype, old), True

    def delete_collection(
        self,
        rtype: ResourceType,
        namespace: str | None,
        label_selector: LabelSelector,
        field_selector: FieldSelector,
    ) -> builtins.list[Obj]:
        page = self.list(
            rtype, namespace, label_selector=label_selector, field_selector=field_selector
        )
        return [
            self.delete(rtype, _key(obj)[0] or None, obj["metadata"]["name"])[0]
            for obj in page.items
        ]

    # ----- internals ---------------------------------------------------------------------

    def _require(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        key = ((namespace or "default") if rtype.namespaced else "", name)
        obj = self._objects.get(rtype.key, {}).get(key)
        if obj is None:
            raise not_found(rtype, name)
        return obj

    def _typed_body(self, rtype: ResourceType, body: Any) -> Obj:
        """A private copy of a request body, with kind/apiVersion checked against the URL."""
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        obj = copy.deepcopy(body)
        if rtype.custom and not (obj.get("kind") and obj.get("apiVersion")):
            missing = "Kind" if not obj.get("kind") else "Version"
            raise bad_request(f"Object '{missing}' is missing in '{json.dumps(body)}'")
        # Typed clients (e.g. the Python client) may omit kind/apiVersion; the URL implies them.
        if obj.setdefault("kind", rtype.kind) != rtype.kind:
            raise bad_request(f"the kind in the data ({obj['kind']}) does not match {rtype.kind}")
        if obj.setdefault("apiVersion", rtype.api_version) != rtype.api_version:
            raise bad_request(
                f"the API version in the data ({obj['apiVersion']}) does not match the expected"
                f" API version ({rtype.api_version})"
            )
        if not isinstance(obj.setdefault("metadata", {}), dict):
            raise bad_request("metadata must be an object")
        return obj

    def _update(
        self,
        rtype: ResourceType,
        old: Obj,
        new: Obj,
        subresource: str | None,
        dry_run: bool,
        field_validation: str = "",
    ) -> Obj:
        old_meta, new_meta = old["metadata"], new["metadata"]
        name = old_meta["name"]
        if new_meta.get("name", name) != name:
            raise bad_request(
                f"the name of the object ({new_meta['name']}) does not match the name on the URL"
                f" ({name})"
            )
        if (
            rtype.namespaced
            and new_meta.get("namespace", old_meta["namespace"]) != old_meta["namespace"]
        ):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the"
                " request"
            )
        given_rv = new_meta.get("resourceVersion")
        if given_rv and given_rv != old_meta["resourceVersion"]:
            raise conflict(
                rtype,
                name,
                "the object has been modified; please apply your changes to the"
                " latest version and try again",
            )
        if subresource == "status":
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        else:
            result = new
            meta = result["metadata"]
            meta["name"] = name
            if rtype.namespaced:
                meta["namespace"] = old_meta["namespace"]
            for field in (
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ):
                if field in old_meta:
                    meta[field] = old_meta[field]
                else:
                    meta.pop(field, None)
            if rtype.has_status:
                # With a status subresource the main endpoint cannot change status.
                if "status" in old:
                    result["status"] = copy.deepcopy(old["status"])
                else:
                    result.pop("status", None)
            self._default(rtype, result, old)
        result["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        result = self._check_schema(rtype, result, field_validation)
        self._validate(rtype, result)
        if result == old:
            return copy.deepcopy(old)  # a no-op write changes nothing, not even resourceVersion
        if _content(result) != _content(old):
            result["metadata"]["generation"] = old_meta.get("generation", 1) + 1
        if dry_run:
            return result
        if result["metadata"].get("deletionTimestamp") and not result["metadata"].get("finalizers"):
            return self._remove(rtype, result, previous=old)
        return self._commit("MODIFIED", rtype, result, old)

    def _remove(self, rtype: ResourceType, obj: Obj, previous: Obj | None = None) -> Obj:
        """Delete for good; a namespace waiting for its content goes once it is empty."""
        gone = self._commit("DELETED", rtype, copy.deepcopy(obj), previous or obj)
        namespace = gone["metadata"].get("namespace")
        if rtype.namespaced and namespace:
            ns = self._objects.get(NAMESPACES.key, {}).get(("", namespace))
            if (
                ns is not None
                and ns["metadata"].get("deletionTimestamp")
                and not self._namespace_has_content(namespace)
            ):
                self._remove(NAMESPACES, ns)
        return gone

    def _namespace_has_content(self, namespace: str) -> bool:
        return any(
            key[0] == namespace
            for rkey, objects in self._objects.items()
            if rkey != NAMESPACES.key
            for key in objects
        )

    def _check_namespace_open(self, rtype: ResourceType, namespace: str, name: str) -> None:
        ns = self._objects.get(NAMESPACES.key, {}).get(("", namespace))
        if ns is None:
            raise not_found(NAMESPACES, namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise forbidden(
                rtype,
                name,
                f"unable to create new content in namespace {namespace} because it"
                " is being terminated",
            )

    def _commit(self, event_type: str, rtype: ResourceType, obj: Obj, old: Obj | None) -> Obj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        objects = self._objects.setdefault(rtype.key, {})
        if event_type == "DELETED":
            objects.pop(_key(obj), None)
        else:
            objects[_key(obj)] = obj
        now = self._clock()
        event = WatchEvent(event_type, self.rv, rtype.key, copy.deepcopy(obj), old, now)
        history = self._history
        if len(history) == history.maxlen:
            self.compacted_rv = history[0].rv
        if self.history_seconds is not None:
            oldest_kept = now - self.history_seconds
            while history and history[0].at < oldest_kept:
                self.compacted_rv = history.popleft().rv
        history.append(event)
        result = copy.deepcopy(obj)
        for listener in list(self._listeners):
            listener(event)
        for controller in self._controllers:
            controller(self, event)
        return result

    def _reconcile_crd(self, event: WatchEvent) -> None:
        """The apiextensions controller: serve a CRD's types, mark it Established, clean up CRs."""
        if event.resource != CRDS.key:
            return
        name = event.obj["metadata"]["name"]
        if event.type == "DELETED":
            for rtype in types_from_crd(event.obj)[:1]:
                for obj in list(self.iter_objects(rtype)):
                    self._remove(rtype, obj)
            self.registry.set_crd(name, [])
            return
        self.registry.set_crd(name, types_from_crd(event.obj))
        status = event.obj.get("status") or {}
        if any(c.get("type") == "Established" for c in status.get("conditions") or []):
            return
        spec = event.obj.get("spec") or {}
        now = _now()
        conditions = [
            {
                "type": kind,
                "status": "True",
                "lastTransitionTime": now,
                "reason": reason,
                "message": message,
            }
            for kind, reason, message in (
                ("NamesAccepted", "NoConflicts", "no conflicts found"),
                ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            )
        ]
        stored = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
        self.update(
            CRDS,
            None,
            name,
            {
                **event.obj,
                "status": {
                    "conditions": conditions,
                    "acceptedNames": spec.get("names") or {},
                    "storedVersions": stored,
                },
            },
            subresource="status",
        )

    def _default(self, rtype: ResourceType, obj: Obj, old: Obj | None) -> None:
        """Server-side defaulting of the few fields clients and printers rely on."""
        if rtype is NAMESPACES:
            labels = obj["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        elif rtype is SERVICES:
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("sessionAffinity", "None")
            if not spec.get("clusterIP"):
                previous = (old or {}).get("spec", {}).get("clusterIP")
                if previous:
                    spec["clusterIP"] = previous
                else:
                    n = next(self._cluster_ips)
                    spec["clusterIP"] = f"10.96.{n // 256}.{n % 256}"
            spec["clusterIPs"] = [spec["clusterIP"]]
            for port in spec.get("ports") or []:
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
        elif rtype is DEPLOYMENTS:
            obj.setdefault("spec", {}).setdefault("replicas", 1)

    def _check_schema(self, rtype: ResourceType, obj: Obj, field_validation: str) -> Obj:
        """A custom resource defaulted, pruned and validated against its CRD version's schema;
        unknown fields are refused with `fieldValidation=Strict` (kubectl's default)."""
        if not rtype.custom or not rtype.schema:
            return obj
        outcome = schema.check(rtype.schema, obj)
        if outcome.unknown and field_validation == "Strict":
            unknown = ", ".join(f'unknown field "{path}"' for path in outcome.unknown)
            raise bad_request(f"strict decoding error: {unknown}")
        if outcome.errors:
            raise schema_invalid(rtype, obj["metadata"].get("name", ""), outcome.errors)
        checked: Obj = outcome.value
        return checked

    def _validate(self, rtype: ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        name = meta["name"]
        if (
            not isinstance(name, str)
            or len(name) > rtype.name_max
            or not (rtype.name_pattern.match(name))
        ):
            raise invalid(
                rtype,
                str(name),
                "metadata.name",
                f'metadata.name: Invalid value: "{name}": must'
                f" match {rtype.name_pattern.pattern} and be at most {rtype.name_max} characters",
            )
        for field in ("labels", "annotations"):
            values = meta.get(field) or {}
            if not isinstance(values, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in values.items()
            ):
                raise bad_request(f"metadata.{field} must map strings to strings")
        for key, value in (meta.get("labels") or {}).items():
            prefix, _, label_name = key.rpartition("/")
            if (
                len(label_name) > 63
                or not _LABEL_NAME.match(label_name)
                or (prefix and not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", prefix))
                or len(value) > 63
                or not _LABEL_VALUE.match(value)
            ):
                raise invalid(
                    rtype,
                    name,
                    "metadata.labels",
                    f'metadata.labels: Invalid value: "{key}={value}": not a valid label',
                )
        if rtype is CRDS:
            spec = obj.get("spec") or {}
            plural = (spec.get("names") or {}).get("plural")
            if name != f"{plural}.{spec.get('group')}":
                raise invalid(
                    rtype,
                    name,
                    "metadata.name",
                    f'metadata.name: Invalid value: "{name}": must'
                    ' be spec.names.plural+"."+spec.group',
                )
        if errors := builtin_errors(rtype, obj):  # built-in kinds, as kube-apiserver checks them
            raise ApiError(422, "Invalid", *rejection(rtype, name, errors))


def _cluster_ip_index(ip: object) -> int | None:
    """`10.96.A.B` (as `_default` hands them out) -> A * 256 + B; None for any other."""
    parts = str(ip or "").split(".")
    if len(parts) != 4 or parts[:2] != ["10", "96"] or not all(p.isdigit() for p in parts[2:]):
        return None
    return int(parts[2]) * 256 + int(parts[3])


def _parse_rv(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise bad_request(f'invalid resource version "{text}"') from None


def _encode_continue(rv: int, last: tuple[str, str]) -> str:
    token = {"v": "meta.k8s.io/v1", "rv": rv, "start": "/".join(last)}
    return base64.urlsafe_b64encode(json.dumps(token).encode()).decode()


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
        namespace, _, name = decoded["start"].partition("/")
        return int(decoded["rv"]), (namespace, name)
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError):
        raise bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion"
        ) from None
