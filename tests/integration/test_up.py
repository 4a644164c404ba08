"""`kgslb up`, as a user runs it: one command, answers within 30 s, a child that dies is
restarted while the rest keeps running, and only Ctrl-C or SIGTERM stops it, leaving nothing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import nats
import yaml

from kgslb.embedded import free_port, port_in_use
from shared import subjects, wire
from shared.follow import read_values
from shared.models import MemberHealth

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed" / "kgslb.yaml"


def stack_file(
    tmp_path: Path,
    dns_port: int,
    nats_port: int,
    monitor: dict[str, object] | None = None,
    monitor_on_backends_port: bool = True,
) -> Path:
    """The seed's clusters as a single site (one nats-server, one of each service) on free
    ports, its manifests referenced from examples/seed; `monitor` replaces the GDP's monitor,
    naming the backends' port unless told not to."""
    config = yaml.safe_load(SEED.read_text())
    config["dns"] = {"host": "127.0.0.1", "port": dns_port}
    config["nats"] = {"host": "127.0.0.1", "port": nats_port}
    config["kubeApi"]["port"] = 0
    config["backends"]["port"] = free_port()
    for cluster in config["clusters"].values():
        cluster["apply"] = [str(SEED.parent / name) for name in cluster["apply"]]
        cluster.pop("dns", None)
        cluster.pop("nats", None)
    if monitor is not None:
        documents = list(yaml.safe_load_all((SEED.parent / "global-gdp.yaml").read_text()))
        documents[-1]["spec"]["healthMonitorTemplate"] = (
            {**monitor, "port": config["backends"]["port"]} if monitor_on_backends_port else monitor
        )
        gdp = tmp_path / "global-gdp.yaml"
        gdp.write_text(yaml.safe_dump_all(documents))
        home = config["clusters"][config["homeCluster"]]
        home["apply"] = [str(gdp) if name.endswith("global-gdp.yaml") else name
                         for name in home["apply"]]  # fmt: skip
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def query(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=1)


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def wait_for_line(process: subprocess.Popen[str], needle: str, timeout_seconds: float) -> str:
    assert process.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"{needle!r} not printed; output was:\n{''.join(seen)}")


def test_up_answers_the_seed_within_30_seconds_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    dns_port, nats_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "kgslb", "up", "-c", str(stack_file(tmp_path, dns_port, nats_port)),
         "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output = wait_for_line(process, "kgslb is up", 30)
        assert f"dig @127.0.0.1 -p {dns_port} hello.avi.iberia.local" in output + (
            wait_for_line(process, "Ctrl-C", 5)
        )
        children = children_of(process.pid)
        assert len(children) == 8, "nats-server, backends, 3 watchers, reconciler, health, dns"

        hello = query(dns_port, "hello.avi.iberia.local")
        soa = query(dns_port, "avi.iberia.local", "SOA")
        test = query(dns_port, "test.avi.iberia.local")

        assert hello.answer[0][0].address in {"127.10.25.46", "127.10.26.40", "127.10.23.40"}
        assert soa.flags & dns.flags.AA and soa.answer
        assert [rr.address for rr in test.answer[0]] == ["10.10.24.200"]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)
    assert process.returncode == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)
    assert not port_in_use("127.0.0.1", dns_port, udp=True)


def test_up_refuses_a_busy_port_in_one_line_and_starts_nothing(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        dns_port = squatter.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "kgslb", "up", "-c",
             str(stack_file(tmp_path, dns_port, free_port())),
             "--state-dir", str(tmp_path / "state")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"kgslb up: port already in use: dns (udp) 127.0.0.1:{dns_port}"
    )
    assert not (tmp_path / "state" / "logs" / "nats-server.log").exists()


def answers(port: int, count: int) -> set[str]:
    return {query(port, "hello.avi.iberia.local").answer[0][0].address for _ in range(count)}


def wait_until(check: object, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_seconds} s")


def test_stopping_the_s2_backend_takes_s2_out_of_the_answers_and_starting_it_brings_it_back(
    tmp_path: Path,
) -> None:
    dns_port, nats_port = free_port(), free_port()
    fast = {"intervalSeconds": 0.5, "timeoutSeconds": 0.4, "successesToUp": 2, "failuresToDown": 2}
    state = tmp_path / "state"
    process = subprocess.Popen(
        [sys.executable, "-m", "kgslb", "up", "-c",
         str(stack_file(tmp_path, dns_port, nats_port, fast)), "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    backend = [sys.executable, "-m", "kgslb", "backend", "--state-dir", str(state)]
    s2 = "127.10.23.40"
    try:
        wait_for_line(process, "Ctrl-C", 30)
        wait_until(lambda: s2 in answers(dns_port, 12), 15)

        stopped = subprocess.run([*backend, "stop", "s2"], check=True, capture_output=True)
        assert f"s2: the hello backend (SITE2) at http://{s2}:" in stopped.stdout.decode()
        assert stopped.stdout.decode().rstrip().endswith("is stopped"), stopped.stdout
        wait_until(lambda: s2 not in answers(dns_port, 12), 10)
        assert answers(dns_port, 12) == {"127.10.25.46", "127.10.26.40"}

        subprocess.run([*backend, "start", "s2"], check=True, capture_output=True)
        wait_until(lambda: s2 in answers(dns_port, 12), 10)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)


# Supervision ----------------------------------------------------------------------------------

SEED_VIPS = {"127.10.25.46", "127.10.26.40", "127.10.23.40"}
FAST_MONITOR = {"intervalSeconds": 0.5, "timeoutSeconds": 0.4, "successesToUp": 2,
                "failuresToDown": 2}  # fmt: skip


def start_up(stack: Path, state: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "kgslb", "up", "-c", str(stack), "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_for_line(process, "Ctrl-C", 30)
    return process


def stop_up(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    process.wait(30)


def children(state: Path) -> dict[str, dict[str, Any]]:
    """The children as `kgslb up` publishes them in its state file."""
    published: dict[str, dict[str, Any]] = json.loads((state / "stack.json").read_text())[
        "children"
    ]
    return published


def pids(state: Path) -> dict[str, int | None]:
    return {name: child["pid"] for name, child in children(state).items()}


def answered(port: int) -> bool:
    try:
        return bool(query(port, "hello.avi.iberia.local").answer)
    except dns.exception.DNSException:
        return False


def test_a_killed_service_is_restarted_and_the_rest_of_the_stack_keeps_running(
    tmp_path: Path,
) -> None:
    dns_port, nats_port = free_port(), free_port()
    state = tmp_path / "state"
    process = start_up(stack_file(tmp_path, dns_port, nats_port), state)
    try:
        before = pids(state)
        assert before["dns"] is not None

        os.kill(before["dns"], signal.SIGKILL)

        wait_until(lambda: pids(state)["dns"] not in (None, before["dns"]), 20)
        wait_until(lambda: answered(dns_port), 20)
        after = pids(state)
        exit_line = wait_for_line(process, "dns exited", 5).splitlines()[-1]
        status = subprocess.run(
            [sys.executable, "-m", "kgslb", "status", "--nats-url",
             f"nats://127.0.0.1:{nats_port}", "--state-dir", str(state)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert process.poll() is None, "kgslb up is still running"
    finally:
        stop_up(process)

    assert exit_line == (
        f"kgslb up: dns exited (signal 9 (SIGKILL)); restart 1 in 0.5 s "
        f"(log {state / 'logs' / 'dns.log'})"
    )
    assert {n: p for n, p in after.items() if n != "dns"} == {
        n: p for n, p in before.items() if n != "dns"
    }
    # Piped: plain columns, two spaces or more apart.
    dns_row = next(line for line in status.stdout.splitlines() if line.startswith("dns "))
    cells = re.split(r"\s{2,}", dns_row.strip())
    assert cells[:5] == ["dns", "running", str(after["dns"]), "1", "signal 9 (SIGKILL)"]


async def quiet(_: Exception) -> None:
    """nats-py prints every failed connect attempt otherwise; the polls expect some."""


async def jetstream_answers(url: str) -> bool:
    client = await nats.connect(url, connect_timeout=1, allow_reconnect=False, error_cb=quiet)
    try:
        await client.jetstream().account_info()
    finally:
        await client.close()
    return True


def nats_serves_jetstream(port: int) -> bool:
    try:
        return asyncio.run(jetstream_answers(f"nats://127.0.0.1:{port}"))
    except Exception:
        return False


def test_nats_server_killed_with_its_store_deleted_comes_back_on_the_same_port(
    tmp_path: Path,
) -> None:
    dns_port, nats_port = free_port(), free_port()
    state = tmp_path / "state"
    process = start_up(stack_file(tmp_path, dns_port, nats_port), state)
    try:
        before = pids(state)
        assert before["nats-server"] is not None
        shutil.rmtree(state / "jetstream")

        os.kill(before["nats-server"], signal.SIGKILL)

        wait_until(lambda: pids(state)["nats-server"] not in (None, before["nats-server"]), 20)
        wait_until(lambda: nats_serves_jetstream(nats_port), 20)
        after = pids(state)
        assert process.poll() is None, "kgslb up is still running"
    finally:
        stop_up(process)

    assert (state / "jetstream").is_dir(), "a new, empty store"
    assert {n: p for n, p in after.items() if n != "nats-server"} == {
        n: p for n, p in before.items() if n != "nats-server"
    }


def test_sigterm_stops_every_child_a_restarted_one_included(tmp_path: Path) -> None:
    dns_port, nats_port = free_port(), free_port()
    state = tmp_path / "state"
    process = start_up(stack_file(tmp_path, dns_port, nats_port), state)
    try:
        health = pids(state)["health"]
        assert health is not None
        os.kill(health, signal.SIGKILL)
        wait_until(lambda: pids(state)["health"] not in (None, health), 20)
        running = children_of(process.pid)
        assert len(running) == 8, "nats-server, backends, 3 watchers, reconciler, health, dns"
        assert set(pids(state).values()) == set(running)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)

    assert process.returncode == 0
    assert [pid for pid in running if Path(f"/proc/{pid}").exists()] == []
    assert not (state / "stack.json").exists()
    assert not port_in_use("127.0.0.1", nats_port)
    assert not port_in_use("127.0.0.1", dns_port, udp=True)


async def member_health(nats_port: int) -> dict[str, str]:
    client = await nats.connect(
        f"nats://127.0.0.1:{nats_port}", connect_timeout=1, allow_reconnect=False, error_cb=quiet
    )
    try:
        states = {}
        for raw in (await read_values(client.jetstream(), subjects.KV_HEALTH)).values():
            health = wire.decode(raw, MemberHealth)
            states[str(health.ip)] = health.state.value
    finally:
        await client.close()
    return states


def every_seed_member_up(nats_port: int) -> bool:
    try:
        return asyncio.run(member_health(nats_port)) == dict.fromkeys(SEED_VIPS, "up")
    except Exception:
        return False


def test_backends_on_a_high_port_are_probed_there_and_every_member_is_answered(
    tmp_path: Path,
) -> None:
    dns_port, nats_port = free_port(), free_port()
    stack = stack_file(tmp_path, dns_port, nats_port, FAST_MONITOR, monitor_on_backends_port=False)
    assert yaml.safe_load(stack.read_text())["backends"]["port"] > 1024
    process = start_up(stack, tmp_path / "state")
    try:
        wait_until(lambda: every_seed_member_up(nats_port), 30)
        assert answers(dns_port, 12) == SEED_VIPS
    finally:
        stop_up(process)


# The embedded clusters keep their objects (issue 20, item 6) ---------------------------------

SHOP = "shop.avi.iberia.local"


def shop_app(cluster: str) -> list[dict[str, Any]]:
    """A second app as the README adds one: the seed's hello Deployment, Service and Ingress
    renamed shop, for shop.avi.iberia.local."""
    documents = list(yaml.safe_load_all((SEED.parent / f"hello-{cluster}.yaml").read_text()))
    for document in documents:
        document["metadata"]["name"] = "shop"
        if document["kind"] == "Ingress":
            document["spec"]["rules"][0]["host"] = SHOP
            document["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = "shop"
    return documents


def shop_answers(port: int) -> set[str]:
    """The members answered for shop over 12 queries (one address per answer)."""
    seen: set[str] = set()
    for _ in range(12):
        try:
            reply = query(port, SHOP)
        except dns.exception.DNSException:
            continue
        seen |= {rr.address for rrset in reply.answer for rr in rrset if rr.rdtype == 1}
    return seen


def test_objects_applied_through_the_simulator_outlive_kgslb_up_and_a_second_app_stays_up(
    tmp_path: Path,
) -> None:
    from kgslb.up import apply_manifests

    dns_port, nats_port = free_port(), free_port()
    stack = stack_file(tmp_path, dns_port, nats_port, FAST_MONITOR)
    state = tmp_path / "state"
    shop_vips = {"127.10.26.40", "127.10.23.40"}
    process = start_up(stack, state)
    try:
        for cluster in ("s1az2", "s2"):
            apply_manifests(state / "kubeconfig", cluster, shop_app(cluster))
        wait_until(lambda: shop_answers(dns_port) == shop_vips, 30)
        # Probed every 0.5 s, down after 2 failures: a backend that did not answer shop
        # (HTTP 404) would have withdrawn both members well within this.
        time.sleep(4)
        assert shop_answers(dns_port) == shop_vips
    finally:
        stop_up(process)
    assert sorted(p.name for p in (state / "kubesim").glob("*.json")) == [
        "s1az1.json", "s1az2.json", "s2.json",
    ]  # fmt: skip

    process = subprocess.Popen(
        [sys.executable, "-m", "kgslb", "up", "-c", str(stack), "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output = wait_for_line(process, "Ctrl-C", 60)
        wait_until(lambda: shop_answers(dns_port) == shop_vips, 30)
        kubectl = subprocess.run(
            [sys.executable, "-m", "kgslb", "status", "-o", "json", "--nats-url",
             f"nats://127.0.0.1:{nats_port}", "--state-dir", str(state)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        stop_up(process)
    assert "the Kubernetes objects of the last run are back" in output
    assert "applying the seed manifests" not in output
    assert "`kgslb up --clean` starts from the seed" in output
    shown = {service["fqdn"] for service in json.loads(kubectl.stdout)["services"]}
    assert shown == {"hello.avi.iberia.local", SHOP}

    process = subprocess.Popen(
        [sys.executable, "-m", "kgslb", "up", "-c", str(stack), "--state-dir", str(state),
         "--clean"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        output = wait_for_line(process, "Ctrl-C", 60)
        assert answered(dns_port)
        assert shop_answers(dns_port) == set()
    finally:
        stop_up(process)
    assert "starting afresh (--clean)" in output
    assert "applying the seed manifests" in output


def test_up_writes_the_dnsperf_queryfile_and_hints_that_run_as_written(tmp_path: Path) -> None:
    dns_port, nats_port = free_port(), free_port()
    state = tmp_path / "state"
    process = subprocess.Popen(
        [sys.executable, "-m", "kgslb", "up", "-c", str(stack_file(tmp_path, dns_port, nats_port)),
         "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PATH": "/usr/bin:/bin"},  # no kgslb on PATH, as after `make up`
    )  # fmt: skip
    try:
        output = wait_for_line(process, "Ctrl-C", 60)
        hints = [line.strip() for line in output.splitlines() if "status --nats-url" in line]
        queryfile = (state / "queryfile.txt").read_text()
        status = subprocess.run(hints[0], shell=True, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PATH": "/usr/bin:/bin"})  # fmt: skip
    finally:
        stop_up(process)

    assert queryfile == "hello.avi.iberia.local A\n"
    assert hints[0].split()[0] == str(Path(sys.executable).parent / "kgslb") or hints[0].startswith(
        ".venv/bin/kgslb"
    )
    assert status.returncode == 0, status.stderr
    assert "hello.avi.iberia.local" in status.stdout
