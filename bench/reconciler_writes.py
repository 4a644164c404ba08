"""Minimal writes, counted on a real stack: one Ingress change among 10,000 GSLB services
writes one KV key, and a restarted reconciler writes none.

    .venv/bin/python bench/reconciler_writes.py [--services 10000] [--changes 20]

Starts a JetStream nats-server and `kgslb reconciler` on loopback, publishes the seed's
policies and `--services` apps (an Ingress in each of the three seed clusters) on the watcher
subjects, and waits for the bucket to hold them all. Then, per change, moves one Ingress to a
new VIP and counts KV writes twice: the reconciler's `kgslb_reconciler_kv_writes_total` and the
`KV_kgslb_services` stream's last sequence (every put or delete is one message there). Last,
kills the reconciler (-9), starts a new one and counts its writes once it leads. Prints a
table; writes JSON to bench/results/reconciler_writes.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from reconciler_stack import RESULTS, Stack, app, kv_last_seq, publish_world, wait_for

from shared import subjects, wire
from shared.models import GslbService

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kgslb-bench-") as tmp:
        figures = asyncio.run(run(args.services, args.changes, Path(tmp)))
    metric_writes = figures["kv_writes_per_change_metric"]
    stream_writes = figures["kv_writes_per_change_stream"]
    assert isinstance(metric_writes, list) and isinstance(stream_writes, list)
    rows = [
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
            f"{figures['restart_kv_writes_metric']:.0f} (stream: {figures['restart_kv_writes_stream']})",
        ),
    ]
    print("reconciler KV writes on a real stack")
    for name, value in rows:
        print(f"  {name:<40} {value}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "reconciler_writes.json"
    out.write_text(json.dumps(figures, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
