"""Helpers for the reconciler benchmarks that run the real processes: a JetStream
nats-server and `kgslb reconciler` / `kgslb dns` children on loopback, fed the seed policies
and many `hello`-like Ingresses through the watcher subjects."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from nats.aio.client import Client

from kgslb.embedded import ManagedProcess, NatsServer, free_port, service_process
from services.watcher.publisher import COMPRESS_OVER_BYTES
from shared import bus, subjects, wire
from shared.models import (
    ObjectKind,
    ObjectRef,
    ObservedObject,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    SyncMarker,
)
from shared.settings import NatsSettings

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ("s1az1", "s1az2", "s2")
HELLO_VIPS = {"s1az1": "127.10.25.46", "s1az2": "127.10.26.40", "s2": "127.10.23.40"}
RESULTS = Path(__file__).resolve().parent / "results"


def seed_policies() -> list[PolicyObject]:
    """The seed's GSLBConfig gc-1 and GDP global-gdp (examples/seed/*.yaml)."""
    policies = []
    for file in ("gslbconfig.yaml", "global-gdp.yaml"):
        for document in yaml.safe_load_all((ROOT / "examples" / "seed" / file).read_text()):
            if document and document["apiVersion"] == "kgslb.io/v1alpha1":
                meta: dict[str, Any] = document["metadata"]
                ref = PolicyRef(
                    kind=PolicyKind(document["kind"]),
                    namespace=meta["namespace"],
                    name=meta["name"],
                )
                policies.append(PolicyObject(ref=ref, spec=document["spec"]))
    return policies


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nats = NatsServer(workdir / "jetstream")
        self.processes: dict[str, ManagedProcess] = {}
        self.ops_ports: dict[str, int] = {}
        self.dns_port = 0

    def __enter__(self) -> Stack:
        self.nats.start()
        return self

    def __exit__(self, *_: object) -> None:
        for process in self.processes.values():
            process.stop()
        self.nats.stop()

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> ManagedProcess:
        self.ops_ports[name] = free_port()
        settings = {"KGSLB_NATS_URL": self.nats.url, "KGSLB_OPS_PORT": str(self.ops_ports[name])}
        process = service_process(
            name, list(args), self.workdir / "logs", {**settings, **(env or {})}
        )
        process.start()
        self.processes[name] = process
        return process

    def start_reconciler(self, name: str, lease_ttl_seconds: float) -> ManagedProcess:
        return self.start(
            name,
            "reconciler",
            "--replica",
            name,
            env={"KGSLB_LEASE_TTL_SECONDS": str(lease_ttl_seconds)},
        )

    def start_dns(self) -> int:
        self.dns_port = free_port()
        self.start("dns", "dns", "--dns-port", str(self.dns_port), "--log-per-second", "0")
        return self.dns_port

    async def connect(self) -> Client:
        nc = await bus.connect(NatsSettings(nats_url=self.nats.url), "kgslb-bench")
        await bus.bootstrap(nc.jetstream())
        return nc

    async def ops(self, name: str, path: str) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(f"http://127.0.0.1:{self.ops_ports[name]}{path}", timeout=2)

    async def metric(self, name: str, metric_name: str) -> float:
        text = (await self.ops(name, "/metrics")).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if not line.startswith("#") and line.split("{")[0].split(" ")[0] == metric_name
        )

    async def leading(self, name: str) -> bool:
        try:
            response = await self.ops(name, "/readyz")
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and "(leader)" in response.text


def app_vip(position: int, index: int) -> str:
    """A distinct loopback VIP per cluster and app, for any number of apps (a cluster's block
    is 2**20 addresses from 127.20.0.0 on; the changes move apps into 127.99.0.0/16)."""
    return str(ipaddress.IPv4Address("127.20.0.0") + (position << 20) + index + 1)


def app(cluster: str, index: int, vip: str | None = None) -> tuple[str, ObservedObject]:
    position = CLUSTERS.index(cluster)
    ref = ObjectRef(
        cluster=cluster, kind=ObjectKind.INGRESS, namespace="default", name=f"app{index}"
    )
    obj = ObservedObject(
        ref=ref,
        resource_version="1",
        labels={"app": "gslb"},
        hosts=[f"app{index}.avi.iberia.local"],
        vips=[vip or app_vip(position, index)],
    )
    return ref.subject, obj


async def publish_world(nc: Client, services: int) -> None:
    """The seed's policies, its hello Ingresses and `services` apps in every cluster, then
    each cluster's sync marker, as a watcher ends its first list (the reconciler plans names
    once every member cluster's marker is in)."""
    js = nc.jetstream()
    for policy in seed_policies():
        await js.publish(policy.ref.subject, wire.encode(policy))
    for cluster, vip in HELLO_VIPS.items():
        ref = ObjectRef(cluster=cluster, kind=ObjectKind.INGRESS, namespace="default", name="hello")
        hello = ObservedObject(
            ref=ref,
            resource_version="1",
            labels={"app": "gslb"},
            hosts=["hello.avi.iberia.local"],
            vips=[vip],
        )
        await js.publish(ref.subject, wire.encode(hello))
    present: dict[str, list[str]] = {cluster: [] for cluster in CLUSTERS}
    for cluster in HELLO_VIPS:
        present[cluster].append("Ingress/default/hello")
    pending = []
    for index in range(services):
        for cluster in CLUSTERS:
            subject, message = app(cluster, index)
            present[cluster].append(message.ref.short)
            pending.append(js.publish(subject, wire.encode(message)))
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                pending.clear()
    await asyncio.gather(*pending)
    for cluster, shorts in present.items():
        marker = SyncMarker(cluster=cluster, kinds=list(ObjectKind), present=shorts)
        await js.publish(
            subjects.sync_subject(cluster),
            wire.encode(marker, compress_over_bytes=COMPRESS_OVER_BYTES),
        )


async def publish_policy(nc: Client, message: PolicyObject) -> None:
    await nc.jetstream().publish(message.ref.subject, wire.encode(message))


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout_seconds: float, interval_seconds: float = 0.05
) -> float:
    """Seconds until `check` holds; raises TimeoutError after `timeout_seconds`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_seconds:
        try:
            if await check():
                return time.monotonic() - started
        except Exception:
            pass
        await asyncio.sleep(interval_seconds)
    raise TimeoutError(f"not reached in {timeout_seconds} s")


async def kv_last_seq(nc: Client, bucket: str = subjects.KV_SERVICES) -> int:
    info = await nc.jetstream().stream_info(f"KV_{bucket}")
    return int(info.state.last_seq)
