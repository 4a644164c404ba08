"""Watcher throughput: Kubernetes object changes in, JetStream messages stored out.

    .venv/bin/python bench/watcher_throughput.py [--objects 10000]

Runs a real nats-server, the Kubernetes API simulator (in this process) and one real
`kgslb watcher` process for cluster s1az1. Changes are made straight in the simulator's store,
as fast as it takes them, so the watcher (list/watch over HTTP, decide, publish with acks) is
what is measured, not an HTTP client. Phases, each over `--objects` Ingresses:

- initial list: that many Ingresses exist before the watcher starts; time to /readyz
  (includes the process start, ~1 s);
- create: new Ingresses, each an ADDED then a MODIFIED when the AKO stand-in gives it a VIP
  (two changes, one message);
- patch: a label change on each (one change, one message);
- relist: every watch reset mid-stream with history compacted: every object republished,
  each list followed by a sync marker;
- delete: every Ingress deleted (one change, one tombstone).

Rates count from the first change to the last message stored in KGSLB_EVENTS. Target
(issue 4): at least 2,000 object changes per second per watcher. Prints a table; writes
JSON to bench/results/watcher_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from nats.js import JetStreamContext

from kgslb.embedded import NatsServer, free_port, service_process
from kubesim import ClusterStore, KubeSim
from kubesim.resources import INGRESSES, NAMESPACES
from kubesim.store import MERGE_PATCH
from services.watcher.publisher import COMPRESS_OVER_BYTES
from services.watcher.sources import PUBLISHING
from shared import bus, subjects, wire
from shared.models import ObjectKind, SyncMarker
from shared.settings import NatsSettings

RESULTS = Path(__file__).resolve().parent / "results"
CLUSTER = "s1az1"
NAMESPACES_USED = [f"bench-{index}" for index in range(10)]
TARGET_CHANGES_PER_SECOND = 2000
YIELD_EVERY = 200
"""Changes made between two yields to the loop, which also serves the watcher's watch."""


def ingress(index: int) -> dict[str, Any]:
    name = f"app-{index:05d}"
    return {
        "metadata": {
            "name": name,
            "namespace": NAMESPACES_USED[index % len(NAMESPACES_USED)],
            "labels": {"app": "gslb"},
        },
        "spec": {"rules": [{"host": f"{name}.avi.iberia.local"}]},
    }


def key(index: int) -> tuple[str, str]:
    meta = ingress(index)["metadata"]
    return meta["namespace"], meta["name"]


async def change_all(count: int, change: Callable[[int], object]) -> None:
    for index in range(count):
        change(index)
        if index % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)


async def last_seq(js: JetStreamContext) -> int:
    info = await js.stream_info(subjects.STREAM_EVENTS)
    return int(info.state.last_seq)


async def wait_for_seq(js: JetStreamContext, target: int, timeout_seconds: float) -> float:
    """Poll until the events stream holds message `target`; the time it did."""
    deadline = time.perf_counter() + timeout_seconds
    while time.perf_counter() < deadline:
        if await last_seq(js) >= target:
            return time.perf_counter()
        await asyncio.sleep(0.01)
    raise TimeoutError(f"stream did not reach sequence {target} in {timeout_seconds} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (Linux /proc); 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    js: JetStreamContext,
    pid: int,
    name: str,
    changes: int,
    messages: int,
    make: Callable[[], Any],
    timeout_seconds: float,
    *,
    burst: bool = False,
) -> dict[str, Any]:
    """Make the changes and wait until `messages` more are stored.

    Live: the clock runs from the first change, so a slow producer shows as a slow rate (see
    the producer column). Burst: the watcher is paused (SIGSTOP) while the changes are made
    and the clock starts when it resumes, so the rate is how fast it drains a backlog.
    """
    start_seq = await last_seq(js)
    cpu_before = cpu_seconds(pid)
    if burst:
        os.kill(pid, signal.SIGSTOP)
    made = time.perf_counter()
    try:
        await make()
    finally:
        if burst:
            os.kill(pid, signal.SIGCONT)
    produced = time.perf_counter()
    started = produced if burst else made
    done = await wait_for_seq(js, start_seq + messages, timeout_seconds)
    seconds = done - started
    cpu = cpu_seconds(pid) - cpu_before
    return row(name, changes, messages, produced - made, seconds, cpu)


def row(
    name: str, changes: int, messages: int, producer: float, seconds: float, cpu: float
) -> dict[str, Any]:
    return {
        "phase": name,
        "k8s_changes": changes,
        "messages": messages,
        "producer_seconds": round(producer, 3),
        "seconds": round(seconds, 3),
        "changes_per_second": round(changes / seconds),
        "messages_per_second": round(messages / seconds),
        "watcher_cpu_seconds": round(cpu, 2),
        "changes_per_cpu_second": round(changes / cpu) if cpu else None,
    }


async def wait_ready(ops_port: int, timeout_seconds: float) -> None:
    deadline = time.perf_counter() + timeout_seconds
    async with httpx.AsyncClient() as http:
        while time.perf_counter() < deadline:
            try:
                if (await http.get(f"http://127.0.0.1:{ops_port}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.02)
    raise TimeoutError(f"watcher not ready in {timeout_seconds} s")


async def run(count: int, workdir: Path) -> dict[str, Any]:
    nats = NatsServer(workdir / "jetstream")
    nats.start()
    sim = KubeSim([CLUSTER], vip_pools={CLUSTER: ["127.10.25.46"]}, history_size=4 * count)
    await sim.start()
    store: ClusterStore = sim.store(CLUSTER)
    for namespace in NAMESPACES_USED:
        store.create(NAMESPACES, None, {"metadata": {"name": namespace}})
    kubeconfig = sim.write_kubeconfig(str(workdir / "kubeconfig"))
    nc = await bus.connect(NatsSettings(nats_url=nats.url), "bench-watcher")
    js = nc.jetstream()
    await bus.bootstrap(js)
    ops_port = free_port()
    watcher = service_process(
        "watcher",
        ["watcher", "--kubeconfig", kubeconfig, "--context", CLUSTER, "--ops-port", str(ops_port)],
        workdir / "logs",
        {"KGSLB_NATS_URL": nats.url, "KGSLB_LOG_LEVEL": "WARNING"},
    )
    rows: list[dict[str, Any]] = []
    try:
        await change_all(count, lambda i: store.create(INGRESSES, None, ingress(i)))
        started = time.perf_counter()
        watcher.start()
        assert watcher.process is not None
        pid = watcher.process.pid
        await wait_ready(ops_port, 120)
        seconds = time.perf_counter() - started
        rows.append(row("initial list", count, count, 0.0, seconds, cpu_seconds(pid)))
        timeout = 60 + count / 100

        def create_more(i: int) -> object:
            return store.create(INGRESSES, None, ingress(count + i))

        rows.append(
            await measure(
                js, pid, "create, live", 2 * count, count,
                lambda: change_all(count, create_more), timeout,
            )
        )  # fmt: skip

        def relabel(i: int) -> object:
            namespace, name = key(i)
            patch = {"metadata": {"labels": {"app": "gslb", "rev": "2"}}}
            return store.patch(INGRESSES, namespace, name, MERGE_PATCH, patch)

        rows.append(
            await measure(
                js, pid, "patch, live", count, count,
                lambda: change_all(count, relabel), timeout,
            )
        )  # fmt: skip

        def relabel_again(i: int) -> object:
            namespace, name = key(count + i)
            patch = {"metadata": {"labels": {"app": "gslb", "rev": "3"}}}
            return store.patch(INGRESSES, namespace, name, MERGE_PATCH, patch)

        rows.append(
            await measure(
                js, pid, "patch, burst", count, count,
                lambda: change_all(count, relabel_again), timeout, burst=True,
            )
        )  # fmt: skip

        async def break_watches() -> None:
            sim.faults[CLUSTER].drop_watches(abrupt=True)
            store.expire_history()

        # Every watch relists: the Ingresses, the namespaces, and a sync marker after the
        # list of each published kind (the Gateways' list publishes nothing).
        total = 2 * count
        relisted = total + len(NAMESPACES_USED) + 2 + len(PUBLISHING)
        rows.append(await measure(js, pid, "relist", 0, relisted, break_watches, timeout))

        def delete(i: int) -> object:
            namespace, name = key(count + i)
            return store.delete(INGRESSES, namespace, name)

        rows.append(
            await measure(
                js, pid, "delete, burst", count, count,
                lambda: change_all(count, delete), timeout, burst=True,
            )
        )  # fmt: skip
        marker_raw = await js.get_last_msg(subjects.STREAM_EVENTS, subjects.sync_subject(CLUSTER))
        marker = wire.decode(marker_raw.data or b"", SyncMarker)
        marker_info = {
            "objects": len(marker.present),
            "bytes_on_wire": len(marker_raw.data or b""),
            "compressed": (marker_raw.data or b"")[:2] == wire.GZIP_MAGIC,
        }
    finally:
        watcher.stop()
        await nc.drain()
        await sim.stop()
        nats.stop()
    return {"rows": rows, "last_sync_marker": marker_info}


def marker_size(count: int) -> dict[str, Any]:
    """Size of a sync marker of `count` Ingresses as the watcher encodes it."""
    present = [f"Ingress/{ns}/{name}" for ns, name in map(key, range(count))]
    marker = SyncMarker(cluster=CLUSTER, kinds=list(ObjectKind), present=present)
    plain = wire.encode(marker)
    sent = wire.encode(marker, compress_over_bytes=COMPRESS_OVER_BYTES)
    return {"objects": count, "json_bytes": len(plain), "bytes_on_wire": len(sent)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kgslb-bench-watcher-") as tmp:
        result = asyncio.run(run(args.objects, Path(tmp)))
        sizes = [marker_size(n) for n in (args.objects, 2 * args.objects)]
    header = f"{'phase':<15}{'changes':>8}{'messages':>9}{'producer s':>11}{'seconds':>9}"
    header += f"{'changes/s':>10}{'messages/s':>11}{'watcher CPU s':>14}{'changes/CPU s':>14}"
    print(header)
    for r in result["rows"]:
        print(
            f"{r['phase']:<15}{r['k8s_changes']:>8}{r['messages']:>9}"
            f"{r['producer_seconds']:>11.2f}{r['seconds']:>9.2f}{r['changes_per_second']:>10}"
            f"{r['messages_per_second']:>11}{r['watcher_cpu_seconds']:>14}"
            f"{r['changes_per_cpu_second'] or '':>14}"
        )
    print()
    for size in sizes:
        print(
            f"sync marker of {size['objects']} objects: {size['json_bytes']} bytes JSON, "
            f"{size['bytes_on_wire']} bytes on the wire"
        )
    bursts = [r for r in result["rows"] if r["phase"].endswith("burst")]
    slowest = min(r["changes_per_second"] for r in bursts)
    verdict = "meets" if slowest >= TARGET_CHANGES_PER_SECOND else "MISSES"
    print(
        f"\nslowest burst: {slowest} changes/s drained, {verdict} the target of "
        f"{TARGET_CHANGES_PER_SECOND}/s (live phases are paced by the simulator: see producer s)"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "watcher_throughput.json"
    out.write_text(
        json.dumps(
            {
                "objects": args.objects,
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "target_changes_per_second": TARGET_CHANGES_PER_SECOND,
                **result,
                "sync_marker_sizes": sizes,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
