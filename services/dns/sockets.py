"""The DNS listening sockets: bound by the process that serves them, or by the `--workers`
supervisor and inherited by each worker as file descriptors."""

from __future__ import annotations

import socket

from services.dns.server import bind_tcp_socket, bind_udp_socket
from services.dns.settings import DnsSettings


def bind(settings: DnsSettings, reuse_port: bool = False) -> tuple[socket.socket, socket.socket]:
    """Bind both sockets before anything else, so a busy port fails fast and clearly."""
    try:
        udp = bind_udp_socket(settings.dns_host, settings.dns_port, reuse_port)
    except OSError as exc:
        raise SystemExit(
            f"kgslb dns: cannot listen on udp {settings.dns_host}:{settings.dns_port}: "
            f"{exc.strerror}"
        ) from None
    try:
        tcp = bind_tcp_socket(settings.dns_host, udp.getsockname()[1], reuse_port)
    except OSError as exc:
        udp.close()
        raise SystemExit(
            f"kgslb dns: cannot listen on tcp {settings.dns_host}:{settings.dns_port}: "
            f"{exc.strerror}"
        ) from None
    return udp, tcp


def inherited(settings: DnsSettings) -> tuple[socket.socket, socket.socket]:
    """The sockets named by `--dns-socket-fds`, as a worker receives them."""
    try:
        udp_fd, tcp_fd = (int(part) for part in settings.dns_socket_fds.split(","))
        udp = socket.socket(fileno=udp_fd)
        tcp = socket.socket(fileno=tcp_fd)
    except (ValueError, OSError) as exc:
        raise SystemExit(
            f"kgslb dns: --dns-socket-fds {settings.dns_socket_fds!r} is not two open sockets "
            f"'udp_fd,tcp_fd': {exc}"
        ) from None
    udp.setblocking(False)
    tcp.setblocking(False)
    return udp, tcp


def listening(settings: DnsSettings) -> tuple[socket.socket, socket.socket]:
    """A worker's inherited sockets, else sockets of our own."""
    return inherited(settings) if settings.dns_socket_fds else bind(settings)
