"""End-to-end scale: N FQDNs x 3 clusters of Ingresses in the Kubernetes API simulator, the
whole stack from cold, restarts, memory, the cost of one change, and DNS qps against NSD.

    .venv/bin/python bench/e2e_scale.py                    # 10,000 FQDNs (30,000 members)
    .venv/bin/python bench/e2e_scale.py --fqdns 100000 --skip-qps --skip-restarts --changes 5

Steps, in one run:
1. cold: the Ingresses exist before any kgslb process starts; time from starting the
   watchers, reconciler, health and dns to every name answering its 3 members (the GDP asks
   for `answers: 3`; a pipelined sweep over all names checks every answer), and the KV
   writes it took (each name once: N).
2. change: one Ingress's VIP moves (AKO status), `--changes` times on different names; the
   latency to DNS and what it cost on NATS: KGSLB_EVENTS and KV_kgslb_services sequence
   numbers, and nats-server /varz message counters (monitoring port).
3. restarts: each service stopped and started on its own; time until it is ready again and
   DNS is complete, and the KV writes it caused (a restart must write nothing).
4. memory: RSS of every process.
5. qps: the GDP switches to `answers: 1` (timed too, a GDP edit at scale), then dnsperf over
   a query file of all the names against `kgslb dns` and against NSD serving the same names.

Prints a table and writes bench/results/e2e_scale-<N>.json. Needs `apt-get install dnsperf nsd`
for step 5.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import httpx
import nats
from _stack import (
    CLUSTERS,
    SHARED_VIPS,
    E2EStack,
    app_fqdn,
    app_name,
    git_revision,
    load,
    percentiles,
    rss_mb,
    seed_gdp_spec,
    wait_until,
)
from _stack import RESULTS as RESULTS_DIR
from dns_stack import Nsd, gslb_service, require_tools, run_dnsperf, seed_zone

from kubesim import KubeSim
from kubesim.resources import INGRESSES
from shared import subjects, wire
from shared.models import Lease

MEMBERS = tuple((SHARED_VIPS[c], c, w) for c, w in zip(CLUSTERS, (6, 4, 2), strict=True))


def gdp_spec(answers: int) -> dict[str, Any]:
    spec = seed_gdp_spec()
    spec["answers"] = answers
    # Shared loopback VIPs with nothing listening: members are answered without probing.
    spec["healthMonitorTemplate"] = {"kind": "none"}
    return spec


def sweep(port: int, names: list[str], want: int, batch: int = 200) -> tuple[list[str], int]:
    """The names of `names` that do not answer exactly `want` addresses (pipelined UDP
    queries), and how many of those gave no reply within 0.5 s."""
    wrong: list[str] = []
    unanswered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        for start in range(0, len(names), batch):
            chunk = names[start : start + batch]
            for offset, name in enumerate(chunk):
                query = dns.message.make_query(name, "A")
                query.id = offset
                sock.sendto(query.to_wire(), ("127.0.0.1", port))
            counts: dict[int, int] = {}
            try:
                while len(counts) < len(chunk):
                    reply = dns.message.from_wire(sock.recv(65535))
                    counts[reply.id] = sum(
                        len(rrset) for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A
                    )
            except TimeoutError:
                pass
            wrong += [name for offset, name in enumerate(chunk) if counts.get(offset) != want]
            unanswered += sum(1 for offset in range(len(chunk)) if offset not in counts)
    return wrong, unanswered


def converge(
    stack: E2EStack,
    names: list[str],
    want: int,
    timeout_seconds: float,
    trace: list[dict[str, Any]] | None = None,
    passes: list[dict[str, Any]] | None = None,
) -> float:
    """Seconds until every name has answered right, confirmed by a full sweep after it.

    Once the dns process holds every name, a sweep asks all of them; later passes ask again
    only those not right yet (a full sweep of 100,000 names takes ~10 s, and starting it over
    for a few late names measured the sweep more than the stack). The time returned is the
    start of the pass after which none was left; a full sweep then must find every name right,
    or the names it finds wrong are pending again. With `trace`, also records where each hop
    stands every half second (the cold timeline); with `passes`, each pass's figures."""
    started = time.monotonic()
    deadline = started + timeout_seconds
    next_trace = started
    pending = list(names)
    all_right_at: float | None = None
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            held = stack.poll_metric("dns", "kgslb_dns_gslb_names")
        except Exception:
            held = 0
        if trace is not None and time.monotonic() >= next_trace:
            next_trace += 0.5
            trace.append(snapshot(stack, time.monotonic() - started, held))
        if held >= len(names):
            checked_at = time.monotonic()
            confirming = not pending
            wrong, unanswered = sweep(stack.dns_port, pending or names, want)
            if passes is not None:
                passes.append(
                    {
                        "t": round(checked_at - started, 1),
                        "seconds": round(time.monotonic() - checked_at, 1),
                        "asked": len(pending or names),
                        "wrong": len(wrong),
                        "unanswered": unanswered,
                        "confirming": confirming,
                    }
                )
            if confirming and not wrong:
                assert all_right_at is not None
                return all_right_at
            if not wrong:
                all_right_at = checked_at - started
            pending = wrong
            continue
        time.sleep(0.1)
    raise SystemExit(f"not converged within {timeout_seconds:.0f} s")


def elsewhere(stack: E2EStack) -> list[str]:
    """Lower to nice 19 what the other sites would run on their own machines and what is
    not on the measured path: their DNS and health replicas, and the reconcilers that do not
    lead (the leader, whichever site's, plans and writes for all). The nats-servers (the
    replication under test) and the watchers (each publishes its cluster in both layouts)
    keep their priority."""
    if not stack.sites:
        raise SystemExit("--other-sites-elsewhere needs --sites")
    pids = {
        process.process.pid: name
        for name, process in stack.processes.items()
        if name.startswith("reconciler") and process.process is not None
    }
    deadline = time.monotonic() + 30
    leader = None
    while leader is None and time.monotonic() < deadline:
        holder = asyncio.run(lease_holder(stack.nats_url_of(CLUSTERS[0])))
        if holder:
            leader = pids.get(int(holder.rpartition("-")[2]))  # replica <host>-<pid>
        time.sleep(0.05)
    if leader is None:
        raise SystemExit("no reconciler holds the lease after 30 s")
    niced = [
        name
        for name in stack.processes
        if (name.startswith(("dns-", "health-")) or name.startswith("reconciler"))
        and name != leader
    ]
    for name in niced:
        process = stack.processes[name].process
        assert process is not None
        lowest_priority(process.pid)
    print(f"nice 19 (as if elsewhere): {', '.join(niced)}; leader {leader}", flush=True)
    return niced


def lowest_priority(pid: int) -> None:
    """Nice 19 for a service process, in its scheduling group too. Each service starts in a
    session of its own, and with autogroup scheduling (on here, and on most desktops) the CPU
    is first shared between sessions and a process's nice only ranks it within its own: the
    nice alone left the "elsewhere" replicas with the same share as the measured ones."""
    os.setpriority(os.PRIO_PROCESS, pid, 19)
    autogroup = Path(f"/proc/{pid}/autogroup")
    if autogroup.exists():
        autogroup.write_text("19")


async def lease_holder(url: str) -> str:
    """The replica holding the reconciler lease now ("" while none does)."""
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(subjects.KV_LEASES)
        entry = await kv.get(subjects.RECONCILER_LEASE_KEY)
        return wire.decode(entry.value or b"", Lease).holder
    except Exception:
        return ""
    finally:
        await nc.close()


def snapshot(stack: E2EStack, elapsed: float, dns_names: float) -> dict[str, Any]:
    """Progress of every hop: watchers listed, events in the stream, services planned, KV
    writes, names in the DNS table."""
    point: dict[str, Any] = {"t": round(elapsed, 1)}
    for cluster in CLUSTERS:
        try:
            point[f"ready-{cluster}"] = ready(stack, f"watcher-{cluster}")
        except httpx.HTTPError:
            point[f"ready-{cluster}"] = False
    try:
        point["events"] = stack.stream_last_seq("KGSLB_EVENTS")
        point["kv"] = stack.stream_last_seq("KV_kgslb_services")
        point["planned"] = stack.poll_metric("reconciler", "kgslb_reconciler_services")
    except Exception:
        pass
    point["dns"] = dns_names
    point["cpu"] = stack.cpu_seconds()
    return point


def cold_writes(stack: E2EStack) -> dict[str, float]:
    """What the cold start wrote to KV kgslb_services (its stream's last sequence: every put
    and delete), at convergence and 2 s later, and the reconciler's own count (both buckets),
    with how long it waited for the clusters' first lists."""
    at_convergence = stack.stream_last_seq("KV_kgslb_services")
    time.sleep(2.0)
    return {
        "kv_services_at_convergence": at_convergence,
        "kv_services_settled": stack.stream_last_seq("KV_kgslb_services"),
        # Every replica's (--sites: one per site; only the leader writes).
        "reconciler_kv_writes": sum(
            stack.poll_metric(name, "kgslb_reconciler_kv_writes_total")
            for name in stack.processes
            if name.startswith("reconciler")
        ),
        "first_sync_wait_s": round(
            stack.poll_metric("reconciler", "kgslb_reconciler_first_sync_wait_seconds"), 2
        ),
    }


def ready(stack: E2EStack, name: str, needle: str = "") -> bool:
    response = stack.http.get(f"http://127.0.0.1:{stack.ops_ports[name]}/readyz", timeout=2)
    return response.status_code == 200 and needle in response.text


def counters(stack: E2EStack) -> dict[str, int]:
    varz = stack.varz()
    return {
        "events_seq": stack.stream_last_seq("KGSLB_EVENTS"),
        "kv_services_seq": stack.stream_last_seq("KV_kgslb_services"),
        "nats_in_msgs": int(varz["in_msgs"]),
        "nats_out_msgs": int(varz["out_msgs"]),
    }


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in before}


def measure_changes(stack: E2EStack, names: list[str], changes: int) -> dict[str, Any]:
    """Move one Ingress's VIP at a time; latency to DNS and the NATS traffic it caused."""
    time.sleep(1.0)
    idle_before = counters(stack)
    time.sleep(2.0)
    idle = delta(idle_before, counters(stack))
    latencies = []
    costs = []
    for change in range(changes):
        index = (change * 7919) % len(names)
        fqdn, name, ip = (
            app_fqdn(index),
            app_name(index),
            f"127.31.{change // 250}.{change % 250 + 1}",
        )
        before = counters(stack)
        changed_at = time.monotonic()
        stack.move_vip("s2", name, ip)
        while ip not in stack.query(fqdn, timeout=0.5):
            if time.monotonic() - changed_at > 10:
                raise SystemExit(f"{fqdn}: new VIP {ip} not answered within 10 s")
        latencies.append((time.monotonic() - changed_at) * 1000)
        time.sleep(1.0)  # let every consequence of the change land before counting
        costs.append(delta(before, counters(stack)))
    return {
        "latency": percentiles(latencies),
        "latencies_ms": [round(x, 1) for x in latencies],
        "per_change": costs,
        "idle_3s": idle,
        "load": load(),
    }


def measure_restarts(stack: E2EStack, names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ["dns", "reconciler", "health", *(f"watcher-{c}" for c in CLUSTERS)]:
        before = counters(stack)
        started = time.monotonic()
        stack.restart(name)
        needle = "leader" if name == "reconciler" else ""
        ready_after = wait_until(functools.partial(ready, stack, name, needle), 300, 0.02)
        waited = time.monotonic() - started
        converged = waited + converge(stack, names, 3, 300)
        time.sleep(1.0)
        out[name] = {
            "ready_s": round(ready_after, 2),
            "dns_complete_s": round(converged, 2),
            "nats": delta(before, counters(stack)),
            "load": load(),
        }
        print(f"  restart {name}: {out[name]}", flush=True)
    return out


def measure_qps(stack: E2EStack, names: list[str], seconds: int, pairs: int) -> dict[str, Any]:
    """`pairs` back-to-back runs of kgslb dns then NSD (already loaded, idle meanwhile); the
    ratio is the median of the pairs' ratios, as in bench/dns_qps.py: on 2 shared cores one
    pair swings by +-20 %."""
    require_tools("dnsperf", "nsd")
    query_file = stack.workdir / "names.txt"
    query_file.write_text("".join(f"{n} A\n" for n in names))
    services = [gslb_service(n, MEMBERS) for n in names]
    runs: list[dict[str, Any]] = []
    with Nsd(stack.workdir / "nsd", seed_zone(), services) as nsd:
        wait_until(lambda: bool(_answers(nsd.port, names[-1])), 60)
        for _ in range(pairs):
            # Table updates during the run flush the response cache: count them.
            updates_before = asyncio.run(stack.metric("dns", "kgslb_dns_table_updates_total"))
            kgslb = run_dnsperf(stack.dns_port, query_file, seconds)
            updates = (
                asyncio.run(stack.metric("dns", "kgslb_dns_table_updates_total")) - updates_before
            )
            cached = asyncio.run(stack.metric("dns", "kgslb_dns_cached_responses"))
            kgslb_run = {
                **kgslb.as_dict(),
                "load": load(),
                "table_updates_during_run": updates,
                "cached_responses_after": cached,
            }
            result = run_dnsperf(nsd.port, query_file, seconds)
            nsd_run = {**result.as_dict(), "load": load(), "rss_mb": round(rss_mb(nsd.pid), 1)}
            runs.append(
                {"kgslb": kgslb_run, "nsd": nsd_run, "ratio": round(kgslb.qps / result.qps, 3)}
            )
    ratios = [run["ratio"] for run in runs]
    median = statistics.median(ratios)
    shown = min(runs, key=lambda run: abs(run["ratio"] - median))
    return {
        "kgslb": shown["kgslb"],
        "nsd": shown["nsd"],
        "ratio": round(median, 3),
        "ratios": ratios,
        "pairs": runs,
    }


def _answers(port: int, name: str) -> list[str]:
    reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.5)
    return [rr.to_text() for rrset in reply.answer for rr in rrset]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fqdns", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=20, help="single Ingress changes at scale")
    parser.add_argument("--seconds", type=int, default=10, help="dnsperf -l")
    parser.add_argument(
        "--pairs", type=int, default=3, help="kgslb/NSD dnsperf pairs; the median ratio counts"
    )
    parser.add_argument("--timeout", type=float, default=600, help="cold convergence limit")
    parser.add_argument(
        "--profile", type=Path, help="py-spy every service during the cold start into this dir"
    )
    parser.add_argument("--profile-seconds", type=int, default=30)
    parser.add_argument(
        "--page-size",
        type=int,
        default=500,
        help="watchers' list page size",
    )
    parser.add_argument("--skip-restarts", action="store_true")
    parser.add_argument(
        "--sites", action="store_true", help="the seed as three sites (kgslb up's layout)"
    )
    parser.add_argument("--skip-qps", action="store_true")
    parser.add_argument(
        "--keep", type=Path, help="run in this directory and keep it (the services' logs)"
    )
    parser.add_argument(
        "--other-sites-elsewhere",
        action="store_true",
        help="with --sites: run the DNS and health replicas of the second and third sites, "
        "and the standby reconcilers, at the lowest CPU priority (nice 19), as if those sites "
        "had machines of their own; what is measured is the first site's answers",
    )
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)

    names = [app_fqdn(i) for i in range(args.fqdns)]
    results: dict[str, Any] = {"revision": git_revision(), "args": vars(args)}
    with (
        (
            contextlib.nullcontext(str(args.keep))
            if args.keep
            else tempfile.TemporaryDirectory(prefix="kgslb-scale-")
        ) as tmp,
        E2EStack(Path(tmp), sites=args.sites) as stack,
    ):
        started = time.monotonic()
        stack.apply_seed_policies(gdp_spec(answers=3))
        stack.create_apps(args.fqdns)
        created = time.monotonic() - started
        total = stack.in_sim(lambda sim: sum(len(_ingress_names(sim, c)) for c in CLUSTERS))
        print(f"created {total} Ingresses in the simulator in {created:.1f} s", flush=True)

        load_before = load()
        cpu_before = stack.cpu_seconds()
        started = time.monotonic()
        stack.start_all(health=True, page_size=args.page_size)
        if args.other_sites_elsewhere:
            results["elsewhere"] = elsewhere(stack)
        profilers = start_profilers(stack, args.profile, args.profile_seconds)
        trace: list[dict[str, Any]] = []
        passes: list[dict[str, Any]] = []
        cold = converge(stack, names, 3, args.timeout, trace, passes)
        print_trace(trace)
        for one in passes:
            print(
                f"sweep at {one['t']} s ({one['seconds']} s): {one['asked']} names asked, "
                f"{one['wrong']} not right ({one['unanswered']} unanswered)"
                + (", the full confirming sweep" if one["confirming"] else "")
            )
        for profiler in profilers:
            profiler.wait()
        if profilers:
            print_profiles(args.profile)
        results["cold"] = {
            "seconds": round(cold, 2),
            "timeline": trace,
            "sweeps": passes,
            "ingresses": total,
            "load": [load_before, load()],
        }
        print(f"cold convergence: {cold:.1f} s (load {load()})", flush=True)
        cpu = {
            name: round(seconds - cpu_before.get(name, 0.0), 2)
            for name, seconds in stack.cpu_seconds().items()
        }
        results["cold"]["cpu_seconds"] = {**cpu, "total": round(sum(cpu.values()), 2)}
        print(f"CPU seconds of the cold start: {results['cold']['cpu_seconds']}", flush=True)
        results["cold"]["kv_writes"] = cold_writes(stack)
        print(f"KV writes of the cold start: {results['cold']['kv_writes']}", flush=True)
        results["rss_after_cold_mb"] = {k: round(v, 1) for k, v in stack.rss_mb().items()}
        print(f"RSS MB: {results['rss_after_cold_mb']}", flush=True)

        results["change"] = measure_changes(stack, names, args.changes)
        print(f"one change: {results['change']['latency']}", flush=True)
        print(f"  NATS per change: {results['change']['per_change'][0]}", flush=True)

        if not args.skip_restarts:
            results["restarts"] = measure_restarts(stack, names)

        if not args.skip_qps:
            started = time.monotonic()
            stack.in_sim(lambda sim: _patch_gdp(sim, gdp_spec(answers=1)))
            converge(stack, names, 1, 600)
            results["gdp_edit_total_s"] = round(time.monotonic() - started, 2)
            print(f"GDP edit at scale (answers 3 -> 1): {results['gdp_edit_total_s']} s")
        results["rss_mb"] = {k: round(v, 1) for k, v in stack.rss_mb().items()}
        if not args.skip_qps:
            results["qps"] = measure_qps(stack, names, args.seconds, args.pairs)
        stack.check_alive()

    report(args, results)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"e2e_scale-{args.fqdns}{'-sites' if args.sites else ''}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out}")


def _ingress_names(sim: KubeSim, cluster: str) -> list[str]:
    return [o["metadata"]["name"] for o in sim.store(cluster).iter_objects(INGRESSES)]


def _patch_gdp(sim: KubeSim, spec: dict[str, Any]) -> None:
    store = sim.store("s1az1")
    rtype = next(t for t in store.registry.all() if t.kind == "GlobalDeploymentPolicy")
    store.patch(rtype, "avi-system", "global-gdp", "application/merge-patch+json", {"spec": spec})


def start_profilers(
    stack: E2EStack, out_dir: Path | None, seconds: int
) -> list[subprocess.Popen[bytes]]:
    """py-spy (sampling, 50 Hz, non-blocking) on every service for the first `seconds`."""
    if out_dir is None:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).parent / "py-spy"
    profilers = []
    pids = {
        name: process.process.pid for name, process in stack.processes.items() if process.process
    }
    pids["bench+simulator"] = os.getpid()  # serves the simulator's lists and polls
    for name, pid in pids.items():
        argv = [str(py_spy), "record", "--pid", str(pid), "--rate", "50"]
        argv += ["--duration", str(seconds), "--nonblocking", "--format", "raw"]
        argv += ["-o", str(out_dir / f"{name}.txt")]
        profilers.append(
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    return profilers


def print_profiles(out_dir: Path, top: int = 8) -> None:
    """The functions each service spent most samples in (own time), from py-spy's raw
    collapsed stacks."""
    for path in sorted(out_dir.glob("*.txt")):
        own: collections.Counter[str] = collections.Counter()
        total = 0
        for line in path.read_text().splitlines():
            stack_text, _, samples = line.rpartition(" ")
            if not samples.isdigit():
                continue
            own[stack_text.split(";")[-1]] += int(samples)
            total += int(samples)
        print(f"\n{path.stem}: {total} samples, top own time")
        for frame, count in own.most_common(top):
            print(f"  {100 * count / max(total, 1):5.1f}%  {frame[:110]}")


def print_trace(trace: list[dict[str, Any]]) -> None:
    """Every 2 s of the cold timeline: which hop is the bottleneck, and the CPU each process
    used since the row before (in CPU-seconds; two cores give at most 4 per 2 s row)."""
    shown = trace[::4] + trace[-1:]
    names = sorted({name for point in shown for name in point.get("cpu", {})})
    print(
        f"{'t s':>6} {'watchers ready':>15} {'events':>8} {'planned':>8} {'kv':>8} {'dns':>8}  "
        + " ".join(f"{_short(name):>8}" for name in names)
    )
    before: dict[str, float] = trace[0].get("cpu", {}) if trace else {}
    for point in shown:
        listed = sum(1 for c in CLUSTERS if point.get(f"ready-{c}"))
        cpu = point.get("cpu", {})
        used = " ".join(f"{cpu.get(n, 0.0) - before.get(n, 0.0):>8.1f}" for n in names)
        before = cpu or before
        print(
            f"{point['t']:>6.1f} {listed:>15} {point.get('events', 0):>8} "
            f"{point.get('planned', 0):>8.0f} {point.get('kv', 0):>8} {point['dns']:>8.0f}  " + used
        )


def _short(process: str) -> str:
    """A process name in eight characters: `watcher-s1az2` -> `w-1a2`, `nats-server` -> `nats`."""
    for long, short in (
        ("watcher-", "w-"), ("reconciler", "rec"), ("health", "hlth"),
        ("nats-server", "nats"), ("bench+simulator", "bench"), ("s1az", "1a"), ("-s2", "-2"),
    ):  # fmt: skip
        process = process.replace(long, short)
    return process[:8]


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    n = args.fqdns
    rows: list[tuple[str, str, str]] = []
    cold = results["cold"]["seconds"]
    rows.append((f"cold convergence, {n} FQDNs x 3", f"{cold:.1f} s", cold_target(n)))
    writes = results["cold"]["kv_writes"]
    rows.append(
        ("KV kgslb_services writes, cold start", f"{writes['kv_services_settled']}",
         f"{n} (each name once); first lists awaited {writes['first_sync_wait_s']} s")
    )  # fmt: skip
    for name, mb in results["rss_mb"].items():
        rows.append((f"RSS {name}", f"{mb:.0f} MB", "<= 300 MB" if n <= 10_000 else "-"))
    change = results["change"]
    rows.append(
        ("one Ingress change -> DNS p50/p99",
         f"{change['latency']['p50_ms']:.0f} / {change['latency']['p99_ms']:.0f} ms", "<= 250 ms")
    )  # fmt: skip
    first = change["per_change"]
    kv = sorted({c["kv_services_seq"] for c in first})
    events = sorted({c["events_seq"] for c in first})
    rows.append(("KV kgslb_services writes per change", ",".join(map(str, kv)), "1"))
    rows.append(("KGSLB_EVENTS messages per change", ",".join(map(str, events)), "-"))
    ins = statistics_median([c["nats_in_msgs"] for c in first])
    rows.append(("nats-server in_msgs per change (median)", f"{ins:.0f}",
                 f"idle 3 s: {change['idle_3s']['nats_in_msgs']}"))  # fmt: skip
    for name, restart in results.get("restarts", {}).items():
        rows.append(
            (f"restart {name}: ready / DNS complete",
             f"{restart['ready_s']:.1f} / {restart['dns_complete_s']:.1f} s",
             f"KV writes {restart['nats']['kv_services_seq']}")
        )  # fmt: skip
    if "qps" in results:
        rows.append(
            ("GDP edit (answers 3 -> 1), all names", f"{results['gdp_edit_total_s']:.1f} s", "-")
        )
        qps = results["qps"]
        rows.append(
            ("DNS qps kgslb dns", f"{qps['kgslb']['qps']:.0f}",
             f"table updates during run: {qps['kgslb']['table_updates_during_run']:.0f}")
        )  # fmt: skip
        rows.append(("DNS qps NSD", f"{qps['nsd']['qps']:.0f}", ""))
        ratios = ", ".join(f"{r:.2f}" for r in qps["ratios"])
        rows.append(("kgslb / NSD (median of pairs)", f"{qps['ratio']:.2f}", f">= 0.80 ({ratios})"))
    print(f"\n{'measurement':<44} {'value':>18}  target")
    for label, value, target in rows:
        print(f"{label:<44} {value:>18}  {target}")


def cold_target(fqdns: int) -> str:
    """Issue 17: 10,000 FQDNs cold in 10 s, 100,000 in 60 s."""
    if fqdns <= 10_000:
        return "<= 10 s"
    return "<= 60 s" if fqdns <= 100_000 else "-"


def statistics_median(values: list[int]) -> float:
    return float(statistics.median(values)) if values else 0.0


if __name__ == "__main__":
    main()
