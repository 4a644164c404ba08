"""`kgslb up`: the seed's whole topology on one machine, on embedded defaults.

Starts a JetStream nats-server, the Kubernetes API simulator with the member clusters, one
watcher per cluster, the reconciler, the health and DNS services, and a hello backend per site
on its loopback VIP; then applies the seed's manifests (GSLBConfig, global-gdp, the hello
Deployment/Service/Ingress in each cluster) through the Kubernetes API, exactly as a user would
with kubectl. Every child is supervised like a pod's containers: one that exits is restarted
with back-off (`kgslb.supervisor`), and its restarts are published in the state file for
`kgslb status`. Only Ctrl-C or SIGTERM stops the stack.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kgslb.embedded import (
    ManagedProcess,
    NatsServer,
    StartupError,
    free_port,
    port_in_use,
    service_process,
)
from kgslb.supervisor import (
    RestartPolicy,
    Supervisor,
    process_alive,
    write_json_atomically,
)
from shared import wire
from shared.models import (
    ObjectKind,
    ObjectRef,
    ObservedObject,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    SyncMarker,
)
from shared.subjects import sync_subject

DEFAULT_STACK_FILE = Path("examples/seed/kgslb.yaml")
STATE_FILE = "stack.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Listen(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535, description="0 picks a free port")


class ClusterSpec(_Strict):
    vip_pool: list[str] = Field(default_factory=list, alias="vipPool")
    site: str = ""
    apply: list[str] = Field(default_factory=list, description="manifests, relative to the file")


class BackendsSpec(_Strict):
    port: int = Field(
        default=80,
        ge=0,
        le=65535,
        description="every site's port; the seed's health monitors follow it (see "
        "`monitors_follow_backends`)",
    )
    hosts: list[str] = Field(default_factory=list, description="virtual hosts served")


class SupervisionSpec(_Strict):
    """How `up` restarts a child that exits, and how long it waits for each to stop."""

    first_restart_delay_seconds: float = Field(
        default=0.5, gt=0, le=3600, alias="firstRestartDelaySeconds"
    )
    max_restart_delay_seconds: float = Field(
        default=30.0, gt=0, le=3600, alias="maxRestartDelaySeconds",
        description="the back-off doubles up to this",
    )  # fmt: skip
    stable_after_seconds: float = Field(
        default=60.0, gt=0, alias="stableAfterSeconds",
        description="a child that ran this long before exiting is restarted after the first delay",
    )  # fmt: skip
    stop_grace_seconds: float = Field(
        default=5.0, gt=0, le=300, alias="stopGraceSeconds",
        description="SIGTERM, then SIGKILL after this; per tier (services, then nats-server)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _first_delay_within_the_cap(self) -> SupervisionSpec:
        if self.first_restart_delay_seconds > self.max_restart_delay_seconds:
            raise ValueError(
                f"firstRestartDelaySeconds ({self.first_restart_delay_seconds:g}) is above "
                f"maxRestartDelaySeconds ({self.max_restart_delay_seconds:g})"
            )
        return self

    @property
    def restart_policy(self) -> RestartPolicy:
        return RestartPolicy(
            first_delay_seconds=self.first_restart_delay_seconds,
            max_delay_seconds=self.max_restart_delay_seconds,
            stable_after_seconds=self.stable_after_seconds,
        )


class NamedPolicy(_Strict):
    name: str
    namespace: str = "default"
    spec: dict[str, Any]


class ObservedSeed(_Strict):
    cluster: str
    kind: ObjectKind
    namespace: str = "default"
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    hosts: list[str] = Field(default_factory=list)
    vips: list[str] = Field(default_factory=list)


DERIVED_FIELDS = ("gslbConfig", "globalDeploymentPolicies", "gslbHostRules", "observed")


class StackConfig(_Strict):
    """The stack file, plus the typed content of the manifests it applies (the derived
    fields, filled by `load_stack_config`, are what the watchers will report)."""

    dns: Listen = Field(default_factory=lambda: Listen(port=1053))
    nats: Listen = Field(default_factory=lambda: Listen(port=4222))
    kube_api: Listen = Field(default_factory=lambda: Listen(port=16443), alias="kubeApi")
    backends: BackendsSpec = Field(default_factory=BackendsSpec)
    supervision: SupervisionSpec = Field(default_factory=SupervisionSpec)
    home_cluster: str = Field(alias="homeCluster")
    clusters: dict[str, ClusterSpec]
    gslb_config: NamedPolicy | None = Field(default=None, alias="gslbConfig")
    global_deployment_policies: list[NamedPolicy] = Field(
        default_factory=list, alias="globalDeploymentPolicies"
    )
    host_rules: list[NamedPolicy] = Field(default_factory=list, alias="gslbHostRules")
    observed: list[ObservedSeed] = Field(default_factory=list)
    source: Path = Field(default=DEFAULT_STACK_FILE, exclude=True)


_POLICY_KINDS = {
    "GSLBConfig": "gslb_config",
    "GlobalDeploymentPolicy": "global_deployment_policies",
    "GSLBHostRule": "host_rules",
}


def _derive(config: StackConfig) -> None:
    """Fill the derived fields from the manifests: policies from the kgslb CRs, and one
    observation per Ingress with the VIP the cluster's ingress controller will assign."""
    for cluster, spec in config.clusters.items():
        for document in manifests(config, config.source, cluster):
            kind = document.get("kind")
            meta = document.get("metadata", {})
            if kind in _POLICY_KINDS:
                policy = NamedPolicy(
                    name=meta["name"],
                    namespace=meta.get("namespace", "default"),
                    spec=document.get("spec", {}),
                )
                if kind == "GSLBConfig":
                    config.gslb_config = policy
                else:
                    getattr(config, _POLICY_KINDS[kind]).append(policy)
            elif kind == "Ingress" and spec.vip_pool:
                rules = document.get("spec", {}).get("rules", [])
                config.observed.append(
                    ObservedSeed(
                        cluster=cluster,
                        kind=ObjectKind.INGRESS,
                        namespace=meta.get("namespace", "default"),
                        name=meta["name"],
                        labels=meta.get("labels", {}),
                        hosts=[rule["host"] for rule in rules if rule.get("host")],
                        vips=spec.vip_pool[:1],
                    )
                )


def seed_messages(config: StackConfig) -> list[tuple[str, wire.WireModel]]:
    """The stack's policies and observed objects as the watchers would publish them (subject,
    message): for tests and benchmarks that feed NATS without Kubernetes."""
    messages: list[tuple[str, wire.WireModel]] = []
    policies: list[tuple[PolicyKind, NamedPolicy]] = []
    if config.gslb_config is not None:
        policies.append((PolicyKind.GSLB_CONFIG, config.gslb_config))
    policies += [
        (PolicyKind.GLOBAL_DEPLOYMENT_POLICY, p) for p in config.global_deployment_policies
    ]
    policies += [(PolicyKind.GSLB_HOST_RULE, p) for p in config.host_rules]
    for kind, policy in policies:
        policy_ref = PolicyRef(kind=kind, namespace=policy.namespace, name=policy.name)
        messages.append((policy_ref.subject, PolicyObject(ref=policy_ref, spec=policy.spec)))
    present: dict[str, list[str]] = {}
    for seed in config.observed:
        ref = ObjectRef(
            cluster=seed.cluster, kind=seed.kind, namespace=seed.namespace, name=seed.name
        )
        observed = ObservedObject(
            ref=ref, resource_version="1", labels=seed.labels, hosts=seed.hosts, vips=seed.vips
        )
        messages.append((ref.subject, observed))
        present.setdefault(seed.cluster, []).append(ref.short)
    for cluster, shorts in present.items():
        marker = SyncMarker(
            cluster=cluster, kinds=[ObjectKind.INGRESS, ObjectKind.SERVICE], present=shorts
        )
        messages.append((sync_subject(cluster), marker))
    return messages


def home_clusters(config: StackConfig) -> list[str]:
    """The clusters whose watcher runs the home role: homeCluster, and the other possible
    homes the GSLBConfig lists in homeClusters (their watchers keep copies of the policies and
    take over when the active home is lost)."""
    spec = config.gslb_config.spec if config.gslb_config else {}
    listed = [str(c) for c in spec.get("homeClusters") or [] if str(c) in config.clusters]
    return [config.home_cluster, *(c for c in listed if c != config.home_cluster)]


def load_stack_config(path: Path) -> StackConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise StartupError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        # PyYAML's message spans lines (with a caret drawing): keep the error to one line.
        raise StartupError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    derived = [key for key in DERIVED_FIELDS if key in (raw or {})]
    if derived:
        raise StartupError(
            f"{path}: {derived[0]}: comes from the manifests listed in clusters.*.apply"
        )
    try:
        config = StackConfig.model_validate({**(raw or {}), "source": path})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise StartupError(f"{path}: {where}: {err['msg']}") from None
    if config.home_cluster not in config.clusters:
        raise StartupError(
            f"{path}: homeCluster {config.home_cluster!r} is not one of the clusters "
            f"({', '.join(config.clusters)})"
        )
    _derive(config)
    return config


def manifests(config: StackConfig, stack_file: Path, cluster: str) -> list[dict[str, Any]]:
    """The objects to apply in one cluster, in file order, their monitors on the backends'
    port."""
    documents: list[dict[str, Any]] = []
    for name in config.clusters[cluster].apply:
        path = stack_file.parent / name
        try:
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
        except (OSError, yaml.YAMLError) as exc:
            raise StartupError(f"{stack_file}: clusters.{cluster}.apply: {path}: {exc}") from None
    return monitors_follow_backends(documents, config.backends.port)


DEFAULT_MONITOR_PORT = 80
"""Where an http or tcp monitor without a port probes, and where the hello backends listen
by default."""


def monitors_follow_backends(documents: list[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    """The manifests with their health monitors on `port` (the hello backends' port).

    The seed's manifests say nothing of the monitor's port, because backends and monitor
    agree on 80. An operator who moves the backends (`backends.port: 8080`, to run without
    root) expects the monitors to move with them, as an Avi monitor without a port probes
    the virtual service's own port. So a GlobalDeploymentPolicy gets `port` in its
    healthMonitorTemplate (the default template if it has none), and so does a GSLBHostRule
    that has a template (one without keeps the GDP's). A template that names a port, or
    whose kind does not default to 80 (https: 443; none: never probed), is the manifest
    author's choice and stays as written. Port 0 (each site on its own free port) and 80
    change nothing.
    """
    if port in (0, DEFAULT_MONITOR_PORT):
        return documents
    moved: list[dict[str, Any]] = []
    for document in documents:
        spec = document.get("spec") or {}
        template = spec.get("healthMonitorTemplate")
        if template is None and document.get("kind") == "GlobalDeploymentPolicy":
            template = {}
        if (
            document.get("kind") not in ("GlobalDeploymentPolicy", "GSLBHostRule")
            or not isinstance(template, dict)
            or "port" in template
            or template.get("kind", "http") not in ("http", "tcp")
        ):
            moved.append(document)
            continue
        document = copy.deepcopy(document)
        document["spec"] = {**spec, "healthMonitorTemplate": {**template, "port": port}}
        moved.append(document)
    return moved


def apply_manifests(kubeconfig: Path, cluster: str, documents: list[dict[str, Any]]) -> None:
    """Create (or replace) objects through the Kubernetes API, like `kubectl apply`."""
    from kubernetes import config as kube_config
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import ConflictError

    # The kubernetes client is untyped; these two calls are the whole of its use here.
    api = kube_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), context=cluster
    )
    client = DynamicClient(api)  # type: ignore[no-untyped-call]
    for document in documents:
        resource = client.resources.get(api_version=document["apiVersion"], kind=document["kind"])
        namespace = (
            document["metadata"].get("namespace", "default") if resource.namespaced else None
        )
        try:
            resource.create(body=document, namespace=namespace)
        except ConflictError:
            resource.patch(
                body=document,
                name=document["metadata"]["name"],
                namespace=namespace,
                content_type="application/merge-patch+json",
            )


def wait_for_answer(
    host: str,
    port: int,
    qname: str,
    timeout_seconds: float,
    keep_waiting: Callable[[], bool] = lambda: True,
) -> list[str]:
    """The first answer for `qname`; [] if `keep_waiting` said stop first."""
    import dns.message
    import dns.query

    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if not keep_waiting():
            return []
        try:
            reply = dns.query.udp(dns.message.make_query(qname, "A"), host, port=port, timeout=0.5)
            addresses = [rr.address for rrset in reply.answer for rr in rrset]
            if addresses:
                return addresses
        except Exception:
            pass
        time.sleep(0.2)
    raise StartupError(f"DNS on {host}:{port} gave no answer for {qname} in {timeout_seconds} s")


class Stack:
    """The running parts of `kgslb up`."""

    def __init__(self, config: StackConfig, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.logs = state_dir / "logs"
        self.kubeconfig = state_dir / "kubeconfig"
        self.nats: NatsServer | None = None
        self.kubesim: Any = None
        self.ops_ports: dict[str, int] = {}
        self.backends_control = ""
        self.supervisor = Supervisor(
            config.supervision.restart_policy,
            report=lambda line: print(f"kgslb up: {line}", flush=True),
            on_change=self._publish_children,
        )
        self._state_published = False

    def check_ports(self) -> None:
        config = self.config
        wanted = [
            ("dns (udp)", config.dns.host, config.dns.port, True),
            ("dns (tcp)", config.dns.host, config.dns.port, False),
            ("nats", config.nats.host, config.nats.port, False),
        ]
        for index, cluster in enumerate(config.clusters):
            if config.kube_api.port:
                wanted.append(
                    (
                        f"kube-api {cluster}",
                        config.kube_api.host,
                        config.kube_api.port + index,
                        False,
                    )
                )
            for ip in config.clusters[cluster].vip_pool[:1]:
                if config.backends.port:
                    wanted.append((f"hello backend {cluster}", ip, config.backends.port, False))
        busy = [
            f"{what} {host}:{port}"
            for what, host, port, udp in wanted
            if port_in_use(host, port, udp)
        ]
        if busy:
            raise StartupError(f"port already in use: {', '.join(busy)}")

    def start(self, progress: Callable[[str], None]) -> None:
        self.check_ports()
        config = self.config
        self.state_dir.mkdir(parents=True, exist_ok=True)
        documents = {c: manifests(config, config.source, c) for c in config.clusters}

        progress(f"starting nats-server (JetStream in {self.state_dir / 'jetstream'})")
        self.nats = NatsServer(self.state_dir / "jetstream", config.nats.host, config.nats.port)
        self.nats.log_path = self.logs / "nats-server.log"
        self.nats.start()
        self.supervisor.adopt(self.nats)

        progress(f"starting the Kubernetes API simulator ({', '.join(config.clusters)})")
        self._start_kubesim()

        sites = [
            f"{cluster}={spec.vip_pool[0]}={spec.site or cluster.upper()}"
            for cluster, spec in config.clusters.items()
            if spec.vip_pool
        ]
        progress("starting hello backends: " + ", ".join(s.split("=")[1] for s in sites))
        control_file = self.state_dir / "backends.url"
        control_file.unlink(missing_ok=True)
        # A fixed control port: a restarted backends process answers at the URL already
        # published in the state file.
        args = [sys.executable, "-m", "kgslb.backends", "--port", str(config.backends.port)]
        args += ["--control-port", str(free_port())]
        args += [a for host in config.backends.hosts for a in ("--host", host)]
        args += [a for site in sites for a in ("--site", site)]
        args += ["--control-file", str(control_file)]
        backends = ManagedProcess("backends", args, self.logs / "backends.log", _env({}))
        backends.start()
        self.supervisor.adopt(backends)
        self.backends_control = _wait_for_file(control_file, backends, 10)

        env = {"KGSLB_NATS_URL": self.nats.url}
        homes = home_clusters(config)
        for cluster in config.clusters:
            home = ["--home", "true"] if cluster in homes else []
            self._start_service(
                f"watcher-{cluster}",
                ["watcher", "--kubeconfig", str(self.kubeconfig), "--context", cluster, *home],
                env,
            )
        self._start_service("reconciler", ["reconciler"], env)
        self._start_service("health", ["health"], env)
        dns = config.dns
        self._start_service(
            "dns", ["dns", "--dns-host", dns.host, "--dns-port", str(dns.port)], env
        )
        progress("applying the seed manifests through the Kubernetes API")
        for cluster, docs in documents.items():
            apply_manifests(self.kubeconfig, cluster, docs)
        self._write_state()

    def _start_kubesim(self) -> None:
        from kubesim import KubeSim
        from kubesim.threaded import BackgroundKubeSim

        config = self.config
        sim = KubeSim(
            list(config.clusters),
            host=config.kube_api.host,
            vip_pools={c: spec.vip_pool for c, spec in config.clusters.items()},
            base_port=config.kube_api.port,
        )
        self.kubesim = BackgroundKubeSim(sim)
        self.kubesim.start()
        sim.write_kubeconfig(str(self.kubeconfig))

    def _start_service(self, name: str, args: list[str], env: dict[str, str]) -> None:
        port = free_port()
        self.ops_ports[name] = port
        process = service_process(name, args, self.logs, {**env, "KGSLB_OPS_PORT": str(port)})
        process.start()
        self.supervisor.adopt(process)

    def _write_state(self) -> None:
        assert self.nats is not None
        state = {
            "nats_url": self.nats.url,
            "kubeconfig": str(self.kubeconfig.resolve()),
            "backends_control": self.backends_control,
            "dns": f"{self.config.dns.host}:{self.config.dns.port}",
            "ops": {name: f"http://127.0.0.1:{port}" for name, port in self.ops_ports.items()},
            "supervisor_pid": os.getpid(),
            "children": self.supervisor.snapshot(),
        }
        write_json_atomically(self.state_dir / STATE_FILE, state)
        self._state_published = True

    def _publish_children(self) -> None:
        """Rewrite the state file on each exit and restart, once `start` has written it."""
        if self._state_published:
            self._write_state()

    def stop(self) -> None:
        """Every child, in reverse dependency order: the services (NATS clients, in parallel),
        the Kubernetes API simulator, then nats-server; each tier within the stop grace."""
        grace = self.config.supervision.stop_grace_seconds
        clients = [name for name in reversed(self.supervisor.names) if name != "nats-server"]
        self.supervisor.stop_together(clients, grace)
        if self.kubesim is not None:
            self.kubesim.stop()
        if self.nats is not None:
            self.supervisor.stop_together([self.nats.name], grace)
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def _wait_for_file(path: Path, process: ManagedProcess, timeout_seconds: float) -> str:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if not process.running:
            raise StartupError(f"{process.name} exited; its last lines:\n{process.tail()}")
        time.sleep(0.05)
    raise StartupError(f"{process.name} did not start in {timeout_seconds:.0f} s")


def summary(stack: Stack) -> str:
    config = stack.config
    assert stack.nats is not None
    dns = config.dns
    kube_ports = ", ".join(
        f"{c} :{config.kube_api.port + i}" if config.kube_api.port else c
        for i, c in enumerate(config.clusters)
    )
    backends = ", ".join(
        f"{c} http://{spec.vip_pool[0]}:{config.backends.port}/"
        for c, spec in config.clusters.items()
        if spec.vip_pool
    )
    ops = [f"{name} http://127.0.0.1:{port}/metrics" for name, port in stack.ops_ports.items()]
    kubectl = f"kubectl --kubeconfig {stack.kubeconfig}"
    lines = [
        "",
        "kgslb is up.",
        f"  DNS         {dns.host}:{dns.port} (udp+tcp), zone avi.iberia.local",
        f"  NATS        {stack.nats.url}",
        f"  Kubernetes  simulator ({kube_ports}); kubeconfig {stack.kubeconfig}",
        f"  backends    {backends}",
        f"              control {stack.backends_control}",
        *(f"  {'metrics' if i == 0 else '':<12}{line}" for i, line in enumerate(ops)),
        f"  logs        {stack.logs}",
        "",
        "Try:",
        f"  dig @{dns.host} -p {dns.port} hello.avi.iberia.local +short",
        f"  dig @{dns.host} -p {dns.port} avi.iberia.local SOA",
        f"  kgslb status --nats-url {stack.nats.url} --state-dir {stack.state_dir}",
        f"  kgslb check hello.avi.iberia.local --port {dns.port} --http-port "
        f"{config.backends.port} --nats-url {stack.nats.url}",
        f"  {kubectl} --context {config.home_cluster} get gdp -A",
        f"  {kubectl} --context {config.home_cluster} -n avi-system patch gdp global-gdp "
        '--type merge -p \'{"spec":{"trafficSplit":[{"cluster":"s1az1","weight":6},'
        '{"cluster":"s1az2","weight":3},{"cluster":"s2","weight":1}]}}\'',
        f"  kgslb backend stop s2 --state-dir {stack.state_dir}",
        "A process that exits is restarted (see `kgslb status`); Ctrl-C stops everything.",
    ]
    missing = [
        f"  note: `{tool}` is not installed (Debian package {package})"
        for tool, package in (("dig", "bind9-dnsutils"), ("dnsperf", "dnsperf"))
        if shutil.which(tool) is None
    ]
    return "\n".join(lines + missing)


def run_up(stack_file: Path, state_dir: Path) -> int:
    stop_requested = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    stack: Stack | None = None
    try:
        config = load_stack_config(stack_file)
        stack = Stack(config, state_dir)
        stack.start(progress=lambda line: print(f"… {line}", flush=True))

        def supervise() -> bool:
            assert stack is not None
            stack.supervisor.tick()
            return not stop_requested

        first = wait_for_answer(
            config.dns.host, config.dns.port, "hello.avi.iberia.local", 30, supervise
        )
        if stop_requested:
            return 0
        print(summary(stack), flush=True)
        print(f"\nfirst answer for hello.avi.iberia.local: {', '.join(first)}", flush=True)
        while supervise():
            time.sleep(0.2)
        return 0
    except StartupError as exc:
        print(f"kgslb up: {exc}", file=sys.stderr)
        return 2
    finally:
        if stack is not None:
            stack.stop()


def read_state(state_dir: Path) -> dict[str, Any]:
    path = state_dir / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except OSError:
        raise StartupError(f"no running `kgslb up` found ({path} is missing)") from None
    except json.JSONDecodeError as exc:
        raise StartupError(f"{path}: not the state of a `kgslb up`: {exc}") from None
    return state


def up_is_running(state: dict[str, Any]) -> bool:
    """False when the `kgslb up` that wrote `state` is gone (killed before it could clean up)."""
    pid = state.get("supervisor_pid")
    return isinstance(pid, int) and process_alive(pid)
