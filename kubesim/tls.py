"""The simulator's TLS: a CA of its own, and a serving certificate it signs, as kubeadm makes.

The CA lives in a directory (the simulator's state dir when it has one, so a kubeconfig written
before a restart still verifies); the kubeconfig carries it as `certificate-authority-data`.
Keys are ECDSA P-256: quick to make, and accepted by kubectl, the kubernetes client and curl.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import secrets
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
CERT_FILE = "apiserver.crt"  # only ever on disk for a moment, to load it
KEY_FILE = "apiserver.key"
ADMIN_TOKEN_FILE = "admin.token"
VALID_DAYS = 3650


@dataclass(frozen=True)
class Credentials:
    """The CA, the serving certificate and key (PEM), and the admin user's bearer token."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    admin_token: str

    def ca_data(self) -> str:
        """The CA certificate, base64, for a kubeconfig's `certificate-authority-data`."""
        return base64.b64encode(self.ca_pem).decode()

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory(prefix="kubesim-tls-") as scratch:
            cert, key = Path(scratch) / CERT_FILE, Path(scratch) / KEY_FILE
            cert.write_bytes(self.cert_pem)
            _write_private(key, self.key_pem)
            context.load_cert_chain(cert, key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that trusts this CA only (for tests calling the API by hand)."""
        return ssl.create_default_context(cadata=self.ca_pem.decode())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.write_bytes(data)


_CA_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
    encipher_only=False, decipher_only=False,
)  # fmt: skip


def _make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubesim-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_FILE).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY_FILE).read_bytes(), None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    return cert, key


def _sans(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes.default.svc"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host and host != "localhost":
            names.append(x509.DNSName(host))
    else:
        if x509.IPAddress(address) not in names:
            names.append(x509.IPAddress(address))
    return names


def _make_serving(
    host: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_sans(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def ensure(directory: Path | None, host: str) -> Credentials:
    """A CA and admin token, kept in `directory` (made there the first time; in memory only
    without one), and a fresh serving certificate for `host` signed by that CA."""
    ca = _load_ca(directory) if directory is not None else None
    if ca is None:
        ca = _make_ca()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / CA_FILE).write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
            _write_private(directory / CA_KEY_FILE, _key_pem(ca[1]))
    cert_pem, key_pem = _make_serving(host, *ca)
    token = ""
    if directory is not None:
        try:
            token = (directory / ADMIN_TOKEN_FILE).read_text().strip()
        except OSError:
            token = ""
    if not token:
        token = secrets.token_urlsafe(32)
        if directory is not None:
            _write_private(directory / ADMIN_TOKEN_FILE, token.encode())
    return Credentials(ca[0].public_bytes(serialization.Encoding.PEM), cert_pem, key_pem, token)
