"""How a policy problem is worded for an operator (the field as written in the CR, the value,
what is allowed) and how a status message stays bounded however many problems there are."""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

MAX_STATUS_PROBLEMS = 10
"""A status message lists at most this many problems, then says how many more there are."""
MAX_STATUS_MESSAGE_BYTES = 1024
"""...and stays under this many bytes (UTF-8), however long each problem is."""


def _cut(text: str, max_bytes: int) -> str:
    """`text` in at most `max_bytes` UTF-8 bytes, ending in '...' when cut."""
    if len(text.encode()) <= max_bytes:
        return text
    kept = text.encode()[: max(max_bytes - 3, 0)].decode(errors="ignore")
    return kept + "..."


def bounded_message(
    head: str,
    problems: Sequence[str],
    tail: str = "",
    *,
    max_problems: int = MAX_STATUS_PROBLEMS,
    max_bytes: int = MAX_STATUS_MESSAGE_BYTES,
) -> str:
    """`head`, the problems joined by '; ', then `tail`: the first `max_problems` that fit in
    `max_bytes`, and '... and K more' for the rest, so that a GDP with 500 bad entries gets
    a status an operator can read (and etcd can store), not 25 kB."""
    budget = max_bytes - len(head.encode()) - len(tail.encode())
    shown: list[str] = []
    used = 0
    for index, item in enumerate(problems):
        if len(shown) == max_problems:
            break
        left_after = len(problems) - index - 1
        reserve = len(f"; ... and {left_after} more") if left_after else 0
        separator = 2 if shown else 0
        room = budget - used - separator - reserve
        if len(item.encode()) > room:
            if shown:
                break
            item = _cut(item, room)
        shown.append(item)
        used += separator + len(item.encode())
    text = "; ".join(shown)
    if left := len(problems) - len(shown):
        text += f"; ... and {left} more" if shown else f"{left} problem(s)"
    return head + text + tail


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def problem(path: str, value: Any, what: str) -> str:
    return f"{path} = {_shown(value)}: {what}"


def allowed_values(names: Sequence[str] | set[str] | frozenset[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def inner_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside `X | None`, `list[X]`, `Annotated[X, ...]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return None
    for arg in typing.get_args(annotation):
        found = inner_model(arg)
        if found is not None:
            return found
    return None


def _fields_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The CR field names allowed at `loc` (the parent of an unknown field)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int):
            continue
        by_alias = {(f.alias or name): f for name, f in current.model_fields.items()}
        info = by_alias.get(part) or current.model_fields.get(part)
        if info is None:
            return []
        current = inner_model(info.annotation)
    if current is None:
        return []
    return [f.alias or name for name, f in current.model_fields.items()]


def describe_validation_error(model: type[BaseModel], exc: ValidationError) -> list[str]:
    """One problem per pydantic error: the CR field path, the value, what is allowed."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = f"unknown field (allowed: {allowed_values(_fields_at(model, loc[:-1]))})"
        if err["type"] == "missing" or isinstance(err.get("input"), dict):
            problems.append(f"{path}: {message}")
        else:
            problems.append(problem(path, err.get("input"), message))
    return problems
