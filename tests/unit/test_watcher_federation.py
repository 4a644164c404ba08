"""A home watcher among several possible homes (services/watcher/federation.py): its role, when
becoming active must reset its CRs, and what it writes so that a standby home's CRs are marked
copies of the policies in force."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.watcher.federation import (
    Activation,
    HomeMirror,
    Role,
    Write,
    activation,
    copy_of,
    home_role,
)
from shared.models import (
    ActiveHome,
    PolicyDeleted,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    PolicyState,
    PolicyStatus,
)
from shared.policies import COPY_OF_ANNOTATION

GDP = PolicyKind.GLOBAL_DEPLOYMENT_POLICY
SPLIT_6_4_2 = {"trafficSplit": [{"cluster": "s1az1", "weight": 6}]}
SPLIT_6_3_1 = {"trafficSplit": [{"cluster": "s1az1", "weight": 3}]}


def key(active: str, term: int = 1) -> ActiveHome:
    return ActiveHome(
        active=active,
        term=term,
        since=datetime(2024, 1, 1, tzinfo=UTC),
        reason="test",
        home_clusters=["s1az1", "s1az2"],
    )


def gdp_ref(name: str = "global-gdp") -> PolicyRef:
    return PolicyRef(kind=GDP, namespace="avi-system", name=name)


def cr(
    name: str = "global-gdp",
    spec: dict[str, Any] | None = None,
    generation: int = 1,
    copied_from: str | None = None,
    **annotations: str,
) -> dict[str, Any]:
    if copied_from is not None:
        annotations[COPY_OF_ANNOTATION] = copied_from
    return {
        "apiVersion": "kgslb.io/v1alpha1",
        "kind": "GlobalDeploymentPolicy",
        "metadata": {
            "name": name,
            "namespace": "avi-system",
            "generation": generation,
            "resourceVersion": f"{name}-{generation}",
            "labels": {"team": "net"},
            "annotations": annotations,
        },
        "spec": SPLIT_6_4_2 if spec is None else spec,
    }


def accepted(spec: dict[str, Any], generation: int = 5, name: str = "global-gdp") -> PolicyStatus:
    return PolicyStatus(
        ref=gdp_ref(name),
        state=PolicyState.ACCEPTED,
        message="ok",
        observed_generation=generation,
        accepted_generation=generation,
        accepted_spec=spec,
    )


def mirror(*objects: dict[str, Any], statuses: tuple[PolicyStatus, ...] = ()) -> HomeMirror:
    view = HomeMirror("s1az2")
    for status in statuses:
        view.status(status)
    for kind in PolicyKind:
        view.listed(kind, list(objects) if kind == GDP else [])
    return view


def ops(writes: list[Write]) -> list[str]:
    return [str(write) for write in writes]


# Roles ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("home_key", "home_clusters", "now", "expected"),
    [
        (None, [], Role.WAITING, Role.ACTIVE),
        (None, ["s1az1", "s1az2"], Role.WAITING, Role.WAITING),
        (None, ["s1az1", "s1az2"], Role.ACTIVE, Role.ACTIVE),
        (key("s1az2"), ["s1az1", "s1az2"], Role.WAITING, Role.ACTIVE),
        (key("s1az1"), ["s1az1", "s1az2"], Role.ACTIVE, Role.STANDBY),
        (key("s1az1"), [], Role.ACTIVE, Role.STANDBY),
    ],
    ids=[
        "one home without homeClusters is active, as always",
        "a starting home waits for the leader to name the active home",
        "the home that publishes keeps publishing until the key exists",
        "the home the key names is active",
        "a home the key does not name is a standby",
        "the key decides even before the GSLBConfig is known",
    ],
)
def test_home_role(
    home_key: ActiveHome | None, home_clusters: list[str], now: Role, expected: Role
) -> None:
    assert home_role("s1az2", home_key, home_clusters, now) == expected


def test_a_home_that_starts_while_another_home_publishes_waits() -> None:
    view = mirror()
    view.policy(PolicyObject(ref=gdp_ref(), spec=SPLIT_6_4_2, home_cluster="s1az1"))

    assert view.other_publisher() == "s1az1"
    assert home_role("s1az2", None, [], Role.WAITING, view.other_publisher()) == Role.WAITING
    assert home_role("s1az1", None, [], Role.WAITING, mirror().other_publisher()) == Role.ACTIVE


@pytest.mark.parametrize(
    ("home_key", "serving_term", "expected"),
    [
        (key("s1az2", term=2), None, Activation.RESET),
        (key("s1az2", term=3), 1, Activation.RESET),
        (key("s1az2", term=3), 3, Activation.RESUME),
        (key("s1az2", term=1), 0, Activation.ADOPT),
        (key("s1az2", term=2), 0, Activation.RESET),
        (None, None, Activation.RESUME),
    ],
    ids=[
        "a home that never published takes over from the policies in force",
        "a home active in an earlier term takes over again (its CRs may be stale)",
        "a restart within the same term resumes",
        "the one home of a setup that only now lists homeClusters adopts",
        "the old single home coming back after a failover takes over",
        "without a key there is one home: it resumes",
    ],
)
def test_activation(
    home_key: ActiveHome | None, serving_term: int | None, expected: Activation
) -> None:
    assert activation(home_key, serving_term) == expected


# Standby: copies -------------------------------------------------------------------------------


def test_a_standby_creates_a_marked_copy_of_each_policy_in_force() -> None:
    view = mirror(statuses=(accepted(SPLIT_6_4_2),))

    (write,) = view.standby_writes("s1az1")

    assert str(write) == "create GlobalDeploymentPolicy avi-system/global-gdp"
    assert write.body is not None
    assert write.body["spec"] == SPLIT_6_4_2
    assert copy_of(write.body) == "s1az1"


def test_a_standby_replaces_a_copy_that_differs_keeping_its_labels_and_annotations() -> None:
    view = mirror(cr(copied_from="s1az1", note="kept"), statuses=(accepted(SPLIT_6_3_1),))

    (write,) = view.standby_writes("s1az1")

    assert (write.op, write.resource_version) == ("replace", "global-gdp-1")
    assert write.body is not None
    assert write.body["spec"] == SPLIT_6_3_1
    assert write.body["metadata"]["labels"] == {"team": "net"}
    assert write.body["metadata"]["annotations"] == {"note": "kept", COPY_OF_ANNOTATION: "s1az1"}


def test_an_old_home_back_as_standby_turns_its_originals_into_copies() -> None:
    view = mirror(cr(spec=SPLIT_6_4_2), statuses=(accepted(SPLIT_6_3_1),))

    (write,) = view.standby_writes("s1az2")

    assert write.body is not None
    assert (write.op, write.body["spec"], copy_of(write.body)) == ("replace", SPLIT_6_3_1, "s1az2")


def test_a_copy_that_matches_is_left_alone() -> None:
    view = mirror(cr(copied_from="s1az1"), statuses=(accepted(SPLIT_6_4_2),))

    assert view.standby_writes("s1az1") == []


def test_a_copy_whose_policy_was_deleted_is_deleted_and_other_crs_stay() -> None:
    view = mirror(cr(copied_from="s1az1"), cr("mine"), statuses=(accepted(SPLIT_6_4_2),))

    view.policy(PolicyDeleted(ref=gdp_ref()))

    assert ops(view.standby_writes("s1az1")) == [
        "delete GlobalDeploymentPolicy avi-system/global-gdp"
    ]


def test_a_late_status_of_a_deleted_policy_makes_no_copy() -> None:
    view = mirror()
    view.policy(PolicyDeleted(ref=gdp_ref()))

    view.status(accepted(SPLIT_6_4_2))

    assert view.standby_writes("s1az1") == []
    view.policy(PolicyObject(ref=gdp_ref(), spec=SPLIT_6_4_2))
    view.status(accepted(SPLIT_6_4_2))
    assert ops(view.standby_writes("s1az1")) == [
        "create GlobalDeploymentPolicy avi-system/global-gdp"
    ]


def test_a_rejected_policy_with_no_version_in_force_has_no_copy() -> None:
    rejected = PolicyStatus(
        ref=gdp_ref(), state=PolicyState.REJECTED, message="bad", observed_generation=1
    )

    assert mirror(statuses=(rejected,)).standby_writes("s1az1") == []


# Standby: edits and status ---------------------------------------------------------------------


def test_an_edit_to_a_copy_is_reset_and_its_status_names_the_active_home() -> None:
    view = mirror(cr(copied_from="s1az1"), statuses=(accepted(SPLIT_6_4_2),))

    view.changed(GDP, "MODIFIED", cr(spec=SPLIT_6_3_1, generation=2, copied_from="s1az1"),
                 standby=True)  # fmt: skip

    (write,) = view.standby_writes("s1az1")
    assert write.body is not None and write.body["spec"] == SPLIT_6_4_2
    ((_, patch),) = view.standby_status_patches("s1az1", is_home=True)
    assert patch["status"]["state"] == "NotActive"
    assert patch["status"]["activeHome"] == "s1az1"
    assert patch["status"]["message"] == (
        "not applied: the active home cluster is s1az1; edit the policy there "
        "(generation 2 of this copy was reset to the version in force)"
    )


def test_the_watch_event_of_our_own_write_is_no_edit() -> None:
    view = mirror(cr(copied_from="s1az1"), statuses=(accepted(SPLIT_6_3_1),))
    (write,) = view.standby_writes("s1az1")
    view.writing(write)
    view.status(accepted(SPLIT_6_4_2, generation=6))

    # The event of the write arrives before its response, after the next version came in force.
    view.changed(GDP, "MODIFIED", cr(spec=SPLIT_6_3_1, generation=2, copied_from="s1az1"),
                 standby=True)  # fmt: skip

    ((_, patch),) = view.standby_status_patches("s1az1", is_home=True)
    assert patch["status"]["state"] == "Copy"


def test_a_copy_in_sync_says_where_the_policy_is_edited() -> None:
    view = mirror(cr(copied_from="s1az1"), statuses=(accepted(SPLIT_6_4_2, generation=5),))

    ((_, patch),) = view.standby_status_patches("s1az1", is_home=True)

    assert patch["status"] == {
        "state": "Copy",
        "message": "copy of the version in force in s1az1, the active home cluster "
        "(generation 5 there); edit the policy there",
        "activeHome": "s1az1",
        "observedGeneration": None,
        "acceptedGeneration": None,
    }


def test_a_cr_created_in_a_standby_is_not_applied() -> None:
    view = mirror()
    view.changed(GDP, "ADDED", cr("new"), standby=True)

    assert view.standby_writes("s1az1") == []
    ((_, patch),) = view.standby_status_patches("s1az1", is_home=True)
    assert patch["status"]["state"] == "NotActive"
    assert patch["status"]["message"] == (
        "not applied: the active home cluster is s1az1; create the policy there"
    )


def test_a_home_cluster_not_listed_in_home_clusters_keeps_no_copies() -> None:
    view = mirror(cr(), statuses=(accepted(SPLIT_6_4_2),))

    ((_, patch),) = view.standby_status_patches("s1az1", is_home=False)

    assert patch["status"]["state"] == "NotActive"
    assert patch["status"]["message"] == (
        "not applied: s1az2 is not one of the GSLBConfig's homeClusters; the active home "
        "cluster is s1az1"
    )


# Takeover ---------------------------------------------------------------------------------------


def test_a_takeover_makes_the_crs_exactly_the_policies_in_force_unmarked() -> None:
    view = mirror(
        cr("copy", copied_from="s1az1"),
        cr("stale", spec=SPLIT_6_4_2),
        cr("extra"),
        statuses=(
            accepted(SPLIT_6_4_2, name="copy"),
            accepted(SPLIT_6_3_1, name="stale"),
            accepted(SPLIT_6_3_1, name="missing"),
        ),
    )

    writes = view.activation_writes(Activation.RESET)

    assert ops(writes) == [
        "replace GlobalDeploymentPolicy avi-system/copy",
        "create GlobalDeploymentPolicy avi-system/missing",
        "replace GlobalDeploymentPolicy avi-system/stale",
        "delete GlobalDeploymentPolicy avi-system/extra",
    ]
    bodies = {w.ref.name: w.body for w in writes if w.body is not None}
    assert all(copy_of(body) is None for body in bodies.values())
    assert bodies["stale"]["spec"] == SPLIT_6_3_1


def test_a_takeover_of_crs_that_are_the_policy_writes_nothing() -> None:
    view = mirror(cr(), statuses=(accepted(SPLIT_6_4_2),))

    assert view.activation_writes(Activation.RESET) == []


def test_adopting_keeps_the_homes_own_crs_and_adds_what_it_lacks() -> None:
    view = mirror(
        cr("edited", spec=SPLIT_6_3_1),
        cr("invalid"),
        cr("copy", copied_from="s1az1"),
        statuses=(
            accepted(SPLIT_6_4_2, name="edited"),
            accepted(SPLIT_6_4_2, name="copy"),
            accepted(SPLIT_6_4_2, name="missing"),
        ),
    )

    writes = view.activation_writes(Activation.ADOPT)

    assert ops(writes) == [
        "replace GlobalDeploymentPolicy avi-system/copy",
        "create GlobalDeploymentPolicy avi-system/missing",
    ]
    assert all(w.body is not None and copy_of(w.body) is None for w in writes)


def test_home_clusters_in_force_come_from_the_accepted_gslbconfig() -> None:
    view = HomeMirror("s1az2")
    view.status(
        PolicyStatus(
            ref=PolicyRef(kind=PolicyKind.GSLB_CONFIG, namespace="avi-system", name="gc-1"),
            state=PolicyState.ACCEPTED,
            message="active GSLBConfig",
            observed_generation=1,
            accepted_generation=1,
            accepted_spec={"homeClusters": ["s1az1", "s1az2"]},
        )
    )

    assert view.home_clusters_in_force() == ["s1az1", "s1az2"]
