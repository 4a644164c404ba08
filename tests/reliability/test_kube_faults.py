"""Kubernetes API faults from the simulator's switches while Ingresses keep changing: dropped
and reset watches, a forced 410, 5 s of refused requests and slow responses. No change is
lost: the events stream, the KV and the DNS end where a fault-free run would."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from nats.aio.client import Client

from kgslb.embedded import free_port
from kubesim.server import Faults
from tests.integration.conftest import Services, eventually
from tests.integration.test_watcher import Kube
from tests.reliability.convergence import (
    CLUSTERS,
    IngressChurn,
    converged_on,
    fresh_plan,
    kv_matches_a_fresh_plan,
)
from tests.reliability.stack import hello_backends, start_pipeline

REFUSED_SECONDS = 5.0
SLOW_SECONDS = 3.0
LATENCY_SECONDS = 0.5


def reset_watches(faults: Faults) -> None:
    faults.drop_watches(abrupt=True)


def forced_410(faults: Faults) -> None:
    faults.drop_watches()
    faults.expire_history()


async def fault_for(kube: Kube, set_fault: Callable[[Faults, bool], None], seconds: float) -> None:
    for cluster in CLUSTERS:
        set_fault(kube.sim.faults[cluster], True)
    await asyncio.sleep(seconds)
    for cluster in CLUSTERS:
        set_fault(kube.sim.faults[cluster], False)


def refuse(faults: Faults, on: bool) -> None:
    faults.refuse = on


def slow(faults: Faults, on: bool) -> None:
    faults.latency_seconds = LATENCY_SECONDS if on else 0.0


async def test_no_ingress_change_is_lost_through_every_api_fault(
    nats_client: Client, services: Services, kube: Kube
) -> None:
    backend_port = free_port()
    churn = IngressChurn(kube)
    for _ in range(4):
        churn.step()
    async with hello_backends(backend_port):
        port = await start_pipeline(nats_client, services, kube, backend_port, CLUSTERS)
        await eventually(lambda: kv_matches_a_fresh_plan(nats_client), timeout_seconds=30)
        changing = asyncio.create_task(churn.run())
        try:
            for instant in (reset_watches, Faults.drop_watches, forced_410):
                for cluster in CLUSTERS:
                    instant(kube.sim.faults[cluster])
                await asyncio.sleep(1.0)
            await fault_for(kube, refuse, REFUSED_SECONDS)
            await fault_for(kube, slow, SLOW_SECONDS)
        finally:
            changing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await changing

        settled = time.monotonic()
        await eventually(lambda: converged_on(nats_client, port, churn), timeout_seconds=30)
        converged = time.monotonic() - settled
        planned = set((await fresh_plan(nats_client)).services)

    print(
        f"\n{churn.changes} Ingress changes through API faults; converged {converged:.2f} s after"
    )
    assert planned == churn.fqdns()
