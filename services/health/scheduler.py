"""Fire each member's probe once per interval on its own phase: never two probes of one member
at once, and at most `max_in_flight` probes (each one connection) in flight."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Histogram

from services.health.monitor import (
    CONTROL_PLANE_ONLY,
    ProbeResult,
    ProbeTarget,
    first_delay,
    next_due,
)
from shared.models import MonitorKind

log = logging.getLogger(__name__)

PROBE_LAG = Histogram(
    "kgslb_health_probe_lag_seconds",
    "How late a probe started after its slot (the period's error)",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PROBE_CRASHES = Counter(
    "kgslb_health_probe_crashes_total", "Probes that raised instead of returning a result"
)

EARLY_SECONDS = 0.002
"""A probe this close to its slot starts now: timers tick in milliseconds, so waiting for each
of 2,000 slots a second would cap the rate near 1,000/s."""

Probe = Callable[[ProbeTarget], Awaitable[ProbeResult]]
OnResult = Callable[[ProbeTarget, ProbeResult], None]


class ProbeScheduler:
    def __init__(
        self,
        probe: Probe,
        on_result: OnResult,
        max_in_flight: int,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._probe = probe
        self._on_result = on_result
        self._slots = asyncio.Semaphore(max_in_flight)
        self._wall_clock = wall_clock
        self._targets: dict[str, tuple[ProbeTarget, int]] = {}
        """key -> (target, generation); a heap entry of an older generation is stale."""
        self._heap: list[tuple[float, int, str]] = []
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._generations = itertools.count()
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._targets)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def schedule(self, target: ProbeTarget) -> None:
        """Probe `target` from now on; a changed target keeps its key's phase."""
        current = self._targets.get(target.key)
        if current is not None and current[0] == target:
            return
        generation = next(self._generations)
        self._targets[target.key] = (target, generation)
        if target.key not in self._running:
            self._push(target, generation, self._first_due(target))

    def cancel(self, key: str) -> None:
        self._targets.pop(key, None)

    def _first_due(self, target: ProbeTarget) -> float:
        delay = first_delay(target.key, target.monitor, self._wall_clock())
        return asyncio.get_running_loop().time() + delay

    def _push(self, target: ProbeTarget, generation: int, due: float) -> None:
        if not self._heap or due < self._heap[0][0]:
            self._wake.set()
        heapq.heappush(self._heap, (due, generation, target.key))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        try:
            while True:
                # Cleared before looking at the heap: a `schedule` during the wait below
                # always wakes it.
                self._wake.clear()
                if not heap:
                    await self._wake.wait()
                    continue
                delay = heap[0][0] - loop.time()
                if delay > EARLY_SECONDS:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                    continue
                due, generation, key = heapq.heappop(heap)
                entry = self._targets.get(key)
                if entry is None or entry[1] != generation or key in self._running:
                    continue
                if entry[0].monitor.kind is MonitorKind.NONE:
                    # Control plane only: nothing to connect to and nothing that can change,
                    # so judged at once and once (re-"probed" every interval, 300,000 such
                    # members cost 30,000 tasks a second). A changed monitor is a new
                    # generation, scheduled again.
                    self._on_result(entry[0], CONTROL_PLANE_ONLY)
                    continue
                await self._slots.acquire()
                self._running.add(key)
                task = loop.create_task(self._probe_once(entry[0], generation, due))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def _probe_once(self, target: ProbeTarget, generation: int, due: float) -> None:
        loop = asyncio.get_running_loop()
        PROBE_LAG.observe(max(0.0, loop.time() - due))
        result: ProbeResult | None = None
        try:
            result = await self._probe(target)
        except Exception:
            # A prober bug must neither judge the member nor end its schedule.
            PROBE_CRASHES.inc()
            log.exception("probe of %s crashed", target.key, extra={"member": target.key})
        finally:
            self._slots.release()
            self._running.discard(target.key)
        entry = self._targets.get(target.key)
        if entry is None:
            return
        current, current_generation = entry
        if current_generation != generation:
            # The monitor changed while this probe ran: its result judged the old one.
            self._push(current, current_generation, self._first_due(current))
            return
        interval = target.monitor.interval_seconds
        self._push(target, generation, next_due(due, interval, loop.time()))
        if result is not None:
            self._on_result(target, result)
