"""Bench helpers: a seeded nats-server with `kgslb dns` in front of it, an NSD serving the
equivalent static zone, and dnsperf runs against either, all on loopback and ephemeral ports.

Needs the Debian packages `dnsperf` and `nsd` (`apt-get install dnsperf nsd`); nothing here
installs them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kgslb.embedded import ManagedProcess, NatsServer, free_port, service_process  # noqa: E402
from shared import bus, subjects, wire  # noqa: E402
from shared.models import (  # noqa: E402
    GslbService,
    Member,
    NameServer,
    PriorityGroup,
    SoaSpec,
    StaticRecord,
    ZoneSpec,
)
from shared.settings import NatsSettings  # noqa: E402

ZONE = "avi.iberia.local"
HELLO = f"hello.{ZONE}"
SEED_MEMBERS = (
    ("127.10.25.46", "s1az1", 6),
    ("127.10.26.40", "s1az2", 4),
    ("127.10.23.40", "s2", 2),
)


def require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        packages = " ".join(sorted(set(missing)))
        raise SystemExit(f"missing {', '.join(missing)}: install with `apt-get install {packages}`")


def seed_zone() -> ZoneSpec:
    return ZoneSpec(
        name=ZONE,
        soa=SoaSpec(mname="g-dns.iberia.local.", rname="johernandez.iberia.local."),
        nameservers=[NameServer(name="g-dns.iberia.local.", glue=["127.0.0.1"])],
        records=[StaticRecord(name="test", type="A", value="10.10.24.200")],
        default_ttl_seconds=30,
    )


def gslb_name(index: int) -> str:
    return f"app{index:05d}.{ZONE}"


def gslb_service(
    fqdn: str, members: tuple[tuple[str, str, int], ...] = SEED_MEMBERS
) -> GslbService:
    return GslbService(
        fqdn=fqdn,
        ttl_seconds=30,
        groups=[
            PriorityGroup(
                priority=10,
                members=[Member(ip=ip, cluster=cluster, weight=w) for ip, cluster, w in members],
            )
        ],
    )


def many_services(count: int) -> list[GslbService]:
    """`count` weighted names, members spread over 127.20.0.0/16 (loopback, never routed)."""
    services = []
    for index in range(count):
        high, low = divmod(index, 250)
        members = (
            (f"127.20.{high % 250}.{low + 1}", "s1az1", 6),
            (f"127.21.{high % 250}.{low + 1}", "s1az2", 4),
            (f"127.22.{high % 250}.{low + 1}", "s2", 2),
        )
        services.append(gslb_service(gslb_name(index), members))
    return services


async def seed_kv(nats_url: str, zone: ZoneSpec, services: list[GslbService]) -> None:
    nc = await bus.connect(NatsSettings(nats_url=nats_url), "kgslb-bench")
    try:
        buckets = await bus.bootstrap(nc.jetstream())
        await buckets[subjects.KV_ZONES].put(subjects.fqdn_key(zone.name), wire.encode(zone))
        kv = buckets[subjects.KV_SERVICES]
        for service in services:
            await kv.put(subjects.fqdn_key(service.fqdn), wire.encode(service))
    finally:
        await nc.drain()


class SeededNats:
    """A JetStream nats-server whose KV holds the zone and the given GSLB names."""

    def __init__(self, workdir: Path, services: list[GslbService]) -> None:
        self.server = NatsServer(workdir / "jetstream")
        self.services = services

    def __enter__(self) -> SeededNats:
        self.server.start()
        asyncio.run(seed_kv(self.server.url, seed_zone(), self.services))
        return self

    def __exit__(self, *_: object) -> None:
        self.server.stop()


def wait_answering(port: int, name: str, timeout_seconds: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            reply = dns.query.udp(
                dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.5
            )
            if reply.answer:
                return
        except (dns.exception.Timeout, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"no answer for {name} on port {port} within {timeout_seconds:.0f} s")


def start_kgslb_dns(nats_url: str, port: int, log_dir: Path, *flags: str) -> ManagedProcess:
    process = service_process(
        f"dns-{port}",
        ["dns", "--dns-port", str(port), *flags],
        log_dir,
        {"KGSLB_NATS_URL": nats_url, "KGSLB_LOG_LEVEL": "WARNING"},
    )
    process.start()
    return process


def nsd_zone_file(zone: ZoneSpec, services: list[GslbService]) -> str:
    """The same names as static records: one A record per GSLB name, so NSD's response is the
    same size as a kgslb answer with `answers: 1`."""
    soa = zone.soa
    lines = [
        f"$ORIGIN {zone.name}.",
        f"$TTL {zone.default_ttl_seconds}",
        f"@ IN SOA {soa.mname} {soa.rname} {soa.serial} {soa.refresh_seconds} "
        f"{soa.retry_seconds} {soa.expire_seconds} {soa.minimum_seconds}",
    ]
    lines += [f"@ IN NS {ns.name}" for ns in zone.nameservers]
    lines += [f"{r.name} IN {r.type} {r.value}" for r in zone.records]
    for service in services:
        first = service.groups[0].members[0]
        lines.append(f"{service.fqdn}. {service.ttl_seconds} IN A {first.ip}")
    return "\n".join(lines) + "\n"


class Nsd:
    """`nsd -d` as a child: one server process, RRL off, on an ephemeral loopback port."""

    def __init__(self, workdir: Path, zone: ZoneSpec, services: list[GslbService]) -> None:
        self.dir = workdir
        self.port = free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "zone").write_text(nsd_zone_file(zone, services))
        (self.dir / "nsd.conf").write_text(
            f"""server:
  ip-address: 127.0.0.1@{self.port}
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "{self.dir}"
  pidfile: "{self.dir}/nsd.pid"
  xfrdfile: "{self.dir}/xfrd.state"
  zonelistfile: "{self.dir}/zone.list"
  database: ""
  logfile: "{self.dir}/nsd.log"
  verbosity: 0
  rrl-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: {zone.name}
  zonefile: {self.dir}/zone
"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nsd:
        self.process = subprocess.Popen(
            ["nsd", "-d", "-c", str(self.dir / "nsd.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


@dataclass
class DnsperfResult:
    qps: float
    sent: int
    completed: int
    lost: int
    avg_latency_ms: float
    rcodes: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dnsperf_command(port: int, query_file: Path, seconds: int, *extra: str) -> list[str]:
    return ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(query_file),
            "-c", "4", "-T", "1", "-l", str(seconds), *extra]  # fmt: skip


def run_dnsperf(port: int, query_file: Path, seconds: int, *extra: str) -> DnsperfResult:
    """`extra`: more dnsperf flags, e.g. `-D` (the DNSSEC OK bit)."""
    out = subprocess.run(
        dnsperf_command(port, query_file, seconds, *extra),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    def number(label: str) -> float:
        match = re.search(rf"{label}:\s+([\d.]+)", out)
        if match is None:
            raise SystemExit(f"dnsperf printed no {label!r}:\n{out}")
        return float(match.group(1))

    rcodes = re.search(r"Response codes:\s+(.*)", out)
    return DnsperfResult(
        qps=number("Queries per second"),
        sent=int(number("Queries sent")),
        completed=int(number("Queries completed")),
        lost=int(number("Queries lost")),
        avg_latency_ms=number("Average Latency \\(s\\)") * 1000,
        rcodes=rcodes.group(1).strip() if rcodes else "",
    )


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the workers of `--workers N`)."""
    total_kb = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for one in pids:
        status = Path(f"/proc/{one}/status")
        if status.exists():
            match = re.search(r"VmRSS:\s+(\d+)", status.read_text())
            total_kb += int(match.group(1)) if match else 0
    return total_kb / 1024


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
