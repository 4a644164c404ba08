"""UDP service while a TCP client reads its answers as fast as it can, on loopback.

    .venv/bin/python bench/tcp_fairness.py [--seconds 15] [--clients 1]

Starts a seeded nats-server and a `kgslb dns`, sends 1,000 UDP queries per second for
`--seconds`, and meanwhile runs `--clients` TCP clients that each keep 100 pipelined queries
in flight and read every answer. Scenarios: UDP alone; with the TCP clients under the default
per-network TCP budget; with the budget off (`--tcp-client-queries-per-second 0`, only the
per-turn answer bound keeps UDP served). Prints UDP lost, TCP answers per second and the DNS's
CPU share.

Then UDP capacity: dnsperf (`-c 4 -T 1`, as bench/dns_qps.py) for `--seconds` alone, and again
while the DNS is abused over TCP as in tests/reliability/test_tcp_abuse.py (a client that
pipelines and never reads, 2,000 slow-drip connections) plus one reading client. On a shared
2-core machine the attackers and dnsperf take CPU from the DNS too, so the ratio is a floor.
Needs `apt-get install dnsperf`. Writes JSON to bench/results/tcp_fairness.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dns.message
from dns_stack import (
    HELLO,
    SeededNats,
    cpu_seconds,
    gslb_service,
    require_tools,
    rss_mb,
    run_dnsperf,
    start_kgslb_dns,
    wait_answering,
)

from kgslb.embedded import free_port
from tests.reliability.load import UdpLoad
from tests.reliability.test_tcp_abuse import (
    DRIP_INTERVAL_SECONDS,
    DRIPPERS,
    FDS_NEEDED,
    Dripper,
    Pipeliner,
    raise_fd_limit,
)

RESULTS = Path(__file__).resolve().parent / "results"
WINDOW = 100


class ReadingClient:
    """Keeps WINDOW queries in flight on one connection and reads every answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        wire = dns.message.make_query(HELLO, "A").to_wire()
        self._window = (struct.pack("!H", len(wire)) + wire) * WINDOW

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    reader = sock.makefile("rb")
                    while not self._stop.is_set():
                        sock.sendall(self._window)
                        for _ in range(WINDOW):
                            (size,) = struct.unpack("!H", reader.read(2))
                            reader.read(size)
                            self.answered += 1
            except (OSError, struct.error):
                time.sleep(0.05)


def scenario(
    nats_url: str, log_dir: Path, seconds: float, clients: int, *flags: str
) -> dict[str, Any]:
    port = free_port()
    process = start_kgslb_dns(nats_url, port, log_dir, *flags)
    try:
        wait_answering(port, HELLO)
        assert process.process is not None
        pid = process.process.pid
        load = UdpLoad(port, HELLO, qps=1000, grace_seconds=2.0)
        tcp = [ReadingClient(port) for _ in range(clients)]
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        load.start()
        for client in tcp:
            client.start()
        time.sleep(seconds)
        for client in tcp:
            client.stop()
        elapsed = time.monotonic() - started
        cpu = (cpu_seconds(pid) - cpu_before) / elapsed
        lost = load.stop()
        return {
            "udp_sent": load.sent,
            "udp_lost": lost,
            "tcp_answers_per_second": round(sum(c.answered for c in tcp) / elapsed),
            "dns_cpu_share": round(cpu, 2),
            "dns_rss_mb": round(rss_mb(pid), 1),
        }
    finally:
        process.stop()


def capacity(nats_url: str, workdir: Path, seconds: float, abused: bool) -> dict[str, Any]:
    """dnsperf's UDP rate, alone or while the DNS is abused over TCP."""
    port = free_port()
    process = start_kgslb_dns(nats_url, port, workdir)
    query_file = workdir / "queries.txt"
    query_file.write_text(f"{HELLO} A\n")
    attackers: list[Pipeliner | Dripper | ReadingClient] = []
    try:
        wait_answering(port, HELLO)
        if abused:
            attackers = [
                Pipeliner(port), Dripper(port, DRIPPERS, DRIP_INTERVAL_SECONDS), ReadingClient(port),
            ]  # fmt: skip
            for attacker in attackers:
                attacker.start()
            time.sleep(3)  # the drips connected, the pipeliner's buffers full
        assert process.process is not None
        pid = process.process.pid
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        result = run_dnsperf(port, query_file, round(seconds))
        cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - started)
        return {
            "qps": round(result.qps), "lost": result.lost, "sent": result.sent,
            "dns_cpu_share": round(cpu, 2), "dns_rss_mb": round(rss_mb(pid), 1),
        }  # fmt: skip
    finally:
        for attacker in attackers:
            attacker.stop()
        process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=1)
    args = parser.parse_args()
    scenarios: list[tuple[str, int, tuple[str, ...]]] = [
        ("udp alone", 0, ()),
        ("tcp readers, default budget", args.clients, ()),
        ("tcp readers, no budget", args.clients, ("--tcp-client-queries-per-second", "0")),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, SeededNats(Path(tmp), [gslb_service(HELLO)]) as nats:
        for name, clients, flags in scenarios:
            row = {
                "scenario": name,
                **scenario(nats.server.url, Path(tmp), args.seconds, clients, *flags),
            }
            rows.append(row)
            print(
                f"{name:30} udp lost {row['udp_lost']:>6} of {row['udp_sent']:>6}  "
                f"tcp {row['tcp_answers_per_second']:>7} answers/s  "
                f"dns cpu {row['dns_cpu_share']:.2f}  rss {row['dns_rss_mb']} MB",
                flush=True,
            )
        require_tools("dnsperf")
        raise_fd_limit(FDS_NEEDED)
        for abused in (False, True):
            row = {
                "scenario": "udp capacity, tcp abuse" if abused else "udp capacity alone",
                **capacity(nats.server.url, Path(tmp), args.seconds, abused),
            }
            rows.append(row)
            print(
                f"{row['scenario']:30} dnsperf {row['qps']:>7} qps, lost {row['lost']} of "
                f"{row['sent']}  dns cpu {row['dns_cpu_share']:.2f}  rss {row['dns_rss_mb']} MB",
                flush=True,
            )
    alone, abused_row = rows[-2]["qps"], rows[-1]["qps"]
    print(f"UDP capacity under TCP abuse: {abused_row / alone:.0%} of alone")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "tcp_fairness.json"
    out.write_text(json.dumps({"args": vars(args), "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
