"""The imperative shell every service shares: logging, NATS connection, the ops endpoint,
signal handling. A service only provides an object with `ready` and `run()`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from nats.aio.client import Client

from shared import bus
from shared.logs import setup_logging
from shared.ops import OpsServer
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class Service(Protocol):
    @property
    def ready(self) -> bool: ...

    async def run(self) -> None: ...


def replica_name(settings: ServiceSettings) -> str:
    return settings.replica or f"{socket.gethostname()}-{os.getpid()}"


async def connect_until_up(
    settings: ServiceSettings, name: str, waiting: Callable[[str], None] | None = None
) -> Client:
    """Services may start before NATS: wait for it, logging every failed attempt with the URL
    and the reason (`waiting for NATS at nats://nats:4222: [Errno 111] ...`), with a capped
    back-off. `waiting(text)` gets the same text, for `/readyz`."""

    def failed(url: str, exc: BaseException) -> None:
        text = f"waiting for NATS at {url}: {bus.attempt_reason(exc)}"
        log.warning(text, extra={"nats_url": url})
        if waiting is not None:
            waiting(text)

    return await bus.connect(settings, name, on_attempt_failed=failed)


class ServiceFailed(RuntimeError):
    """The service stopped by itself with an error, or did not stop in time: exit non-zero."""


class _Startup:
    """What `/readyz` says before the service exists: waiting for NATS, then starting."""

    def __init__(self, nats_url: str) -> None:
        self.service: Service | None = None
        self.detail = f"connecting to NATS at {bus.redact_url(nats_url)}"

    def ready(self) -> bool:
        return self.service is not None and self.service.ready

    def describe(self) -> str:
        if self.service is None:
            return self.detail
        # A service may say more than ready/not ready (the reconciler: leader or standby).
        detail: Callable[[], str] | None = getattr(self.service, "readiness_detail", None)
        return detail() if detail is not None else ""


def _install_signals(stop: asyncio.Event, name: str, seconds: float) -> None:
    """The first SIGTERM/SIGINT stops gracefully within `seconds`; a second one exits at
    once."""
    loop = asyncio.get_running_loop()

    def handle(sig: signal.Signals) -> None:
        if stop.is_set():
            log.error("%s: second %s, exiting now", name, sig.name)
            logging.shutdown()
            os._exit(128 + sig.value)
        log.info("%s: %s received, stopping", name, sig.name)
        _watchdog(name, seconds).start()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handle, sig)


def _watchdog(name: str, seconds: float) -> threading.Timer:
    """Exit non-zero if the graceful stop takes longer than `seconds`, even with the event
    loop blocked."""

    def expire() -> None:
        log.error("%s did not stop within %g s (--shutdown-seconds): exiting", name, seconds)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    return timer


async def _until_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None when `stop` is set first (then `work` is cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


async def run_service(
    name: str, settings: ServiceSettings, build: Callable[[Client], Awaitable[Service]]
) -> None:
    """Serve `/healthz` (200) and `/readyz` (503 until the service is ready) at once, connect
    to NATS, build and run the service until it ends or SIGTERM/SIGINT. A stop takes at most
    `settings.shutdown_seconds`; a service that failed or did not stop in time raises
    `ServiceFailed` (the command exits 1)."""
    replica = replica_name(settings)
    setup_logging(name, replica, settings.log_level)
    stop = asyncio.Event()
    _install_signals(stop, name, settings.shutdown_seconds)
    startup = _Startup(settings.nats_url)

    def waiting(text: str) -> None:
        startup.detail = text

    ops = OpsServer(settings.ops_host, settings.ops_port, startup.ready, startup.describe)
    await ops.start()
    failure: BaseException | None = None
    nc: Client | None = None
    try:
        nc = await _until_stopped(
            stop, connect_until_up(settings, f"kgslb-{name}-{replica}", waiting)
        )
        if nc is not None:
            startup.detail = "starting"
            startup.service = await _until_stopped(stop, build(nc))
        if startup.service is not None:
            log.info("%s started", name, extra={"replica": replica})
            await _until_stopped(stop, startup.service.run())
            if not stop.is_set():
                raise ServiceFailed(f"{name} stopped by itself")
    except Exception as exc:
        failure = exc
        log.error("%s failed", name, exc_info=exc)
    if not stop.is_set():  # failed by itself: the same bound on the way out
        _watchdog(name, settings.shutdown_seconds).start()
    await ops.stop()
    if nc is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), settings.shutdown_seconds)
    log.info("%s stopped", name)
    if failure is not None:
        raise ServiceFailed(f"{name} failed: {failure}") from failure


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a service's (or a command's) main coroutine on uvloop where available."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
