"""Minimal writes, counted on a real stack: one Ingress change among 10,000 GSLB services
writes one KV key, and a restarted reconciler writes none.

    .venv/bin/python bench/reconciler_writes.py [--services 10000] [--changes 20]

Starts a JetStream nats-server and `kgslb reconciler` on loopback, publishes the seed's
policies and `--services` apps (an Ingress in each of the three seed clusters) on the watcher
subjects, and waits for the bucket to hold them all. Then, per change, moves one Ingress to a
new VIP and counts KV writes twice: the reconciler's `kgslb_reconciler_kv_writes_total` and the
`KV_kgslb_services` stream's last sequence (every put or delete is one message there). Last,
kills the reconciler (-9), starts a new one and counts its writes once it leads (the stream
count includes the new leader's fence: 64 delete markers, docs/architecture.md, "Leader
fencing").

Then the cost of the fence on the write path itself (`--writes-only`: only that):
`--write-keys` puts into a scratch bucket (`--write-replicas 3`: on three routed
nats-servers), WRITES_IN_FLIGHT at once, alternately unfenced (KvMirror.put as it was before
fencing: a plain `kv.put`) and fenced (`KvMirror.put`: the conditional publish with its three
headers), `--write-rounds` rounds each in the order AB BA AB ...: writes/s and the CPU per
write of this client and of the nats-server(s). Prints a table; writes JSON to
bench/results/reconciler_writes.json and fenced_writes_r<replicas>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from reconciler_stack import RESULTS, Stack, app, kv_last_seq, publish_world, wait_for

from kgslb.embedded import NatsServer, free_port
from services.reconciler.lease import Leadership
from services.reconciler.writes import KV_WRITES, KvMirror, LostLeadership, in_flight
from shared import bus, subjects, wire
from shared.models import GslbService, utcnow
from shared.settings import NatsSettings

LEASE_TTL_SECONDS = 1.0


async def run(services: int, changes: int, workdir: Path) -> dict[str, object]:
    with Stack(workdir) as stack:
        stack.start_reconciler("reconciler-1", LEASE_TTL_SECONDS)
        nc = await stack.connect()
        kv = await nc.jetstream().key_value(subjects.KV_SERVICES)
        started = time.monotonic()
        await publish_world(nc, services)
        published = time.monotonic() - started

        async def all_written() -> bool:
            # Every service (and the seed's hello) has been put once.
            writes = await stack.metric("reconciler-1", "kgslb_reconciler_kv_writes_total")
            return writes >= services + 1

        await wait_for(all_written, 300, 0.5)

        async def settled() -> bool:
            first = await kv_last_seq(nc)
            await asyncio.sleep(0.5)
            return await kv_last_seq(nc) == first

        await wait_for(settled, 60)
        converged = time.monotonic() - started
        initial_writes = await stack.metric("reconciler-1", "kgslb_reconciler_kv_writes_total")

        per_change_metric, per_change_stream, latencies = [], [], []
        for change in range(changes):
            index = (change * 7919) % services
            vip = f"127.99.{change // 250}.{change % 250 + 1}"
            writes_before = await stack.metric("reconciler-1", "kgslb_reconciler_kv_writes_total")
            seq_before = await kv_last_seq(nc)
            subject, message = app("s2", index, vip)
            sent = time.monotonic()
            await nc.jetstream().publish(subject, wire.encode(message))
            key = subjects.fqdn_key(f"app{index}.avi.iberia.local")

            async def moved(key: str = key, vip: str = vip) -> bool:
                service = wire.decode((await kv.get(key)).value or b"", GslbService)
                return vip in {m.ip for m in service.all_members()}

            await wait_for(moved, 30, 0.005)
            latencies.append((time.monotonic() - sent) * 1000)
            await wait_for(settled, 30)
            per_change_metric.append(
                await stack.metric("reconciler-1", "kgslb_reconciler_kv_writes_total")
                - writes_before
            )
            per_change_stream.append(await kv_last_seq(nc) - seq_before)

        seq_before_restart = await kv_last_seq(nc)
        stack.processes["reconciler-1"].kill9()
        restarted = time.monotonic()
        stack.start_reconciler("reconciler-2", LEASE_TTL_SECONDS)
        await wait_for(lambda: stack.leading("reconciler-2"), 120, 0.1)
        takeover_seconds = time.monotonic() - restarted
        await asyncio.sleep(1.0)
        restart_writes = await stack.metric("reconciler-2", "kgslb_reconciler_kv_writes_total")
        restart_stream = await kv_last_seq(nc) - seq_before_restart
        await nc.drain()
    return {
        "services": services,
        "objects": services * 3 + 3,
        "publish_seconds": published,
        "converge_seconds": converged,
        "initial_kv_writes": initial_writes,
        "changes": changes,
        "kv_writes_per_change_metric": per_change_metric,
        "kv_writes_per_change_stream": per_change_stream,
        "change_to_kv_ms_median": statistics.median(latencies),
        "change_to_kv_ms_max": max(latencies),
        "restart_to_leading_seconds": takeover_seconds,
        "restart_kv_writes_metric": restart_writes,
        "restart_kv_writes_stream": restart_stream,
    }


SCRATCH_BUCKET = "bench_fenced_writes"
VALUE_BYTES = 400
"""About one encoded GSLB service of the seed (three members, one group)."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def write_throughput(
    nc: Client, server_pids: list[int], keys: int, rounds: int, replicas: int
) -> dict[str, dict[str, list[float]]]:
    """`keys` puts, unfenced and fenced, `rounds` times each in the order AB BA AB ... so a
    busy machine slows both alike: writes/s (wall clock), and CPU microseconds per write of
    this client and of nats-server, which a shared machine disturbs far less."""
    js = nc.jetstream()
    await js.create_key_value(
        KeyValueConfig(
            bucket=SCRATCH_BUCKET, history=1, storage=StorageType.FILE, replicas=replicas
        )
    )
    kv = await js.key_value(SCRATCH_BUCKET)
    leadership = Leadership("bench", ttl_seconds=3600)
    leadership.written(time.monotonic(), 1, leadership.value(utcnow()))
    mirror = KvMirror(js, SCRATCH_BUCKET, leadership)
    await mirror.fence()
    names = [f"app{index}.avi.iberia.local" for index in range(keys)]

    async def put(key: str, value: bytes) -> bool:
        # KvMirror.put before fencing: the same checks and counting, then a plain `kv.put`.
        if unfenced_values.get(key) == value:
            return False
        if not leadership.is_leader(time.monotonic()):
            raise LostLeadership(SCRATCH_BUCKET)
        await kv.put(key, value)
        unfenced_values[key] = value
        KV_WRITES.labels(SCRATCH_BUCKET, "put").inc()
        return True

    unfenced_values: dict[str, bytes] = {}

    figures: dict[str, dict[str, list[float]]] = {
        kind: {"writes_per_second": [], "client_cpu_us": [], "server_cpu_us": []}
        for kind in ("unfenced", "fenced")
    }
    for round_ in range(rounds):
        order = ("unfenced", "fenced") if round_ % 2 == 0 else ("fenced", "unfenced")
        for kind in order:
            value = f"{kind}-{round_}-".encode().ljust(VALUE_BYTES, b"x")
            mirror.values.clear()
            unfenced_values.clear()
            server_cpu = sum(cpu_seconds(pid) for pid in server_pids)
            client_cpu = time.process_time()
            started = time.perf_counter()
            if kind == "unfenced":
                written = await in_flight(put(name, value) for name in names)
            else:
                written = await in_flight(mirror.put(name, value) for name in names)
            elapsed = time.perf_counter() - started
            assert written == keys
            figures[kind]["writes_per_second"].append(keys / elapsed)
            figures[kind]["client_cpu_us"].append((time.process_time() - client_cpu) / keys * 1e6)
            figures[kind]["server_cpu_us"].append(
                (sum(cpu_seconds(pid) for pid in server_pids) - server_cpu) / keys * 1e6
            )
    await js.delete_key_value(SCRATCH_BUCKET)
    return figures


def routed_servers(workdir: Path, count: int) -> list[NatsServer]:
    """`count` nats-servers routed into one JetStream cluster on loopback (1: a lone one)."""
    if count == 1:
        return [NatsServer(workdir / "jetstream")]
    routes = [free_port() for _ in range(count)]
    servers = []
    for index in range(count):
        (workdir / f"n{index}").mkdir(parents=True)
        server = NatsServer(workdir / f"n{index}" / "jetstream", name=f"nats-n{index}")
        server.argv += [
            "-n", f"n{index}", "--cluster_name", "kgslb-bench",
            "--cluster", f"nats://127.0.0.1:{routes[index]}",
            "--routes", ",".join(f"nats://127.0.0.1:{port}" for port in routes),
        ]  # fmt: skip
        servers.append(server)
    return servers


async def throughput_run(
    keys: int, rounds: int, replicas: int, workdir: Path
) -> dict[str, dict[str, list[float]]]:
    servers = routed_servers(workdir, replicas)
    try:
        for server in servers:
            server.start()
        urls = ",".join(server.url for server in servers)
        nc = await bus.connect(NatsSettings(nats_url=urls), "kgslb-bench")
        await wait_for(lambda: nc.jetstream().account_info(), 30, 0.5)  # a meta leader
        pids = [server.process.pid for server in servers if server.process is not None]
        try:
            return await write_throughput(nc, pids, keys, rounds, replicas)
        finally:
            await nc.drain()
    finally:
        for server in servers:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--write-keys", type=int, default=10_000)
    parser.add_argument("--write-rounds", type=int, default=10)
    parser.add_argument(
        "--writes-only", action="store_true", help="only the fence's cost on the write path"
    )
    parser.add_argument(
        "--write-replicas", type=int, default=1, help="3: the scratch bucket on a 3-node cluster"
    )
    args = parser.parse_args()
    figures: dict[str, object] = {}
    if not args.writes_only:
        with tempfile.TemporaryDirectory(prefix="kgslb-bench-") as tmp:
            figures = asyncio.run(run(args.services, args.changes, Path(tmp)))
    with tempfile.TemporaryDirectory(prefix="kgslb-bench-") as tmp:
        throughput = asyncio.run(
            throughput_run(args.write_keys, args.write_rounds, args.write_replicas, Path(tmp))
        )
    rows = [] if args.writes_only else stack_rows(figures)
    for kind in ("unfenced", "fenced"):
        rates = throughput[kind]["writes_per_second"]
        client = statistics.median(throughput[kind]["client_cpu_us"])
        server = statistics.median(throughput[kind]["server_cpu_us"])
        rows.append(
            (
                f"KV puts, {kind} ({args.write_keys} keys, R{args.write_replicas})",
                f"{statistics.median(rates):,.0f}/s median (min {min(rates):,.0f} max "
                f"{max(rates):,.0f}); CPU/write: client {client:.0f} us, servers {server:.0f} us",
            )
        )
    print("reconciler KV writes on a real stack")
    for name, value in rows:
        print(f"  {name:<40} {value}")
    RESULTS.mkdir(exist_ok=True)
    outputs = {f"fenced_writes_r{args.write_replicas}.json": throughput}
    if not args.writes_only:
        outputs["reconciler_writes.json"] = figures
    for name, content in outputs.items():
        out = RESULTS / name
        out.write_text(json.dumps(content, indent=2))
        print(f"wrote {out}")


def stack_rows(figures: dict[str, object]) -> list[tuple[str, str]]:
    metric_writes = figures["kv_writes_per_change_metric"]
    stream_writes = figures["kv_writes_per_change_stream"]
    assert isinstance(metric_writes, list) and isinstance(stream_writes, list)
    return [
        ("GSLB services (+ the seed's hello)", f"{figures['services']}"),
        (
            "first convergence",
            f"{figures['converge_seconds']:.1f} s (publishing took {figures['publish_seconds']:.1f} s)",
        ),
        ("KV writes, first convergence", f"{figures['initial_kv_writes']:.0f}"),
        (
            "KV writes per Ingress change (metric)",
            f"min {min(metric_writes):.0f} max {max(metric_writes):.0f} over {len(metric_writes)}",
        ),
        (
            "KV writes per Ingress change (stream)",
            f"min {min(stream_writes)} max {max(stream_writes)} over {len(stream_writes)}",
        ),
        (
            "Ingress change -> KV, median / max",
            f"{figures['change_to_kv_ms_median']:.1f} / {figures['change_to_kv_ms_max']:.1f} ms",
        ),
        (
            "kill -9 + new reconciler leads after",
            f"{figures['restart_to_leading_seconds']:.1f} s (lease TTL {LEASE_TTL_SECONDS} s)",
        ),
        (
            "KV writes by the new reconciler",
            f"{figures['restart_kv_writes_metric']:.0f} (stream: {figures['restart_kv_writes_stream']}"
            ", fence markers included)",
        ),
    ]


if __name__ == "__main__":
    main()
