"""Run a KubeSim on a private event-loop thread, for synchronous callers (the kubernetes client)."""

from __future__ import annotations

import asyncio
import threading

from kubesim import KubeSim


class BackgroundKubeSim:
    """Context manager: starts `sim` on its own thread and stops it (and the thread) on exit.

    Talk to it over HTTP (kubeconfig, kubectl, the kubernetes client); its fault switches
    are thread-safe. Its stores belong to its loop and are not for other threads.
    """

    def __init__(self, sim: KubeSim) -> None:
        self.sim = sim
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kubesim", daemon=True)

    def start(self) -> KubeSim:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.sim.start(), self._loop).result(timeout=10)
        except BaseException:
            self._stop_loop()
            raise
        return self.sim

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.sim.stop(), self._loop).result(timeout=10)
        finally:
            self._stop_loop()

    def stop_cluster(self, cluster: str) -> None:
        """`KubeSim.stop_cluster`, from this (any) thread."""
        asyncio.run_coroutine_threadsafe(self.sim.stop_cluster(cluster), self._loop).result(10)

    def start_cluster(self, cluster: str) -> None:
        """`KubeSim.start_cluster`, from this (any) thread."""
        asyncio.run_coroutine_threadsafe(self.sim.start_cluster(cluster), self._loop).result(10)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> KubeSim:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
