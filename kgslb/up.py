"""`kgslb up`: the whole system on one machine, on embedded defaults.

Starts a JetStream nats-server, the reconciler, health and DNS services, then feeds the
GSLBConfig, the GlobalDeploymentPolicies and the observed `hello` Ingresses of the stack file
through the same NATS subjects the watchers use. Ctrl-C or SIGTERM stops every process.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kgslb.embedded import (
    ManagedProcess,
    NatsServer,
    StartupError,
    port_in_use,
    service_process,
)
from shared import bus, wire
from shared.models import (
    ObjectKind,
    ObjectRef,
    ObservedObject,
    PolicyKind,
    PolicyObject,
    PolicyRef,
    SyncMarker,
)
from shared.settings import NatsSettings
from shared.subjects import sync_subject

DEFAULT_STACK_FILE = Path("examples/seed/kgslb.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Listen(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)


class NamedPolicy(_Strict):
    name: str
    namespace: str = "avi-system"
    spec: dict[str, Any]


class ClusterSpec(_Strict):
    vip_pool: list[str] = Field(default_factory=list, alias="vipPool")
    site: str = ""


class ObservedSeed(_Strict):
    cluster: str
    kind: ObjectKind
    namespace: str = "default"
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    hosts: list[str] = Field(default_factory=list)
    vips: list[str] = Field(default_factory=list)


class StackConfig(_Strict):
    dns: Listen = Field(default_factory=lambda: Listen(port=1053))
    nats: Listen = Field(default_factory=lambda: Listen(port=4222))
    gslb_config: NamedPolicy | None = Field(default=None, alias="gslbConfig")
    global_deployment_policies: list[NamedPolicy] = Field(
        default_factory=list, alias="globalDeploymentPolicies"
    )
    host_rules: list[NamedPolicy] = Field(default_factory=list, alias="gslbHostRules")
    clusters: dict[str, ClusterSpec] = Field(default_factory=dict)
    observed: list[ObservedSeed] = Field(default_factory=list)


def load_stack_config(path: Path) -> StackConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise StartupError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise StartupError(f"{path}: not valid YAML: {exc}") from None
    try:
        return StackConfig.model_validate(raw or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise StartupError(f"{path}: {where}: {err['msg']}") from None


def seed_messages(config: StackConfig) -> list[tuple[str, wire.WireModel]]:
    """The policies and observed objects of a stack file, as (subject, message)."""
    messages: list[tuple[str, wire.WireModel]] = []
    policies: list[tuple[PolicyKind, NamedPolicy]] = []
    if config.gslb_config is not None:
        policies.append((PolicyKind.GSLB_CONFIG, config.gslb_config))
    policies += [
        (PolicyKind.GLOBAL_DEPLOYMENT_POLICY, p) for p in config.global_deployment_policies
    ]
    policies += [(PolicyKind.GSLB_HOST_RULE, p) for p in config.host_rules]
    for kind, policy in policies:
        ref = PolicyRef(kind=kind, namespace=policy.namespace, name=policy.name)
        messages.append((ref.subject, PolicyObject(ref=ref, spec=policy.spec)))
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


async def publish_seed(nats_url: str, config: StackConfig) -> int:
    nc = await bus.connect(NatsSettings(nats_url=nats_url), "kgslb-up-seed")
    try:
        js = nc.jetstream()
        await bus.bootstrap(js)
        messages = seed_messages(config)
        for subject, message in messages:
            await js.publish(subject, wire.encode(message))
        return len(messages)
    finally:
        await nc.drain()


def wait_for_answer(host: str, port: int, qname: str, timeout_seconds: float) -> list[str]:
    import dns.message
    import dns.query
    import dns.rdatatype

    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
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
    """The running processes of `kgslb up`."""

    def __init__(self, config: StackConfig, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.nats: NatsServer | None = None
        self.services: dict[str, ManagedProcess] = {}

    def check_ports(self) -> None:
        dns, nats = self.config.dns, self.config.nats
        busy = [
            f"{what} {host}:{port}"
            for what, host, port, udp in (
                ("dns (udp)", dns.host, dns.port, True),
                ("dns (tcp)", dns.host, dns.port, False),
                ("nats", nats.host, nats.port, False),
            )
            if port and port_in_use(host, port, udp)
        ]
        if busy:
            raise StartupError(f"port already in use: {', '.join(busy)}")

    def start(self, progress: Any = print) -> None:
        self.check_ports()
        logs = self.state_dir / "logs"
        progress(f"starting nats-server (JetStream in {self.state_dir / 'jetstream'})")
        self.nats = NatsServer(
            self.state_dir / "jetstream", self.config.nats.host, self.config.nats.port
        )
        self.nats.log_path = logs / "nats-server.log"
        self.nats.start()
        env = {"KGSLB_NATS_URL": self.nats.url}
        dns = self.config.dns
        for name, args in (
            ("reconciler", ["reconciler"]),
            ("health", ["health"]),
            ("dns", ["dns", "--dns-host", dns.host, "--dns-port", str(dns.port)]),
        ):
            progress(f"starting {name}")
            process = service_process(name, args, logs, env)
            process.start()
            self.services[name] = process
        progress("feeding policies and observed objects")
        asyncio.run(publish_seed(self.nats.url, self.config))

    def check_alive(self) -> None:
        for name, process in self.services.items():
            if not process.running:
                raise StartupError(f"{name} exited:\n{process.tail()}")

    def stop(self) -> None:
        for process in reversed(list(self.services.values())):
            process.stop()
        if self.nats is not None:
            self.nats.stop()


def run_up(stack_file: Path, state_dir: Path) -> int:
    config = load_stack_config(stack_file)
    stack = Stack(config, state_dir)
    stop_requested = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        stack.start(progress=lambda line: print(f"… {line}", flush=True))
        dns = config.dns
        first = wait_for_answer(dns.host, dns.port, "hello.avi.iberia.local", 30)
        assert stack.nats is not None
        print(
            "\nkgslb is up.\n"
            f"  DNS         {dns.host}:{dns.port} (udp+tcp), zone avi.iberia.local\n"
            f"  NATS        {stack.nats.url}  (nats sub 'kgslb.>' -s {stack.nats.url})\n"
            f"  logs        {state_dir / 'logs'}\n"
            f"  first answer for hello.avi.iberia.local: {', '.join(first)}\n\n"
            "Try:\n"
            f"  dig @{dns.host} -p {dns.port} hello.avi.iberia.local +short\n"
            f"  dig @{dns.host} -p {dns.port} avi.iberia.local SOA\n"
            f"  kgslb status --nats-url {stack.nats.url}\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while not stop_requested:
            stack.check_alive()
            time.sleep(0.5)
        return 0
    except StartupError as exc:
        print(f"kgslb up: {exc}", file=sys.stderr)
        return 2
    finally:
        stack.stop()
