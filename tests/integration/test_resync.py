"""`kgslb.resync`: a watcher asked for a resync publishes everything it holds again, the home
watcher its policies too, although it remembers having published them (the defect: after a
lost store a relist "listed 1 GSLBConfig ... published 0")."""

from __future__ import annotations

from nats.aio.client import Client

from shared import subjects, wire
from shared.models import PolicyKind, PolicyRef, ResyncRequest, utcnow
from shared.policies import API_GROUP, API_VERSION
from tests.integration.conftest import Services, eventually
from tests.integration.test_names import seed_gslb_config
from tests.integration.test_watcher import (
    GDPS,
    Kube,
    call,
    gdp,
    gdp_ref,
    ingress,
    ingress_ref,
    kube,
    metric,
    observed,
    policy,
    start_watcher,
)

__all__ = ["kube"]  # the fixture, shared with test_watcher


async def everything_published(nc: Client) -> bool:
    config = PolicyRef(kind=PolicyKind.GSLB_CONFIG, namespace="default", name="gc-1")
    return (
        await policy(nc, gdp_ref("global-gdp")) is not None
        and await policy(nc, config) is not None
        and await observed(nc, ingress_ref("hello")) is not None
    )


async def test_a_resync_request_makes_the_home_watcher_publish_everything_again(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    custom = kube.custom("s1az1")
    for plural, body in (("gslbconfigs", seed_gslb_config()), (GDPS, gdp("global-gdp", {}))):
        await call(
            custom.create_namespaced_custom_object, API_GROUP, API_VERSION, "default", plural, body
        )
    await call(kube.networking("s1az1").create_namespaced_ingress, "default", ingress("hello"))
    watcher = start_watcher(services, kube, "s1az1", "--home", "true")
    await eventually(lambda: everything_published(nats_client), timeout_seconds=20)

    # The stream loses what the watcher published; the watcher does not know.
    await nats_client.jetstream().purge_stream(subjects.STREAM_EVENTS)
    assert not await everything_published(nats_client)

    request = ResyncRequest(requested_by="test", reason="store restored", at=utcnow())
    await nats_client.publish(subjects.RESYNC_SUBJECT, wire.encode(request))

    await eventually(lambda: everything_published(nats_client), timeout_seconds=20)
    assert await metric(services, watcher, "kgslb_watcher_resyncs_total", cluster="s1az1") == 1
    log = services.running[watcher].log_path.read_text()
    assert "test asks for a resync (store restored): publishing everything again" in log


async def test_a_malformed_resync_request_is_dead_lettered_and_a_good_one_still_works(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    """The FastStream handler decodes as the nats-py ones do: what does not decode is parked
    with its reason, not a resync, and the subscription stays."""
    await call(kube.networking("s1az1").create_namespaced_ingress, "default", ingress("hello"))
    watcher = start_watcher(services, kube, "s1az1")
    await eventually(lambda: observed(nats_client, ingress_ref("hello")), timeout_seconds=20)
    dead = await nats_client.subscribe(f"{subjects.DEADLETTER_PREFIX}.watcher.>")
    await nats_client.flush()

    await nats_client.publish(subjects.RESYNC_SUBJECT, b'{"schema_version": 1, "kind": "Nope"}')

    parked = await dead.next_msg(timeout=10)
    assert parked.headers is not None
    assert parked.headers["Kgslb-Subject"] == subjects.RESYNC_SUBJECT
    assert "ResyncRequest" in parked.headers["Kgslb-Reason"]
    assert await metric(services, watcher, "kgslb_watcher_resyncs_total", cluster="s1az1") == 0

    request = ResyncRequest(requested_by="test", reason="after a bad one", at=utcnow())
    await nats_client.publish(subjects.RESYNC_SUBJECT, wire.encode(request))

    async def resynced() -> bool:
        count = await metric(services, watcher, "kgslb_watcher_resyncs_total", cluster="s1az1")
        return count == 1

    await eventually(resynced, timeout_seconds=20)
