"""Whether a name can be a GSLB service's FQDN: a DNS hostname (RFC 1123 LDH labels of at most
63 octets, at most 253 octets in all), compared lower-cased and without the root dot.

Every service checks with this one function where a name enters it: the watcher when an
Ingress or Service brings a host, the reconciler before it plans one, the DNS before it turns
a stored name into wire format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from shared.subjects import normalize_fqdn

MAX_LABEL_OCTETS = 63
MAX_NAME_OCTETS = 253
"""Presentation form without the root dot: 255 octets in wire format."""
SHOWN_NAME_CHARS = 40
"""A bad name quoted in a message is cut to this many characters."""

_LDH_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_BAD_CHARACTER = re.compile(r"[^a-z0-9-]")
_HOSTNAME = re.compile(r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
"""The common case in one match (a full plan checks every FQDN); the label-by-label walk
below only runs to say what is wrong."""


class NameProblem(StrEnum):
    """Why a name is refused (also a metric label, so a short fixed set)."""

    EMPTY = "empty"
    NAME_TOO_LONG = "name_too_long"
    LABEL_TOO_LONG = "label_too_long"
    EMPTY_LABEL = "empty_label"
    BAD_CHARACTER = "bad_character"
    BAD_HYPHEN = "bad_hyphen"
    OUTSIDE_ZONES = "outside_zones"
    """Only the reconciler knows the zones: see services/reconciler/validation.py."""


@dataclass(frozen=True)
class BadName:
    """A refused name: `detail` says what is wrong in words an operator can act on, without
    the name itself (`describe` puts the two together)."""

    name: str
    problem: NameProblem
    detail: str

    def describe(self) -> str:
        return f"host {shown_name(self.name)} {self.detail}"


def shown_name(name: str) -> str:
    """The name quoted for a message, cut so that a 10 kB name cannot flood a log or status."""
    if len(name) <= SHOWN_NAME_CHARS:
        return repr(name)
    return repr(name[: SHOWN_NAME_CHARS - 3] + "...")


def hostname_problem(name: str, *, wildcard: bool = False) -> BadName | None:
    """What makes `name` (normalised first) unusable as a hostname, or None when it is one.

    With `wildcard`, a leading `*.` label is allowed (an Ingress may have one; kgslb does not
    make GSLB services of those, but it is not an error to have one)."""
    normal = normalize_fqdn(name)
    if len(normal) <= MAX_NAME_OCTETS and _HOSTNAME.fullmatch(normal):
        return None
    if not normal:
        return BadName(name, NameProblem.EMPTY, "is empty")
    octets = len(normal.encode("utf-8"))
    if octets > MAX_NAME_OCTETS:
        return BadName(
            name, NameProblem.NAME_TOO_LONG, f"is {octets} octets (max {MAX_NAME_OCTETS})"
        )
    labels = normal.split(".")
    if wildcard and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
        first = 2
    else:
        first = 1
    for number, label in enumerate(labels, start=first):
        if _LDH_LABEL.fullmatch(label):
            if len(label) > MAX_LABEL_OCTETS:
                return BadName(
                    name,
                    NameProblem.LABEL_TOO_LONG,
                    f"label {number} is {len(label)} octets (max {MAX_LABEL_OCTETS})",
                )
            continue
        if not label:
            return BadName(name, NameProblem.EMPTY_LABEL, f"label {number} is empty")
        if bad := _BAD_CHARACTER.search(label):
            return BadName(
                name,
                NameProblem.BAD_CHARACTER,
                f"label {number} has {bad.group()!r} (allowed: letters, digits and '-')",
            )
        return BadName(name, NameProblem.BAD_HYPHEN, f"label {number} starts or ends with '-'")
    return None
