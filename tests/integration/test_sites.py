"""The seed as three sites under a real `kgslb up`: every site's DNS answers the whole zone
with the same serial and names every site in its NS set; `kgslb site fail` takes one whole
site down and the other two keep answering from their own state; `kgslb site restore` brings
it back; a resolver that knows the three sites sees no failure while one goes.

One stack for the module (it takes ~20 s to start); every test starts and ends with all three
sites serving. Times to withdraw and rejoin, and the stack's memory, are printed (`-s`)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import httpx
import nats
import pytest
import yaml
from kubernetes.client import CustomObjectsApi
from kubernetes.config import new_client_from_config

from kgslb.embedded import free_port, port_in_use
from shared.policies import API_GROUP, API_VERSION, COPY_OF_ANNOTATION
from tests.integration.test_up import SEED, wait_for_line
from tests.integration.unbound import UNBOUND, write_config
from tests.integration.unbound import start as start_unbound

T = TypeVar("T")
HELLO = "hello.avi.iberia.local"
ZONE = "avi.iberia.local"
VIPS = {"s1az1": "127.10.25.46", "s1az2": "127.10.26.40", "s2": "127.10.23.40"}
DNS_HOSTS = {"s1az1": "127.0.0.1", "s1az2": "127.0.0.2", "s2": "127.0.0.3"}
SEED_SPLIT = {"s1az1": 6, "s1az2": 4, "s2": 2}
FAST_MONITOR = {"intervalSeconds": 0.5, "timeoutSeconds": 0.4, "successesToUp": 2,
                "failuresToDown": 2}  # fmt: skip
WITHDRAW_BOUND_SECONDS = FAST_MONITOR["failuresToDown"] * FAST_MONITOR["intervalSeconds"] + 2
"""Issue 18's bound, from the moment `kgslb site fail` returns (its last act stops the site's
backend): every surviving site's health replica sees the member fail, and its verdict reaches
every surviving DNS on core NATS, without waiting for the election of a new leader of a
stream whose leader was on the lost site (subjects.HEALTH_LIVE_PREFIX)."""


def shared_dns_port() -> int:
    """A port free on the three site addresses at once (a resolver reaches every name server
    of the NS set on one port)."""
    for _ in range(50):
        port = free_port()
        if not any(
            port_in_use(host, port, udp) for host in DNS_HOSTS.values() for udp in (True, False)
        ):
            return port
    raise RuntimeError("no port free on 127.0.0.1-3")


def site_stack_file(directory: Path, dns_port: int) -> Path:
    """The seed's three sites on free ports, with a fast health monitor."""
    config = yaml.safe_load(SEED.read_text())
    config["kubeApi"]["port"] = 0
    config["backends"]["port"] = free_port()
    for cluster, spec in config["clusters"].items():
        spec["apply"] = [str(SEED.parent / name) for name in spec["apply"]]
        spec["dns"] = {"host": DNS_HOSTS[cluster], "port": dns_port}
        spec["nats"] = {"host": "127.0.0.1", "port": 0, "routePort": 0}
    documents = list(yaml.safe_load_all((SEED.parent / "global-gdp.yaml").read_text()))
    documents[-1]["spec"]["healthMonitorTemplate"] = {
        **FAST_MONITOR, "port": config["backends"]["port"]
    }  # fmt: skip
    gdp = directory / "global-gdp.yaml"
    gdp.write_text(yaml.safe_dump_all(documents))
    home = config["clusters"][config["homeCluster"]]
    home["apply"] = [str(gdp) if n.endswith("global-gdp.yaml") else n for n in home["apply"]]
    path = directory / "stack.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class SiteStack:
    process: subprocess.Popen[str]
    state_dir: Path
    dns_port: int
    backends_port: int

    @property
    def state(self) -> dict[str, Any]:
        published: dict[str, Any] = json.loads((self.state_dir / "stack.json").read_text())
        return published

    def site(self, action: str, cluster: str, *flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kgslb", "site", action, cluster, *flags,
             "--state-dir", str(self.state_dir)],
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip

    @property
    def kubeconfig(self) -> Path:
        return Path(self.state["kubeconfig"])

    def pid(self, name: str) -> int | None:
        pid: int | None = self.state["children"][name]["pid"]
        return pid


def query(host: str, port: int, name: str = HELLO, rdtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), host, port=port, timeout=1)


def split(cluster: str, port: int, queries: int = 12) -> Counter[str]:
    """Which sites' members one site's DNS answers, over one cycle of the weights (12 for the
    seed's 6:4:2)."""
    by_vip = {vip: site for site, vip in VIPS.items()}
    answers = Counter[str]()
    for _ in range(queries):
        reply = query(DNS_HOSTS[cluster], port)
        answers.update(by_vip[rr.address] for rrset in reply.answer for rr in rrset)
    return answers


def split_or_none(cluster: str, port: int, queries: int = 12) -> Counter[str] | None:
    try:
        return split(cluster, port, queries)
    except dns.exception.DNSException:
        return None


def wait_for(
    check: Any, timeout_seconds: float, what: str, explain: Callable[[], str] | None = None
) -> float:
    """Seconds until `check()` held; fails naming `what` after `timeout_seconds`, with what
    `explain()` says about the state then."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_seconds:
        if check():
            return time.monotonic() - started
        time.sleep(0.2)
    detail = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"{what}: not within {timeout_seconds:g} s{detail}")


def health_views(stack: SiteStack) -> str:
    """Every running DNS's view of the vantage points and their verdicts (its metrics)."""
    lines = []
    for name, url in sorted(stack.state["ops"].items()):
        if not name.startswith("dns-"):
            continue
        try:
            text = httpx.get(f"{url}/metrics", timeout=2).text
        except httpx.HTTPError as exc:
            lines.append(f"{name}: {exc!r}")
            continue
        lines += [f"{name}: {line}" for line in text.splitlines()
                  if line.startswith("kgslb_dns_health_")]  # fmt: skip
    return "\n".join(lines)


def every_site_answers_the_seed_split(port: int) -> bool:
    return all(split_or_none(cluster, port) == SEED_SPLIT for cluster in DNS_HOSTS)


def rss_and_pss_mb(pids: list[int]) -> tuple[float, float]:
    """Resident memory of `pids` summed, and their proportional share (shared pages counted
    once overall), in MB."""
    rss = pss = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss / 1024, pss / 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteStack]:
    directory = tmp_path_factory.mktemp("sites")
    dns_port = shared_dns_port()
    path = site_stack_file(directory, dns_port)
    process = subprocess.Popen(
        [sys.executable, "-m", "kgslb", "up", "-c", str(path), "--state-dir",
         str(directory / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_line(process, "Ctrl-C", 60)
        running = SiteStack(
            process,
            directory / "state",
            dns_port,
            yaml.safe_load(path.read_text())["backends"]["port"],
        )
        wait_for(lambda: every_site_answers_the_seed_split(dns_port), 30, "6:4:2 on every site")
        children = [int(pid) for pid in subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(process.pid)], capture_output=True, text=True
        ).stdout.split()]  # fmt: skip
        rss, pss = rss_and_pss_mb([process.pid, *children])
        print(f"\nthree-site stack: {len(children)} children + up, RSS {rss:.0f} MB "
              f"(PSS {pss:.0f} MB)")  # fmt: skip
        yield running
    finally:
        process.send_signal(2)
        process.wait(60)


@pytest.fixture
def sites(stack: SiteStack) -> Iterator[SiteStack]:
    """The stack with all three sites serving the seed's split, every service ready and every
    DNS counting every site's health replica (a restored site's replica is ready once its
    verdicts are written), before the test; all three sites serving again after it."""
    wait_for(lambda: every_site_answers_the_seed_split(stack.dns_port), 60, "6:4:2 everywhere")
    wait_for(lambda: every_service_ready(stack), 60, "every service ready")
    wait_for(lambda: every_dns_counts_every_vantage(stack), 30, "every vantage point counted",
             lambda: health_views(stack))  # fmt: skip
    yield stack
    stopped = {c["site"] for c in stack.state["children"].values() if c["state"] == "stopped"}
    for cluster in stopped:
        stack.site("restore", cluster)
    wait_for(lambda: every_site_answers_the_seed_split(stack.dns_port), 60, "6:4:2 everywhere")
    wait_for(lambda: every_service_ready(stack), 60, "every service ready")


def every_dns_counts_every_vantage(stack: SiteStack) -> bool:
    """Every DNS hears every site's health replica, and each verdict it holds is vouched for
    by a live replica: the steady state the withdraw bound starts from."""
    for name, url in stack.state["ops"].items():
        if not name.startswith("dns-"):
            continue
        try:
            text = httpx.get(f"{url}/metrics", timeout=2).text
        except httpx.HTTPError:
            return False
        live = re.findall(r'^kgslb_dns_health_vantage_live\{vantage="([^"]*)"\} 1\.0$', text, re.M)
        stale = re.findall(r'^kgslb_dns_health_verdicts\{[^}]*fresh="false"[^}]*\} ([0-9.]+)$',
                           text, re.M)  # fmt: skip
        if set(live) != set(DNS_HOSTS) or any(float(count) for count in stale):
            return False
    return True


def every_service_ready(stack: SiteStack) -> bool:
    for url in stack.state["ops"].values():
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code != 200:
                return False
        except httpx.HTTPError:
            return False
    return True


KILLED = re.compile(r"^(\S+): killed (\S+) \(pid (\d+)\)$")


def test_every_sites_dns_answers_the_seed_split_and_the_same_soa_serial(
    sites: SiteStack,
) -> None:
    serials = {
        cluster: query(host, sites.dns_port, ZONE, "SOA").answer[0][0].serial
        for cluster, host in DNS_HOSTS.items()
    }

    assert {cluster: split(cluster, sites.dns_port) for cluster in DNS_HOSTS} == dict.fromkeys(
        DNS_HOSTS, SEED_SPLIT
    )
    assert len(set(serials.values())) == 1, serials


def test_the_ns_set_names_one_server_per_site_with_its_address(sites: SiteStack) -> None:
    replies = {
        cluster: query(host, sites.dns_port, ZONE, "NS") for cluster, host in DNS_HOSTS.items()
    }
    address = query("127.0.0.1", sites.dns_port, f"ns-s1az2.{ZONE}", "A")

    for reply in replies.values():
        assert reply.flags & dns.flags.AA
        assert sorted(rr.target.to_text() for rr in reply.answer[0]) == [
            f"ns-{cluster}.{ZONE}." for cluster in sorted(DNS_HOSTS)
        ]
        glue = {rrset.name.to_text(): rrset[0].address for rrset in reply.additional}
        assert glue == {f"ns-{cluster}.{ZONE}.": host for cluster, host in DNS_HOSTS.items()}
    assert address.flags & dns.flags.AA
    assert [rr.address for rr in address.answer[0]] == ["127.0.0.2"]


@pytest.mark.parametrize("failed", list(DNS_HOSTS))
def test_a_failed_site_goes_dark_and_the_others_answer_from_the_surviving_sites(
    sites: SiteStack, failed: str
) -> None:
    survivors = [cluster for cluster in DNS_HOSTS if cluster != failed]
    vip = VIPS[failed]
    api = sites.state["sites"][failed]["kube_api"]
    started = time.monotonic()
    result = sites.site("fail", failed)
    killed = {m[2]: int(m[3]) for m in map(KILLED.match, result.stdout.splitlines()) if m}

    assert result.returncode == 0, result.stderr
    assert set(killed) == {f"{part}-{failed}" for part in
                           ("nats-server", "watcher", "reconciler", "health", "dns")}  # fmt: skip
    assert f"{failed}: stopped the Kubernetes API of {failed} ({api})" in result.stdout
    assert (
        f"{failed}: stopped the hello backend of {failed} "
        f"(http://{vip}:{sites.backends_port}/)" in result.stdout
    )
    assert [pid for pid in killed.values() if Path(f"/proc/{pid}").exists()] == []
    assert {name: sites.pid(name) for name in killed} == dict.fromkeys(killed)
    with pytest.raises(dns.exception.DNSException):
        query(DNS_HOSTS[failed], sites.dns_port)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{api}/version", timeout=2)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{vip}:{sites.backends_port}/", timeout=2)

    # The policy's ratio between the survivors, over one whole cycle of their weights.
    expected = {c: SEED_SPLIT[c] for c in survivors}
    cycle = sum(expected.values())
    withdrawn = wait_for(
        lambda: all(
            split_or_none(cluster, sites.dns_port, cycle) == expected for cluster in survivors
        ),
        WITHDRAW_BOUND_SECONDS,
        f"{failed} withdrawn by the surviving sites",
        lambda: health_views(sites),
    )
    print(f"\n{failed} withdrawn by {' and '.join(survivors)} "
          f"{time.monotonic() - started:.1f} s after `kgslb site fail` began "
          f"({withdrawn:.1f} s after it returned)")  # fmt: skip


@pytest.mark.parametrize("failed", list(DNS_HOSTS))
def test_a_restored_site_starts_again_and_every_site_answers_it_again(
    sites: SiteStack, failed: str
) -> None:
    survivors = {c: SEED_SPLIT[c] for c in DNS_HOSTS if c != failed}
    witness = next(iter(survivors))
    assert sites.site("fail", failed).returncode == 0
    # Not the withdraw bound of the test above: the previous test's restored site may still
    # be starting its health replica, which counts as a vantage point once it heartbeats.
    withdrawn = wait_for(
        lambda: split_or_none(witness, sites.dns_port, sum(survivors.values())) == survivors,
        30,
        f"{failed} withdrawn",
    )
    print(f"\n{failed} withdrawn {withdrawn:.1f} s after `kgslb site fail` returned")

    started = time.monotonic()
    result = sites.site("restore", failed)
    rejoined = wait_for(
        lambda: every_site_answers_the_seed_split(sites.dns_port), 60, "6:4:2 on every site"
    )
    nats_url = sites.state["sites"][failed]["nats_url"]
    # Read through the restored site's own server, which may still be catching up: a stale
    # write would stay, so the buckets must come to equal a fresh plan.
    deadline = time.monotonic() + 20
    while True:
        kv, fresh = retrying(lambda: asyncio.run(kv_and_a_fresh_plan(nats_url)))
        if kv == fresh or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(f"{failed}: started nats-server-{failed} (pid ")
    assert [line.split(" (")[0] for line in result.stdout.splitlines()[1:]] == [
        f"{failed}: started the Kubernetes API of {failed}",
        f"{failed}: started the hello backend of {failed}",
        f"{failed}: started watcher-{failed}",
        f"{failed}: started reconciler-{failed}",
        f"{failed}: started health-{failed}",
        f"{failed}: started dns-{failed}",
    ]
    assert all(sites.pid(f"{part}-{failed}") for part in ("dns", "health", "reconciler", "watcher"))
    assert kv == fresh, "no stale state: the buckets hold exactly what a fresh plan decides"
    print(f"\n{failed} answered again by all three sites {time.monotonic() - started:.1f} s "
          f"after `kgslb site restore` began ({rejoined:.1f} s after it returned)")  # fmt: skip


async def kv_and_a_fresh_plan(
    nats_url: str,
) -> tuple[dict[str, dict[str, bytes]], dict[str, dict[str, bytes]]]:
    """The services and zones buckets as they are, and as a reconciler starting now would plan
    them from the events stream (read through `nats_url`, the restored site's own server)."""
    from services.reconciler.plan import Planner
    from services.reconciler.service import EVENT_KINDS
    from shared import bus, subjects, wire
    from shared.follow import read_values

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        events = [
            message
            for pattern in subjects.EVENTS_STREAM_SUBJECTS
            for message in await bus.read_last_per_subject(js, subjects.STREAM_EVENTS, pattern)
        ]
        planner = Planner()
        for message in sorted(events, key=lambda m: m.metadata.sequence.stream):
            planner.apply(wire.decode_any(message.data, EVENT_KINDS))
        planner.replan()
        fresh = {
            subjects.KV_SERVICES: {
                subjects.fqdn_key(fqdn): wire.encode(service)
                for fqdn, service in planner.services.items()
            },
            subjects.KV_ZONES: {
                subjects.fqdn_key(zone): wire.encode(spec)
                for zone, spec in planner.policies.zones.items()
            },
        }
        kv = {bucket: await read_values(js, bucket) for bucket in fresh}
    finally:
        await nc.close()
    return kv, fresh


def test_after_the_home_fails_over_an_edit_in_the_next_home_reaches_every_surviving_site(
    sites: SiteStack,
) -> None:
    """s1az1 holds the policy; when it goes, s1az2 (next in homeClusters) becomes the active
    home after homeFailoverSeconds, and a `kubectl --context s1az2` edit there takes effect."""
    gdps = CustomObjectsApi(new_client_from_config(str(sites.kubeconfig), context="s1az2"))

    def edit_split(weights: dict[str, int]) -> None:
        body = {"spec": {"trafficSplit": [{"cluster": c, "weight": w} for c, w in
                                          weights.items()]}}  # fmt: skip
        gdps.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, "avi-system", "globaldeploymentpolicies", "global-gdp", body
        )

    def s1az2_is_the_active_home() -> bool:
        gdp = gdps.get_namespaced_custom_object(
            API_GROUP, API_VERSION, "avi-system", "globaldeploymentpolicies", "global-gdp"
        )
        annotations = gdp["metadata"].get("annotations") or {}
        return COPY_OF_ANNOTATION not in annotations

    # An earlier test's failure of s1az1 may have moved the home already: start from s1az1
    # (once the reconciler leader has decided a home: a stack just started may not have yet).
    nats_url = sites.state["sites"]["s1az2"]["nats_url"]
    wait_for(lambda: asyncio.run(decided(nats_url)), 30, "a reconciler leader and a home")
    activated = subprocess.run(
        [sys.executable, "-m", "kgslb", "home", "--activate", "s1az1", "--nats-url", nats_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert activated.returncode == 0, activated.stdout + activated.stderr
    wait_for(lambda: not s1az2_is_the_active_home(), 30, "s1az2 keeping a copy again")

    failed_at = time.monotonic()
    assert sites.site("fail", "s1az1").returncode == 0
    try:
        active = wait_for(s1az2_is_the_active_home, 60, "s1az2 active home")
        edited_at = time.monotonic()
        edit_split({"s1az1": 6, "s1az2": 1, "s2": 3})
        reached = wait_for(
            lambda: all(
                split_or_none(cluster, sites.dns_port, 4) == {"s1az2": 1, "s2": 3}
                for cluster in ("s1az2", "s2")
            ),
            30,
            "the edit made in s1az2 answered by s1az2 and s2",
        )
    finally:
        edit_split(SEED_SPLIT)
    print(f"\nhome failover to s1az2 {active:.1f} s after `kgslb site fail s1az1` returned; "
          f"the edit answered by both surviving sites {reached:.1f} s after it was made "
          f"({edited_at - failed_at + reached:.1f} s after the failure began)")  # fmt: skip


def test_a_cut_site_keeps_answering_its_last_state_and_its_services_keep_running(
    sites: SiteStack,
) -> None:
    before = {name: sites.pid(name) for name in ("dns-s2", "health-s2", "watcher-s2")}
    backend = [sys.executable, "-m", "kgslb", "backend", "--state-dir", str(sites.state_dir)]

    result = sites.site("fail", "s2", "--cut")
    try:
        # A change the other sites see: s1az1's backend goes.
        subprocess.run([*backend, "stop", "s1az1"], check=True, capture_output=True)
        wait_for(
            lambda: split_or_none("s1az2", sites.dns_port) == {"s1az2": 8, "s2": 4},
            WITHDRAW_BOUND_SECONDS,
            "s1az1 withdrawn by s1az2",
            lambda: health_views(sites),
        )
        cut_off = split("s2", sites.dns_port)
        running = {name: sites.pid(name) for name in before}
    finally:
        subprocess.run([*backend, "start", "s1az1"], check=True, capture_output=True)
        restored = sites.site("restore", "s2")

    assert result.returncode == 0, result.stderr
    assert [line.split(" (")[0] for line in result.stdout.splitlines()] == [
        "s2: killed nats-server-s2",
        "s2: stopped the Kubernetes API of s2",
    ]
    assert cut_off == SEED_SPLIT, "cut off from the others, s2 answers from its last state"
    assert running == before
    assert restored.stdout.splitlines()[0].startswith("s2: started nats-server-s2 (pid ")
    assert f"s2: dns-s2 is running (pid {before['dns-s2']})" in restored.stdout


async def leader_and_revisions(nats_url: str) -> tuple[str, dict[str, int]]:
    """The reconciler lease's holder, and the revision of every key of the buckets the leader
    writes (fence markers included)."""
    from shared import subjects, wire
    from shared.models import Lease

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        lease = await (await js.key_value(subjects.KV_LEASES)).get(subjects.RECONCILER_LEASE_KEY)
        holder = wire.decode(lease.value or b"", Lease).holder
        revisions: dict[str, int] = {}
        for bucket in (subjects.KV_SERVICES, subjects.KV_ZONES):
            info = await js.stream_info(f"KV_{bucket}", subjects_filter=">")
            revisions[bucket] = info.state.last_seq
    finally:
        await nc.close()
    return holder, revisions


def test_a_paused_leader_writes_nothing_after_the_standby_applied_an_edit(
    sites: SiteStack,
) -> None:
    """SIGSTOP the reconciler leader (whichever site it is in) for longer than its 5 s lease
    while the GDP is edited in the active home: another site's replica applies the edit; after
    SIGCONT the old leader writes nothing (the buckets' streams gain no message) and every
    site keeps the new split."""
    nats_url = sites.state["sites"]["s2"]["nats_url"]
    wait_for(lambda: asyncio.run(decided(nats_url)), 30, "a reconciler leader and a home")
    holder, _ = retrying(lambda: asyncio.run(leader_and_revisions(nats_url)))
    leader = next(
        name for name, child in sites.state["children"].items()
        if name.startswith("reconciler-") and holder.endswith(f"-{child['pid']}")
    )  # fmt: skip
    pid = sites.pid(leader)
    assert pid is not None
    home = retrying(lambda: asyncio.run(active_home(nats_url)))
    gdps = CustomObjectsApi(new_client_from_config(str(sites.kubeconfig), context=home))

    def edit_split(weights: dict[str, int]) -> None:
        body = {"spec": {"trafficSplit": [{"cluster": c, "weight": w} for c, w in
                                          weights.items()]}}  # fmt: skip
        gdps.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, "avi-system", "globaldeploymentpolicies", "global-gdp", body
        )

    new_split = {"s1az1": 1, "s1az2": 2, "s2": 3}
    os.kill(pid, signal.SIGSTOP)
    try:
        edit_split(new_split)
        applied = wait_for(
            lambda: all(split_or_none(c, sites.dns_port, 6) == new_split for c in DNS_HOSTS),
            40,
            "the edit applied by another reconciler replica",
        )
        new_holder, before = retrying(lambda: asyncio.run(leader_and_revisions(nats_url)))
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        time.sleep(6)  # more than a lease: the old leader has run and found itself fenced
        _, after = retrying(lambda: asyncio.run(leader_and_revisions(nats_url)))
        kept = {c: split(c, sites.dns_port, 6) for c in DNS_HOSTS}
    finally:
        edit_split(SEED_SPLIT)

    assert new_holder != holder
    assert after == before, "the paused leader wrote after SIGCONT"
    assert kept == dict.fromkeys(DNS_HOSTS, new_split)
    print(f"\n{leader} paused: the edit answered by every site {applied:.1f} s after it was "
          f"made; nothing written by it after SIGCONT")  # fmt: skip


async def decided(nats_url: str) -> bool:
    """The reconciler lease and the active home are both written (a fresh stack decides the
    home once it has heard every home watcher)."""
    from nats.js.errors import KeyNotFoundError

    from shared import subjects

    try:
        nc = await nats.connect(nats_url, connect_timeout=2)
    except (TimeoutError, OSError, nats.errors.Error):
        return False
    try:
        kv = await nc.jetstream().key_value(subjects.KV_LEASES)
        for key in (subjects.RECONCILER_LEASE_KEY, subjects.HOME_KEY):
            await kv.get(key)
    except (KeyNotFoundError, TimeoutError, nats.errors.Error):
        # Not written yet, or the bucket's stream still electing a leader after a restore.
        return False
    finally:
        await nc.close()
    return True


def retrying(read: Callable[[], T], attempts: int = 5) -> T:
    """A JetStream read through one site's server, again after a timeout: a stream whose
    leader was on a site restored just before may still be electing one."""
    for attempt in range(attempts):
        try:
            return read()
        except (TimeoutError, nats.errors.Error):
            if attempt == attempts - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


async def active_home(nats_url: str) -> str:
    from shared import subjects, wire
    from shared.models import ActiveHome

    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(subjects.KV_LEASES)
        entry = await kv.get(subjects.HOME_KEY)
        return wire.decode(entry.value or b"", ActiveHome).active
    finally:
        await nc.close()


def test_failing_an_unknown_site_names_the_sites(sites: SiteStack) -> None:
    result = sites.site("fail", "s9")

    assert result.returncode == 2
    assert result.stderr.strip() == "kgslb site fail: no site 's9' (sites: s1az1, s1az2, s2)"


# A real resolver in front of the three sites ------------------------------------------------

LOAD_QPS = 250
LOAD_SECONDS = 12.0
FAIL_AFTER_SECONDS = 2.0


def unbound_config(directory: Path, port: int, dns_port: int) -> Path:
    """A recursive resolver with the zone delegated to the three sites, caching nothing, so
    every client query reaches a site."""
    stubs = "\n".join(f"    stub-addr: {host}@{dns_port}" for host in DNS_HOSTS.values())
    return write_config(
        directory,
        port,
        """
    module-config: "iterator"
    domain-insecure: "iberia.local."
    cache-max-ttl: 0
    cache-max-negative-ttl: 0
    num-queries-per-thread: 1024
""",
        f"""
stub-zone:
    name: "{ZONE}."
{stubs}
""",
    )


@dataclass
class LoadResult:
    sent: int
    sending_seconds: float
    rcodes: Counter[str]
    timeouts: int


async def steady_load(port: int, qps: int, seconds: float) -> LoadResult:
    """`qps` queries a second for `seconds` through the resolver, each waited for up to 2 s.
    A late tick sends what is due, so a busy machine delays queries but never drops the rate."""
    rcodes = Counter[str]()
    timeouts = 0

    async def one() -> None:
        nonlocal timeouts
        try:
            reply = await dns.asyncquery.udp(
                dns.message.make_query(HELLO, "A"), "127.0.0.1", port=port, timeout=2
            )
            rcodes[dns.rcode.to_text(reply.rcode())] += 1
        except dns.exception.Timeout:
            timeouts += 1

    loop = asyncio.get_running_loop()
    total = int(qps * seconds)
    tasks: list[asyncio.Task[None]] = []
    started = loop.time()
    while len(tasks) < total:
        due = min(total, int((loop.time() - started) * qps) + 1)
        tasks += [asyncio.create_task(one()) for _ in range(due - len(tasks))]
        await asyncio.sleep(0.005)
    sending_seconds = loop.time() - started
    await asyncio.gather(*tasks)
    return LoadResult(total, sending_seconds, rcodes, timeouts)


@pytest.mark.skipif(UNBOUND is None, reason="unbound not installed (Debian package `unbound`)")
def test_a_resolver_delegating_to_the_sites_never_fails_while_one_site_goes(
    sites: SiteStack, tmp_path: Path
) -> None:
    assert UNBOUND is not None
    port = free_port()
    resolver = start_unbound(unbound_config(tmp_path, port, sites.dns_port), port)
    try:

        async def load_while_a_site_fails() -> tuple[LoadResult, subprocess.CompletedProcess[str]]:
            load = asyncio.create_task(steady_load(port, LOAD_QPS, LOAD_SECONDS))
            await asyncio.sleep(FAIL_AFTER_SECONDS)
            failed = await asyncio.to_thread(sites.site, "fail", "s1az1")
            return await load, failed

        survivors_before = answered_by(sites, ("s1az2", "s2"))
        result, failed = asyncio.run(load_while_a_site_fails())
        survivors_answered = answered_by(sites, ("s1az2", "s2")) - survivors_before
    finally:
        resolver.terminate()
        resolver.wait(10)

    assert failed.returncode == 0, failed.stderr
    rate = result.sent / result.sending_seconds
    print(f"\nthrough unbound: {result.sent} queries sent in {result.sending_seconds:.1f} s "
          f"({rate:.0f} qps), rcodes {dict(result.rcodes)}, timeouts {result.timeouts}; "
          f"{survivors_answered:.0f} answered by s1az2 and s2")  # fmt: skip
    assert rate >= 200
    assert (result.rcodes["SERVFAIL"], result.timeouts) == (0, 0)
    assert result.rcodes["NOERROR"] == result.sent
    # Unbound joins identical queries in flight, so fewer reach the sites than it is sent;
    # from its cache (TTL 30 s) one would reach them every 30 s.
    assert survivors_answered >= 10 * (LOAD_SECONDS - FAIL_AFTER_SECONDS - 2), (
        "the resolver asked the surviving sites all along, not its cache"
    )


def answered_by(stack: SiteStack, clusters: tuple[str, ...]) -> float:
    """Queries the DNS of `clusters` have answered so far (kgslb_dns_queries_total)."""
    total = 0.0
    for cluster in clusters:
        metrics = httpx.get(f"{stack.state['ops'][f'dns-{cluster}']}/metrics", timeout=5).text
        total += sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("kgslb_dns_queries_total{")
        )
    return total
