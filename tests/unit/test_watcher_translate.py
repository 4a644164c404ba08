"""Kubernetes objects into observations and CR status back: what the watcher publishes, what
it leaves out and why. Objects are the JSON the API serves."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.watcher.translate import (
    BadObject,
    Skip,
    observe_ingress,
    observe_namespace,
    observe_service,
    policy_object,
    status_fields,
    status_patch,
)
from shared.models import (
    DelegationState,
    DelegationStatus,
    HostPath,
    ObjectKind,
    PolicyKind,
    PolicyRef,
    PolicyState,
    PolicyStatus,
)
from shared.names import NameProblem

HOST = "hello.avi.iberia.local"


def ingress(
    *,
    lb: list[dict[str, str]] | None = None,
    rules: list[dict[str, Any]] | None = None,
    tls: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "rules": rules
        if rules is not None
        else [{"host": HOST, "http": {"paths": [{"path": "/", "pathType": "Prefix"}]}}]
    }
    if tls is not None:
        spec["tls"] = tls
    return {
        "metadata": {
            "name": "hello",
            "namespace": "default",
            "resourceVersion": "42",
            "labels": labels if labels is not None else {"app": "gslb"},
        },
        "spec": spec,
        "status": {"loadBalancer": {"ingress": lb} if lb is not None else {}},
    }


def service(
    service_type: str = "LoadBalancer",
    lb: list[dict[str, str]] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "resourceVersion": "7",
            "labels": {"app": "gslb"},
            "annotations": annotations or {},
        },
        "spec": {"type": service_type, "ports": [{"port": 80}, {"port": 443}]},
        "status": {"loadBalancer": {"ingress": lb or []}},
    }


# Ingress ------------------------------------------------------------------------------------


def test_ingress_with_an_ip_becomes_one_observation_with_hosts_paths_and_vips() -> None:
    observation = observe_ingress("s1az1", ingress(lb=[{"ip": "127.10.25.46"}]))
    message = observation.message
    assert message is not None
    assert str(message.ref) == "INGRESS/s1az1/default/hello"
    assert message.resource_version == "42"
    assert message.labels == {"app": "gslb"}
    assert message.hosts == [HOST]
    assert message.paths == [HostPath(host=HOST, path="/")]
    assert message.vips == ["127.10.25.46"]
    assert message.ports == [80]


def test_every_rule_host_is_listed_once_with_its_paths() -> None:
    rules = [
        {"host": "a.example.com", "http": {"paths": [{"path": "/x"}, {"path": "/y"}]}},
        {"host": "b.example.com", "http": {"paths": [{}]}},
        {"host": "a.example.com", "http": {"paths": [{"path": "/x"}]}},
    ]
    message = observe_ingress("s2", ingress(lb=[{"ip": "10.0.0.1"}], rules=rules)).message
    assert message is not None
    assert message.hosts == ["a.example.com", "b.example.com"]
    assert [(p.host, p.path) for p in message.paths] == [
        ("a.example.com", "/x"),
        ("a.example.com", "/y"),
        ("b.example.com", "/"),
    ]


def test_a_rule_without_host_names_no_fqdn() -> None:
    rules: list[dict[str, Any]] = [{"http": {"paths": [{"path": "/"}]}}, {"host": HOST}]
    message = observe_ingress("s2", ingress(lb=[{"ip": "10.0.0.1"}], rules=rules)).message
    assert message is not None and message.hosts == [HOST]


def test_tls_hosts_are_reported_and_add_port_443() -> None:
    tls = [{"hosts": [HOST], "secretName": "hello-tls"}]
    message = observe_ingress("s2", ingress(lb=[{"ip": "10.0.0.1"}], tls=tls)).message
    assert message is not None
    assert message.tls_hosts == [HOST]
    assert message.ports == [80, 443]


def test_ingress_without_a_status_ip_is_left_out() -> None:
    observation = observe_ingress("s1az2", ingress())
    assert observation.message is None
    assert observation.skip == Skip.NO_ADDRESS
    assert str(observation.ref) == "INGRESS/s1az2/default/hello"


def test_hostname_only_load_balancer_entries_are_left_out_with_the_reason() -> None:
    lb = [{"hostname": "abc.elb.amazonaws.com"}]
    observation = observe_ingress("s2", ingress(lb=lb))
    assert observation.message is None
    assert observation.skip == Skip.HOSTNAME_ONLY
    assert "abc.elb.amazonaws.com" in observation.detail
    assert "default/hello" in observation.detail


def test_hostname_entries_beside_ips_are_ignored() -> None:
    lb = [{"hostname": "abc.elb.amazonaws.com"}, {"ip": "10.0.0.9"}]
    message = observe_ingress("s2", ingress(lb=lb)).message
    assert message is not None and message.vips == ["10.0.0.9"]


def test_vips_are_normalised_deduplicated_and_invalid_ones_ignored() -> None:
    lb = [{"ip": "2001:DB8:0:0::1"}, {"ip": "not-an-ip"}, {"ip": "2001:db8::1"}]
    message = observe_ingress("s2", ingress(lb=lb)).message
    assert message is not None and message.vips == ["2001:db8::1"]


def test_only_invalid_ips_count_as_no_address_and_are_named() -> None:
    observation = observe_ingress("s2", ingress(lb=[{"ip": "999.1.1.1"}]))
    assert observation.skip == Skip.NO_ADDRESS
    assert "999.1.1.1" in observation.detail


def test_an_object_without_a_name_is_a_bad_object() -> None:
    with pytest.raises(BadObject, match=r"no metadata\.name"):
        observe_ingress("s2", {"metadata": {"namespace": "default"}})


# Service ------------------------------------------------------------------------------------


def test_load_balancer_service_reports_vips_ports_and_external_dns_hostnames() -> None:
    annotation = {"external-dns.alpha.kubernetes.io/hostname": " a.example.com, b.example.com,"}
    lb = service(lb=[{"ip": "10.1.1.1"}], annotations=annotation)
    message = observe_service("s1az1", lb).message
    assert message is not None
    assert message.ref.kind == ObjectKind.SERVICE
    assert message.hosts == ["a.example.com", "b.example.com"]
    assert message.vips == ["10.1.1.1"]
    assert message.ports == [80, 443]


def test_hosts_that_are_not_hostnames_are_published_as_seen_and_flagged() -> None:
    long_label = f"{'x' * 70}.avi.iberia.local"
    rules = [{"host": h} for h in (HOST, long_label, "*.avi.iberia.local")]

    observation = observe_ingress("s2", ingress(lb=[{"ip": "10.1.1.1"}], rules=rules))

    assert observation.message is not None
    assert observation.message.hosts == [HOST, long_label, "*.avi.iberia.local"]
    assert [(b.name, b.problem) for b in observation.bad_hosts] == [
        (long_label, NameProblem.LABEL_TOO_LONG)
    ]


def test_a_bad_external_dns_hostname_is_flagged() -> None:
    annotation = {"external-dns.alpha.kubernetes.io/hostname": "ok.example.com,under_score.com"}

    observation = observe_service("s1az1", service(lb=[{"ip": "10.1.1.1"}], annotations=annotation))

    assert [(b.name, b.problem) for b in observation.bad_hosts] == [
        ("under_score.com", NameProblem.BAD_CHARACTER)
    ]


def test_a_service_that_is_not_a_load_balancer_is_left_out() -> None:
    observation = observe_service("s1az1", service("ClusterIP", lb=[{"ip": "10.1.1.1"}]))
    assert observation.message is None
    assert observation.skip == Skip.NOT_LOAD_BALANCER


def test_a_pending_load_balancer_service_is_left_out_until_it_has_an_ip() -> None:
    assert observe_service("s1az1", service()).skip == Skip.NO_ADDRESS


# Namespace ----------------------------------------------------------------------------------


def test_a_namespace_is_published_with_its_labels_and_no_namespace() -> None:
    obj = {"metadata": {"name": "shop", "resourceVersion": "3", "labels": {"team": "web"}}}
    message = observe_namespace("s2", obj).message
    assert message is not None
    assert (message.ref.namespace, message.ref.name) == ("", "shop")
    assert message.labels == {"team": "web"}
    assert message.ref.short == "Namespace//shop"


# kgslb custom resources ---------------------------------------------------------------------


def test_a_cr_becomes_a_policy_object_with_its_spec_untouched() -> None:
    spec = {"trafficSplit": [{"cluster": "s1az1", "weight": 60}], "unknownField": True}
    obj = {
        "metadata": {
            "name": "global-gdp",
            "namespace": "avi-system",
            "generation": 3,
            "resourceVersion": "99",
        },
        "spec": spec,
    }
    message = policy_object(PolicyKind.GLOBAL_DEPLOYMENT_POLICY, obj)
    assert message.ref == PolicyRef(
        kind=PolicyKind.GLOBAL_DEPLOYMENT_POLICY, namespace="avi-system", name="global-gdp"
    )
    assert (message.generation, message.resource_version, message.spec) == (3, "99", spec)


def test_a_cr_without_spec_has_an_empty_spec() -> None:
    obj = {"metadata": {"name": "gc-1", "namespace": "avi-system"}}
    assert policy_object(PolicyKind.GSLB_CONFIG, obj).spec == {}


def test_a_cr_whose_spec_is_not_an_object_is_a_bad_object_naming_it() -> None:
    obj = {"metadata": {"name": "gc-1", "namespace": "avi-system"}, "spec": ["x"]}
    with pytest.raises(BadObject, match="GSLBConfig avi-system/gc-1: spec is a list"):
        policy_object(PolicyKind.GSLB_CONFIG, obj)


# Status write-back --------------------------------------------------------------------------

REF = PolicyRef(kind=PolicyKind.GLOBAL_DEPLOYMENT_POLICY, namespace="avi-system", name="g")


def rejected(observed: int = 2, accepted: int | None = 1) -> PolicyStatus:
    return PolicyStatus(
        ref=REF,
        state=PolicyState.REJECTED,
        message="spec.trafficSplit[0].weight = 60: must be <= 20",
        observed_generation=observed,
        accepted_generation=accepted,
    )


def test_status_fields_are_state_message_and_generations() -> None:
    assert status_fields(rejected()) == {
        "state": "Rejected",
        "message": "spec.trafficSplit[0].weight = 60: must be <= 20",
        "observedGeneration": 2,
        "acceptedGeneration": 1,
    }


def test_an_equal_status_needs_no_write_and_other_status_keys_do_not_matter() -> None:
    current = {**status_fields(rejected()), "clusters": [{"cluster": "s2"}]}
    assert status_patch(current, status_fields(rejected())) is None


def test_a_missing_accepted_generation_equals_none() -> None:
    desired = status_fields(rejected(accepted=None))
    current = {k: v for k, v in desired.items() if v is not None}
    assert status_patch(current, desired) is None


def test_a_different_status_is_merge_patched_whole_with_null_removing_a_key() -> None:
    desired = status_fields(rejected(observed=3, accepted=None))
    patch = status_patch(status_fields(rejected()), desired)
    assert patch == {"status": desired}
    assert patch["status"]["acceptedGeneration"] is None


def test_a_gslbconfig_status_carries_the_delegation_results_and_removes_them_when_gone() -> None:
    config = PolicyRef(kind=PolicyKind.GSLB_CONFIG, namespace="avi-system", name="gc-1")
    since = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
    result = DelegationStatus(
        zone="avi.iberia.local", parent="iberia.local", server="127.0.0.1:53",
        state=DelegationState.FAILED, message="BADKEY: the parent's server does not know this "
        "TSIG key (127.0.0.1:53)", since=since,
    )  # fmt: skip
    status = PolicyStatus(
        ref=config, state=PolicyState.ACCEPTED, message="active GSLBConfig",
        observed_generation=1, accepted_generation=1, delegation=[result],
    )  # fmt: skip
    assert status_fields(status)["delegation"] == [
        {
            "zone": "avi.iberia.local",
            "parent": "iberia.local",
            "server": "127.0.0.1:53",
            "state": "Failed",
            "message": result.message,
            "lastTransitionTime": "2026-12-07T15:00:00Z",
        }
    ]
    # Delegation turned off: the merge patch removes the entry (null); other kinds never carry it.
    without = status.model_copy(update={"delegation": []})
    patch = status_patch(status_fields(status), status_fields(without))
    assert patch is not None and patch["status"]["delegation"] is None
    assert status_patch({"state": "Accepted"}, {"state": "Accepted", "delegation": None}) is None
    assert "delegation" not in status_fields(rejected())
