"""Poison on NATS: invalid JSON, a wrong schema version, unknown fields, a huge payload and a
gzip bomb reach every consumer. Each is logged with its subject or key and counted; stream
consumers also park it on kgslb.deadletter.*. No consumer gets stuck: the next good message
works. (Ordered consumers have no acks, so a poison message is never redelivered.)"""

from __future__ import annotations

import gzip
import json

from nats.aio.client import Client
from nats.aio.subscription import Subscription

from kgslb.up import load_stack_config, seed_messages
from shared import subjects, wire
from shared.models import (
    HealthMonitorSpec,
    MonitorKind,
    ObservedObject,
    PolicyKind,
    PolicyRef,
    PolicyState,
    PolicyStatus,
)
from shared.policies import API_GROUP, API_VERSION
from tests.integration.conftest import Services, eventually
from tests.integration.test_dns_protocol import HELLO, gslb
from tests.integration.test_dns_updates import ask, put_service, seeded
from tests.integration.test_health_service import health_records
from tests.integration.test_pipeline import SEED, publish_seed, serving_all_members
from tests.integration.test_watcher import GDPS, Kube, _status, call, gdp, metric, start_watcher
from tests.reliability.stack import addresses, ready

OTHER = "other.avi.iberia.local"


def poisons(valid: wire.WireModel, unknown_field: str = "surprise") -> dict[str, bytes]:
    """Five broken variants of `valid`, by what is wrong with them."""
    good = json.loads(wire.encode(valid))

    def envelope(**changes: object) -> bytes:
        return json.dumps({**good, **changes}).encode()

    return {
        "invalid-json": b'{"schema_version": 1, "kind": ',
        "wrong-schema-version": envelope(schema_version=2),
        "unknown-field": envelope(data={**good["data"], unknown_field: True}),
        "huge-payload": envelope(data={**good["data"], "padding": "x" * 900_000}),
        "gzip-bomb": gzip.compress(b" " * (65 << 20), compresslevel=9),
    }


async def reasons(inbox: Subscription, count: int) -> dict[str, str]:
    """The next `count` dead letters: original subject -> reason."""
    out = {}
    for _ in range(count):
        msg = await inbox.next_msg(timeout=10)
        assert msg.headers is not None
        out[msg.headers["Kgslb-Subject"]] = msg.headers["Kgslb-Reason"]
    return out


def logged(services: Services, name: str, *texts: str) -> bool:
    log = services.running[name].log_path.read_text()
    return all(text in log for text in texts)


def an_ingress() -> ObservedObject:
    return next(
        message
        for _, message in seed_messages(load_stack_config(SEED))
        if isinstance(message, ObservedObject)
    )


async def test_reconciler_parks_every_poison_event_and_plans_the_next_good_ones(
    nats_client: Client, services: Services
) -> None:
    services.start("reconciler", "reconciler")
    port = services.start_dns()
    js = nats_client.jetstream()
    bad = poisons(an_ingress())
    poisoned = {name: subjects.event_subject("s1az1", "Ingress", "default", name) for name in bad}
    inbox = await nats_client.subscribe(f"{subjects.DEADLETTER_PREFIX}.>")

    for name, subject in poisoned.items():
        await js.publish(subject, bad[name])
    await publish_seed(nats_client)

    await eventually(lambda: serving_all_members(port), timeout_seconds=20)
    parked = await reasons(inbox, len(bad))
    counted = await metric(services, "reconciler", "kgslb_bad_messages_total")
    assert set(parked) == set(poisoned.values())
    assert "schema_version 2" in parked[poisoned["wrong-schema-version"]]
    assert "surprise" in parked[poisoned["unknown-field"]]
    assert "expands beyond" in parked[poisoned["gzip-bomb"]]
    assert counted == len(bad)
    assert logged(services, "reconciler", *poisoned.values())


async def test_a_poison_event_met_again_after_a_restart_is_parked_only_once(
    nats_client: Client, services: Services
) -> None:
    js = nats_client.jetstream()
    subject = subjects.event_subject("s1az1", "Ingress", "default", "poison")
    await js.publish(subject, poisons(an_ingress())["invalid-json"])
    await publish_seed(nats_client)
    port = services.start_dns()

    for run in range(2):
        services.start("reconciler", "reconciler")
        await eventually(lambda: serving_all_members(port), timeout_seconds=20)
        await eventually(
            lambda: metric(services, "reconciler", "kgslb_bad_messages_total"), timeout_seconds=10
        )
        if run == 0:
            services.running["reconciler"].stop()

    # Each run met the poison, counted and logged it; the dead-letter stream holds it once.
    assert await metric(services, "reconciler", "kgslb_bad_messages_total") == 1
    assert logged(services, "reconciler", subject)
    parked = await js.stream_info(subjects.STREAM_DEADLETTER)
    assert parked.state.messages == 1


async def test_home_watcher_parks_every_poison_status_and_writes_the_next_good_one(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    start_watcher(services, kube, "s1az1", "--home", "true")
    await call(
        kube.custom("s1az1").create_namespaced_custom_object,
        API_GROUP, API_VERSION, "default", GDPS, gdp("good", {"s1az1": 6, "s2": 2}),
    )  # fmt: skip
    ref = PolicyRef(kind=PolicyKind.GLOBAL_DEPLOYMENT_POLICY, namespace="default", name="good")
    status = PolicyStatus(
        ref=ref, state=PolicyState.ACCEPTED, message="", observed_generation=1,
        accepted_generation=1,
    )  # fmt: skip
    bad = poisons(status)
    subject = subjects.status_subject(ref.kind, ref.namespace, ref.name)
    inbox = await nats_client.subscribe(f"{subjects.DEADLETTER_PREFIX}.>")
    js = nats_client.jetstream()

    parked = {}
    for name, data in bad.items():
        await js.publish(subject, data)
        parked[name] = (await reasons(inbox, 1))[subject]
    await js.publish(subject, wire.encode(status))

    async def accepted() -> bool:
        return (await _status(kube, "good")).get("state") == "Accepted"

    await eventually(accepted, timeout_seconds=20)
    counted = await metric(services, "watcher-s1az1", "kgslb_bad_messages_total")
    assert set(parked) == set(bad)
    assert counted == len(bad)
    assert logged(services, "watcher-s1az1", subject)


async def test_dns_ignores_every_poison_value_and_keeps_the_last_good_answer(
    nats_client: Client, services: Services
) -> None:
    port = await seeded(nats_client, services)
    kv = await nats_client.jetstream().key_value(subjects.KV_SERVICES)
    key = subjects.fqdn_key(HELLO)
    before = await addresses(port, HELLO)

    for data in poisons(gslb(HELLO)).values():
        await kv.put(key, data)
    await put_service(nats_client, gslb(OTHER))

    await eventually(lambda: _answers(port, OTHER), timeout_seconds=10)
    assert await addresses(port, HELLO) == before, (
        "a bad value keeps the previous version of the name"
    )
    assert logged(services, "dns", f"ignoring bad GslbService value for {key}")


async def _answers(port: int, name: str) -> bool:
    return bool((await ask(port, name)).answer)


async def test_dns_skips_a_stored_name_that_is_not_a_hostname_without_stalling_its_watch(
    nats_client: Client, services: Services
) -> None:
    port = await seeded(nats_client, services)
    kv = await nats_client.jetstream().key_value(subjects.KV_SERVICES)
    bad = gslb(f"{'x' * 70}.avi.iberia.local")
    third = "third.avi.iberia.local"

    await put_service(nats_client, bad)
    await put_service(nats_client, gslb(OTHER))
    await eventually(lambda: _answers(port, OTHER), timeout_seconds=10)
    await kv.delete(subjects.fqdn_key(bad.fqdn))
    await put_service(nats_client, gslb(third))
    await eventually(lambda: _answers(port, third), timeout_seconds=10)

    counted = await metric(services, "dns", "kgslb_dns_bad_values_total", kind="GslbService")
    log = services.running["dns"].log_path.read_text()
    assert counted == 1
    assert log.count("ignoring GslbService value for") == 1
    assert "label 1 is 70 octets (max 63)" in log
    assert "interrupted" not in log, "a bad name never restarts the watch"


async def test_health_counts_every_poison_value_and_probes_the_next_good_service(
    nats_client: Client, services: Services
) -> None:
    services.start("health", "health")
    await eventually(lambda: ready(services, "health"), timeout_seconds=20)
    kv = await nats_client.jetstream().key_value(subjects.KV_SERVICES)
    bad = poisons(gslb(HELLO))
    unprobed = HealthMonitorSpec(kind=MonitorKind.NONE)

    for data in bad.values():
        await kv.put(subjects.fqdn_key(HELLO), data)
    await kv.put(subjects.fqdn_key(OTHER), wire.encode(gslb(OTHER, health_monitor=unprobed)))

    async def probed() -> bool:
        records = await health_records(nats_client)
        return subjects.member_key(OTHER, "127.10.25.46") in records

    await eventually(probed, timeout_seconds=20)
    counted = await metric(services, "health", "kgslb_health_bad_values_total")
    assert counted == len(bad)
    assert logged(services, "health", f"ignoring bad kgslb_services value for {HELLO}")
