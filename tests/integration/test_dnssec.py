"""DNSSEC end to end, checked by validators that are not ours: the reconciler makes the seed
zone's keys (KV `kgslb_keys`, encrypted), the DNS signs, and BIND's `delv` (Debian
`bind9-dnsutils`) with the zone's KSK as trust anchor, and a real `unbound` (Debian `unbound`)
with the DS that `kgslb dnssec ds` prints, validate: every answer of the 6:4:2 rotation, a
static record, an NXDOMAIN and a NODATA are secure; an answer tampered with on the way (a
loopback UDP proxy that changes one octet of an address) is refused (SERVFAIL)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import dns.asyncquery
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from nats.aio.client import Client

from kgslb.embedded import free_port, wait_for_tcp
from shared.dnssec import new_secret
from tests.integration.conftest import Services, eventually
from tests.integration.test_pipeline import SEED_SHARES, publish_seed, serving_all_members
from tests.integration.unbound import UNBOUND, start, write_config

ZONE = "avi.iberia.local"
HELLO = f"hello.{ZONE}"
DELV = shutil.which("delv")
needs_delv = pytest.mark.skipif(DELV is None, reason="delv not installed (bind9-dnsutils)")
needs_unbound = pytest.mark.skipif(UNBOUND is None, reason="unbound not installed (unbound)")


@dataclass
class SignedDns:
    port: int
    nats_url: str
    dnskey: str
    """The KSK's DNSKEY RDATA in presentation form (flags protocol algorithm key)."""


async def query(port: int, name: str, rdtype: str, do: bool = True) -> dns.message.Message:
    message = dns.message.make_query(name, rdtype, want_dnssec=do)
    return await dns.asyncquery.udp(message, "127.0.0.1", port=port, timeout=2)


async def ksk(port: int) -> str | None:
    reply = await query(port, ZONE, "DNSKEY")
    for rrset in reply.answer:
        for rdata in rrset:
            if rrset.rdtype == dns.rdatatype.DNSKEY and rdata.flags == 257:
                return str(rdata.to_text())
    return None


@pytest.fixture
async def signed_dns(nats_client: Client, services: Services) -> AsyncIterator[SignedDns]:
    yield await start_signed(nats_client, services)


async def start_signed(
    nats_client: Client, services: Services, reconciler_env: dict[str, str] | None = None
) -> SignedDns:
    env = {"KGSLB_DNSSEC_KEY_SECRET": new_secret()}
    services.start("reconciler", "reconciler", env={**env, **(reconciler_env or {})})
    port = services.dns_port = free_port()
    services.start("dns", "dns", "--dns-port", str(port), "--log-per-second", "0", env=env)
    await publish_seed(nats_client)
    await eventually(lambda: serving_all_members(port), timeout_seconds=30)
    await eventually(lambda: ksk(port), timeout_seconds=30)
    dnskey = await ksk(port)
    assert dnskey is not None
    return SignedDns(port, services.nats.url, dnskey)


def delv(signed: SignedDns, tmp_path: Path, name: str, rdtype: str, port: int = 0) -> str:
    assert DELV is not None
    flags, protocol, algorithm, *key = signed.dnskey.split()
    anchors = tmp_path / "anchors.conf"
    anchors.write_text(
        f'trust-anchors {{ "{ZONE}." static-key {flags} {protocol} {algorithm} '
        f'"{"".join(key)}"; }};\n'
    )
    result = subprocess.run(
        [DELV, "@127.0.0.1", "-p", str(port or signed.port), "-a", str(anchors),
         f"+root={ZONE}", name, rdtype],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return result.stdout + result.stderr


@needs_delv
async def test_delv_validates_every_answer_of_the_rotation(
    signed_dns: SignedDns, tmp_path: Path
) -> None:
    answers: Counter[str] = Counter()
    for _ in range(sum(SEED_SHARES.values())):
        out = await asyncio.to_thread(delv, signed_dns, tmp_path, HELLO, "A")
        assert "; fully validated" in out, out
        answers.update(
            line.split()[-1] for line in out.splitlines() if line.startswith(HELLO + ".")
            and "\tA\t" in line
        )  # fmt: skip
    assert answers == Counter(SEED_SHARES)


@needs_delv
@pytest.mark.parametrize(
    ("name", "rdtype", "expected"),
    [
        (f"test.{ZONE}", "A", "; fully validated"),
        (ZONE, "SOA", "; fully validated"),
        (ZONE, "DNSKEY", "; fully validated"),
        (ZONE, "CDS", "; fully validated"),
        (f"nothing-here.{ZONE}", "A", "; negative response, fully validated"),
        (f"a.b.nothing.{ZONE}", "TXT", "; negative response, fully validated"),
        (HELLO, "AAAA", "; negative response, fully validated"),
        (f"test.{ZONE}", "MX", "; negative response, fully validated"),
    ],
)
async def test_delv_validates_static_negative_and_key_answers(
    signed_dns: SignedDns, tmp_path: Path, name: str, rdtype: str, expected: str
) -> None:
    out = await asyncio.to_thread(delv, signed_dns, tmp_path, name, rdtype)
    assert expected in out, out
    if "negative" in expected:
        kind = "NXDOMAIN" if "nothing" in name else "NXRRSET"
        assert kind in out, out


async def test_without_do_the_answer_carries_no_signature(signed_dns: SignedDns) -> None:
    reply = await query(signed_dns.port, HELLO, "A", do=False)
    assert [r.rdtype for r in reply.answer] == [dns.rdatatype.A]


async def test_kgslb_dnssec_ds_matches_the_served_cds(signed_dns: SignedDns) -> None:
    ds = ds_record(signed_dns.nats_url)
    reply = await query(signed_dns.port, ZONE, "CDS")
    cds = [r for rrset in reply.answer if rrset.rdtype == dns.rdatatype.CDS for r in rrset]
    assert [str(r.to_text()).lower() for r in cds] == [" ".join(ds.split()[3:]).lower()]


def ds_record(nats_url: str) -> str:
    """`kgslb dnssec ds`: the record for the parent, `avi.iberia.local. IN DS ...`."""
    result = subprocess.run(
        [sys.executable, "-m", "kgslb", "dnssec", "ds", ZONE, "--nats-url", nats_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    return line


# unbound with the DS as trust anchor, directly and through a proxy that tampers --------------


def unbound_config(
    directory: Path, port: int, upstream: int, ds: str, parent: int | None = None
) -> Path:
    """Validating with `ds` as trust anchor; the zone at `upstream`, and its parent
    iberia.local at `parent` when given."""
    parent_zone = (
        f"""
stub-zone:
    name: "iberia.local."
    stub-addr: 127.0.0.1@{parent}
"""
        if parent is not None
        else ""
    )
    return write_config(
        directory,
        port,
        f"""
    val-log-level: 2
    module-config: "validator iterator"
    trust-anchor: "{ds}"
    cache-max-ttl: 1
""",
        f"""
stub-zone:
    name: "{ZONE}."
    stub-addr: 127.0.0.1@{upstream}
{parent_zone}""",
    )


def start_unbound(directory: Path, upstream: int, ds: str) -> tuple[subprocess.Popen[bytes], int]:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return start(unbound_config(directory, port, upstream, ds), port), port


@pytest.fixture
def unbound_with_ds(signed_dns: SignedDns, tmp_path: Path) -> Iterator[int]:
    process, port = start_unbound(
        tmp_path / "unbound", signed_dns.port, ds_record(signed_dns.nats_url)
    )
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)


async def recurse(port: int, name: str, rdtype: str) -> dns.message.Message:
    message = dns.message.make_query(name, rdtype, want_dnssec=True)
    message.flags |= dns.flags.RD | dns.flags.AD
    return await dns.asyncquery.udp(message, "127.0.0.1", port=port, timeout=5)


@needs_unbound
async def test_unbound_with_the_ds_resolves_the_zone_as_secure(unbound_with_ds: int) -> None:
    for name, rdtype, rcode in (
        (HELLO, "A", dns.rcode.NOERROR),
        (f"test.{ZONE}", "A", dns.rcode.NOERROR),
        (f"nothing-here.{ZONE}", "A", dns.rcode.NXDOMAIN),
        (HELLO, "AAAA", dns.rcode.NOERROR),
    ):
        reply = await recurse(unbound_with_ds, name, rdtype)
        assert reply.rcode() == rcode, (name, rdtype, reply)
        assert reply.flags & dns.flags.AD, (name, rdtype, reply)


class TamperingProxy(asyncio.DatagramProtocol):
    """Forwards queries to the kgslb DNS and changes the last octet of every seed member's
    address in the replies: the RDATA no longer matches its RRSIG."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.transport: asyncio.DatagramTransport | None = None
        self.tampered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        asyncio.get_running_loop().create_task(self._relay(data, addr))

    async def _relay(self, data: bytes, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[bytes] = loop.create_future()

        class Once(asyncio.DatagramProtocol):
            def datagram_received(self, answer: bytes, _: tuple[str, int]) -> None:
                if not reply.done():
                    reply.set_result(answer)

        transport, _ = await loop.create_datagram_endpoint(
            Once, remote_addr=("127.0.0.1", self.upstream)
        )
        try:
            transport.sendto(data)
            answer = await asyncio.wait_for(reply, 2)
        except TimeoutError:
            return
        finally:
            transport.close()
        for ip in SEED_SHARES:
            packed = bytes(int(part) for part in ip.split("."))
            if packed in answer:
                answer = answer.replace(packed, packed[:3] + bytes([packed[3] ^ 0x01]))
                self.tampered += 1
        assert self.transport is not None
        self.transport.sendto(answer, addr)


@needs_unbound
async def test_a_tampered_answer_is_refused(signed_dns: SignedDns, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    proxy_port = free_port()
    transport, proxy = await loop.create_datagram_endpoint(
        lambda: TamperingProxy(signed_dns.port), local_addr=("127.0.0.1", proxy_port)
    )
    ds = await asyncio.to_thread(ds_record, signed_dns.nats_url)
    process, port = await asyncio.to_thread(start_unbound, tmp_path / "tampered", proxy_port, ds)
    try:
        reply = await recurse(port, HELLO, "A")
        assert proxy.tampered > 0
        assert reply.rcode() == dns.rcode.SERVFAIL, reply
        # The untouched static record through the same proxy still validates.
        static = await recurse(port, f"test.{ZONE}", "A")
        assert static.rcode() == dns.rcode.NOERROR and static.flags & dns.flags.AD, static
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 10)
        transport.close()


# A real BIND as the signed parent iberia.local that holds the DS -------------------------------

NAMED = shutil.which("named") or ("/usr/sbin/named" if Path("/usr/sbin/named").exists() else None)
needs_bind = pytest.mark.skipif(
    NAMED is None or shutil.which("dnssec-signzone") is None,
    reason="named/dnssec-signzone not installed (Debian bind9, bind9-utils)",
)


def start_bind_parent(directory: Path, ds: str) -> tuple[subprocess.Popen[bytes], int, str]:
    """named serving iberia.local signed by dnssec-signzone, delegating avi with the DS; returns
    the process, its port and the parent's KSK as an unbound trust anchor."""
    assert NAMED is not None
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "db.iberia.local").write_text(
        "$ORIGIN iberia.local.\n$TTL 30\n"
        "@ IN SOA ns.iberia.local. hostmaster.iberia.local. 1 3600 600 86400 30\n"
        "@ IN NS ns.iberia.local.\nns IN A 127.0.0.1\ng-dns IN A 127.0.0.1\n"
        "avi IN NS g-dns.iberia.local.\n"
        f"{ds}\n"
    )
    for extra in (["-f", "KSK"], []):
        subprocess.run(
            ["dnssec-keygen", "-q", "-a", "ECDSAP256SHA256", *extra, "-K", str(directory),
             "iberia.local"],
            check=True, capture_output=True, cwd=directory,
        )  # fmt: skip
    subprocess.run(
        ["dnssec-signzone", "-S", "-K", str(directory), "-o", "iberia.local",
         "-f", str(directory / "db.signed"), str(directory / "db.iberia.local")],
        check=True, capture_output=True, cwd=directory,
    )  # fmt: skip
    anchor = next(
        line.strip()
        for key in directory.glob("Kiberia.local.*.key")
        for line in key.read_text().splitlines()
        if " DNSKEY 257 " in line and not line.startswith(";")
    )
    port = free_port()
    (directory / "named.conf").write_text(
        f"""options {{
    directory "{directory}";
    pid-file "{directory}/named.pid";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
}};
zone "iberia.local" {{ type primary; file "{directory}/db.signed"; }};
"""
    )
    process = subprocess.Popen(
        [NAMED, "-g", "-n", "1", "-c", str(directory / "named.conf")],
        stdout=subprocess.DEVNULL,
        stderr=open(directory / "named.log", "wb"),  # noqa: SIM115
    )
    wait_for_tcp("127.0.0.1", port, 20, "named")
    return process, port, anchor.replace(" IN DNSKEY ", " DNSKEY ").replace("\t", " ")


@needs_bind
@needs_unbound
@pytest.mark.parametrize("ds_matches", [True, False], ids=["right-ds", "wrong-ds"])
async def test_the_chain_from_a_bind_parent_holding_the_ds_is_secure(
    signed_dns: SignedDns, tmp_path: Path, ds_matches: bool
) -> None:
    """Through the referral: the parent's DS vouches for the zone's KSK. A DS that does not
    match (its last digest octet changed) makes the zone bogus: SERVFAIL."""
    assert UNBOUND is not None
    ds = await asyncio.to_thread(ds_record, signed_dns.nats_url)
    if not ds_matches:
        ds = ds[:-2] + ("00" if ds[-2:] != "00" else "11")
    named, parent_port, anchor = await asyncio.to_thread(start_bind_parent, tmp_path / "bind", ds)
    directory = tmp_path / "resolver"
    directory.mkdir()
    port = free_port()
    config = unbound_config(directory, port, signed_dns.port, anchor, parent=parent_port)
    unbound = await asyncio.to_thread(start, config, port)
    try:
        # The parent's own DS answer is secure: the anchor is the parent's KSK.
        parent_ds = await recurse(port, ZONE, "DS")
        assert parent_ds.flags & dns.flags.AD, parent_ds
        for name, rdtype in ((HELLO, "A"), (f"test.{ZONE}", "A"), (f"nothing-here.{ZONE}", "A")):
            reply = await recurse(port, name, rdtype)
            if ds_matches:
                assert reply.flags & dns.flags.AD, (name, reply)
            else:
                assert reply.rcode() == dns.rcode.SERVFAIL, (name, reply)
    finally:
        for process in (unbound, named):
            process.terminate()
            await asyncio.to_thread(process.wait, 10)


async def signing_key_tag(port: int) -> int:
    reply = await query(port, f"test.{ZONE}", "A")
    (rrsig,) = [r for rrset in reply.answer if rrset.rdtype == dns.rdatatype.RRSIG for r in rrset]
    return int(rrsig.key_tag)


async def dnskey_count(port: int) -> int:
    reply = await query(port, ZONE, "DNSKEY")
    return sum(len(rrset) for rrset in reply.answer if rrset.rdtype == dns.rdatatype.DNSKEY)


@needs_delv
async def test_the_zsk_rolls_on_schedule_and_every_step_validates(
    nats_client: Client, services: Services, tmp_path: Path
) -> None:
    """Pre-publish with a 4 s lifetime and 3 s waits: a third key appears, then signs, then the
    old one goes; the KSK (the trust anchor) never changes and delv validates at each step."""
    signed = await start_signed(
        nats_client,
        services,
        {"KGSLB_DNSSEC_ZSK_LIFETIME_SECONDS": "4", "KGSLB_DNSSEC_ROLLOVER_WAIT_SECONDS": "3"},
    )
    first = await signing_key_tag(signed.port)
    assert await dnskey_count(signed.port) == 2

    async def published() -> bool:
        return await dnskey_count(signed.port) == 3

    await eventually(published, timeout_seconds=30, interval_seconds=0.2)
    assert await signing_key_tag(signed.port) == first
    out = await asyncio.to_thread(delv, signed, tmp_path, f"test.{ZONE}", "A")
    assert "; fully validated" in out, out

    async def switched() -> bool:
        return await signing_key_tag(signed.port) != first

    await eventually(switched, timeout_seconds=30, interval_seconds=0.2)
    out = await asyncio.to_thread(delv, signed, tmp_path, HELLO, "A")
    assert "; fully validated" in out, out

    async def removed() -> bool:
        return await dnskey_count(signed.port) == 2

    await eventually(removed, timeout_seconds=30, interval_seconds=0.2)
    assert await ksk(signed.port) == signed.dnskey
    out = await asyncio.to_thread(delv, signed, tmp_path, f"nothing-here.{ZONE}", "A")
    assert "; negative response, fully validated" in out, out


def test_kgslb_up_signs_the_seed_zone(tmp_path: Path) -> None:
    """What a newcomer sees: `kgslb up` makes the key secret in its state directory (owner
    only), the reconciler makes the keys, the DNS signs, `kgslb dnssec ds` prints the DS."""
    from tests.integration.test_up import stack_file, wait_for_line

    dns_port, nats_port = free_port(), free_port()
    state = tmp_path / "state"
    process = subprocess.Popen(
        [sys.executable, "-m", "kgslb", "up", "-c", str(stack_file(tmp_path, dns_port, nats_port)),
         "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output = wait_for_line(process, "kgslb is up", 60)
        assert "kgslb dnssec ds avi.iberia.local" in output + wait_for_line(process, "Ctrl-C", 5)
        assert (state / "dnssec-key-secret").stat().st_mode & 0o777 == 0o600

        def signed_answer() -> dns.message.Message | None:
            message = dns.message.make_query(HELLO, "A", want_dnssec=True)
            reply = dns.query.udp(message, "127.0.0.1", port=dns_port, timeout=1)
            types = {rrset.rdtype for rrset in reply.answer}
            return reply if dns.rdatatype.RRSIG in types else None

        deadline = time.monotonic() + 60
        while (reply := signed_answer()) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert reply is not None, "no RRSIG within 60 s"
        result = subprocess.run(
            [sys.executable, "-m", "kgslb", "dnssec", "ds", ZONE,
             "--nats-url", f"nats://127.0.0.1:{nats_port}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{ZONE}. IN DS ")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)


async def test_kgslb_dnssec_ds_for_a_zone_without_keys_says_why(nats_client: Client) -> None:

    server_url = nats_client.connected_url
    assert server_url is not None
    url = f"nats://{server_url.hostname}:{server_url.port}"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "kgslb", "dnssec", "ds", "unsigned.example", "--nats-url", url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "zone unsigned.example has no DNSSEC keys" in result.stderr


# Automatic delegation (RFC 2136) carries the DS of a signed zone into the parent -------------

from tests.integration.test_delegation_update import (  # noqa: E402
    CONFIG,
    FAST_LEASE,
    Parent,
    config,
    nameservers,
    parent,
    publish_policy,
    secrets_dir,
)
from tests.integration.test_delegation_update import SECRET as TSIG_SECRET  # noqa: E402

__all__ = ["parent"]  # the fixture, shared with test_delegation_update


@needs_bind
async def test_automatic_delegation_puts_the_ds_of_the_signed_zone_in_the_parent(
    nats_client: Client, services: Services, parent: Parent, tmp_path: Path
) -> None:
    services.start(
        "reconciler", "reconciler",
        env={**FAST_LEASE, "KGSLB_TSIG_SECRETS_DIR": str(secrets_dir(tmp_path, TSIG_SECRET)),
             "KGSLB_DELEGATION_CHECK_SECONDS": "1", "KGSLB_DNSSEC_KEY_SECRET": new_secret()},
    )  # fmt: skip
    spec = config(parent, nameservers(("ns-s1", "127.0.0.11")))
    assert spec["zones"][0]["dnssec"]["enabled"]  # the seed's zone is signed
    await publish_policy(nats_client, CONFIG, spec, generation=1)

    def parent_ds() -> set[str]:
        return parent.records().get((ZONE, "DS"), set())

    await eventually(parent_ds, timeout_seconds=60)
    signed = SignedDns(0, services.nats.url, "")
    expected = " ".join(ds_record(signed.nats_url).split()[3:]).lower()
    assert {text.lower() for text in parent_ds()} == {expected}
