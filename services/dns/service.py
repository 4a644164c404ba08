"""The DNS service: mirror the zones, services and health KV buckets into the answer table,
serve UDP and TCP from it, and publish throttled query logs. If NATS goes away the table
simply stops changing: answers continue from the last known state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from nats.aio.client import Client
from nats.js.kv import KeyValue
from prometheus_client import REGISTRY, Counter, Gauge
from pydantic import Field

from services.dns.server import (
    DnsEngine,
    QueryCountCollector,
    bind_tcp_socket,
    bind_udp_socket,
    serve,
)
from services.dns.table import AnswerTable
from shared import bus, subjects, wire
from shared.models import DnsQueryLog, GslbService, HealthState, MemberHealth, ZoneSpec
from shared.runtime import replica_name, run_service
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)
SERVICE = "dns"

TABLE_UPDATES = Counter("kgslb_dns_table_updates_total", "KV updates applied", ["bucket"])
LOGS_DROPPED = Counter("kgslb_dns_logs_dropped_total", "Query logs dropped: publisher behind")
GSLB_NAMES = Gauge("kgslb_dns_gslb_names", "GSLB names in the answer table")


class DnsSettings(ServiceSettings):
    dns_host: str = "127.0.0.1"
    dns_port: int = Field(default=1053, ge=0, le=65535)
    log_per_second: int = Field(
        default=50, ge=0, description="query-log records per second; 0 logs every query"
    )


class DnsService:
    def __init__(
        self,
        settings: DnsSettings,
        nc: Client,
        udp_sock: socket.socket,
        tcp_sock: socket.socket,
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.table = AnswerTable()
        self._logs: asyncio.Queue[DnsQueryLog] = asyncio.Queue(maxsize=10_000)
        self.engine = DnsEngine(
            self.table, replica_name(settings), self._enqueue_log, settings.log_per_second
        )
        REGISTRY.register(QueryCountCollector(self.engine))
        self.udp_sock = udp_sock
        self.tcp_sock = tcp_sock
        self._loaded: set[str] = set()

    @property
    def ready(self) -> bool:
        return len(self._loaded) == 3

    def _enqueue_log(self, record: DnsQueryLog) -> None:
        try:
            self._logs.put_nowait(record)
        except asyncio.QueueFull:
            LOGS_DROPPED.inc()

    async def run(self) -> None:
        transport, server = await serve(self.engine, self.udp_sock, self.tcp_sock)
        try:
            buckets = await bus.bootstrap(self.nc.jetstream())
            await asyncio.gather(
                self._mirror(buckets[subjects.KV_ZONES], self._apply_zone),
                self._mirror(buckets[subjects.KV_HEALTH], self._apply_health),
                self._mirror(buckets[subjects.KV_SERVICES], self._apply_service),
                self._publish_logs(),
            )
        finally:
            transport.close()
            server.close()

    async def _mirror(self, kv: KeyValue, apply: Callable[[str, bytes | None], None]) -> None:
        """Follow one bucket forever; after NATS outages the watcher resumes by itself."""
        bucket = kv._name
        while True:
            try:
                watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is None:
                        self._loaded.add(bucket)
                        log.info("loaded %s", bucket, extra={"names": len(self.table.gslb)})
                        continue
                    deleted = entry.operation in ("DEL", "PURGE") or not entry.value
                    apply(entry.key, None if deleted else entry.value)
                    TABLE_UPDATES.labels(bucket).inc()
                    GSLB_NAMES.set(len(self.table.gslb))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watch of %s interrupted (%s); answering from memory", bucket, exc)
                await asyncio.sleep(1)

    def _decode(self, key: str, value: bytes, model: type[wire.M]) -> wire.M | None:
        try:
            return wire.decode(value, model)
        except wire.WireError as exc:
            log.error("ignoring bad %s value for %s: %s", model.KIND, key, exc)
            return None

    def _apply_zone(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.table.remove_zone(subjects.fqdn_from_key(key))
            return
        spec = self._decode(key, value, ZoneSpec)
        if spec is None:
            return
        try:
            self.table.set_zone(spec)
        except ValueError as exc:
            log.error("zone %s not loaded, previous version kept: %s", spec.name, exc)

    def _apply_service(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.table.remove_service(subjects.fqdn_from_key(key))
            return
        service = self._decode(key, value, GslbService)
        if service is not None:
            self.table.set_service(service)

    def _apply_health(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.table.set_health(key, None)
            return
        health = self._decode(key, value, MemberHealth)
        if health is not None:
            self.table.set_health(key, HealthState(health.state))

    async def _publish_logs(self) -> None:
        while True:
            record = await self._logs.get()
            zone = record.zone or "none"
            with contextlib.suppress(Exception):
                await self.nc.publish(subjects.dnslog_subject(zone), wire.encode(record))


def bind(settings: DnsSettings) -> tuple[socket.socket, socket.socket]:
    """Bind both sockets before anything else, so a busy port fails fast and clearly."""
    try:
        udp = bind_udp_socket(settings.dns_host, settings.dns_port, reuse_port=False)
    except OSError as exc:
        raise SystemExit(
            f"kgslb dns: cannot listen on udp {settings.dns_host}:{settings.dns_port}: "
            f"{exc.strerror}"
        ) from None
    try:
        tcp = bind_tcp_socket(settings.dns_host, udp.getsockname()[1], reuse_port=False)
    except OSError as exc:
        udp.close()
        raise SystemExit(
            f"kgslb dns: cannot listen on tcp {settings.dns_host}:{settings.dns_port}: "
            f"{exc.strerror}"
        ) from None
    return udp, tcp


async def main(settings: DnsSettings) -> None:
    udp, tcp = bind(settings)

    async def build(nc: Client) -> DnsService:
        return DnsService(settings, nc, udp, tcp)

    await run_service(SERVICE, settings, build)
