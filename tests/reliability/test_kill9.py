"""`kill -9` of each service in turn while Ingresses keep changing: once restarted, the events
stream holds exactly the simulator's Ingresses, the KV is a fresh plan of that stream, and the
DNS answers that plan, as a system that never failed would."""

from __future__ import annotations

import asyncio
import contextlib
import time

from nats.aio.client import Client

from kgslb.embedded import free_port
from tests.integration.conftest import Services, eventually
from tests.integration.test_watcher import Kube
from tests.reliability.convergence import (
    CLUSTERS,
    IngressChurn,
    converged_on,
    fresh_plan,
    kv_matches_a_fresh_plan,
)
from tests.reliability.stack import hello_backends, ready, soa_serial, start_pipeline

DOWN_SECONDS = 1.0
ORDER = ("watcher-s1az1", "watcher-s2", "reconciler", "health", "dns")


async def test_kill_9_of_each_service_during_ingress_churn_converges_to_a_fresh_plan(
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
        recovery: dict[str, float] = {}
        try:
            for name in ORDER:
                process = services.running[name]
                process.kill9()
                await asyncio.sleep(DOWN_SECONDS)
                restarted = time.monotonic()
                process.start()
                if name == "dns":
                    await eventually(lambda: soa_serial(port), timeout_seconds=20)
                else:
                    await eventually(lambda n=name: ready(services, n), timeout_seconds=20)
                recovery[name] = time.monotonic() - restarted
        finally:
            changing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await changing

        settled = time.monotonic()
        await eventually(lambda: converged_on(nats_client, port, churn), timeout_seconds=30)
        converged = time.monotonic() - settled
        planned = set((await fresh_plan(nats_client)).services)

    print(
        f"\n{churn.changes} Ingress changes; restart to ready (s): "
        + ", ".join(f"{name} {seconds:.2f}" for name, seconds in recovery.items())
        + f"; converged {converged:.2f} s after the last change"
    )
    assert planned == churn.fqdns()
