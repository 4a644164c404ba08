"""Soak: `kgslb up` under a steady dnsperf load with an Ingress change every second and a
health flap every minute; reports RSS per process at start and end, queries lost and the error
of the answer ratio against the seed's 6:4:2.

    .venv/bin/python bench/soak.py [--minutes 30] [--warmup-minutes 10] [--qps 2000]

RSS is read at t=0 (the stack answering, nothing run yet), at the end of the warm-up (the load,
churn and flaps already running: "start") and every minute until the end, so the figures
separate caches that fill to a bound (nats-server's file-store cache, the simulator's 5-minute
event history) from growth that goes on.

The seed stack runs on free ports with a quick monitor (1 s interval, 2 failures to down, 2
successes to up). Each second the Ingress `soak` in s1az2 moves to the next of ten hosts
(soak-<n>.avi.iberia.local), so the watcher, reconciler, KV, health and DNS all work every
second. Each minute the s2 backend stops for 10 s. Every 5 s a sampler asks for
hello.avi.iberia.local 120 times; samples taken while every member is up (not within 15 s of a
flap) give the ratio error: the largest gap, in percentage points, between a member's share
of the answers and its weight's share. Needs dnsperf (`apt-get install dnsperf`). Writes JSON
to bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import yaml
from dns_stack import REPO, require_tools

from kgslb.backends import control_site
from kgslb.embedded import free_port

SEED = REPO / "examples" / "seed" / "kgslb.yaml"
RESULTS = REPO / "bench" / "results"
HELLO = "hello.avi.iberia.local"
SHARES = {"127.10.25.46": 6 / 12, "127.10.26.40": 4 / 12, "127.10.23.40": 2 / 12}
MONITOR = {"intervalSeconds": 1, "timeoutSeconds": 0.5, "successesToUp": 2, "failuresToDown": 2}
FLAP_EVERY_SECONDS = 60
FLAP_DOWN_SECONDS = 10
SETTLE_SECONDS = 15
SAMPLE_EVERY_SECONDS = 5
SAMPLE_QUERIES = 120


def stack_file(workdir: Path, dns_port: int) -> Path:
    """The seed's clusters as a single site (one nats-server, one of each service, as the
    soak has always measured) on free ports, with the quick monitor in its GDP."""
    config = yaml.safe_load(SEED.read_text())
    config["dns"] = {"host": "127.0.0.1", "port": dns_port}
    config["nats"] = {"host": "127.0.0.1", "port": free_port()}
    for cluster in config["clusters"].values():
        cluster.pop("dns", None)
        cluster.pop("nats", None)
    config["kubeApi"]["port"] = 0
    config["backends"]["port"] = free_port()
    documents = list(yaml.safe_load_all((SEED.parent / "global-gdp.yaml").read_text()))
    documents[-1]["spec"]["healthMonitorTemplate"] = {
        **MONITOR,
        "port": config["backends"]["port"],
    }
    (workdir / "global-gdp.yaml").write_text(yaml.safe_dump_all(documents))
    for cluster in config["clusters"].values():
        cluster["apply"] = [
            str(workdir / "global-gdp.yaml")
            if file == "global-gdp.yaml"
            else str(SEED.parent / file)
            for file in cluster["apply"]
        ]
    path = workdir / "stack.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def rss_mb(pid: int) -> float:
    """Resident memory of one process (not its children: each is reported on its own)."""
    match = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024 if match else float("nan")


def processes(up_pid: int) -> dict[str, int]:
    """`kgslb up` and its children, by name (`dns`, `watcher-s2`, `nats-server`, ...)."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(up_pid)], capture_output=True, text=True
    )
    named = {"kgslb-up": up_pid}
    for pid in (int(p) for p in out.stdout.split()):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        words = [word.decode() for word in argv if word]
        if "kgslb" in words:
            service = words[words.index("kgslb") + 1]
            context = words[words.index("--context") + 1] if "--context" in words else ""
            named[f"{service}-{context}" if context else service] = pid
        elif "kgslb.backends" in words:
            named["backends"] = pid
        else:
            named[Path(words[0]).name] = pid
    return named


class Churn(threading.Thread):
    """One Ingress change per second in s1az2, through the Kubernetes API."""

    def __init__(self, kubeconfig: str) -> None:
        super().__init__(daemon=True)
        from kubernetes import client, config

        api = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context="s1az2"
        )
        self.api = client.NetworkingV1Api(api)
        self.stop = threading.Event()
        self.changes = 0
        self.errors = 0

    def body(self, host: str) -> Any:
        """An Ingress as the JSON the client sends (it takes a dict as well as a V1Ingress)."""
        backend = {"service": {"name": "hello", "port": {"number": 80}}}
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "soak", "labels": {"app": "gslb"}},
            "spec": {
                "rules": [
                    {
                        "host": host,
                        "http": {
                            "paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]
                        },
                    }
                ]
            },
        }

    def run(self) -> None:
        self.api.create_namespaced_ingress("default", self.body("soak-0.avi.iberia.local"))
        while not self.stop.wait(1.0):
            host = f"soak-{(self.changes + 1) % 10}.avi.iberia.local"
            patch = {"spec": self.body(host)["spec"]}
            try:
                self.api.patch_namespaced_ingress("soak", "default", patch)
                self.changes += 1
            except Exception:  # counted and reported: the soak goes on
                self.errors += 1


class Sampler(threading.Thread):
    """Every few seconds, 120 answers for hello; keeps those taken with every member up."""

    def __init__(self, port: int, flaps: list[float]) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.flaps = flaps
        self.stop = threading.Event()
        self.steady: Counter[str] = Counter()
        self.samples = 0
        self.timeouts = 0

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_EVERY_SECONDS):
            started = time.monotonic()
            if self.flaps and started - self.flaps[-1] < FLAP_DOWN_SECONDS + SETTLE_SECONDS:
                continue
            seen: Counter[str] = Counter()
            for _ in range(SAMPLE_QUERIES):
                try:
                    reply = dns.query.udp(
                        dns.message.make_query(HELLO, "A"), "127.0.0.1", port=self.port, timeout=1
                    )
                except dns.exception.Timeout:
                    self.timeouts += 1
                    continue
                seen.update(rr.address for rrset in reply.answer for rr in rrset)
            if (
                self.flaps
                and time.monotonic() - self.flaps[-1] < FLAP_DOWN_SECONDS + SETTLE_SECONDS
            ):
                continue
            self.steady.update(seen)
            self.samples += 1

    def ratio_error_points(self) -> float:
        total = sum(self.steady.values())
        if not total:
            return float("nan")
        return max(abs(self.steady[ip] / total - share) * 100 for ip, share in SHARES.items())


def dnsperf(port: int, qps: int, seconds: int, workdir: Path) -> subprocess.Popen[str]:
    queries = workdir / "queries.txt"
    queries.write_text(f"{HELLO} A\n")
    return subprocess.Popen(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-c", "4", "-T", "1",
         "-l", str(seconds), "-Q", str(qps), "-t", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def dnsperf_numbers(out: str) -> dict[str, float]:
    def number(label: str) -> float:
        match = re.search(rf"{label}:\s+([\d.]+)", out)
        return float(match.group(1)) if match else float("nan")

    return {
        "sent": number("Queries sent"),
        "completed": number("Queries completed"),
        "lost": number("Queries lost"),
        "qps": number("Queries per second"),
        "avg_latency_ms": number("Average Latency \\(s\\)") * 1000,
    }


def wait_for(path: Path, what: str, up: subprocess.Popen[str], timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if path.exists():
            return
        if up.poll() is not None:
            raise SystemExit(f"kgslb up exited before {what}")
        time.sleep(0.2)
    raise SystemExit(f"{what} did not appear in {timeout_seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--warmup-minutes", type=float, default=10)
    parser.add_argument("--qps", type=int, default=2000)
    args = parser.parse_args()
    require_tools("dnsperf")
    warmup_seconds = int(args.warmup_minutes * 60)
    seconds = warmup_seconds + int(args.minutes * 60)

    workdir = Path(tempfile.mkdtemp(prefix="kgslb-soak-"))
    dns_port = free_port()
    state_dir = workdir / "state"
    up = subprocess.Popen(
        [sys.executable, "-m", "kgslb", "up", "-c", str(stack_file(workdir, dns_port)),
         "--state-dir", str(state_dir)],
        stdout=(workdir / "up.log").open("w"), stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(state_dir / "stack.json", "the stack", up, 60)
        state = json.loads((state_dir / "stack.json").read_text())
        time.sleep(10)  # the first answers and health records
        named = processes(up.pid)
        rss_zero = {name: round(rss_mb(pid), 1) for name, pid in named.items()}
        rss_start: dict[str, float] = dict(rss_zero)
        rss_series: list[dict[str, Any]] = [{"second": 0, **rss_zero}]
        flaps: list[float] = []
        churn = Churn(state["kubeconfig"])
        sampler = Sampler(dns_port, flaps)
        load = dnsperf(dns_port, args.qps, seconds, workdir)
        churn.start()
        sampler.start()
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            time.sleep(FLAP_EVERY_SECONDS - FLAP_DOWN_SECONDS)
            elapsed = round(time.monotonic() - started)
            sample = {name: round(rss_mb(pid), 1) for name, pid in named.items()}
            rss_series.append({"second": elapsed, **sample})
            if elapsed < warmup_seconds:
                rss_start = sample
            if time.monotonic() - started >= seconds - FLAP_DOWN_SECONDS:
                break
            flaps.append(time.monotonic())
            control_site(state["backends_control"], "s2", "stop")
            time.sleep(FLAP_DOWN_SECONDS)
            control_site(state["backends_control"], "s2", "start")
        out, _ = load.communicate(timeout=seconds + 60)
        churn.stop.set()
        sampler.stop.set()
        sampler.join(timeout=SAMPLE_QUERIES + 5)
        rss_end = {name: round(rss_mb(pid), 1) for name, pid in named.items()}
        alive = {name: Path(f"/proc/{pid}").exists() for name, pid in named.items()}
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)

    perf = dnsperf_numbers(out)
    growth = {name: (rss_end[name] - rss_start[name]) / rss_start[name] * 100 for name in rss_start}
    growth_zero = {
        name: (rss_end[name] - rss_zero[name]) / rss_zero[name] * 100 for name in rss_zero
    }
    print(
        f"soak: {args.warmup_minutes:g} min warm-up + {args.minutes:g} min at {args.qps} qps, "
        f"{churn.changes} Ingress changes ({churn.errors} failed), {len(flaps)} health flaps"
    )
    print(
        f"{'process':<16} {'RSS t=0':>8} {'start':>8} {'end':>8} {'growth %':>9} "
        f"{'from t=0 %':>11}  alive"
    )
    for name in rss_start:
        print(
            f"{name:<16} {rss_zero[name]:>8} {rss_start[name]:>8} {rss_end[name]:>8} "
            f"{growth[name]:>9.1f} {growth_zero[name]:>11.1f}  {alive[name]}"
        )
    print(
        f"dnsperf: sent {perf['sent']:.0f}, completed {perf['completed']:.0f}, lost "
        f"{perf['lost']:.0f}, {perf['qps']:.0f} qps, {perf['avg_latency_ms']:.2f} ms average"
    )
    print(
        f"answer ratio: {sampler.samples} steady samples of {SAMPLE_QUERIES}, largest error "
        f"{sampler.ratio_error_points():.2f} points against 6:4:2"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "minutes": args.minutes,
        "warmup_minutes": args.warmup_minutes,
        "rss_mb_t0": rss_zero,
        "rss_mb_series": rss_series,
        "rss_growth_percent_from_t0": {name: round(v, 1) for name, v in growth_zero.items()},
        "qps": args.qps,
        "ingress_changes": churn.changes,
        "ingress_change_errors": churn.errors,
        "health_flaps": len(flaps),
        "rss_mb_start": rss_start,
        "rss_mb_end": rss_end,
        "rss_growth_percent": {name: round(value, 1) for name, value in growth.items()},
        "alive_at_end": alive,
        "dnsperf": perf,
        "ratio_samples": sampler.samples,
        "ratio_error_points": round(sampler.ratio_error_points(), 2),
        "sampler_timeouts": sampler.timeouts,
        "workdir": str(workdir),
    }
    out_path = RESULTS / "soak.json"
    out_path.write_text(json.dumps(result, indent=2))
    print(f"wrote {out_path} (logs in {workdir})")


if __name__ == "__main__":
    main()
