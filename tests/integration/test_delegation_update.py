"""Automatic delegation against a real BIND (`named`) as the parent zone `iberia.local`, on a
loopback address and an ephemeral port, that allows dynamic updates signed with a TSIG key:
a real reconciler over real NATS, given a GSLBConfig whose zone `avi.iberia.local` names the
parent's primary and the key, writes the zone's NS and glue into the parent (RFC 2136),
follows a change of the NS set, never touches the parent's other names, and reports a wrong
key in the GSLBConfig's status."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.zone
import pytest
from nats.aio.client import Client

from kgslb.embedded import free_port, wait_for_tcp
from kgslb.status import StatusSettings, show_status
from shared.models import DelegationState, PolicyStatus
from shared.policies import API_GROUP, API_VERSION
from tests.integration.conftest import Services, eventually
from tests.integration.test_reconciler_policies import (
    CONFIG,
    FAST_LEASE,
    SEED_CONFIG,
    metric,
    publish_policy,
    status_of,
)
from tests.integration.test_watcher import Kube, call, get_cr, kube, start_watcher

__all__ = ["kube"]  # the fixture, shared with test_watcher

NAMED = shutil.which("named") or ("/usr/sbin/named" if Path("/usr/sbin/named").exists() else None)
pytestmark = [
    pytest.mark.skipif(NAMED is None, reason="named not installed (Debian package `bind9`)"),
    pytest.mark.skipif(
        shutil.which("dig") is None, reason="dig not installed (Debian package `bind9-dnsutils`)"
    ),
]

PARENT = "iberia.local"
ZONE = "avi.iberia.local"
KEY_NAME = "kgslb-delegation"
SECRET = base64.b64encode(b"kgslb delegation test key, 32 b!").decode()
OTHER_SECRET = base64.b64encode(b"not the key the parent knows!!!!").decode()
PARENT_ZONE_FILE = f"""$TTL 3600
@       IN SOA ns.{PARENT}. hostmaster.{PARENT}. 1 3600 600 86400 60
@       IN NS  ns.{PARENT}.
ns      IN A   127.0.0.1
www     IN A   127.0.0.9
g-dns   IN A   127.0.0.1
"""
"""The company's zone: its own names (www, g-dns) must come out of every update untouched."""


class Parent:
    def __init__(self, directory: Path, port: int, process: subprocess.Popen[bytes]) -> None:
        self.directory = directory
        self.port = port
        self.process = process

    @property
    def primary(self) -> str:
        return f"127.0.0.1:{self.port}"

    def dig(self, name: str, rdtype: str) -> str:
        result = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(self.port), "+norecurse", "+tcp", name, rdtype],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return result.stdout

    def records(self) -> dict[tuple[str, str], set[str]]:
        """The whole parent zone (AXFR), by (owner, type): what the updates did to it."""
        transfer = dns.query.xfr("127.0.0.1", PARENT, port=self.port, timeout=5, relativize=False)
        zone = dns.zone.from_xfr(transfer, relativize=False)
        out: dict[tuple[str, str], set[str]] = {}
        for name, node in zone.nodes.items():
            owner = name.derelativize(zone.origin).to_text().rstrip(".")
            for rdataset in node.rdatasets:
                if rdataset.rdtype == dns.rdatatype.SOA:
                    continue
                key = (owner, dns.rdatatype.to_text(rdataset.rdtype))
                out[key] = {rdata.to_text() for rdata in rdataset}
        return out


@pytest.fixture
def parent(tmp_path: Path) -> Iterator[Parent]:
    assert NAMED is not None
    directory = tmp_path / "named"
    directory.mkdir()
    port = free_port()
    (directory / f"{PARENT}.db").write_text(PARENT_ZONE_FILE)
    (directory / "named.conf").write_text(
        f"""
key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{SECRET}"; }};
options {{
    directory "{directory}";
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    allow-transfer {{ 127.0.0.1; }};
}};
controls {{ }};
zone "{PARENT}" {{
    type primary;
    file "{directory}/{PARENT}.db";
    allow-update {{ key "{KEY_NAME}"; }};
}};
"""
    )
    log = (directory / "named.log").open("wb")
    process = subprocess.Popen(
        [NAMED, "-g", "-c", str(directory / "named.conf")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_tcp("127.0.0.1", port, 20, "named (the parent zone)")
        wait_for_zone(port)
        yield Parent(directory, port, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def wait_for_zone(port: int) -> None:
    """named listens before it has loaded the zone (SERVFAIL until then)."""
    query = dns.message.make_query(PARENT, "SOA")
    for _ in range(100):
        reply = dns.query.tcp(query, "127.0.0.1", port=port, timeout=2)
        if reply.rcode() == dns.rcode.NOERROR and reply.answer:
            return
        time.sleep(0.1)
    raise AssertionError(f"named did not load {PARENT}")


def secrets_dir(tmp_path: Path, secret: str) -> Path:
    """The Secret `parent-tsig` as its volume mounts it: one file per key."""
    directory = tmp_path / "tsig"
    (directory / "parent-tsig").mkdir(parents=True, exist_ok=True)
    (directory / "parent-tsig" / "secret").write_text(secret + "\n")
    return directory


def nameservers(*names: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"name": f"{name}.{ZONE}.", "glue": [ip]} for name, ip in names]


def config(
    parent: Parent, servers: list[dict[str, Any]], key_name: str = KEY_NAME
) -> dict[str, Any]:
    zone = {
        **SEED_CONFIG["zones"][0],
        "nameservers": servers,
        "delegation": {
            "primary": parent.primary,
            "tsigKey": {
                "name": key_name,
                "algorithm": "hmac-sha256",
                "secretRef": {"name": "parent-tsig", "key": "secret"},
            },
            "ttlSeconds": 300,
        },
    }
    return {**SEED_CONFIG, "homeClusters": [], "zones": [zone]}


def start_reconciler(services: Services, tsig: Path) -> None:
    services.start(
        "reconciler", "reconciler",
        env={**FAST_LEASE, "KGSLB_TSIG_SECRETS_DIR": str(tsig),
             "KGSLB_DELEGATION_CHECK_SECONDS": "1"},
    )  # fmt: skip


async def delegation_of(nc: Client) -> PolicyStatus | None:
    try:
        status = await status_of(nc, CONFIG)
    except Exception:
        return None
    return status if status.delegation else None


async def delegated(nc: Client, generation: int) -> bool:
    status = await delegation_of(nc)
    return (
        status is not None
        and status.observed_generation == generation
        and status.delegation[0].state == DelegationState.DELEGATED
    )


def parent_ns(parent: Parent) -> set[str]:
    return parent.records().get((ZONE, "NS"), set())


async def test_starting_kgslb_delegates_the_zone_and_follows_a_changed_ns_set(
    nats_client: Client,
    services: Services,
    parent: Parent,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = parent.records()
    start_reconciler(services, secrets_dir(tmp_path, SECRET))
    first = nameservers(("ns-s1", "127.0.0.11"), ("ns-s2", "127.0.0.12"))
    await publish_policy(nats_client, CONFIG, config(parent, first), generation=1)

    await eventually(lambda: delegated(nats_client, 1), timeout_seconds=40)
    held = parent.records()
    assert held[(ZONE, "NS")] == {f"ns-s1.{ZONE}.", f"ns-s2.{ZONE}."}
    assert held[(f"ns-s1.{ZONE}", "A")] == {"127.0.0.11"}
    assert held[(f"ns-s2.{ZONE}", "A")] == {"127.0.0.12"}
    # Nothing else of the parent changed: only the zone's NS and glue were added.
    added = {key for key in held if key not in before}
    assert added == {(ZONE, "NS"), (f"ns-s1.{ZONE}", "A"), (f"ns-s2.{ZONE}", "A")}
    assert all(held[key] == before[key] for key in before)
    # What a resolver sees: the referral, with the glue.
    answer = parent.dig(ZONE, "NS")
    assert f"ns-s1.{ZONE}." in answer and "127.0.0.12" in answer, answer
    status = await delegation_of(nats_client)
    assert status is not None
    assert status.delegation[0].message == (
        f"{PARENT} holds {ZONE} NS ns-s1.{ZONE}., ns-s2.{ZONE}.; "
        f"ns-s1.{ZONE} A 127.0.0.11; ns-s2.{ZONE} A 127.0.0.12"
    )
    assert status.delegation[0].parent == PARENT and status.delegation[0].server == parent.primary

    # ns-s2 goes, ns-s3 comes, ns-s1 moves to a new address.
    second = nameservers(("ns-s1", "127.0.0.21"), ("ns-s3", "127.0.0.13"))
    await publish_policy(nats_client, CONFIG, config(parent, second), generation=2)

    def moved() -> bool:
        return parent_ns(parent) == {f"ns-s1.{ZONE}.", f"ns-s3.{ZONE}."}

    await eventually(moved, timeout_seconds=40)
    await eventually(lambda: delegated(nats_client, 2), timeout_seconds=40)
    held = parent.records()
    assert held[(f"ns-s1.{ZONE}", "A")] == {"127.0.0.21"}
    assert held[(f"ns-s3.{ZONE}", "A")] == {"127.0.0.13"}
    assert (f"ns-s2.{ZONE}", "A") not in held  # the old glue went with its NS record
    assert all(held[key] == before[key] for key in before)
    answer = parent.dig(ZONE, "NS")
    assert f"ns-s3.{ZONE}." in answer and f"ns-s2.{ZONE}." not in answer, answer

    # `kgslb status` shows it too.
    monkeypatch.setenv("COLUMNS", "250")
    await show_status(StatusSettings(nats_url=services.nats.url))
    row = next(r for r in capsys.readouterr().out.splitlines() if r.strip().startswith(f"│ {ZONE}"))
    assert PARENT in row and parent.primary in row and "Delegated" in row, row


async def test_a_wrong_key_shows_up_in_the_gslbconfig_status(
    nats_client: Client, services: Services, parent: Parent, kube: Kube, tmp_path: Path
) -> None:
    """Through the real home watcher: the GSLBConfig custom resource in the home cluster (the
    Kubernetes simulator) carries the result in `status.delegation`."""
    tsig = secrets_dir(tmp_path, OTHER_SECRET)
    start_reconciler(services, tsig)
    start_watcher(services, kube, "s1az1", "--home", "true")
    servers = nameservers(("ns-s1", "127.0.0.11"))
    custom = kube.custom("s1az1")
    body = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "GSLBConfig",
        "metadata": {"name": "gc-1", "namespace": "default"},
        "spec": config(parent, servers),
    }
    await call(
        custom.create_namespaced_custom_object,
        API_GROUP, API_VERSION, "default", "gslbconfigs", body,
    )  # fmt: skip

    async def shown(state: str, reason: str = "") -> dict[str, Any] | None:
        obj = await get_cr(kube, "gslbconfigs", "gc-1")
        entries = (obj.get("status") or {}).get("delegation") or []
        if not entries or entries[0]["state"] != state:
            return None
        return entries[0] if entries[0]["message"].startswith(reason) else None

    # The parent knows the key's name, not this secret: BADSIG.
    entry = await eventually(lambda: shown("Failed", "BADSIG"), timeout_seconds=60)
    assert "rejected the signature" in entry["message"], entry
    assert entry["zone"] == ZONE and entry["parent"] == PARENT
    assert entry["server"] == parent.primary
    assert (ZONE, "NS") not in parent.records()
    assert await metric(services, "reconciler", "kgslb_reconciler_delegation_delegated") == 0

    async def edit(spec: dict[str, Any]) -> None:
        await call(
            custom.patch_namespaced_custom_object,
            API_GROUP, API_VERSION, "default", "gslbconfigs", "gc-1", {"spec": spec},
        )  # fmt: skip

    # A key name the parent does not know: BADKEY.
    await edit(config(parent, servers, key_name="unknown-key"))
    await eventually(lambda: shown("Failed", "BADKEY"), timeout_seconds=60)

    # The right key, and the right secret in the mounted Secret: delegated.
    (tsig / "parent-tsig" / "secret").write_text(SECRET)
    await edit(config(parent, servers))
    entry = await eventually(lambda: shown("Delegated"), timeout_seconds=60)
    assert entry["message"] == f"{PARENT} holds {ZONE} NS ns-s1.{ZONE}.; ns-s1.{ZONE} A 127.0.0.11"
    assert parent_ns(parent) == {f"ns-s1.{ZONE}."}
    assert await metric(services, "reconciler", "kgslb_reconciler_delegation_delegated") == 1
