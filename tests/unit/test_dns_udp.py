"""UDP batching over real loopback sockets: every reply reaches the client that asked, with its
ID, when a batch mixes cache hits, misses and silences; the one-at-a-time fallback agrees."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import dns.message
import dns.rcode
import pytest

from services.dns.server import DnsEngine, bind_udp_socket
from services.dns.udp import BatchUdpServer, PlainUdpServer
from shared.models import DnsQueryLog
from tests.unit.test_dns_answers import HELLO, addresses, seeded_engine


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(6)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.3)
    yield sockets
    for sock in sockets:
        sock.close()


def packet(name: str, query_id: int, rdtype: str = "A") -> bytes:
    message = dns.message.make_query(name, rdtype)
    message.id = query_id
    return message.to_wire()


def silent(query_id: int) -> bytes:
    """A response packet: the server must not answer it."""
    data = bytearray(packet(HELLO, query_id))
    data[2] |= 0x80
    return bytes(data)


def exchange(
    server: BatchUdpServer | PlainUdpServer, clients: list[socket.socket], packets: list[bytes]
) -> list[dns.message.Message | None]:
    """Send every packet first, so the server reads them as one batch, then answer them."""
    address = server.sock.getsockname()
    for client, data in zip(clients, packets, strict=False):
        client.sendto(data, address)
    server.on_readable()
    replies: list[dns.message.Message | None] = []
    for client in clients[: len(packets)]:
        try:
            replies.append(dns.message.from_wire(client.recv(4096)))
        except TimeoutError:
            replies.append(None)
    return replies


def mixed_batch() -> list[bytes]:
    return [
        packet(HELLO, 1),
        silent(2),
        packet("nope.avi.iberia.local", 3),
        silent(4),
        packet("test.avi.iberia.local", 5),
        packet(HELLO, 6),
    ]


def check_mixed(replies: list[dns.message.Message | None]) -> None:
    assert replies[1] is None and replies[3] is None
    assert [r.id for r in replies if r is not None] == [1, 3, 5, 6]
    first, nxdomain, static, last = (r for r in replies if r is not None)
    assert addresses(first) and addresses(last)
    assert nxdomain.rcode() == dns.rcode.NXDOMAIN
    assert addresses(static) == ["10.10.24.200"]


def server_for(
    kind: type[BatchUdpServer] | type[PlainUdpServer],
) -> BatchUdpServer | PlainUdpServer:
    engine: DnsEngine = seeded_engine()
    return kind(bind_udp_socket("127.0.0.1", 0, reuse_port=False), engine)


def test_a_batch_with_silences_answers_each_client_with_its_own_reply(
    clients: list[socket.socket],
) -> None:
    check_mixed(exchange(server_for(BatchUdpServer), clients, mixed_batch()))


def test_the_same_batch_again_is_answered_from_the_cache_to_the_right_clients(
    clients: list[socket.socket],
) -> None:
    server = server_for(BatchUdpServer)
    exchange(server, clients, mixed_batch())

    replies = exchange(server, clients, mixed_batch())

    check_mixed(replies)
    assert len(server.engine.cache) == 3


def test_batched_answers_keep_the_round_robin_across_the_batch(
    clients: list[socket.socket],
) -> None:
    server = server_for(BatchUdpServer)
    seen = []
    for turn in range(2):
        replies = exchange(server, clients, [packet(HELLO, turn * 6 + i) for i in range(6)])
        seen += [addresses(r)[0] for r in replies if r is not None]

    assert sorted(seen) == sorted(
        ["127.10.25.46"] * 6 + ["127.10.26.40"] * 4 + ["127.10.23.40"] * 2
    )


def test_the_one_at_a_time_fallback_answers_the_same(clients: list[socket.socket]) -> None:
    check_mixed(exchange(server_for(PlainUdpServer), clients, mixed_batch()))


def test_ipv6_and_v4_mapped_clients_are_answered_and_known_by_their_address() -> None:
    records: list[DnsQueryLog] = []
    engine = seeded_engine(log_sink=records.append, log_per_second=0)
    server = BatchUdpServer(bind_udp_socket("::", 0, reuse_port=False), engine)
    port = server.sock.getsockname()[1]
    with (
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as v6,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as v4,
    ):
        v6.settimeout(0.3)
        v4.settimeout(0.3)
        v6.sendto(packet("nope.avi.iberia.local", 7), ("::1", port))
        v4.sendto(packet("nope.avi.iberia.local", 8), ("127.0.0.1", port))
        server.on_readable()

        assert dns.message.from_wire(v6.recv(4096)).id == 7
        assert dns.message.from_wire(v4.recv(4096)).id == 8
    assert sorted(r.client for r in records) == ["127.0.0.1", "::1"]
