"""Member selection: exact weighted ratios in every window, sticky consistent hashing."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from services.dns.selection import (
    client_bucket,
    distinct_from,
    rendezvous_pick,
    smooth_wrr_order,
)


@given(st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=8))
def test_every_window_of_sum_weights_has_exact_counts(weights: list[int]) -> None:
    order = smooth_wrr_order(weights)
    total = sum(weights)
    cycle = order * 3
    for start in range(total):
        window = Counter(cycle[start : start + total])
        assert [window[i] for i in range(len(weights))] == weights


def test_seed_split_is_interleaved_not_in_runs() -> None:
    order = smooth_wrr_order([6, 4, 2])
    assert order[:4] != [0, 0, 0, 0]
    assert Counter(order) == {0: 6, 1: 4, 2: 2}


def test_canary_20_20_1_sends_one_in_41() -> None:
    assert Counter(smooth_wrr_order([20, 20, 1]))[2] == 1


def test_same_subnet_same_member_and_other_members_do_not_move_it() -> None:
    members = ["127.10.25.46", "127.10.26.40", "127.10.23.40"]
    a = rendezvous_pick(client_bucket("192.0.2.10", 24), members, [1, 1, 1])
    b = rendezvous_pick(client_bucket("192.0.2.99", 24), members, [1, 1, 1])
    assert a == b
    survivors = [m for i, m in enumerate(members) if i != (a + 1) % 3]
    assert (
        survivors[rendezvous_pick(client_bucket("192.0.2.10", 24), survivors, [1, 1])]
        == (members[a])
    )


def test_rendezvous_spreads_by_weight() -> None:
    members = ["a", "b"]
    picks = Counter(rendezvous_pick(f"client-{n}".encode(), members, [3, 1]) for n in range(4000))
    assert 0.70 < picks[0] / 4000 < 0.80


def test_distinct_from_returns_n_different_members() -> None:
    assert distinct_from([0, 0, 1, 0, 2], 0, 2) == [0, 1]
    assert distinct_from([0, 1], 0, 5) == [0, 1]
