"""What a system that never failed would hold: a fresh `plan` of the events stream, compared
with the KV the running reconciler wrote and the simulator's objects."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from kubesim.resources import INGRESSES
from services.reconciler.plan import Plan, Planner
from shared import bus, subjects, wire
from shared.follow import read_values
from shared.models import GslbService, ObjectKind
from tests.integration.test_watcher import EVENT_KINDS, Kube, ingress
from tests.reliability.stack import ZONE, addresses

CLUSTERS = ("s1az1", "s2")
NAMES = 6
CHANGE_INTERVAL_SECONDS = 0.1


class IngressChurn:
    """Create or delete `app-<n>` Ingresses in turn across two clusters, straight in the
    simulator's store (so API faults do not stop the changes), remembering the truth."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.present: set[tuple[str, str]] = set()
        self.changes = 0

    def step(self) -> None:
        cluster = CLUSTERS[self.changes % len(CLUSTERS)]
        name = f"app-{(self.changes // len(CLUSTERS)) % NAMES}"
        store = self.kube.sim.store(cluster)
        if (cluster, name) in self.present:
            store.delete(INGRESSES, "default", name)
            self.present.discard((cluster, name))
        else:
            store.create(INGRESSES, "default", ingress(name, host=f"{name}.{ZONE}"))
            self.present.add((cluster, name))
        self.changes += 1

    async def run(self) -> None:
        while True:
            self.step()
            await asyncio.sleep(CHANGE_INTERVAL_SECONDS)

    def fqdns(self) -> set[str]:
        return {f"{name}.{ZONE}" for _, name in self.present}


async def fresh_planner(nc: Client) -> Planner:
    """A new planner fed the newest message of every subject of the events stream."""
    js = nc.jetstream()
    messages = []
    for subject in subjects.EVENTS_STREAM_SUBJECTS:
        messages += await bus.read_last_per_subject(js, subjects.STREAM_EVENTS, subject)
    messages.sort(key=lambda msg: msg.metadata.sequence.stream)
    planner = Planner()
    for msg in messages:
        planner.apply(wire.decode_any(msg.data, EVENT_KINDS))
    planner.replan()
    return planner


async def fresh_plan(nc: Client) -> Plan:
    return (await fresh_planner(nc)).snapshot()


async def kv_services(nc: Client) -> dict[str, GslbService]:
    out = {}
    for raw in (await read_values(nc.jetstream(), subjects.KV_SERVICES)).values():
        service = wire.decode(raw, GslbService)
        out[service.fqdn] = service
    return out


async def kv_matches_a_fresh_plan(nc: Client) -> bool:
    return await kv_services(nc) == (await fresh_plan(nc)).services


async def dns_answers_the_plan(nc: Client, port: int) -> bool:
    for fqdn, service in (await fresh_plan(nc)).services.items():
        expected = {member.ip for member in service.all_members()}
        if await addresses(port, fqdn) != expected:
            return False
    return True


async def converged_on(nc: Client, port: int, churn: IngressChurn) -> bool:
    """The events stream holds exactly the live Ingresses, the KV is a fresh plan of it, and
    the DNS answers that plan."""
    planner = await fresh_planner(nc)
    live = {(ref.cluster, ref.name) for ref in planner.observed if ref.kind == ObjectKind.INGRESS}
    return (
        live == churn.present
        and await kv_services(nc) == planner.snapshot().services
        and await dns_answers_the_plan(nc, port)
    )
