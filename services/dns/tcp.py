"""DNS over TCP (RFC 7766), fair to UDP and bounded per connection and per process.

Each connection reads into a small buffer of its own and queues for answers; one callback per
event-loop turn answers a bounded number of queued messages, a few per connection in turn, so
no client can hold the loop that UDP is served from. A client that does not read its replies
is read no further once they pass a high-water mark, and closed if it stays that way; a
connection past the process's cap closes the one idle longest. Time limits run from the last
whole query: bytes of an unfinished message never restart them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import socket
import struct
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.dns.ratelimit import ClientQueryBudget
from services.dns.server import DnsEngine, address_text, client_address

log = logging.getLogger(__name__)

MAX_QUERY_BYTES = 4095
"""The largest query answered, as over UDP (a longer TCP message closes the connection)."""
READ_BUFFER_BYTES = 2 + MAX_QUERY_BYTES
"""A connection's read buffer, allocated once: any whole query fits, many small pipelined
ones share it."""
MIN_FREE_BYTES = 512
MESSAGES_PER_CONNECTION_TURN = 16
MESSAGES_PER_LOOP_TURN = 256
"""At most this many TCP queries are answered per event-loop turn (a few milliseconds of
work): the UDP socket is read between turns whatever the TCP clients do."""
FD_RESERVE = 64
"""File descriptors kept for everything but TCP clients (NATS, listeners, ops, logs)."""
RATE_RESUME_MARGIN_SECONDS = 0.001


class Close(StrEnum):
    """Why a connection ended: the label of kgslb_dns_tcp_connections_closed_total."""

    IDLE = "idle"
    SLOW_MESSAGE = "slow_message"
    BLOCKED = "blocked"
    EVICTED = "evicted"
    OVERSIZED = "oversized"
    PEER = "peer"


class Pause(StrEnum):
    """Why reading a connection stopped: the label of kgslb_dns_tcp_read_pauses_total."""

    WRITE_BUFFER = "write_buffer"
    PIPELINE = "pipeline"
    RATE = "rate"


@dataclass(frozen=True, slots=True)
class TcpLimits:
    idle_seconds: float = 10.0
    message_seconds: float = 5.0
    blocked_seconds: float = 5.0
    max_connections: int = 1000
    max_pipelined: int = 100
    write_buffer_bytes: int = 65536

    @property
    def write_low_bytes(self) -> int:
        """Reading resumes once the replies waiting for the client fall below this."""
        return self.write_buffer_bytes // 4

    @property
    def sweep_seconds(self) -> float:
        """How often deadlines are checked: a quarter of the shortest, within 50 ms to 1 s."""
        shortest = min(self.idle_seconds, self.message_seconds, self.blocked_seconds)
        return min(1.0, max(0.05, shortest / 4))


class ConnectionClock:
    """What a connection's time limits depend on; times are event-loop (monotonic) seconds."""

    __slots__ = ("blocked_since", "last_query", "message_started", "owed")

    def __init__(self, opened: float) -> None:
        self.last_query = opened
        """The last whole query received, or the opening: the idle timer's start."""
        self.message_started: float | None = None
        """First byte of the message being received, while it is incomplete."""
        self.blocked_since: float | None = None
        """When the replies waiting for the client passed the high-water mark."""
        self.owed = False
        """Whole queries received and not answered yet: the client is waiting on us."""


def deadline(clock: ConnectionClock, limits: TcpLimits) -> tuple[float, Close]:
    """When the connection must be closed, and why, if nothing changes meanwhile.

    A client that does not read is given `blocked_seconds`; a message that has begun must be
    whole `message_seconds` after its first byte; otherwise `idle_seconds` run from the last
    whole query. Partial bytes never move the idle start, so one byte every few seconds buys
    nothing. A connection with queries we have not answered yet has no deadline.
    """
    if clock.blocked_since is not None:
        return clock.blocked_since + limits.blocked_seconds, Close.BLOCKED
    if clock.owed:
        return math.inf, Close.IDLE
    if clock.message_started is not None:
        return clock.message_started + limits.message_seconds, Close.SLOW_MESSAGE
    return clock.last_query + limits.idle_seconds, Close.IDLE


def connection_cap(wanted: int, fd_limit: int) -> int:
    """The connection cap a process can keep under its file-descriptor limit: at the cap a
    newcomer closes an old connection instead of failing at accept() for lack of a descriptor."""
    return max(1, min(wanted, fd_limit - FD_RESERVE))


C = TypeVar("C")


class Connections(Generic[C]):
    """Open connections, least recently active (by whole queries) first."""

    def __init__(self) -> None:
        self._order: OrderedDict[C, ConnectionClock] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[C]:
        return iter(list(self._order))

    def add(self, conn: C, clock: ConnectionClock) -> None:
        self._order[conn] = clock

    def remove(self, conn: C) -> None:
        self._order.pop(conn, None)

    def active(self, conn: C) -> None:
        """`conn` just sent a whole query: it becomes the last one a newcomer evicts."""
        if conn in self._order:
            self._order.move_to_end(conn)

    def victim(self) -> C | None:
        """The connection to close for a newcomer at the cap: the one idle longest, counting
        only whole queries as activity; one we owe answers only if every one is owed."""
        first: C | None = None
        for conn, clock in self._order.items():
            if not clock.owed:
                return conn
            if first is None:
                first = conn
        return first

    def expired(self, now: float, limits: TcpLimits) -> list[tuple[C, Close]]:
        out: list[tuple[C, Close]] = []
        for conn, clock in list(self._order.items()):
            when, reason = deadline(clock, limits)
            if when <= now:
                out.append((conn, reason))
        return out


class TcpConnection(asyncio.BufferedProtocol):
    """One client: length-prefixed messages (RFC 1035 4.2.2) framed in place in its buffer."""

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.clock = ConnectionClock(listener.now())
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.client_packed = b""
        self.rate_key = b""
        self.buffer = bytearray(READ_BUFFER_BYTES)
        self.start = 0
        """Offset of the first byte not answered yet."""
        self.scan = 0
        """Offset of the first message not known to be whole; whole ones lie before it."""
        self.end = 0
        self.ready = 0
        """Whole messages between `start` and `scan`."""
        self.paused: set[Pause] = set()
        self.queued = False
        self.closed = False
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        limits = self.listener.limits
        self.transport.set_write_buffer_limits(limits.write_buffer_bytes, limits.write_low_bytes)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_packed = client_address(peer[0])
            self.client_ip = address_text(self.client_packed)
            self.rate_key = self.listener.budget.key(self.client_packed)
        self.listener.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.lost(self)

    # Reading -----------------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        buffer = self.buffer
        if self.start == self.end:
            self.start = self.scan = self.end = 0
        elif len(buffer) - self.end < MIN_FREE_BYTES and self.start:
            # A same-size copy to the front: a bytearray with a live export cannot be resized.
            kept = self.end - self.start
            buffer[:kept] = buffer[self.start : self.end]
            self.scan -= self.start
            self.end = kept
            self.start = 0
        # Never empty: a buffer full from `start` holds whole messages (a message fits), and
        # reading stops while whole messages fill it.
        return memoryview(buffer)[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        buffer, scan, end, whole = self.buffer, self.scan, self.end, 0
        while end - scan >= 2:
            length = (buffer[scan] << 8) | buffer[scan + 1]
            if length > MAX_QUERY_BYTES:
                # Not a query we would answer (UDP reads no more either), and it would need a
                # buffer sixteen times larger: count it and hang up.
                self.listener.engine.malformed += 1
                self.listener.end(self, Close.OVERSIZED)
                return
            if end - scan < 2 + length:
                break
            scan += 2 + length
            whole += 1
        self.scan = scan
        clock = self.clock
        if whole:
            self.ready += whole
            clock.owed = True
            clock.last_query = now = self.listener.now()
            clock.message_started = now if end > scan else None
            self.listener.active(self)
        elif end > scan and clock.message_started is None:
            clock.message_started = self.listener.now()
        self._check_backlog()
        if self.ready and not self.paused.intersection((Pause.WRITE_BUFFER, Pause.RATE)):
            self.listener.schedule(self)

    def eof_received(self) -> bool:
        """A client may half-close after its queries (RFC 7766 6.2.4): answer them, then
        close; keeping the transport open is what lets the replies still be written."""
        self.eof = True
        return self.ready > 0

    def _check_backlog(self) -> None:
        """Stop reading while `max_pipelined` whole queries wait, or they fill the buffer."""
        full = len(self.buffer) - (self.end - self.start) < MIN_FREE_BYTES
        if self.ready and (self.ready >= self.listener.limits.max_pipelined or full):
            self.pause(Pause.PIPELINE)
        else:
            self.resume(Pause.PIPELINE)

    def pause(self, reason: Pause) -> None:
        if reason in self.paused:
            return
        self.paused.add(reason)
        self.listener.pauses[reason] += 1
        if self.transport is not None and not self.closed and self.transport.is_reading():
            self.transport.pause_reading()

    def resume(self, reason: Pause) -> None:
        if reason not in self.paused:
            return
        self.paused.discard(reason)
        if not self.paused and self.transport is not None and not (self.closed or self.eof):
            self.transport.resume_reading()

    # Writing -----------------------------------------------------------------------------

    def pause_writing(self) -> None:
        self.clock.blocked_since = self.listener.now()
        self.pause(Pause.WRITE_BUFFER)

    def resume_writing(self) -> None:
        self.clock.blocked_since = None
        self.resume(Pause.WRITE_BUFFER)
        if self.ready and Pause.RATE not in self.paused:
            self.listener.schedule(self)

    @property
    def answerable(self) -> bool:
        return (
            self.ready > 0
            and not self.closed
            and Pause.WRITE_BUFFER not in self.paused
            and Pause.RATE not in self.paused
        )

    def answer(self, budget: int, second: int) -> int:
        """Answer up to `budget` whole queries, in order; how many were answered."""
        engine, listener, transport = self.listener.engine, self.listener, self.transport
        assert transport is not None
        rate = listener.budget
        histogram = engine.latency["tcp"]
        answered = 0
        while answered < budget and self.answerable:
            if rate.enabled and not rate.take(self.rate_key, second):
                self.pause(Pause.RATE)
                listener.rate_limited(self)
                break
            started = time.perf_counter()
            (length,) = struct.unpack_from("!H", self.buffer, self.start)
            message = bytes(self.buffer[self.start + 2 : self.start + 2 + length])
            self.start += 2 + length
            self.ready -= 1
            answered += 1
            try:
                reply = engine.respond(message, self.client_ip, False, self.client_packed)
            except Exception:
                # Invariant: bad input never takes the server down. Count it and stay silent.
                engine.malformed += 1
                log.exception("unexpected error answering a TCP query")
                reply = None
            if reply is not None:
                # May call pause_writing() at once, which ends this loop.
                transport.write(struct.pack("!H", len(reply)) + reply)
            histogram.observe(time.perf_counter() - started)
        self.clock.owed = self.ready > 0
        if self.eof and not self.ready:
            listener.end(self, Close.PEER)
        elif not self.closed:
            self._check_backlog()
        return answered


class TcpListener:
    """The process's TCP connections: the cap, the deadlines, and the shared answer queue."""

    def __init__(self, engine: DnsEngine, limits: TcpLimits, budget: ClientQueryBudget) -> None:
        self.engine = engine
        self.limits = limits
        self.budget = budget
        self.cap = limits.max_connections
        self.connections: Connections[TcpConnection] = Connections()
        self.accepted = 0
        self.closes: Counter[Close] = Counter()
        self.pauses: Counter[Pause] = Counter()
        self._queue: deque[TcpConnection] = deque()
        self._scheduled = False
        self._rate_waiting: list[TcpConnection] = []
        self._rate_timer: asyncio.TimerHandle | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.server: asyncio.Server | None = None

    def now(self) -> float:
        return self.loop.time()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    async def start(self, sock: socket.socket) -> None:
        self.cap = connection_cap(self.limits.max_connections, raise_fd_limit(self.limits))
        if self.cap < self.limits.max_connections:
            log.warning(
                "tcp connection cap lowered from %d to %d by the open-file limit",
                self.limits.max_connections, self.cap,
            )  # fmt: skip
        self.server = await self.loop.create_server(lambda: TcpConnection(self), sock=sock)
        self._sweeper = self.loop.call_later(self.limits.sweep_seconds, self._sweep)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for handle in (self._sweeper, self._rate_timer):
            if handle is not None:
                handle.cancel()
        for conn in self.connections:
            # Shutting down is no limit at work: nothing is counted.
            conn.closed = True
            self.connections.remove(conn)
            if conn.transport is not None:
                conn.transport.abort()

    # Connections -------------------------------------------------------------------------

    def opened(self, conn: TcpConnection) -> None:
        self.accepted += 1
        if len(self.connections) >= self.cap:
            victim = self.connections.victim()
            if victim is not None:
                self.end(victim, Close.EVICTED)
        self.connections.add(conn, conn.clock)

    def active(self, conn: TcpConnection) -> None:
        self.connections.active(conn)

    def end(self, conn: TcpConnection, reason: Close) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.connections.remove(conn)
        self.closes[reason] += 1
        transport = conn.transport
        if transport is None:
            return
        if transport.get_write_buffer_size():
            # close() would wait for a client that may never read: drop what it left.
            transport.abort()
        else:
            transport.close()

    def lost(self, conn: TcpConnection) -> None:
        if not conn.closed:
            conn.closed = True
            self.connections.remove(conn)
            self.closes[Close.PEER] += 1

    def _sweep(self) -> None:
        for conn, reason in self.connections.expired(self.now(), self.limits):
            self.end(conn, reason)
        self._sweeper = self.loop.call_later(self.limits.sweep_seconds, self._sweep)

    # Answering ---------------------------------------------------------------------------

    def schedule(self, conn: TcpConnection) -> None:
        if conn.queued:
            return
        conn.queued = True
        self._queue.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._run)

    def _run(self) -> None:
        """One turn of TCP answers, round robin over the connections with whole queries."""
        self._scheduled = False
        left = MESSAGES_PER_LOOP_TURN
        second = int(self.now())
        queue = self._queue
        while queue and left > 0:
            conn = queue.popleft()
            conn.queued = False
            left -= conn.answer(min(MESSAGES_PER_CONNECTION_TURN, left), second)
            if conn.answerable:
                conn.queued = True
                queue.append(conn)
        if queue:
            self._scheduled = True
            self.loop.call_soon(self._run)

    def rate_limited(self, conn: TcpConnection) -> None:
        self._rate_waiting.append(conn)
        if self._rate_timer is None:
            next_second = math.floor(self.now()) + 1 + RATE_RESUME_MARGIN_SECONDS
            self._rate_timer = self.loop.call_at(next_second, self._new_second)

    def _new_second(self) -> None:
        self._rate_timer = None
        waiting, self._rate_waiting = self._rate_waiting, []
        for conn in waiting:
            conn.resume(Pause.RATE)
            if conn.answerable:
                self.schedule(conn)


def raise_fd_limit(limits: TcpLimits) -> int:
    """Raise the soft open-file limit toward what the cap needs (as Go programs do at start,
    up to the hard limit); return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit to %d: %s", target, exc)
    return wanted if soft == resource.RLIM_INFINITY else soft


async def serve_tcp(
    engine: DnsEngine, sock: socket.socket, limits: TcpLimits, budget: ClientQueryBudget
) -> TcpListener:
    listener = TcpListener(engine, limits, budget)
    await listener.start(sock)
    return listener


class TcpCollector(Collector):
    """The listener's counters, read at scrape time from the ops thread."""

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        listener = self.listener
        connections = list(listener.connections)
        yield GaugeMetricFamily(
            "kgslb_dns_tcp_connections", "Open TCP client connections", value=len(connections)
        )
        yield GaugeMetricFamily(
            "kgslb_dns_tcp_connections_limit",
            "TCP connections kept open at most; a newcomer at the cap closes the one idle longest",
            value=listener.cap,
        )
        yield CounterMetricFamily(
            "kgslb_dns_tcp_connections_accepted", "TCP connections accepted",
            value=listener.accepted,
        )  # fmt: skip
        closed = CounterMetricFamily(
            "kgslb_dns_tcp_connections_closed", "TCP connections ended, by reason",
            labels=["reason"],
        )  # fmt: skip
        closes = dict(listener.closes)
        for reason in Close:
            closed.add_metric([reason.value], closes.get(reason, 0))
        yield closed
        paused = CounterMetricFamily(
            "kgslb_dns_tcp_read_pauses", "Times reading a TCP client stopped, by reason",
            labels=["reason"],
        )  # fmt: skip
        pauses = dict(listener.pauses)
        for pause in Pause:
            paused.add_metric([pause.value], pauses.get(pause, 0))
        yield paused
        yield GaugeMetricFamily(
            "kgslb_dns_tcp_write_buffer_bytes",
            "Reply bytes waiting in the process for TCP clients to read them",
            value=sum(c.transport.get_write_buffer_size() for c in connections if c.transport),
        )
