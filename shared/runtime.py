"""The imperative shell every service shares: logging, NATS connection, the ops endpoint,
signal handling. A service only provides an object with `ready` and `run()`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from nats.aio.client import Client

from shared import bus
from shared.logs import setup_logging
from shared.ops import OpsServer
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)


class Service(Protocol):
    @property
    def ready(self) -> bool: ...

    async def run(self) -> None: ...


def replica_name(settings: ServiceSettings) -> str:
    return settings.replica or f"{socket.gethostname()}-{os.getpid()}"


async def connect_until_up(settings: ServiceSettings, name: str) -> Client:
    """Services may start before NATS; wait for it with a capped backoff."""
    delay = 0.2
    while True:
        try:
            return await bus.connect(settings, name)
        except Exception as exc:
            log.warning("waiting for NATS at %s: %s", bus.redact_url(settings.nats_url), exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def run_service(
    name: str, settings: ServiceSettings, build: Callable[[Client], Awaitable[Service]]
) -> None:
    replica = replica_name(settings)
    setup_logging(name, replica, settings.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nc = await connect_until_up(settings, f"kgslb-{name}-{replica}")
    service = await build(nc)
    # A service may say more than ready/not ready (the reconciler: leader or standby).
    detail = getattr(service, "readiness_detail", None)
    ops = OpsServer(settings.ops_host, settings.ops_port, lambda: service.ready, detail)
    await ops.start()
    log.info("%s started", name, extra={"replica": replica})
    task = asyncio.create_task(service.run())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task in done and task.exception() is not None:
        log.error("%s failed", name, exc_info=task.exception())
    for pending in (task, stopper):
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pending
    await ops.stop()
    with contextlib.suppress(Exception):
        await nc.drain()
    log.info("%s stopped", name)


T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a service's (or a command's) main coroutine on uvloop where available."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
