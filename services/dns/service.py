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

from services.dns.ratelimit import ResponseRateLimiter
from services.dns.server import DnsEngine, QueryCountCollector, serve_tcp
from services.dns.settings import DnsSettings
from services.dns.sockets import listening
from services.dns.table import AnswerTable
from services.dns.udp import udp_server
from services.dns.workers import supervise
from shared import bus, subjects, wire
from shared.models import DnsQueryLog, GslbService, HealthState, MemberHealth, ZoneSpec
from shared.runtime import replica_name, run_service

log = logging.getLogger(__name__)
SERVICE = "dns"
LOG_QUEUE_RECORDS = 10_000
RECONNECT_POLL_SECONDS = 0.5

TABLE_UPDATES = Counter("kgslb_dns_table_updates_total", "KV updates applied", ["bucket"])
LOGS_DROPPED = Counter("kgslb_dns_logs_dropped_total", "Query logs dropped: publisher behind")
GSLB_NAMES = Gauge("kgslb_dns_gslb_names", "GSLB names in the answer table")


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
        self.table = AnswerTable(udp_payload_limit=settings.edns_udp_size)
        self._logs: asyncio.Queue[DnsQueryLog] = asyncio.Queue(maxsize=LOG_QUEUE_RECORDS)
        self.engine = DnsEngine(
            self.table,
            replica_name(settings),
            self._enqueue_log if settings.log_queries else None,
            settings.log_per_second,
            ResponseRateLimiter(
                settings.rrl_responses_per_second,
                settings.rrl_slip,
                settings.rrl_ipv4_prefix_length,
                settings.rrl_ipv6_prefix_length,
            ),
        )
        REGISTRY.register(QueryCountCollector(self.engine, settings.answer_metrics))
        self.udp_sock = udp_sock
        self.tcp_sock = tcp_sock
        self._loaded: set[str] = set()
        self._all_loaded = asyncio.Event()

    @property
    def ready(self) -> bool:
        return len(self._loaded) == 3

    def _enqueue_log(self, record: DnsQueryLog) -> None:
        try:
            self._logs.put_nowait(record)
        except asyncio.QueueFull:
            LOGS_DROPPED.inc()

    async def run(self) -> None:
        buckets = await bus.bootstrap(self.nc.jetstream(), self.settings.stream_replicas)
        mirrors = asyncio.gather(
            self._mirror(buckets[subjects.KV_ZONES], self._apply_zone),
            self._mirror(buckets[subjects.KV_HEALTH], self._apply_health),
            self._mirror(buckets[subjects.KV_SERVICES], self._apply_service),
            self._publish_logs(),
        )
        try:
            # Queries wait in the socket buffers until the table holds the whole KV: an
            # answer from a half-loaded table (REFUSED, NXDOMAIN) would be cached downstream.
            await self._all_loaded.wait()
            loop = asyncio.get_running_loop()
            udp = udp_server(self.udp_sock, self.engine)
            udp.attach(loop)
            tcp = await serve_tcp(self.engine, self.tcp_sock, self.settings.tcp_idle_seconds)
            log.info(
                "answering",
                extra={"zones": len(self.table.zones), "names": len(self.table.gslb)},
            )
            try:
                await mirrors
            finally:
                udp.detach(loop)
                tcp.close()
        finally:
            mirrors.cancel()

    async def _mirror(self, kv: KeyValue, apply: Callable[[str, bytes | None, int], None]) -> None:
        """Follow one bucket forever. After a reconnect the watch starts over at once (a
        restarted nats-server forgot its consumer); entries already applied are skipped by
        revision, so only what changed meanwhile touches the table."""
        bucket = kv._name
        applied: dict[str, int] = {}
        while True:
            try:
                watcher = await kv.watchall()
                guard = asyncio.create_task(self._stop_on_reconnect(watcher, bucket))
                try:
                    async for entry in watcher:
                        if entry is None:
                            self._loaded.add(bucket)
                            if self.ready:
                                self._all_loaded.set()
                            log.info("loaded %s", bucket, extra={"names": len(self.table.gslb)})
                            continue
                        revision = entry.revision or 0
                        if applied.get(entry.key) == revision:
                            continue
                        applied[entry.key] = revision
                        deleted = entry.operation in ("DEL", "PURGE") or not entry.value
                        apply(entry.key, None if deleted else entry.value, revision)
                        TABLE_UPDATES.labels(bucket).inc()
                        GSLB_NAMES.set(len(self.table.gslb))
                finally:
                    guard.cancel()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watch of %s interrupted (%s); answering from memory", bucket, exc)
                await asyncio.sleep(1)

    async def _stop_on_reconnect(self, watcher: KeyValue.KeyWatcher, bucket: str) -> None:
        reconnects = self.nc.stats["reconnects"]
        while self.nc.stats["reconnects"] == reconnects:
            await asyncio.sleep(RECONNECT_POLL_SECONDS)
        log.info("nats reconnected: restarting the watch of %s", bucket)
        with contextlib.suppress(Exception):
            await watcher.stop()  # type: ignore[no-untyped-call]

    def _decode(self, key: str, value: bytes, model: type[wire.M]) -> wire.M | None:
        try:
            return wire.decode(value, model)
        except wire.WireError as exc:
            log.error("ignoring bad %s value for %s: %s", model.KIND, key, exc)
            return None

    def _apply_zone(self, key: str, value: bytes | None, revision: int) -> None:
        if value is None:
            self.table.remove_zone(subjects.fqdn_from_key(key))
            return
        spec = self._decode(key, value, ZoneSpec)
        if spec is None:
            return
        try:
            self.table.set_zone(spec, revision)
        except ValueError as exc:
            log.error("zone %s not loaded, previous version kept: %s", spec.name, exc)

    def _apply_service(self, key: str, value: bytes | None, revision: int) -> None:
        if value is None:
            self.table.remove_service(subjects.fqdn_from_key(key), revision)
            return
        service = self._decode(key, value, GslbService)
        if service is not None:
            self.table.set_service(service, revision)

    def _apply_health(self, key: str, value: bytes | None, revision: int) -> None:
        if value is None:
            self.table.set_health(key, None)
            return
        health = self._decode(key, value, MemberHealth)
        if health is not None:
            self.table.set_health(key, HealthState(health.state))

    async def _publish_logs(self) -> None:
        while True:
            record = await self._logs.get()
            with contextlib.suppress(Exception):
                await self.nc.publish(subjects.dnslog_subject(record.zone), wire.encode(record))


async def main(settings: DnsSettings) -> None:
    """`kgslb dns`: one process, or with `--workers N` a supervisor of N worker processes."""
    if settings.workers > 1:
        await supervise(settings)
        return
    await serve(settings)


async def serve(settings: DnsSettings) -> None:
    """One process answering on its own sockets, or on those a supervisor handed over."""
    udp, tcp = listening(settings)

    async def build(nc: Client) -> DnsService:
        return DnsService(settings, nc, udp, tcp)

    await run_service(SERVICE, settings, build)
