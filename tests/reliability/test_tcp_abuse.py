"""DNS over TCP under abuse, on a real DNS process serving 1,000 qps of UDP: one client that
pipelines queries and never reads a reply, and 2,000 connections that each send one byte every
few seconds and never finish a message (both reconnect whenever the DNS closes them, as an
attacker would). UDP must lose nothing, memory must stay bounded, new TCP clients must still
be answered, and no slow-drip connection may outlive the idle plus whole-message limits:
with the default connection cap (1,000, so newcomers evict the longest idle) and with a cap
above the number of drips (so the message limit has to end them)."""

from __future__ import annotations

import asyncio
import os
import resource
import selectors
import shutil
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import httpx
import pytest
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from kgslb.embedded import ManagedProcess, free_port
from services.dns.tcp import FD_RESERVE
from tests.integration.conftest import Services, eventually
from tests.integration.test_dns_protocol import HELLO, gslb, zone
from tests.integration.test_dns_updates import first_address, put_service, put_zone, seeded
from tests.reliability.load import UdpLoad
from tests.reliability.test_dns_security import rss_kb

DRIPPERS = 2000
DRIP_INTERVAL_SECONDS = 3.0
ABUSE_SECONDS = 25.0
PROBE_INTERVAL_SECONDS = 0.25
IDLE_SECONDS = 10.0
MESSAGE_SECONDS = 5.0
"""The DNS's defaults, stated for the lifetime bound below."""
SWEEP_SECONDS = 1.0
RSS_BUDGET_KB = 50 * 1024
FDS_NEEDED = DRIPPERS + 200


def framed_query(query_id: int) -> bytes:
    wire = dns.message.make_query(HELLO, "A").to_wire()
    return struct.pack("!HH", len(wire), query_id) + wire[2:]


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == resource.RLIM_INFINITY or soft >= needed, (
        f"the test needs {needed} open files and the hard limit is {soft}: raise `ulimit -Hn`"
    )


class Pipeliner:
    """Writes pipelined queries as fast as the DNS takes them and never reads."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections = 0
        self.sent_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._burst = b"".join(framed_query(i) for i in range(1000))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    self.connections += 1
                    while not self._stop.is_set():
                        try:
                            self.sent_bytes += sock.send(self._burst)
                        except TimeoutError:
                            continue  # the DNS stopped reading us: keep pushing
            except OSError:
                time.sleep(0.05)  # closed by the DNS (or refused): come back


class Dripper:
    """`count` connections, each sending the next byte of a query every `interval` seconds;
    a connection the DNS closed is noticed at once (epoll) and replaced. Records how long
    each one lived."""

    def __init__(self, port: int, count: int, interval: float) -> None:
        self.port = port
        self.count = count
        self.interval = interval
        self.message = framed_query(7)
        self.sockets: list[tuple[socket.socket, float, int] | None] = [None] * count
        self.closed_by_server = 0
        self.connect_failures = 0
        self.longest_closed_life = 0.0
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> float:
        """Stop and close everything; return the age of the oldest connection still open."""
        self._stop.set()
        self._thread.join()
        now = time.monotonic()
        oldest = 0.0
        for entry in self.sockets:
            if entry is not None:
                oldest = max(oldest, now - entry[1])
                entry[0].close()
        self._selector.close()
        return oldest

    def _connect(self, index: int) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        except OSError:
            self.connect_failures += 1
            self.sockets[index] = None
            return
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, index)
        self.sockets[index] = (sock, time.monotonic(), 0)
        self._drip(index)  # the first byte at once: from now on only the message limit runs

    def _reap(self) -> None:
        """Replace every connection the DNS closed (it never sends a drip anything else)."""
        for key, _ in self._selector.select(0):
            index = key.data
            entry = self.sockets[index]
            assert entry is not None
            sock, opened, _ = entry
            self.closed_by_server += 1
            self.longest_closed_life = max(self.longest_closed_life, time.monotonic() - opened)
            self._selector.unregister(sock)
            sock.close()
            self._connect(index)

    def _run(self) -> None:
        for index in range(self.count):
            if self._stop.is_set():
                return
            self._connect(index)
            self._reap()
        pause = self.interval / self.count
        while not self._stop.is_set():
            for index in range(self.count):
                if self._stop.is_set():
                    return
                self._drip(index)
                self._reap()
                time.sleep(pause)

    def _drip(self, index: int) -> None:
        entry = self.sockets[index]
        if entry is None:
            self._connect(index)
            return
        sock, opened, sent = entry
        if sent == len(self.message) - 1:
            return  # never the last byte: the message stays unfinished
        try:
            sock.send(self.message[sent : sent + 1])
        except OSError:
            return  # closed: reaped as soon as the close is readable
        self.sockets[index] = (sock, opened, sent + 1)


def udp_receive_buffer_errors() -> int:
    """This host's UDP datagrams dropped for a full receive buffer (any socket), to tell a
    loss on the test's side from one in the DNS."""
    header, values = (
        line.split()[1:] for line in Path("/proc/net/snmp").read_text().splitlines()
        if line.startswith("Udp:")
    )  # fmt: skip
    return int(dict(zip(header, values, strict=True))["RcvbufErrors"])


async def tcp_metrics(services: Services, name: str = "dns") -> dict[str, float]:
    """The DNS's kgslb_dns_tcp_* samples, for the record (none if it cannot even answer)."""
    try:
        async with httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{services.ops_ports[name]}/metrics"
            response = await http.get(url, timeout=5)
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name.startswith("kgslb_dns_tcp"):
            for sample in family.samples:
                label = ",".join(f"{v}" for v in sample.labels.values())
                out[f"{sample.name}{{{label}}}" if label else sample.name] = sample.value
    return out


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param((), id="default-cap"),
        # Room for every drip: the message limit, not eviction, must end them.
        pytest.param(("--tcp-max-connections", str(DRIPPERS + 500)), id="cap-above-the-drips"),
    ],
)
async def test_tcp_abuse_neither_silences_udp_nor_grows_memory_nor_locks_out_tcp(
    nats_client: Client, services: Services, flags: tuple[str, ...]
) -> None:
    raise_fd_limit(FDS_NEEDED)
    port = await seeded(nats_client, services, *flags)
    process = services.running["dns"].process
    assert process is not None
    load = UdpLoad(port, HELLO, qps=1000, grace_seconds=2.0)
    drops_before = udp_receive_buffer_errors()
    load.start()
    await asyncio.sleep(2)
    baseline_kb = rss_kb(process.pid)
    pipeliner = Pipeliner(port)
    dripper = Dripper(port, DRIPPERS, DRIP_INTERVAL_SECONDS)
    pipeliner.start()
    dripper.start()

    answered = failed = 0
    waits: list[float] = []
    peak_kb = baseline_kb
    deadline = time.monotonic() + ABUSE_SECONDS
    try:
        while time.monotonic() < deadline:
            query = dns.message.make_query(HELLO, "A")
            asked = time.monotonic()
            try:
                reply = await dns.asyncquery.tcp(query, "127.0.0.1", port=port, timeout=5)
                waits.append(time.monotonic() - asked)
                answered += bool(reply.answer)
                failed += not reply.answer
            except (TimeoutError, OSError, EOFError, dns.exception.DNSException):
                failed += 1
            peak_kb = max(peak_kb, rss_kb(process.pid))
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
        metrics = await tcp_metrics(services)
    finally:
        pipeliner.stop()
        oldest_open = dripper.stop()
    lost = await asyncio.to_thread(load.stop)
    host_drops = udp_receive_buffer_errors() - drops_before

    grown_kb = peak_kb - baseline_kb
    print(
        f"\nUDP: {load.sent} sent, {lost} lost ({host_drops} receive-buffer drops on the host); RSS {baseline_kb // 1024} MB -> peak "
        f"{peak_kb // 1024} MB (+{grown_kb / 1024:.1f} MB); fresh TCP: {answered} answered, "
        f"{failed} failed (median {statistics.median(waits or [0]):.2f} s, "
        f"slowest {max(waits or [0]):.2f} s); pipeliner: {pipeliner.connections} connections, "
        f"{pipeliner.sent_bytes // 1024} KB sent; drip: {dripper.closed_by_server} closed by the "
        f"DNS (longest life {dripper.longest_closed_life:.1f} s, oldest open "
        f"{oldest_open:.1f} s), {dripper.connect_failures} connects failed"
    )
    for name, value in sorted(metrics.items()):
        print(f"  {name} {value:g}")
    assert lost == 0, f"{lost} of {load.sent} UDP queries got no answer"
    assert grown_kb < RSS_BUDGET_KB, f"the DNS grew by {grown_kb} kB under TCP abuse"
    assert answered > 0 and failed == 0, f"{failed} fresh TCP queries failed, {answered} answered"
    # Idle until the first byte at most, then the message limit, checked once a second.
    bound = IDLE_SECONDS + MESSAGE_SECONDS + SWEEP_SECONDS + 1
    longest = max(dripper.longest_closed_life, oldest_open)
    assert longest <= bound, f"a slow-drip connection lived {longest:.1f} s (at most {bound} s)"


FD_LIMIT = 300


async def test_at_a_low_open_file_limit_new_tcp_clients_evict_old_ones_and_are_answered(
    nats_client: Client, services: Services, tmp_path: Path
) -> None:
    """With 300 descriptors, twice as many idle connections as it can hold: the DNS keeps its
    cap under the limit, so a newcomer closes the longest idle instead of meeting EMFILE."""
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit is not installed (Debian package util-linux)")
    raise_fd_limit(FDS_NEEDED)
    await put_zone(nats_client, zone())
    await put_service(nats_client, gslb(HELLO))
    port, ops_port = free_port(), free_port()
    argv = [
        "prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}",
        sys.executable, "-m", "kgslb", "dns", "--dns-port", str(port),
    ]  # fmt: skip
    env = {
        **os.environ, "PYTHONUNBUFFERED": "1",
        "KGSLB_NATS_URL": services.nats.url, "KGSLB_OPS_PORT": str(ops_port),
    }  # fmt: skip
    process = ManagedProcess("dns-low-fd", argv, tmp_path / "dns-low-fd.log", env)
    services.running["dns-low-fd"] = process
    services.ops_ports["dns-low-fd"] = ops_port
    process.start()
    await eventually(lambda: first_address(port))
    held: list[socket.socket] = []
    try:
        for _ in range(2 * FD_LIMIT):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        replies = [
            await dns.asyncquery.tcp(
                dns.message.make_query(HELLO, "A"), "127.0.0.1", port=port, timeout=5
            )
            for _ in range(5)
        ]
        metrics = await tcp_metrics(services, "dns-low-fd")
    finally:
        for sock in held:
            sock.close()

    print(f"\nlow open-file limit: {metrics}")
    assert all(reply.answer for reply in replies)
    assert metrics["kgslb_dns_tcp_connections_limit"] == FD_LIMIT - FD_RESERVE
    assert metrics["kgslb_dns_tcp_connections_closed_total{evicted}"] >= FD_LIMIT
