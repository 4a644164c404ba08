"""The DNS as an attack target, on a real process: zone transfers over UDP refused, response
rate limiting capping the amplification of a spoofed flood, and 1,000 random names answered
NXDOMAIN without memory growth. (Open resolver, AXFR/IXFR over TCP: test_dns_protocol.py.)"""

from __future__ import annotations

import random
import re
import socket
import struct
from pathlib import Path

import dns.message
import dns.rcode
from nats.aio.client import Client

from kgslb.embedded import free_port
from tests.integration.conftest import Services, eventually
from tests.integration.test_dns_protocol import ZONE
from tests.integration.test_dns_updates import ask, first_address, seeded

BURST = 1000


def amplification(port: int, query: bytes) -> float:
    """Bytes answered per byte asked for a burst of `BURST` queries from one address, as a
    reflection attack sends them."""
    received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.settimeout(0.5)
        for turn in range(BURST):
            sock.sendto(struct.pack("!H", turn) + query, ("127.0.0.1", port))
        try:
            while True:
                received += len(sock.recv(65535))
        except TimeoutError:
            pass
    return received / (BURST * (len(query) + 2))


def rss_kb(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    assert match is not None
    return int(match.group(1))


async def test_a_zone_transfer_over_udp_is_refused(nats_client: Client, services: Services) -> None:
    port = await seeded(nats_client, services)

    for rdtype in ("AXFR", "IXFR"):
        reply = await ask(port, ZONE, rdtype)
        assert reply.rcode() in (dns.rcode.REFUSED, dns.rcode.NOTIMP, dns.rcode.FORMERR)
        assert reply.answer == []


async def test_rate_limiting_caps_the_amplification_of_a_spoofed_flood(
    nats_client: Client, services: Services
) -> None:
    limited = await seeded(nats_client, services, "--rrl-responses-per-second", "5")
    open_port = free_port()
    services.start("dns-open", "dns", "--dns-port", str(open_port))
    await eventually(lambda: first_address(open_port))
    query = dns.message.make_query(ZONE, "NS", use_edns=0, payload=4096).to_wire()[2:]

    unlimited_factor = amplification(open_port, query)
    limited_factor = amplification(limited, query)

    print(f"\namplification: {unlimited_factor:.2f} without RRL, {limited_factor:.2f} with RRL")
    assert unlimited_factor > 1.5, "the reference answer must amplify"
    assert limited_factor < 1.0, "with RRL a flood gets back less than it sends"


async def test_a_thousand_random_names_are_nxdomain_without_memory_growth(
    nats_client: Client, services: Services
) -> None:
    port = await seeded(nats_client, services, "--log-per-second", "0")
    process = services.running["dns"].process
    assert process is not None
    rng = random.Random(9)
    names = [f"{rng.getrandbits(64):x}.{ZONE}" for _ in range(1000)]
    for name in names[:100]:
        await ask(port, name)
    before = rss_kb(process.pid)

    rcodes = {(await ask(port, name)).rcode() for name in names}

    grown_kb = rss_kb(process.pid) - before
    print(f"\n1,000 random names: RSS grew {grown_kb} kB")
    assert rcodes == {dns.rcode.NXDOMAIN}
    assert grown_kb < 4096, "about 600 bytes of response cache per name at most"
