"""Every way a service can prove who it is to NATS, against a real nats-server configured from
deploy/nats/: nkey seeds, and TLS with client certificates (mutual TLS)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

import dns.asyncquery
import dns.message
import nats
import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kgslb.embedded import NatsServer, free_port
from kgslb.up import load_stack_config, seed_messages
from shared import bus, wire
from shared.settings import NatsSettings
from tests.integration.conftest import Services, eventually

ROOT = Path(__file__).resolve().parents[2]
NATS_DIR = ROOT / "deploy" / "nats"
SEED = ROOT / "examples" / "seed" / "kgslb.yaml"
HELLO = "hello.avi.iberia.local"
SEED_VIPS = {"127.10.25.46", "127.10.26.40", "127.10.23.40"}
SERVICES = ("watcher", "reconciler", "health", "dns")
PASSWORDS = {u: f"{u}-tls-pw" for u in (*SERVICES, "admin", "system")}


class Pki:
    """A throw-away CA with a server certificate for 127.0.0.1 and a client certificate."""

    def __init__(self, directory: Path, name: str = "kgslb test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._ca_name = subject
        self._ca = (
            self._builder(subject, self._ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca = self._write("ca.pem", self._ca.public_bytes(serialization.Encoding.PEM))

    def _builder(
        self, subject: x509.Name, key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(getattr(self, "_ca_name", subject))
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path

    def issue(self, name: str, usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            self._builder(subject, key.public_key())
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self._ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return (
            self._write(f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM)),
            self._write(f"{name}-key.pem", key_pem),
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest.fixture
def client_cert(pki: Pki) -> tuple[Path, Path]:
    return pki.issue("kgslb-client", ExtendedKeyUsageOID.CLIENT_AUTH)


@pytest.fixture
def tls_nats(tmp_path: Path, pki: Pki) -> Iterator[NatsServer]:
    """nats-server requiring client certificates, with deploy/nats/accounts.conf's users."""
    cert, key = pki.issue("nats-server", ExtendedKeyUsageOID.SERVER_AUTH)
    config = tmp_path / "nats-tls.conf"
    # nats-server resolves an include relative to the including file.
    accounts = os.path.relpath(NATS_DIR / "accounts.conf", tmp_path)
    config.write_text(
        f'include "{accounts}"\n'
        f'tls {{ cert_file: "{cert}", key_file: "{key}", ca_file: "{pki.ca}", verify: true }}\n'
    )
    server = NatsServer(tmp_path / "jetstream", config=config)
    server.env.update({f"NATS_PASSWORD_{u.upper()}": pw for u, pw in PASSWORDS.items()})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nkey_nats(tmp_path: Path) -> Iterator[tuple[NatsServer, dict[str, Path]]]:
    """nats-server from deploy/nats/accounts-nkeys.conf; returns each user's seed file."""
    seeds: dict[str, Path] = {}
    server = NatsServer(tmp_path / "jetstream", config=NATS_DIR / "accounts-nkeys.conf")
    for user in PASSWORDS:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        seeds[user] = tmp_path / f"{user}.nk"
        seeds[user].write_bytes(seed)
        public = nkeys.from_seed(bytearray(seed)).public_key.decode()
        server.env[f"NATS_NKEY_{user.upper()}"] = public
    server.start()
    yield server, seeds
    server.stop()


async def publish_seed(settings: NatsSettings) -> None:
    nc = await bus.connect(settings, "kgslb-test-watcher")
    try:
        js = nc.jetstream()
        await bus.bootstrap(js)
        for subject, message in seed_messages(load_stack_config(SEED)):
            await js.publish(subject, wire.encode(message))
    finally:
        await nc.drain()


async def all_members_answered(port: int) -> bool:
    seen: set[str] = set()
    for _ in range(12):
        query = dns.message.make_query(HELLO, "A")
        reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=1)
        seen |= {rr.address for rrset in reply.answer for rr in rrset}
    return seen == SEED_VIPS


def start_system(services: Services, env: dict[str, dict[str, str]]) -> int:
    port = free_port()
    services.start("reconciler", "reconciler", env=env["reconciler"])
    services.start("health", "health", env=env["health"])
    services.start("dns", "dns", "--dns-port", str(port), env=env["dns"])
    return port


async def test_services_authenticate_with_nkey_seeds(
    nkey_nats: tuple[NatsServer, dict[str, Path]], tmp_path: Path
) -> None:
    server, seeds = nkey_nats
    services = Services(server, tmp_path / "logs")
    try:
        env = {user: {"KGSLB_NATS_NKEY_SEED": str(seeds[user])} for user in SERVICES}
        port = start_system(services, env)
        await publish_seed(NatsSettings(nats_url=server.url, nats_nkey_seed=str(seeds["watcher"])))

        await eventually(lambda: all_members_answered(port), timeout_seconds=20)
    finally:
        services.stop_all()


def tls_env(user: str, pki: Pki, cert: tuple[Path, Path]) -> dict[str, str]:
    return {
        "KGSLB_NATS_USER": user,
        "KGSLB_NATS_PASSWORD": PASSWORDS[user],
        "KGSLB_NATS_TLS_CA": str(pki.ca),
        "KGSLB_NATS_TLS_CERT": str(cert[0]),
        "KGSLB_NATS_TLS_KEY": str(cert[1]),
    }


async def test_services_work_over_mutual_tls(
    tls_nats: NatsServer, pki: Pki, client_cert: tuple[Path, Path], tmp_path: Path
) -> None:
    services = Services(tls_nats, tmp_path / "logs")
    try:
        port = start_system(services, {u: tls_env(u, pki, client_cert) for u in SERVICES})
        watcher = NatsSettings.model_validate(
            {
                k.removeprefix("KGSLB_").lower(): v
                for k, v in tls_env("watcher", pki, client_cert).items()
            }
            | {"nats_url": tls_nats.url}
        )
        await publish_seed(watcher)

        await eventually(lambda: all_members_answered(port), timeout_seconds=20)
    finally:
        services.stop_all()


async def connect_once(settings: NatsSettings) -> None:
    """One attempt with the TLS context the services build (bus.connect retries forever)."""
    nc = await nats.connect(
        settings.nats_url,
        user=settings.nats_user,
        password=settings.nats_password,
        tls=bus.tls_context(settings),
        allow_reconnect=False,
        max_reconnect_attempts=0,
        connect_timeout=2,
    )
    await nc.close()


async def test_a_client_without_a_certificate_is_refused(tls_nats: NatsServer, pki: Pki) -> None:
    settings = NatsSettings(
        nats_url=tls_nats.url,
        nats_user="dns",
        nats_password=PASSWORDS["dns"],
        nats_tls_ca=str(pki.ca),
    )
    with pytest.raises(Exception):  # noqa: B017 - the server closes the handshake, any error
        await connect_once(settings)


async def test_a_server_certificate_from_another_ca_is_refused(
    tls_nats: NatsServer, client_cert: tuple[Path, Path], tmp_path: Path
) -> None:
    stranger = Pki(tmp_path / "stranger", name="someone else's CA")
    settings = NatsSettings(
        nats_url=tls_nats.url,
        nats_user="dns",
        nats_password=PASSWORDS["dns"],
        nats_tls_ca=str(stranger.ca),
        nats_tls_cert=str(client_cert[0]),
        nats_tls_key=str(client_cert[1]),
    )
    with pytest.raises(Exception, match=r"(?i)certificate verify failed"):
        await connect_once(settings)
