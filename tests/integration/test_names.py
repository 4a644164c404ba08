"""Names that cannot be GSLB services, end to end (simulator -> home watcher -> reconciler ->
DNS): an Ingress host with a 70-octet label is never planned nor stored, the GDP's status
says why, the DNS keeps answering the other names, and deleting the Ingress leaves no trace."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client

from kgslb.up import load_stack_config
from shared import subjects
from shared.follow import read_values
from shared.policies import API_GROUP, API_VERSION
from tests.integration.conftest import Services, eventually
from tests.integration.test_watcher import (
    GDPS,
    VIPS,
    Kube,
    _status,
    call,
    gdp,
    ingress,
    kube,
    metric,
    start_watcher,
)
from tests.integration.test_watcher_pipeline import SEED, answering

__all__ = ["kube"]  # the fixture, shared with test_watcher

BAD_HOST = f"{'x' * 70}.avi.iberia.local"
ACCEPTED = "accepted: selects 1 GSLB service(s)"
NOT_PLANNED = (
    f"Ingress s1az1/default/bad: host '{'x' * 37}...' label 1 is 70 octets (max 63); not planned"
)


async def create_cr(kube: Kube, plural: str, body: dict[str, Any]) -> None:
    await call(
        kube.custom("s1az1").create_namespaced_custom_object,
        API_GROUP, API_VERSION, "default", plural, body,
    )  # fmt: skip


def seed_gslb_config() -> dict[str, Any]:
    config = load_stack_config(SEED / "kgslb.yaml").gslb_config
    assert config is not None
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "GSLBConfig",
        "metadata": {"name": "gc-1", "namespace": "default"},
        "spec": dict(config.spec),
    }


async def gdp_message(kube: Kube, expected: str) -> bool:
    return (await _status(kube, "global-gdp")).get("message") == expected


async def service_keys(nc: Client) -> list[str]:
    return list(await read_values(nc.jetstream(), subjects.KV_SERVICES))


async def test_a_70_octet_label_host_is_reported_never_stored_and_leaves_no_trace(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    await create_cr(kube, "gslbconfigs", seed_gslb_config())
    await create_cr(kube, GDPS, gdp("global-gdp", {"s1az1": 1}))
    networking = kube.networking("s1az1")
    await call(networking.create_namespaced_ingress, "default", ingress("hello"))
    await call(networking.create_namespaced_ingress, "default", ingress("bad", host=BAD_HOST))
    watcher = start_watcher(services, kube, "s1az1", "--home", "true")
    services.start("reconciler", "reconciler")
    port = services.start_dns()

    await eventually(lambda: answering(port, {VIPS["s1az1"]}), timeout_seconds=20)
    await eventually(lambda: gdp_message(kube, f"{ACCEPTED}; {NOT_PLANNED}"), timeout_seconds=20)
    stored_while_there = await service_keys(nats_client)
    edge = await metric(
        services, watcher, "kgslb_watcher_invalid_hosts_total", reason="label_too_long"
    )

    await call(networking.delete_namespaced_ingress, "bad", "default")
    await eventually(lambda: gdp_message(kube, ACCEPTED), timeout_seconds=20)

    assert stored_while_there == [subjects.fqdn_key("hello.avi.iberia.local")]
    assert await service_keys(nats_client) == stored_while_there
    assert edge == 1, "the watcher counts the bad host where it enters"
    assert await answering(port, {VIPS["s1az1"]})
    reconciler_log = services.running["reconciler"].log_path.read_text()
    assert reconciler_log.count("label 1 is 70 octets (max 63)") == 1, "logged once"
    assert "interrupted" not in services.running["dns"].log_path.read_text()
