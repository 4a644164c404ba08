"""Which names can be GSLB service names: DNS hostnames, checked the same way by the watcher,
the reconciler and the DNS (`shared/names.py`)."""

from __future__ import annotations

import pytest

from shared.names import NameProblem, hostname_problem

LABEL_70 = "x" * 70

# fmt: off
GOOD = [
    ("a plain name", "hello.avi.iberia.local"),
    ("upper case and a root dot", "Hello.AVI.iberia.local."),
    ("digits and inner hyphens", "app-1.s2-az1.example"),
    ("a 63-octet label", "a" * 63 + ".avi.iberia.local"),
    ("253 octets in all", ".".join(["a" * 63] * 3 + ["b" * 61])),
    ("one label", "localhost"),
]
BAD = [
    ("a 70-octet label", f"{LABEL_70}.avi.iberia.local", NameProblem.LABEL_TOO_LONG, "label 1 is 70 octets (max 63)"),
    ("a long label further in", f"www.{LABEL_70}.local", NameProblem.LABEL_TOO_LONG, "label 2 is 70 octets (max 63)"),
    ("254 octets", ".".join(["a" * 63] * 3 + ["b" * 62]), NameProblem.NAME_TOO_LONG, "is 254 octets (max 253)"),
    ("empty", "  ", NameProblem.EMPTY, "is empty"),
    ("an empty label", "hello..local", NameProblem.EMPTY_LABEL, "label 2 is empty"),
    ("an underscore", "_sip.avi.iberia.local", NameProblem.BAD_CHARACTER, "label 1 has '_'"),
    ("a space", "hello world.local", NameProblem.BAD_CHARACTER, "label 1 has ' '"),
    ("a non-ASCII letter", "café.local", NameProblem.BAD_CHARACTER, "label 1 has 'é'"),
    ("a leading hyphen", "-hello.local", NameProblem.BAD_HYPHEN, "label 1 starts or ends with '-'"),
    ("a wildcard, where none is allowed", "*.avi.iberia.local", NameProblem.BAD_CHARACTER, "label 1 has '*'"),
]
# fmt: on


@pytest.mark.parametrize("name", [n for _, n in GOOD], ids=[i for i, _ in GOOD])
def test_hostnames_are_accepted(name: str) -> None:
    assert hostname_problem(name) is None


@pytest.mark.parametrize(
    ("name", "problem", "detail"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_other_names_are_refused_with_the_label_and_the_limit(
    name: str, problem: NameProblem, detail: str
) -> None:
    bad = hostname_problem(name)
    assert bad is not None
    assert (bad.problem, bad.detail[: len(detail)]) == (problem, detail)


def test_a_leading_wildcard_label_is_accepted_where_wildcards_are() -> None:
    assert hostname_problem("*.avi.iberia.local", wildcard=True) is None
    bad = hostname_problem(f"*.{LABEL_70}.local", wildcard=True)
    assert bad is not None and bad.detail == "label 2 is 70 octets (max 63)"


def test_a_bad_name_is_quoted_short_in_messages() -> None:
    bad = hostname_problem("y" * 10_000 + ".local")
    assert bad is not None
    assert bad.describe() == f"host '{'y' * 37}...' is 10006 octets (max 253)"
