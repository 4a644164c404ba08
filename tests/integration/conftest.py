"""Fixtures that start real processes on ephemeral ports: nats-server with JetStream and the
kgslb services as `python -m kgslb` children, exactly as `kgslb up` runs them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from kgslb.embedded import ManagedProcess, NatsServer, free_port, service_process
from shared import bus
from shared.settings import NatsSettings


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def nats_client(nats_server: NatsServer) -> AsyncIterator[Client]:
    nc = await bus.connect(NatsSettings(nats_url=nats_server.url), "kgslb-test")
    await bus.bootstrap(nc.jetstream())
    yield nc
    await nc.drain()


TEST_FIRST_SYNC = {
    "KGSLB_FIRST_SYNC_TIMEOUT_SECONDS": "1",
    "KGSLB_FIRST_SYNC_MAX_WAIT_SECONDS": "5",
}
"""Most tests run the watchers of only some of the GSLBConfig's member clusters, or publish
what a watcher would: a reconciler they start waits 1 s, not 10, for the missing clusters'
first lists (test_cold_start.py tests the defaults)."""


class Services:
    """Start kgslb services against one nats-server; every one is stopped at teardown."""

    def __init__(self, nats: NatsServer, log_dir: Path) -> None:
        self.nats = nats
        self.log_dir = log_dir
        self.running: dict[str, ManagedProcess] = {}
        self.ops_ports: dict[str, int] = {}
        self.dns_port = 0

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> ManagedProcess:
        ops_port = free_port()
        self.ops_ports[name] = ops_port
        settings = {"KGSLB_NATS_URL": self.nats.url, "KGSLB_OPS_PORT": str(ops_port)}
        if args and args[0] == "reconciler":
            settings.update(TEST_FIRST_SYNC)
        process = service_process(name, list(args), self.log_dir, {**settings, **(env or {})})
        process.start()
        self.running[name] = process
        return process

    def start_dns(self) -> int:
        self.dns_port = self.dns_port or free_port()
        self.start("dns", "dns", "--dns-port", str(self.dns_port), "--log-per-second", "0")
        return self.dns_port

    def stop_all(self) -> None:
        for process in self.running.values():
            process.stop()


@pytest.fixture
def services(nats_server: NatsServer, tmp_path: Path) -> Iterator[Services]:
    running = Services(nats_server, tmp_path / "logs")
    yield running
    running.stop_all()


async def eventually(check, timeout_seconds: float = 15.0, interval_seconds: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll `check` (sync or async) until it returns a truthy value; return that value."""
    deadline = asyncio.get_running_loop().time() + timeout_seconds
    last_error: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except Exception as exc:
            last_error = exc
        await asyncio.sleep(interval_seconds)
    raise AssertionError(f"condition not met in {timeout_seconds} s (last error: {last_error})")
