"""The probe adapters against real local servers: what goes on the wire (method, Host, path,
SNI) and how each answer, or its absence, is judged."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kgslb.backends import HelloBackends, HelloSite
from kgslb.embedded import free_port
from services.health.monitor import Outcome, ProbeTarget
from services.health.probes import Prober
from shared.models import HealthMonitorSpec, MonitorKind

FQDN = "hello.avi.iberia.local"
IP = "127.20.1.1"


def target(port: int, **monitor: object) -> ProbeTarget:
    spec = HealthMonitorSpec.model_validate({"port": port, "timeout_seconds": 1.0, **monitor})
    return ProbeTarget("k", FQDN, IP, "s1az1", port, spec)


@dataclass
class Seen:
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    """(method, Host, path) of every request."""
    sni: list[str | None] = field(default_factory=list)


@contextlib.asynccontextmanager
async def recording_server(tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[int, Seen]]:
    seen = Seen()

    async def handle(request: web.Request) -> web.Response:
        seen.requests.append((request.method, request.host, request.path))
        return web.Response(text="ok")

    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: seen.sni.append(name)  # type: ignore[assignment,misc]
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, IP, port, ssl_context=tls).start()
    try:
        yield port, seen
    finally:
        await runner.cleanup()


@dataclass
class Pki:
    ca_file: Path
    server: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A private CA and a certificate for the FQDN it signed."""
    folder = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        signer: ec.EllipticCurvePrivateKey,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if subject == issuer:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = certificate("kgslb test CA", ca_key, "kgslb test CA", ca_key)
    leaf = certificate(FQDN, leaf_key, "kgslb test CA", ca_key)
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return Pki(ca_file, server)


async def test_http_probe_sends_head_to_the_path_with_the_fqdn_as_host() -> None:
    async with recording_server() as (port, seen):
        result = await Prober().probe(target(port, path="/healthz"))

    assert result.ok
    assert seen.requests == [("HEAD", FQDN, "/healthz")]


async def test_http_probe_measures_the_response_time() -> None:
    async with recording_server() as (port, _):
        result = await Prober().probe(target(port))

    assert result.response_time_ms is not None and result.response_time_ms > 0


async def test_body_match_asks_with_get_and_finds_the_hello_message() -> None:
    port = free_port()
    backends = HelloBackends([HelloSite("s1az1", IP, port, "SITE1 AZ1", (FQDN,))])
    await backends.start()
    try:
        found = await Prober().probe(target(port, body_contains="resides in SITE1 AZ1"))
        missing = await Prober().probe(target(port, body_contains="resides in SITE2"))
    finally:
        await backends.stop()

    assert (found.outcome, found.summary) == (Outcome.OK, "HTTP 200")
    assert (missing.outcome, missing.error) == (
        Outcome.BODY,
        "response body does not contain 'resides in SITE2'",
    )


async def test_https_probe_sends_the_fqdn_as_sni(pki: Pki) -> None:
    async with recording_server(pki.server) as (port, seen):
        result = await Prober().probe(target(port, kind=MonitorKind.HTTPS))

    assert result.ok
    assert seen.sni == [FQDN]
    assert seen.requests == [("HEAD", FQDN, "/")]


async def test_https_with_verify_trusts_the_configured_ca(pki: Pki) -> None:
    async with recording_server(pki.server) as (port, _):
        result = await Prober(str(pki.ca_file)).probe(
            target(port, kind=MonitorKind.HTTPS, tls_verify=True)
        )

    assert result.ok


async def test_https_with_verify_fails_on_an_unknown_issuer(pki: Pki) -> None:
    async with recording_server(pki.server) as (port, _):
        result = await Prober().probe(target(port, kind=MonitorKind.HTTPS, tls_verify=True))

    assert result.outcome is Outcome.TLS
    assert f"SNI {FQDN}" in result.error


async def test_tcp_probe_succeeds_on_connect_and_fails_on_refusal() -> None:
    async with recording_server() as (port, seen):
        connected = await Prober().probe(target(port, kind=MonitorKind.TCP))
    refused = await Prober().probe(target(port, kind=MonitorKind.TCP))

    assert connected.summary == "TCP connected" and connected.ok
    assert seen.requests == [], "a TCP monitor sends no request"
    assert refused.outcome is Outcome.REFUSED


async def test_a_peer_that_does_not_speak_http_is_a_protocol_failure() -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_8.9\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(banner, IP, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await Prober().probe(target(port))

    assert result.outcome is Outcome.PROTOCOL


async def test_a_peer_that_closes_without_answering_is_a_protocol_failure() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, IP, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await Prober().probe(target(port))

    assert (result.outcome, result.error) == (
        Outcome.PROTOCOL,
        f"{IP}:{port}: connection closed before a complete response",
    )


async def test_a_silent_peer_is_a_timeout_after_the_monitor_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await asyncio.start_server(silent, IP, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await Prober().probe(target(port, timeout_seconds=0.2))

    assert (result.outcome, result.error) == (
        Outcome.TIMEOUT,
        f"{IP}:{port} gave no answer within 0.2 s",
    )


async def test_control_plane_only_member_needs_no_connection() -> None:
    result = await Prober().probe(target(free_port(), kind=MonitorKind.NONE))

    assert result.ok
