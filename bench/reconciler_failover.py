"""Reconciler failover: how long after `kill -9` of the leader the standby leads, against the
2 x lease TTL bound, with the DNS answers and the KV bucket checked for changes meanwhile.

    .venv/bin/python bench/reconciler_failover.py [--trials 5] [--lease-ttl 5] [--services 1000]

Starts a JetStream nats-server, two `kgslb reconciler` replicas and `kgslb dns` on loopback,
publishes the seed (6:4:2 for hello.avi.iberia.local) and `--services` more apps. Each trial
kills the leader with SIGKILL, polls the standby's /readyz every 50 ms until it says leader,
queries the DNS throughout, then starts a fresh standby for the next trial. Prints a table;
writes JSON to bench/results/reconciler_failover.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import dns.asyncquery
import dns.message
from reconciler_stack import RESULTS, Stack, kv_last_seq, publish_world, wait_for

HELLO = "hello.avi.iberia.local"
SEED_WINDOW = Counter({"127.10.25.46": 6, "127.10.26.40": 4, "127.10.23.40": 2})


async def window(port: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(sum(SEED_WINDOW.values())):
        reply = await dns.asyncquery.udp(
            dns.message.make_query(HELLO, "A"), "127.0.0.1", port=port, timeout=1
        )
        seen.update(rr.address for rrset in reply.answer for rr in rrset)
    return seen


async def run(trials: int, ttl: float, services: int, workdir: Path) -> dict[str, object]:
    results = []
    with Stack(workdir) as stack:
        names = ["reconciler-1", "reconciler-2"]
        for name in names:
            stack.start_reconciler(name, ttl)
        port = stack.start_dns()
        nc = await stack.connect()
        await publish_world(nc, services)

        async def seed_answered() -> bool:
            return await window(port) == SEED_WINDOW

        await wait_for(seed_answered, 120, 0.5)
        spawned = len(names)
        for trial in range(trials):

            async def one_leader(names: list[str] = names) -> bool:
                return sum([await stack.leading(n) for n in names]) == 1

            await wait_for(one_leader, 4 * ttl + 60)
            leaders = [n for n in names if await stack.leading(n)]
            leader = leaders[0]
            standby = next(n for n in names if n != leader)
            seq_before = await kv_last_seq(nc)
            stack.processes[leader].kill9()
            killed = time.monotonic()
            windows, wrong = 0, 0
            while not await stack.leading(standby):
                windows += 1
                wrong += await window(port) != SEED_WINDOW
                await asyncio.sleep(0.05)
            takeover = time.monotonic() - killed
            await asyncio.sleep(1.0)
            results.append(
                {
                    "trial": trial + 1,
                    "takeover_seconds": takeover,
                    "dns_windows_checked": windows,
                    "dns_windows_changed": wrong,
                    "kv_writes_after_takeover": await kv_last_seq(nc) - seq_before,
                }
            )
            spawned += 1
            fresh = f"reconciler-{spawned}"
            stack.start_reconciler(fresh, ttl)
            names = [standby, fresh]
        await nc.drain()
    takeovers = [float(r["takeover_seconds"]) for r in results]
    return {
        "lease_ttl_seconds": ttl,
        "bound_seconds": 2 * ttl,
        "services": services + 1,
        "trials": results,
        "takeover_seconds_max": max(takeovers),
        "takeover_seconds_mean": sum(takeovers) / len(takeovers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--lease-ttl", type=float, default=5.0)
    parser.add_argument("--services", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kgslb-bench-") as tmp:
        figures = asyncio.run(run(args.trials, args.lease_ttl, args.services, Path(tmp)))
    print(
        f"reconciler failover: lease TTL {args.lease_ttl} s, bound 2 x TTL = {2 * args.lease_ttl} s, {figures['services']} services"
    )
    print(f"{'trial':>5} {'takeover':>10} {'DNS windows':>12} {'changed':>8} {'KV writes':>10}")
    trials = figures["trials"]
    assert isinstance(trials, list)
    for row in trials:
        print(
            f"{row['trial']:>5} {row['takeover_seconds']:>9.2f}s {row['dns_windows_checked']:>12} "
            f"{row['dns_windows_changed']:>8} {row['kv_writes_after_takeover']:>10}"
        )
    print(f"max takeover {figures['takeover_seconds_max']:.2f} s (bound {2 * args.lease_ttl} s)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "reconciler_failover.json"
    out.write_text(json.dumps(figures, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
