"""DNS throughput: `kgslb dns` against NSD with the same dnsperf command, on loopback.

    .venv/bin/python bench/dns_qps.py [--seconds 10] [--names 10000] [--workers 2] [--repeat 3] [--only NAME]

Starts a nats-server whose KV holds the seed zone, the seed's `hello` name (6:4:2) and
`--names` more weighted names, then for each scenario a `kgslb dns` (the real service: KV
mirror, UDP batching, response cache) and an NSD serving the same names as static records
(`server-count: 1`, RRL off), and runs for both

    dnsperf -s 127.0.0.1 -p PORT -d QUERYFILE -c 4 -T 1 -l SECONDS

Scenarios: one weighted name with query logs off; a query file over all the names; query
logs on at the default throttle (50 records/s); the query file over all the names while
/metrics (30,000 answer series after one pass) is scraped every second; `--workers N`. Prints qps, lost, average
latency, server CPU per query and RSS for both, and the ratio to NSD; writes JSON to
bench/results/. Needs `apt-get install dnsperf nsd`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from dns_stack import (
    HELLO,
    DnsperfResult,
    Nsd,
    SeededNats,
    cpu_seconds,
    dnsperf_command,
    gslb_name,
    gslb_service,
    many_services,
    require_tools,
    rss_mb,
    run_dnsperf,
    seed_zone,
    start_kgslb_dns,
    wait_answering,
)

from kgslb.embedded import free_port

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Scenario:
    name: str
    query_file: Path
    flags: tuple[str, ...]
    target_ratio: float | None
    scrape_port: int = 0
    """When set, /metrics on this ops port is scraped every second while kgslb is measured."""
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    """(NSD run, kgslb run) measured back to back, so both see the same machine load."""

    def ratio(self) -> float:
        return statistics.median(ours["qps"] / nsd["qps"] for nsd, ours in self.pairs)

    def median_pair(self) -> tuple[dict[str, Any], dict[str, Any]]:
        ratio = self.ratio()
        return min(self.pairs, key=lambda pair: abs(pair[1]["qps"] / pair[0]["qps"] - ratio))


def descendants(pid: int) -> list[int]:
    found = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) in found:
            found.append(int(stat.parent.name))
    return found


def measure(port: int, pid: int, query_file: Path, seconds: int) -> dict[str, Any]:
    pids = descendants(pid)
    cpu_before = sum(cpu_seconds(p) for p in pids)
    result: DnsperfResult = run_dnsperf(port, query_file, seconds)
    cpu_after = sum(cpu_seconds(p) for p in pids if Path(f"/proc/{p}").exists())
    return {
        **result.as_dict(),
        "cpu_us_per_query": round(1e6 * (cpu_after - cpu_before) / max(result.completed, 1), 2),
        "rss_mb": round(rss_mb(pid), 1),
    }


class Scraper(threading.Thread):
    """GETs /metrics once a second, as a Prometheus would (15 times more often than usual)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.stop = threading.Event()
        self.seconds: list[float] = []
        self.sizes: list[int] = []
        self.start()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            started = time.perf_counter()
            body = httpx.get(self.url, timeout=10).content
            self.seconds.append(time.perf_counter() - started)
            self.sizes.append(len(body))

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        self.join()
        return {
            "count": len(self.seconds),
            "max_seconds": round(max(self.seconds, default=0), 3),
            "median_seconds": round(statistics.median(self.seconds or [0]), 3),
            "bytes": max(self.sizes, default=0),
        }


def run_scenario(
    scenario: Scenario, nats_url: str, nsd: Nsd, workdir: Path, args: argparse.Namespace, probe: str
) -> None:
    port = free_port()
    process = start_kgslb_dns(nats_url, port, workdir / "logs", *scenario.flags)
    try:
        wait_answering(port, probe, timeout_seconds=120)
        wait_answering(nsd.port, probe)
        assert process.process is not None
        for _ in range(args.repeat):
            nsd_run = measure(nsd.port, nsd.pid, scenario.query_file, args.seconds)
            scraper = Scraper(scenario.scrape_port) if scenario.scrape_port else None
            ours = measure(port, process.process.pid, scenario.query_file, args.seconds)
            if scraper is not None:
                ours["scrapes"] = scraper.finish()
            scenario.pairs.append((nsd_run, ours))
    finally:
        process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="dnsperf -l")
    parser.add_argument("--names", type=int, default=10_000, help="extra GSLB names in the table")
    parser.add_argument("--workers", type=int, default=2, help="processes for --workers")
    parser.add_argument(
        "--repeat", type=int, default=3, help="NSD/kgslb pairs per scenario; the median counts"
    )
    parser.add_argument("--only", help="run the scenarios whose name contains this")
    args = parser.parse_args()
    require_tools("dnsperf", "nsd")

    services = [gslb_service(HELLO), *many_services(args.names)]
    last = gslb_name(args.names - 1) if args.names else HELLO
    with tempfile.TemporaryDirectory(prefix="kgslb-bench-") as tmp:
        workdir = Path(tmp)
        single = workdir / "single.txt"
        single.write_text(f"{HELLO} A\n")
        every = workdir / "names.txt"
        every.write_text("".join(f"{s.fqdn} A\n" for s in services[1:]) or f"{HELLO} A\n")
        quiet = ("--log-queries", "false")
        scrape_port = free_port()
        scenarios = [
            Scenario("one weighted name", single, quiet, 0.9),
            Scenario(f"{args.names} names", every, quiet, 0.8),
            Scenario("query logs, 50/s", single, ("--log-per-second", "50"), 0.85),
            Scenario(
                f"{args.names} names, /metrics 1/s",
                every,
                (*quiet, "--ops-port", str(scrape_port)),
                0.8,
                scrape_port,
            ),
            Scenario(
                f"--workers {args.workers}", single, (*quiet, "--workers", str(args.workers)), None
            ),
        ]
        scenarios = [s for s in scenarios if not args.only or args.only in s.name]
        with (
            SeededNats(workdir, services) as nats,
            Nsd(workdir / "nsd", seed_zone(), services) as nsd,
        ):
            for scenario in scenarios:
                run_scenario(scenario, nats.server.url, nsd, workdir, args, last)
        report(args, scenarios)


def report(args: argparse.Namespace, scenarios: list[Scenario]) -> None:
    command = " ".join(dnsperf_command(0, Path("QUERYFILE"), args.seconds))
    print("\n" + command.replace(" -p 0 ", " -p PORT ") + f"   (median of {args.repeat} pairs)")
    header = (
        f"{'scenario':20} {'server':6} {'qps':>8} {'lost':>5} {'avg ms':>7} "
        f"{'cpu us/q':>8} {'RSS MB':>7} {'ratio':>6} {'target':>7}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for scenario in scenarios:
        nsd, ours = scenario.median_pair()
        ratio = scenario.ratio()
        lost = max(pair[1]["lost"] for pair in scenario.pairs)
        verdict = ""
        if scenario.target_ratio is not None:
            met = ratio >= scenario.target_ratio and lost == 0
            verdict = f">={scenario.target_ratio} {'ok' if met else 'MISS'}"
        if "scrapes" in ours:
            scrapes = ours["scrapes"]
            print(
                f"  /metrics while measured: {scrapes['count']} scrapes of "
                f"{scrapes['bytes'] // 1024} KiB, median {scrapes['median_seconds'] * 1000:.0f} "
                f"ms, max {scrapes['max_seconds'] * 1000:.0f} ms"
            )
        for server, run in (("nsd", nsd), ("kgslb", ours)):
            mine = server == "kgslb"
            print(
                f"{scenario.name:20} {server:6} {run['qps']:8.0f} {run['lost']:5d} "
                f"{run['avg_latency_ms']:7.3f} {run['cpu_us_per_query']:8.2f} "
                f"{run['rss_mb']:7.1f} {f'{ratio:.2f}' if mine else '':>6} "
                f"{verdict if mine else ''}"
            )
        rows.append(
            {
                "scenario": scenario.name,
                "flags": scenario.flags,
                "ratio": round(ratio, 3),
                "target_ratio": scenario.target_ratio,
                "max_lost": lost,
                "pairs": [{"nsd": n, "kgslb": k} for n, k in scenario.pairs],
            }
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"dns_qps-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "command": command, "results": rows}, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
