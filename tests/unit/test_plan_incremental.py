"""The incremental `Planner`: it re-plans only what a change touches, and its result is always
the one a full `plan` of the same world gives."""

from __future__ import annotations

import gc
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.reconciler.plan import Plan, Planner, plan
from shared.models import (
    ObjectKind,
    ObjectRef,
    ObservedObject,
    PolicyDeleted,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    SyncMarker,
    Tombstone,
)
from shared.wire import WireModel

CONFIG = PolicyRef(kind=PolicyKind.GSLB_CONFIG, namespace="avi-system", name="gc-1")
GDP = PolicyRef(kind=PolicyKind.GLOBAL_DEPLOYMENT_POLICY, namespace="avi-system", name="gdp-a")
GDP_B = PolicyRef(kind=PolicyKind.GLOBAL_DEPLOYMENT_POLICY, namespace="avi-system", name="gdp-b")
RULE = PolicyRef(kind=PolicyKind.GSLB_HOST_RULE, namespace="avi-system", name="rule")
CLUSTERS = ("s1", "s2", "s3")
SOA = {"mname": "ns.z.local.", "rname": "h.z.local."}


def config_spec(*clusters: str) -> dict[str, Any]:
    return {
        "memberClusters": [{"clusterContext": c} for c in clusters],
        "zones": [{"name": "z.local", "soa": SOA, "defaultTtlSeconds": 20}],
    }


def ingress(cluster: str, index: int, vip: str | None = None, **fields: Any) -> ObservedObject:
    return ObservedObject(
        ref=ObjectRef(
            cluster=cluster, kind=ObjectKind.INGRESS, namespace="default", name=f"app{index}"
        ),
        resource_version="1",
        labels=fields.pop("labels", {"app": "gslb"}),
        hosts=fields.pop("hosts", [f"app{index}.z.local"]),
        vips=[vip or f"127.{CLUSTERS.index(cluster) + 1}.{index // 250}.{index % 250 + 1}"],
    )


GDP_SPEC = {
    "matchRules": {"appSelector": {"label": {"app": "gslb"}}},
    "trafficSplit": [{"cluster": "s1", "weight": 6}, {"cluster": "s2", "weight": 3}],
}


def big_planner(services: int) -> Planner:
    planner = Planner()
    planner.apply(PolicyObject(ref=CONFIG, spec=config_spec(*CLUSTERS)))
    planner.apply(PolicyObject(ref=GDP, spec=GDP_SPEC))
    for index in range(services):
        for cluster in CLUSTERS:
            planner.apply(ingress(cluster, index))
    planner.replan()
    return planner


def test_one_ingress_change_replans_and_changes_one_service() -> None:
    planner = big_planner(300)

    planner.apply(ingress("s2", 17, vip="127.99.0.17"))
    delta = planner.replan()

    assert (delta.replanned, list(delta.services), delta.full) == (1, ["app17.z.local"], False)


def test_republishing_an_unchanged_object_changes_nothing() -> None:
    planner = big_planner(10)

    planner.apply(ingress("s1", 3).model_copy(update={"resource_version": "2"}))

    assert planner.replan().services == {}


def test_tombstone_of_the_last_member_deletes_the_service() -> None:
    planner = big_planner(3)
    for cluster in CLUSTERS:
        planner.apply(Tombstone(ref=ingress(cluster, 1).ref))

    assert planner.replan().services == {"app1.z.local": None}
    assert "app1.z.local" not in planner.services


def test_namespace_label_change_replans_only_the_objects_in_it() -> None:
    planner = Planner()
    planner.apply(PolicyObject(ref=CONFIG, spec=config_spec(*CLUSTERS)))
    planner.apply(
        PolicyObject(
            ref=GDP,
            spec={
                "matchRules": {
                    "appSelector": {"label": {"app": "gslb"}},
                    "namespaceSelector": {"label": {"ns": "gslb"}},
                }
            },
        )
    )
    shop = ObservedObject(
        ref=ObjectRef(cluster="s1", kind=ObjectKind.INGRESS, namespace="shop", name="shop"),
        resource_version="1",
        labels={"app": "gslb"},
        hosts=["shop.z.local"],
        vips=["127.1.9.9"],
    )
    for obj in (shop, ingress("s1", 1), ingress("s2", 2)):
        planner.apply(obj)
    planner.replan()

    planner.apply(
        ObservedObject(
            ref=ObjectRef(cluster="s1", kind=ObjectKind.NAMESPACE, namespace="", name="shop"),
            resource_version="1",
            labels={"ns": "gslb"},
        )
    )
    delta = planner.replan()

    assert (delta.replanned, set(delta.services)) == (1, {"shop.z.local"})


def test_a_policy_change_replans_every_fqdn() -> None:
    planner = big_planner(20)

    planner.apply(PolicyObject(ref=GDP, spec={**GDP_SPEC, "ttl": 3}, generation=2))
    delta = planner.replan()

    assert delta.full and delta.replanned == 20 and len(delta.services) == 20


def test_a_rejected_policy_edit_replans_nothing() -> None:
    planner = big_planner(20)

    planner.apply(PolicyObject(ref=GDP, spec={**GDP_SPEC, "ttl": -3}, generation=2))
    delta = planner.replan()

    assert (delta.full, delta.replanned, delta.services) == (False, 0, {})
    assert planner.statuses[GDP].state == "Rejected"


def test_sync_marker_drops_objects_deleted_while_nobody_watched() -> None:
    planner = big_planner(3)

    planner.apply(
        SyncMarker(cluster="s3", kinds=[ObjectKind.INGRESS], present=[ingress("s3", 0).ref.short])
    )
    delta = planner.replan()

    assert set(delta.services) == {"app1.z.local", "app2.z.local"}
    assert {m.cluster for m in planner.services["app1.z.local"].all_members()} == {"s1", "s2"}


# Incremental == full, for any sequence of events --------------------------------------------

GDP_VARIANTS: list[dict[str, Any]] = [
    GDP_SPEC,
    {
        **GDP_SPEC,
        "ttl": 5,
        "matchClusters": [{"cluster": "s1"}, {"cluster": "s3", "syncVipOnly": True}],
    },
    {"matchRules": {"namespaceSelector": {"label": {"ns": "gslb"}}}, "defaultDomain": "z.local"},
    {
        "matchRules": {"appSelector": {"label": {"app": "gslb"}}},
        "trafficSplit": [{"cluster": "s3", "weight": 9}],
    },
    {**GDP_SPEC, "trafficSplit": [{"cluster": "s1", "weight": -5}]},  # invalid
    {"matchRules": {"appSelector": {"label": {"app": "other"}}}, "defaultDomain": "alt.z.local"},
]
RULE_VARIANTS: list[dict[str, Any]] = [
    {"fqdn": "app1.z.local", "ttl": 2},
    {"fqdn": "app2.z.local", "thirdPartyMembers": [{"vip": "127.8.0.1", "site": "dc"}]},
    {"fqdn": "app1.z.local", "publicIP": [{"cluster": "s9", "ip": "127.9.0.1"}]},  # invalid
]
CONFIG_VARIANTS = [config_spec(*CLUSTERS), config_spec("s1", "s2"), {"memberClusters": "x"}]

object_events = st.builds(
    lambda kind, cluster, index, labels, hosts, vip: ObservedObject(
        ref=ObjectRef(cluster=cluster, kind=kind, namespace="default", name=f"o{index}"),
        resource_version="1",
        labels=labels,
        hosts=hosts,
        vips=[] if vip is None else [vip],
    ),
    st.sampled_from([ObjectKind.INGRESS, ObjectKind.SERVICE]),
    st.sampled_from(CLUSTERS),
    st.integers(0, 2),
    st.sampled_from([{"app": "gslb"}, {"app": "gslb"}, {"app": "other"}, {}]),
    st.sampled_from([["app1.z.local"], ["app2.z.local", "app1.z.local"], [], ["*.z.local"]]),
    st.sampled_from([None, "127.0.0.1", "127.0.0.2", "127.0.0.3", "::1"]),
)
tombstones = st.builds(
    lambda kind, cluster, index: Tombstone(
        ref=ObjectRef(cluster=cluster, kind=kind, namespace="default", name=f"o{index}")
    ),
    st.sampled_from([ObjectKind.INGRESS, ObjectKind.SERVICE]),
    st.sampled_from(CLUSTERS),
    st.integers(0, 2),
)
namespace_events = st.builds(
    lambda cluster, labels: ObservedObject(
        ref=ObjectRef(cluster=cluster, kind=ObjectKind.NAMESPACE, namespace="", name="default"),
        resource_version="1",
        labels=labels,
    ),
    st.sampled_from(CLUSTERS),
    st.sampled_from([{"ns": "gslb"}, {}]),
)
sync_markers = st.builds(
    lambda cluster, keep: SyncMarker(
        cluster=cluster,
        kinds=[ObjectKind.INGRESS, ObjectKind.SERVICE],
        present=[f"Ingress/default/o{i}" for i in range(keep)],
    ),
    st.sampled_from(CLUSTERS),
    st.integers(0, 4),
)


def _policy(ref: PolicyRef, variants: list[dict[str, Any]]) -> st.SearchStrategy[WireModel]:
    edit = st.builds(
        lambda spec, generation: PolicyObject(ref=ref, spec=spec, generation=generation),
        st.sampled_from(variants),
        st.integers(1, 5),
    )
    deleted: st.SearchStrategy[WireModel] = st.just(PolicyDeleted(ref=ref))
    return st.integers(0, 3).flatmap(lambda roll: deleted if roll == 0 else edit)


# Every sequence starts from a working configuration, so there are services to break.
PRELUDE: list[WireModel] = [
    PolicyObject(ref=CONFIG, spec=config_spec(*CLUSTERS)),
    PolicyObject(ref=GDP, spec=GDP_SPEC),
]
WEIGHTED_EVENTS: list[tuple[int, st.SearchStrategy[WireModel]]] = [
    (45, object_events),
    (15, tombstones),
    (8, namespace_events),
    (4, sync_markers),
    (10, _policy(GDP, GDP_VARIANTS)),
    (6, _policy(GDP_B, GDP_VARIANTS)),
    (7, _policy(RULE, RULE_VARIANTS)),
    (5, _policy(CONFIG, CONFIG_VARIANTS)),
]


def _weighted(roll: int) -> st.SearchStrategy[WireModel]:
    for weight, strategy in WEIGHTED_EVENTS:
        if roll < weight:
            return strategy
        roll -= weight
    raise AssertionError("weights add up to 100")


events = st.lists(st.integers(0, 99).flatmap(_weighted), min_size=8, max_size=50)


@settings(max_examples=300, deadline=None)
@given(events=events, replan_every=st.integers(1, 4), part=st.sampled_from([None, 1, 2, 5]))
def test_incremental_planning_always_equals_a_full_plan(
    events: list[WireModel], replan_every: int, part: int | None
) -> None:
    """Also when each re-plan is made in parts of `part` FQDNs, as the reconciler does."""
    planner = Planner()
    accepted: dict[PolicyRef, PolicyObject] = {}
    observed: dict[ObjectRef, ObservedObject] = {}
    policies: dict[PolicyRef, PolicyObject] = {}
    events = PRELUDE + events
    for step, event in enumerate(events, start=1):
        planner.apply(event)
        _apply_to_world(event, observed, policies)
        if step % replan_every and step != len(events):
            continue
        while planner.replan(limit=part).more:
            pass
        full: Plan = plan(observed, policies, accepted)
        accepted = full.accepted
        assert planner.services == full.services
        assert planner.statuses == full.statuses
        assert planner.snapshot().zones == full.zones


def _apply_to_world(
    event: WireModel,
    observed: dict[ObjectRef, ObservedObject],
    policies: dict[PolicyRef, PolicyObject],
) -> None:
    """The plain meaning of each event, independent of the planner's indexes."""
    match event:
        case ObservedObject(ref=ref):
            observed[ref] = event
        case Tombstone(ref=ref):
            observed.pop(ref, None)
        case SyncMarker(cluster=cluster, kinds=kinds, present=present):
            for ref in [
                r
                for r in observed
                if r.cluster == cluster and r.kind in kinds and r.short not in present
            ]:
                del observed[ref]
        case PolicyObject(ref=ref):
            policies[ref] = event
        case PolicyDeleted(ref=ref):
            policies.pop(ref, None)


def test_kept_objects_equal_the_events_and_share_their_repeated_parts() -> None:
    planner = big_planner(0)
    first, second = (ingress("s1", i) for i in (0, 1))
    planner.apply(first)
    planner.apply(second)

    kept = [planner.observed[obj.ref] for obj in (first, second)]

    assert kept == [first, second]
    assert kept[0].labels is kept[1].labels
    assert kept[0].ref.cluster is kept[1].ref.cluster
    assert kept[0].model_fields_set is kept[1].model_fields_set


def test_objects_with_different_labels_keep_their_own() -> None:
    planner = big_planner(0)
    planner.apply(ingress("s1", 1, labels={"app": "gslb", "tier": "web"}))
    planner.apply(ingress("s1", 2, labels={"app": "gslb"}))

    labels = [planner.observed[ingress("s1", i).ref].labels for i in (1, 2)]

    assert labels == [{"app": "gslb", "tier": "web"}, {"app": "gslb"}]


def test_a_replan_in_parts_says_when_more_is_left_and_updates_statuses_at_the_end() -> None:
    planner = big_planner(0)
    for index in range(25):
        for cluster in CLUSTERS:
            planner.apply(ingress(cluster, index))
    statuses_before = dict(planner.statuses)

    parts = []
    while True:
        delta = planner.replan(limit=10)
        parts.append((delta.replanned, delta.more, planner.statuses == statuses_before))
        if not delta.more:
            break

    assert parts == [(10, True, True), (10, True, True), (5, False, False)]
    assert len(planner.services) == 25


def test_planning_leaves_the_garbage_collector_as_it_found_it() -> None:
    """`plan` is pure: pausing or freezing the process-wide collector is the shell's choice
    (services/reconciler/gc_tuning.py), never the planner's."""
    observed = [ingress(cluster, index) for index in range(300) for cluster in CLUSTERS]
    policies = [
        PolicyObject(ref=CONFIG, spec=config_spec(*CLUSTERS)),
        PolicyObject(ref=GDP, spec=GDP_SPEC),
    ]
    collections: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    before = (gc.isenabled(), gc.get_freeze_count())
    gc.callbacks.append(record)
    try:
        result = plan({o.ref: o for o in observed}, {p.ref: p for p in policies})
    finally:
        gc.callbacks.remove(record)

    assert len(result.services) == 300
    assert (gc.isenabled(), gc.get_freeze_count()) == before
    assert collections, "no collection ran while planning: plan() paused the collector"


def test_refresh_policies_gives_the_member_clusters_and_leaves_every_fqdn_to_replan() -> None:
    # The first-sync gate asks for the member clusters before any name may be planned.
    planner = Planner()
    planner.apply(PolicyObject(ref=CONFIG, spec=config_spec(*CLUSTERS)))
    planner.apply(PolicyObject(ref=GDP, spec=GDP_SPEC))
    for cluster in CLUSTERS:
        planner.apply(ingress(cluster, 0))

    members = planner.refresh_policies().members
    planned_before = dict(planner.services)
    delta = planner.replan()

    assert members == frozenset(CLUSTERS)
    assert planned_before == {}
    assert list(delta.services) == ["app0.z.local"]
    assert delta.full, "the policy change found by refresh_policies still counts as full"
    assert planner.statuses, "and the statuses are computed"
