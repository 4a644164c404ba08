"""`kgslb up`: the seed's whole topology on one machine, on embedded defaults.

Starts JetStream, the Kubernetes API simulator with the member clusters, one watcher per
cluster, the reconciler, the health and DNS services, and a hello backend per site on its
loopback VIP; then applies the seed's manifests (GSLBConfig, global-gdp, the hello
Deployment/Service/Ingress in each cluster) through the Kubernetes API, exactly as a user would
with kubectl. Every child is supervised like a pod's containers: one that exits is restarted
with back-off (`kgslb.supervisor`), and its restarts are published in the state file for
`kgslb status`. Only Ctrl-C or SIGTERM stops the stack.

Two layouts. A single site (the stack file's top-level `dns` and `nats`): one nats-server and
one of each service. A site layout (every cluster with its own `dns` and `nats`): each cluster
is a site with its own nats-server, routed into one JetStream cluster, and its own DNS, health,
reconciler and watcher, which talk only to their site's server; `kgslb site fail|restore`
(the control endpoint, `kgslb.control`) takes one site down and brings it back.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kgslb.backends import control_site
from kgslb.control import ACTIONS, ControlError, ControlServer
from kgslb.embedded import (
    ManagedProcess,
    NatsServer,
    StartupError,
    free_port,
    port_in_use,
    service_process,
    site_nats_config,
    wait_for_tcp,
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


class SiteNats(Listen):
    """A site's nats-server: clients on `host:port`, the other sites' servers on
    `host:routePort`."""

    route_port: int = Field(
        default=0, ge=0, le=65535, alias="routePort", description="0 picks a free port"
    )


class ClusterSpec(_Strict):
    vip_pool: list[str] = Field(default_factory=list, alias="vipPool")
    site: str = Field(default="", description="the hello page's site name (SITE1 AZ1)")
    apply: list[str] = Field(default_factory=list, description="manifests, relative to the file")
    dns: Listen | None = Field(
        default=None,
        description="a site layout: this site's DNS; its host is the address of ns-<cluster>.<zone>",
    )
    nats: SiteNats | None = Field(default=None, description="a site layout: this site's NATS")


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

    @property
    def sites(self) -> list[str]:
        """The clusters that are sites, in file order: all of them in a site layout, none
        in a single-site stack."""
        return [cluster for cluster, spec in self.clusters.items() if spec.dns is not None]


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
        # Every kind listed: the reconciler plans names once each cluster's first list is in.
        marker = SyncMarker(cluster=cluster, kinds=list(ObjectKind), present=shorts)
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
    problem = site_layout_problem(config)
    if problem:
        raise StartupError(f"{path}: {problem}")
    _derive(config)
    return config


DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,59}[a-z0-9])?$")
"""A cluster name that can be the `<cluster>` of its site's name server `ns-<cluster>`."""


def site_layout_problem(config: StackConfig) -> str:
    """What is wrong with the stack file's site layout, in one line naming the field; empty
    when it is a consistent single site or site layout."""
    with_dns = {c for c, spec in config.clusters.items() if spec.dns is not None}
    with_nats = {c for c, spec in config.clusters.items() if spec.nats is not None}
    if not with_dns and not with_nats:
        return ""
    for cluster in config.clusters:
        for field, having in (("dns", with_dns), ("nats", with_nats)):
            if cluster not in having:
                return (
                    f"clusters.{cluster}.{field}: missing; a site layout gives every cluster "
                    f"its own dns and nats ({', '.join(sorted(having))} have {field})"
                )
    for field in ("dns", "nats"):
        if field in config.model_fields_set:
            return (
                f"{field}: a site layout (clusters.*.{field}) gives each site its own; "
                f"remove the top-level {field}"
            )
    seen: dict[tuple[str, int], str] = {}
    for cluster, spec in config.clusters.items():
        assert spec.dns is not None and spec.nats is not None
        if not DNS_LABEL.match(cluster):
            return (
                f"clusters.{cluster}: a site's cluster name is the label of its name server "
                f"ns-{cluster}.<zone>: lower-case letters, digits and '-', at most 61"
            )
        try:
            ipaddress.ip_address(spec.dns.host)
        except ValueError:
            return (
                f"clusters.{cluster}.dns.host: {spec.dns.host!r} is not an IP address (it is "
                f"the address of ns-{cluster}.<zone>)"
            )
        wanted = [
            (f"clusters.{cluster}.dns", spec.dns.host, spec.dns.port),
            (f"clusters.{cluster}.nats.port", spec.nats.host, spec.nats.port),
            (f"clusters.{cluster}.nats.routePort", spec.nats.host, spec.nats.route_port),
        ]
        for where, host, port in wanted:
            if port == 0:
                continue
            if (host, port) in seen:
                return f"{where}: {host}:{port} is also {seen[host, port]}"
            seen[host, port] = where
    return ""


def manifests(config: StackConfig, stack_file: Path, cluster: str) -> list[dict[str, Any]]:
    """The objects to apply in one cluster, in file order, their monitors on the backends'
    port and, in a site layout, the zones' name servers one per site."""
    documents: list[dict[str, Any]] = []
    for name in config.clusters[cluster].apply:
        path = stack_file.parent / name
        try:
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
        except (OSError, yaml.YAMLError) as exc:
            raise StartupError(f"{stack_file}: clusters.{cluster}.apply: {path}: {exc}") from None
    documents = monitors_follow_backends(documents, config.backends.port)
    glue = {site: spec.dns.host for site, spec in config.clusters.items() if spec.dns is not None}
    return nameservers_follow_sites(documents, glue)


def nameservers_follow_sites(
    documents: list[dict[str, Any]], glue: dict[str, str]
) -> list[dict[str, Any]]:
    """The manifests with the NS set of every GSLBConfig zone naming one server per site:
    `ns-<cluster>.<zone>.`, and an A (or AAAA) record in the zone giving it the site's DNS
    address (`glue`: cluster -> address, in site order; empty: a single site, nothing
    changes).

    This is how a delegating resolver learns every site and fails over between them by
    itself, as with k8gb. The name servers are inside the zone, so the zone itself must
    answer their addresses (a resolver asks when its glue expires); the same records are
    the glue of every NS answer. The seed's GSLBConfig names the one g-dns of a single site;
    a site layout replaces that set and leaves the SOA as written (identical on every site,
    so its serial is too)."""
    if not glue:
        return documents
    out: list[dict[str, Any]] = []
    for document in documents:
        spec = document.get("spec") or {}
        zones = spec.get("zones")
        if document.get("kind") != "GSLBConfig" or not isinstance(zones, list):
            out.append(document)
            continue
        document = copy.deepcopy(document)
        for zone in document["spec"]["zones"]:
            if not isinstance(zone, dict) or not isinstance(zone.get("name"), str):
                continue
            apex = zone["name"].rstrip(".")
            labels = {f"ns-{cluster}" for cluster in glue}
            kept = [
                record
                for record in zone.get("records") or []
                if not (isinstance(record, dict) and record.get("name") in labels)
            ]
            zone["nameservers"] = [{"name": f"ns-{cluster}.{apex}."} for cluster in glue]
            zone["records"] = kept + [
                {"name": f"ns-{cluster}", "type": _address_type(address), "value": address}
                for cluster, address in glue.items()
            ]
        out.append(document)
    return out


def _address_type(address: str) -> str:
    return "AAAA" if ipaddress.ip_address(address).version == 6 else "A"


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


@dataclass(frozen=True, slots=True)
class Site:
    """Where one site's parts listen, every port 0 of the stack file resolved."""

    cluster: str
    dns: Listen
    nats: SiteNats

    @property
    def nats_url(self) -> str:
        return f"nats://{self.nats.host}:{self.nats.port}"


def resolve_sites(config: StackConfig) -> list[Site]:
    """The stack file's sites with a free port wherever it says 0 (a port fixed now: each
    nats-server's routes name the others', and a restarted child comes back on its own)."""
    sites = []
    for cluster in config.sites:
        spec = config.clusters[cluster]
        assert spec.dns is not None and spec.nats is not None
        dns = spec.dns.model_copy(update={"port": spec.dns.port or free_port(spec.dns.host)})
        nats = spec.nats.model_copy(
            update={
                "port": spec.nats.port or free_port(spec.nats.host),
                "route_port": spec.nats.route_port or free_port(spec.nats.host),
            }
        )
        sites.append(Site(cluster, dns, nats))
    return sites


def home_flags(config: StackConfig, cluster: str) -> list[str]:
    """The watcher flags of `cluster`'s home role: every possible home cluster's watcher also
    watches the kgslb custom resources (the active one publishes them, the others keep
    copies and take over when the active home is lost)."""
    return ["--home", "true"] if cluster in home_clusters(config) else []


def stream_replicas(sites: int) -> int:
    """A replica per site, at most three (R3 survives the loss of any one site)."""
    return max(1, min(sites, 3))


def prepare_jetstream(url: str, replicas: int, timeout_seconds: float) -> None:
    """Wait until the JetStream cluster behind `url` has elected its meta leader (servers
    routed over the sites take a few seconds), then create kgslb's streams and buckets with
    `replicas` each. Twelve services starting at once against a fresh cluster would race to
    create them, and a stream just created on one server can be missing for a moment on
    another: each loser would fail its start once and be restarted."""
    import asyncio

    import nats

    from shared import bus

    async def quiet(_: Exception) -> None:
        """nats-py prints every failed attempt otherwise."""

    async def prepare() -> None:
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                client = await nats.connect(
                    url, connect_timeout=1, allow_reconnect=False, error_cb=quiet
                )
                try:
                    await client.jetstream().account_info()
                    await bus.bootstrap(client.jetstream(), replicas)
                    return
                finally:
                    await client.close()
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise StartupError(
                        f"JetStream at {url} not ready in {timeout_seconds:g} s: {exc!r}"
                    ) from None
                await asyncio.sleep(0.25)

    asyncio.run(prepare())


QUERYFILE = "queryfile.txt"
"""dnsperf's input (`dnsperf -d .kgslb/queryfile.txt`), written at every start."""


def write_queryfile(path: Path, documents: dict[str, list[dict[str, Any]]]) -> None:
    """One `NAME A` line per host of the stack's Ingresses (the GSLB names), for dnsperf."""
    hosts = sorted(
        {
            rule["host"]
            for docs in documents.values()
            for document in docs
            if document.get("kind") == "Ingress"
            for rule in (document.get("spec") or {}).get("rules") or []
            if isinstance(rule, dict) and rule.get("host")
        }
    )
    path.write_text("".join(f"{host} A\n" for host in hosts or ["hello.avi.iberia.local"]))


def _seed_digest(documents: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(documents, sort_keys=True).encode()).hexdigest()


def remember_seed(kubesim_dir: Path, cluster: str, documents: list[dict[str, Any]]) -> None:
    """Which manifests made the saved objects (see `seed_changed`)."""
    kubesim_dir.mkdir(parents=True, exist_ok=True)
    (kubesim_dir / f"{cluster}.seed.sha256").write_text(_seed_digest(documents) + "\n")


def seed_changed(
    kubesim_dir: Path, documents: dict[str, list[dict[str, Any]]], restored: dict[str, int]
) -> list[str]:
    """The restored clusters whose stack-file manifests differ from those applied then."""
    changed = []
    for cluster in restored:
        path = kubesim_dir / f"{cluster}.seed.sha256"
        with contextlib.suppress(OSError):
            if path.read_text().strip() == _seed_digest(documents.get(cluster, [])):
                continue
        changed.append(cluster)
    return changed


class Stack:
    """The running parts of `kgslb up`."""

    def __init__(self, config: StackConfig, state_dir: Path, clean: bool = False) -> None:
        self.config = config
        self.state_dir = state_dir
        self.clean = clean
        self.kubesim_dir = state_dir / "kubesim"
        self.logs = state_dir / "logs"
        self.kubeconfig = state_dir / "kubeconfig"
        self.sites = resolve_sites(config)
        self.nats_servers: list[NatsServer] = []
        """The single nats-server, or one per site in site order."""
        self.kubesim: Any = None
        self.ops_ports: dict[str, int] = {}
        self.backends_control = ""
        self.control: ControlServer | None = None
        self.supervisor = Supervisor(
            config.supervision.restart_policy,
            report=lambda line: print(f"kgslb up: {line}", flush=True),
            on_change=self._publish_children,
        )
        self._state_published = False

    @property
    def nats_url(self) -> str:
        """The first site's server (the only one in a single site)."""
        return self.nats_servers[0].url

    @property
    def dns_addresses(self) -> list[tuple[str, int]]:
        if self.sites:
            return [(site.dns.host, site.dns.port) for site in self.sites]
        return [(self.config.dns.host, self.config.dns.port)]

    def check_ports(self) -> None:
        config = self.config
        wanted = []
        for site in self.sites:
            wanted += [
                (f"dns {site.cluster} (udp)", site.dns.host, site.dns.port, True),
                (f"dns {site.cluster} (tcp)", site.dns.host, site.dns.port, False),
                (f"nats {site.cluster}", site.nats.host, site.nats.port, False),
                (f"nats routes {site.cluster}", site.nats.host, site.nats.route_port, False),
            ]
        if not self.sites:
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
        if self.clean:
            progress(
                f"starting afresh (--clean): removing the saved Kubernetes objects "
                f"({self.kubesim_dir}) and the JetStream store ({self.state_dir / 'jetstream'})"
            )
            for kept in (self.kubesim_dir, self.state_dir / "jetstream"):
                shutil.rmtree(kept, ignore_errors=True)
        write_queryfile(self.state_dir / QUERYFILE, documents)

        if self.sites:
            self._start_site_nats(progress)
        else:
            progress(f"starting nats-server (JetStream in {self.state_dir / 'jetstream'})")
            nats = NatsServer(self.state_dir / "jetstream", config.nats.host, config.nats.port)
            nats.log_path = self.logs / "nats-server.log"
            nats.start()
            self.supervisor.adopt(nats)
            self.nats_servers.append(nats)

        progress(f"starting the Kubernetes API simulator ({', '.join(config.clusters)})")
        self._start_kubesim()
        restored: dict[str, int] = self.kubesim.sim.restored
        if restored:
            progress(
                f"the Kubernetes objects of the last run are back ({sum(restored.values())} "
                f"objects from {self.kubesim_dir}; kubectl changes kept, the stack file's "
                "manifests not applied again): `kgslb up --clean` starts from the seed"
            )
            if changed := seed_changed(self.kubesim_dir, documents, restored):
                progress(
                    f"note: the manifests of {', '.join(changed)} changed since those objects "
                    "were saved; `kgslb up --clean` applies them"
                )
        else:
            progress(
                f"the Kubernetes simulator keeps its objects in {self.kubesim_dir} across runs "
                "(`kgslb up --clean` starts afresh)"
            )

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

        if self.sites:
            replicas = str(stream_replicas(len(self.sites)))
            for site in self.sites:
                progress(f"starting site {site.cluster}: watcher, reconciler, health, dns")
                env = {"KGSLB_NATS_URL": site.nats_url, "KGSLB_STREAM_REPLICAS": replicas}
                self._start_services(site.cluster, [site.cluster], site.dns, env)
            self.control = ControlServer()
            self.control.start()
        else:
            env = {"KGSLB_NATS_URL": self.nats_url}
            self._start_services("", list(config.clusters), config.dns, env)
        fresh = {c: docs for c, docs in documents.items() if c not in restored}
        if fresh:
            progress("applying the seed manifests through the Kubernetes API")
        for cluster, docs in fresh.items():
            apply_manifests(self.kubeconfig, cluster, docs)
            remember_seed(self.kubesim_dir, cluster, docs)
        self._write_state()

    def _start_site_nats(self, progress: Callable[[str], None]) -> None:
        """One nats-server per site, routed into one JetStream cluster; each with its own
        store, as each site has its own disks."""
        progress(
            f"starting {len(self.sites)} nats-servers, one per site, as one JetStream cluster "
            f"(stores in {self.state_dir / 'jetstream'})"
        )
        for site in self.sites:
            routes = [
                f"nats://{other.nats.host}:{other.nats.route_port}"
                for other in self.sites
                if other is not site
            ]
            config_file = self.state_dir / f"nats-{site.cluster}.conf"
            config_file.write_text(
                site_nats_config(site.cluster, site.nats.host, site.nats.route_port, routes)
            )
            name = f"nats-server-{site.cluster}"
            server = NatsServer(
                self.state_dir / "jetstream" / site.cluster,
                site.nats.host,
                site.nats.port,
                config=config_file,
                name=name,
            )
            server.log_path = self.logs / f"{name}.log"
            # Spawned together: a server alone has no JetStream until its peers route in.
            server.spawn()
            self.supervisor.adopt(server, site=site.cluster)
            self.nats_servers.append(server)
        for server in self.nats_servers:
            server.wait_listening()
        prepare_jetstream(self.nats_url, stream_replicas(len(self.sites)), 30)

    def _start_services(
        self, site: str, watched: list[str], dns: Listen, env: dict[str, str]
    ) -> None:
        """The watchers of `watched`, a reconciler, a health and a DNS, all on `env`'s NATS;
        in a site layout named after their site (`dns-s1az1`), the health replica probing from
        that site (`--site`: one vantage point of the DNS's quorum)."""
        suffix = f"-{site}" if site else ""
        for cluster in watched:
            self._start_service(
                f"watcher-{cluster}",
                ["watcher", "--kubeconfig", str(self.kubeconfig), "--context", cluster,
                 *home_flags(self.config, cluster)],
                env,
                site,
            )  # fmt: skip
        self._start_service(f"reconciler{suffix}", ["reconciler"], env, site)
        vantage = ["--site", site] if site else []
        self._start_service(f"health{suffix}", ["health", *vantage], env, site)
        self._start_service(
            f"dns{suffix}",
            ["dns", "--dns-host", dns.host, "--dns-port", str(dns.port)],
            env,
            site,
        )

    def _start_kubesim(self) -> None:
        from kubesim import KubeSim
        from kubesim.threaded import BackgroundKubeSim

        config = self.config
        try:
            sim = KubeSim(
                list(config.clusters),
                host=config.kube_api.host,
                vip_pools={c: spec.vip_pool for c, spec in config.clusters.items()},
                base_port=config.kube_api.port,
                state_dir=self.kubesim_dir,
            )
        except ValueError as exc:  # a saved cluster that cannot be read back
            raise StartupError(str(exc)) from None
        self.kubesim = BackgroundKubeSim(sim)
        self.kubesim.start()
        sim.write_kubeconfig(str(self.kubeconfig))

    def _dnssec_secret_file(self) -> Path:
        """The secret the DNSSEC private keys are encrypted with in NATS, made once per state
        directory (a Kubernetes Secret in a deployment) and readable only by its owner."""
        path = self.state_dir / "dnssec-key-secret"
        if not path.exists():
            from shared.dnssec import new_secret

            path.touch(mode=0o600)
            path.write_text(new_secret() + "\n")
        return path

    def _start_service(self, name: str, args: list[str], env: dict[str, str], site: str) -> None:
        port = free_port()
        self.ops_ports[name] = port
        env = {**env, "KGSLB_DNSSEC_KEY_SECRET_FILE": str(self._dnssec_secret_file())}
        process = service_process(name, args, self.logs, {**env, "KGSLB_OPS_PORT": str(port)})
        process.start()
        self.supervisor.adopt(process, site=site)

    # Sites down and back (`kgslb site fail|restore`) ---------------------------------------

    def serve_control(self) -> None:
        """Carry out the `kgslb site` requests that came in since the last call."""
        if self.control is not None:
            self.control.serve_pending(self._control_request)

    def _control_request(self, path: tuple[str, ...]) -> dict[str, Any]:
        if path == ("sites",):
            return {
                "sites": {site.cluster: self._site_children(site.cluster) for site in self.sites}
            }
        _, cluster, action = path
        if action not in ACTIONS:
            raise ControlError(
                HTTPStatus.BAD_REQUEST,
                f"action {action!r} is not one of {', '.join(ACTIONS)}",
            )
        if cluster not in self.config.sites:
            raise ControlError(
                HTTPStatus.NOT_FOUND,
                f"no site {cluster!r} (sites: {', '.join(self.config.sites)})",
            )
        if action == "restore":
            done = self.restore_site(cluster)
        else:
            done = self.fail_site(cluster, cut=action == "cut")
        for line in done:
            print(f"kgslb up: site {cluster} {action}: {line}", flush=True)
        return {"site": cluster, "action": action, "done": done}

    def _site_children(self, cluster: str) -> dict[str, str]:
        records = self.supervisor.records
        return {name: records[name].state.value for name in self.supervisor.site_names(cluster)}

    def fail_site(self, cluster: str, cut: bool) -> list[str]:
        """Stop the site's parts at once: its processes killed, its cluster's API server and
        its hello backend down. `cut`: only its nats-server and its API, the rest left
        running with no way to the other sites, as behind a network cut."""
        names = self.supervisor.site_names(cluster)
        if cut:
            names = [name for name in names if name.startswith("nats-server")]
        done = [
            f"killed {name} (pid {pid})" if pid else f"{name} was not running"
            for name, pid in self.supervisor.kill_and_hold(names)
        ]
        url = self.kubesim.sim.url(cluster)
        if self.kubesim.sim.serving(cluster):
            self.kubesim.stop_cluster(cluster)
            done.append(f"stopped the Kubernetes API of {cluster} ({url})")
        else:
            done.append(f"the Kubernetes API of {cluster} was not running ({url})")
        if not cut:
            done += self._hello_backend(cluster, "stop")
        return done

    def restore_site(self, cluster: str) -> list[str]:
        """Start whatever of the site is stopped: its nats-server first (the others wait for
        it to listen), its API server, its hello backend, then its services."""
        names = self.supervisor.site_names(cluster)
        servers = [name for name in names if name.startswith("nats-server")]
        resumed = self.supervisor.resume(servers)
        for server in self.nats_servers:
            if server.name in servers and server.running:
                wait_for_tcp(server.host, server.port, 10, server.name)
        url = self.kubesim.sim.url(cluster)
        if self.kubesim.sim.serving(cluster):
            api = [f"the Kubernetes API of {cluster} is running ({url})"]
        else:
            self.kubesim.start_cluster(cluster)
            api = [f"started the Kubernetes API of {cluster} ({url})"]
        backend = self._hello_backend(cluster, "start")
        resumed += self.supervisor.resume(name for name in names if name not in servers)
        started = [
            f"started {name} (pid {pid})"
            if pid
            else f"{name} is running (pid {self.supervisor.pid(name)})"
            for name, pid in resumed
        ]
        return started[: len(servers)] + api + backend + started[len(servers) :]

    def _hello_backend(self, cluster: str, action: str) -> list[str]:
        spec = self.config.clusters[cluster]
        if not spec.vip_pool:
            return []
        address = f"http://{spec.vip_pool[0]}:{self.config.backends.port}/"
        try:
            control_site(self.backends_control, cluster, action)
        except (OSError, RuntimeError) as exc:
            return [f"could not {action} the hello backend of {cluster} ({address}): {exc}"]
        verb = "stopped" if action == "stop" else "started"
        return [f"{verb} the hello backend of {cluster} ({address})"]

    # State file and stop --------------------------------------------------------------------

    def _write_state(self) -> None:
        dns_host, dns_port = self.dns_addresses[0]
        state: dict[str, Any] = {
            "nats_url": self.nats_url,
            "kubeconfig": str(self.kubeconfig.resolve()),
            "backends_control": self.backends_control,
            "dns": f"{dns_host}:{dns_port}",
            "ops": {name: f"http://127.0.0.1:{port}" for name, port in self.ops_ports.items()},
            "supervisor_pid": os.getpid(),
            "children": self.supervisor.snapshot(),
        }
        if self.control is not None:
            state["control"] = self.control.url
            state["sites"] = {
                site.cluster: {
                    "dns": f"{site.dns.host}:{site.dns.port}",
                    "nats_url": site.nats_url,
                    "kube_api": self.kubesim.sim.url(site.cluster),
                }
                for site in self.sites
            }
        write_json_atomically(self.state_dir / STATE_FILE, state)
        self._state_published = True

    def _publish_children(self) -> None:
        """Rewrite the state file on each exit and restart, once `start` has written it."""
        if self._state_published:
            self._write_state()

    def stop(self) -> None:
        """Every child, in reverse dependency order: the services (NATS clients, in parallel),
        the Kubernetes API simulator, then the nats-servers; each tier within the stop
        grace."""
        if self.control is not None:
            self.control.stop()
        grace = self.config.supervision.stop_grace_seconds
        servers = {server.name for server in self.nats_servers}
        clients = [name for name in reversed(self.supervisor.names) if name not in servers]
        self.supervisor.stop_together(clients, grace)
        if self.kubesim is not None:
            self.kubesim.stop()
        self.supervisor.stop_together([server.name for server in self.nats_servers], grace)
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
    dns_host, dns_port = stack.dns_addresses[0]
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
    kubectl = f"{command_hint('kubectl')} --kubeconfig {stack.kubeconfig}"
    kgslb = command_hint("kgslb")
    if stack.sites:
        where = [
            f"  {'sites' if i == 0 else '':<12}{site.cluster:<7} DNS {site.dns.host}:"
            f"{site.dns.port} (ns-{site.cluster}), NATS {site.nats_url}"
            for i, site in enumerate(stack.sites)
        ] + [
            f"  {'':<12}one JetStream cluster, a replica per site; each site's services use "
            "only their own site's server",
            f"  control     {stack.control.url if stack.control else ''} (kgslb site)",
        ]
    else:
        where = [
            f"  DNS         {dns_host}:{dns_port} (udp+tcp), zone avi.iberia.local",
            f"  NATS        {stack.nats_url}",
        ]
    lines = [
        "",
        f"kgslb is up{f' as {len(stack.sites)} sites' if stack.sites else ''}.",
        *where,
        f"  Kubernetes  simulator ({kube_ports}); kubeconfig {stack.kubeconfig}",
        f"  backends    {backends}",
        f"              control {stack.backends_control}",
        *(f"  {'metrics' if i == 0 else '':<12}{line}" for i, line in enumerate(ops)),
        f"  logs        {stack.logs}",
        "",
        "Try:",
        f"  dig @{dns_host} -p {dns_port} hello.avi.iberia.local +short",
        f"  dig @{dns_host} -p {dns_port} avi.iberia.local SOA",
        *(
            [f"  dig @{dns_host} -p {dns_port} avi.iberia.local NS    (a name server per site)"]
            if stack.sites
            else []
        ),
        f"  dig @{dns_host} -p {dns_port} hello.avi.iberia.local +dnssec    (signed: RRSIG)",
        f"  {kgslb} dnssec ds avi.iberia.local --nats-url {stack.nats_url}    (the DS for the parent)",
        f"  {kgslb} status --nats-url {stack.nats_url} --state-dir {stack.state_dir}",
        f"  {kgslb} check hello.avi.iberia.local --server {dns_host} --port {dns_port} "
        f"--http-port {config.backends.port} --nats-url {stack.nats_url}",
        f"  {kubectl} --context {config.home_cluster} get gdp -A",
        f"  {kubectl} --context {config.home_cluster} -n avi-system patch gdp global-gdp "
        '--type merge -p \'{"spec":{"trafficSplit":[{"cluster":"s1az1","weight":6},'
        '{"cluster":"s1az2","weight":3},{"cluster":"s2","weight":1}]}}\'',
        f"  {kgslb} backend stop s2 --state-dir {stack.state_dir}",
        *(
            [
                f"  {kgslb} site fail {stack.sites[0].cluster} --state-dir {stack.state_dir}"
                f"    (then: kgslb site restore {stack.sites[0].cluster})"
            ]
            if stack.sites
            else []
        ),
        *(
            [
                f"  dnsperf -d {stack.state_dir / QUERYFILE} -s {dns_host} -p {dns_port} -n 5000 -Q 100"
            ]
            if shutil.which("dnsperf")
            else []
        ),
        "A process that exits is restarted (see `kgslb status`); Ctrl-C stops everything.",
        f"The Kubernetes objects are kept in {stack.kubesim_dir} for the next `kgslb up` "
        "(`kgslb up --clean` starts from the seed).",
    ]
    missing = [
        f"  note: `{tool}` is not installed (Debian package {package})"
        for tool, package in (("dig", "bind9-dnsutils"), ("dnsperf", "dnsperf"))
        if shutil.which(tool) is None
    ]
    return "\n".join(lines + missing)


def command_hint(tool: str) -> str:
    """How to run `tool` from here: its bare name when the shell finds this install's, else
    the path of the one beside this Python (`.venv/bin/kgslb`), relative when below the
    current directory, so every hint `kgslb up` prints runs as written."""
    beside = Path(sys.executable).parent / tool
    if not beside.exists():
        return tool
    found = shutil.which(tool)
    if found is not None and Path(found).resolve() == beside.resolve():
        return tool
    with contextlib.suppress(ValueError):
        return str(beside.absolute().relative_to(Path.cwd()))
    return str(beside.absolute())


def waiting(what: str) -> contextlib.AbstractContextManager[object]:
    """A spinner saying `what`, on a terminal; nothing otherwise (a
    log file or a test reads plain lines)."""
    if not sys.stdout.isatty():
        return contextlib.nullcontext()
    from rich.console import Console

    return Console().status(f"{what} ...", spinner="dots")


def run_up(stack_file: Path, state_dir: Path, clean: bool = False) -> int:
    stop_requested = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    stack: Stack | None = None
    try:
        config = load_stack_config(stack_file)
        stack = Stack(config, state_dir, clean)
        stack.start(progress=lambda line: print(f"… {line}", flush=True))

        def supervise() -> bool:
            assert stack is not None
            stack.supervisor.tick()
            stack.serve_control()
            return not stop_requested

        first: list[str] = []
        with waiting("waiting for the first DNS answer for hello.avi.iberia.local"):
            for host, port in stack.dns_addresses:
                first = first or wait_for_answer(
                    host, port, "hello.avi.iberia.local", 30, supervise
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
