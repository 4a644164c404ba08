"""Drain, status and events on a real `kgslb up` stack, driven as an operator would: the
Kubernetes client against the simulator (as `kubectl`), `kgslb backend stop|start`, and `dig`
-like queries of the stack's DNS.

- A trafficSplit weight of 0 takes a cluster out of the answers while health keeps probing it
  (the drained member still goes down and up with its backend); weight 2 brings it back.
- The GDP's `status.serving` lists hello's members and which serve; stopping s2's backend shows
  s2 Down there, with a Failover Event in avi-system, and starting it a Recovered one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families

from kgslb.embedded import free_port
from tests.integration.test_up import (
    FAST_MONITOR,
    SEED_VIPS,
    answers,
    every_seed_member_up,
    stack_file,
    start_up,
    stop_up,
    wait_until,
)

HELLO = "hello.avi.iberia.local"
S2 = "127.10.23.40"
GROUP, VERSION, PLURAL = "kgslb.io", "v1alpha1", "globaldeploymentpolicies"
BOUND_SECONDS = FAST_MONITOR["failuresToDown"] * FAST_MONITOR["intervalSeconds"] + 2  # type: ignore[operator]


class Stack:
    def __init__(self, state: Path, dns_port: int, nats_port: int) -> None:
        self.state = state
        self.dns_port = dns_port
        self.nats_port = nats_port
        api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(state / "kubeconfig"), context="s1az1", persist_config=False
        )
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def backend(self, action: str, cluster: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "kgslb", "backend", "--state-dir", str(self.state), action,
             cluster],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    def gdp(self) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, "avi-system", PLURAL, "global-gdp"
        )

    def split(self, s2_weight: int) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, "avi-system", PLURAL, "global-gdp",
            {"spec": {"trafficSplit": [
                {"cluster": "s1az1", "weight": 6},
                {"cluster": "s1az2", "weight": 4},
                {"cluster": "s2", "weight": s2_weight},
            ]}},
        )  # fmt: skip

    def member_states(self) -> dict[str, tuple[str, str]]:
        """cluster -> (health, state) of hello's members in the GDP's status.serving."""
        for entry in (self.gdp().get("status") or {}).get("serving") or []:
            if entry["fqdn"] == HELLO:
                return {m["cluster"]: (m["health"], m["state"]) for m in entry["members"]}
        return {}

    def serving_gauge(self) -> dict[str, float]:
        """cluster -> `kgslb_watcher_serving_members{fqdn=hello}` of the watchers (only the
        active home's exports any)."""
        ops: dict[str, str] = json.loads((self.state / "stack.json").read_text())["ops"]
        out: dict[str, float] = {}
        for name, url in ops.items():
            if not name.startswith("watcher"):
                continue
            for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
                for sample in family.samples:
                    if (
                        sample.name == "kgslb_watcher_serving_members"
                        and sample.labels["fqdn"] == HELLO
                    ):
                        out[sample.labels["cluster"]] = sample.value
        return out

    def events(self, reason: str) -> list[str]:
        return [
            event.message
            for event in self.core.list_namespaced_event("avi-system").items
            if event.reason == reason and event.involved_object.name == "global-gdp"
        ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp_path = tmp_path_factory.mktemp("drain")
    dns_port, nats_port = free_port(), free_port()
    process = start_up(stack_file(tmp_path, dns_port, nats_port, FAST_MONITOR), tmp_path / "state")
    try:
        running = Stack(tmp_path / "state", dns_port, nats_port)
        wait_until(lambda: every_seed_member_up(nats_port), 60)
        wait_until(lambda: answers(dns_port, 12) == SEED_VIPS, 30)
        yield running
    finally:
        stop_up(process)


def timed(check: Callable[[], bool], timeout_seconds: float) -> float:
    """Seconds until `check` holds (polled every 50 ms); fails after `timeout_seconds`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_seconds:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_seconds} s")


def test_weight_0_drains_s2_from_the_answers_while_health_still_probes_it(stack: Stack) -> None:
    stack.split(0)
    drained_in = timed(lambda: S2 not in answers(stack.dns_port, 12), 10)
    print(f"weight 0: s2 out of the answers {drained_in:.2f} s after the patch")
    assert answers(stack.dns_port, 24) == SEED_VIPS - {S2}
    wait_until(lambda: stack.member_states().get("s2", ("", ""))[1] == "Drained", 10)

    # Still probed: its backend stopping and starting moves its health, not its answers.
    stack.backend("stop", "s2")
    wait_until(lambda: stack.member_states()["s2"] == ("down", "Drained"), 15)
    stack.backend("start", "s2")
    wait_until(lambda: stack.member_states()["s2"] == ("up", "Drained"), 15)
    assert S2 not in answers(stack.dns_port, 24)

    stack.split(2)
    restored_in = timed(lambda: S2 in answers(stack.dns_port, 12), 10)
    print(f"weight 2: s2 back in the answers {restored_in:.2f} s after the patch")
    wait_until(lambda: stack.member_states().get("s2") == ("up", "Serving"), 10)
    assert any("s2 127.10.23.40 drained" in m for m in stack.events("Drained"))


def test_status_shows_serving_members_and_events_tell_the_failover_and_recovery(
    stack: Stack,
) -> None:
    wait_until(
        lambda: stack.member_states() == {c: ("up", "Serving") for c in ("s1az1", "s1az2", "s2")},
        15,
    )
    serving = next(e for e in stack.gdp()["status"]["serving"] if e["fqdn"] == HELLO)
    assert sorted(serving["addresses"]) == sorted(SEED_VIPS)
    assert stack.serving_gauge() == {"s1az1": 1, "s1az2": 1, "s2": 1}

    stack.backend("stop", "s2")
    down_in = timed(lambda: stack.member_states().get("s2") == ("down", "Down"), 20)
    print(f"s2 Down in the GDP status {down_in:.2f} s after its backend stopped "
          f"(bound {BOUND_SECONDS:g} s)")  # fmt: skip
    assert stack.serving_gauge() == {"s1az1": 1, "s1az2": 1, "s2": 0}
    wait_until(lambda: stack.events("Failover"), 10)
    (failover,) = [m for m in stack.events("Failover") if S2 in m]
    assert failover == (
        f"{HELLO}: s2 {S2} is down; serving now: s1az1 127.10.25.46, s1az2 127.10.26.40"
    )

    stack.backend("start", "s2")
    up_in = timed(lambda: stack.member_states().get("s2") == ("up", "Serving"), 20)
    print(f"s2 Serving again {up_in:.2f} s after its backend started")
    wait_until(lambda: any(S2 in m for m in stack.events("Recovered")), 10)


def test_manual_resume_keeps_a_recovered_member_out_until_an_operator_resumes_it(
    stack: Stack,
) -> None:
    resume = [sys.executable, "-m", "kgslb", "member", "resume", HELLO, "s2",
              "--nats-url", f"nats://127.0.0.1:{stack.nats_port}"]  # fmt: skip
    patch = stack.custom.patch_namespaced_custom_object
    patch(GROUP, VERSION, "avi-system", PLURAL, "global-gdp", {"spec": {"manualResume": True}})
    try:
        wait_until(lambda: stack.member_states().get("s2") == ("up", "Serving"), 15)
        nothing = subprocess.run(resume, capture_output=True, text=True, timeout=30)
        assert nothing.returncode == 1
        assert f"nothing is held for {HELLO} in cluster s2" in nothing.stderr

        stack.backend("stop", "s2")
        wait_until(lambda: stack.member_states().get("s2") == ("down", "Held"), 20)
        stack.backend("start", "s2")
        wait_until(lambda: stack.member_states().get("s2") == ("up", "Held"), 20)
        assert S2 not in answers(stack.dns_port, 24), "healthy, but held"
        told = stack.events("Failover") + stack.events("Held")
        assert any(f"held until `kgslb member resume {HELLO} s2`" in m for m in told)

        done = subprocess.run(resume, capture_output=True, text=True, timeout=30, check=True)
        assert done.stdout.startswith(f"resumed {HELLO} s2 {S2} (held since ")
        back_in = timed(lambda: S2 in answers(stack.dns_port, 12), 10)
        print(f"manualResume: s2 answered {back_in:.2f} s after kgslb member resume")
        wait_until(lambda: stack.member_states().get("s2") == ("up", "Serving"), 10)
        wait_until(lambda: any(S2 in m for m in stack.events("Resumed")), 10)
    finally:
        patch(GROUP, VERSION, "avi-system", PLURAL, "global-gdp", {"spec": {"manualResume": None}})
