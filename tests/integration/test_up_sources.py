"""`kgslb up` with a Gateway API route applied with kubectl, as the issue's acceptance says:
a Gateway and an HTTPRoute (label app: gslb, hostname shop.avi.iberia.local) applied in s2 are
answered with the Gateway's address within 5 s, and withdrawn within 5 s of the delete."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from kgslb.embedded import free_port
from tests.integration.test_up import query, stack_file, start_up, stop_up

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = Path(sys.executable).parent / "kubectl"
MANIFEST = ROOT / "examples" / "sources" / "shop-gateway.yaml"
SHOP = "shop.avi.iberia.local"
WITHIN_SECONDS = 5.0


def kubectl(state: Path, *args: str) -> str:
    command = [str(KUBECTL), "--kubeconfig", str(state / "kubeconfig"), "--context", "s2", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def shop(port: int) -> set[str]:
    return {rr.address for rrset in query(port, SHOP).answer for rr in rrset}


def within(check: object, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if check():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


@pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl comes with the dev extras")
def test_kubectl_apply_of_a_gateway_and_httproute_is_answered_and_its_delete_withdrawn(
    tmp_path: Path,
) -> None:
    dns_port, nats_port = free_port(), free_port()
    state = tmp_path / "state"
    process = start_up(stack_file(tmp_path, dns_port, nats_port), state)
    try:
        within(lambda: query(dns_port, "hello.avi.iberia.local").answer, 30)
        started = time.monotonic()
        applied = kubectl(state, "apply", "-f", str(MANIFEST))
        assert "httproute.gateway.networking.k8s.io/shop created" in applied
        address = kubectl(
            state, "get", "gateway", "shop", "-o", "jsonpath={.status.addresses[0].value}"
        )
        within(lambda: shop(dns_port) == {address}, WITHIN_SECONDS - (time.monotonic() - started))
        answered = time.monotonic() - started

        started = time.monotonic()
        kubectl(state, "delete", "httproute", "shop")
        within(lambda: shop(dns_port) == set(), WITHIN_SECONDS - (time.monotonic() - started))
        withdrawn = time.monotonic() - started
        print(f"\nanswered {answered:.2f} s after apply, withdrawn {withdrawn:.2f} s after delete")
    finally:
        stop_up(process)
