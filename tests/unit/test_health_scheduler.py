"""The probe scheduler: every member once per interval, one probe per member at a time, a cap
on probes in flight, and nothing more for a cancelled member. The probe here is a coroutine
that records calls instead of touching the network."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from services.health.monitor import Outcome, ProbeResult, ProbeTarget
from services.health.scheduler import ProbeScheduler
from shared.models import HealthMonitorSpec, MonitorKind


def target(n: int, interval_seconds: float = 0.05) -> ProbeTarget:
    monitor = HealthMonitorSpec(interval_seconds=interval_seconds)
    return ProbeTarget(f"m{n}", f"app{n}.example", "127.0.0.1", "s1", 80, monitor)


class Recorder:
    """Counts probes and results, and the most probes that overlapped."""

    def __init__(self, probe_seconds: float = 0.0) -> None:
        self.probe_seconds = probe_seconds
        self.probes: Counter[str] = Counter()
        self.results: Counter[str] = Counter()
        self.running: Counter[str] = Counter()
        self.max_per_member = 0
        self.max_in_flight = 0

    async def probe(self, target: ProbeTarget) -> ProbeResult:
        self.probes[target.key] += 1
        self.running[target.key] += 1
        self.max_per_member = max(self.max_per_member, self.running[target.key])
        self.max_in_flight = max(self.max_in_flight, sum(self.running.values()))
        await asyncio.sleep(self.probe_seconds)
        self.running[target.key] -= 1
        return ProbeResult(Outcome.OK, "HTTP 200")

    def on_result(self, target: ProbeTarget, _: ProbeResult) -> None:
        self.results[target.key] += 1


@contextlib.asynccontextmanager
async def running(scheduler: ProbeScheduler) -> AsyncIterator[ProbeScheduler]:
    task = asyncio.create_task(scheduler.run())
    try:
        yield scheduler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(check: Callable[[], bool], timeout_seconds: float = 5.0) -> None:
    async with asyncio.timeout(timeout_seconds):
        while not check():
            await asyncio.sleep(0.01)


async def test_every_member_is_probed_again_and_again() -> None:
    recorder = Recorder()
    scheduler = ProbeScheduler(recorder.probe, recorder.on_result, max_in_flight=10)
    async with running(scheduler):
        for n in range(5):
            scheduler.schedule(target(n))
        await until(lambda: len(recorder.results) == 5 and min(recorder.results.values()) >= 3)


async def test_a_member_is_never_probed_twice_at_once() -> None:
    recorder = Recorder(probe_seconds=0.12)
    scheduler = ProbeScheduler(recorder.probe, recorder.on_result, max_in_flight=10)
    async with running(scheduler):
        scheduler.schedule(target(1, interval_seconds=0.02))
        await until(lambda: recorder.results["m1"] >= 3)

    assert recorder.max_per_member == 1


async def test_probes_in_flight_never_exceed_the_limit() -> None:
    recorder = Recorder(probe_seconds=0.03)
    scheduler = ProbeScheduler(recorder.probe, recorder.on_result, max_in_flight=3)
    async with running(scheduler):
        for n in range(20):
            scheduler.schedule(target(n, interval_seconds=0.01))
        await until(lambda: len(recorder.results) == 20)

    assert recorder.max_in_flight == 3


async def test_a_cancelled_member_is_probed_no_more() -> None:
    recorder = Recorder()
    scheduler = ProbeScheduler(recorder.probe, recorder.on_result, max_in_flight=10)
    async with running(scheduler):
        scheduler.schedule(target(1))
        scheduler.schedule(target(2))
        await until(lambda: recorder.results["m1"] >= 1)
        scheduler.cancel("m1")
        await asyncio.sleep(0.06)  # a probe in flight at cancel time may still finish
        probes = recorder.probes["m1"]
        await until(lambda: recorder.probes["m2"] >= 6)

    assert recorder.probes["m1"] == probes
    assert len(scheduler) == 1


@pytest.mark.parametrize("probe_seconds", [0.0, 0.05])
async def test_a_changed_monitor_is_used_from_the_next_probe(probe_seconds: float) -> None:
    seen: list[float] = []

    async def probe(target: ProbeTarget) -> ProbeResult:
        seen.append(target.monitor.interval_seconds)
        await asyncio.sleep(probe_seconds)
        return ProbeResult(Outcome.OK, "HTTP 200")

    scheduler = ProbeScheduler(probe, lambda *_: None, max_in_flight=10)
    async with running(scheduler):
        scheduler.schedule(target(1, interval_seconds=0.04))
        await until(lambda: len(seen) >= 1)
        scheduler.schedule(target(1, interval_seconds=0.03))
        await until(lambda: seen.count(0.03) >= 2)

    assert seen[0] == 0.04


def unmonitored(n: int) -> ProbeTarget:
    monitor = HealthMonitorSpec(kind=MonitorKind.NONE, interval_seconds=0.02)
    return ProbeTarget(f"m{n}", f"app{n}.example", "127.0.0.1", "s1", 80, monitor)


async def test_a_control_plane_only_member_is_judged_up_once_and_never_probed() -> None:
    recorder = Recorder()
    judged: list[tuple[str, ProbeResult]] = []
    scheduler = ProbeScheduler(
        recorder.probe, lambda target, result: judged.append((target.key, result)), 10
    )
    async with running(scheduler):
        scheduler.schedule(unmonitored(1))
        scheduler.schedule(target(2, interval_seconds=0.02))
        # Many intervals of the unmonitored member pass while the probed one goes on.
        await until(lambda: recorder.probes["m2"] >= 10)

    assert [(key, result.outcome) for key, result in judged if key == "m1"] == [("m1", Outcome.OK)]
    assert recorder.probes["m1"] == 0


async def test_a_member_whose_monitor_becomes_probed_is_probed_from_then_on() -> None:
    recorder = Recorder()
    scheduler = ProbeScheduler(recorder.probe, recorder.on_result, max_in_flight=10)
    async with running(scheduler):
        scheduler.schedule(unmonitored(1))
        await until(lambda: recorder.results["m1"] == 1)
        scheduler.schedule(target(1, interval_seconds=0.02))
        await until(lambda: recorder.probes["m1"] >= 3)
