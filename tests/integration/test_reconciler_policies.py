"""The reconciler at runtime, over a real nats-server with real reconciler and DNS processes:
the seed's GDP edits change the DNS ratio, an invalid edit is Rejected and changes nothing
(not even across a restart), refreshInterval repairs KV edited by hand, and one Ingress change
among many services writes one key."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import httpx
import yaml
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from shared import subjects, wire
from shared.follow import read_values
from shared.models import (
    GslbService,
    ObjectKind,
    ObjectRef,
    ObservedObject,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    PolicyStatus,
    SyncMarker,
)
from shared.subjects import sync_subject
from tests.integration.conftest import Services, eventually

SEED_DIR = Path(__file__).resolve().parents[2] / "examples" / "seed"
HELLO = "hello.avi.iberia.local"
VIPS = {"s1az1": "127.10.25.46", "s1az2": "127.10.26.40", "s2": "127.10.23.40"}
GDP = PolicyRef(kind=PolicyKind.GLOBAL_DEPLOYMENT_POLICY, namespace="avi-system", name="global-gdp")
CONFIG = PolicyRef(kind=PolicyKind.GSLB_CONFIG, namespace="avi-system", name="gc-1")
FAST_LEASE = {"KGSLB_LEASE_TTL_SECONDS": "1"}


def seed_spec(file: str, kind: PolicyKind) -> dict[str, Any]:
    """The spec of the seed's custom resource of `kind` (examples/seed/*.yaml)."""
    documents = yaml.safe_load_all((SEED_DIR / file).read_text())
    spec: dict[str, Any] = next(d for d in documents if d and d["kind"] == kind.value)["spec"]
    return spec


SEED_CONFIG = seed_spec("gslbconfig.yaml", PolicyKind.GSLB_CONFIG)
SEED_GDP = seed_spec("global-gdp.yaml", PolicyKind.GLOBAL_DEPLOYMENT_POLICY)


def hello(cluster: str) -> ObservedObject:
    return ObservedObject(
        ref=ObjectRef(cluster=cluster, kind=ObjectKind.INGRESS, namespace="default", name="hello"),
        resource_version="1",
        labels={"app": "gslb"},
        hosts=[HELLO],
        vips=[VIPS[cluster]],
    )


async def publish_policies(nc: Client) -> None:
    """The seed's GSLBConfig gc-1 and GDP global-gdp, as the home watcher publishes them."""
    await publish_policy(nc, CONFIG, SEED_CONFIG, generation=1)
    await publish_policy(nc, GDP, SEED_GDP, generation=1)


async def publish_seed(nc: Client) -> None:
    """The seed's policies and its `hello` Ingress in each of the three clusters."""
    await publish_policies(nc)
    for cluster in VIPS:
        await nc.jetstream().publish(hello(cluster).ref.subject, wire.encode(hello(cluster)))
    await publish_markers(nc, [hello(cluster).ref for cluster in VIPS])


async def publish_markers(nc: Client, present: list[ObjectRef]) -> None:
    """What each watcher publishes after its first list: which objects exist (the reconciler
    plans names once every member cluster's first list is in)."""
    for cluster in VIPS:
        shorts = [ref.short for ref in present if ref.cluster == cluster]
        marker = SyncMarker(cluster=cluster, kinds=list(ObjectKind), present=shorts)
        await nc.jetstream().publish(sync_subject(cluster), wire.encode(marker))


def split(s1az1: int, s1az2: int, s2: int) -> dict[str, Any]:
    return {
        **SEED_GDP,
        "trafficSplit": [
            {"cluster": "s1az1", "weight": s1az1},
            {"cluster": "s1az2", "weight": s1az2},
            {"cluster": "s2", "weight": s2},
        ],
    }


async def publish_policy(nc: Client, ref: PolicyRef, spec: dict[str, Any], generation: int) -> None:
    message = PolicyObject(ref=ref, spec=spec, generation=generation)
    await nc.jetstream().publish(ref.subject, wire.encode(message))


async def answers(port: int, count: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        query = dns.message.make_query(HELLO, "A")
        reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=1)
        seen.update(rr.address for rrset in reply.answer for rr in rrset)
    return seen


def ratio(s1az1: int, s1az2: int, s2: int) -> Counter[str]:
    return Counter({VIPS["s1az1"]: s1az1, VIPS["s1az2"]: s1az2, VIPS["s2"]: s2})


async def answering(port: int, expected: Counter[str]) -> bool:
    """The DNS answers exactly `expected` over one window of sum(weights) queries."""
    return await answers(port, sum(expected.values())) == expected


async def ops_get(services: Services, name: str, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{services.ops_ports[name]}{path}")


async def metric(services: Services, name: str, metric_name: str, **labels: str) -> float:
    text = (await ops_get(services, name, "/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(metric_name):
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{")[0] == metric_name and all(
            f'{k}="{v}"' in series for k, v in labels.items()
        ):
            total += float(value)
    return total


async def leading(services: Services, name: str) -> bool:
    response = await ops_get(services, name, "/readyz")
    return response.status_code == 200 and "(leader)" in response.text


async def status_of(nc: Client, ref: PolicyRef) -> PolicyStatus:
    subject = subjects.status_subject(ref.kind, ref.namespace, ref.name)
    msg = await nc.jetstream().get_last_msg(subjects.STREAM_STATUS, subject)
    return wire.decode(msg.data, PolicyStatus)


async def start_seed(nc: Client, services: Services, name: str = "reconciler") -> int:
    services.start(name, "reconciler", env=FAST_LEASE)
    port = services.start_dns()
    await publish_seed(nc)
    await eventually(lambda: answering(port, ratio(6, 4, 2)), timeout_seconds=20)
    return port


async def test_seed_gdp_edits_change_the_dns_ratio_at_runtime(
    nats_client: Client, services: Services
) -> None:
    port = await start_seed(nats_client, services)

    await publish_policy(nats_client, GDP, split(6, 3, 1), generation=2)
    await eventually(lambda: answering(port, ratio(6, 3, 1)), timeout_seconds=10)

    await publish_policy(nats_client, GDP, split(20, 20, 1), generation=3)
    await eventually(lambda: answering(port, ratio(20, 20, 1)), timeout_seconds=10)

    status = await status_of(nats_client, GDP)
    assert (status.state, status.observed_generation) == ("Accepted", 3)


async def test_invalid_gdp_edit_is_rejected_with_a_message_and_the_old_split_stays(
    nats_client: Client, services: Services
) -> None:
    port = await start_seed(nats_client, services)
    kv = await nats_client.jetstream().key_value(subjects.KV_SERVICES)
    before = await kv.get(subjects.fqdn_key(HELLO))

    await publish_policy(nats_client, GDP, split(6, -5, 2), generation=2)

    async def rejected() -> PolicyStatus | None:
        status = await status_of(nats_client, GDP)
        return status if status.observed_generation == 2 else None

    status = await eventually(rejected)
    assert status.state == "Rejected"
    assert "spec.trafficSplit[1].weight = -5: Input should be greater than or equal to 0" in (
        status.message
    )
    assert "(keeping generation 1)" in status.message
    assert await answers(port, 12) == ratio(6, 4, 2)
    assert (await kv.get(subjects.fqdn_key(HELLO))).revision == before.revision


async def test_a_rejected_edit_keeps_the_old_split_across_a_reconciler_restart(
    nats_client: Client, services: Services
) -> None:
    port = await start_seed(nats_client, services)
    await publish_policy(nats_client, GDP, split(6, -5, 2), generation=2)
    await eventually(lambda: _observed_generation(nats_client, 2))
    kv = await nats_client.jetstream().key_value(subjects.KV_SERVICES)
    before = await kv.get(subjects.fqdn_key(HELLO))

    # The stream now holds only generation 2: a new reconciler learns generation 1 from the
    # status the old one published.
    services.running["reconciler"].kill9()
    services.start("reconciler-2", "reconciler", env=FAST_LEASE)
    await eventually(lambda: leading(services, "reconciler-2"), timeout_seconds=20)

    assert (await kv.get(subjects.fqdn_key(HELLO))).revision == before.revision
    assert await answers(port, 12) == ratio(6, 4, 2)
    status = await status_of(nats_client, GDP)
    assert (status.state, status.accepted_generation) == ("Rejected", 1)


async def _observed_generation(nc: Client, generation: int) -> bool:
    return (await status_of(nc, GDP)).observed_generation == generation


async def test_refresh_interval_restores_kv_keys_edited_or_deleted_by_hand(
    nats_client: Client, services: Services
) -> None:
    await start_seed(nats_client, services)
    await publish_policy(nats_client, CONFIG, {**SEED_CONFIG, "refreshInterval": 1}, generation=2)
    await eventually(lambda: _config_generation(nats_client, 2))
    kv = await nats_client.jetstream().key_value(subjects.KV_SERVICES)
    key = subjects.fqdn_key(HELLO)
    good = (await kv.get(key)).value

    await kv.delete(key)
    await eventually(lambda: _value_is(kv, key, good), timeout_seconds=10)

    tampered = wire.decode(good or b"", GslbService).model_copy(update={"ttl_seconds": 3600})
    await kv.put(key, wire.encode(tampered))
    await eventually(lambda: _value_is(kv, key, good), timeout_seconds=10)

    assert await metric(services, "reconciler", "kgslb_reconciler_drift_repairs_total") >= 2


async def test_gslbconfig_log_level_applies_at_runtime(
    nats_client: Client, services: Services
) -> None:
    await start_seed(nats_client, services)
    log_path = services.running["reconciler"].log_path
    assert '"level": "DEBUG"' not in log_path.read_text()

    await publish_policy(nats_client, CONFIG, {**SEED_CONFIG, "logLevel": "DEBUG"}, generation=2)
    await publish_policy(nats_client, GDP, split(6, 3, 1), generation=2)

    await eventually(lambda: '"level": "DEBUG"' in log_path.read_text())


async def _config_generation(nc: Client, generation: int) -> bool:
    return (await status_of(nc, CONFIG)).observed_generation == generation


async def _value_is(kv: Any, key: str, value: bytes | None) -> bool:
    try:
        return bool((await kv.get(key)).value == value)
    except KeyNotFoundError:
        return False


async def test_one_ingress_change_among_many_services_writes_one_key(
    nats_client: Client, services: Services
) -> None:
    count = 400
    services.start("reconciler", "reconciler", env=FAST_LEASE)
    js = nats_client.jetstream()
    await publish_policies(nats_client)
    refs = []
    for index in range(count):
        for cluster in VIPS:
            await js.publish(
                *_app(
                    cluster,
                    index,
                    f"127.{20 + list(VIPS).index(cluster)}.{index // 200}.{index % 200 + 1}",
                )
            )
            refs.append(_app_ref(cluster, index))
    await publish_markers(nats_client, refs)
    kv = await js.key_value(subjects.KV_SERVICES)
    await eventually(lambda: _key_count(js, count), timeout_seconds=30)
    await eventually(WritesSettled(services), interval_seconds=0.3)
    kv_stream = f"KV_{subjects.KV_SERVICES}"
    writes_before = await metric(services, "reconciler", "kgslb_reconciler_kv_writes_total")
    seq_before = (await js.stream_info(kv_stream)).state.last_seq

    await js.publish(*_app("s2", 123, "127.99.0.123"))
    changed = subjects.fqdn_key("app123.avi.iberia.local")
    await eventually(lambda: _has_member(kv, changed, "127.99.0.123"))
    await eventually(WritesSettled(services), interval_seconds=0.3)

    assert (
        await metric(services, "reconciler", "kgslb_reconciler_kv_writes_total") - writes_before
        == 1
    )
    assert (await js.stream_info(kv_stream)).state.last_seq - seq_before == 1


def _app_ref(cluster: str, index: int) -> ObjectRef:
    return ObjectRef(
        cluster=cluster, kind=ObjectKind.INGRESS, namespace="default", name=f"app{index}"
    )


def _app(cluster: str, index: int, vip: str) -> tuple[str, bytes]:
    ref = _app_ref(cluster, index)
    message = ObservedObject(
        ref=ref,
        resource_version="1",
        labels={"app": "gslb"},
        hosts=[f"app{index}.avi.iberia.local"],
        vips=[vip],
    )
    return ref.subject, wire.encode(message)


async def _key_count(js: Any, count: int) -> bool:
    try:
        return len(await read_values(js, subjects.KV_SERVICES)) >= count
    except Exception:
        return False


class WritesSettled:
    """Polled: true once the writes counter stays put between two polls."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.last: float | None = None

    async def __call__(self) -> bool:
        writes = await metric(self.services, "reconciler", "kgslb_reconciler_kv_writes_total")
        settled, self.last = writes == self.last, writes
        return settled


async def _has_member(kv: Any, key: str, ip: str) -> bool:
    service = wire.decode((await kv.get(key)).value or b"", GslbService)
    return ip in {m.ip for m in service.all_members()}
