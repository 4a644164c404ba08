"""A custom resource against its CRD's structural schema, as kube-apiserver checks it: defaults
applied, unknown fields pruned (or, with `fieldValidation=Strict`, refused), then types,
`nullable`, `enum`, `minimum`/`maximum`, string lengths and `pattern`, item counts and
`required`, each problem named by its field path with kube-apiserver's wording. Pure."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

ALWAYS_ALLOWED = ("apiVersion", "kind", "metadata")
"""Top-level fields every object has, whatever its schema says."""


@dataclass
class Outcome:
    value: Any
    """The object defaulted and pruned."""
    errors: list[tuple[str, str]] = field(default_factory=list)
    """(field path, message), in document order."""
    unknown: list[str] = field(default_factory=list)
    """Paths of the fields the schema does not declare (pruned from `value`)."""


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else json.dumps(value, default=str)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def check(schema: Obj, obj: Obj) -> Outcome:
    """Default, prune and validate `obj` (a copy is made) against `schema`, the version's
    `openAPIV3Schema`."""
    outcome = Outcome(copy.deepcopy(obj))
    value = outcome.value
    properties = schema.get("properties") or {}
    for key, default in _defaults(properties, value):
        value[key] = default
    for key in list(value):
        if key in ALWAYS_ALLOWED:
            continue
        if key in properties:
            value[key] = _walk(value[key], properties[key], key, outcome)
        elif not schema.get("x-kubernetes-preserve-unknown-fields"):
            outcome.unknown.append(key)
            del value[key]
    for key in schema.get("required") or []:
        if key not in value:
            outcome.errors.append((key, f"{key}: Required value"))
    return outcome


def _defaults(properties: Obj, value: Obj) -> list[tuple[str, Any]]:
    return [
        (key, copy.deepcopy(sub["default"]))
        for key, sub in properties.items()
        if key not in value and isinstance(sub, dict) and "default" in sub
    ]


def _walk(value: Any, schema: Obj, path: str, outcome: Outcome) -> Any:
    errors = outcome.errors
    if value is None:
        if not schema.get("nullable"):
            expected = schema.get("type", "object")
            errors.append(
                (path, f'{path}: Invalid value: "null": {path} in body must be of type '
                       f'{expected}: "null"')
            )  # fmt: skip
        return value
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, int | str) or isinstance(value, bool):
            errors.append((path, f"{path}: Invalid value: {_shown(value)}: must be int or string"))
        return value
    expected = schema.get("type")
    allowed = _TYPES.get(expected or "")
    if allowed is not None and (
        not isinstance(value, allowed) or (isinstance(value, bool) and expected != "boolean")
    ):
        name = _type_name(value)
        errors.append(
            (path, f'{path}: Invalid value: "{name}": {path} in body must be of type '
                   f'{expected}: "{name}"')
        )  # fmt: skip
        return value
    if isinstance(value, dict):
        return _object(value, schema, path, outcome)
    if isinstance(value, list):
        items = schema.get("items")
        _counts(value, schema, path, errors)
        if isinstance(items, dict):
            return [_walk(item, items, f"{path}[{i}]", outcome) for i, item in enumerate(value)]
        return value
    _scalar(value, schema, path, errors)
    return value


def _object(value: Obj, schema: Obj, path: str, outcome: Outcome) -> Obj:
    properties = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    for key, default in _defaults(properties, value):
        value[key] = default
    for key in list(value):
        where = _join(path, key)
        if key in properties:
            value[key] = _walk(value[key], properties[key], where, outcome)
        elif isinstance(extra, dict):
            value[key] = _walk(value[key], extra, where, outcome)
        elif extra is True or schema.get("x-kubernetes-preserve-unknown-fields"):
            continue
        else:
            outcome.unknown.append(where)
            del value[key]
    for key in schema.get("required") or []:
        if key not in value:
            where = _join(path, key)
            outcome.errors.append((where, f"{where}: Required value"))
    return value


def _counts(value: list[Any], schema: Obj, path: str, errors: list[tuple[str, str]]) -> None:
    if (least := schema.get("minItems")) is not None and len(value) < least:
        errors.append((path, f"{path}: Invalid value: {len(value)}: {path} in body should have "
                             f"at least {least} items"))  # fmt: skip
    if (most := schema.get("maxItems")) is not None and len(value) > most:
        errors.append((path, f"{path}: Too many: {len(value)}: must have at most {most} items"))


def _scalar(value: Any, schema: Obj, path: str, errors: list[tuple[str, str]]) -> None:
    shown = _shown(value)
    if (enum := schema.get("enum")) is not None and value not in enum:
        supported = ", ".join(_shown(choice) for choice in enum)
        errors.append((path, f"{path}: Unsupported value: {shown}: supported values: {supported}"))
        return
    if isinstance(value, int | float):
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and (value <= low if schema.get("exclusiveMinimum") else value < low):
            relation = "greater than" if schema.get("exclusiveMinimum") else (
                "greater than or equal to")  # fmt: skip
            errors.append((path, f"{path}: Invalid value: {shown}: {path} in body should be "
                                 f"{relation} {low}"))  # fmt: skip
        if high is not None and (value >= high if schema.get("exclusiveMaximum") else value > high):
            relation = "less than" if schema.get("exclusiveMaximum") else "less than or equal to"
            errors.append((path, f"{path}: Invalid value: {shown}: {path} in body should be "
                                 f"{relation} {high}"))  # fmt: skip
    if isinstance(value, str):
        if (least := schema.get("minLength")) is not None and len(value) < least:
            errors.append((path, f"{path}: Invalid value: {shown}: {path} in body should be at "
                                 f"least {least} chars long"))  # fmt: skip
        if (most := schema.get("maxLength")) is not None and len(value) > most:
            errors.append((path, f"{path}: Too long: may not be more than {most} bytes"))
        if (pattern := schema.get("pattern")) is not None and not re.search(pattern, value):
            errors.append((path, f"{path}: Invalid value: {shown}: {path} in body should match "
                                 f"'{pattern}'"))  # fmt: skip
