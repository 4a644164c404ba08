"""The ops endpoint over real HTTP: /healthz, /readyz with its detail, and /metrics rendered
off the event loop, so a slow collection never stops a service's own work (the DNS answers
while 30,000 answer series are written out)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.ops import OpsServer


class SlowCollector(Collector):
    """Half a second of blocking work per scrape, like a very large registry."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        time.sleep(0.5)
        yield GaugeMetricFamily("kgslb_test_slow", "a slow family", value=1)


async def test_health_and_readiness_answer_with_their_detail() -> None:
    ready = False
    ops = OpsServer("127.0.0.1", 0, lambda: ready, lambda: "3 of 4 buckets")
    port = await ops.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/healthz")).text == "ok\n"
            before = await http.get("/readyz")
            ready = True
            after = await http.get("/readyz")
    finally:
        await ops.stop()

    assert (before.status_code, before.text) == (503, "not ready (3 of 4 buckets)\n")
    assert (after.status_code, after.text) == (200, "ready (3 of 4 buckets)\n")


async def test_a_slow_scrape_does_not_stop_the_event_loop() -> None:
    collector = SlowCollector()
    REGISTRY.register(collector)
    ops = OpsServer("127.0.0.1", 0, lambda: True)
    port = await ops.start()
    gaps: list[float] = []

    async def ticking() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(ticking())
    try:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    finally:
        ticker.cancel()
        REGISTRY.unregister(collector)
        await ops.stop()

    assert "kgslb_test_slow 1.0" in response.text
    assert len(gaps) > 20, "the loop ran while the scrape took half a second"
    assert max(gaps) < 0.2, f"the loop stalled for {max(gaps):.3f} s"


class CountedCollector(Collector):
    """Counts its collections, like the DNS's answer counters (one series per member)."""

    def __init__(self) -> None:
        self.collected = 0

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("kgslb_test_costly", "a costly family")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.collected += 1
        yield GaugeMetricFamily("kgslb_test_costly", "a costly family", value=1)


async def test_a_scrape_of_named_families_skips_the_other_collectors() -> None:
    costly = CountedCollector()
    REGISTRY.register(costly)
    ops = OpsServer("127.0.0.1", 0, lambda: True)
    port = await ops.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            named = await http.get("/metrics", params={"name[]": "process_cpu_seconds_total"})
            after_named = costly.collected
            everything = await http.get("/metrics")
    finally:
        await ops.stop()
        REGISTRY.unregister(costly)

    assert after_named == 0
    assert "kgslb_test_costly" not in named.text
    assert "process_cpu_seconds_total" in named.text
    assert costly.collected == 1
    assert "kgslb_test_costly 1.0" in everything.text


async def test_metrics_say_which_kgslb_runs_and_whether_it_is_ready() -> None:
    ready = False
    ops = OpsServer("127.0.0.1", 0, lambda: ready)
    port = await ops.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            before = (await http.get("/metrics")).text.splitlines()
            ready = True
            after = (await http.get("/metrics")).text.splitlines()
    finally:
        await ops.stop()

    build = [line for line in after if line.startswith("kgslb_build_info{")]
    assert len(build) == 1 and 'version="' in build[0] and build[0].endswith(" 1.0")
    assert "kgslb_ready 0.0" in before
    assert "kgslb_ready 1.0" in after
