"""The three PATCH flavours kube-apiserver accepts: JSON merge, strategic merge and JSON patch."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

# A strategic-merge schema: path of map keys ("*" stands for "any element of the list")
# -> merge key of the list at that path; "" marks a list of scalars merged as a set.
MergeKeys = Mapping[tuple[str, ...], str]


class PatchError(ValueError):
    """A patch that cannot be applied; `invalid` distinguishes 422 from 400."""

    def __init__(self, message: str, *, invalid: bool = False) -> None:
        super().__init__(message)
        self.invalid = invalid


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


_DELETE = object()  # a map carrying `$patch: delete` removes itself from its parent


def strategic_merge_patch(target: Any, patch: Any, keys: MergeKeys) -> Any:
    """Kubernetes strategic merge patch, including the directives `kubectl apply` emits."""
    result = _smp_value(target, patch, (), keys)
    return {} if result is _DELETE else result


def _smp_value(target: Any, patch: Any, path: tuple[str, ...], keys: MergeKeys) -> Any:
    if isinstance(patch, dict):
        return _smp_map(target, patch, path, keys)
    if isinstance(patch, list) and path in keys:
        return _smp_list(target if isinstance(target, list) else [], patch, path, keys)
    return copy.deepcopy(patch)


def _smp_map(target: Any, patch: dict[str, Any], path: tuple[str, ...], keys: MergeKeys) -> Any:
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    if isinstance(retain := patch.get("$retainKeys"), list):
        result = {k: v for k, v in result.items() if k in retain}
    # Deletions from scalar lists apply to the original before the rest of the patch merges.
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/") and isinstance(value, list):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [item for item in result[field] if item not in value]
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
            continue
        merged = _smp_value(result.get(key), value, (*path, key), keys)
        if merged is _DELETE:
            result.pop(key, None)
        else:
            result[key] = merged
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") and isinstance(value, list):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = _reorder(result[field], value, keys.get((*path, field), ""))
    return result


def _smp_list(
    target: list[Any], patch: list[Any], path: tuple[str, ...], keys: MergeKeys
) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    merge_key = keys[path]
    result = copy.deepcopy(target)
    if not merge_key:
        return result + [copy.deepcopy(item) for item in patch if item not in result]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise PatchError(f"map in list at {'.'.join(path)} lacks merge key {merge_key!r}")
        index = next(
            (
                i
                for i, old in enumerate(result)
                if isinstance(old, dict) and old.get(merge_key) == item[merge_key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(_smp_map({}, item, (*path, "*"), keys))
        else:
            result[index] = _smp_map(result[index], item, (*path, "*"), keys)
    return result


def _reorder(items: list[Any], order: list[Any], merge_key: str) -> list[Any]:
    """Honour `$setElementOrder`: listed elements first in that order, the rest after."""

    def identity(item: Any) -> Any:
        return item.get(merge_key) if merge_key and isinstance(item, dict) else item

    wanted = [identity(o) for o in order]
    listed = sorted(
        (item for item in items if identity(item) in wanted),
        key=lambda item: wanted.index(identity(item)),
    )
    return listed + [item for item in items if identity(item) not in wanted]


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902 (add, remove, replace, move, copy, test) over a copy of `document`."""
    if not isinstance(operations, list):
        raise PatchError("json patch must be a list of operations")
    doc = copy.deepcopy(document)
    for op in operations:
        if not isinstance(op, dict) or not isinstance(op.get("path"), str):
            raise PatchError(f"invalid json patch operation: {op!r}")
        kind, path = op.get("op"), op["path"]
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(_required(op, "value")))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)  # replace requires the target to exist
            doc = _add(_remove(doc, path), path, copy.deepcopy(_required(op, "value")))
        elif kind == "move":
            value = _get(doc, _required(op, "from"))
            doc = _add(_remove(doc, op["from"]), path, value)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, _required(op, "from"))))
        elif kind == "test":
            if _get(doc, path) != _required(op, "value"):
                raise PatchError(f"testing value {path} failed", invalid=True)
        else:
            raise PatchError(f"unexpected json patch operation {kind!r}")
    return doc


def _required(op: dict[str, Any], field: str) -> Any:
    if field not in op:
        raise PatchError(f"json patch operation {op.get('op')!r} needs {field!r}")
    return op[field]


def _tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"json pointer must start with '/': {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _index(container: list[Any], token: str, *, appending: bool = False) -> int:
    if appending and token == "-":
        return len(container)
    if not token.isdigit() or int(token) > len(container) - (0 if appending else 1):
        raise PatchError(f"index {token!r} out of range", invalid=True)
    return int(token)


def _parent(doc: Any, pointer: str) -> tuple[Any, str]:
    tokens = _tokens(pointer)
    if not tokens:
        raise PatchError("operation on the document root is not supported", invalid=True)
    node = doc
    for token in tokens[:-1]:
        node = _child(node, token, pointer)
    return node, tokens[-1]


def _child(node: Any, token: str, pointer: str) -> Any:
    if isinstance(node, dict) and token in node:
        return node[token]
    if isinstance(node, list):
        return node[_index(node, token)]
    raise PatchError(f"path {pointer!r} does not exist", invalid=True)


def _get(doc: Any, pointer: str) -> Any:
    node = doc
    for token in _tokens(pointer):
        node = _child(node, token, pointer)
    return node


def _add(doc: Any, pointer: str, value: Any) -> Any:
    parent, last = _parent(doc, pointer)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, appending=True), value)
    else:
        raise PatchError(f"path {pointer!r} does not exist", invalid=True)
    return doc


def _remove(doc: Any, pointer: str) -> Any:
    parent, last = _parent(doc, pointer)
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(parent, last)]
    else:
        raise PatchError(f"path {pointer!r} does not exist", invalid=True)
    return doc
