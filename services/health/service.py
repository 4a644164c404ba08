"""The health service (foundation stage): every member of every desired service is reported
`up` once, so the DNS answers them. Active HTTP/TCP monitors replace this in the health issue."""

from __future__ import annotations

import logging

from nats.aio.client import Client
from nats.js.kv import KeyValue

from shared import bus, subjects, wire
from shared.models import GslbService, HealthState, MemberHealth, utcnow
from shared.runtime import replica_name, run_service
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)
SERVICE = "health"


class HealthSettings(ServiceSettings):
    pass


class HealthService:
    def __init__(self, settings: HealthSettings, nc: Client) -> None:
        self.settings = settings
        self.nc = nc
        self.replica = replica_name(settings)
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    async def run(self) -> None:
        buckets = await bus.bootstrap(self.nc.jetstream())
        health = buckets[subjects.KV_HEALTH]
        watcher = await buckets[subjects.KV_SERVICES].watchall()
        async for entry in watcher:
            if entry is None:
                self._ready = True
                continue
            if entry.value:
                await self._report_up(health, entry.key, entry.value)

    async def _report_up(self, health: KeyValue, key: str, value: bytes) -> None:
        try:
            service = wire.decode(value, GslbService)
        except wire.WireError as exc:
            log.error("ignoring bad service %s: %s", key, exc)
            return
        for member in service.all_members():
            state = MemberHealth(
                fqdn=service.fqdn,
                ip=member.probe_ip,
                cluster=member.cluster,
                state=HealthState.UP,
                since=utcnow(),
                last_result="assumed up (no monitor yet)",
                replica=self.replica,
            )
            await health.put(state.key, wire.encode(state))


async def main(settings: HealthSettings) -> None:
    async def build(nc: Client) -> HealthService:
        return HealthService(settings, nc)

    await run_service(SERVICE, settings, build)
