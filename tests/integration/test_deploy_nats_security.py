"""The NATS hardening components of deploy/ run for real: an overlay with nats-tls,
nats-nkeys (and, for the three-node cluster, nats-route-tls) is rendered with `kubectl
kustomize`, and the nats-server of the rendered StatefulSet is started from the rendered
ConfigMap with the rendered environment, its volume mounts mapped to directories (the
Secrets' keys written as kubelet would), addresses moved to loopback ports. The kgslb
services' rendered environment (CA, nkey seed) then connects with nats-py."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nats.js.api import StreamConfig

from deploy.nats import generate_nkeys
from kgslb.embedded import ManagedProcess, StartupError, free_port, nats_server_binary, wait_for_tcp
from shared import bus
from shared.settings import NatsSettings
from tests.integration.conftest import eventually
from tests.unit.deploy_compose import named_in, of_kind_in, render_with

Manifest = dict[str, Any]
Secrets = dict[str, dict[str, str]]


# A throw-away PKI --------------------------------------------------------------------------------


class Ca:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            self._builder(self.name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def _builder(self, subject: x509.Name, key: ec.EllipticCurvePublicKey) -> Any:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )

    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def tls_secret(self, name: str, *usages: x509.ObjectIdentifier) -> dict[str, str]:
        """A cert-manager style Secret: tls.crt, tls.key, ca.crt; names for loopback and the
        in-cluster ones of the manifests."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.DNSName("nats.kgslb-system.svc"),
            x509.DNSName("*.nats-headless.kgslb-system.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        cert = (
            self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key())
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return {
            "tls.crt": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "tls.key": key_pem,
            "ca.crt": self.pem(),
        }


# A rendered pod, run locally ---------------------------------------------------------------------


@dataclass
class LocalPod:
    """One container of a rendered workload: each volume mount a directory under `root`."""

    docs: tuple[Manifest, ...]
    workload: Manifest
    container: str
    secrets: Secrets
    root: Path
    pod_name: str
    mounts: dict[str, Path] = field(default_factory=dict)

    def spec(self) -> Manifest:
        return dict(self.workload["spec"]["template"]["spec"])

    def container_spec(self) -> Manifest:
        return next(c for c in self.spec()["containers"] if c["name"] == self.container)

    def localize(self, text: str) -> str:
        """Every path under a mount point, moved to the mount's directory (one pass, so a
        directory under /tmp is not moved again by a mount at /tmp)."""
        if not self.mounts:
            return text
        mounts = "|".join(re.escape(m) for m in sorted(self.mounts, key=len, reverse=True))
        pattern = re.compile(rf"(?<![\w./-])({mounts})(?=/|[^\w.-]|$)")
        return pattern.sub(lambda m: str(self.mounts[m.group(1)]), text)

    def has_secret(self, name: str) -> bool:
        rendered = any(d["metadata"]["name"] == name for d in of_kind_in(self.docs, "Secret"))
        return rendered or name in self.secrets

    def secret(self, name: str) -> dict[str, str]:
        """A Secret the overlay generates (dev's passwords), else one the test created."""
        rendered = [d for d in of_kind_in(self.docs, "Secret") if d["metadata"]["name"] == name]
        if rendered:
            data = rendered[0].get("data", {})
            return {k: base64.b64decode(v).decode() for k, v in data.items()}
        return self.secrets[name]

    def volume_files(self, volume: Manifest) -> dict[str, str]:
        if "configMap" in volume:
            return dict(named_in(self.docs, "ConfigMap", volume["configMap"]["name"])["data"])
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            if volume["secret"].get("optional") and not self.has_secret(name):
                return {}  # as the kubelet mounts an optional Secret that does not exist
            data = self.secret(name)
            items = volume["secret"].get("items")
            if items is None:
                return dict(data)
            return {item["path"]: data[item["key"]] for item in items}
        return {}  # emptyDir, a volume claim: empty at start

    def materialize(self) -> LocalPod:
        volumes = {v["name"]: v for v in self.spec().get("volumes", [])}
        for claim in self.workload["spec"].get("volumeClaimTemplates", []):
            volumes[claim["metadata"]["name"]] = {"name": claim["metadata"]["name"]}
        mounts = self.container_spec().get("volumeMounts", [])
        for mount in mounts:
            self.mounts[mount["mountPath"]] = self.root / mount["name"]
        for mount in mounts:
            directory = self.mounts[mount["mountPath"]]
            directory.mkdir(parents=True, exist_ok=True)
            for name, content in self.volume_files(volumes[mount["name"]]).items():
                (directory / name).write_text(self.localize(content))
        return self

    def env(self) -> dict[str, str]:
        resolved: dict[str, str] = {}
        for entry in self.container_spec().get("env", []):
            if "value" in entry:
                resolved[entry["name"]] = self.localize(entry["value"])
                continue
            source = entry["valueFrom"]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                if ref.get("optional") and not self.has_secret(ref["name"]):
                    continue  # as the kubelet leaves out an optional Secret that does not exist
                resolved[entry["name"]] = self.secret(ref["name"])[ref["key"]]
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                data = named_in(self.docs, "ConfigMap", ref["name"])["data"]
                resolved[entry["name"]] = data[ref["key"]]
            elif "fieldRef" in source:
                assert source["fieldRef"]["fieldPath"] == "metadata.name"
                resolved[entry["name"]] = self.pod_name
        return resolved


def workload(docs: tuple[Manifest, ...], name: str) -> Manifest:
    matches = [
        d for d in of_kind_in(docs, "Deployment") + of_kind_in(docs, "StatefulSet")
        if d["metadata"]["name"] == name
    ]  # fmt: skip
    assert len(matches) == 1, name
    return matches[0]


@dataclass
class Ports:
    client: int = field(default_factory=free_port)
    monitor: int = field(default_factory=free_port)
    cluster: int = field(default_factory=free_port)


def start_nats(
    docs: tuple[Manifest, ...],
    secrets: Secrets,
    root: Path,
    pod_name: str,
    ports: Ports,
    routes: dict[str, Ports],
) -> ManagedProcess:
    """The rendered nats container as a local nats-server: the pod's addresses become
    loopback ports, `nats-N.nats-headless...` routes the local servers' route ports."""
    pod = LocalPod(docs, workload(docs, "nats"), "nats", secrets, root, pod_name).materialize()
    config_dir = pod.mounts["/etc/nats"]
    config = config_dir / "nats.conf"
    text = config.read_text()
    text = text.replace("0.0.0.0:4222", f"127.0.0.1:{ports.client}")
    text = text.replace("0.0.0.0:8222", f"127.0.0.1:{ports.monitor}")
    text = text.replace("0.0.0.0:6222", f"127.0.0.1:{ports.cluster}")
    for peer, peer_ports in routes.items():
        text = text.replace(
            f"nats://{peer}.nats-headless.kgslb-system.svc:6222",
            f"nats://127.0.0.1:{peer_ports.cluster}",
        )
    config.write_text(text)
    server = ManagedProcess(
        pod_name, [nats_server_binary(), "--config", str(config)], root / "nats.log", pod.env()
    )
    server.start()
    try:
        wait_for_tcp("127.0.0.1", ports.client, 15, pod_name)
    except StartupError:
        server.stop()
        raise StartupError(f"{pod_name} did not start:\n{server.tail()}") from None
    return server


def service_settings(
    docs: tuple[Manifest, ...], name: str, secrets: Secrets, root: Path, url: str
) -> NatsSettings:
    """A kgslb Deployment's NATS settings as its pod would read them, pointed at `url`."""
    pod = LocalPod(docs, workload(docs, name), name.removeprefix("kgslb-"), secrets, root, name)
    env = pod.materialize().env()
    fields = {
        key.removeprefix("KGSLB_").lower(): value
        for key, value in env.items()
        if key.startswith("KGSLB_NATS_")
    }
    return NatsSettings.model_validate({**fields, "nats_url": url})


def secrets_for(server_ca: Ca, routes_ca: Ca) -> Secrets:
    pairs = generate_nkeys.generate()
    secrets: Secrets = {
        str(s["metadata"]["name"]): dict(s["stringData"])  # type: ignore[index, call-overload]
        for s in generate_nkeys.secrets(pairs)
    }
    secrets["nats-tls"] = server_ca.tls_secret("nats", ExtendedKeyUsageOID.SERVER_AUTH)
    secrets["nats-tls-ca"] = {"ca.crt": server_ca.pem()}
    secrets["nats-routes-tls"] = routes_ca.tls_secret(
        "nats-routes", ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    )
    return secrets


@pytest.fixture
def servers() -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for server in started:
        server.stop()


# The tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "combination",
    [
        (overlay, components)
        for overlay in ("dev", "home-cluster", "sites/s1az1", "sites/s2")
        for components in ((), ("nats-tls", "nats-nkeys"))
        + ((("nats-tls", "nats-route-tls", "nats-nkeys"),) if overlay != "dev" else ())
    ],
    ids=lambda c: "+".join((c[0], *c[1])),
)
def test_nats_server_accepts_the_rendered_configuration(
    combination: tuple[str, tuple[str, ...]], tmp_path: Path
) -> None:
    """`nats-server -t`: the configuration parses, every file it includes is in the ConfigMap,
    every $VARIABLE is in the container's environment, the certificates load."""
    overlay, components = combination
    docs = render_with(overlay, *components)
    secrets = secrets_for(Ca("kgslb test CA"), Ca("kgslb routes CA"))
    secrets["kgslb-nats-auth"] = {u: f"{u}-pw" for u in generate_nkeys.USERS}
    pod = LocalPod(docs, workload(docs, "nats"), "nats", secrets, tmp_path, "nats-0").materialize()
    result = subprocess.run(
        [nats_server_binary(), "-t", "--config", str(pod.mounts["/etc/nats"] / "nats.conf")],
        capture_output=True, text=True, timeout=60, env=pod.env(),
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout + result.stderr


async def test_the_dev_overlay_with_tls_and_nkeys_serves_the_services_rendered_settings(
    tmp_path: Path, servers: list[ManagedProcess]
) -> None:
    docs = render_with("dev", "nats-tls", "nats-nkeys")
    secrets = secrets_for(Ca("kgslb test CA"), Ca("kgslb routes CA"))
    ports = Ports()
    servers.append(start_nats(docs, secrets, tmp_path / "nats-0", "nats-0", ports, {}))
    url = f"nats://127.0.0.1:{ports.client}"

    reconciler = service_settings(docs, "kgslb-reconciler", secrets, tmp_path / "rec", url)
    dns = service_settings(docs, "kgslb-dns", secrets, tmp_path / "dns", url)
    assert reconciler.nats_user is None and reconciler.nats_password is None
    assert reconciler.nats_tls_ca and reconciler.nats_nkey_seed

    nc = await bus.connect(reconciler, "kgslb-test-reconciler")
    try:
        await bus.bootstrap(nc.jetstream())
    finally:
        await nc.drain()
    nc = await bus.connect(dns, "kgslb-test-dns")
    try:
        info = await nc.jetstream().stream_info("KV_kgslb_zones")
        assert info.config.name == "KV_kgslb_zones"
    finally:
        await nc.drain()


async def test_the_dev_overlay_with_tls_and_nkeys_refuses_plain_and_anonymous_clients(
    tmp_path: Path, servers: list[ManagedProcess]
) -> None:
    docs = render_with("dev", "nats-tls", "nats-nkeys")
    secrets = secrets_for(Ca("kgslb test CA"), Ca("kgslb routes CA"))
    ports = Ports()
    servers.append(start_nats(docs, secrets, tmp_path / "nats-0", "nats-0", ports, {}))
    url = f"nats://127.0.0.1:{ports.client}"
    dns = service_settings(docs, "kgslb-dns", secrets, tmp_path / "dns", url)
    anonymous = dns.model_copy(update={"nats_nkey_seed": None})
    plain = dns.model_copy(update={"nats_tls_ca": None})

    async def connect(settings: NatsSettings) -> None:
        nc = await nats.connect(
            url,
            allow_reconnect=False,
            connect_timeout=3,
            max_reconnect_attempts=0,
            nkeys_seed=settings.nats_nkey_seed,
            tls=bus.tls_context(settings),
        )
        await nc.close()

    await connect(dns)  # the rendered settings themselves get in
    for settings in (anonymous, plain):
        # nats-py raises a TLS error, a timeout or an authorization error, by what is missing.
        with pytest.raises(Exception):  # noqa: B017
            await connect(settings)


async def jetstream_cluster_formed(monitor_ports: list[int]) -> bool:
    async with httpx.AsyncClient(timeout=2) as http:
        for port in monitor_ports:
            health = await http.get(f"http://127.0.0.1:{port}/healthz")
            jsz = (await http.get(f"http://127.0.0.1:{port}/jsz")).json()
            meta = jsz.get("meta_cluster", {})
            if health.status_code != 200 or not meta.get("leader"):
                return False
            if len(meta.get("replicas", [])) != len(monitor_ports) - 1:
                return False
    return True


async def test_the_three_node_cluster_authenticates_its_routes_by_certificate(
    tmp_path: Path, servers: list[ManagedProcess]
) -> None:
    docs = render_with("home-cluster", "nats-tls", "nats-route-tls", "nats-nkeys")
    secrets = secrets_for(Ca("kgslb test CA"), Ca("kgslb routes CA"))
    assert named_in(docs, "StatefulSet", "nats")["spec"]["replicas"] == 3
    nodes = {f"nats-{i}": Ports() for i in range(3)}
    for name, ports in nodes.items():
        servers.append(start_nats(docs, secrets, tmp_path / name, name, ports, nodes))

    await eventually(
        lambda: jetstream_cluster_formed([p.monitor for p in nodes.values()]),
        timeout_seconds=60,
        interval_seconds=0.5,
    )
    url = f"nats://127.0.0.1:{nodes['nats-1'].client}"
    reconciler = service_settings(docs, "kgslb-reconciler", secrets, tmp_path / "rec", url)
    nc = await bus.connect(reconciler, "kgslb-test-reconciler")
    try:
        stream = await nc.jetstream().add_stream(
            StreamConfig(name="KGSLB_EVENTS", subjects=["kgslb.events.>"], num_replicas=3)
        )
        assert stream.cluster is not None
        assert len(stream.cluster.replicas or []) == 2
    finally:
        await nc.drain()

    # A server whose route certificate comes from another CA is not let in.
    rogue_secrets = {**secrets, "nats-routes-tls": Ca("rogue CA").tls_secret(
        "rogue", ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    )}  # fmt: skip
    rogue_ports = Ports()
    rogue = start_nats(docs, rogue_secrets, tmp_path / "rogue", "nats-3", rogue_ports, nodes)
    servers.append(rogue)

    def refused() -> bool:
        logs = rogue.log_path.read_text(errors="replace") + "".join(
            s.log_path.read_text(errors="replace") for s in servers[:3]
        )
        return re.search(r"(?i)tls.*(handshake|certificate|unknown authority)", logs) is not None

    await eventually(refused, timeout_seconds=30, interval_seconds=0.5)
    async with httpx.AsyncClient(timeout=2) as http:
        routez = (await http.get(f"http://127.0.0.1:{rogue_ports.monitor}/routez")).json()
    assert routez["num_routes"] == 0
