"""Automatic delegation, the thin adapter: read what the parent's primary server holds for a
zone (plain DNS queries over TCP) and send it an RFC 2136 update signed with a TSIG key
(dnspython `dns.update`, `dns.tsig`). Every failure becomes a `DelegationError` whose
`reason` is short and the operator's word for it (BADKEY, BADSIG, NOTAUTH, REFUSED, TIMEOUT,
UNREACHABLE, SECRET)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.tsig
import dns.update

from services.reconciler.delegation import Update
from shared.policies import SecretKeyRef, TsigKeySpec, split_host_port

TSIG_ERRORS: dict[type[Exception], tuple[str, str]] = {
    dns.tsig.PeerBadKey: ("BADKEY", "the parent's server does not know this TSIG key"),
    dns.tsig.PeerBadSignature: ("BADSIG", "the parent's server rejected the signature"),
    dns.tsig.PeerBadTime: ("BADTIME", "the clocks differ too much for TSIG"),
    dns.tsig.PeerBadTruncation: ("BADTRUNC", "the parent's server rejected the truncated MAC"),
}


class DelegationError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason}: {self.args[0]}"


@dataclass(frozen=True)
class Server:
    address: str
    port: int

    def __str__(self) -> str:
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else f"{self.address}:{self.port}"
        )


def read_secret(directory: str, ref: SecretKeyRef) -> str:
    """The base64 TSIG secret from the Secret's mounted file `<directory>/<name>/<key>`."""
    path = Path(directory) / ref.name / ref.key
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise DelegationError(
            "SECRET",
            f"cannot read the TSIG secret {path} (Secret {ref.name}, key {ref.key}, mounted "
            f"under --tsig-secrets-dir): {exc.strerror or exc}",
        ) from None
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DelegationError("SECRET", f"the TSIG secret in {path} is not base64") from None
    return text


async def resolve(primary: str) -> Server:
    host, port = split_host_port(primary)
    try:
        ipaddress.ip_address(host)
        return Server(host, port)
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DelegationError("UNREACHABLE", f"cannot resolve {host}: {exc}") from None
    return Server(str(infos[0][4][0]), port)


async def _exchange(
    message: dns.message.Message, server: Server, timeout: float
) -> dns.message.Message:
    try:
        return await dns.asyncquery.tcp(message, server.address, port=server.port, timeout=timeout)
    except tuple(TSIG_ERRORS) as exc:
        reason, detail = TSIG_ERRORS[type(exc)]
        raise DelegationError(reason, f"{detail} ({server})") from None
    except dns.exception.Timeout:
        raise DelegationError("TIMEOUT", f"no answer from {server} in {timeout:g} s") from None
    except OSError as exc:
        raise DelegationError("UNREACHABLE", f"{server}: {exc.strerror or exc}") from None
    except dns.exception.DNSException as exc:
        raise DelegationError("BADREPLY", f"{server}: {exc}") from None


async def read_parent(
    server: Server, zone: str, with_ds: bool, timeout: float
) -> tuple[dns.message.Message, dns.message.Message | None]:
    """The parent's answers to `zone NS` (its referral) and, when DS is managed, `zone DS`."""
    replies = []
    for rdtype in ("NS", "DS") if with_ds else ("NS",):
        query = dns.message.make_query(zone + ".", rdtype)
        query.flags &= ~dns.flags.RD
        reply = await _exchange(query, server, timeout)
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise DelegationError(
                dns.rcode.to_text(reply.rcode()),
                f"{server} answered {zone} {rdtype} with {dns.rcode.to_text(reply.rcode())}: "
                "is it a primary for the parent zone?",
            )
        replies.append(reply)
    return replies[0], (replies[1] if with_ds else None)


async def send_update(
    server: Server, update: Update, key: TsigKeySpec, secret: str, timeout: float
) -> None:
    tsig = dns.tsig.Key(key.name, secret, key.algorithm)
    message = dns.update.UpdateMessage(update.parent + ".", keyring=tsig)
    for name, rdtype in update.deletes:
        message.delete(name + ".", rdtype)
    for name, rdtype, ttl, rdata in update.adds:
        message.add(name + ".", ttl, rdtype, rdata)
    reply = await _exchange(message, server, timeout)
    rcode = reply.rcode()
    if rcode != dns.rcode.NOERROR:
        text = dns.rcode.to_text(rcode)
        raise DelegationError(
            text,
            f"{server} refused the update of {update.parent} with {text} (TSIG key "
            f"{key.name}, {key.algorithm}; the parent needs allow-update or an update-policy "
            "for this key)",
        )
