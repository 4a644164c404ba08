"""The reconciler shell's garbage-collector tuning: no collection while planning, and what the
replay or a full plan built is frozen out of later collections, once it is complete."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.reconciler.gc_tuning import GcTuning
from services.reconciler.plan import Planner
from shared.models import ObjectKind, ObjectRef, ObservedObject, PolicyKind, PolicyObject, PolicyRef

CONFIG = PolicyRef(kind=PolicyKind.GSLB_CONFIG, namespace="avi-system", name="gc-1")
GDP = PolicyRef(kind=PolicyKind.GLOBAL_DEPLOYMENT_POLICY, namespace="avi-system", name="gdp")
CLUSTERS = ("s1", "s2", "s3")


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()


def unplanned_world(services: int) -> Planner:
    planner = Planner()
    planner.apply(
        PolicyObject(
            ref=CONFIG,
            spec={
                "memberClusters": [{"clusterContext": c} for c in CLUSTERS],
                "zones": [{"name": "z.local", "soa": {"mname": "ns.z.local.", "rname": "h."}}],
            },
        )
    )
    planner.apply(
        PolicyObject(ref=GDP, spec={"matchRules": {"appSelector": {"label": {"app": "gslb"}}}})
    )
    for index in range(services):
        for number, cluster in enumerate(CLUSTERS, start=1):
            planner.apply(
                ObservedObject(
                    ref=ObjectRef(
                        cluster=cluster, kind=ObjectKind.INGRESS, namespace="ns", name=f"a{index}"
                    ),
                    resource_version="1",
                    labels={"app": "gslb"},
                    hosts=[f"a{index}.z.local"],
                    vips=[f"127.{number}.{index // 250}.{index % 250 + 1}"],
                )
            )
    return planner


class Sentinel:
    """A tracked object made before a step, to see whether the step froze it."""


def frozen(obj: object) -> bool:
    """Moved out of the collector's generations by gc.freeze: still tracked, in none of them."""
    return gc.is_tracked(obj) and not any(tracked is obj for tracked in gc.get_objects())


def test_no_collection_runs_while_the_shell_plans() -> None:
    planner = unplanned_world(300)  # unpaused, its plan triggers 9 collections
    collections: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(record)
    try:
        delta = GcTuning().replan(planner)
    finally:
        gc.callbacks.remove(record)

    assert delta.replanned == 300
    # At most one, due the moment the pause ends (which generation depends on the counts the
    # collector had before the test); never the nine the same plan triggers unpaused.
    assert len(collections) <= 1, collections
    assert gc.isenabled()


def test_a_full_plan_is_frozen_once_its_last_part_is_done() -> None:
    planner = unplanned_world(25)
    tuning = GcTuning()
    parts = []
    while True:
        sentinel = Sentinel()
        delta = tuning.replan(planner, limit=10)
        parts.append((delta.more, frozen(sentinel)))
        if not delta.more:
            break

    assert parts == [(True, False), (True, False), (False, True)]


def test_an_incremental_plan_freezes_nothing() -> None:
    planner = unplanned_world(5)
    tuning = GcTuning()
    tuning.replan(planner)
    planner.invalidate()  # re-plans every FQDN, though the policies in force are the same
    sentinel = Sentinel()

    delta = tuning.replan(planner)

    assert (delta.replanned, delta.full, frozen(sentinel)) == (5, False, False)


def test_applied_events_are_frozen_every_n_and_the_replay_when_it_is_done() -> None:
    tuning = GcTuning(freeze_every_events=3)
    events = []
    for _ in range(6):
        sentinel = Sentinel()
        tuning.event_applied()
        events.append(frozen(sentinel))
    sentinel = Sentinel()
    tuning.replay_done()

    assert events == [False, False, True, False, False, True]
    assert frozen(sentinel)
