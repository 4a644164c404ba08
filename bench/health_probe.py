"""Health probing at scale, against a fast local HTTP server on many loopback addresses:

1. throughput: HTTP probes/s one replica completes on one core (the service's own scheduler,
   prober and state machine), with every verdict checked against what the server answered;
2. period: 10,000 members at a 10 s interval on one replica, each member's period between
   probes as the server saw it;
3. replicas: two real `kgslb health` processes on a real nats-server share the 10,000 members;
   then one is killed with SIGKILL and the other takes over.

    .venv/bin/python bench/health_probe.py            # about 3 minutes
    .venv/bin/python bench/health_probe.py --quick    # shorter runs, smaller numbers

Prints a table and writes bench/results/health_probe.json. Needs two cores: the server runs on
one, the replica under test on the other.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import uvloop

from kgslb.embedded import ManagedProcess, NatsServer, free_port, service_process
from services.health.monitor import (
    MemberState,
    ProbeResult,
    ProbeTarget,
    advance,
    targets_of,
)
from services.health.probes import Prober
from services.health.scheduler import ProbeScheduler
from shared import bus, subjects, wire
from shared.models import (
    GslbService,
    HealthMonitorSpec,
    HealthState,
    Member,
    MemberHealth,
    PriorityGroup,
    utcnow,
)
from shared.settings import NatsSettings

RESULTS = Path(__file__).resolve().parent / "results" / "health_probe.json"
SERVER_CPU, CLIENT_CPU = 1, 0
OK_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
ERROR_REPLY = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
)
BAD_PREFIX = "bad-"
"""Services whose name starts with this get 500s: their members must be judged failing."""


# The member server (its own process, its own core) -------------------------------------------


class Book:
    """What the server saw: requests, and when each member (local IP, Host) was probed."""

    def __init__(self) -> None:
        self.requests = 0
        self.recording = False
        self.arrivals: dict[tuple[str, bytes], list[float]] = defaultdict(list)


class MemberProtocol(asyncio.Protocol):
    def __init__(self, book: Book) -> None:
        self.book = book
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.local_ip = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.local_ip = transport.get_extra_info("sockname")[0]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.transport is None:
            return
        head = self.buffer[:end]
        host = b""
        for line in head.split(b"\r\n")[1:]:
            if line[:5].lower() == b"host:":
                host = line[5:].strip()
                break
        self.book.requests += 1
        if self.book.recording:
            self.book.arrivals[(self.local_ip, host)].append(time.monotonic())
        reply = ERROR_REPLY if host.startswith(BAD_PREFIX.encode()) else OK_REPLY
        self.transport.write(reply if head.startswith(b"HEAD") else reply + b"ok")
        self.transport.close()


def period_summary(book: Book, interval_seconds: float) -> dict[str, Any]:
    deviations = []
    worst_per_member = []
    for times in book.arrivals.values():
        gaps = [
            abs((b - a) - interval_seconds) / interval_seconds for a, b in itertools.pairwise(times)
        ]
        deviations += gaps
        if gaps:
            worst_per_member.append(max(gaps))
    deviations.sort()
    if not deviations:
        return {"members": 0, "periods": 0}

    def pct(q: float) -> float:
        return deviations[min(len(deviations) - 1, int(q * len(deviations)))] * 100

    return {
        "members": len(worst_per_member),
        "periods": len(deviations),
        "deviation_p50_pct": pct(0.50),
        "deviation_p99_pct": pct(0.99),
        "deviation_max_pct": deviations[-1] * 100,
        "members_within_10pct": sum(w <= 0.10 for w in worst_per_member),
    }


def serve_members(ips: list[str], port: int, commands: Connection) -> None:
    os.sched_setaffinity(0, {SERVER_CPU})

    async def main() -> None:
        loop = asyncio.get_running_loop()
        book = Book()
        for ip in ips:
            await loop.create_server(
                lambda: MemberProtocol(book), ip, port, backlog=4096, reuse_address=True
            )
        commands.send("ready")
        done = asyncio.Event()

        def on_command() -> None:
            command, argument = commands.recv()
            if command == "record":
                book.arrivals.clear()
                book.recording = True
                commands.send(None)
            elif command == "periods":
                book.recording = False
                commands.send(period_summary(book, argument))
            elif command == "requests":
                commands.send(book.requests)
            elif command == "cpu":
                commands.send(time.process_time())
            else:
                done.set()

        loop.add_reader(commands.fileno(), on_command)
        await done.wait()

    uvloop.run(main())


class MemberServer:
    def __init__(self, ips: list[str], port: int) -> None:
        self.ips, self.port = ips, port
        self._commands, theirs = multiprocessing.Pipe()
        self._process = multiprocessing.Process(
            target=serve_members, args=(ips, port, theirs), daemon=True
        )

    def __enter__(self) -> MemberServer:
        self._process.start()
        assert self._commands.recv() == "ready"
        return self

    def __exit__(self, *_: object) -> None:
        self._commands.send(("quit", None))
        self._process.join(5)

    def ask(self, command: str, argument: object = None) -> Any:
        self._commands.send((command, argument))
        return self._commands.recv()


# Members -------------------------------------------------------------------------------------


def member_ips(count: int) -> list[str]:
    return [f"127.30.{n // 250}.{n % 250 + 1}" for n in range(count)]


def bench_services(
    members: int, ips: list[str], monitor: HealthMonitorSpec, bad_share: float = 0.0
) -> list[GslbService]:
    """`members` members as services of len(ips) members each, one per address."""
    count = members // len(ips)
    bad = int(count * bad_share)
    return [
        GslbService(
            fqdn=f"{BAD_PREFIX if n < bad else ''}svc{n}.bench.kgslb",
            ttl_seconds=30,
            groups=[
                PriorityGroup(
                    priority=10,
                    members=[
                        Member(ip=ip, cluster=f"c{i % 3}", weight=1) for i, ip in enumerate(ips)
                    ],
                )
            ],
            health_monitor=monitor,
        )
        for n in range(count)
    ]


def all_targets(services: list[GslbService]) -> list[ProbeTarget]:
    return [target for service in services for target in targets_of(service).values()]


# 1 and 2: one replica in this process, on one core -------------------------------------------


async def probe_for(
    targets: list[ProbeTarget], warmup_seconds: float, seconds: float, max_in_flight: int
) -> dict[str, Any]:
    """Run the scheduler over `targets`; count what completes in the measured window."""
    states = {t.key: MemberState(HealthState.UNKNOWN, utcnow()) for t in targets}
    counts: Counter[str] = Counter()
    wrong: list[tuple[str, ProbeResult]] = []
    window = {"open": False}

    def on_result(target: ProbeTarget, result: ProbeResult) -> None:
        states[target.key] = advance(states[target.key], result, target.monitor, utcnow())
        if result.ok == target.fqdn.startswith(BAD_PREFIX):
            wrong.append((target.key, result))
        if window["open"]:
            counts["ok" if result.ok else "failed"] += 1

    scheduler = ProbeScheduler(Prober().probe, on_result, max_in_flight)
    runner = asyncio.create_task(scheduler.run())
    for target in targets:
        scheduler.schedule(target)
    await asyncio.sleep(warmup_seconds)
    window["open"] = True
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    window["open"] = False
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    total = counts["ok"] + counts["failed"]
    return {
        "members": len(targets),
        "probes": total,
        "probes_per_second": total / wall,
        "cpu_core_share": cpu / wall,
        "cpu_us_per_probe": cpu / max(total, 1) * 1e6,
        "probes_per_second_per_full_core": total / max(cpu, 1e-9),
        "failed_as_expected": counts["failed"],
        "wrong_verdicts": len(wrong),
        "wrong_examples": [f"{key}: {result}" for key, result in wrong[:3]],
    }


def run_one_replica(server: MemberServer, coroutine_factory: Callable[[], Any]) -> dict[str, Any]:
    """Run on the client core; add how busy the server's core was meanwhile."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CLIENT_CPU})
    server_cpu, wall = server.ask("cpu"), time.perf_counter()
    try:
        result: dict[str, Any] = uvloop.run(coroutine_factory())
    finally:
        os.sched_setaffinity(0, before)
    result["server_cpu_core_share"] = (server.ask("cpu") - server_cpu) / (
        time.perf_counter() - wall
    )
    return result


# 3: two replicas as processes on a nats-server -----------------------------------------------


async def metric(client: httpx.AsyncClient, ops_port: int, name: str, **labels: str) -> float:
    text = (await client.get(f"http://127.0.0.1:{ops_port}/metrics")).text
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        series, _, label_text = sample.partition("{")
        if series == name and all(w in label_text for w in wanted):
            total += float(value)
    return total


async def wait_for(check: Callable[[], Any], timeout_seconds: float, step: float = 0.2) -> float:
    """Seconds until `check()` is truthy."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_seconds:
        if await check():
            return time.perf_counter() - started
        await asyncio.sleep(step)
    raise TimeoutError(f"condition not met in {timeout_seconds} s")


async def replicas_share(
    services: list[GslbService], interval_seconds: float, window_seconds: float
) -> dict[str, Any]:
    members = sum(len(targets_of(s)) for s in services)
    with tempfile.TemporaryDirectory() as state:
        nats = NatsServer(Path(state) / "jetstream")
        nats.start()
        processes: dict[str, ManagedProcess] = {}
        ops: dict[str, int] = {}

        def start(replica: str) -> None:
            ops[replica] = free_port()
            env = {
                "KGSLB_NATS_URL": nats.url,
                "KGSLB_REPLICA": replica,
                "KGSLB_OPS_PORT": str(ops[replica]),
                "KGSLB_LOG_LEVEL": "WARNING",
            }
            processes[replica] = service_process(replica, ["health"], Path(state) / "logs", env)
            processes[replica].start()

        nc = await bus.connect(NatsSettings(nats_url=nats.url), "bench")
        try:
            buckets = await bus.bootstrap(nc.jetstream())
            for service in services:
                await buckets[subjects.KV_SERVICES].put(
                    subjects.fqdn_key(service.fqdn), wire.encode(service)
                )
            async with httpx.AsyncClient(timeout=5) as client:

                async def owned(replica: str) -> float:
                    try:
                        return await metric(client, ops[replica], "kgslb_health_members")
                    except httpx.HTTPError:
                        return 0.0

                start("health-a")
                await wait_for(lambda: _equals(owned("health-a"), members), 60)
                start("health-b")
                join_seconds = await wait_for(lambda: _positive(owned("health-b")), 60)
                await wait_for(
                    lambda: _sum_equals([owned("health-a"), owned("health-b")], members), 60
                )
                moved = await owned("health-b")

                async def all_up() -> bool:
                    up = [
                        await metric(client, ops[r], "kgslb_health_members", state="up")
                        for r in ("health-a", "health-b")
                    ]
                    return sum(up) == members

                await wait_for(all_up, interval_seconds * 8 + 30, step=1)
                last_writes: list[float] = []

                async def writes_settled() -> bool:
                    total = 0.0
                    for replica in ops:
                        total += await metric(client, ops[replica], "kgslb_health_kv_writes_total")
                    last_writes.append(total)
                    return len(last_writes) > 2 and last_writes[-1] == last_writes[-3]

                await wait_for(writes_settled, 60, step=1)
                probes_before = {
                    r: await metric(client, ops[r], "kgslb_health_probes_total") for r in ops
                }
                writes_before = {
                    r: await metric(client, ops[r], "kgslb_health_kv_writes_total") for r in ops
                }
                await asyncio.sleep(window_seconds)
                share = {}
                for replica in ("health-a", "health-b"):
                    probes = (
                        await metric(client, ops[replica], "kgslb_health_probes_total")
                        - probes_before[replica]
                    )
                    share[replica] = {
                        "members": await owned(replica),
                        "probes_per_second": probes / window_seconds,
                        "kv_writes_in_window": await metric(
                            client, ops[replica], "kgslb_health_kv_writes_total"
                        )
                        - writes_before[replica],
                    }

                flaps: Counter[str] = Counter()
                watcher = await buckets[subjects.KV_HEALTH].watchall()
                async for entry in watcher:
                    if entry is None:
                        break

                async def count_flaps() -> None:
                    async for entry in watcher:
                        if entry is not None and entry.value:
                            state = wire.decode(entry.value, MemberHealth).state
                            flaps["claims" if state == HealthState.UP else "flaps"] += 1

                counting = asyncio.create_task(count_flaps())
                processes["health-a"].kill9()
                takeover_seconds = await wait_for(
                    lambda: _equals(owned("health-b"), members), 120, step=0.1
                )
                await asyncio.sleep(interval_seconds * 2)
                counting.cancel()
                await watcher.stop()  # type: ignore[no-untyped-call]
        finally:
            await nc.drain()
            for process in processes.values():
                process.stop()
            nats.stop()
    return {
        "members": members,
        "interval_seconds": interval_seconds,
        "share": share,
        "moved_on_join": moved,
        "moved_on_join_pct": moved / members * 100,
        "join_seconds": join_seconds,
        "takeover_after_kill9_seconds": takeover_seconds,
        "claims_after_kill9": flaps["claims"],
        "state_changes_after_kill9": flaps["flaps"],
    }


async def _equals(value: Any, expected: float) -> bool:
    return bool(await value == expected)


async def _positive(value: Any) -> bool:
    return bool(await value > 0)


async def _sum_equals(values: list[Any], expected: float) -> bool:
    return bool(sum([await v for v in values]) == expected)


# Main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs, fewer members")
    parser.add_argument("--ips", type=int, default=100, help="loopback member addresses")
    parser.add_argument("--skip-replicas", action="store_true")
    args = parser.parse_args()
    quick = args.quick
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("health_probe bench: needs two CPUs (server and replica on separate cores)")
    ips, port = member_ips(args.ips), free_port()
    period_members = 2_000 if quick else 10_000
    period_seconds = 15.0 if quick else 35.0
    results: dict[str, Any] = {"python": sys.version.split()[0], "loop": "uvloop"}
    with MemberServer(ips, port) as server:
        saturating = HealthMonitorSpec(port=port, interval_seconds=0.5, timeout_seconds=4)
        throughput_targets = all_targets(bench_services(4_000, ips, saturating, bad_share=0.1))
        results["throughput_saturated"] = run_one_replica(
            server, lambda: probe_for(throughput_targets, 1.0, 5.0 if quick else 10.0, 1000)
        )
        steady = HealthMonitorSpec(port=port, interval_seconds=1.0, timeout_seconds=4)
        steady_targets = all_targets(bench_services(2_000, ips, steady, bad_share=0.1))
        results["throughput_2000_per_second"] = run_one_replica(
            server, lambda: probe_for(steady_targets, 1.0, 5.0 if quick else 10.0, 1000)
        )

        amko = HealthMonitorSpec(port=port)  # 10 s interval, 4 s timeout
        period_targets = all_targets(bench_services(period_members, ips, amko))
        server.ask("record")
        results["period"] = run_one_replica(
            server, lambda: probe_for(period_targets, 0.0, period_seconds, 1000)
        )
        results["period"].update(server.ask("periods", amko.interval_seconds))
        results["period"]["interval_seconds"] = amko.interval_seconds
        results["period"]["run_seconds"] = period_seconds

        if not args.skip_replicas:
            results["replicas"] = asyncio.run(
                replicas_share(
                    bench_services(period_members, ips, amko),
                    amko.interval_seconds,
                    10.0 if quick else 20.0,
                )
            )
    report(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {RESULTS}")


def report(results: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []
    for name in ("throughput_saturated", "throughput_2000_per_second"):
        r = results[name]
        rows.append(
            (
                f"{name} ({r['members']} members)",
                f"{r['probes_per_second']:,.0f} probes/s at {r['cpu_core_share'] * 100:.0f}% of a "
                f"core ({r['cpu_us_per_probe']:.0f} us/probe = "
                f"{r['probes_per_second_per_full_core']:,.0f}/s per full core; server core "
                f"{r['server_cpu_core_share'] * 100:.0f}%), {r['failed_as_expected']} failures "
                f"(500s) as expected, {r['wrong_verdicts']} wrong verdicts",
            )
        )
    p = results["period"]
    rows.append(
        (
            f"period ({p['members']} members @ {p['interval_seconds']:g} s, {p['run_seconds']:g} s)",
            f"{p['periods']} periods, deviation p50 {p['deviation_p50_pct']:.2f}% "
            f"p99 {p['deviation_p99_pct']:.2f}% max {p['deviation_max_pct']:.2f}%, "
            f"{p['members_within_10pct']}/{p['members']} members within 10%, "
            f"{p['cpu_core_share'] * 100:.0f}% of a core",
        )
    )
    if "replicas" in results:
        r = results["replicas"]
        for replica, share in r["share"].items():
            rows.append(
                (
                    f"{replica} ({r['members']} members @ {r['interval_seconds']:g} s)",
                    f"{share['members']:.0f} members ({share['members'] / r['members'] * 100:.1f}%),"
                    f" {share['probes_per_second']:.0f} probes/s, "
                    f"{share['kv_writes_in_window']:.0f} KV writes in the steady window",
                )
            )
        rows.append(
            (
                "second replica joins",
                f"{r['moved_on_join']:.0f} members moved ({r['moved_on_join_pct']:.1f}%)",
            )
        )
        rows.append(
            (
                "kill -9 of health-a",
                f"survivor owns all after {r['takeover_after_kill9_seconds']:.1f} s, "
                f"{r['claims_after_kill9']} claims (state kept), "
                f"{r['state_changes_after_kill9']} state changes",
            )
        )
    width = max(len(name) for name, _ in rows)
    print(f"\n{'measurement':<{width}}  result")
    print(f"{'-' * width}  {'-' * 40}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
