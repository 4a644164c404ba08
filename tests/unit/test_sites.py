"""A stack file's site layout: what makes one, what `up` derives from it (the zone's name
servers, each site's nats-server configuration, the home watcher), the one-line errors for a
bad one, and the control endpoint `kgslb site` talks to."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from kgslb.control import ControlError, ControlServer, site_action
from kgslb.embedded import StartupError, site_nats_config
from kgslb.up import (
    home_flags,
    load_stack_config,
    nameservers_follow_sites,
    stream_replicas,
)

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "kgslb.yaml"
ZONE = "avi.iberia.local"


def seed_with(tmp_path: Path, change: Any) -> Path:
    """The seed stack file after `change(config)`, its manifests referenced from examples/seed."""
    config = yaml.safe_load(SEED.read_text())
    for cluster in config["clusters"].values():
        cluster["apply"] = [str(SEED.parent / name) for name in cluster["apply"]]
    change(config)
    path = tmp_path / "kgslb.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def single_site(config: dict[str, Any]) -> None:
    config["dns"] = {"host": "127.0.0.1", "port": 1053}
    config["nats"] = {"host": "127.0.0.1", "port": 4222}
    for cluster in config["clusters"].values():
        del cluster["dns"], cluster["nats"]


def zone_of(path: Path) -> dict[str, Any]:
    gslb_config = load_stack_config(path).gslb_config
    assert gslb_config is not None
    zone: dict[str, Any] = gslb_config.spec["zones"][0]
    return zone


def test_the_seed_is_three_sites_in_file_order() -> None:
    assert load_stack_config(SEED).sites == ["s1az1", "s1az2", "s2"]


def test_the_seeds_zone_names_a_server_per_site_whose_address_the_zone_answers() -> None:
    zone = zone_of(SEED)

    assert zone["nameservers"] == [
        {"name": f"ns-s1az1.{ZONE}."}, {"name": f"ns-s1az2.{ZONE}."}, {"name": f"ns-s2.{ZONE}."}
    ]  # fmt: skip
    assert zone["records"] == [
        {"name": "test", "type": "A", "value": "10.10.24.200"},
        {"name": "ns-s1az1", "type": "A", "value": "127.0.0.1"},
        {"name": "ns-s1az2", "type": "A", "value": "127.0.0.2"},
        {"name": "ns-s2", "type": "A", "value": "127.0.0.3"},
    ]
    assert zone["soa"]["mname"] == "g-dns.iberia.local.", "the SOA stays as written"


def test_a_single_site_stack_applies_the_zone_as_written(tmp_path: Path) -> None:
    path = seed_with(tmp_path, single_site)

    assert load_stack_config(path).sites == []
    assert zone_of(path)["nameservers"] == [{"name": "g-dns.iberia.local.", "glue": ["127.0.0.1"]}]


def test_a_name_server_record_already_in_the_zone_is_replaced_and_ipv6_is_aaaa() -> None:
    config = {"kind": "GSLBConfig", "spec": {"zones": [{"name": f"{ZONE}.", "records": [
        {"name": "ns-a", "type": "A", "value": "192.0.2.1"}, {"name": "www", "type": "A",
                                                              "value": "192.0.2.9"}]}]}}  # fmt: skip

    [derived] = nameservers_follow_sites([config], {"a": "::1", "b": "127.0.0.2"})

    zone = derived["spec"]["zones"][0]
    assert zone["nameservers"] == [{"name": f"ns-a.{ZONE}."}, {"name": f"ns-b.{ZONE}."}]
    assert zone["records"] == [
        {"name": "www", "type": "A", "value": "192.0.2.9"},
        {"name": "ns-a", "type": "AAAA", "value": "::1"},
        {"name": "ns-b", "type": "A", "value": "127.0.0.2"},
    ]
    assert config["spec"]["zones"][0]["records"][0]["name"] == "ns-a", "the input is untouched"


def drop_s2_dns(config: dict[str, Any]) -> None:
    del config["clusters"]["s2"]["dns"]


def with_top_level_dns(config: dict[str, Any]) -> None:
    config["dns"] = {"host": "127.0.0.1", "port": 1053}


def s2_dns_by_name(config: dict[str, Any]) -> None:
    config["clusters"]["s2"]["dns"]["host"] = "localhost"


def s2_route_on_s1az1_nats(config: dict[str, Any]) -> None:
    config["clusters"]["s2"]["nats"]["routePort"] = 4222


def cluster_named_like_a_context(config: dict[str, Any]) -> None:
    config["clusters"]["admin@s2"] = config["clusters"].pop("s2")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (drop_s2_dns, "clusters.s2.dns: missing; a site layout gives every cluster its own dns "
                      "and nats (s1az1, s1az2 have dns)"),
        (with_top_level_dns, "dns: a site layout (clusters.*.dns) gives each site its own; "
                             "remove the top-level dns"),
        (s2_dns_by_name, "clusters.s2.dns.host: 'localhost' is not an IP address (it is the "
                         "address of ns-s2.<zone>)"),
        (s2_route_on_s1az1_nats, "clusters.s2.nats.routePort: 127.0.0.1:4222 is also "
                                 "clusters.s1az1.nats.port"),
        (cluster_named_like_a_context, "clusters.admin@s2: a site's cluster name is the label "
                                       "of its name server ns-admin@s2.<zone>: lower-case "
                                       "letters, digits and '-', at most 61"),
    ],
    ids=["a-cluster-without-dns", "top-level-dns-too", "dns-host-not-an-ip", "port-twice",
         "cluster-not-a-dns-label"],
)  # fmt: skip
def test_a_bad_site_layout_is_named_in_one_line(tmp_path: Path, change: Any, error: str) -> None:
    path = seed_with(tmp_path, change)

    with pytest.raises(StartupError) as raised:
        load_stack_config(path)

    assert str(raised.value) == f"{path}: {error}"


def test_a_sites_nats_server_is_tagged_with_its_site_and_routes_to_the_others() -> None:
    config = site_nats_config(
        "s1az2", "127.0.0.1", 6223, ["nats://127.0.0.1:6222", "nats://127.0.0.1:6224"]
    )

    assert config == (
        'server_name: "s1az2"\n'
        'server_tags: ["site:s1az2"]\n'
        'jetstream { unique_tag: "site:" }\n'
        "cluster {\n"
        '  name: "kgslb"\n'
        '  listen: "127.0.0.1:6223"\n'
        '  routes: ["nats://127.0.0.1:6222", "nats://127.0.0.1:6224"]\n'
        "  no_advertise: true\n"
        "}\n"
    )


def test_without_other_possible_homes_only_the_home_clusters_watcher_has_the_home_role() -> None:
    config = load_stack_config(SEED)
    assert config.gslb_config is not None
    config.gslb_config.spec.pop("homeClusters", None)

    assert {c: home_flags(config, c) for c in config.clusters} == {
        "s1az1": ["--home", "true"], "s1az2": [], "s2": []
    }  # fmt: skip


@pytest.mark.parametrize(("sites", "replicas"), [(1, 1), (2, 2), (3, 3), (5, 3)])
def test_streams_get_a_replica_per_site_up_to_three(sites: int, replicas: int) -> None:
    assert stream_replicas(sites) == replicas


# The control endpoint ------------------------------------------------------------------------


@pytest.fixture
def control() -> Any:
    server = ControlServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def main_loop(control: ControlServer) -> Any:
    """Start a thread standing in for `up`'s main loop, serving requests with a handler."""
    stop = threading.Event()

    def start(handle: Any) -> None:
        def loop() -> None:
            while not stop.is_set():
                control.serve_pending(handle)
                stop.wait(0.01)

        threading.Thread(target=loop, name="main-loop", daemon=True).start()

    yield start
    stop.set()


def test_a_site_action_is_carried_out_on_the_main_loop_and_its_lines_returned(
    control: ControlServer, main_loop: Any
) -> None:
    main_loop(lambda path: {"done": [f"{path[2]} {path[1]} on {threading.current_thread().name}"]})

    assert site_action(control.url, "s2", "fail") == ["fail s2 on main-loop"]


def test_a_refused_site_action_raises_with_ups_reason(
    control: ControlServer, main_loop: Any
) -> None:
    def refuse(path: tuple[str, ...]) -> dict[str, Any]:
        raise ControlError(HTTPStatus.NOT_FOUND, f"no site {path[1]!r} (sites: s1az1, s2)")

    main_loop(refuse)

    with pytest.raises(RuntimeError, match=r"^no site 's9' \(sites: s1az1, s2\)$"):
        site_action(control.url, "s9", "fail")


def test_an_unknown_path_is_404_without_reaching_the_main_loop(control: ControlServer) -> None:
    reply = httpx.post(f"{control.url}/backends/s2/stop", timeout=5)

    assert reply.status_code == 404
    assert reply.json() == {"error": "POST /sites/<cluster>/<action> only"}


def test_kgslb_site_against_a_single_site_up_says_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text(json.dumps({"supervisor_pid": 1, "children": {}}))

    result = subprocess.run(
        [sys.executable, "-m", "kgslb", "site", "fail", "s2", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"kgslb site fail: the `kgslb up` of {tmp_path} runs a single site: give each cluster "
        "of its stack file its own dns and nats (see examples/seed/kgslb.yaml)"
    )
