"""Kubernetes API simulator: one fake kube-apiserver per cluster, good enough for kubectl.

It is the test double for everything that talks to Kubernetes, the embedded default for
`kgslb up`, and `kgslb kube-sim` for driving by hand. See ClusterStore for the semantics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

import yaml

from kubesim import tls as kubesim_tls
from kubesim.ako import VipAllocator
from kubesim.guard import Tokens
from kubesim.resources import CRDS, gateway_api_crds, kgslb_crds
from kubesim.server import ClusterServer, Faults
from kubesim.store import DEFAULT_HISTORY_SECONDS, ApiError, ClusterStore, WatchEvent

__all__ = [
    "ApiError",
    "ClusterStore",
    "Faults",
    "KubeSim",
    "cli_main",
    "run_kubesim",
]

ADMIN_USER = "kubesim-admin"
"""The kubeconfig's user: its token authenticates as `kubernetes-admin` (system:masters)."""
SAVE_INTERVAL_SECONDS = 0.5


def load_snapshot(path: Path) -> dict[str, object]:
    try:
        snapshot = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{path}: not a saved cluster of the simulator ({exc}); remove it to start afresh"
        ) from None
    if not isinstance(snapshot, dict):
        raise ValueError(f"{path}: not a saved cluster of the simulator; remove it to start afresh")
    return snapshot


def save_snapshot(path: Path, snapshot: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(snapshot, separators=(",", ":")))
    os.replace(partial, path)


class KubeSim:
    """Simulated clusters, each served on its own port of `host`.

    `vip_pools` maps a cluster to the addresses its AKO stand-in hands out; `crds` installs
    the kgslb.io CRDs. With `base_port` 0 every cluster gets an ephemeral port, otherwise
    cluster i listens on base_port + i. `faults[cluster]` holds that cluster's fault switches.

    With `state_dir` the objects outlive the process, as a cluster's etcd does: each cluster's
    are read from `<state_dir>/<cluster>.json` if it exists (`restored` counts them), written
    back within `SAVE_INTERVAL_SECONDS` of a change while serving, and at `stop`.

    It serves HTTPS with a CA of its own (`<state_dir>/tls/`, or in memory only) that the
    kubeconfig carries, and checks bearer tokens and RBAC (`kubesim.guard`); `tls=False`
    serves plain HTTP and `auth=False` lets every request through, for tests that need it.
    """

    def __init__(
        self,
        clusters: list[str],
        host: str = "127.0.0.1",
        vip_pools: dict[str, list[str]] | None = None,
        crds: bool = True,
        *,
        base_port: int = 0,
        history_size: int = 1000,
        history_seconds: float | None = DEFAULT_HISTORY_SECONDS,
        bookmark_interval: float = 1.0,
        shared_ingress_vip: bool = True,
        state_dir: Path | None = None,
        tls: bool = True,
        auth: bool = True,
    ) -> None:
        if not clusters or len(set(clusters)) != len(clusters):
            raise ValueError(f"need distinct cluster names, got {clusters!r}")
        if unknown := set(vip_pools or {}) - set(clusters):
            raise ValueError(f"VIP pools for unknown clusters: {sorted(unknown)}")
        self.clusters = list(clusters)
        self.host = host
        self.base_port = base_port
        self._servers: dict[str, ClusterServer] = {}
        self.state_dir = state_dir
        self.restored: dict[str, int] = {}
        """Cluster -> objects read back from `state_dir` (none: it started from scratch)."""
        self._dirty: set[str] = set()
        self._saver: asyncio.Task[None] | None = None
        self.credentials = kubesim_tls.ensure(
            state_dir / "tls" if state_dir is not None else None, host
        )
        """The CA (`ca_pem`) and the admin's bearer token (`admin_token`)."""
        self.tls = tls
        self.auth = auth
        ssl_context = self.credentials.server_context() if tls else None
        for name in clusters:
            store = ClusterStore(history_size, history_seconds)
            if crds:
                for crd in [*kgslb_crds(), *gateway_api_crds()]:
                    store.create(CRDS, None, crd)
            saved = self._saved_file(name)
            if saved is not None and saved.exists():
                self.restored[name] = store.restore(load_snapshot(saved))
            if pool := (vip_pools or {}).get(name):
                allocator = VipAllocator(pool, shared_ingress_vip=shared_ingress_vip)
                allocator.adopt(store)
                store.add_controller(allocator)
            if state_dir is not None:
                store.subscribe(self._marker(name))
                self._dirty.add(name)
            tokens = None
            if auth:
                tokens = Tokens(self.credentials.admin_token, self.credentials.ca_pem)
                tokens.adopt(store)
                store.add_controller(tokens)
            self._servers[name] = ClusterServer(
                name,
                store,
                bookmark_interval=bookmark_interval,
                ssl_context=ssl_context,
                tokens=tokens,
            )
        self.faults: dict[str, Faults] = {n: s.faults for n, s in self._servers.items()}

    async def start(self) -> None:
        try:
            for index, server in enumerate(self._servers.values()):
                await server.start(self.host, self.base_port + index if self.base_port else 0)
        except BaseException:
            await self.stop()
            raise
        if self.state_dir is not None:
            self.save()
            self._saver = asyncio.create_task(self._save_while_serving())

    async def stop(self) -> None:
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
            self._saver = None
        for server in self._servers.values():
            await server.stop()
        if self.state_dir is not None:
            self.save()

    def _marker(self, cluster: str) -> Callable[[WatchEvent], None]:
        """A store listener: `cluster` changed since the last save."""

        def mark(_: WatchEvent) -> None:
            self._dirty.add(cluster)

        return mark

    def _saved_file(self, cluster: str) -> Path | None:
        return None if self.state_dir is None else self.state_dir / f"{cluster}.json"

    def save(self) -> None:
        """Write the clusters changed since the last save to `state_dir` (atomically)."""
        changed, self._dirty = self._dirty, set()
        for cluster in changed:
            path = self._saved_file(cluster)
            if path is not None:
                save_snapshot(path, self._servers[cluster].store.snapshot())

    async def _save_while_serving(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL_SECONDS)
            if self._dirty:
                self.save()

    async def stop_cluster(self, cluster: str) -> None:
        """Take one cluster's API server down abruptly, as a lost site would: connections,
        watches included, are reset and new ones refused. Its objects stay for
        `start_cluster`."""
        await self._server(cluster).stop(abrupt=True)

    async def start_cluster(self, cluster: str) -> None:
        """Serve a stopped cluster again, on the port it had (its kubeconfig entry holds)."""
        server = self._server(cluster)
        if server.serving:
            return
        index = self.clusters.index(cluster)
        port = server.port or (self.base_port + index if self.base_port else 0)
        await server.start(self.host, port)

    def serving(self, cluster: str) -> bool:
        return self._server(cluster).serving

    async def __aenter__(self) -> KubeSim:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def url(self, cluster: str) -> str:
        return self._server(cluster).url

    def store(self, cluster: str) -> ClusterStore:
        """Direct access to a cluster's objects; only from the simulator's event loop."""
        return self._server(cluster).store

    @property
    def admin_token(self) -> str:
        return self.credentials.admin_token

    def client_ssl_context(self) -> ssl.SSLContext:
        """Trusts the simulator's CA, for calling its API without a kubeconfig."""
        return self.credentials.client_context()

    def cluster_entry(self, cluster: str) -> dict[str, str]:
        """A kubeconfig `cluster:` entry reaching `cluster`, verifying the simulator's CA."""
        entry = {"server": self.url(cluster)}
        if self.tls:
            entry["certificate-authority-data"] = self.credentials.ca_data()
        return entry

    def mint_token(self, cluster: str, namespace: str, service_account: str) -> str:
        """A bearer token of a ServiceAccount of `cluster`, as its TokenRequest subresource
        mints one (only from the simulator's event loop)."""
        tokens = self._server(cluster).tokens
        if tokens is None:
            raise RuntimeError("the simulator was started with auth=False")
        minted = tokens.mint(self.store(cluster), namespace, service_account, None)
        return str(minted["status"]["token"])

    def write_kubeconfig(
        self, path: str, *, token: str | None = None, user: str = ADMIN_USER
    ) -> str:
        """A kubeconfig with one context per cluster (named like it) and one user: the admin,
        or whoever `token` (say a ServiceAccount's, from `mint_token`) authenticates."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": n, "cluster": self.cluster_entry(n)} for n in self.clusters],
            "users": [{"name": user, "user": {"token": token or self.admin_token}}],
            "contexts": [
                {"name": n, "context": {"cluster": n, "user": user, "namespace": "default"}}
                for n in self.clusters
            ],
            "current-context": self.clusters[0],
        }
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        return str(target)

    def _server(self, cluster: str) -> ClusterServer:
        try:
            return self._servers[cluster]
        except KeyError:
            raise KeyError(f"unknown cluster {cluster!r}; have {self.clusters}") from None


async def run_kubesim(
    clusters: list[str],
    host: str = "127.0.0.1",
    base_port: int = 0,
    kubeconfig_path: str | None = None,
    vip_pools: dict[str, list[str]] | None = None,
    *,
    ready: Callable[[KubeSim], None] | None = None,
) -> None:
    """Serve the clusters until cancelled; `ready` is called once they listen."""
    sim = KubeSim(clusters, host, vip_pools, base_port=base_port)
    await sim.start()
    try:
        if kubeconfig_path:
            sim.write_kubeconfig(kubeconfig_path)
        if ready is not None:
            ready(sim)
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def cli_main(
    clusters: list[str],
    host: str,
    base_port: int,
    kubeconfig: str,
    vip_pool_spec: dict[str, list[str]],
) -> None:
    """Blocking entry for `kgslb kube-sim`; returns after SIGINT or SIGTERM."""

    def announce(sim: KubeSim) -> None:
        for name in sim.clusters:
            pool = ", ".join(vip_pool_spec.get(name, [])) or "none"
            print(f"kube-sim: cluster {name} at {sim.url(name)} (VIP pool: {pool})", flush=True)
        if kubeconfig:
            print(f"kube-sim: kubeconfig {kubeconfig}, contexts {', '.join(sim.clusters)}")
            print(
                "kube-sim: HTTPS with its own CA and an admin token (both in the kubeconfig);"
                " RBAC from the Roles and bindings you apply; `kubectl create token SA -n NS`"
                " mints a ServiceAccount's token"
            )
        print("kube-sim: Ctrl-C to stop", flush=True)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        # A signal cancels us; run_kubesim shuts the servers down on the way out.
        with contextlib.suppress(asyncio.CancelledError):
            await run_kubesim(clusters, host, base_port, kubeconfig, vip_pool_spec, ready=announce)

    asyncio.run(main())
