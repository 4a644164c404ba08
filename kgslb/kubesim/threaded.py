"""Run a KubeSim on a private event-loop thread, for synchronous callers (the kubernetes client)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

from kgslb.kubesim import KubeSim

T = TypeVar("T")


class BackgroundKubeSim:
    """Context manager: starts `sim` on its own thread and stops it (and the thread) on exit.

    Fault switches are thread-safe; anything else that touches the stores goes through
    `call`, which runs a function on the simulator's loop and returns its result.
    """

    def __init__(self, sim: KubeSim) -> None:
        self.sim = sim
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kubesim", daemon=True)

    def start(self) -> KubeSim:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), self._loop).result(timeout=10)
        return self.sim

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.sim.stop(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def __enter__(self) -> KubeSim:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
