"""The reconciler's leader lease as a state machine: when to create, renew, wait or take over,
and, over simulated timelines with slow writes and a dying leader, that two replicas never
both believe they lead and that a standby takes over within 2 x TTL."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.reconciler.lease import Leadership, Step
from shared.models import Lease

TTL = 5.0
WALL = datetime(2024, 1, 1, tzinfo=UTC)


def lease_of(holder: str) -> Lease:
    return Lease(holder=holder, acquired_at=WALL, renewed_at=WALL, expires_at=WALL, ttl_seconds=TTL)


def test_an_absent_key_is_created() -> None:
    assert Leadership("a", TTL).next_step(0.0, None, None) == Step.CREATE


def test_the_leader_renews_its_own_lease() -> None:
    me = Leadership("a", TTL)
    me.written(0.0, 7, me.value(WALL))
    assert me.next_step(1.0, lease_of("a"), 7) == Step.UPDATE


def test_a_live_lease_of_another_replica_is_left_alone() -> None:
    standby = Leadership("b", TTL)
    assert standby.next_step(0.0, lease_of("a"), 7) == Step.WAIT
    assert standby.next_step(TTL - 0.1, lease_of("a"), 7) == Step.WAIT


def test_a_lease_unchanged_for_a_whole_ttl_is_taken_over() -> None:
    standby = Leadership("b", TTL)
    standby.next_step(0.0, lease_of("a"), 7)
    assert standby.next_step(TTL, lease_of("a"), 7) == Step.UPDATE


def test_a_renewal_restarts_the_standbys_wait() -> None:
    standby = Leadership("b", TTL)
    standby.next_step(0.0, lease_of("a"), 7)
    standby.next_step(4.0, lease_of("a"), 8)
    assert standby.next_step(TTL + 1.0, lease_of("a"), 8) == Step.WAIT


def test_a_released_lease_is_taken_at_once() -> None:
    standby = Leadership("b", TTL)
    assert standby.next_step(0.0, lease_of(""), 9) == Step.UPDATE


def test_a_lease_with_our_name_but_not_our_revision_is_not_ours() -> None:
    # e.g. a restarted process with the same replica name: it must wait like anyone else.
    restarted = Leadership("a", TTL)
    assert restarted.next_step(0.0, lease_of("a"), 7) == Step.WAIT


def test_the_leader_believes_until_just_before_the_ttl_after_sending_its_renewal() -> None:
    me = Leadership("a", TTL)
    me.written(10.0, 3, me.value(WALL))
    assert me.is_leader(10.0 + TTL * 0.89)
    assert not me.is_leader(10.0 + TTL * 0.91)


def test_a_refused_write_ends_the_belief() -> None:
    me = Leadership("a", TTL)
    me.written(0.0, 3, me.value(WALL))
    me.lost()
    assert not me.is_leader(0.1)


def test_the_lease_value_names_holder_and_expiry_and_keeps_acquisition_time() -> None:
    me = Leadership("a", TTL)
    first = me.value(WALL)
    me.written(0.0, 1, first)
    later = me.value(WALL.replace(minute=1))
    assert (later.holder, later.acquired_at, later.renewed_at) == (
        "a",
        WALL,
        WALL.replace(minute=1),
    )
    assert (later.expires_at - later.renewed_at).total_seconds() == TTL


# Simulated timelines ------------------------------------------------------------------------


@dataclass
class Kv:
    """One KV key with compare-and-set on its revision."""

    value: Lease | None = None
    revision: int = 0

    def write(self, lease: Lease, expected: int) -> int | None:
        if expected != self.revision:
            return None
        self.revision += 1
        self.value = lease
        return self.revision


@dataclass(order=True)
class Event:
    time: float
    order: int
    action: str = field(compare=False)
    replica: int = field(compare=False)
    payload: tuple[object, ...] = field(compare=False, default=())


def tenths(low: float, high: float) -> st.SearchStrategy[float]:
    """Times on a 0.1 s grid: spread evenly, unlike raw floats that favour the edges."""
    return st.integers(round(low * 10), round(high * 10)).map(lambda t: t / 10)


@settings(max_examples=300, deadline=None)
@example(delays=[0.0], offsets=(0.0, 0.5), death=25.0, partition=(0, 3.0, 12.0))
@given(
    delays=st.lists(tenths(0.0, 1.0), min_size=1, max_size=8),
    offsets=st.tuples(tenths(0.0, TTL / 4), tenths(0.0, TTL / 4)),
    death=tenths(2.0, 30.0),
    partition=st.tuples(st.integers(0, 1), tenths(0.0, 20.0), tenths(0.0, 3 * TTL)),
)
def test_two_replicas_never_both_lead_and_a_standby_takes_over_within_two_ttls(
    delays: list[float],
    offsets: tuple[float, float],
    death: float,
    partition: tuple[int, float, float],
) -> None:
    """Writes land up to 1 s after they are sent; for a while one replica cannot reach NATS
    at all (its steps fail, as in a network partition); then the leader is killed."""
    cut_off, cut_start, cut_length = partition
    kv = Kv()
    replicas = [Leadership("a", TTL), Leadership("b", TTL)]
    queue: list[Event] = []
    counter = 0

    def push(time: float, action: str, replica: int, *payload: object) -> None:
        nonlocal counter
        counter += 1
        heapq.heappush(queue, Event(time, counter, action, replica, payload))

    for index, offset in enumerate(offsets):
        push(offset, "step", index)
    dead: set[int] = set()
    leader_at_death: int | None = None
    took_over_at: float | None = None
    delay_index = 0
    while queue and queue[0].time < death + 6 * TTL:
        event = heapq.heappop(queue)
        now = event.time
        if leader_at_death is None and now >= death:
            # The replica leading now (or the last one that wrote) is killed -9.
            believers = [i for i, r in enumerate(replicas) if r.is_leader(now)]
            leader_at_death = (
                believers[0] if believers else (0 if kv.value and kv.value.holder == "a" else 1)
            )
            dead.add(leader_at_death)
        if event.replica in dead:
            continue
        me = replicas[event.replica]
        if (
            event.action == "step"
            and cut_start <= now < cut_start + cut_length
            and event.replica == cut_off
        ):
            push(now + TTL / 4, "step", event.replica)
        elif event.action == "step":
            revision = kv.revision if kv.value is not None else None
            step = me.next_step(now, kv.value, revision)
            if step != Step.WAIT:
                delay = delays[delay_index % len(delays)]
                delay_index += 1
                push(now + delay, "land", event.replica, me.value(WALL), kv.revision, now)
            push(now + TTL / 4, "step", event.replica)
        else:
            lease, expected, sent = event.payload
            assert isinstance(lease, Lease) and isinstance(expected, int)
            assert isinstance(sent, float)
            written = kv.write(lease, expected)
            if written is None:
                me.lost()
            else:
                me.written(sent, written, lease)
        believers = [i for i, r in enumerate(replicas) if r.is_leader(now) and i not in dead]
        assert len(believers) <= 1, f"two leaders at {now}"
        if leader_at_death is not None and took_over_at is None and believers:
            took_over_at = now
    assert leader_at_death is not None and took_over_at is not None
    # The survivor can only take over once it reaches NATS again.
    reachable = death
    if (
        leader_at_death != cut_off
        and cut_start < death + 2 * TTL
        and cut_start + cut_length > death
    ):
        reachable = cut_start + cut_length
    assert took_over_at - reachable <= 2 * TTL
