"""The answer engine around the table, and binding the listening sockets. The engine turns one
packet into one response synchronously: response cache, parse, look up, render, rate limit,
and hand a throttled query-log record to a sink that never blocks. UDP batching lives in
`udp.py`, TCP connections in `tcp.py`."""

from __future__ import annotations

import bisect
import logging
import math
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from services.dns import wire
from services.dns.ratelimit import LogThrottle, ResponseRateLimiter, Verdict
from services.dns.rotation import Rotation, Target
from services.dns.table import AnswerTable, Response
from shared.models import DnsQueryLog

log = logging.getLogger(__name__)

DEFAULT_CACHE_ENTRIES = 100_000
"""Distinct query packets (name, type, flags, case, EDNS options) whose responses are kept;
past that the cache starts over, so random names cannot grow it without bound."""


class CachedAnswer:
    """The response to one exact query packet (ID aside), ready to send: a fixed body, or
    one body per position of a GSLB name's round-robin cycle."""

    __slots__ = (
        "bodies", "body", "hits", "ips", "members", "qname", "qtype", "rcode", "rotation",
        "turn", "zone",
    )  # fmt: skip

    def __init__(self, query: wire.Query, response: Response) -> None:
        assert response.packet is not None
        self.hits = 0
        self.qname = query.qname.rstrip(".")
        self.qtype = wire.type_name(query.qtype)
        self.rcode = wire.rcode_name(response.rcode)
        self.zone = response.zone
        self.ips = response.ips
        self.rotation: Rotation | None = None
        self.body: bytes | None = response.packet[2:]
        self.bodies: list[bytes] = []
        self.turn: Callable[[], int] = int
        self.members: tuple[Target, ...] = ()
        """Members of a fixed answer (a consistent-hash pick for an ECS subnet), counted per
        hit; a rotation's turns are counted by the rotation itself."""
        if response.rotation is not None and response.variants:
            unique: dict[bytes, bytes] = {}
            self.rotation = response.rotation
            self.body = None
            for variant in response.variants:
                if variant not in unique:
                    unique[variant] = variant[2:]
            self.bodies = [unique[variant] for variant in response.variants]
            self.turn = response.rotation.next_position
        else:
            self.members = response.members


LATENCY_BUCKETS = (
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5,
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip
"""Seconds. Python answers in microseconds; milliseconds mean the process is starved."""


class LatencyHistogram:
    """A Prometheus histogram that takes many observations of one value at once: a UDP batch
    of 64 queries is answered together, so each of its queries took the batch's time."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += times
        self.total += seconds * times

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative counts per upper bound, +Inf last, as the exposition format wants."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*LATENCY_BUCKETS, math.inf), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == math.inf else repr(bound), running))
        return out


def count_hits(
    entries: Iterable[CachedAnswer],
    queries: Counter[tuple[str, str, str]] | None,
    answers: Counter[tuple[str, str, str]] | None,
) -> None:
    """Add cache hits to the query counts (rcode, qtype, zone) and, for fixed answers, to the
    answers per (fqdn, cluster, ip); a rotation's hits are its turns, counted by the table."""
    for entry in entries:
        if not entry.hits:
            continue
        if queries is not None:
            queries[(entry.rcode, entry.qtype, entry.zone)] += entry.hits
        if answers is not None and entry.members:
            fqdn = entry.qname.lower()
            for member in entry.members:
                answers[(fqdn, member.cluster, member.ip)] += entry.hits


def client_address(client_ip: str) -> bytes:
    """Packed address of a client, IPv4-mapped IPv6 folded to IPv4."""
    if ":" not in client_ip:
        return socket.inet_pton(socket.AF_INET, client_ip)
    packed = socket.inet_pton(socket.AF_INET6, client_ip)
    if packed[:12] == b"\x00" * 10 + b"\xff\xff":
        return packed[12:]
    return packed


def address_text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def slip_reply(reply: bytes) -> bytes:
    """RRL slip: the header with TC set, the question and the reply's OPT record (an EDNS
    client gets one, RFC 6891 6.1.1), so the client retries on TCP."""
    offset = 12
    while offset < len(reply) and reply[offset]:
        offset += 1 + reply[offset]
    where = wire.find_opt(reply)
    opt = reply[where[0] : where[1]] if where is not None else b""
    flags = struct.unpack_from("!H", reply, 2)[0] | wire.FLAG_TC
    counts = struct.pack("!5H", flags, 1, 0, 0, 1 if opt else 0)
    return reply[:2] + counts + reply[12 : offset + 5] + opt


class DnsEngine:
    """Turns a packet into a response, counting, rate limiting and sampling the query log."""

    def __init__(
        self,
        table: AnswerTable,
        replica: str,
        log_sink: Callable[[DnsQueryLog], None] | None = None,
        log_per_second: int = 50,
        rate_limiter: ResponseRateLimiter | None = None,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.clock = clock
        self.replica = replica
        self.log_sink = log_sink
        self.throttle = LogThrottle(log_per_second)
        self.rrl = rate_limiter or ResponseRateLimiter(0)
        self.cache: dict[bytes, CachedAnswer] = {}
        self.cache_entries = cache_entries
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.cached_answers: Counter[tuple[str, str, str]] = Counter()
        """(fqdn, cluster, ip) answers served from flushed fixed cache entries."""
        self.latency = {"udp": LatencyHistogram(), "tcp": LatencyHistogram()}
        self.malformed = 0
        self.second = int(clock())
        self._generation = table.generation
        self.inline = True
        """Cache hits may be served without this object (no log record or RRL due now)."""
        self._update_inline()

    def _update_inline(self) -> None:
        logging_due = self.log_sink is not None and self.throttle.open
        self.inline = not (logging_due or self.rrl.enabled)

    def tick(self) -> None:
        """Follow table changes and the clock; called per packet or once per UDP batch."""
        if self.table.generation != self._generation:
            self.flush_cache()
        second = int(self.clock())
        if second != self.second:
            self.second = second
            self.throttle.new_second()
            self._update_inline()

    def flush_cache(self) -> None:
        count_hits(self.cache.values(), self.counts, self.cached_answers)
        self.cache.clear()
        self._generation = self.table.generation

    def respond(
        self, packet: bytes, client_ip: str, udp: bool, client_packed: bytes | None = None
    ) -> bytes | None:
        """The reply to one query packet, or None to stay silent."""
        started = time.perf_counter()
        self.tick()
        logged = self.log_sink is not None and self.throttle.open and self.throttle.take()
        if not self.throttle.open:
            self._update_inline()
        if udp:
            entry = self.cache.get(packet[2:])
            if entry is not None:
                entry.hits += 1
                position = 0
                body = entry.body
                if body is None:
                    position = entry.turn()
                    body = entry.bodies[position]
                reply: bytes | None = self._limit(packet[:2] + body, client_ip, client_packed)
                if logged:
                    self._log_cached(entry, position, reply, client_ip, started)
                return reply
        try:
            query = wire.parse_query(packet)
        except wire.QueryError as exc:
            self.malformed += 1
            if exc.rcode is None:
                return None
            opt = wire.reply_opt(packet, self.table.udp_payload_limit)
            return wire.error_response(exc.query_id, exc.flags, exc.rcode, exc.question, opt)
        response = self.table.answer(query, client_ip, udp)
        qtype = wire.type_name(query.qtype)
        rcode = wire.rcode_name(response.rcode)
        self.counts[(rcode, qtype, response.zone)] += 1
        reply = response.packet
        if udp and reply is not None:
            if response.cacheable:
                if len(self.cache) >= self.cache_entries:
                    self.flush_cache()
                self.cache[packet[2:]] = CachedAnswer(query, response)
            reply = self._limit(reply, client_ip, client_packed)
        if logged:
            members = response.members
            self._emit(
                query.qname.rstrip("."), qtype, rcode, response.zone, reply, client_ip,
                [m.ip for m in members] if members else list(response.ips),
                [m.cluster for m in members], started,
            )  # fmt: skip
        return reply

    def _limit(self, reply: bytes, client_ip: str, client_packed: bytes | None) -> bytes | None:
        rrl = self.rrl
        if not rrl.enabled:
            return reply
        packed = client_packed if client_packed is not None else client_address(client_ip)
        verdict = rrl.decide(rrl.key(packed), self.second)
        if verdict == Verdict.SEND:
            return reply
        if verdict == Verdict.SLIP:
            return slip_reply(reply)
        return None

    def _log_cached(
        self,
        entry: CachedAnswer,
        position: int,
        reply: bytes | None,
        client_ip: str,
        started: float,
    ) -> None:
        members: tuple[Target, ...] = ()
        if entry.rotation is not None:
            members = entry.rotation.chosen(position)
        self._emit(
            entry.qname, entry.qtype, entry.rcode, entry.zone, reply, client_ip,
            [m.ip for m in members] if members else list(entry.ips),
            [m.cluster for m in members], started,
        )  # fmt: skip

    def _emit(
        self,
        qname: str,
        qtype: str,
        rcode: str,
        zone: str,
        reply: bytes | None,
        client_ip: str,
        answers: list[str],
        clusters: list[str],
        started: float,
    ) -> None:
        assert self.log_sink is not None
        self.log_sink(
            DnsQueryLog(
                time=datetime.now(UTC),
                client=client_ip,
                qname=qname,
                qtype=qtype,
                rcode=rcode if reply is not None else f"{rcode}(dropped)",
                answers=answers,
                clusters=clusters,
                latency_us=round((time.perf_counter() - started) * 1e6, 1),
                replica=self.replica,
                zone=zone,
            )
        )

    def answers_by_member(self) -> Counter[tuple[str, str, str]]:
        """Answers per (fqdn, cluster, ip) so far: the table's rotations, plus hits on cached
        fixed answers (flushed and live)."""
        counts = self.table.answers_by_member()
        counts.update(dict(self.cached_answers))
        count_hits(list(self.cache.values()), None, counts)
        return counts

    def query_counts(self) -> Counter[tuple[str, str, str]]:
        """Scrape time, from the ops thread: copies before iterating what the loop changes."""
        counts = Counter(dict(self.counts))
        count_hits(list(self.cache.values()), counts, None)
        return counts


class QueryCountCollector(Collector):
    """Exports the engine's plain counters; a prometheus Counter per query would cost more
    than the answer itself."""

    def __init__(self, engine: DnsEngine, answer_metrics: str = "member") -> None:
        self.engine = engine
        self.answer_metrics = answer_metrics

    def collect(
        self,
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        engine = self.engine
        queries = CounterMetricFamily(
            "kgslb_dns_queries", "DNS queries answered", labels=["rcode", "qtype", "zone"]
        )
        for (rcode, qtype, zone), count in engine.query_counts().items():
            queries.add_metric([rcode, qtype, zone], count)
        yield queries
        yield CounterMetricFamily(
            "kgslb_dns_malformed_packets", "Packets that were not a usable query",
            value=engine.malformed,
        )  # fmt: skip
        limited = CounterMetricFamily(
            "kgslb_dns_rate_limited", "UDP responses held back by RRL", labels=["action"]
        )
        limited.add_metric(["drop"], engine.rrl.dropped)
        limited.add_metric(["slip"], engine.rrl.slipped)
        yield limited
        yield GaugeMetricFamily(
            "kgslb_dns_cached_responses", "Query packets with a ready response",
            value=len(engine.cache),
        )  # fmt: skip
        if self.answer_metrics == "member":
            answers = CounterMetricFamily(
                "kgslb_dns_answers",
                "Times a member's address was in an answer for a GSLB name",
                labels=["fqdn", "cluster", "ip"],
            )
            for (fqdn, cluster, ip), count in sorted(engine.answers_by_member().items()):
                answers.add_metric([fqdn, cluster, ip], count)
            yield answers
        elif self.answer_metrics == "cluster":
            answers = CounterMetricFamily(
                "kgslb_dns_answers",
                "Times a member of the cluster was in an answer, over every GSLB name",
                labels=["cluster"],
            )
            by_cluster: Counter[str] = Counter()
            for (_, cluster, _), count in engine.answers_by_member().items():
                by_cluster[cluster] += count
            for cluster, count in sorted(by_cluster.items()):
                answers.add_metric([cluster], count)
            yield answers
        latency = HistogramMetricFamily(
            "kgslb_dns_response_seconds",
            "From reading a query to handing its reply to the kernel (a UDP batch's queries "
            "share the batch's time; time queued in the socket is not included)",
            labels=["transport"],
        )
        for transport, histogram in engine.latency.items():
            latency.add_metric([transport], histogram.buckets(), histogram.total)
        yield latency


def bind_udp_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def bind_tcp_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock
