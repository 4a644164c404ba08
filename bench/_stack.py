"""End-to-end bench harness: the Kubernetes API simulator, a monitored JetStream nats-server
and real `kgslb` watcher/reconciler/health/dns processes on loopback, as `kgslb up` wires them.

Objects are written straight into the simulator's stores (on its own event loop) so that
creating 30,000 Ingresses takes seconds; the watchers still see them only through the
Kubernetes API (list, then watch), exactly as in a real cluster.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import dns.message
import dns.query
import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dns_stack import cpu_seconds, rss_mb  # noqa: E402

from kgslb.embedded import (  # noqa: E402
    ManagedProcess,
    NatsServer,
    free_port,
    service_process,
    site_nats_config,
)
from kgslb.up import prepare_jetstream, stream_replicas  # noqa: E402
from kubesim import KubeSim  # noqa: E402
from kubesim.resources import INGRESSES  # noqa: E402
from kubesim.store import ClusterStore  # noqa: E402
from kubesim.threaded import BackgroundKubeSim  # noqa: E402

RESULTS = REPO / "bench" / "results"
SEED = REPO / "examples" / "seed"
ZONE = "avi.iberia.local"
CLUSTERS = ("s1az1", "s1az2", "s2")
HOME = "s1az1"
HOME_CLUSTERS = ("s1az1", "s1az2")
"""The seed GSLBConfig's possible home clusters (`homeClusters`): their watchers run the home
role, as in `kgslb up`."""
# AKO's default: every Ingress of a cluster shares the cluster's first pool address.
SHARED_VIPS = {"s1az1": "127.10.25.46", "s1az2": "127.10.26.40", "s2": "127.10.23.40"}
T = TypeVar("T")


def app_name(index: int) -> str:
    return f"app{index:06d}"


def app_fqdn(index: int) -> str:
    return f"{app_name(index)}.{ZONE}"


def ingress(name: str, host: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    backend = {"service": {"name": name, "port": {"number": 80}}}
    path = {"path": "/", "pathType": "Prefix", "backend": backend}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "labels": labels or {"app": "gslb"}},
        "spec": {"rules": [{"host": host, "http": {"paths": [path]}}]},
    }


def set_ingress_ip(store: ClusterStore, name: str, ip: str) -> None:
    """What AKO does when it (re)assigns a VIP: write status.loadBalancer.ingress."""
    obj = store.get(INGRESSES, "default", name)
    obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip}]}}
    store.update(INGRESSES, "default", name, obj, subresource="status")


def apply_documents(store: ClusterStore, documents: Iterable[dict[str, Any]]) -> None:
    for document in documents:
        group, _, version = document["apiVersion"].rpartition("/")
        rtype = next(
            t
            for t in store.registry.all()
            if t.group == group and t.version == version and t.kind == document["kind"]
        )
        store.create(rtype, document["metadata"].get("namespace"), document)


def seed_policy_documents(gdp_spec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The seed's GSLBConfig gc-1 and GDP global-gdp (optionally with another spec)."""
    documents: list[dict[str, Any]] = []
    for file in ("gslbconfig.yaml", "global-gdp.yaml"):
        for document in yaml.safe_load_all((SEED / file).read_text()):
            if not document:
                continue
            if document["kind"] == "Namespace" and any(d["kind"] == "Namespace" for d in documents):
                continue
            if document["kind"] == "GlobalDeploymentPolicy" and gdp_spec is not None:
                document["spec"] = gdp_spec
            documents.append(document)
    return documents


def seed_gdp_spec() -> dict[str, Any]:
    gdp = next(d for d in seed_policy_documents() if d["kind"] == "GlobalDeploymentPolicy")
    spec: dict[str, Any] = gdp["spec"]
    return spec


class E2EStack:
    """Simulator + nats-server (with its monitoring port) + kgslb service processes."""

    def __init__(
        self,
        workdir: Path,
        *,
        shared_ingress_vip: bool = True,
        history_size: int = 100_000,
        sites: bool = False,
    ) -> None:
        self.workdir = workdir
        self.sites = sites
        """Three sites as `kgslb up` runs the seed: one nats-server per site routed into one
        JetStream cluster (R3), and each site's own watcher, reconciler, health and DNS on its
        own server. The first site's services keep the plain names (`dns`, `reconciler`), so
        every measurement reads the same processes in both layouts."""
        self.nats_servers = [self._site_nats(c) for c in CLUSTERS] if sites else []
        self.nats = self.nats_servers[0] if sites else NatsServer(workdir / "jetstream")
        self.monitor_port = free_port()
        self.nats.argv += ["-m", str(self.monitor_port)]
        pools = {c: [SHARED_VIPS[c]] for c in CLUSTERS}
        self.sim = KubeSim(
            list(CLUSTERS),
            vip_pools=pools,
            history_size=history_size,
            shared_ingress_vip=shared_ingress_vip,
        )
        self.background = BackgroundKubeSim(self.sim)
        self.kubeconfig = workdir / "kubeconfig"
        self.processes: dict[str, ManagedProcess] = {}
        self.ops_ports: dict[str, int] = {}
        self._poller: httpx.Client | None = None
        self.dns_port = 0
        self.dns_ports: dict[str, int] = {}

    def __enter__(self) -> E2EStack:
        # SIGTERM (a timeout, a kill) unwinds like Ctrl-C, so no child outlives the bench.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        if self.sites:
            for server in self.nats_servers:
                server.spawn()  # together: a server alone has no JetStream until peers route in
            for server in self.nats_servers:
                server.wait_listening()
            prepare_jetstream(self.nats.url, stream_replicas(len(CLUSTERS)), 60)
        else:
            self.nats.start()
        self.background.start()
        self.sim.write_kubeconfig(str(self.kubeconfig))
        return self

    def __exit__(self, *_: object) -> None:
        if self._poller is not None:
            self._poller.close()
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.stop()
        self.background.stop()
        for server in self.nats_servers or [self.nats]:
            server.stop()

    def _site_nats(self, cluster: str) -> NatsServer:
        route_ports = getattr(self, "_route_ports", None) or {c: free_port() for c in CLUSTERS}
        self._route_ports = route_ports
        routes = [f"nats://127.0.0.1:{route_ports[c]}" for c in CLUSTERS if c != cluster]
        config = self.workdir / f"nats-{cluster}.conf"
        config.write_text(site_nats_config(cluster, "127.0.0.1", route_ports[cluster], routes))
        store = self.workdir / "jetstream" / cluster
        return NatsServer(store, config=config, name=f"nats-server-{cluster}")

    def site_suffix(self, cluster: str) -> str:
        """`-s1az2` for the second and third sites' services; nothing in one site."""
        return f"-{cluster}" if self.sites and cluster != CLUSTERS[0] else ""

    def nats_url_of(self, cluster: str) -> str:
        return self.nats_servers[CLUSTERS.index(cluster)].url if self.sites else self.nats.url

    # ----- the simulator ---------------------------------------------------------------

    def in_sim(self, job: Callable[[KubeSim], T]) -> T:
        """Run `job` on the simulator's loop (its stores belong to that loop) and wait."""

        async def call() -> T:
            return job(self.sim)

        loop = self.background._loop  # the stores are only safe on this loop
        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=600)

    def move_vip(self, cluster: str, name: str, ip: str) -> None:
        """AKO gives Ingress `name` in `cluster` the address `ip`."""
        self.in_sim(lambda sim: set_ingress_ip(sim.store(cluster), name, ip))

    def apply_seed_policies(self, gdp_spec: dict[str, Any] | None = None) -> None:
        documents = seed_policy_documents(gdp_spec)
        self.in_sim(lambda sim: apply_documents(sim.store(HOME), documents))

    def create_apps(self, count: int, clusters: Iterable[str] = CLUSTERS, start: int = 0) -> None:
        """`count` Ingresses app<i> (host app<i>.<zone>) in each cluster; AKO gives them VIPs."""
        wanted = list(clusters)

        def job(sim: KubeSim) -> None:
            for cluster in wanted:
                store = sim.store(cluster)
                for index in range(start, start + count):
                    store.create(INGRESSES, "default", ingress(app_name(index), app_fqdn(index)))

        self.in_sim(job)
        # What the simulator now holds lives as long as the bench. Left to the cyclic
        # collector, every full collection while it serves the lists rescans all of it: with
        # 300,000 Ingresses (~10 million objects) each one held the simulator's loop for
        # seconds, the watchers' first small lists timed out (5 s) and were sent again, and
        # the measured cold start waited on the bench's own process. A real API server runs
        # on machines of its own; the services freeze their long-lived state the same way
        # (shared.collector).
        gc.collect()
        gc.freeze()

    # ----- the services ----------------------------------------------------------------

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None, site: str = CLUSTERS[0]
    ) -> ManagedProcess:
        self.ops_ports[name] = free_port()
        settings = {
            "KGSLB_NATS_URL": self.nats_url_of(site),
            "KGSLB_OPS_PORT": str(self.ops_ports[name]),
            "KGSLB_LOG_LEVEL": "WARNING",
            # The services run this checkout's code, whatever the working directory.
            "PYTHONPATH": str(REPO),
        }
        if self.sites:
            settings["KGSLB_STREAM_REPLICAS"] = str(stream_replicas(len(CLUSTERS)))
        process = service_process(
            name, list(args), self.workdir / "logs", {**settings, **(env or {})}
        )
        process.start()
        self.processes[name] = process
        return process

    def start_watcher(self, cluster: str, page_size: int = 500) -> ManagedProcess:
        homes = HOME_CLUSTERS if self.sites else (HOME,)
        home = ["--home", "true"] if cluster in homes else []
        return self.start(
            f"watcher-{cluster}",
            "watcher",
            "--kubeconfig",
            str(self.kubeconfig),
            "--context",
            cluster,
            "--page-size",
            str(page_size),
            *home,
            site=cluster,
        )

    def start_dns(self, cluster: str = CLUSTERS[0]) -> ManagedProcess:
        """The DNS of `cluster`'s site (the only one in one site) on its own port; `query`
        asks the first site's."""
        port = free_port()
        if cluster == CLUSTERS[0]:
            self.dns_port = self.dns_port or port
            port = self.dns_port
        self.dns_ports[cluster] = port
        name = f"dns{self.site_suffix(cluster)}"
        return self.start(
            name, "dns", "--dns-port", str(port), "--log-queries", "false", site=cluster
        )

    def start_all(self, health: bool = True, page_size: int = 500) -> None:
        for cluster in CLUSTERS:
            self.start_watcher(cluster, page_size)
        for cluster in CLUSTERS if self.sites else CLUSTERS[:1]:
            suffix = self.site_suffix(cluster)
            self.start(f"reconciler{suffix}", "reconciler", site=cluster)
            if health:
                self.start(f"health{suffix}", "health", site=cluster)
            self.start_dns(cluster)

    def restart(self, name: str) -> None:
        process = self.processes[name]
        process.stop()
        process.start()

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if not process.running:
                raise SystemExit(f"{name} exited; its last lines:\n{process.tail()}")

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each process of the stack has used so far, and this
        process's (the bench: it serves the simulator's lists and polls): a load-independent
        view of what a step cost, where wall times on a shared machine are not."""
        out = {}
        for name, process in self.processes.items():
            if process.process is not None and process.running:
                out[name] = cpu_seconds(process.process.pid)
        for server in self.nats_servers or [self.nats]:
            out[server.name] = cpu_seconds(server.process.pid) if server.process else 0.0
        out["bench+simulator"] = cpu_seconds(os.getpid())
        return out

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for name, process in self.processes.items():
            if process.process is not None and process.running:
                out[name] = rss_mb(process.process.pid)
        for server in self.nats_servers or [self.nats]:
            out[server.name] = rss_mb(server.process.pid) if server.process else 0.0
        return out

    async def metric(self, name: str, metric_name: str) -> float:
        # Only that family (`name[]`): polled every 0.1 s during a cold start, a full scrape of
        # the DNS renders one answer series per member (300,000 at 100,000 FQDNs x 3), and
        # that rendering was most of the DNS process's CPU while the bench watched it.
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"http://127.0.0.1:{self.ops_ports[name]}/metrics",
                params={"name[]": metric_name},
            )
        return metric_sum(response.text, metric_name)

    def poll_metric(self, name: str, metric_name: str) -> float:
        """`metric` for polling loops: one kept-alive HTTP client, no event loop per call.
        The simulator serves the watchers from a thread of this process, so whatever the
        bench spends on watching (an event loop and a client per poll, 10 times a second)
        slows the cold start it measures."""
        response = self.http.get(
            f"http://127.0.0.1:{self.ops_ports[name]}/metrics", params={"name[]": metric_name}
        )
        return metric_sum(response.text, metric_name)

    @property
    def http(self) -> httpx.Client:
        """The bench's one kept-alive HTTP client for every poll. A client per request
        builds an SSL context each time (~25 ms of CPU): polling six endpoints twice a
        second that way cost the bench process ~5 CPU-seconds of a cold start, on the
        cores the services it measures run on."""
        if self._poller is None:
            self._poller = httpx.Client(timeout=5)
        return self._poller

    def varz(self) -> dict[str, Any]:
        response = self.http.get(f"http://127.0.0.1:{self.monitor_port}/varz")
        data: dict[str, Any] = response.json()
        return data

    def stream_last_seq(self, stream: str) -> int:
        response = self.http.get(
            f"http://127.0.0.1:{self.monitor_port}/jsz", params={"streams": "true"}
        )
        for account in response.json().get("account_details", []):
            for detail in account.get("stream_detail", []):
                if detail["name"] == stream:
                    return int(detail["state"]["last_seq"])
        return 0

    # ----- DNS -------------------------------------------------------------------------

    def query(self, name: str, timeout: float = 0.5) -> list[str]:
        reply = dns.query.udp(
            dns.message.make_query(name, "A"), "127.0.0.1", port=self.dns_port, timeout=timeout
        )
        return [rr.address for rrset in reply.answer for rr in rrset]


def metric_sum(text: str, metric_name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if not line.startswith("#") and line.split("{")[0].split(" ")[0] == metric_name
    )


def load() -> str:
    """The 1/5/15-minute load averages, to print beside every figure (2 shared cores)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    if not samples_ms:
        return {"n": 0}
    ordered = sorted(samples_ms)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "n": len(ordered),
        "p50_ms": round(pick(0.50), 1),
        "p95_ms": round(pick(0.95), 1),
        "p99_ms": round(pick(0.99), 1),
        "max_ms": round(ordered[-1], 1),
        "mean_ms": round(statistics.fmean(ordered), 1),
    }


def wait_until(check: Callable[[], bool], timeout_seconds: float, interval: float = 0.05) -> float:
    """Seconds until `check()` holds; SystemExit after `timeout_seconds`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_seconds:
        try:
            if check():
                return time.monotonic() - started
        except Exception:
            pass
        time.sleep(interval)
    raise SystemExit(f"not reached in {timeout_seconds} s")


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
