"""Probe adapters: one HTTP(S) request or one TCP connect to a member, as a `ProbeResult`.

Every probe opens its own connection and closes it (`Connection: close`), as a load balancer's
monitor does: a pooled connection could hide a listener that stopped accepting, and TLS SNI (the
GSLB name) belongs to a connection, not to a request. Requests are written and parsed with h11
over asyncio streams; httpx's per-request overhead capped one core at about 1,500 probes/s,
below the 2,000 members/s a replica must carry (see services/health/README.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time

import h11

from services.health.monitor import (
    CONTROL_PLANE_ONLY,
    Outcome,
    ProbeResult,
    ProbeTarget,
    judge_http,
)
from shared.models import MonitorKind

USER_AGENT = "kgslb-health/1"
BODY_LIMIT_BYTES = 64 * 1024
"""A body match reads at most this much; monitors look for a marker, not a document."""
READ_CHUNK_BYTES = 16 * 1024


class Prober:
    """Runs probes; holds only the TLS contexts, so one instance serves every member."""

    def __init__(self, ca_file: str | None = None, source: str | None = None) -> None:
        self._source = ipaddress.ip_address(source) if source else None
        self._verifying = ssl.create_default_context(cafile=ca_file)
        self._trusting = ssl.create_default_context()
        self._trusting.check_hostname = False
        self._trusting.verify_mode = ssl.CERT_NONE

    async def probe(self, target: ProbeTarget) -> ProbeResult:
        monitor = target.monitor
        if monitor.kind is MonitorKind.NONE:
            return CONTROL_PLANE_ONLY
        where = f"{target.ip}:{target.port}"
        started = time.perf_counter()
        try:
            async with asyncio.timeout(monitor.timeout_seconds):
                if monitor.kind is MonitorKind.TCP:
                    return await self._tcp(target, started)
                return await self._http(target, started)
        except TimeoutError:
            return ProbeResult(
                Outcome.TIMEOUT,
                "timeout",
                f"{where} gave no answer within {monitor.timeout_seconds:g} s",
            )
        except ConnectionRefusedError:
            return ProbeResult(Outcome.REFUSED, "connection refused", f"{where} refused")
        except ssl.SSLError as exc:
            return ProbeResult(
                Outcome.TLS,
                "TLS error",
                f"TLS with {where} (SNI {target.fqdn}) failed: {exc.reason or exc}",
            )
        except h11.ProtocolError as exc:
            return ProbeResult(Outcome.PROTOCOL, "bad HTTP response", f"{where}: {exc}")
        except OSError as exc:
            return ProbeResult(Outcome.NETWORK, "network error", f"{where}: {exc.strerror or exc}")

    def _local_addr(self, ip: str) -> tuple[str, int] | None:
        """Where a probe to `ip` leaves from: the source address when it has the member's
        address family, else the OS's choice."""
        source = self._source
        if source is None or source.version != ipaddress.ip_address(ip).version:
            return None
        return (str(source), 0)

    async def _tcp(self, target: ProbeTarget, started: float) -> ProbeResult:
        _, writer = await asyncio.open_connection(
            target.ip, target.port, local_addr=self._local_addr(target.ip)
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
        writer.close()
        return ProbeResult(Outcome.OK, "TCP connected", response_time_ms=elapsed_ms)

    async def _http(self, target: ProbeTarget, started: float) -> ProbeResult:
        monitor = target.monitor
        tls: ssl.SSLContext | None = None
        if monitor.kind is MonitorKind.HTTPS:
            tls = self._verifying if monitor.tls_verify else self._trusting
        reader, writer = await asyncio.open_connection(
            target.ip,
            target.port,
            ssl=tls,
            server_hostname=target.fqdn if tls else None,
            local_addr=self._local_addr(target.ip),
        )
        try:
            # A HEAD response has no body to match, so a body match asks with GET.
            method = "GET" if monitor.body_contains is not None else monitor.method
            connection = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method=method,
                target=monitor.path,
                headers=[
                    ("Host", target.fqdn),
                    ("User-Agent", USER_AGENT),
                    ("Accept", "*/*"),
                    ("Connection", "close"),
                ],
            )
            writer.write(connection.send(request) + (connection.send(h11.EndOfMessage()) or b""))
            response = await _response(connection, reader)
            elapsed_ms = (time.perf_counter() - started) * 1000
            body = None
            if monitor.body_contains is not None:
                body = await _body(connection, reader, monitor.body_contains.encode())
            result = judge_http(response.status_code, body, monitor)
            return ProbeResult(result.outcome, result.summary, result.error, elapsed_ms)
        finally:
            writer.close()


async def _next_event(connection: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await reader.read(READ_CHUNK_BYTES)
        if not data and connection.their_state is h11.SEND_RESPONSE:
            raise h11.RemoteProtocolError("connection closed before a complete response")
        connection.receive_data(data)


async def _response(connection: h11.Connection, reader: asyncio.StreamReader) -> h11.Response:
    while True:
        event = await _next_event(connection, reader)
        if isinstance(event, h11.Response):
            return event
        if not isinstance(event, h11.InformationalResponse):
            raise h11.RemoteProtocolError(f"connection ended before a response ({event!r})")


async def _body(connection: h11.Connection, reader: asyncio.StreamReader, needle: bytes) -> bytes:
    """The body, up to the first occurrence of `needle` or `BODY_LIMIT_BYTES`."""
    body = bytearray()
    while len(body) < BODY_LIMIT_BYTES:
        event = await _next_event(connection, reader)
        if not isinstance(event, h11.Data):
            break
        body += event.data
        if needle in body:
            break
    return bytes(body[:BODY_LIMIT_BYTES])
