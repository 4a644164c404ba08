"""A backend that fails and recovers faster than the monitor's thresholds never flaps the DNS:
its member stays up and in every answer, while the probes do see the failures."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from kgslb.backends import Fault
from kgslb.embedded import free_port
from tests.integration.conftest import Services, eventually
from tests.integration.test_health_dns import (
    SEED_SHARES,
    answered,
    publish,
    quick_monitor,
    seed_backends,
    seed_with_monitor,
    start_stack,
)
from tests.integration.test_watcher import metric

FLAPS = 10
FAILING_SECONDS = 0.35
"""At most two probes (0.3 s apart) land in a window this long: under failuresToDown=3."""
SERVING_SECONDS = 0.65


async def test_a_backend_flapping_faster_than_the_thresholds_stays_in_every_answer(
    nats_client: Client, services: Services
) -> None:
    backend_port = free_port()
    config = seed_with_monitor(quick_monitor(backend_port))
    async with seed_backends(config, backend_port) as backends:
        dns_port = start_stack(services)
        await publish(nats_client, config)
        await eventually(lambda: _all_answered(dns_port), timeout_seconds=20)
        samples: list[set[str]] = []
        stop = asyncio.Event()

        async def sample() -> None:
            # Stopped by a flag, not cancelled: dnspython's UDP receive can hang when a task
            # is cancelled inside it.
            while not stop.is_set():
                samples.append(await answered(dns_port))

        sampling = asyncio.create_task(sample())
        try:
            for _ in range(FLAPS):
                backends.set_fault("s2", Fault.ERROR)
                await asyncio.sleep(FAILING_SECONDS)
                backends.set_fault("s2", Fault.NONE)
                await asyncio.sleep(SERVING_SECONDS)
        finally:
            stop.set()
            await sampling

    failed = await metric(services, "health", "kgslb_health_probes_total", outcome="status")
    downs = await metric(services, "health", "kgslb_health_transitions_total", state="down")
    print(
        f"\n{FLAPS} flaps: {int(failed)} failed probes, {int(downs)} down transitions, "
        f"{len(samples)} answer samples"
    )
    assert failed >= FLAPS / 2, "the probes must have seen most of the failures"
    assert downs == 0
    assert samples and all(seen == set(SEED_SHARES) for seen in samples)


async def _all_answered(dns_port: int) -> bool:
    return await answered(dns_port) == set(SEED_SHARES)
