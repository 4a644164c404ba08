"""The thin pipeline, end to end over a real nats-server: observed `hello` Ingresses in three
clusters -> reconciler -> KV -> DNS answers in the GDP's ratio."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dns.asyncquery
import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import httpx
from nats.aio.client import Client

from kgslb.up import load_stack_config, seed_messages
from shared import subjects, wire
from shared.models import PolicyKind, PolicyObject
from tests.integration.conftest import Services, eventually

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "kgslb.yaml"
HELLO = "hello.avi.iberia.local"
GDP = PolicyKind.GLOBAL_DEPLOYMENT_POLICY
SEED_SHARES = {"127.10.25.46": 6, "127.10.26.40": 4, "127.10.23.40": 2}


async def publish_seed(nc: Client) -> None:
    js = nc.jetstream()
    for subject, message in seed_messages(load_stack_config(SEED)):
        await js.publish(subject, wire.encode(message))


async def resolve(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=1)


async def answers(port: int, count: int, name: str = HELLO) -> list[str]:
    out = []
    for _ in range(count):
        reply = await resolve(port, name)
        out.extend(rr.address for rrset in reply.answer for rr in rrset)
    return out


async def serving_all_members(port: int) -> bool:
    return set(await answers(port, 12)) == set(SEED_SHARES)


async def test_twelve_answers_follow_the_seed_split_6_4_2(
    nats_client: Client, services: Services
) -> None:
    services.start("reconciler", "reconciler")
    services.start("health", "health")
    port = services.start_dns()
    await publish_seed(nats_client)
    await eventually(lambda: serving_all_members(port), timeout_seconds=20)

    twelve = await answers(port, 12)

    assert Counter(twelve) == Counter(SEED_SHARES)


async def test_zone_answers_soa_and_static_record_authoritatively(
    nats_client: Client, services: Services
) -> None:
    services.start("reconciler", "reconciler")
    port = services.start_dns()
    await publish_seed(nats_client)
    await eventually(lambda: serving_all_members(port), timeout_seconds=20)

    soa = await resolve(port, "avi.iberia.local", "SOA")
    static = await resolve(port, "test.avi.iberia.local")

    assert soa.flags & dns.flags.AA
    assert soa.answer[0][0].mname.to_text() == "g-dns.iberia.local."
    assert [rr.address for rr in static.answer[0]] == ["10.10.24.200"]


async def test_restarted_reconciler_rebuilds_from_the_stream_and_answers_do_not_change(
    nats_client: Client, services: Services
) -> None:
    reconciler = services.start("reconciler", "reconciler")
    port = services.start_dns()
    await publish_seed(nats_client)
    await eventually(lambda: serving_all_members(port), timeout_seconds=20)
    kv = await nats_client.jetstream().key_value(subjects.KV_SERVICES)
    before = await kv.get(subjects.fqdn_key(HELLO))

    reconciler.kill9()
    during = Counter(await answers(port, 12))
    services.start("reconciler", "reconciler")
    await eventually(lambda: _ready(services.ops_ports["reconciler"]), timeout_seconds=20)

    after = await kv.get(subjects.fqdn_key(HELLO))
    assert during == Counter(SEED_SHARES)
    assert after.revision == before.revision, "a restarted reconciler must not rewrite KV"
    assert Counter(await answers(port, 12)) == Counter(SEED_SHARES)


async def _ready(ops_port: int) -> bool:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{ops_port}/readyz")).status_code == 200


async def _metric(ops_port: int, name: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{ops_port}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def test_malformed_event_is_counted_dead_lettered_and_the_reconciler_keeps_working(
    nats_client: Client, services: Services
) -> None:
    services.start("reconciler", "reconciler")
    port = services.start_dns()
    js = nats_client.jetstream()
    bad_subject = subjects.event_subject("s1az1", "Ingress", "default", "broken")
    dead = await nats_client.subscribe(f"{subjects.DEADLETTER_PREFIX}.>")

    await js.publish(bad_subject, b"{not json")
    await publish_seed(nats_client)

    await eventually(lambda: serving_all_members(port), timeout_seconds=20)
    ops = services.ops_ports["reconciler"]
    assert await _metric(ops, "kgslb_bad_messages_total") == 1
    parked = await dead.next_msg(timeout=5)
    assert parked.headers is not None and parked.headers["Kgslb-Subject"] == bad_subject
    assert b"not JSON" in parked.headers["Kgslb-Reason"].encode()


async def test_aaaa_for_a_v4_only_name_is_nodata_with_soa(
    nats_client: Client, services: Services
) -> None:
    services.start("reconciler", "reconciler")
    port = services.start_dns()
    await publish_seed(nats_client)
    await eventually(lambda: serving_all_members(port), timeout_seconds=20)

    reply = await resolve(port, HELLO, "AAAA")

    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    assert reply.authority[0].rdtype == dns.rdatatype.SOA


async def test_tombstone_removes_a_member(nats_client: Client, services: Services) -> None:
    from shared.models import ObjectKind, ObjectRef, Tombstone

    services.start("reconciler", "reconciler")
    port = services.start_dns()
    await publish_seed(nats_client)
    await eventually(lambda: serving_all_members(port), timeout_seconds=20)
    gone = ObjectRef(cluster="s2", kind=ObjectKind.INGRESS, namespace="default", name="hello")

    await nats_client.jetstream().publish(gone.subject, wire.encode(Tombstone(ref=gone)))

    async def s2_gone() -> bool:
        return "127.10.23.40" not in await answers(port, 12)

    await eventually(s2_gone)
    assert Counter(await answers(port, 10)) == Counter({"127.10.25.46": 6, "127.10.26.40": 4})


async def test_a_topology_gdp_answers_mapped_clients_from_their_site(
    nats_client: Client, services: Services
) -> None:
    services.start("reconciler", "reconciler")
    port = services.start_dns()
    js = nats_client.jetstream()
    topology = {
        "lbAlgorithm": "Topology",
        "topology": [{"clientSubnet": "10.1.0.0/16", "site": "s2"}],
    }
    for subject, message in seed_messages(load_stack_config(SEED)):
        if isinstance(message, PolicyObject) and message.ref.kind == GDP:
            message = message.model_copy(
                update={"spec": {**message.spec, "poolAlgorithmSettings": topology}}
            )
        await js.publish(subject, wire.encode(message))

    async def from_site(subnet: str) -> set[str]:
        found: set[str] = set()
        for _ in range(6):
            query = dns.message.make_query(
                HELLO, "A", use_edns=0, options=[dns.edns.ECSOption(subnet, 24)]
            )
            reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=1)
            found |= {rr.address for rrset in reply.answer for rr in rrset}
        return found

    await eventually(lambda: serving_all_members(port), timeout_seconds=20)

    assert await from_site("10.1.2.0") == {"127.10.23.40"}
    assert Counter(await answers(port, 12)) == Counter(SEED_SHARES)
