"""The first-sync gate: after a start, names are planned once every member cluster's first
complete list is in, or when a bounded wait runs out, so a cold start writes each name once and
an unreachable cluster does not hold back the others."""

from __future__ import annotations

import pytest

from services.reconciler.first_sync import FirstSync
from shared.models import ObjectKind, ObjectRef, ObservedObject, SyncMarker, Tombstone

MEMBERS = frozenset({"s1az1", "s1az2", "s2"})
TIMEOUT = 10.0
MAX_WAIT = 120.0


def gate() -> FirstSync:
    return FirstSync(TIMEOUT, MAX_WAIT, started_at=0.0)


def complete(cluster: str) -> SyncMarker:
    return SyncMarker(cluster=cluster, kinds=list(ObjectKind), present=[])


def ingress(cluster: str) -> ObservedObject:
    ref = ObjectRef(cluster=cluster, kind=ObjectKind.INGRESS, namespace="default", name="hello")
    return ObservedObject(ref=ref, resource_version="1", hosts=["hello.avi.iberia.local"])


def test_closed_until_every_member_cluster_has_synced() -> None:
    first = gate()
    first.observe(complete("s1az1"), now=1.0)
    first.observe(complete("s1az2"), now=1.5)

    waiting = first.decide(MEMBERS, now=2.0)
    first.observe(complete("s2"), now=2.5)
    verdict = first.decide(MEMBERS, now=2.6)

    assert not waiting.open
    assert waiting.missing == ("s2",)
    assert "s2" in waiting.reason
    assert verdict.open
    assert verdict.missing == ()


def test_a_marker_of_some_kinds_only_is_not_a_first_sync() -> None:
    # The watcher publishes a marker after each kind's list, with the kinds listed so far:
    # the Namespaces are listed long before 10,000 Ingresses are.
    first = gate()
    for cluster in MEMBERS:
        first.observe(
            SyncMarker(cluster=cluster, kinds=[ObjectKind.NAMESPACE], present=[]), now=1.0
        )

    verdict = first.decide(MEMBERS, now=2.0)

    assert not verdict.open
    assert verdict.missing == tuple(sorted(MEMBERS))


def test_an_unreachable_cluster_holds_the_others_back_for_the_timeout_only() -> None:
    first = gate()
    first.observe(complete("s1az1"), now=3.0)
    first.observe(complete("s1az2"), now=4.0)

    before = first.decide(MEMBERS, now=12.9)
    after = first.decide(MEMBERS, now=13.0)

    assert not before.open
    assert before.retry_in_seconds == pytest.approx(0.1)
    assert after.open
    assert after.missing == ("s2",)
    assert "10 s" in after.reason


def test_clusters_still_listing_are_waited_for_beyond_the_timeout_from_the_start() -> None:
    # 100,000 Ingresses per cluster take longer than the timeout to list: while a cluster has
    # published something and none has finished, the gate waits (up to max wait).
    first = gate()
    first.observe(SyncMarker(cluster="s2", kinds=[ObjectKind.NAMESPACE], present=[]), now=1.0)

    verdict = first.decide(MEMBERS, now=40.0)

    assert not verdict.open
    assert verdict.retry_in_seconds == pytest.approx(MAX_WAIT - 40.0)


def test_nothing_heard_from_any_cluster_opens_after_the_timeout_from_the_start() -> None:
    first = gate()

    before = first.decide(MEMBERS, now=9.0)
    after = first.decide(MEMBERS, now=10.0)

    assert not before.open
    assert before.retry_in_seconds == pytest.approx(1.0)
    assert after.open
    assert after.missing == tuple(sorted(MEMBERS))


def test_a_cluster_that_never_completes_a_list_is_given_up_at_max_wait() -> None:
    first = gate()
    first.observe(ingress("s1az1"), now=1.0)

    assert not first.decide(MEMBERS, now=MAX_WAIT - 0.1).open
    verdict = first.decide(MEMBERS, now=MAX_WAIT)

    assert verdict.open
    assert "120 s" in verdict.reason


def test_without_member_clusters_every_cluster_heard_from_is_waited_for() -> None:
    first = gate()
    first.observe(ingress("a"), now=1.0)
    first.observe(Tombstone(ref=ingress("b").ref), now=1.0)
    first.observe(complete("a"), now=2.0)

    waiting = first.decide(None, now=3.0)
    first.observe(complete("b"), now=4.0)

    assert not waiting.open
    assert waiting.missing == ("b",)
    assert first.decide(None, now=4.0).open


def test_without_member_clusters_and_nothing_heard_the_gate_does_not_open_at_once() -> None:
    # A cold start: the stream is empty when the reconciler starts.
    assert not gate().decide(None, now=0.0).open


def test_markers_replayed_from_the_stream_open_the_gate_right_after_the_replay() -> None:
    first = gate()
    for cluster in sorted(MEMBERS):
        first.observe(ingress(cluster), now=0.5)
        first.observe(complete(cluster), now=0.5)

    assert first.decide(MEMBERS, now=0.6).open


def test_once_open_always_open() -> None:
    first = gate()
    for cluster in MEMBERS:
        first.observe(complete(cluster), now=1.0)
    opened = first.decide(MEMBERS, now=1.0)

    later = first.decide(MEMBERS | {"s3"}, now=2.0)

    assert later == opened
    assert later.open


def test_a_cluster_outside_the_members_does_not_count() -> None:
    first = gate()
    first.observe(complete("elsewhere"), now=1.0)

    verdict = first.decide(MEMBERS, now=1.0)

    assert not verdict.open
    assert verdict.missing == tuple(sorted(MEMBERS))
    assert first.decide(MEMBERS, now=TIMEOUT).open, "no member cluster was heard from"
