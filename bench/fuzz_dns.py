"""DNS fuzz: a million random and mutated packets from a corpus of real queries, checked for
crashes, hangs, answers to out-of-zone names and memory growth.

    .venv/bin/python bench/fuzz_dns.py [--packets 1000000] [--udp-packets 200000] [--seed 1]

Phase 1 feeds `--packets` packets straight to the DNS engine (the code every UDP and TCP
packet goes through, response cache and RRL included) and checks every reply: QR set, the
query's ID, no answer records when the question names a zone kgslb does not serve. It records
the slowest packet (a hang shows as seconds) and the RSS every 10% of the run. Phase 2 sends
`--udp-packets` of the same packets to a real `kgslb dns` process over loopback UDP, then
checks that it still answers and reports its RSS before and after. Writes JSON to
bench/results/fuzz_dns.json. The CI runs a short hypothesis version
(tests/unit/test_fuzz_dns.py).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

import dns.edns
import dns.exception
import dns.message
import dns.name
from dns_stack import (
    HELLO,
    REPO,
    ZONE,
    SeededNats,
    gslb_service,
    rss_mb,
    seed_zone,
    start_kgslb_dns,
    wait_answering,
)

from kgslb.embedded import free_port
from services.dns.server import DnsEngine
from services.dns.table import AnswerTable

RESULTS = REPO / "bench" / "results"
OUT_OF_ZONE = ("example.com", "google.com", "iberia.local", "avi.iberia.local.evil.org", "")
QTYPES = (
    "A",
    "AAAA",
    "ANY",
    "TXT",
    "MX",
    "NS",
    "SOA",
    "SRV",
    "CNAME",
    "PTR",
    "CAA",
    "AXFR",
    "IXFR",
)
ZONE_NAME = dns.name.from_text(ZONE)


def corpus() -> list[bytes]:
    """Real queries: in-zone and out-of-zone names, every common type, EDNS with ECS, DO and
    a cookie, and without EDNS."""
    names = [HELLO, ZONE, f"test.{ZONE}", f"nope.{ZONE}", f"a.b.c.{ZONE}", *OUT_OF_ZONE[:-1]]
    ecs = dns.edns.ECSOption("192.0.2.0", 24)
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)
    packets = []
    for name in names:
        for qtype in QTYPES:
            packets.append(dns.message.make_query(name, qtype).to_wire())
            packets.append(dns.message.make_query(name, qtype, use_edns=False).to_wire())
            packets.append(
                dns.message.make_query(
                    name, qtype, use_edns=0, want_dnssec=True, options=[ecs, cookie]
                ).to_wire()
            )
    return packets


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    """One fuzz packet: pure random bytes, or a corpus query with 1-6 mutations."""
    if rng.random() < 0.15:
        return rng.randbytes(rng.randrange(0, 600))
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randrange(1, 7)):
        action = rng.randrange(7)
        position = rng.randrange(len(data)) if data else 0
        if action == 0 and data:
            data[position] ^= 1 << rng.randrange(8)
        elif action == 1 and data:
            data[position] = rng.randrange(256)
        elif action == 2:
            del data[position:]
        elif action == 3:
            data[position:position] = rng.randbytes(rng.randrange(1, 16))
        elif action == 4 and len(data) >= 12:
            struct.pack_into("!H", data, rng.choice((4, 6, 8, 10)), rng.randrange(65536))
        elif action == 5 and len(data) >= 14:
            # A compression pointer where a label starts: loops, forward and wild pointers.
            struct.pack_into("!H", data, 12, 0xC000 | rng.randrange(64))
        elif action == 6:
            data += rng.choice(seeds)[12:]
    return bytes(data)


def out_of_zone_question(packet: bytes) -> bool:
    """Whether the packet is a well-formed query for a name outside the served zone."""
    try:
        message = dns.message.from_wire(packet, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError, IndexError):
        return False
    return len(message.question) == 1 and not message.question[0].name.is_subdomain(ZONE_NAME)


def engine() -> DnsEngine:
    table = AnswerTable(udp_payload_limit=1232)
    table.set_zone(seed_zone())
    table.set_service(gslb_service(HELLO))
    return DnsEngine(table, "fuzz", log_sink=lambda _: None)


def own_rss_mb() -> float:
    return rss_mb(int(Path("/proc/self/stat").read_text().split()[0]))


def fuzz_engine(packets: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    seeds = corpus()
    target = engine()
    problems: list[str] = []
    replies = 0
    sample_every = max(packets // 10, 1)
    slowest = 0.0
    rss = [round(own_rss_mb(), 1)]
    started = time.perf_counter()
    for index in range(packets):
        if index and index % sample_every == 0:
            rss.append(round(own_rss_mb(), 1))
        packet = mutate(rng, seeds)
        udp = index % 4 != 0
        before = time.perf_counter()
        try:
            reply = target.respond(packet, f"192.0.2.{index % 250}", udp)
        except Exception as exc:  # a crash is the finding this script exists for
            problems.append(f"packet {packet.hex()}: {type(exc).__name__}: {exc}")
            continue
        slowest = max(slowest, time.perf_counter() - before)
        if reply is None:
            continue
        replies += 1
        if len(reply) < 12 or not reply[2] & 0x80 or reply[:2] != packet[:2]:
            problems.append(f"packet {packet.hex()}: bad reply header {reply[:12].hex()}")
        elif struct.unpack("!H", reply[6:8])[0] and out_of_zone_question(packet):
            problems.append(f"packet {packet.hex()}: answer for an out-of-zone name")
    elapsed = time.perf_counter() - started
    rss.append(round(own_rss_mb(), 1))
    return {
        "packets": packets,
        "replies": replies,
        "silent": packets - replies,
        "problems": len(problems),
        "first_problems": problems[:5],
        "slowest_packet_ms": round(slowest * 1000, 2),
        "packets_per_second": round(packets / elapsed),
        "rss_mb_every_10_percent": rss,
        "cache_entries_at_end": len(target.cache),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def fuzz_process(packets: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed + 1)
    seeds = corpus()
    with (
        tempfile.TemporaryDirectory(prefix="kgslb-fuzz-") as tmp,
        SeededNats(Path(tmp), [gslb_service(HELLO)]) as nats,
    ):
        port = free_port()
        process = start_kgslb_dns(nats.server.url, port, Path(tmp) / "logs")
        try:
            wait_answering(port, HELLO)
            assert process.process is not None
            rss_before = rss_mb(process.process.pid)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                for index in range(packets):
                    packet = mutate(rng, seeds)
                    try:
                        sock.sendto(packet, ("127.0.0.1", port))
                    except (BlockingIOError, OSError):
                        time.sleep(0.001)
                    if index % 200 == 0:
                        time.sleep(0.002)  # keep the socket buffers from overflowing
            time.sleep(1)
            alive = process.running
            wait_answering(port, HELLO, timeout_seconds=10)
            rss_after = rss_mb(process.process.pid)
        finally:
            process.stop()
    return {
        "packets": packets,
        "server_alive": alive,
        "answers_after": True,
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after": round(rss_after, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--udp-packets", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    engine_result = fuzz_engine(args.packets, args.seed)
    process_result = fuzz_process(args.udp_packets, args.seed) if args.udp_packets else {}

    print(f"{'phase':<10} {'packets':>10} {'problems':>9} {'slowest ms':>11} {'pkt/s':>8}  RSS MB")
    print(
        f"{'engine':<10} {engine_result['packets']:>10} {engine_result['problems']:>9} "
        f"{engine_result['slowest_packet_ms']:>11} {engine_result['packets_per_second']:>8}  "
        f"{engine_result['rss_mb_every_10_percent']}"
    )
    if process_result:
        print(
            f"{'udp':<10} {process_result['packets']:>10} "
            f"{'0' if process_result['server_alive'] else 'DIED':>9} {'-':>11} {'-':>8}  "
            f"{process_result['rss_mb_before']} -> {process_result['rss_mb_after']}"
        )
    for problem in engine_result["first_problems"]:  # type: ignore[attr-defined]
        print("problem:", problem)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "fuzz_dns.json"
    out.write_text(json.dumps({"engine": engine_result, "udp": process_result}, indent=2))
    print(f"wrote {out}")
    if engine_result["problems"] or (process_result and not process_result["server_alive"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
