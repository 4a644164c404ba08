"""UDP and TCP listeners around the answer table. Everything here is synchronous per packet:
parse, look up, render, send. Query logs and counters are handed off without awaiting."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import cast

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from services.dns import wire
from services.dns.table import AnswerTable, Response
from shared.models import DnsQueryLog

log = logging.getLogger(__name__)

TCP_IDLE_TIMEOUT_SECONDS = 10.0
MAX_TCP_MESSAGE = 65535


class LogThrottle:
    """At most `per_second` records per second; 0 means every query (the seed's 'no
    throttle'). Cheap enough to ask on every query."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._window = 0
        self._used = 0

    def allow(self, now: float) -> bool:
        if self.per_second == 0:
            return True
        window = int(now)
        if window != self._window:
            self._window, self._used = window, 0
        if self._used < self.per_second:
            self._used += 1
            return True
        return False


class DnsEngine:
    """Turns a packet into a response, counting and sampling for the query log."""

    def __init__(
        self,
        table: AnswerTable,
        replica: str,
        log_sink: Callable[[DnsQueryLog], None] | None = None,
        log_per_second: int = 50,
    ) -> None:
        self.table = table
        self.replica = replica
        self.log_sink = log_sink
        self.throttle = LogThrottle(log_per_second)
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.malformed = 0

    def handle(self, packet: bytes, client_ip: str, udp: bool) -> bytes | None:
        started = time.perf_counter()
        try:
            query = wire.parse_query(packet)
        except wire.QueryError as exc:
            self.malformed += 1
            if exc.rcode is None:
                return None
            return wire.error_response(exc.query_id, exc.flags, exc.rcode)
        response = self.table.answer(query, client_ip, udp)
        qtype = wire.type_name(query.qtype)
        rcode = wire.RCODE_NAMES.get(response.rcode, str(response.rcode))
        self.counts[(rcode, qtype, response.zone)] += 1
        if self.log_sink is not None and self.throttle.allow(started):
            self._log(query, response, client_ip, qtype, rcode, started)
        return response.packet

    def _log(
        self,
        query: wire.Query,
        response: Response,
        client_ip: str,
        qtype: str,
        rcode: str,
        started: float,
    ) -> None:
        assert self.log_sink is not None
        self.log_sink(
            DnsQueryLog(
                time=datetime.now(UTC),
                client=client_ip,
                qname=query.qname.rstrip("."),
                qtype=qtype,
                rcode=rcode if response.packet is not None else f"{rcode}(dropped)",
                answers=[m.ip for m in response.members],
                clusters=[m.cluster for m in response.members],
                latency_us=round((time.perf_counter() - started) * 1e6, 1),
                replica=self.replica,
                zone=response.zone,
            )
        )


class QueryCountCollector(Collector):
    """Exports the engine's plain counters; a prometheus Counter per query would cost more
    than the answer itself."""

    def __init__(self, engine: DnsEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[CounterMetricFamily]:
        queries = CounterMetricFamily(
            "kgslb_dns_queries", "DNS queries answered", labels=["rcode", "qtype", "zone"]
        )
        for (rcode, qtype, zone), count in list(self.engine.counts.items()):
            queries.add_metric([rcode, qtype, zone], count)
        yield queries
        yield CounterMetricFamily(
            "kgslb_dns_malformed_packets", "Packets that were not a usable query",
            value=self.engine.malformed,
        )  # fmt: skip


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, engine: DnsEngine) -> None:
        self.engine = engine
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, so no isinstance check here.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        try:
            reply = self.engine.handle(data, str(addr[0]), True)
        except Exception:
            # Invariant: bad input never takes the server down. Count it and stay silent.
            self.engine.malformed += 1
            log.exception("unexpected error answering a UDP query")
            return
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error: %s", exc)


class TcpProtocol(asyncio.Protocol):
    """RFC 7766: length-prefixed messages, several per connection, closed when idle."""

    def __init__(self, engine: DnsEngine) -> None:
        self.engine = engine
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else ""
        self._arm_idle()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(TCP_IDLE_TIMEOUT_SECONDS, self._close)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._arm_idle()
        while len(self.buffer) >= 2:
            (length,) = struct.unpack_from("!H", self.buffer)
            if len(self.buffer) < 2 + length:
                return
            message = bytes(self.buffer[2 : 2 + length])
            del self.buffer[: 2 + length]
            try:
                reply = self.engine.handle(message, self.client_ip, False)
            except Exception:
                self.engine.malformed += 1
                log.exception("unexpected error answering a TCP query")
                reply = None
            if reply is not None and self.transport is not None:
                self.transport.write(struct.pack("!H", len(reply)) + reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()


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


async def serve(
    engine: DnsEngine, udp_sock: socket.socket, tcp_sock: socket.socket
) -> tuple[asyncio.DatagramTransport, asyncio.Server]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: UdpProtocol(engine), sock=udp_sock)
    server = await loop.create_server(lambda: TcpProtocol(engine), sock=tcp_sock)
    return transport, server
