"""DNSSEC keys as kgslb stores them (KV `kgslb_keys`, `ZoneKeys`): made, encrypted at rest,
read back, and their public forms (DNSKEY, DS). The cryptography is the `cryptography`
library's and dnspython's; nothing here is hand-written crypto.

Private keys are PKCS#8 DER encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under a secret
every DNS replica and the reconciler share (`--dnssec-key-secret`, env
`KGSLB_DNSSEC_KEY_SECRET`; `kgslb up` makes one in its state directory).
"""

from __future__ import annotations

import base64
import struct
import warnings
from datetime import datetime
from pathlib import Path

with warnings.catch_warnings():
    # dnspython's DSA module touches classes `cryptography` deprecates; kgslb never uses DSA.
    warnings.simplefilter("ignore")
    import dns.dnssec
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from shared.models import (
    DNSSEC_ALGORITHM_NUMBERS,
    DnssecAlgorithm,
    DnssecKey,
    KeyRole,
    KeyState,
    ZoneKeys,
)

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class KeySecretError(ValueError):
    """The key-encryption secret is missing, malformed, or not the one the keys were made with."""


def new_secret() -> str:
    """A fresh key-encryption secret (32 random bytes, url-safe base64)."""
    return Fernet.generate_key().decode()


def load_secret(value: str, file: str = "") -> Fernet:
    """The secret from its value, else from a file; a clear error when neither is usable."""
    text = value.strip()
    if not text and file:
        try:
            text = Path(file).read_text().strip()
        except OSError as exc:
            raise KeySecretError(f"--dnssec-key-secret-file {file}: {exc.strerror}") from None
    if not text:
        raise KeySecretError(
            "a signed zone needs --dnssec-key-secret (env KGSLB_DNSSEC_KEY_SECRET) or "
            "--dnssec-key-secret-file: 32 bytes url-safe base64, e.g. from "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key())'`"
        )
    try:
        return Fernet(text.encode())
    except ValueError:
        raise KeySecretError(
            "--dnssec-key-secret must be 32 bytes in url-safe base64 (44 characters)"
        ) from None


def generate(algorithm: DnssecAlgorithm, role: KeyRole, secret: Fernet, now: datetime) -> DnssecKey:
    private: PrivateKey
    if algorithm == DnssecAlgorithm.ED25519:
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    number = DNSSEC_ALGORITHM_NUMBERS[algorithm]
    dnskey = dns.dnssec.make_dnskey(private.public_key(), number)
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return DnssecKey(
        role=role,
        algorithm=number,
        public_key=base64.b64encode(dnskey.key).decode(),
        private_key=secret.encrypt(der).decode(),
        state=KeyState.ACTIVE,
        created_at=now,
    )


def new_zone_keys(zone: str, algorithm: DnssecAlgorithm, secret: Fernet, now: datetime) -> ZoneKeys:
    """A KSK and a ZSK for a zone that has none."""
    return ZoneKeys(
        zone=zone,
        keys=[generate(algorithm, role, secret, now) for role in (KeyRole.KSK, KeyRole.ZSK)],
    )


def private_key(key: DnssecKey, secret: Fernet) -> PrivateKey:
    try:
        der = secret.decrypt(key.private_key.encode())
    except InvalidToken:
        raise KeySecretError(
            "a DNSSEC private key does not decrypt with --dnssec-key-secret: not the secret "
            "the keys were made with"
        ) from None
    loaded = serialization.load_der_private_key(der, password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise KeySecretError(f"unsupported private key type {type(loaded).__name__}")
    return loaded


def dnskey(key: DnssecKey) -> dns.rdtypes.ANY.DNSKEY.DNSKEY:
    data = struct.pack("!HBB", key.flags, 3, key.algorithm) + base64.b64decode(key.public_key)
    rdata = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.DNSKEY, data, 0, len(data))
    assert isinstance(rdata, dns.rdtypes.ANY.DNSKEY.DNSKEY)
    return rdata


def key_tag(key: DnssecKey) -> int:
    return dns.dnssec.key_id(dnskey(key))


def ds_records(keys: ZoneKeys, digest: str = "SHA256") -> list[str]:
    """The DS record of every KSK, in zone-file form, for the parent zone."""
    name = dns.name.from_text(keys.zone)
    out = []
    for key in keys.keys:
        if key.role == KeyRole.KSK:
            ds = dns.dnssec.make_ds(name, dnskey(key), digest)
            out.append(f"{name.to_text()} IN DS {ds.to_text()}")
    return out
