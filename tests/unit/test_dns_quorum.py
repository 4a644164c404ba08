"""Health from several vantage points, as a specification: a member is withdrawn only when a
quorum of the vantage points with a fresh verdict says down; stale verdicts do not count;
health that went silent withdraws nothing; and the book that keeps verdicts and heartbeats
reports exactly the members whose combined state changed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.dns.quorum import HealthBook, Quorum, Verdict, Written, combine
from services.dns.settings import DnsSettings
from shared.models import HealthState
from shared.settings import SettingsError, load_settings

UP, DOWN, UNKNOWN = HealthState.UP, HealthState.DOWN, HealthState.UNKNOWN


def fresh(*states: HealthState) -> list[Verdict]:
    return [Verdict(f"s{n}", state, True) for n, state in enumerate(states)]


def stale(*states: HealthState) -> list[Verdict]:
    return [Verdict(f"old{n}", state, False) for n, state in enumerate(states)]


# combine ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ((DOWN, UP, UP), UP),
        ((DOWN, DOWN, UP), DOWN),
        ((DOWN, DOWN, DOWN), DOWN),
        ((UP, UP, UP), UP),
        ((DOWN, UNKNOWN, UNKNOWN), UNKNOWN),
        ((UNKNOWN, UNKNOWN, UNKNOWN), UNKNOWN),
    ],
)
def test_three_vantage_points_withdraw_a_member_only_by_a_majority(
    states: tuple[HealthState, ...], expected: HealthState
) -> None:
    assert combine(fresh(*states)) is expected


def test_one_site_that_loses_its_path_does_not_withdraw_the_member_for_everybody() -> None:
    assert combine(fresh(UP, DOWN, UP)) is UP
    assert combine(fresh(UP, DOWN)) is UP


def test_a_tie_between_two_vantage_points_keeps_the_member() -> None:
    assert combine(fresh(UP, DOWN)) is UP
    assert combine(fresh(DOWN, UNKNOWN)) is UNKNOWN
    assert combine(fresh(DOWN, DOWN, UP, UP)) is UP
    assert combine(fresh(DOWN, DOWN)) is DOWN


def test_a_single_vantage_point_decides_alone_as_before_sites() -> None:
    assert combine([Verdict("", DOWN, True)]) is DOWN
    assert combine([Verdict("", UP, True)]) is UP
    assert combine([Verdict("", UNKNOWN, True)]) is UNKNOWN


def test_stale_verdicts_do_not_count() -> None:
    # Two silent sites said down; the one that heartbeats says up.
    assert combine([*stale(DOWN, DOWN), *fresh(UP)]) is UP
    # The other way round: the only fresh vantage point is a quorum of one.
    assert combine([*stale(UP, UP), *fresh(DOWN)]) is DOWN


def test_with_every_vantage_point_silent_the_last_combined_state_stays() -> None:
    assert combine(stale(DOWN, DOWN, DOWN), previous=UP) is UP
    assert combine(stale(UP, UP, UP), previous=DOWN) is DOWN


def test_with_every_vantage_point_silent_and_nothing_combined_yet_the_written_verdicts_decide() -> (
    None
):
    assert combine(stale(DOWN, DOWN, UP)) is DOWN
    assert combine(stale(DOWN, UP, UP)) is UP


def test_a_member_without_verdicts_is_unknown_and_answered() -> None:
    assert combine([], previous=DOWN) is UNKNOWN


@pytest.mark.parametrize(
    ("rule", "downs_of_three", "expected"),
    [
        ("majority", 1, UP),
        ("majority", 2, DOWN),
        ("all", 2, UP),
        ("all", 3, DOWN),
        ("1", 1, DOWN),
        ("2", 1, UP),
        ("2", 2, DOWN),
        ("5", 3, DOWN),  # more than there are: all of them
        ("5", 2, UP),
    ],
)
def test_the_quorum_setting(rule: str, downs_of_three: int, expected: HealthState) -> None:
    states = [DOWN] * downs_of_three + [UP] * (3 - downs_of_three)
    assert combine(fresh(*states), Quorum.parse(rule)) is expected


@pytest.mark.parametrize("bad", ["", "most", "0", "-1", "1.5", "1000"])
def test_a_bad_quorum_setting_is_refused_saying_what_is_allowed(bad: str) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(DnsSettings, {"health_quorum": bad}, environ={})
    assert "--health-quorum" in str(error.value)
    assert "'majority'" in str(error.value) and "'all'" in str(error.value)


def test_the_quorum_setting_defaults_to_majority_and_reads_the_environment() -> None:
    assert load_settings(DnsSettings, environ={}).health_quorum == "majority"
    assert load_settings(DnsSettings, environ={"KGSLB_HEALTH_QUORUM": "All"}).health_quorum == (
        "all"
    )


# The book -----------------------------------------------------------------------------------

MEMBER = "app=2Etest.127=2E0=2E0=2E1"
OTHER = "app=2Etest.127=2E0=2E0=2E2"
VALID = 6.0


def book_with_three_sites(now: float = 0.0) -> HealthBook:
    book = HealthBook()
    for site in ("s1", "s2", "s3"):
        book.heartbeat(f"health-{site}", site, VALID, now)
        book.set_verdict(MEMBER, site, Written(UP, f"health-{site}"))
    return book


def test_book_withdraws_a_member_when_the_second_of_three_sites_says_down() -> None:
    book = book_with_three_sites()
    assert book.combined[MEMBER] is UP

    assert book.set_verdict(MEMBER, "s2", Written(DOWN, "health-s2")) == {}
    assert book.set_verdict(MEMBER, "s3", Written(DOWN, "health-s3")) == {MEMBER: DOWN}
    assert book.set_verdict(MEMBER, "s3", Written(UP, "health-s3")) == {MEMBER: UP}


def test_book_a_silent_site_stops_counting_and_the_others_decide() -> None:
    book = book_with_three_sites()
    book.set_verdict(MEMBER, "s1", Written(DOWN, "health-s1"))
    book.set_verdict(MEMBER, "s2", Written(DOWN, "health-s2"))
    assert book.combined[MEMBER] is DOWN

    # s1 and s3 keep heartbeating; s2 falls silent: one down out of two fresh is a tie.
    for site in ("s1", "s3"):
        book.heartbeat(f"health-{site}", site, VALID, 5.0)
    assert book.expire(VALID + 1) == {MEMBER: UP}
    assert book.live_vantages() == {"s1", "s3"}
    assert list(book.outvoted()) == [MEMBER]

    # s2 comes back, still saying down: a majority again.
    assert book.heartbeat("health-s2", "s2", VALID, VALID + 2) == {MEMBER: DOWN}


def test_book_keeps_the_last_state_when_every_site_falls_silent() -> None:
    book = book_with_three_sites()
    book.set_verdict(MEMBER, "s1", Written(DOWN, "health-s1"))
    book.set_verdict(MEMBER, "s2", Written(DOWN, "health-s2"))

    assert book.expire(VALID + 1) == {}
    assert book.live == frozenset()
    assert book.combined[MEMBER] is DOWN
    assert book.replica_gone("health-s1", VALID + 2) == {}


def test_book_a_deleted_heartbeat_stops_counting_at_once() -> None:
    book = book_with_three_sites()
    book.set_verdict(MEMBER, "s1", Written(DOWN, "health-s1"))
    book.set_verdict(MEMBER, "s2", Written(DOWN, "health-s2"))

    assert book.replica_gone("health-s2", 1.0) == {MEMBER: UP}


def test_book_only_members_of_a_replica_that_changed_liveness_are_recombined() -> None:
    book = book_with_three_sites()
    book.heartbeat("health-s4", "s4", VALID, 0.0)
    book.set_verdict(OTHER, "s4", Written(DOWN, "health-s4"))
    book.set_verdict(OTHER, "s1", Written(DOWN, "health-s1"))
    assert book.combined == {MEMBER: UP, OTHER: DOWN}

    # s4 writes nothing on MEMBER: its silence leaves MEMBER alone, OTHER still 1 of 1 down.
    for site in ("s1", "s2", "s3"):
        book.heartbeat(f"health-{site}", site, VALID, 5.0)
    assert book.expire(VALID + 1) == {}
    assert book.verdicts_of(OTHER) == [Verdict("s1", DOWN, True), Verdict("s4", DOWN, False)]


def test_book_a_member_whose_verdicts_are_all_deleted_is_forgotten() -> None:
    book = book_with_three_sites()
    book.set_verdict(MEMBER, "s1", None)
    book.set_verdict(MEMBER, "s2", None)
    assert book.set_verdict(MEMBER, "s3", None) == {MEMBER: None}
    assert MEMBER not in book.combined


def test_book_a_handover_within_a_site_moves_the_verdict_to_the_new_replica() -> None:
    book = book_with_three_sites()
    book.heartbeat("health-s1-b", "s1", VALID, 0.0)
    book.set_verdict(MEMBER, "s1", Written(DOWN, "health-s1-b"))
    book.set_verdict(MEMBER, "s2", Written(DOWN, "health-s2"))

    # The old author of s1's verdict dies: nothing changes, the new one wrote it.
    assert book.replica_gone("health-s1", 1.0) == {}
    assert book.combined[MEMBER] is DOWN
    assert book.replica_gone("health-s1-b", 1.0) == {MEMBER: UP}


def test_book_counts_verdicts_per_vantage_state_and_freshness() -> None:
    book = book_with_three_sites()
    book.set_verdict(OTHER, "s1", Written(DOWN, "health-s1"))
    book.replica_gone("health-s3", 1.0)

    assert book.tally() == {
        ("s1", UP, True): 1,
        ("s1", DOWN, True): 1,
        ("s2", UP, True): 1,
        ("s3", UP, False): 1,
    }
    assert book.vantages() == {"s1", "s2", "s3"}


REPLICAS = ("h1", "h2", "h3", "h4")
SITE_OF = {"h1": "s1", "h2": "s2", "h3": "s3", "h4": "s1"}
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("verdict"),
            st.sampled_from([MEMBER, OTHER]),
            st.sampled_from(REPLICAS),
            st.sampled_from([UP, DOWN, UNKNOWN, None]),
            st.sampled_from(["", "own"]),
        ),
        st.tuples(st.just("beat"), st.sampled_from(REPLICAS), st.floats(0, 5)),
        st.tuples(st.just("gone"), st.sampled_from(REPLICAS)),
        st.tuples(st.just("tick"), st.floats(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.sampled_from(["majority", "all", "1", "2"]))
def test_book_agrees_with_combine_after_any_sequence_of_updates(
    ops: list[tuple[object, ...]], rule: str
) -> None:
    """The book recombines only the members an update can change; a model that recombines
    every member with `combine` after every update must agree with it, and the changes the
    book reports must be exactly the differences."""
    book = HealthBook(Quorum.parse(rule))
    model: dict[str, HealthState] = {}
    now = 0.0
    for op in ops:
        if op[0] == "verdict":
            _, member, replica, state, where = op
            written = None if state is None else Written(state, str(replica))  # type: ignore[arg-type]
            vantage = SITE_OF[str(replica)] if where == "own" else ""
            changes = book.set_verdict(str(member), vantage, written)
        elif op[0] == "beat":
            now += float(op[2])  # type: ignore[arg-type]
            changes = book.heartbeat(str(op[1]), SITE_OF[str(op[1])], 3.0, now)
        elif op[0] == "gone":
            changes = book.replica_gone(str(op[1]), now)
        else:
            now += float(op[1])  # type: ignore[arg-type]
            changes = book.expire(now)
        expected = {
            member: combine(book.verdicts_of(member), book.quorum, model.get(member))
            for member in book.verdicts
        }
        assert book.combined == expected
        differences = {
            m: expected.get(m) for m in {*model, *expected} if model.get(m) != expected.get(m)
        }
        assert changes == differences
        model = expected


def test_book_a_replica_vouches_only_for_the_verdicts_of_the_site_it_heartbeats_for() -> None:
    """A replica restarted with a site under the same name leaves its old `<fqdn>.<ip>`
    verdict behind: that one is silent, the site's counts."""
    book = HealthBook()
    book.heartbeat("health-0", "s1", VALID, 0.0)
    book.set_verdict(MEMBER, "", Written(DOWN, "health-0"))
    book.set_verdict(MEMBER, "s1", Written(UP, "health-0"))

    assert book.verdicts_of(MEMBER) == [Verdict("", DOWN, False), Verdict("s1", UP, True)]
    assert book.combined[MEMBER] is UP
