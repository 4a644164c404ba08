"""The watcher's resolver for load balancers that report only a hostname (AWS ELBs, Routes
whose router has a canonical hostname): the hostname's A and AAAA addresses, kept fresh.

The system resolver (`getaddrinfo`: /etc/hosts, then DNS) gives no TTL, so its answers are
refreshed every `--hostname-refresh-seconds`; with `--hostname-resolver HOST[:PORT]` the watcher
asks that DNS server itself (dnspython) and refreshes at the answer's TTL, between
`--hostname-min-refresh-seconds` and the refresh period. `due` is the pure part.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from services.watcher.sources.base import Resolution
from shared.models import normalize_ip


def parse_server(value: str) -> tuple[str, int]:
    """`HOST`, `HOST:PORT` or `[V6]:PORT` (HOST an IP address); ValueError saying what is
    allowed."""
    text = value.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port_text = rest.removeprefix(":")
            port = int(port_text) if port_text.isdigit() else -1
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = int(port_text) if port_text.isdigit() else -1
    try:
        ipaddress.ip_address(host)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ValueError(
            f"hostname resolver {value!r}: expected an IP address with an optional port "
            "(127.0.0.1, 127.0.0.1:5353, [::1]:5353)"
        )
    return host, port


@dataclass(frozen=True)
class Answer:
    resolution: Resolution
    ttl_seconds: float | None
    """None: the system resolver, which tells no TTL."""


def due(answered_at: float, ttl: float | None, period: float, minimum: float) -> float:
    """When to resolve a hostname again: at its TTL (not sooner than `minimum`, not later
    than `period`), or after `period` when the TTL is unknown or the resolution failed."""
    wait = period if ttl is None else max(minimum, min(ttl, period))
    return answered_at + wait


class Resolver:
    def __init__(self, server: str, timeout_seconds: float) -> None:
        self.timeout_seconds = timeout_seconds
        self._dns: dns.asyncresolver.Resolver | None = None
        if server:
            host, port = parse_server(server)
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [host]
            resolver.port = port
            resolver.lifetime = timeout_seconds
            self._dns = resolver

    async def resolve(self, hostname: str) -> Answer:
        try:
            if self._dns is not None:
                return await self._ask_server(self._dns, hostname)
            return await asyncio.wait_for(self._system(hostname), self.timeout_seconds)
        except TimeoutError:
            error = f"no answer in {self.timeout_seconds:g} s"
        except (OSError, dns.exception.DNSException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        return Answer(Resolution((), f"{hostname}: {error}"), None)

    async def _system(self, hostname: str) -> Answer:
        infos = await asyncio.get_running_loop().getaddrinfo(
            hostname, None, type=socket.SOCK_STREAM
        )
        addresses = tuple(dict.fromkeys(normalize_ip(str(info[4][0])) for info in infos))
        return Answer(Resolution(addresses), None)

    async def _ask_server(self, resolver: dns.asyncresolver.Resolver, hostname: str) -> Answer:
        addresses: list[str] = []
        ttls: list[float] = []
        errors: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await resolver.resolve(hostname, rdtype, search=False)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN) as exc:
                errors.append(f"{rdtype}: {type(exc).__name__}")
                continue
            addresses.extend(normalize_ip(rr.address) for rr in answer)
            if answer.rrset is not None:
                ttls.append(float(answer.rrset.ttl))
        if not addresses:
            return Answer(Resolution((), f"{hostname}: {', '.join(errors)}"), None)
        return Answer(Resolution(tuple(dict.fromkeys(addresses))), min(ttls, default=None))
