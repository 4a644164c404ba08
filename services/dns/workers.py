"""`kgslb dns --workers N`: N worker processes answering on one port, one per core.

The parent binds N UDP and N TCP sockets on the same address with SO_REUSEPORT (the kernel
spreads clients over them by flow hash), hands one pair to each worker as inherited file
descriptors, and restarts a worker that dies on the sockets it had. Each worker is the DNS
service's own entry point (`python -m services.dns`, configured by KGSLB_* variables alone),
with its own NATS connection, KV mirror, round-robin turns and query logs (replica
`<replica>-w<i>`); its ops endpoint listens on `--ops-port + i` when a port is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from services.dns.settings import DnsSettings
from services.dns.sockets import bind
from shared.logs import setup_logging
from shared.runtime import replica_name
from shared.settings import env_key

log = logging.getLogger(__name__)
RESTART_DELAY_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 5.0
WORKER_MODULE = "services.dns"
"""Run with `python -m`: one DNS process on inherited sockets (`__main__.py`)."""


def worker_environment(
    settings: DnsSettings, index: int, port: int, fds: tuple[int, int]
) -> dict[str, str]:
    """The worker's settings as KGSLB_* variables: the parent's, made single-process."""
    values = settings.model_dump()
    values.update(
        workers=1,
        dns_port=port,
        dns_socket_fds=f"{fds[0]},{fds[1]}",
        replica=f"{replica_name(settings)}-w{index}",
        ops_port=settings.ops_port + index if settings.ops_port else 0,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KGSLB_")}
    env.update({env_key(name): str(value) for name, value in values.items() if value is not None})
    return env


class Worker:
    def __init__(self, index: int, settings: DnsSettings, sockets: tuple[socket.socket, ...]):
        self.index = index
        self.settings = settings
        self.sockets = sockets
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        udp, tcp = self.sockets
        port = udp.getsockname()[1]
        fds = (udp.fileno(), tcp.fileno())
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", WORKER_MODULE,
            env=worker_environment(self.settings, self.index, port, fds),
            pass_fds=fds,
            stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        log.info("dns worker %d started", self.index, extra={"pid": self.process.pid})

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()


async def supervise(settings: DnsSettings) -> None:
    setup_logging("dns", replica_name(settings), settings.log_level)
    first = bind(settings, reuse_port=True)
    port = first[0].getsockname()[1]
    pairs = [first]
    for _ in range(settings.workers - 1):
        pairs.append(bind(settings.model_copy(update={"dns_port": port}), reuse_port=True))
    workers = [Worker(i, settings, pair) for i, pair in enumerate(pairs)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("dns answering on %s:%d with %d workers", settings.dns_host, port, settings.workers)
    for worker in workers:
        await worker.start()
    stopping = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            exits = {
                asyncio.create_task(w.process.wait()): w for w in workers if w.process is not None
            }
            done, _ = await asyncio.wait({stopping, *exits}, return_when=asyncio.FIRST_COMPLETED)
            for task in exits:
                if task not in done:
                    task.cancel()
            for task in done:
                exited = exits.get(task)
                if exited is None or stop.is_set():
                    continue
                log.error("dns worker %d exited with %s; restarting", exited.index, task.result())
                await asyncio.sleep(RESTART_DELAY_SECONDS)
                await exited.start()
    finally:
        await asyncio.gather(*(w.stop() for w in workers))
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()
        stopping.cancel()
