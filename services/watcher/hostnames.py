"""The watcher's shell for load balancers that report only a hostname: resolve the hostnames
the view's objects read, before their objects are decided, and again whenever due; what
changes is published like any other change (`view.ClusterView.resolved` decides)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge

from services.watcher import kube
from services.watcher.resolve import Answer, Resolver, due
from services.watcher.settings import WatcherSettings
from services.watcher.sources import BY_NAME
from services.watcher.view import ClusterView, Decision, Outgoing

log = logging.getLogger(__name__)

RESOLUTIONS = Counter(
    "kgslb_watcher_hostname_resolutions_total",
    "Resolutions of load-balancer hostnames (objects that report no IP), by result",
    ["cluster", "result"],
)
RESOLVED_HOSTNAMES = Gauge(
    "kgslb_watcher_hostnames",
    "Load-balancer hostnames members are resolved from, by state (resolved; failing: the "
    "last resolution failed, the addresses before it are kept; unresolved: never resolved)",
    ["cluster", "state"],
)


class Hostnames:
    def __init__(
        self,
        cluster: str,
        settings: WatcherSettings,
        view: ClusterView,
        lock: asyncio.Lock,
        report: Callable[[Decision], None],
    ) -> None:
        self.cluster = cluster
        self.settings = settings
        self.view = view
        self.lock = lock
        """The lock under which the view is read and changed, and its decisions published."""
        self.report = report
        self.resolver = Resolver(settings.hostname_resolver, settings.hostname_timeout_seconds)
        self._due: dict[str, float] = {}
        """Hostname -> monotonic time to resolve it again."""

    async def prepare(self, batch: list[kube.Item]) -> dict[str, Answer]:
        """Resolve the hostnames the objects of `batch` read that were never resolved, before
        the batch is decided (so a list never publishes them as having no address)."""
        wanted = {
            host
            for item in batch
            if isinstance(item, kube.Listed | kube.Changed) and item.resource in BY_NAME
            for host in self.view.unresolved(
                item.resource, item.items if isinstance(item, kube.Listed) else [item.obj]
            )
        }
        return await self.resolve(wanted)

    def apply(self, answers: dict[str, Answer]) -> list[Outgoing]:
        """Tell the view (under the lock); the messages of the objects that changed."""
        outgoing: list[Outgoing] = []
        for host, answer in answers.items():
            decision = self.view.resolved(host, answer.resolution)
            self.report(decision)
            outgoing.extend(decision.messages)
        return outgoing

    async def resolve(self, hosts: set[str]) -> dict[str, Answer]:
        """Resolve hostnames now, concurrently, and schedule each one's next resolution."""
        if not hosts:
            return {}
        ordered = sorted(hosts)
        answers = await asyncio.gather(*(self.resolver.resolve(h) for h in ordered))
        now = time.monotonic()
        settings = self.settings
        for host, answer in zip(ordered, answers, strict=True):
            failed = not answer.resolution.addresses
            RESOLUTIONS.labels(self.cluster, "error" if failed else "ok").inc()
            if failed:
                log.warning(
                    "load-balancer hostname %s does not resolve: %s",
                    host, answer.resolution.error, extra={"cluster": self.cluster},
                )  # fmt: skip
            self._due[host] = due(
                now,
                answer.ttl_seconds,
                settings.hostname_refresh_seconds,
                settings.hostname_min_refresh_seconds,
            )
        return dict(zip(ordered, answers, strict=True))

    async def run(self, publish: Callable[[list[Outgoing]], Awaitable[None]]) -> None:
        """Resolve every hostname an object reads again when it is due."""
        while True:
            await asyncio.sleep(min(1.0, self.settings.hostname_min_refresh_seconds))
            now = time.monotonic()
            async with self.lock:
                hosts = set(self.view.hostnames())
            for host in [h for h in self._due if h not in hosts]:
                del self._due[host]
            answers = await self.resolve({h for h in hosts if self._due.get(h, 0.0) <= now})
            async with self.lock:
                outgoing = self.apply(answers)
                if outgoing:
                    await publish(outgoing)
                resolutions = self.view.resolutions()
            states = {"resolved": 0, "failing": 0, "unresolved": 0}
            for resolution in resolutions.values():
                if not resolution.addresses:
                    states["unresolved"] += 1
                else:
                    states["failing" if resolution.error else "resolved"] += 1
            for state, count in states.items():
                RESOLVED_HOSTNAMES.labels(self.cluster, state).set(count)
