"""The operations endpoint every service serves: /healthz, /readyz and Prometheus /metrics."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import platform
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, Info, generate_latest

log = logging.getLogger(__name__)

# Every service exports which kgslb it runs and whether it is ready (what /readyz says):
# the alerts of deploy/components/monitoring count ready DNS replicas with kgslb_ready.
BUILD_INFO = Info("kgslb_build", "The kgslb version and Python this process runs")
READY = Gauge("kgslb_ready", "1 while this process's /readyz answers 200")


def _version() -> str:
    try:
        return importlib.metadata.version("kgslb")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


BUILD_INFO.info({"version": _version(), "python": platform.python_version()})


class OpsServer:
    def __init__(
        self,
        host: str,
        port: int,
        ready: Callable[[], bool],
        detail: Callable[[], str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._ready = ready
        self._detail = detail
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("ops endpoint listening", extra={"ops": f"http://{self.host}:{self.port}"})
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        text = self._detail() if self._detail is not None else ""
        detail = f" ({text})" if text else ""
        if self._ready():
            return web.Response(text=f"ready{detail}\n")
        return web.Response(status=503, text=f"not ready{detail}\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        # Off the event loop: a DNS replica with 10,000 names exports 30,000 answer series,
        # a quarter of a second of Python that would otherwise stop answering meanwhile.
        # Collectors read the services' maps from this thread, so they iterate over copies.
        # `?name[]=family` (as prometheus_client's own server) runs only the collectors of
        # those families: a poll of one gauge no longer renders 300,000 answer series.
        READY.set(1 if self._ready() else 0)
        names = request.query.getall("name[]", [])
        registry = REGISTRY.restricted_registry(names) if names else REGISTRY
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
