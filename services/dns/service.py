"""The DNS service: mirror the zones, services and health KV buckets into the answer table,
serve UDP and TCP from it, and publish throttled query logs. If NATS goes away the table
simply stops changing: answers continue from the last known state.

Member health arrives as one verdict per vantage point (site); `quorum.HealthBook` combines
them, with the health replicas' heartbeats (KV `kgslb_leases`) saying which are fresh, and
the table answers by the combined state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.dns import channels
from services.dns.denial import SigningKey
from services.dns.geoip_file import GeoIpFile
from services.dns.ratelimit import ClientQueryBudget, ResponseRateLimiter
from services.dns.server import DnsEngine, QueryCountCollector
from services.dns.settings import DnsSettings
from services.dns.signed import Window
from services.dns.sockets import listening
from services.dns.table import AnswerTable
from services.dns.tcp import TcpCollector, TcpLimits, TcpListener
from services.dns.udp import udp_server
from services.dns.wire import wire_to_name
from services.dns.workers import supervise
from shared import bus, subjects, wire
from shared.broker import ServiceBroker
from shared.collector import LongLivedState
from shared.follow import YIELD_EVERY_CHANGES, BucketFollower, Change
from shared.models import (
    DnsQueryLog,
    GslbService,
    HealthHeartbeat,
    HealthState,
    MemberHealth,
    ZoneKeys,
    ZoneSpec,
)
from shared.quorum import HealthBook, Quorum, State, Written, apply_heartbeat, apply_hold
from shared.runtime import replica_name, run_service

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

log = logging.getLogger(__name__)
SERVICE = "dns"
LOG_QUEUE_RECORDS = 10_000
EXPIRE_SECONDS = 0.5
"""How often silent health replicas are looked for (their verdicts stop counting)."""
RESIGN_CHECK_SECONDS = 60.0
"""How often the DNSSEC signatures' age is checked (made anew after --dnssec-resign-seconds)."""

TABLE_UPDATES = Counter("kgslb_dns_table_updates_total", "KV updates applied", ["bucket"])
LIVE_VERDICTS = Counter(
    "kgslb_dns_live_health_verdicts_total",
    "Member health verdicts received on core NATS ahead of their KV write",
)
LOGS_DROPPED = Counter("kgslb_dns_logs_dropped_total", "Query logs dropped: publisher behind")
GSLB_NAMES = Gauge("kgslb_dns_gslb_names", "GSLB names in the answer table")
BAD_VALUES = Counter(
    "kgslb_dns_bad_values_total",
    "KV values ignored (undecodable, or a GSLB name that is not a hostname), by message kind",
    ["kind"],
)


def tcp_limits(settings: DnsSettings) -> TcpLimits:
    return TcpLimits(
        idle_seconds=settings.tcp_idle_seconds,
        message_seconds=settings.tcp_message_seconds,
        blocked_seconds=settings.tcp_blocked_seconds,
        max_connections=settings.tcp_max_connections,
        max_pipelined=settings.tcp_max_pipelined,
        write_buffer_bytes=settings.tcp_write_buffer_bytes,
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
        self.long_lived = LongLivedState()
        routes, self._logs_out = channels.router()
        self.broker = ServiceBroker(nc)
        self.broker.include_router(routes)
        self.table = AnswerTable(
            udp_payload_limit=settings.edns_udp_size,
            dnssec_window=Window(
                settings.dnssec_signature_validity_seconds, settings.dnssec_resign_seconds
            ),
        )
        self._key_secret: Fernet | None = None
        if settings.dnssec_key_secret or settings.dnssec_key_secret_file:
            from shared import dnssec  # `cryptography`: only loaded where it is used

            self._key_secret = dnssec.load_secret(
                settings.dnssec_key_secret, settings.dnssec_key_secret_file
            )
        self.geoip = (
            GeoIpFile(settings.geoip_database, self.table, settings.geoip_check_seconds)
            if settings.geoip_database
            else None
        )
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
        self.tcp = TcpListener(
            self.engine,
            tcp_limits(settings),
            ClientQueryBudget(
                settings.tcp_client_queries_per_second,
                settings.rrl_ipv4_prefix_length,
                settings.rrl_ipv6_prefix_length,
            ),
        )
        REGISTRY.register(TcpCollector(self.tcp))
        self.keeper = bus.StateKeeper(nc, settings.stream_replicas, settings.state_check_seconds)
        self.udp_sock = udp_sock
        self.tcp_sock = tcp_sock
        self.health = HealthBook(Quorum.parse(settings.health_quorum))
        REGISTRY.register(VerdictCollector(self.health, settings.health_verdict_metrics))
        REGISTRY.register(DnssecCollector(self.table))
        self._live_verdicts: dict[str, tuple[str, datetime]] = {}
        self._live_applied = 0
        """Verdicts applied from core NATS whose KV copy has not arrived yet: per health key,
        the writer and its probe time."""
        services = self._follower(subjects.KV_SERVICES, self._apply_service)
        self._followers = [
            self._follower(subjects.KV_ZONES, self._apply_zone),
            # Heartbeats before verdicts: a verdict is weighed knowing whether its replica lives.
            BucketFollower(
                nc,
                subjects.KV_LEASES,
                self._apply_heartbeat,
                subjects.HEALTH_REPLICA_KEYS,
                on_missing=self.keeper.notice,
            ),
            # Names before verdicts (once loaded): a verdict that changes answers comes live
            # too (`_on_live_health`); a cold start's 300,000 first verdicts change none, and
            # applied turn about with the names they held the names back.
            self._follower(subjects.KV_HEALTH, self._apply_health, defer_to=[services]),
            BucketFollower(
                nc,
                subjects.KV_LEASES,
                self._apply_hold,
                subjects.HOLD_KEYS,
                on_missing=self.keeper.notice,
            ),
            services,
            self._follower(subjects.KV_KEYS, self._apply_keys),
        ]
        self._holds: set[str] = set()
        """Members held under manualResume: answered as down whatever their health."""

    @property
    def ready(self) -> bool:
        """Loaded, and not answering from memory for a lost store that is not rebuilt yet
        (answers go on meanwhile; readiness tells the operator and the load balancer)."""
        followers = self._followers
        loaded = all(f.caught_up and not f.missing and not f.rebuilding for f in followers)
        return loaded and self.keeper.intact

    def readiness_detail(self) -> str:
        missing = [f.bucket for f in self._followers if f.missing]
        rebuilding = [f.bucket for f in self._followers if f.rebuilding]
        parts = [f"names {len(self.table.gslb)}, zones {len(self.table.zones)}"]
        if missing:
            parts.append("missing: " + ", ".join(missing))
        if rebuilding:
            parts.append("answering from memory, rebuilding: " + ", ".join(rebuilding))
        if state := self.keeper.describe():
            parts.append(state)
        return "; ".join(parts)

    def _enqueue_log(self, record: DnsQueryLog) -> None:
        try:
            self._logs.put_nowait(record)
        except asyncio.QueueFull:
            LOGS_DROPPED.inc()

    async def run(self) -> None:
        await self.keeper.bootstrap()
        # nats-py, not FastStream: bursty at a cold start (docs/architecture.md, "FastStream").
        await self.nc.subscribe(f"{subjects.HEALTH_LIVE_PREFIX}.>", cb=self._on_live_health)
        await self.broker.connect()  # FastStream: the query logs (publishers only)
        if self.geoip is not None:
            await self.geoip.check()  # before the names load: Geo answers from the start
        mirrors = asyncio.gather(
            *(follower.run() for follower in self._followers),
            *([self.geoip.run()] if self.geoip is not None else []),
            self._publish_logs(),
            self._expire_loop(),
            self._resign_loop(),
            self.keeper.run(),
        )
        try:
            # Queries wait in the socket buffers until the table holds the whole KV: an
            # answer from a half-loaded table (REFUSED, NXDOMAIN) would be cached downstream.
            await asyncio.gather(*(follower.wait_caught_up() for follower in self._followers))
            self.long_lived.settled()
            loop = asyncio.get_running_loop()
            udp = udp_server(self.udp_sock, self.engine)
            udp.attach(loop)
            await self.tcp.start(self.tcp_sock)
            log.info(
                "answering",
                extra={"zones": len(self.table.zones), "names": len(self.table.gslb)},
            )
            try:
                await mirrors
            finally:
                udp.detach(loop)
                self.tcp.close()
        finally:
            mirrors.cancel()

    def _follower(
        self,
        bucket: str,
        apply: Callable[[str, bytes | None, int], None],
        defer_to: Sequence[BucketFollower] = (),
    ) -> BucketFollower:
        """Mirror one bucket into the table; after an outage only what changed touches it."""

        updates = TABLE_UPDATES.labels(bucket)

        def mirror(change: Change) -> None:
            apply(change.key, change.value, change.revision)
            updates.inc()
            GSLB_NAMES.set(len(self.table.gslb))
            self.long_lived.changed()

        def created(when: datetime) -> None:
            if bucket in (subjects.KV_ZONES, subjects.KV_SERVICES):  # what serials derive from
                self.table.set_store_epoch(bucket, int(when.timestamp()))

        return BucketFollower(
            self.nc,
            bucket,
            mirror,
            on_loss=self.table.forget_revisions,
            on_missing=self.keeper.notice,
            on_created=created,
            defer_to=defer_to,
        )

    def _decode(self, key: str, value: bytes, model: type[wire.M]) -> wire.M | None:
        try:
            return wire.decode(value, model)
        except wire.WireError as exc:
            BAD_VALUES.labels(model.KIND).inc()
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

    def _apply_keys(self, key: str, value: bytes | None, revision: int) -> None:
        """A signed zone's keys: decrypted here, once, and handed to the table."""
        try:
            zone = subjects.fqdn_from_key(key)
        except ValueError:
            return
        now = int(time.time())
        if value is None:
            self.table.set_zone_keys(zone, None, now)
            return
        keys = self._decode(key, value, ZoneKeys)
        if keys is None:
            return
        if self._key_secret is None:
            log.error(
                "zone %s has DNSSEC keys but this DNS has no --dnssec-key-secret "
                "(KGSLB_DNSSEC_KEY_SECRET): answering it unsigned",
                zone,
            )
            return
        from shared import dnssec

        try:
            signing = [SigningKey(k, dnssec.private_key(k, self._key_secret)) for k in keys.keys]
            self.table.set_zone_keys(zone, signing, now)
        except ValueError as exc:
            BAD_VALUES.labels(ZoneKeys.KIND).inc()
            log.error("DNSSEC keys of zone %s not loaded: %s", zone, exc)
            return
        log.info("DNSSEC keys of zone %s loaded", zone, extra={"keys": len(keys.keys)})

    async def _resign_loop(self) -> None:
        while True:
            await asyncio.sleep(RESIGN_CHECK_SECONDS)
            for zone in self.table.refresh_signatures(int(time.time())):
                log.info("DNSSEC signatures of zone %s made anew from now on", zone)

    def _apply_service(self, key: str, value: bytes | None, revision: int) -> None:
        if value is None:
            try:
                fqdn = subjects.fqdn_from_key(key)
            except ValueError:
                return  # not a key the reconciler writes, so never in the table
            self.table.remove_service(fqdn, revision)
            return
        service = self._decode(key, value, GslbService)
        if service is None:
            return
        if (bad := self.table.set_service(service, revision)) is not None:
            BAD_VALUES.labels(GslbService.KIND).inc()
            log.error(
                "ignoring GslbService value for %s: %s; the name is not answered",
                key, bad.describe(),
            )  # fmt: skip

    def _apply_health(
        self, key: str, value: bytes | None, revision: int, live: bool = False
    ) -> None:
        try:
            member, vantage = subjects.split_health_key(key)
        except ValueError as exc:
            BAD_VALUES.labels(MemberHealth.KIND).inc()
            log.error("ignoring %s: %s", key, exc)
            return
        written = None
        if value is not None:
            health = self._decode(key, value, MemberHealth)
            if health is None or not self._newer_verdict(key, health, live):
                return
            written = Written(HealthState(health.state), health.replica)
        else:
            self._live_verdicts.pop(key, None)
        self._set_health(self.health.set_verdict(member, vantage, written))

    def _apply_heartbeat(self, change: Change) -> None:
        now = asyncio.get_running_loop().time()
        try:
            self._set_health(apply_heartbeat(self.health, change.key, change.value, now))
        except ValueError as exc:  # wire.WireError included
            BAD_VALUES.labels(HealthHeartbeat.KIND).inc()
            log.error("ignoring bad %s value for %s: %s", HealthHeartbeat.KIND, change.key, exc)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_SECONDS)
            self._set_health(self.health.expire(asyncio.get_running_loop().time()))

    def _set_health(self, changes: dict[str, State]) -> None:
        for member, state in changes.items():
            self.table.set_health(member, HealthState.DOWN if member in self._holds else state)

    def _apply_hold(self, change: Change) -> None:
        try:
            member = apply_hold(self._holds, change.key, change.value)
        except ValueError:
            return
        self._set_health({member: self.health.combined.get(member)})

    async def _on_live_health(self, msg: Msg) -> None:
        """A verdict on core NATS, ahead of its KV write (subjects.HEALTH_LIVE_PREFIX)."""
        try:
            key = subjects.key_from_health_live_subject(msg.subject)
        except ValueError:
            return
        LIVE_VERDICTS.inc()
        self._apply_health(key, msg.data, 0, live=True)
        self._live_applied += 1
        if self._live_applied % YIELD_EVERY_CHANGES == 0:
            # A lost site's members go down together: a burst of verdicts queued in the
            # subscription is handed over without suspending; let queries be answered too.
            await asyncio.sleep(0)

    def _newer_verdict(self, key: str, health: MemberHealth, live: bool) -> bool:
        """False for a verdict older than a live one already applied from the same writer: the
        live one arrives first, and an older KV write delayed by an election must not take it
        back. Times of different writers are never compared (their clocks may differ): the
        newest arrival wins, as in the KV. Only live verdicts not yet seen in the KV are
        remembered, so this costs nothing at rest."""
        probed_at = health.last_probe_at or health.since
        applied = self._live_verdicts.get(key)
        if applied is not None and applied[0] == health.replica and probed_at < applied[1]:
            return False
        if live:
            self._live_verdicts[key] = (health.replica, probed_at)
        else:
            self._live_verdicts.pop(key, None)
        return True

    async def _publish_logs(self) -> None:
        while True:
            record = await self._logs.get()
            with contextlib.suppress(Exception):
                await self._logs_out.publish(
                    wire.encode(record), subjects.dnslog_subject(record.zone)
                )


class DnssecCollector(Collector):
    """Signing work: RRsets signed since start and signatures kept, per signed zone."""

    def __init__(self, table: AnswerTable) -> None:
        self.table = table

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        made = CounterMetricFamily(
            "kgslb_dns_dnssec_signatures",
            "RRsets signed (once per distinct RRset, key set and validity window)",
            labels=["zone"],
        )
        for key, count in sorted(dict(self.table.signatures_made).items()):
            made.add_metric([wire_to_name(key).rstrip(".")], count)
        yield made
        kept = GaugeMetricFamily(
            "kgslb_dns_dnssec_cached_signatures",
            "Signed RRsets kept for reuse, per signed zone that has its keys",
            labels=["zone"],
        )
        for key, signed in sorted(dict(self.table.signed).items()):
            kept.add_metric([wire_to_name(key).rstrip(".")], len(signed.signatures))
        yield kept


class VerdictCollector(Collector):
    """The vantage points' verdicts at scrape time, from the book."""

    def __init__(self, book: HealthBook, detail: str) -> None:
        self.book = book
        self.per_member = detail == "member"

    def collect(self) -> Iterator[GaugeMetricFamily]:
        book = self.book
        live = GaugeMetricFamily(
            "kgslb_dns_health_vantage_live",
            "1 while a health replica of the vantage point (site; empty: no site) heartbeats",
            labels=["vantage"],
        )
        fresh = book.live_vantages()
        for vantage in sorted(book.vantages()):
            live.add_metric([vantage], 1 if vantage in fresh else 0)
        yield live
        verdicts = GaugeMetricFamily(
            "kgslb_dns_health_verdicts",
            "Members by vantage point, its verdict and whether it counts (fresh: its replica "
            "heartbeats)",
            labels=["vantage", "state", "fresh"],
        )
        for (vantage, state, is_fresh), count in sorted(book.tally().items()):
            verdicts.add_metric([vantage, state.value, str(is_fresh).lower()], count)
        yield verdicts
        yield GaugeMetricFamily(
            "kgslb_dns_health_outvoted_members",
            "Members answered although a fresh verdict says down (not a quorum)",
            value=sum(1 for _ in book.outvoted()),
        )
        if self.per_member:
            members = GaugeMetricFamily(
                "kgslb_dns_health_member_verdict",
                "1 per member and vantage point, with its verdict",
                labels=["fqdn", "ip", "vantage", "state", "fresh"],
            )
            for member in sorted(list(book.verdicts)):
                fqdn, ip = (subjects.decode_token(t) for t in member.split("."))
                for verdict in book.verdicts_of(member):
                    fresh_label = str(verdict.fresh).lower()
                    members.add_metric(
                        [fqdn, ip, verdict.vantage, verdict.state.value, fresh_label], 1
                    )
            yield members


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
