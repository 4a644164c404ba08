"""What a watcher tells the events stream after lists and watch events, in which order, and
which CR status it writes back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.watcher.view import LIST_STEP, ClusterView, Decision, PolicyView, Steps
from shared.models import (
    ClusterState,
    ClusterStatus,
    ObjectKind,
    ObjectRef,
    ObservedObject,
    PolicyDeleted,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    PolicyState,
    PolicyStatus,
    SyncMarker,
    Tombstone,
)
from shared.subjects import sync_subject

CLUSTER = "s1az1"


def ing(name: str, ip: str | None = "127.10.25.46", rv: str = "1", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "resourceVersion": rv,
            "labels": labels or {"app": "gslb"},
            "annotations": {"note": rv},
        },
        "spec": {"rules": [{"host": f"{name}.avi.iberia.local"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": ip}] if ip else []}},
    }


def svc(name: str, service_type: str = "LoadBalancer") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "5"},
        "spec": {"type": service_type, "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "127.10.25.47"}]}},
    }


def ns(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": "2", "labels": labels}}


def ref(name: str, kind: ObjectKind = ObjectKind.INGRESS) -> ObjectRef:
    namespace = "" if kind == ObjectKind.NAMESPACE else "default"
    return ObjectRef(cluster=CLUSTER, kind=kind, namespace=namespace, name=name)


def kinds_and_names(decision: Decision) -> list[tuple[str, str]]:
    out = []
    for _, message in decision.messages:
        name = message.ref.name if hasattr(message, "ref") else ""
        out.append((message.KIND, name))
    return out


def marker_of(decision: Decision) -> SyncMarker:
    subject, message = decision.messages[-1]
    assert subject == sync_subject(CLUSTER) and isinstance(message, SyncMarker)
    return message


# Lists and sync markers ---------------------------------------------------------------------


def test_a_list_publishes_every_usable_object_then_a_sync_marker_last() -> None:
    view = ClusterView(CLUSTER)
    decision = view.listed(ObjectKind.INGRESS, [ing("a"), ing("pending", ip=None), ing("b")])
    assert kinds_and_names(decision) == [
        ("ObservedObject", "a"),
        ("ObservedObject", "b"),
        ("SyncMarker", ""),
    ]
    assert decision.messages[0][0] == ref("a").subject
    assert [s.ref.name for s in decision.skipped] == ["pending"]


def pauses_and_result(steps: Steps[Decision]) -> tuple[int, Decision]:
    pauses = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return pauses, done.value
        pauses += 1


def test_a_long_list_is_observed_in_parts_and_decides_what_it_decides_at_once() -> None:
    """The watcher lets its event loop turn between the parts (its heartbeat goes on)."""
    objects = [ing(f"i{n}") for n in range(2 * LIST_STEP + 5)]

    pauses, in_parts = pauses_and_result(
        ClusterView(CLUSTER).listed_in_steps(ObjectKind.INGRESS, objects)
    )

    at_once = ClusterView(CLUSTER).listed(ObjectKind.INGRESS, objects)
    assert pauses == 2
    assert without_times(in_parts) == without_times(at_once)
    assert len(in_parts.messages) == len(objects) + 1


def without_times(decision: Decision) -> list[tuple[str, dict[str, Any]]]:
    return [(s, m.model_dump(exclude={"observed_at", "listed_at"})) for s, m in decision.messages]


def test_the_marker_names_what_exists_in_the_kinds_listed_so_far() -> None:
    view = ClusterView(CLUSTER)
    first = marker_of(view.listed(ObjectKind.INGRESS, [ing("a")]))
    assert (first.kinds, first.present) == ([ObjectKind.INGRESS], ["Ingress/default/a"])
    view.listed(ObjectKind.NAMESPACE, [ns("default")])
    second = marker_of(view.listed(ObjectKind.SERVICE, [svc("lb"), svc("plain", "ClusterIP")]))
    assert second.kinds == [ObjectKind.INGRESS, ObjectKind.SERVICE, ObjectKind.NAMESPACE]
    assert second.present == ["Ingress/default/a", "Namespace//default", "Service/default/lb"]


def test_a_relist_tombstones_objects_that_vanished_and_republishes_the_rest() -> None:
    view = ClusterView(CLUSTER)
    view.listed(ObjectKind.INGRESS, [ing("a"), ing("b")])
    decision = view.listed(ObjectKind.INGRESS, [ing("a")])
    assert kinds_and_names(decision) == [
        ("ObservedObject", "a"),
        ("Tombstone", "b"),
        ("SyncMarker", ""),
    ]
    assert marker_of(decision).present == ["Ingress/default/a"]


def test_a_relist_leaves_the_other_kinds_alone() -> None:
    view = ClusterView(CLUSTER)
    view.listed(ObjectKind.NAMESPACE, [ns("default")])
    view.listed(ObjectKind.INGRESS, [ing("a")])
    decision = view.listed(ObjectKind.INGRESS, [])
    assert kinds_and_names(decision) == [("Tombstone", "a"), ("SyncMarker", "")]
    assert marker_of(decision).present == ["Namespace//default"]


# Watch events -------------------------------------------------------------------------------


def test_a_change_that_the_reconciler_cares_about_is_published() -> None:
    view = ClusterView(CLUSTER)
    view.listed(ObjectKind.INGRESS, [ing("a")])
    decision = view.changed(ObjectKind.INGRESS, "MODIFIED", ing("a", rv="2", app="other"))
    [(subject, message)] = decision.messages
    assert subject == ref("a").subject
    assert isinstance(message, ObservedObject) and message.labels == {"app": "other"}


def test_a_change_that_only_touches_annotations_publishes_nothing() -> None:
    view = ClusterView(CLUSTER)
    view.listed(ObjectKind.INGRESS, [ing("a")])
    assert view.changed(ObjectKind.INGRESS, "MODIFIED", ing("a", rv="9")).messages == []


def test_an_ingress_that_gets_its_ip_is_published_when_it_does() -> None:
    view = ClusterView(CLUSTER)
    view.listed(ObjectKind.INGRESS, [])
    assert view.changed(ObjectKind.INGRESS, "ADDED", ing("a", ip=None)).messages == []
    added = view.changed(ObjectKind.INGRESS, "MODIFIED", ing("a", rv="2"))
    assert kinds_and_names(added) == [("ObservedObject", "a")]


def test_an_ingress_that_loses_its_ip_is_tombstoned() -> None:
    view = ClusterView(CLUSTER)
    view.listed(ObjectKind.INGRESS, [ing("a")])
    decision = view.changed(ObjectKind.INGRESS, "MODIFIED", ing("a", ip=None, rv="3"))
    [(subject, message)] = decision.messages
    assert subject == ref("a").subject
    assert isinstance(message, Tombstone) and message.resource_version == "3"
    assert marker_of(view.listed(ObjectKind.SERVICE, [])).present == []


def test_a_service_that_stops_being_a_load_balancer_is_tombstoned() -> None:
    view = ClusterView(CLUSTER)
    view.listed(ObjectKind.SERVICE, [svc("lb")])
    decision = view.changed(ObjectKind.SERVICE, "MODIFIED", svc("lb", "NodePort"))
    assert kinds_and_names(decision) == [("Tombstone", "lb")]


def test_deleting_a_published_object_tombstones_it_with_its_resource_version() -> None:
    view = ClusterView(CLUSTER)
    view.listed(ObjectKind.INGRESS, [ing("a")])
    [(_, message)] = view.changed(ObjectKind.INGRESS, "DELETED", ing("a", rv="8")).messages
    assert isinstance(message, Tombstone)
    assert (message.ref, message.resource_version) == (ref("a"), "8")


def test_deleting_an_object_that_was_never_published_publishes_nothing() -> None:
    view = ClusterView(CLUSTER)
    view.listed(ObjectKind.INGRESS, [ing("pending", ip=None)])
    assert view.changed(ObjectKind.INGRESS, "DELETED", ing("pending", ip=None)).messages == []


def test_a_namespace_label_change_is_published() -> None:
    view = ClusterView(CLUSTER)
    view.listed(ObjectKind.NAMESPACE, [ns("shop")])
    [(subject, message)] = view.changed(
        ObjectKind.NAMESPACE, "MODIFIED", ns("shop", gslb="on")
    ).messages
    assert subject == ref("shop", ObjectKind.NAMESPACE).subject
    assert isinstance(message, ObservedObject) and message.labels == {"gslb": "on"}


def test_an_unreadable_object_is_a_problem_and_the_rest_of_the_list_goes_on() -> None:
    view = ClusterView(CLUSTER)
    decision = view.listed(ObjectKind.INGRESS, [{"metadata": {}}, ing("a")])
    assert kinds_and_names(decision) == [("ObservedObject", "a"), ("SyncMarker", "")]
    assert decision.problems == ["Ingress in cluster s1az1 has no metadata.name"]


# Policies -----------------------------------------------------------------------------------

GDP = PolicyKind.GLOBAL_DEPLOYMENT_POLICY


def cr(name: str, generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "avi-system", "generation": generation},
        "spec": {"trafficSplit": [{"cluster": "s1az1", "weight": generation}]},
    }
    if status is not None:
        obj["status"] = status
    return obj


def pref(name: str, kind: PolicyKind = GDP) -> PolicyRef:
    return PolicyRef(kind=kind, namespace="avi-system", name=name)


def accepted(name: str, generation: int = 1) -> PolicyStatus:
    return PolicyStatus(
        ref=pref(name),
        state=PolicyState.ACCEPTED,
        message="accepted",
        observed_generation=generation,
        accepted_generation=generation,
    )


def test_a_policy_list_deletes_what_the_stream_holds_but_the_cluster_does_not() -> None:
    view = PolicyView()
    gone = PolicyObject(ref=pref("gone"), spec={})
    other_kind = PolicyObject(ref=pref("gc-1", PolicyKind.GSLB_CONFIG), spec={})
    view.seed([gone, other_kind])
    decision = view.listed(GDP, [cr("global-gdp")])
    assert kinds_and_names(decision) == [("PolicyObject", "global-gdp"), ("PolicyDeleted", "gone")]
    assert view.published_refs() == [pref("gc-1", PolicyKind.GSLB_CONFIG), pref("global-gdp")]


def test_a_policy_unchanged_since_the_stream_saw_it_is_not_republished() -> None:
    view = PolicyView()
    view.seed([PolicyObject(ref=pref("g"), generation=1, spec=cr("g")["spec"])])
    assert view.listed(GDP, [cr("g")]).messages == []


def test_after_the_stream_lost_its_state_every_policy_is_published_again() -> None:
    view = PolicyView("s1az1")
    view.listed(GDP, [cr("g"), cr("h")])
    assert view.listed(GDP, [cr("g"), cr("h")]).messages == [], "remembered as published"

    view.forget_all()

    decision = view.listed(GDP, [cr("g"), cr("h")])
    assert kinds_and_names(decision) == [("PolicyObject", "g"), ("PolicyObject", "h")]
    assert all(
        m.home_cluster == "s1az1" for _, m in decision.messages if isinstance(m, PolicyObject)
    )


def test_a_policy_deleted_in_the_stream_is_published_again_when_it_exists() -> None:
    view = PolicyView()
    view.seed([PolicyObject(ref=pref("g"), spec=cr("g")["spec"]), PolicyDeleted(ref=pref("g"))])
    assert kinds_and_names(view.listed(GDP, [cr("g")])) == [("PolicyObject", "g")]


def test_a_status_only_update_is_not_republished_but_a_spec_change_is() -> None:
    view = PolicyView()
    view.listed(GDP, [cr("g")])
    assert view.changed(GDP, "MODIFIED", cr("g", status={"state": "Accepted"})).messages == []
    [(subject, message)] = view.changed(GDP, "MODIFIED", cr("g", generation=2)).messages
    assert subject == pref("g").subject
    assert isinstance(message, PolicyObject) and message.generation == 2


def test_deleting_a_cr_publishes_policy_deleted() -> None:
    view = PolicyView()
    view.listed(GDP, [cr("g")])
    assert kinds_and_names(view.changed(GDP, "DELETED", cr("g"))) == [("PolicyDeleted", "g")]


def test_status_is_written_to_an_existing_cr_whose_status_differs() -> None:
    view = PolicyView()
    view.listed(GDP, [cr("g")])
    view.want_status(accepted("g"))
    [(target, patch)] = view.status_patches()
    assert target == pref("g")
    assert patch["status"]["state"] == "Accepted"


def test_a_written_status_is_not_written_again() -> None:
    view = PolicyView()
    view.listed(GDP, [cr("g")])
    view.want_status(accepted("g"))
    [(target, patch)] = view.status_patches()
    view.record_status(target, patch["status"])
    assert view.status_patches() == []


def test_status_waits_for_its_cr_and_is_written_once_it_appears() -> None:
    view = PolicyView()
    view.listed(GDP, [])
    view.want_status(accepted("g"))
    assert view.status_patches() == []
    view.changed(GDP, "ADDED", cr("g"))
    assert [target for target, _ in view.status_patches()] == [pref("g")]


def test_a_status_edited_away_by_hand_is_written_back() -> None:
    view = PolicyView()
    view.want_status(accepted("g"))
    view.listed(GDP, [cr("g", status={"state": "Accepted", "message": "accepted"})])
    view.record_status(pref("g"), view.status_patches()[0][1]["status"])
    view.changed(GDP, "MODIFIED", cr("g", status={}))
    assert [target for target, _ in view.status_patches()] == [pref("g")]


def test_a_deleted_cr_gets_no_status() -> None:
    view = PolicyView()
    view.listed(GDP, [cr("g")])
    view.want_status(accepted("g"))
    view.changed(GDP, "DELETED", cr("g"))
    assert view.status_patches() == []


def cluster(name: str, state: ClusterState, message: str = "") -> ClusterStatus:
    since = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return ClusterStatus(cluster=name, state=state, message=message, since=since)


def test_the_gslbconfig_status_lists_every_reporting_cluster_sorted() -> None:
    view = PolicyView()
    view.listed(PolicyKind.GSLB_CONFIG, [cr("gc-1")])
    view.want_cluster(cluster("s2", ClusterState.UNREACHABLE, "cluster s2: Ingress: 401"))
    view.want_cluster(cluster("s1az1", ClusterState.CONNECTED))
    [(target, patch)] = view.status_patches()
    assert target == pref("gc-1", PolicyKind.GSLB_CONFIG)
    assert patch["status"]["clusters"] == [
        {
            "cluster": "s1az1",
            "state": "Connected",
            "message": "",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
        },
        {
            "cluster": "s2",
            "state": "Unreachable",
            "message": "cluster s2: Ingress: 401",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
        },
    ]


def test_a_cluster_state_change_rewrites_the_gslbconfig_status_along_with_its_own() -> None:
    view = PolicyView()
    view.listed(PolicyKind.GSLB_CONFIG, [cr("gc-1")])
    view.want_cluster(cluster("s2", ClusterState.UNREACHABLE, "refused"))
    [(target, patch)] = view.status_patches()
    view.record_status(target, patch["status"])
    view.want_cluster(cluster("s2", ClusterState.CONNECTED))
    [(_, patch)] = view.status_patches()
    assert [c["state"] for c in patch["status"]["clusters"]] == ["Connected"]


def test_cluster_states_go_to_gslbconfigs_only() -> None:
    view = PolicyView()
    view.listed(GDP, [cr("g")])
    view.want_cluster(cluster("s2", ClusterState.CONNECTED))
    assert view.status_patches() == []


# Several homes ------------------------------------------------------------------------------


def gdp_cr(name: str, generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "generation": generation},
        "spec": {"ttl": 10},
    }


def gdp(name: str) -> PolicyRef:
    return PolicyRef(kind=PolicyKind.GLOBAL_DEPLOYMENT_POLICY, namespace="default", name=name)


def test_a_home_never_deletes_what_another_home_published() -> None:
    view = PolicyView(home_cluster="s1az2")
    view.seed([PolicyObject(ref=gdp("theirs"), spec={}, home_cluster="s1az1")])

    decision = view.listed(PolicyKind.GLOBAL_DEPLOYMENT_POLICY, [])

    assert decision.messages == []


def test_a_home_stamps_its_name_on_what_it_publishes() -> None:
    view = PolicyView(home_cluster="s1az2")

    decision = view.listed(PolicyKind.GLOBAL_DEPLOYMENT_POLICY, [gdp_cr("mine")])
    deleted = view.changed(PolicyKind.GLOBAL_DEPLOYMENT_POLICY, "DELETED", gdp_cr("mine"))

    (_, published), (_, gone) = decision.messages + deleted.messages
    assert isinstance(published, PolicyObject) and published.home_cluster == "s1az2"
    assert isinstance(gone, PolicyDeleted) and gone.home_cluster == "s1az2"


def test_a_home_that_becomes_active_republishes_all_and_deletes_what_it_lacks() -> None:
    view = PolicyView(home_cluster="s1az2")
    view.restart_from(
        [
            PolicyObject(ref=gdp("kept"), spec={"ttl": 10}, home_cluster="s1az1"),
            PolicyObject(ref=gdp("gone"), spec={"ttl": 10}, home_cluster="s1az1"),
        ]
    )

    decision = view.listed(PolicyKind.GLOBAL_DEPLOYMENT_POLICY, [gdp_cr("kept")])

    assert kinds_and_names(decision) == [("PolicyObject", "kept"), ("PolicyDeleted", "gone")]
    assert all(message.home_cluster == "s1az2" for _, message in decision.messages)
