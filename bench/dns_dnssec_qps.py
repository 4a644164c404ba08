"""DNSSEC throughput: `kgslb dns` signing online against NSD serving a pre-signed zone.

    .venv/bin/python bench/dns_dnssec_qps.py [--seconds 10] [--repeat 3]

Starts a nats-server whose KV holds the seed zone, signed (`dnssec: {enabled: true}`, ECDSA
P-256), its keys (KV `kgslb_keys`, made here as the reconciler makes them) and the seed's
weighted `hello` name (6:4:2); a `kgslb dns` on it (the real service, query logs off); and an
NSD serving the same names as static records in a zone signed beforehand with
`ldns-keygen -a ECDSAP256SHA256` (KSK and ZSK) and `ldns-signzone` (NSEC). Then, NSD and
kgslb back to back, `repeat` times:

    dnsperf -s 127.0.0.1 -p PORT -d QUERYFILE -c 4 -T 1 -l SECONDS [-D]

Scenarios: the weighted name with DO=1 (`-D`: an RRSIG with every answer; target 0.8 x NSD),
the same without DO (the unsigned path of a signed zone), an NXDOMAIN name with DO=1 (two
NSEC and three RRSIGs; one name, so signed once and then cached). Prints qps, lost, average
latency, CPU per query, the answer size and the ratio to NSD; writes JSON to bench/results/.
Needs `apt-get install dnsperf nsd ldnsutils`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query
from dns_qps import descendants
from dns_stack import (
    HELLO,
    ZONE,
    Nsd,
    cpu_seconds,
    gslb_service,
    require_tools,
    rss_mb,
    run_dnsperf,
    seed_kv,
    seed_zone,
    wait_answering,
)

from kgslb.embedded import NatsServer, free_port, service_process
from shared import bus, dnssec, subjects, wire
from shared.models import DnssecAlgorithm, ZoneDnssec, utcnow
from shared.settings import NatsSettings

RESULTS = Path(__file__).resolve().parent / "results"


async def seed_keys(nats_url: str, secret: str) -> None:
    keys = dnssec.new_zone_keys(
        ZONE + ".",
        DnssecAlgorithm.ECDSAP256SHA256,
        dnssec.load_secret(secret),
        utcnow(),
    )
    nc = await bus.connect(NatsSettings(nats_url=nats_url), "kgslb-bench")
    try:
        buckets = await bus.bootstrap(nc.jetstream())
        await buckets[subjects.KV_KEYS].put(subjects.fqdn_key(ZONE), wire.encode(keys))
    finally:
        await nc.drain()


def sign_nsd_zone(nsd: Nsd) -> None:
    """Replace NSD's zone file by its signed form (ldns-keygen, ldns-signzone)."""
    keys = []
    for extra in (["-k"], []):
        base = subprocess.run(
            ["ldns-keygen", "-a", "ECDSAP256SHA256", *extra, ZONE],
            cwd=nsd.dir, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        keys.append(base)
    subprocess.run(
        ["ldns-signzone", "-f", str(nsd.dir / "zone.signed"), str(nsd.dir / "zone"), *keys],
        cwd=nsd.dir, check=True, capture_output=True,
    )  # fmt: skip
    (nsd.dir / "zone").write_text((nsd.dir / "zone.signed").read_text())


def answer_size(port: int, name: str, do: bool) -> int:
    query = dns.message.make_query(name, "A", want_dnssec=do)
    reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=2)
    return len(reply.to_wire())


def measure(port: int, pid: int, query_file: Path, seconds: int, do: bool) -> dict[str, Any]:
    pids = descendants(pid)
    before = sum(cpu_seconds(p) for p in pids)
    result = run_dnsperf(port, query_file, seconds, *(["-D"] if do else []))
    after = sum(cpu_seconds(p) for p in pids if Path(f"/proc/{p}").exists())
    return {
        **result.as_dict(),
        "cpu_us_per_query": round(1e6 * (after - before) / max(result.completed, 1), 2),
        "rss_mb": round(rss_mb(pid), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="dnsperf -l")
    parser.add_argument("--repeat", type=int, default=3, help="NSD/kgslb pairs per scenario")
    args = parser.parse_args()
    require_tools("dnsperf", "nsd", "ldns-signzone", "ldns-keygen")

    zone = seed_zone().model_copy(update={"dnssec": ZoneDnssec(enabled=True)})
    services = [gslb_service(HELLO)]
    secret = dnssec.new_secret()
    with tempfile.TemporaryDirectory(prefix="kgslb-bench-dnssec-") as tmp:
        workdir = Path(tmp)
        weighted = workdir / "weighted.txt"
        weighted.write_text(f"{HELLO} A\n")
        missing = workdir / "nxdomain.txt"
        missing.write_text(f"nothing-here.{ZONE} A\n")
        scenarios = [
            ("weighted name, DO=1", weighted, True, 0.8),
            ("weighted name, DO=0", weighted, False, None),
            ("NXDOMAIN, DO=1", missing, True, None),
        ]
        server = NatsServer(workdir / "jetstream")
        server.start()
        dns_process = None
        try:
            asyncio.run(seed_kv(server.url, zone, services))
            asyncio.run(seed_keys(server.url, secret))
            port = free_port()
            dns_process = service_process(
                f"dns-{port}",
                ["dns", "--dns-port", str(port), "--log-queries", "false"],
                workdir / "logs",
                {"KGSLB_NATS_URL": server.url, "KGSLB_LOG_LEVEL": "WARNING",
                 "KGSLB_DNSSEC_KEY_SECRET": secret},
            )  # fmt: skip
            dns_process.start()
            nsd = Nsd(workdir / "nsd", seed_zone(), services)
            sign_nsd_zone(nsd)
            with nsd:
                wait_answering(port, HELLO, timeout_seconds=120)
                wait_answering(nsd.port, HELLO)
                deadline = time.monotonic() + 60
                while answer_size(port, HELLO, True) == answer_size(port, HELLO, False):
                    if time.monotonic() > deadline:
                        raise SystemExit("kgslb never signed: keys not loaded")
                    time.sleep(0.2)
                assert dns_process.process is not None
                rows = []
                for name, query_file, do, target in scenarios:
                    pairs = []
                    for _ in range(args.repeat):
                        theirs = measure(nsd.port, nsd.pid, query_file, args.seconds, do)
                        ours = measure(port, dns_process.process.pid, query_file, args.seconds, do)
                        pairs.append((theirs, ours))
                    probe = HELLO if query_file is weighted else f"nothing-here.{ZONE}"
                    rows.append(
                        {
                            "scenario": name,
                            "target_ratio": target,
                            "ratio": round(
                                statistics.median(o["qps"] / t["qps"] for t, o in pairs), 3
                            ),
                            "bytes": {
                                "nsd": answer_size(nsd.port, probe, do),
                                "kgslb": answer_size(port, probe, do),
                            },
                            "pairs": [{"nsd": t, "kgslb": o} for t, o in pairs],
                        }
                    )
        finally:
            if dns_process is not None:
                dns_process.stop()
            server.stop()
    report(args, rows)


def report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    print(
        f"\ndnsperf -s 127.0.0.1 -p PORT -d QUERYFILE -c 4 -T 1 -l {args.seconds} [-D]"
        f"   (median of {args.repeat} pairs)"
    )
    header = (
        f"{'scenario':22} {'server':6} {'qps':>8} {'lost':>5} {'avg ms':>7} {'cpu us/q':>8} "
        f"{'bytes':>5} {'ratio':>6} {'target':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = row["ratio"]
        pair = min(row["pairs"], key=lambda p: abs(p["kgslb"]["qps"] / p["nsd"]["qps"] - ratio))
        lost = max(p["kgslb"]["lost"] for p in row["pairs"])
        verdict = ""
        if row["target_ratio"] is not None:
            met = ratio >= row["target_ratio"] and lost == 0
            verdict = f">={row['target_ratio']} {'ok' if met else 'MISS'}"
        for server in ("nsd", "kgslb"):
            run = pair[server]
            mine = server == "kgslb"
            print(
                f"{row['scenario']:22} {server:6} {run['qps']:8.0f} {run['lost']:5d} "
                f"{run['avg_latency_ms']:7.3f} {run['cpu_us_per_query']:8.2f} "
                f"{row['bytes'][server]:5d} {f'{ratio:.2f}' if mine else '':>6} "
                f"{verdict if mine else ''}"
            )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"dns_dnssec_qps-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "results": rows}, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
