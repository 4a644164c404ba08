"""The active home decision (services/reconciler/homes.py), as a table: which home cluster is
active given homeClusters, the current `home` key, the heartbeats heard and the clock."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from services.reconciler.homes import choose_active_home
from services.reconciler.validation import validate
from shared.models import PolicyKind, PolicyObject, PolicyRef, PolicyState

HOMES = ("s1az1", "s1az2", "s2")
FAILOVER = 30.0
FRESH = 5.0
NOW = 1000.0


@dataclass(frozen=True)
class Case:
    name: str
    current: str | None
    heard_ago: dict[str, float]
    """Seconds since each cluster's last Connected heartbeat (absent: never heard)."""
    expected: str | None
    reason: str
    homes: tuple[str, ...] = HOMES
    automatic: bool = True
    listening_for: float = 600.0
    """Seconds since this replica started listening to heartbeats."""
    publishing: frozenset[str] = field(default_factory=frozenset)
    listing_ago: dict[str, float] = field(default_factory=dict)
    """Seconds since each cluster's last heartbeat of a watcher still reading its first
    lists (absent: none)."""


CASES = [
    Case(
        "the active home stays while it is heard",
        current="s1az1", heard_ago={"s1az1": 1, "s1az2": 1}, expected="s1az1",
        reason="s1az1 is reachable",
    ),
    Case(
        "a short silence is no failover",
        current="s1az1", heard_ago={"s1az1": 29, "s1az2": 1}, expected="s1az1",
        reason="s1az1 unreachable for 29 s, failover after 30 s",
    ),
    Case(
        "after homeFailoverSeconds of silence the next reachable home takes over",
        current="s1az1", heard_ago={"s1az1": 30, "s1az2": 1, "s2": 1}, expected="s1az2",
        reason="s1az1 unreachable for 30 s (homeFailoverSeconds 30); s1az2 is the next "
        "reachable home cluster",
    ),
    Case(
        "a home never heard is unreachable (its whole site went dark before we listened)",
        current="s1az1", heard_ago={"s1az2": 1}, expected="s1az2",
        reason="s1az1 unreachable for 600 s (homeFailoverSeconds 30); s1az2 is the next "
        "reachable home cluster",
    ),
    Case(
        "an unreachable next home is skipped",
        current="s1az1", heard_ago={"s1az1": 40, "s1az2": 6, "s2": 1}, expected="s2",
        reason="s1az1 unreachable for 40 s (homeFailoverSeconds 30); s2 is the next reachable "
        "home cluster",
    ),
    Case(
        "the order wraps around after the last home",
        current="s2", heard_ago={"s1az1": 1, "s1az2": 1}, expected="s1az1",
        reason="s2 unreachable for 600 s (homeFailoverSeconds 30); s1az1 is the next reachable "
        "home cluster",
    ),
    Case(
        "no failover when no other home is reachable either",
        current="s1az1", heard_ago={"s1az1": 50, "s1az2": 50}, expected="s1az1",
        reason="s1az1 unreachable for 50 s, and no other home cluster is reachable",
    ),
    Case(
        "no failover with automaticHomeFailover off",
        current="s1az1", heard_ago={"s1az1": 50, "s1az2": 1}, expected="s1az1", automatic=False,
        reason="s1az1 unreachable for 50 s; automaticHomeFailover is off",
    ),
    Case(
        "the old home coming back does not take over again (no flapping)",
        current="s1az2", heard_ago={"s1az1": 1, "s1az2": 1}, expected="s1az2",
        reason="s1az2 is reachable",
    ),
    Case(
        "a leader that just started does not count the silence from before it listened",
        current="s1az1", heard_ago={"s1az2": 1}, listening_for=10, expected="s1az1",
        reason="s1az1 unreachable for 10 s, failover after 30 s",
    ),
    Case(
        "a leader that listened for homeFailoverSeconds without hearing the home fails over",
        current="s1az1", heard_ago={"s1az2": 1}, listening_for=30, expected="s1az2",
        reason="s1az1 unreachable for 30 s (homeFailoverSeconds 30); s1az2 is the next "
        "reachable home cluster",
    ),
    Case(
        "a home removed from homeClusters hands over to the first reachable one listed",
        current="s1az1", homes=("s1az2", "s2"), heard_ago={"s1az1": 1, "s1az2": 9, "s2": 1},
        expected="s2", reason="s1az1 is no longer in homeClusters; s2 is the first reachable "
        "one listed",
    ),
    Case(
        "a home removed from homeClusters stays until a listed one is reachable",
        current="s1az1", homes=("s1az2",), heard_ago={"s1az1": 1}, expected="s1az1",
        reason="s1az1 is no longer in homeClusters, and no home cluster listed there is "
        "reachable yet",
    ),
    Case(
        "without homeClusters there is nothing to decide",
        current=None, homes=(), heard_ago={"s1az1": 1}, expected=None,
        reason="no homeClusters: one home cluster, nothing to decide",
    ),
    Case(
        "the first choice keeps the home that publishes today",
        current=None, heard_ago={"s1az1": 1, "s1az2": 1, "s2": 1},
        publishing=frozenset({"s1az2"}), expected="s1az2",
        reason="s1az2 publishes the policy today and is listed in homeClusters",
    ),
    Case(
        "of two homes that publish, the first listed",
        current=None, heard_ago={"s1az1": 1, "s1az2": 1, "s2": 1}, listening_for=2,
        publishing=frozenset({"s1az2", "s1az1"}), expected="s1az1",
        reason="s1az1 publishes the policy today and is listed in homeClusters",
    ),
    Case(
        "the first choice waits until every home could have been heard",
        current=None, heard_ago={"s1az2": 1, "s2": 1}, publishing=frozenset({"s1az2"}),
        listening_for=2, expected=None, reason="listening to the home watchers' heartbeats first",
    ),
    Case(
        "a home that publishes but is not heard is not the first choice",
        current=None, heard_ago={"s1az2": 1}, publishing=frozenset({"s1az1"}),
        expected="s1az1", reason="s1az1 is the first of homeClusters",
    ),
    Case(
        "the active home reading its first lists is not silent (100,000 objects take longer "
        "than homeFailoverSeconds)",
        current="s1az1", heard_ago={"s1az2": 1}, listing_ago={"s1az1": 1}, expected="s1az1",
        reason="s1az1 is alive and still reading its first lists",
    ),
    Case(
        "a restarted active home listing again is not silent either",
        current="s1az1", heard_ago={"s1az1": 45, "s1az2": 1}, listing_ago={"s1az1": 2},
        expected="s1az1", reason="s1az1 is alive and still reading its first lists",
    ),
    Case(
        "a home whose listing heartbeats stopped is silent from the last one",
        current="s1az1", heard_ago={"s1az2": 1}, listing_ago={"s1az1": 30}, expected="s1az2",
        reason="s1az1 unreachable for 30 s (homeFailoverSeconds 30); s1az2 is the next "
        "reachable home cluster",
    ),
    Case(
        "a home still reading its first lists is no candidate: it holds no CRs yet",
        current="s1az1", heard_ago={"s1az1": 40, "s2": 1}, listing_ago={"s1az2": 1},
        expected="s2", reason="s1az1 unreachable for 40 s (homeFailoverSeconds 30); s2 is the "
        "next reachable home cluster",
    ),
    Case(
        "the first choice is the first listed when no listed home publishes",
        current=None, heard_ago={"s1az2": 1}, publishing=frozenset({"elsewhere"}),
        expected="s1az1", reason="s1az1 is the first of homeClusters",
    ),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_choose_active_home(case: Case) -> None:
    choice = choose_active_home(
        case.homes,
        case.current,
        {cluster: NOW - ago for cluster, ago in case.heard_ago.items()},
        NOW,
        failover_after_seconds=FAILOVER,
        automatic=case.automatic,
        watching_since=NOW - case.listening_for,
        fresh_within_seconds=FRESH,
        publishing=case.publishing,
        listing={cluster: NOW - ago for cluster, ago in case.listing_ago.items()},
    )

    assert (choice.active, choice.reason) == (case.expected, case.reason)


# The settings in the GSLBConfig ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (
            {"homeClusters": ["s1az1", "s1az2", "s1az1"]},
            "spec.homeClusters = ['s1az1', 's1az2', 's1az1']: lists s1az1 more "
            "than once; name each cluster once",
        ),
        (
            {"homeFailoverSeconds": 1},
            "spec.homeFailoverSeconds = 1: Input should be greater than or equal to 3",
        ),
        (
            {"automaticHomeFailover": "sometimes"},
            "spec.automaticHomeFailover = 'sometimes': Input should be a valid boolean",
        ),
    ],
    ids=["a home listed twice", "a failover time too short to tell", "not a boolean"],
)
def test_bad_home_settings_reject_the_gslbconfig(spec: dict[str, object], problem: str) -> None:
    ref = PolicyRef(kind=PolicyKind.GSLB_CONFIG, namespace="avi-system", name="gc-1")

    policies = validate({ref: PolicyObject(ref=ref, spec=spec)}, {})

    status = policies.statuses[ref]
    assert status.state == PolicyState.REJECTED
    assert problem in status.message
