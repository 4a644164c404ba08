"""DNS over TCP, bounded: the pure decisions (deadlines, which connection a newcomer evicts, the
cap under the file limit, the per-network TCP budget), then the listener on a loopback socket
with the real engine: each limit closing or pausing the client it is meant for."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

import dns.message
import pytest

from services.dns.ratelimit import ClientQueryBudget
from services.dns.tcp import (
    FD_RESERVE,
    Close,
    ConnectionClock,
    Connections,
    Pause,
    TcpLimits,
    TcpListener,
    connection_cap,
    deadline,
)
from tests.unit.test_dns_answers import HELLO, seeded_engine

LIMITS = TcpLimits(idle_seconds=10, message_seconds=5, blocked_seconds=3)


def clock(last_query: float = 0.0, **fields: float | bool | None) -> ConnectionClock:
    out = ConnectionClock(last_query)
    for name, value in fields.items():
        setattr(out, name, value)
    return out


# Deadlines --------------------------------------------------------------------------------


def test_an_idle_connection_closes_idle_seconds_after_its_last_whole_query() -> None:
    assert deadline(clock(100.0), LIMITS) == (110.0, Close.IDLE)


def test_a_message_begun_must_be_whole_within_message_seconds_of_its_first_byte() -> None:
    """However many bytes follow: a drip of one byte every few seconds buys nothing."""
    assert deadline(clock(100.0, message_started=108.0), LIMITS) == (113.0, Close.SLOW_MESSAGE)


def test_a_client_that_does_not_read_is_given_blocked_seconds() -> None:
    blocked = clock(100.0, blocked_since=101.0, owed=True, message_started=100.5)

    assert deadline(blocked, LIMITS) == (104.0, Close.BLOCKED)


def test_a_connection_we_owe_answers_has_no_deadline() -> None:
    when, _ = deadline(clock(100.0, owed=True, message_started=100.0), LIMITS)

    assert when == float("inf")


def test_expired_lists_only_connections_past_their_deadline_with_the_reason() -> None:
    connections: Connections[str] = Connections()
    connections.add("idle", clock(0.0))
    connections.add("dripping", clock(8.0, message_started=9.0))
    connections.add("fresh", clock(9.0))

    assert connections.expired(13.5, LIMITS) == [("idle", Close.IDLE)]
    assert connections.expired(19.5, LIMITS) == [
        ("idle", Close.IDLE), ("dripping", Close.SLOW_MESSAGE), ("fresh", Close.IDLE),
    ]  # fmt: skip


def test_the_sweep_runs_at_a_quarter_of_the_shortest_limit_within_bounds() -> None:
    assert LIMITS.sweep_seconds == 0.75
    assert TcpLimits(idle_seconds=60, message_seconds=60, blocked_seconds=60).sweep_seconds == 1
    assert TcpLimits(idle_seconds=0.01).sweep_seconds == 0.05


def test_reading_resumes_below_a_quarter_of_the_write_buffer_limit() -> None:
    assert TcpLimits(write_buffer_bytes=65536).write_low_bytes == 16384


# Eviction at the cap ----------------------------------------------------------------------


def test_a_newcomer_at_the_cap_evicts_the_connection_idle_longest() -> None:
    connections: Connections[str] = Connections()
    for name in ("a", "b", "c"):
        connections.add(name, clock())

    connections.active("a")

    assert connections.victim() == "b"


def test_partial_bytes_do_not_save_a_connection_from_eviction() -> None:
    """Only whole queries are activity: the drip that never finishes stays first in line."""
    connections: Connections[str] = Connections()
    connections.add("dripping", clock(0.0, message_started=9.0))
    connections.add("asked", clock(5.0))

    assert connections.victim() == "dripping"


def test_a_connection_we_owe_answers_is_evicted_only_when_every_one_is_owed() -> None:
    connections: Connections[str] = Connections()
    connections.add("owed", clock(owed=True))
    connections.add("idle", clock())
    assert connections.victim() == "idle"

    connections.remove("idle")
    connections.add("also owed", clock(owed=True))
    assert connections.victim() == "owed"


def test_no_connections_no_victim() -> None:
    assert Connections[str]().victim() is None


def test_the_cap_stays_under_the_open_file_limit() -> None:
    assert connection_cap(1000, 20000) == 1000
    assert connection_cap(1000, 300) == 300 - FD_RESERVE
    assert connection_cap(1000, 10) == 1


# The TCP query budget ---------------------------------------------------------------------


def test_the_tcp_budget_is_per_network_and_per_second() -> None:
    budget = ClientQueryBudget(2)
    one = budget.key(socket.inet_pton(socket.AF_INET, "192.0.2.1"))
    same_net = budget.key(socket.inet_pton(socket.AF_INET, "192.0.2.77"))
    other = budget.key(socket.inet_pton(socket.AF_INET, "198.51.100.1"))

    assert [budget.take(one, 1), budget.take(same_net, 1), budget.take(one, 1)] == [
        True, True, False,
    ]  # fmt: skip
    assert budget.take(other, 1)
    assert budget.take(one, 2), "a new second, a new budget"


def test_a_zero_tcp_budget_is_off() -> None:
    assert not ClientQueryBudget(0).enabled


# The listener on loopback -----------------------------------------------------------------


def framed(query_id: int, name: str = HELLO) -> bytes:
    wire = dns.message.make_query(name, "A").to_wire()
    return struct.pack("!HH", len(wire), query_id) + wire[2:]


async def read_reply(reader: asyncio.StreamReader) -> dns.message.Message:
    (size,) = struct.unpack("!H", await reader.readexactly(2))
    return dns.message.from_wire(await reader.readexactly(size))


async def closed(reader: asyncio.StreamReader, within: float = 5.0) -> bool:
    try:
        return await asyncio.wait_for(reader.read(65536), within) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
async def serving(request: pytest.FixtureRequest) -> AsyncIterator[TcpListener]:
    """A listener on an ephemeral loopback port; `@pytest.mark.parametrize` passes limits."""
    limits, per_second = getattr(request, "param", (TcpLimits(), 0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    listener = TcpListener(seeded_engine(), limits, ClientQueryBudget(per_second))
    await listener.start(sock)
    try:
        yield listener
    finally:
        listener.close()
        sock.close()


def port_of(listener: TcpListener) -> int:
    assert listener.server is not None
    return int(listener.server.sockets[0].getsockname()[1])


async def connect(listener: TcpListener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port_of(listener))


async def test_pipelined_queries_are_answered_in_order(serving: TcpListener) -> None:
    reader, writer = await connect(serving)
    writer.write(b"".join(framed(i) for i in range(300)))

    replies = [await read_reply(reader) for _ in range(300)]

    assert [reply.id for reply in replies] == list(range(300))
    writer.close()


@pytest.mark.parametrize(
    "serving", [(TcpLimits(idle_seconds=0.6, message_seconds=0.3), 0)], indirect=True
)
async def test_a_slow_drip_is_closed_although_bytes_keep_coming(serving: TcpListener) -> None:
    reader, writer = await connect(serving)
    message = framed(1)

    for byte in message[:-1]:
        if reader.at_eof():
            break
        writer.write(bytes((byte,)))
        await asyncio.sleep(0.1)

    assert await closed(reader)
    assert serving.closes[Close.SLOW_MESSAGE] == 1


@pytest.mark.parametrize("serving", [(TcpLimits(idle_seconds=0.3), 0)], indirect=True)
async def test_an_idle_connection_is_closed_after_its_last_answer(serving: TcpListener) -> None:
    reader, writer = await connect(serving)
    writer.write(framed(1))
    assert (await read_reply(reader)).id == 1

    assert await closed(reader)
    assert serving.closes[Close.IDLE] == 1


@pytest.mark.parametrize("serving", [(TcpLimits(max_connections=3), 0)], indirect=True)
async def test_a_newcomer_at_the_cap_closes_the_longest_idle_and_is_answered(
    serving: TcpListener,
) -> None:
    silent = await connect(serving)
    others = [await connect(serving) for _ in range(2)]
    for reader, writer in others:
        writer.write(framed(5))
        await read_reply(reader)

    reader, writer = await connect(serving)
    writer.write(framed(6))

    assert (await read_reply(reader)).id == 6
    assert await closed(silent[0])
    assert serving.closes[Close.EVICTED] == 1
    assert len(serving.connections) == 3


@pytest.mark.parametrize(
    "serving", [(TcpLimits(write_buffer_bytes=4096, blocked_seconds=0.5), 0)], indirect=True
)
async def test_a_client_that_does_not_read_is_paused_then_closed(serving: TcpListener) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port_of(serving)))
    burst = b"".join(framed(i) for i in range(500))
    try:
        for _ in range(2000):
            if serving.closes[Close.BLOCKED]:
                break
            with contextlib.suppress(BlockingIOError):
                sock.send(burst)
            await asyncio.sleep(0.01)
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        sock.close()

    assert serving.pauses[Pause.WRITE_BUFFER] >= 1
    assert serving.closes[Close.BLOCKED] == 1


@pytest.mark.parametrize("serving", [(TcpLimits(), 20)], indirect=True)
async def test_a_client_over_its_tcp_budget_waits_and_loses_nothing(serving: TcpListener) -> None:
    reader, writer = await connect(serving)
    writer.write(b"".join(framed(i) for i in range(50)))

    replies = [await asyncio.wait_for(read_reply(reader), 5) for _ in range(50)]

    assert [reply.id for reply in replies] == list(range(50))
    assert serving.pauses[Pause.RATE] >= 2
    writer.close()


async def test_queries_sent_before_a_half_close_are_still_answered(serving: TcpListener) -> None:
    reader, writer = await connect(serving)
    writer.write(b"".join(framed(i) for i in range(3)))
    writer.write_eof()

    replies = [await read_reply(reader) for _ in range(3)]

    assert [reply.id for reply in replies] == [0, 1, 2]
    assert await closed(reader)


async def test_a_message_longer_than_any_query_closes_the_connection(
    serving: TcpListener,
) -> None:
    reader, writer = await connect(serving)
    writer.write(struct.pack("!H", 60000) + b"\x00" * 100)

    assert await closed(reader)
    assert serving.closes[Close.OVERSIZED] == 1
