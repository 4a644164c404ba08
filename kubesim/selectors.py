"""Label and field selectors, parsed and matched the way kube-apiserver does."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>.*)\)\s*$")
_CMP_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>==|=|!=|>|<)\s*(?P<value>{_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(?P<neg>!?)\s*(?P<key>{_KEY})\s*$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")


class SelectorError(ValueError):
    """A selector string the API server would reject with 400 BadRequest."""


@dataclass(frozen=True)
class Requirement:
    """One comma-separated clause of a label selector."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            # Kubernetes: inequality also matches objects that lack the label.
            return not present or value not in self.values
        # ">" and "<" compare integers; non-integer labels never match.
        try:
            actual, bound = int(value), int(self.values[0])
        except ValueError:
            return False
        return present and (actual > bound if self.op == ">" else actual < bound)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside an `in (...)` value set."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _parse_requirement(clause: str) -> Requirement:
    if match := _SET_RE.match(clause):
        values = tuple(v.strip() for v in match["values"].split(","))
        if not all(_VALUE_RE.match(v) for v in values):
            raise SelectorError(f"unable to parse requirement: invalid value in {clause!r}")
        return Requirement(match["key"], match["op"], values)
    if match := _CMP_RE.match(clause):
        op = "=" if match["op"] == "==" else match["op"]
        if op in (">", "<") and not re.fullmatch(r"-?\d+", match["value"]):
            raise SelectorError(f"unable to parse requirement: {clause!r}: need an integer")
        return Requirement(match["key"], op, (match["value"],))
    if match := _EXISTS_RE.match(clause):
        return Requirement(match["key"], "!" if match["neg"] else "exists")
    raise SelectorError(f"unable to parse requirement: {clause!r}")


@dataclass(frozen=True)
class LabelSelector:
    """A parsed `labelSelector` query parameter; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        if not text or not text.strip():
            return cls()
        return cls(tuple(_parse_requirement(c) for c in _split_top_level(text)))

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return all(r.matches(labels or {}) for r in self.requirements)


# Every kind supports these two; kube-apiserver rejects other fields unless a kind adds them.
_FIELDS = ("metadata.name", "metadata.namespace")
_FIELD_RE = re.compile(r"^\s*([A-Za-z.]+)\s*(==|=|!=)\s*(.*?)\s*$")


@dataclass(frozen=True)
class FieldSelector:
    """A parsed `fieldSelector` query parameter over metadata.name and metadata.namespace."""

    clauses: tuple[tuple[str, bool, str], ...] = ()  # (field, equal?, value)

    @classmethod
    def parse(cls, text: str | None) -> FieldSelector:
        if not text or not text.strip():
            return cls()
        clauses = []
        for clause in text.split(","):
            match = _FIELD_RE.match(clause)
            if not match:
                raise SelectorError(f"invalid selector: {clause!r}; can't understand")
            field, op, value = match.groups()
            if field not in _FIELDS:
                raise SelectorError(f'field label not supported: "{field}"')
            clauses.append((field, op != "!=", value))
        return cls(tuple(clauses))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        for field, equal, value in self.clauses:
            actual = meta.get(field.removeprefix("metadata."), "") or ""
            if (actual == value) != equal:
                return False
        return True
