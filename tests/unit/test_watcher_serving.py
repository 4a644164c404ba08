"""What a policy's `status.serving` says (which members serve each name now, mirroring the DNS's
decision) and which Kubernetes Events a status change tells."""

from __future__ import annotations

from typing import Any

import pytest

from services.watcher.serving import (
    NameView,
    holds_due,
    name_entry,
    policy_ref_of,
    serving_counts,
    serving_fields,
    status_events,
)
from services.watcher.view import PolicyView
from shared.models import (
    GslbService,
    HealthState,
    Member,
    PolicyKind,
    PolicyRef,
    PolicyState,
    PolicyStatus,
    PriorityGroup,
)
from shared.subjects import member_key

HELLO = "hello.avi.iberia.local"
GDP = PolicyRef(kind=PolicyKind.GLOBAL_DEPLOYMENT_POLICY, namespace="avi-system", name="global-gdp")
S1AZ1, S1AZ2, S2 = "127.10.25.46", "127.10.26.40", "127.10.23.40"
UP, DOWN = HealthState.UP, HealthState.DOWN


def service(s2: dict[str, Any] | None = None, s2_priority: int = 10) -> GslbService:
    def group(priority: int, members: list[Member]) -> PriorityGroup:
        return PriorityGroup(priority=priority, members=members)

    first = [
        Member(ip=S1AZ1, cluster="s1az1", weight=6),
        Member(ip=S1AZ2, cluster="s1az2", weight=4),
    ]
    second = [Member(ip=S2, cluster="s2", **({"weight": 2} | (s2 or {})))]
    groups = (
        [group(10, first + second)]
        if s2_priority == 10
        else [group(10, first), group(s2_priority, second)]
    )
    return GslbService(fqdn=HELLO, ttl_seconds=30, groups=groups, policies=[str(GDP)])


def states(svc: GslbService, health: dict[str, HealthState]) -> dict[str, tuple[str, str]]:
    keyed = {member_key(HELLO, ip): state for ip, state in health.items()}
    entry = name_entry(NameView.of(svc), keyed)
    return {m["cluster"]: (m["health"], m["state"]) for m in entry["members"]}


def test_every_healthy_member_of_the_best_group_serves() -> None:
    assert states(service(), {S1AZ1: UP, S1AZ2: UP, S2: UP}) == {
        "s1az1": ("up", "Serving"),
        "s1az2": ("up", "Serving"),
        "s2": ("up", "Serving"),
    }


def test_a_down_member_is_down_and_the_others_keep_serving() -> None:
    entry = name_entry(NameView.of(service()), {member_key(HELLO, S2): DOWN})

    assert entry["addresses"] == [S1AZ1, S1AZ2]
    assert [(m["cluster"], m["health"], m["state"]) for m in entry["members"]][-1] == (
        "s2",
        "down",
        "Down",
    )


def test_a_lower_priority_group_stands_by_until_the_best_group_is_down() -> None:
    svc = service(s2_priority=5)
    assert states(svc, {S1AZ1: UP, S1AZ2: UP, S2: UP})["s2"] == ("up", "Standby")

    failed = states(svc, {S1AZ1: DOWN, S1AZ2: DOWN, S2: UP})
    assert failed == {"s1az1": ("down", "Down"), "s1az2": ("down", "Down"), "s2": ("up", "Serving")}


@pytest.mark.parametrize(
    ("s2", "state"), [({"weight": 0}, "Drained"), ({"disabled": True}, "Disabled")]
)
def test_drained_and_disabled_members_are_listed_and_not_serving(
    s2: dict[str, Any], state: str
) -> None:
    assert states(service(s2), {S2: UP})["s2"] == ("up", state)


def test_a_drained_best_group_leaves_the_next_group_serving() -> None:
    svc = GslbService(
        fqdn=HELLO,
        ttl_seconds=30,
        groups=[
            PriorityGroup(priority=10, members=[Member(ip=S1AZ1, cluster="s1az1", weight=0)]),
            PriorityGroup(priority=5, members=[Member(ip=S2, cluster="s2", weight=1)]),
        ],
    )
    assert states(svc, {}) == {"s1az1": ("unknown", "Drained"), "s2": ("unknown", "Serving")}


def test_serving_counts_per_cluster() -> None:
    entry = name_entry(NameView.of(service()), {member_key(HELLO, S2): DOWN})
    assert serving_counts(entry) == {"s1az1": 1, "s1az2": 1, "s2": 0}


def test_the_list_is_bounded_and_says_how_many_it_left_out() -> None:
    entries = [{"fqdn": f"n{i:03}.avi.iberia.local", "members": []} for i in range(5)]

    fields = serving_fields(entries, 3)

    assert [e["fqdn"] for e in fields["serving"]] == [f"n00{i}.avi.iberia.local" for i in range(3)]
    assert fields["servingOmitted"] == 2
    assert serving_fields(entries, 10)["servingOmitted"] is None


def test_policy_refs_round_trip_through_the_services_policies() -> None:
    assert policy_ref_of(str(GDP)) == GDP
    assert policy_ref_of("Nonsense avi-system/x") is None


def test_the_view_writes_serving_with_the_reconciler_verdict() -> None:
    view = PolicyView("s1az1")
    view.listed(
        PolicyKind.GLOBAL_DEPLOYMENT_POLICY,
        [{"metadata": {"name": "global-gdp", "namespace": "avi-system", "generation": 1}}],
    )
    fields = serving_fields([name_entry(NameView.of(service()), {})], 100)
    view.want_serving(GDP, fields)
    assert view.status_patches() == [], "no verdict yet: nothing to write"

    view.want_status(
        PolicyStatus(ref=GDP, state=PolicyState.ACCEPTED, message="ok", observed_generation=1)
    )
    ((ref, patch),) = view.status_patches()
    assert ref == GDP
    assert patch["status"]["state"] == "Accepted"
    assert patch["status"]["serving"][0]["addresses"] == [S1AZ1, S1AZ2, S2]


# Events ---------------------------------------------------------------------------------------


def status(
    health: dict[str, HealthState], state: str = "Accepted", generation: int = 1
) -> dict[str, Any]:
    keyed = {member_key(HELLO, ip): h for ip, h in health.items()}
    return {
        "state": state,
        "message": "selects 1 GSLB service(s)",
        "observedGeneration": generation,
        **serving_fields([name_entry(NameView.of(service()), keyed)], 100),
    }


def test_a_member_going_down_is_a_failover_warning_naming_who_serves_now() -> None:
    (event,) = status_events(status({S2: UP}), status({S2: DOWN}))

    assert (event.type, event.reason) == ("Warning", "Failover")
    assert event.message == (f"{HELLO}: s2 {S2} is down; serving now: s1az1 {S1AZ1}, s1az2 {S1AZ2}")


def test_a_member_coming_back_is_a_recovery() -> None:
    (event,) = status_events(status({S2: DOWN}), status({S2: UP}))

    assert (event.type, event.reason) == ("Normal", "Recovered")
    assert event.message.startswith(f"{HELLO}: s2 {S2} is healthy again (serving)")


def test_every_member_down_says_the_down_response_answers() -> None:
    everyone = {S1AZ1: DOWN, S1AZ2: DOWN}
    events = status_events(status(everyone), status({**everyone, S2: DOWN}))

    assert [e.message for e in events] == [
        f"{HELLO}: s2 {S2} is down; no member serves (the downResponse answers)"
    ]


def test_a_new_generation_is_accepted_or_rejected() -> None:
    (accepted,) = status_events(status({}), status({}, generation=2))
    (rejected,) = status_events(status({}), status({}, state="Rejected", generation=3))

    assert (accepted.type, accepted.reason) == ("Normal", "Accepted")
    assert accepted.message == "generation 2 accepted: selects 1 GSLB service(s)"
    assert (rejected.type, rejected.reason) == ("Warning", "Rejected")


def test_nothing_changed_tells_nothing_and_a_first_status_tells_only_the_verdict() -> None:
    assert status_events(status({S2: UP}), status({S2: UP})) == []
    assert [e.reason for e in status_events({}, status({S2: DOWN}))] == ["Accepted"]


def test_draining_a_member_is_told() -> None:
    before = status({})
    after = dict(before)
    after.update(serving_fields([name_entry(NameView.of(service({"weight": 0})), {})], 100))

    (event,) = status_events(before, after)

    assert (event.type, event.reason) == ("Normal", "Drained")
    assert event.message.startswith(f"{HELLO}: s2 {S2} drained (probed, not answered)")


# manualResume ---------------------------------------------------------------------------------


def resumable(**overrides: Any) -> NameView:
    return NameView.of(service().model_copy(update={"manual_resume": True, **overrides}))


def test_a_member_down_under_manual_resume_is_due_a_hold_once() -> None:
    name = resumable()
    down = {member_key(HELLO, S2): DOWN}

    assert [m.ip for m in holds_due(name, down, held=())] == [S2]
    assert holds_due(name, down, held={member_key(HELLO, S2)}) == []
    assert holds_due(NameView.of(service()), down, held=()) == [], "no manualResume"
    assert holds_due(name, {member_key(HELLO, S2): UP}, held=()) == []


def test_a_held_member_is_not_serving_even_when_healthy() -> None:
    held = {member_key(HELLO, S2)}
    entry = name_entry(resumable(), {member_key(HELLO, S2): UP}, held)

    assert entry["addresses"] == [S1AZ1, S1AZ2]
    assert entry["members"][-1] == {"cluster": "s2", "address": S2, "health": "up", "state": "Held"}


def test_held_and_resumed_are_told() -> None:
    def at(health: HealthState, held: bool) -> dict[str, Any]:
        keyed = {member_key(HELLO, S2): health}
        holds = {member_key(HELLO, S2)} if held else set()
        return {"state": "Accepted", "observedGeneration": 1,
                **serving_fields([name_entry(resumable(), keyed, holds)], 100)}  # fmt: skip

    (failover,) = status_events(at(UP, False), at(DOWN, True))
    assert (failover.reason, failover.type) == ("Failover", "Warning")
    assert f"held until `kgslb member resume {HELLO} s2`" in failover.message
    (held,) = status_events(at(DOWN, False), at(DOWN, True))
    assert held.reason == "Held"
    (resumed,) = status_events(at(UP, True), at(UP, False))
    assert (resumed.reason, resumed.message) == ("Resumed", f"{HELLO}: s2 {S2} resumed (serving)")
