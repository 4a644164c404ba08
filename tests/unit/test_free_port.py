"""The ports the embedded stack and the tests hand to servers they start next."""

from __future__ import annotations

import socket

from kgslb.embedded import _ephemeral_range, free_port


def test_a_free_port_lies_below_the_range_outgoing_connections_take_their_ports_from() -> None:
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert all(port < low for port in ports), ports


def test_a_free_port_is_never_handed_out_twice() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_a_free_port_takes_both_a_tcp_and_a_udp_bind() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", port))


def test_a_port_already_bound_is_not_handed_out() -> None:
    squatters = []
    try:
        low, _ = _ephemeral_range()
        # Take a good part of the range so that the choice meets bound ports.
        for port in range(10_000, min(low, 10_000 + 2_000)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            squatters.append(sock)
        taken = {sock.getsockname()[1] for sock in squatters}
        chosen = [free_port() for _ in range(100)]
        assert not taken.intersection(chosen)
    finally:
        for sock in squatters:
            sock.close()
