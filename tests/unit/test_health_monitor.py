"""The health core as a specification: probe verdicts, the unknown/up/down state machine, probe
phases over the interval, and rendezvous sharding of members over replicas."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from services.health.monitor import (
    MemberState,
    Outcome,
    ProbeResult,
    ProbeTarget,
    Sighting,
    advance,
    first_delay,
    health_record,
    initial_state,
    judge_http,
    live_replicas,
    needs_write,
    next_due,
    orphan_keys,
    owner,
    phase_seconds,
    status_expected,
    targets_of,
)
from shared import subjects
from shared.models import (
    GslbService,
    HealthMonitorSpec,
    HealthState,
    Member,
    MemberHealth,
    MonitorKind,
    PriorityGroup,
)

T0 = datetime(2020, 12, 18, 19, 0, 0, tzinfo=UTC)
AMKO = HealthMonitorSpec()  # HEAD / every 10 s, 3 successes up, 3 failures down
UP, DOWN, UNKNOWN = HealthState.UP, HealthState.DOWN, HealthState.UNKNOWN
OK = ProbeResult(Outcome.OK, "HTTP 200")
FAIL = ProbeResult(Outcome.STATUS, "HTTP 500", "HTTP 500 is not an expected code (2xx, 3xx)")


def run(start: HealthState, results: str, monitor: HealthMonitorSpec = AMKO) -> list[HealthState]:
    """States after each result of `results` ('+' success, '-' failure)."""
    state = MemberState(start, T0)
    states = []
    for index, symbol in enumerate(results):
        state = advance(
            state, OK if symbol == "+" else FAIL, monitor, T0 + timedelta(seconds=index)
        )
        states.append(state.state)
    return states


# State machine -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "results", "expected"),
    [
        (UNKNOWN, "+++", [UNKNOWN, UNKNOWN, UP]),
        (UNKNOWN, "---", [UNKNOWN, UNKNOWN, DOWN]),
        (UNKNOWN, "+-+-+-", [UNKNOWN] * 6),
        (UNKNOWN, "++-+++", [UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UP]),
        (UP, "--+---", [UP, UP, UP, UP, UP, DOWN]),
        (UP, "++++", [UP] * 4),
        (DOWN, "++-+++", [DOWN, DOWN, DOWN, DOWN, DOWN, UP]),
        (DOWN, "---", [DOWN] * 3),
    ],
    ids=[
        "unknown-up-after-3-successes",
        "unknown-down-after-3-failures",
        "unknown-alternating-stays-unknown",
        "unknown-failure-restarts-the-success-run",
        "up-survives-2-failures-then-down-after-3",
        "up-stays-up",
        "down-up-after-3-consecutive-successes",
        "down-stays-down",
    ],
)
def test_state_moves_only_after_a_full_run_of_equal_results(
    start: HealthState, results: str, expected: list[HealthState]
) -> None:
    assert run(start, results) == expected


def test_thresholds_come_from_the_monitor() -> None:
    quick = HealthMonitorSpec(successes_to_up=1, failures_to_down=2)

    assert run(UNKNOWN, "+", quick) == [UP]
    assert run(UP, "--", quick) == [UP, DOWN]


def test_control_plane_only_member_is_up_at_its_first_check() -> None:
    assert run(UNKNOWN, "+", HealthMonitorSpec(kind=MonitorKind.NONE)) == [UP]


def test_since_changes_only_on_a_transition() -> None:
    state = MemberState(UP, T0)
    later = T0 + timedelta(minutes=5)

    steady = advance(state, OK, AMKO, later)
    for _ in range(3):
        state = advance(state, FAIL, AMKO, later)

    assert steady.since == T0
    assert (state.state, state.since) == (DOWN, later)


def test_a_steady_member_keeps_small_counters() -> None:
    state = MemberState(UP, T0)
    for _ in range(1000):
        state = advance(state, OK, AMKO, T0)

    assert state.successes == AMKO.successes_to_up


def test_last_probe_is_remembered_for_the_record() -> None:
    state = advance(MemberState(UNKNOWN, T0), FAIL, AMKO, T0 + timedelta(seconds=1))

    assert state.last == FAIL
    assert state.last_probe_at == T0 + timedelta(seconds=1)


# Verdicts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "codes", "expected"),
    [
        (200, ["2xx", "3xx"], True),
        (302, ["2xx", "3xx"], True),
        (404, ["2xx", "3xx"], False),
        (500, ["2xx", "3xx"], False),
        (204, ["204"], True),
        (200, ["204"], False),
        (401, ["2xx", "401"], True),
    ],
)
def test_expected_codes_match_a_class_or_one_code(
    status: int, codes: list[str], expected: bool
) -> None:
    assert status_expected(status, codes) is expected


def test_unexpected_status_is_a_failure_naming_the_allowed_codes() -> None:
    result = judge_http(500, None, AMKO)

    assert (result.outcome, result.summary) == (Outcome.STATUS, "HTTP 500")
    assert result.error == "HTTP 500 is not an expected code (2xx, 3xx)"


def test_wrong_host_404_is_a_failure() -> None:
    assert not judge_http(404, None, AMKO).ok


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        (b"<div>MESSAGE: This service resides in SITE2</div>", True),
        (b"<div>MESSAGE: This service resides in SITE1 AZ1</div>", False),
        (None, False),
    ],
)
def test_body_match_needs_the_text_in_the_body(body: bytes | None, ok: bool) -> None:
    monitor = HealthMonitorSpec(method="GET", body_contains="resides in SITE2")

    assert judge_http(200, body, monitor).ok is ok


# Records -------------------------------------------------------------------------------------

TARGET = ProbeTarget(
    subjects.member_key("hello.avi.iberia.local", "127.10.23.40"),
    "hello.avi.iberia.local",
    "127.10.23.40",
    "s2",
    80,
    AMKO,
)


def record(state: HealthState, replica: str, since: datetime = T0) -> MemberHealth:
    return MemberHealth(
        fqdn=TARGET.fqdn,
        ip=TARGET.ip,
        cluster="s2",
        state=state,
        since=since,
        last_result="HTTP 200",
        replica=replica,
    )


def test_a_new_member_starts_unknown() -> None:
    assert initial_state(None, T0) == MemberState(UNKNOWN, T0)


def test_a_taken_over_member_keeps_its_state_and_since() -> None:
    taken = initial_state(record(UP, "health-a", since=T0), T0 + timedelta(hours=1))

    assert (taken.state, taken.since) == (UP, T0)


@pytest.mark.parametrize(
    ("known", "state", "live", "write"),
    [
        (None, UNKNOWN, {"a"}, True),
        (UP, UP, {"a"}, False),
        (UP, DOWN, {"a"}, True),
        (UNKNOWN, UP, {"a"}, True),
        (UP, UP, {"b"}, True),
    ],
    ids=[
        "new-member-is-recorded",
        "steady-member-writes-nothing",
        "state-change-is-written",
        "first-verdict-is-written",
        "member-of-a-dead-replica-is-claimed",
    ],
)
def test_what_is_written(
    known: HealthState | None, state: HealthState, live: set[str], write: bool
) -> None:
    existing = None if known is None else record(known, "a")

    assert needs_write(existing, MemberState(state, T0), live) is write


def test_claim_before_the_first_probe_keeps_the_previous_probe_details() -> None:
    previous = record(UP, "health-a")

    claimed = health_record(TARGET, initial_state(previous, T0), "health-b", previous)

    assert (claimed.state, claimed.replica, claimed.last_result) == (UP, "health-b", "HTTP 200")


def test_record_after_a_probe_shows_that_probe() -> None:
    state = advance(MemberState(UNKNOWN, T0), FAIL, AMKO, T0)

    written = health_record(TARGET, state, "health-b", record(UP, "health-a"))

    assert (written.last_result, written.last_error) == ("HTTP 500", FAIL.error)


# Targets -------------------------------------------------------------------------------------


def service(monitor: HealthMonitorSpec, members: list[Member]) -> GslbService:
    return GslbService(
        fqdn="Hello.avi.iberia.local.",
        ttl_seconds=30,
        groups=[PriorityGroup(priority=10, members=members)],
        health_monitor=monitor,
    )


@pytest.mark.parametrize(
    ("monitor", "port"),
    [
        (HealthMonitorSpec(kind=MonitorKind.HTTP), 80),
        (HealthMonitorSpec(kind=MonitorKind.HTTPS), 443),
        (HealthMonitorSpec(kind=MonitorKind.HTTP, port=8080), 8080),
        (HealthMonitorSpec(kind=MonitorKind.TCP, port=5432), 5432),
    ],
)
def test_probe_port_defaults_by_kind(monitor: HealthMonitorSpec, port: int) -> None:
    members = [Member(ip="127.10.25.46", cluster="s1az1", weight=6)]

    (target,) = targets_of(service(monitor, members)).values()

    assert target.port == port


def test_targets_probe_the_monitor_ip_and_are_keyed_by_it() -> None:
    members = [Member(ip="192.0.2.10", cluster="s2", weight=2, monitor_ip="127.10.23.40")]

    targets = targets_of(service(AMKO, members))

    key = subjects.member_key("hello.avi.iberia.local", "127.10.23.40")
    assert list(targets) == [key]
    assert (targets[key].ip, targets[key].fqdn) == ("127.10.23.40", "hello.avi.iberia.local")


# Schedule ------------------------------------------------------------------------------------

KEYS = [subjects.member_key(f"app{n}.avi.iberia.local", "127.10.25.46") for n in range(10_000)]


def test_phases_spread_members_evenly_over_the_interval() -> None:
    tenths = Counter(int(phase_seconds(key, 10.0)) for key in KEYS)

    assert sorted(tenths) == list(range(10))
    assert all(850 <= count <= 1150 for count in tenths.values())


@pytest.mark.parametrize("now", [0.0, 1_608_318_055.917, 1_608_318_063.5])
def test_first_probe_lands_on_the_members_phase(now: float) -> None:
    key = KEYS[42]

    delay = first_delay(key, AMKO, now)

    assert 0 <= delay < AMKO.interval_seconds
    assert (now + delay) % 10.0 == pytest.approx(phase_seconds(key, 10.0), abs=1e-6)


def test_control_plane_only_member_is_checked_at_once() -> None:
    assert first_delay(KEYS[0], HealthMonitorSpec(kind=MonitorKind.NONE), 123.4) == 0.0


@pytest.mark.parametrize(
    ("due", "now", "expected"),
    [(100.0, 100.5, 110.0), (100.0, 109.99, 110.0), (100.0, 110.0, 120.0), (100.0, 135.0, 140.0)],
    ids=["normal", "just-in-time", "overran-one-slot", "overran-three-slots"],
)
def test_next_slot_keeps_the_cadence_and_skips_missed_slots(
    due: float, now: float, expected: float
) -> None:
    assert next_due(due, 10.0, now) == expected


# Sharding ------------------------------------------------------------------------------------


def test_owner_does_not_depend_on_the_order_replicas_are_listed() -> None:
    assert all(owner(key, ["a", "b", "c"]) == owner(key, ["c", "a", "b"]) for key in KEYS[:500])


def test_no_replica_no_owner() -> None:
    assert owner(KEYS[0], []) is None


def test_two_replicas_each_carry_about_half() -> None:
    shares = Counter(owner(key, ["health-a", "health-b"]) for key in KEYS)

    assert 4700 <= shares["health-a"] <= 5300


def test_adding_a_replica_moves_about_a_third_and_only_to_it() -> None:
    before = {key: owner(key, ["a", "b"]) for key in KEYS}
    after = {key: owner(key, ["a", "b", "c"]) for key in KEYS}

    moved = [key for key in KEYS if before[key] != after[key]]

    assert all(after[key] == "c" for key in moved)
    assert 3000 <= len(moved) <= 3700


def test_removing_a_replica_moves_only_its_members() -> None:
    before = {key: owner(key, ["a", "b", "c"]) for key in KEYS}
    after = {key: owner(key, ["a", "b"]) for key in KEYS}

    assert all(before[key] == after[key] for key in KEYS if before[key] != "c")


def test_live_replicas_are_me_and_peers_heard_within_their_validity() -> None:
    sightings = {"b": Sighting(seen_at=100.0, valid_for_seconds=6.0), "c": Sighting(90.0, 6.0)}

    assert live_replicas(sightings, "a", now=105.0) == {"a", "b"}
    assert live_replicas(sightings, "a", now=107.0) == {"a"}


def test_orphans_are_known_keys_no_service_lists_that_this_replica_owns() -> None:
    known = KEYS[:100]
    members = set(KEYS[:50])

    mine = orphan_keys(known, members, ["a", "b"], "a")
    theirs = orphan_keys(known, members, ["a", "b"], "b")

    assert mine | theirs == set(KEYS[50:100])
    assert not mine & theirs
